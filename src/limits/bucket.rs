//! The token bucket both engines run (the Redis engine as `limit.lua`, the memory engine here):
//! a bucket holds up to `burst` tokens and gains `per_second` of them every second; a check
//! takes between `min` and `want` tokens, or none and says how long until `min` are there.
//! Several dimensions (messages and bytes) pass or fail together.

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::protocol::UserId;

/// One budget: `burst` tokens at most, refilled at `per_second`. A `burst` of 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rate {
    pub burst: u64,
    pub per_second: f64,
}

impl Default for Rate {
    fn default() -> Self {
        Rate::OFF
    }
}

impl Rate {
    pub const OFF: Rate = Rate { burst: 0, per_second: 0.0 };

    pub const fn new(burst: u64, per_second: f64) -> Rate {
        Rate { burst, per_second }
    }

    pub fn is_off(&self) -> bool {
        self.burst == 0
    }

    /// How long an untouched bucket takes to fill again: after that its state is worthless,
    /// so that is its record's time to live.
    pub fn refill_time(&self) -> Duration {
        if self.is_off() || self.per_second <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((self.burst as f64 / self.per_second).min(86_400.0)).max(Duration::from_secs(1))
    }
}

/// Whose budget a check draws on: the engine names the bucket from it (on Redis a user's
/// bucket lives in the user's cluster slot, `engine/redis/keys.rs`).
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// A client address prefix (`rate.address_prefix`).
    Address(IpNet),
    User(&'a UserId),
}

impl std::fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Address(net) => net.fmt(f),
            Subject::User(user) => user.fmt(f),
        }
    }
}

/// What one dimension of a check asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ask {
    pub rate: Rate,
    /// Tokens taken if there are that many (a lease for later sends).
    pub want: u64,
    /// Fewer than this and nothing is taken.
    pub min: u64,
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Tokens granted, per dimension (between `min` and `want`).
    Granted(Vec<u64>),
    /// Nothing taken; `min` tokens are there again after this long.
    Limited(Duration),
}

/// One subject's buckets (a dimension each), as the memory engine keeps them.
#[derive(Debug, Clone)]
pub struct Buckets {
    tokens: Vec<f64>,
    at_ms: u64,
}

impl Buckets {
    /// Full buckets at `now_ms`.
    pub fn full(asks: &[Ask], now_ms: u64) -> Self {
        Buckets { tokens: asks.iter().map(|a| a.rate.burst as f64).collect(), at_ms: now_ms }
    }

    /// Takes tokens for `asks` at `now_ms` (the same arithmetic as `limit.lua`).
    pub fn take(&mut self, asks: &[Ask], now_ms: u64) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens.resize(asks.len(), 0.0);
        let mut wait_ms = 0u64;
        for (tokens, ask) in self.tokens.iter_mut().zip(asks) {
            *tokens = (*tokens + elapsed * ask.rate.per_second / 1000.0).min(ask.rate.burst as f64);
            if *tokens < ask.min as f64 {
                let missing = ask.min as f64 - *tokens;
                wait_ms = wait_ms.max((missing * 1000.0 / ask.rate.per_second).ceil() as u64);
            }
        }
        self.at_ms = self.at_ms.max(now_ms);
        if wait_ms > 0 {
            return Verdict::Limited(Duration::from_millis(wait_ms));
        }
        let granted = self
            .tokens
            .iter_mut()
            .zip(asks)
            .map(|(tokens, ask)| {
                let granted = (ask.want as f64).min(tokens.floor()).max(ask.min as f64);
                *tokens -= granted;
                granted as u64
            })
            .collect();
        Verdict::Granted(granted)
    }

    /// Whether every bucket is full again at `now_ms` (the record can be forgotten).
    pub fn refilled(&self, asks_rates: &[Rate], now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens.iter().zip(asks_rates).all(|(t, r)| t + elapsed * r.per_second / 1000.0 >= r.burst as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(rate: Rate, want: u64, min: u64) -> [Ask; 1] {
        [Ask { rate, want, min }]
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let rate = Rate::new(300, 5.0);
        let mut b = Buckets::full(&one(rate, 1, 1), 0);
        for i in 0..300 {
            assert_eq!(b.take(&one(rate, 1, 1), 0), Verdict::Granted(vec![1]), "request {i}");
        }
        assert_eq!(b.take(&one(rate, 1, 1), 0), Verdict::Limited(Duration::from_millis(200)));
        // 5 per second: one more after 200 ms, and not two.
        assert_eq!(b.take(&one(rate, 1, 1), 200), Verdict::Granted(vec![1]));
        assert!(matches!(b.take(&one(rate, 1, 1), 200), Verdict::Limited(_)));
        assert!(!b.refilled(&[rate], 200));
        assert!(b.refilled(&[rate], 200 + 60_000));
    }

    #[test]
    fn a_lease_takes_what_is_there_between_min_and_want() {
        let rate = Rate::new(100, 10.0);
        let mut b = Buckets::full(&one(rate, 1, 1), 0);
        assert_eq!(b.take(&one(rate, 60, 1), 0), Verdict::Granted(vec![60]));
        assert_eq!(b.take(&one(rate, 60, 1), 0), Verdict::Granted(vec![40]));
        assert_eq!(b.take(&one(rate, 60, 5), 0), Verdict::Limited(Duration::from_millis(500)));
    }

    #[test]
    fn dimensions_pass_or_fail_together() {
        let (msgs, bytes) = (Rate::new(10, 1.0), Rate::new(1000, 100.0));
        let asks = |n: u64| [Ask { rate: msgs, want: 1, min: 1 }, Ask { rate: bytes, want: n, min: n }];
        let mut b = Buckets::full(&asks(1), 0);
        assert_eq!(b.take(&asks(900), 0), Verdict::Granted(vec![1, 900]));
        // Bytes are short: the message token is not spent either.
        assert_eq!(b.take(&asks(200), 0), Verdict::Limited(Duration::from_millis(1000)));
        assert_eq!(b.take(&asks(100), 0), Verdict::Granted(vec![1, 100]));
    }

    #[test]
    fn time_going_backwards_takes_nothing_away() {
        let rate = Rate::new(2, 1.0);
        let mut b = Buckets::full(&one(rate, 1, 1), 10_000);
        assert!(matches!(b.take(&one(rate, 2, 2), 5_000), Verdict::Granted(_)));
        assert!(matches!(b.take(&one(rate, 1, 1), 5_000), Verdict::Limited(_)));
        assert!(matches!(b.take(&one(rate, 1, 1), 11_000), Verdict::Granted(_)));
    }
}
