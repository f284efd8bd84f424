//! The receiving half of a pair: reads the recipient's socket until the run ends, counting
//! what arrives (see `ack` for how), acknowledging it on an `enigma.v1` socket and, with
//! `--churn`, closing and opening the socket again on its schedule (see `churn`).
//!
//! Acknowledgements go out as a batch when [`ACK_BATCH`](crate::ack::ACK_BATCH) deliveries are
//! waiting or [`ACK_DELAY`] after the first of them, whichever is first: one frame for many
//! deliveries under load, and no delivery left unacknowledged for long when traffic is light.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::ack::{Outcome, PairTracker};
use crate::churn::{self, Link, Schedule};
use crate::target::Ws;
use crate::traffic::{HORIZON_NS, Shared, closed_by_server, leave_closed, open_again, socket_closed};
use crate::wire::{Received, classify};

/// Longest wait before waiting deliveries are acknowledged.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// Who receives, where its socket is opened again, and when it is churned.
pub struct Recipient {
    pub pair: usize,
    pub link: Link,
    pub churn: Option<Schedule>,
}

impl Recipient {
    fn acknowledging(&self) -> bool {
        self.link.subprotocol.is_some()
    }
}

/// Reads `ws` for `recipient` until the run ends or the socket fails.
pub fn spawn_receiver(recipient: Recipient, ws: Ws, shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(receive(recipient, ws, shared))
}

async fn receive(mut r: Recipient, mut ws: Ws, shared: Arc<Shared>) {
    let (pair, acknowledging) = (r.pair, r.acknowledging());
    let mut tracker = PairTracker::default();
    let ack_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(ack_timer);
    let mut ack_armed = false;
    // A deadline that never comes, for a disabled branch (its future is built all the same).
    let never = Instant::now() + Duration::from_secs(86_400);
    loop {
        let churn_at = r.churn.as_ref().map_or(never, |s| shared.clock.at(s.next_ns()));
        let message = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => {
                // The run is over and drained: acknowledge the last deliveries and leave
                // cleanly, so that nothing of ours stays stored.
                if write_ack(&mut ws, &mut tracker, &shared, pair).await {
                    churn::close(ws, |text| on_text(&shared, pair, &mut tracker, text, acknowledging)).await;
                }
                return;
            }
            _ = tokio::time::sleep_until(churn_at), if r.churn.is_some() => {
                ack_armed = false;
                match reconnect(ws, &mut r, &mut tracker, &shared).await {
                    Some(new) => ws = new,
                    None => return,
                }
                continue;
            }
            _ = &mut ack_timer, if ack_armed => {
                ack_armed = false;
                if !write_ack(&mut ws, &mut tracker, &shared, pair).await {
                    return socket_closed(&shared, pair, "ack_failed".into());
                }
                continue;
            }
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                on_text(&shared, pair, &mut tracker, text.as_str(), acknowledging);
                if tracker.batch_full() {
                    ack_armed = false;
                    if !write_ack(&mut ws, &mut tracker, &shared, pair).await {
                        return socket_closed(&shared, pair, "ack_failed".into());
                    }
                } else if tracker.has_pending() && !ack_armed {
                    ack_timer.as_mut().reset(Instant::now() + ACK_DELAY);
                    ack_armed = true;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                // A server going away, restarting or refusing the socket for now: open it again,
                // as a real client does (nothing delivered on it goes unread: it was closed).
                let Some(code) = closed_by_server(&shared, pair, frame) else { return };
                leave_closed(&mut ws, code).await;
                tracker.socket_closed();
                ack_armed = false;
                match open_again(&r.link, r.churn.as_mut(), &shared, pair).await {
                    Some(new) => ws = new,
                    None => return,
                }
            }
            Some(Err(_)) | None => return socket_closed(&shared, pair, "closed:lost".into()),
            Some(Ok(_)) => {} // pings are answered by tungstenite
        }
    }
}

/// Churns the socket: acknowledges what was read (a well-behaved client does before it
/// leaves), closes, opens a new one. Deliveries read while closing cannot be acknowledged any
/// more: the server owes them on the new socket. `None` if the new socket cannot be opened.
async fn reconnect(ws: Ws, r: &mut Recipient, tracker: &mut PairTracker, shared: &Shared) -> Option<Ws> {
    let (pair, acknowledging) = (r.pair, r.acknowledging());
    let mut ws = ws;
    if write_ack(&mut ws, tracker, shared, pair).await {
        churn::close(ws, |text| on_text(shared, pair, tracker, text, acknowledging)).await;
    }
    tracker.socket_closed();
    open_again(&r.link, r.churn.as_mut(), shared, pair).await
}

/// Writes the waiting acknowledgement, if any. False if the socket refused it.
async fn write_ack(ws: &mut Ws, tracker: &mut PairTracker, shared: &Shared, pair: usize) -> bool {
    let Some(frame) = tracker.ack_frame() else { return true };
    if ws.send(Message::Text(frame.into())).await.is_err() {
        return false;
    }
    let n = tracker.acked();
    shared.shard(pair).acknowledged += n;
    true
}

/// Counts one text frame read from the recipient's socket.
fn on_text(shared: &Shared, pair: usize, tracker: &mut PairTracker, text: &str, acknowledging: bool) {
    let now = shared.clock.now_ns();
    match classify(text, acknowledging) {
        Received::Stamped { seq, stamp_ns, id } => {
            let outcome = tracker.observe(seq, id);
            // The step's first messages may be released (and stamped) up to the horizon
            // before its start; a past step's are older than that.
            let start = shared.step_start_ns.load(Ordering::Relaxed);
            let mut tally = shared.shard(pair);
            if stamp_ns < start.saturating_sub(HORIZON_NS) {
                tally.late += 1;
                return;
            }
            match outcome {
                Outcome::Duplicate => tally.duplicated += 1,
                Outcome::Redelivered => tally.redelivered += 1,
                Outcome::New | Outcome::Reordered => {
                    tally.reordered += u64::from(outcome == Outcome::Reordered);
                    tally.delivered += 1;
                    if now <= shared.window_end_ns.load(Ordering::Relaxed) {
                        tally.in_window += 1;
                    }
                    let latency_us = now.saturating_sub(stamp_ns) / 1000;
                    tally.latency_us.saturating_record(latency_us.max(1));
                }
            }
        }
        Received::Error(code) => shared.shard(pair).error(&code),
        Received::Other(_) => shared.shard(pair).error("unexpected_frame"),
    }
}
