//! Reconnect churn (`--churn PERIOD`): every socket is closed and opened again about every
//! PERIOD, the way phones drop and come back, while the traffic keeps its schedule.
//!
//! Each socket's moments are jittered and spread: the first falls at a random point of its
//! first period, offset by the socket's rank so that the sockets' first moments cover the
//! period evenly, and the following ones come 0.75 to 1.25 periods apart. Reconnections are
//! therefore continuous, never a synchronized wave.
//!
//! A churned socket closes the way a client should: it sends a close frame and keeps reading
//! until the server's answer, so that nothing the server wrote before it saw the close is left
//! unread; only then is the new socket opened (a new socket before the old one closed would
//! replace it, 4409, which is another scenario).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::target::{self, Replica, Ws};

/// Longest wait for the server's close answer (what arrives meanwhile is still read).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts to open the new socket, and the pause before the first retry (doubled each time,
/// up to [`RETRY_MAX`]): a reconnection that fails this often counts as a failed socket.
const REOPEN_ATTEMPTS: u32 = 8;
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// When one socket is churned next, on the run's clock (ns).
#[derive(Debug, Clone)]
pub struct Schedule {
    period_ns: u64,
    rng: u64,
    next_ns: u64,
}

impl Schedule {
    /// The schedule of socket `rank` of `sockets`, starting at `now_ns`.
    pub fn new(period: Duration, rank: usize, sockets: usize, seed: u64, now_ns: u64) -> Schedule {
        let period_ns = period.as_nanos().max(1) as u64;
        let mut rng = seed ^ (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let offset = (rank as f64 + unit(&mut rng)) / sockets.max(1) as f64;
        Schedule { period_ns, rng, next_ns: now_ns + (period_ns as f64 * offset) as u64 }
    }

    pub fn next_ns(&self) -> u64 {
        self.next_ns
    }

    pub fn due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_ns
    }

    /// The socket was churned at `now_ns`: the next time is 0.75 to 1.25 periods later.
    pub fn advance(&mut self, now_ns: u64) {
        let factor = 0.75 + 0.5 * unit(&mut self.rng);
        self.next_ns = now_ns + (self.period_ns as f64 * factor) as u64;
    }
}

/// A uniform number in [0, 1) from splitmix64 (jitter, not cryptography).
fn unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Where a socket is opened again: its replica, its user, its settings.
#[derive(Clone)]
pub struct Link {
    pub replica: Replica,
    pub user: String,
    pub config: WebSocketConfig,
    /// `Some("enigma.v1")` for acknowledging sockets.
    pub subprotocol: Option<&'static str>,
}

impl Link {
    pub async fn open(&self) -> Result<Ws, String> {
        target::open_ws_as(&self.replica, &self.user, None, self.config, self.subprotocol).await
    }

    /// Opens the socket again, retrying with back-off: a relay busy with other handshakes may
    /// refuse one. The last error if every attempt failed.
    pub async fn reopen(&self) -> Result<Ws, String> {
        let mut pause = RETRY_FIRST;
        let mut last = String::new();
        for attempt in 0..REOPEN_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            match self.open().await {
                Ok(ws) => return Ok(ws),
                Err(e) => last = e,
            }
        }
        Err(format!("reconnect failed after {REOPEN_ATTEMPTS} attempts: {last}"))
    }
}

/// Closes `ws` as a client should: a close frame, then reading until the server's answer (or
/// [`CLOSE_TIMEOUT`]), each text frame read meanwhile handed to `on_text`. Returns whether the
/// server answered.
pub async fn close(mut ws: Ws, mut on_text: impl FnMut(&str)) -> bool {
    if ws.close(None).await.is_err() {
        return false;
    }
    let until = Instant::now() + CLOSE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => on_text(text.as_str()),
            Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
            // tungstenite ends the stream once the close handshake is complete.
            Ok(None) => return true,
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn first_moments_are_spread_over_the_first_period() {
        let n = 200;
        let mut firsts: Vec<u64> =
            (0..n).map(|i| Schedule::new(Duration::from_secs(10), i, n, 42, 5 * SEC).next_ns()).collect();
        assert!(firsts.iter().all(|&t| (5 * SEC..15 * SEC).contains(&t)), "{firsts:?}");
        // Every tenth of the period gets its share: no wave.
        firsts.sort();
        for tenth in 0..10 {
            let (from, to) = (5 * SEC + tenth * SEC, 6 * SEC + tenth * SEC);
            let k = firsts.iter().filter(|&&t| (from..to).contains(&t)).count();
            assert!((15..=25).contains(&k), "tenth {tenth}: {k} of {n}");
        }
    }

    #[test]
    fn later_moments_come_about_every_period() {
        let mut s = Schedule::new(Duration::from_secs(2), 3, 10, 7, 0);
        let mut now = s.next_ns();
        assert!(!s.due(now - 1) && s.due(now));
        let mut gaps = Vec::new();
        for _ in 0..1000 {
            s.advance(now);
            let gap = s.next_ns() - now;
            assert!((3 * SEC / 2..=5 * SEC / 2).contains(&gap), "{gap}");
            gaps.push(gap);
            now = s.next_ns();
        }
        let mean = gaps.iter().sum::<u64>() as f64 / gaps.len() as f64 / SEC as f64;
        assert!((1.9..2.1).contains(&mean), "mean gap {mean} s");
        // Jittered: not all the same.
        assert!(gaps.iter().any(|&g| g != gaps[0]));
    }

    #[test]
    fn sockets_get_different_jitter() {
        let a = Schedule::new(Duration::from_secs(1), 0, 1, 1, 0).next_ns();
        let b = Schedule::new(Duration::from_secs(1), 0, 1, 2, 0).next_ns();
        assert_ne!(a, b);
    }
}
