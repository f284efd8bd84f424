//! Rate limits that hold across replicas: registrations and challenges per client address,
//! socket opens per address and per user, sends per user (messages and bytes per second, with
//! a burst).
//!
//! Every budget is a token bucket kept by the engine (`bucket`): in Redis one script call per
//! check (`engine/redis/limit.lua`, state in a hash with a TTL, Redis's clock), in the memory
//! engine a map in the process. A client gets nothing back by reconnecting or switching
//! replica, since no replica keeps a budget of its own — except the send lease: a session
//! takes a slice of its user's send budget at once (`SendBudget`) and spends it locally, so the
//! send path pays one limiter round trip per slice, not per message. A lease left unspent when
//! the socket closes is simply gone: reconnecting never adds to a budget.

pub(crate) mod address;
pub(crate) mod bucket;
pub(crate) mod lease;
pub(crate) mod rates;
pub(crate) mod storage;

use ipnet::IpNet;
use std::time::Duration;

pub use self::bucket::{Ask, Rate, Subject, Verdict};
pub use self::rates::RateSettings;

use crate::engine::{Engine, Unavailable};
use crate::protocol::UserId;
use crate::telemetry::metric;

/// Which budget refused: the `limit` label of `enigma_rate_limited_total` and part of the
/// bucket's key. Never a user id or an address in a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Login,
    Challenge,
    SocketPerAddress,
    SocketPerUser,
    Send,
    /// A new key from an address prefix holding `limits.max_unused_registrations_per_prefix`
    /// registrations nobody used (not a bucket: the engine counts them).
    UnusedRegistrations,
    /// A new key from an address prefix whose registrations take its share of the store
    /// (`limits.storage.directory_per_prefix`; not a bucket: the engine's ledger).
    Registrations,
    /// Key directory reads per address prefix.
    Directory,
}

impl Limit {
    pub const ALL: [Limit; 8] = [
        Limit::Login,
        Limit::Challenge,
        Limit::SocketPerAddress,
        Limit::SocketPerUser,
        Limit::Send,
        Limit::UnusedRegistrations,
        Limit::Registrations,
        Limit::Directory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Login => "login",
            Limit::Challenge => "challenge",
            Limit::SocketPerAddress => "socket_address",
            Limit::SocketPerUser => "socket_user",
            Limit::Send => "send",
            Limit::UnusedRegistrations => "unused_registrations",
            Limit::Registrations => "registrations",
            Limit::Directory => "directory",
        }
    }

    /// Counts a refusal by this limit.
    pub(crate) fn refused(self) {
        metrics::counter!(metric::RATE_LIMITED, "limit" => self.as_str()).increment(1);
    }
}

/// A refusal: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds for `Retry-After` (never 0: that would invite an instant retry).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_millis().div_ceil(1000).max(1) as u64
    }
    pub fn retry_after_ms(&self) -> u64 {
        self.retry_after.as_millis().max(1) as u64
    }
}

/// Why a limited action did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("rate limited")]
    Limited(Limited),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Takes one token of a per-address or per-user budget.
async fn one(engine: &Engine, limit: Limit, rate: Rate, subject: Subject<'_>) -> Result<(), Refused> {
    if rate.is_off() {
        return Ok(());
    }
    let asks = [Ask { rate, want: 1, min: 1 }];
    match engine.take_tokens(limit.as_str(), subject, &asks).await? {
        Verdict::Granted(_) => Ok(()),
        Verdict::Limited(retry_after) => {
            limit.refused();
            Err(Refused::Limited(Limited { limit, retry_after }))
        }
    }
}

/// A registration (`GET /login/…`) from `client`, an address prefix (`rate.address_prefix`: one
/// holder of a /64 has one budget, not 2^64), as every per-address budget below.
pub async fn check_login(engine: &Engine, rates: &RateSettings, client: IpNet) -> Result<(), Refused> {
    one(engine, Limit::Login, rates.login_per_address, Subject::Address(client)).await
}

/// A challenge request from `client`: for the endpoint that issues challenges to call
/// before it seals one.
pub async fn check_challenge(engine: &Engine, rates: &RateSettings, client: IpNet) -> Result<(), Refused> {
    one(engine, Limit::Challenge, rates.challenge_per_address, Subject::Address(client)).await
}

/// A key directory read by `client` (`GET /directory/…`).
pub async fn check_directory(engine: &Engine, rates: &RateSettings, client: IpNet) -> Result<(), Refused> {
    one(engine, Limit::Directory, rates.directory_per_address, Subject::Address(client)).await
}

/// A WebSocket open by `client`, whatever it turns out to be: checked before anything is
/// looked up, so every attempt (a refused one too) costs the address that made it.
pub async fn check_socket_address(engine: &Engine, rates: &RateSettings, client: IpNet) -> Result<(), Refused> {
    one(engine, Limit::SocketPerAddress, rates.socket_per_address, Subject::Address(client)).await
}

/// A WebSocket open admitted as `user`: checked only once the socket has shown it may act as
/// the user (a valid token for a protected user), so someone who knows only the id cannot
/// spend the owner's budget and lock the owner out.
pub async fn check_socket_user(engine: &Engine, rates: &RateSettings, user: &UserId) -> Result<(), Refused> {
    one(engine, Limit::SocketPerUser, rates.socket_per_user, Subject::User(user)).await
}

/// The send budget a session holds: tokens leased from its user's shared budget, spent here.
#[derive(Debug, Default)]
pub struct SendBudget {
    messages: u64,
    bytes: u64,
}

impl SendBudget {
    /// Spends one message of `bytes`, leasing more from the shared budget when this lease
    /// is spent (a slice of a tenth of the burst, so a busy sender pays one round trip per
    /// tenth of its burst).
    pub async fn spend(
        &mut self,
        engine: &Engine,
        rates: &RateSettings,
        user: &UserId,
        bytes: u64,
    ) -> Result<(), Refused> {
        let (msgs, size) = (rates.send_messages_per_user, rates.send_bytes_per_user);
        let need_msgs = u64::from(!msgs.is_off() && self.messages == 0);
        let need_bytes = if size.is_off() { 0 } else { bytes.saturating_sub(self.bytes) };
        if need_msgs > 0 || need_bytes > 0 {
            let mut asks = Vec::with_capacity(2);
            // An off dimension asks for nothing (burst 0 would never grant).
            let ask = |rate: Rate, need: u64| Ask { rate, want: need.max(rate.burst / 10), min: need };
            if !msgs.is_off() {
                asks.push(ask(msgs, need_msgs));
            }
            if !size.is_off() {
                asks.push(ask(size, need_bytes));
            }
            match engine.take_tokens(Limit::Send.as_str(), Subject::User(user), &asks).await? {
                Verdict::Granted(granted) => {
                    let mut granted = granted.into_iter();
                    if !msgs.is_off() {
                        self.messages += granted.next().unwrap_or(0);
                    }
                    if !size.is_off() {
                        self.bytes += granted.next().unwrap_or(0);
                    }
                }
                Verdict::Limited(retry_after) => {
                    Limit::Send.refused();
                    return Err(Refused::Limited(Limited { limit: Limit::Send, retry_after }));
                }
            }
        }
        if !msgs.is_off() {
            self.messages = self.messages.saturating_sub(1);
        }
        if !size.is_off() {
            self.bytes = self.bytes.saturating_sub(bytes);
        }
        Ok(())
    }
}

/// Registers the refusal counters at 0, so dashboards and alerts see every series.
pub fn register_metrics() {
    for limit in Limit::ALL {
        metrics::counter!(metric::RATE_LIMITED, "limit" => limit.as_str()).increment(0);
    }
}
