//! Storage and delivery: the key directory, per-user inboxes and the doorbell that tells the
//! replica holding a user's socket that a message arrived.
//!
//! Two engines behave the same and pass the same tests: `memory` (single process, the
//! embedded default) and `redis` (any number of replicas sharing a Redis). Dispatch is a
//! plain enum: there are exactly two, and it keeps every call static.

mod memory;
pub(crate) mod redis;
mod unavailable;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;

use crate::config::Settings;
use crate::hub::{Hub, Mailbox};
use crate::limits::storage::{Holder, Pressure};
use crate::limits::{Ask, Subject, Verdict};
use crate::protocol::{Delivery, MsgId, UserId};

pub use self::memory::MemoryEngine;
pub use self::redis::RedisEngine;
pub use self::unavailable::Unavailable;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("user not found")]
    UserNotFound,
    #[error("recipient's inbox is full")]
    InboxFull,
    /// The sender already has its share (`limits.inbox_share`, `inbox_share_bytes`) of the
    /// recipient's inbox waiting; other senders still get through.
    #[error("sender's share of the recipient's inbox is used up")]
    OverShare,
    /// The sender is a stranger to the recipient (never written to by them), and the part of
    /// the inbox all strangers share (`limits.stranger_pool`) is full; contacts still get
    /// through.
    #[error("the recipient's inbox has no room left for strangers")]
    StrangersFull,
    /// The sender's address prefix, or the sender, already holds its share of the store
    /// (`limits.storage`), as far as the store's pressure allows now.
    #[error("the sender's share of the store is used up")]
    OverStorage,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why a login gave no user id.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// A key never seen, from an address prefix that already holds
    /// `limits.max_unused_registrations_per_prefix` registrations nobody used: one of them
    /// expires after `retry_after` (one used before then makes room sooner).
    #[error("too many unused registrations from this address prefix")]
    TooManyUnused { retry_after: Duration },
    /// A key never seen, from an address prefix whose registrations of the last
    /// `limits.inactive_user_ttl_secs` take its share of the store
    /// (`limits.storage.directory_per_prefix`).
    #[error("this address prefix registered its share of the directory")]
    DirectoryShare,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// A user's directory entry as a socket's admission reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub public_key: String,
    /// The user proved possession of the key once: every later socket needs a token.
    pub protected: bool,
    /// Where the record's expiry stands, read with it: what `Engine::mark_used` has to do.
    pub upkeep: Upkeep,
}

/// Where a user record stands against its expiry (`limits.unused_registration_ttl_secs`,
/// `limits.inactive_user_ttl_secs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upkeep {
    /// Registered from this address prefix and never used since: it expires
    /// `unused_registration_ttl_secs` after the registration, and counts against the prefix's
    /// `max_unused_registrations_per_prefix` until then.
    Unused(ipnet::IpNet),
    /// Used, and renewed recently: nothing to do.
    Kept,
    /// Used, but renewed longer ago than `renewal_due` allows (or made before records expired,
    /// with no expiry at all): the next use renews it.
    Due,
}

/// Whether a used record with `remaining` time to live must be renewed to its full `term` (the
/// inactive-user TTL): once it has lost a day, or 1/64 of the term when that is shorter. So a
/// socket open writes at most once a day per user; everything else is a read it makes anyway.
pub fn renewal_due(remaining: Duration, term: Duration) -> bool {
    let slack = (term / 64).min(Duration::from_secs(24 * 3600));
    remaining + slack < term
}

/// A message written to a specification client's socket, for `Engine::forget_delivered`: its
/// envelope tells the Redis engine the sender and size to give back (`protocol::envelope_sender`)
/// without reading the entry again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: MsgId,
    pub envelope: Bytes,
}

/// Read before an inbox read.
#[derive(Debug, Clone, Copy)]
pub struct ReadMark {
    /// The number of the last message sent to the user (0: none yet): every message numbered
    /// up to it is in the inbox read that follows, or was delivered already, so the next live
    /// one must carry the number after it.
    pub sequence: u64,
    /// The user's newest connection generation (engines that coordinate replicas only): lets
    /// a session notice a takeover announced while its doorbells were being missed.
    pub generation: Option<u64>,
}

#[derive(Clone)]
pub enum Engine {
    Memory(MemoryEngine),
    Redis(RedisEngine),
}

impl Engine {
    /// The memory engine unless `redis.url` is set.
    pub async fn from_settings(settings: &Settings, hub: Arc<Hub>) -> Result<Self, Unavailable> {
        Ok(match settings.redis_url() {
            None => Engine::Memory(MemoryEngine::new(settings.limits.clone(), hub)),
            Some(_) => Engine::Redis(RedisEngine::connect(settings, hub).await?),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Engine::Memory(_) => "memory",
            Engine::Redis(_) => "redis",
        }
    }

    /// The user id of `public_key`, registering it on first sight. Idempotent, also when two
    /// replicas register the same key at the same moment. A registration is charged to the
    /// address prefix it came `from` until it is used (`mark_used`), and expires unless it is.
    pub async fn login(&self, public_key: &str, from: ipnet::IpNet) -> Result<UserId, LoginError> {
        match self {
            Engine::Memory(e) => e.login(public_key, from),
            Engine::Redis(e) => e.login(public_key, from).await,
        }
    }

    pub async fn public_key(&self, user: &UserId) -> Result<Option<String>, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.public_key(user)),
            Engine::Redis(e) => e.public_key(user).await,
        }
    }

    /// The key and protection of `user`, in one round trip.
    pub async fn user_record(&self, user: &UserId) -> Result<Option<UserRecord>, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.user_record(user)),
            Engine::Redis(e) => e.user_record(user).await,
        }
    }

    /// The user used their id (a socket was admitted as them, or they claimed it): the record
    /// and key index are kept for `limits.inactive_user_ttl_secs` from now, and a registration
    /// stops counting as unused. `record` was just read: when its upkeep is `Kept` this
    /// writes nothing.
    pub async fn mark_used(&self, user: &UserId, record: &UserRecord) -> Result<(), Unavailable> {
        if record.upkeep == Upkeep::Kept {
            return Ok(());
        }
        match self {
            Engine::Memory(e) => {
                e.mark_used(user);
                Ok(())
            }
            Engine::Redis(e) => e.mark_used(user, record).await,
        }
    }

    /// Marks `user` protected, for good (it is stored with the user's record).
    pub async fn protect(&self, user: &UserId) -> Result<(), Unavailable> {
        match self {
            Engine::Memory(e) => {
                e.protect(user);
                Ok(())
            }
            Engine::Redis(e) => e.protect(user).await,
        }
    }

    /// Burns a challenge id for `ttl`: true the first time, on any replica; false on replays.
    pub async fn burn_challenge(&self, jti: &str, ttl: std::time::Duration) -> Result<bool, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.burn_challenge(jti, ttl)),
            Engine::Redis(e) => e.burn_challenge(jti, ttl.as_millis() as u64).await,
        }
    }

    /// The token key shared by every replica when none is configured: the Redis engine stores
    /// `candidate` once and every replica reads the winner; the memory engine is one process.
    pub async fn shared_token_key(&self, candidate: &str) -> Result<String, Unavailable> {
        match self {
            Engine::Memory(_) => Ok(candidate.to_owned()),
            Engine::Redis(e) => e.shared_token_key(candidate).await,
        }
    }

    /// Stores several envelopes of `from`, whose client is in address `prefix` (what they are
    /// charged to, `limits::storage`), in order, in one round trip where the engine can; one
    /// result per envelope.
    pub async fn send_many(
        &self,
        from: &UserId,
        prefix: IpNet,
        sends: Vec<(UserId, Bytes)>,
    ) -> Vec<Result<MsgId, SendError>> {
        match self {
            Engine::Memory(e) => sends.into_iter().map(|(to, envelope)| e.send(from, prefix, &to, envelope)).collect(),
            Engine::Redis(e) => e.send_many(from, prefix, sends).await,
        }
    }

    /// Makes `people` contacts of `user` (the user wrote to them): their messages to the user
    /// are a contact's, not a stranger's (`limits.stranger_pool`).
    pub async fn add_contacts(&self, user: &UserId, people: &[UserId]) -> Result<(), Unavailable> {
        match self {
            Engine::Memory(e) => {
                e.add_contacts(user, people);
                Ok(())
            }
            Engine::Redis(e) => e.add_contacts(user, people).await,
        }
    }

    /// Whether storage is charged through a ledger apart from the store (Redis), so sessions
    /// lease from it (`limits::storage::StorageLease`); the memory engine charges exactly.
    pub fn keeps_a_ledger(&self) -> bool {
        matches!(self, Engine::Redis(_))
    }

    /// Charges `want` bytes (negative: gives back) to `holder` if it then holds at most
    /// `allowed`; whether it did. Engines without a ledger always grant.
    pub async fn hold(&self, holder: &Holder<'_>, want: i64, allowed: u64) -> Result<bool, Unavailable> {
        match self {
            Engine::Memory(_) => Ok(true),
            Engine::Redis(e) => e.hold(holder, want, allowed).await,
        }
    }

    /// Gives `bytes` back from `holder`'s ledger (a lease left unspent); failures are logged.
    pub async fn give_back(&self, holder: &Holder<'_>, bytes: u64) {
        if let Engine::Redis(e) = self {
            e.give_back(holder, bytes).await;
        }
    }

    /// How full the store is (Redis: sampled every second).
    pub fn pressure(&self) -> &Pressure {
        match self {
            Engine::Memory(e) => e.pressure(),
            Engine::Redis(e) => e.pressure(),
        }
    }

    /// Takes tokens from the buckets of `subject` under `kind` (see `crate::limits`), shared by
    /// every replica of this engine.
    pub async fn take_tokens(&self, kind: &str, subject: Subject<'_>, asks: &[Ask]) -> Result<Verdict, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.take_tokens(kind, subject, asks)),
            Engine::Redis(e) => e.take_tokens(kind, subject, asks).await,
        }
    }

    /// Up to `limit` stored messages of `user` after `after` (from the start if `None`).
    pub async fn backlog(
        &self,
        user: &UserId,
        after: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.backlog(user, after, limit)),
            Engine::Redis(e) => e.backlog(user, after, limit).await,
        }
    }

    /// Removes delivered (or acknowledged) messages. Unknown ids are ignored.
    pub async fn remove(&self, user: &UserId, ids: &[MsgId]) -> Result<(), Unavailable> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Engine::Memory(e) => {
                e.remove(user, ids);
                Ok(())
            }
            Engine::Redis(e) => e.remove(user, ids).await,
        }
    }

    /// Removes messages written to a specification client's socket, without waiting: the
    /// engine may batch removals of many sessions into one round trip. A failed removal leaves
    /// the messages stored (delivered again on the next connection, never lost).
    pub fn forget_delivered(&self, user: &UserId, written: Vec<Written>) {
        match self {
            Engine::Memory(e) => e.remove(user, &written.iter().map(|w| w.id).collect::<Vec<_>>()),
            Engine::Redis(e) => e.forget_delivered(user, written),
        }
    }

    /// Waits (within the command timeout) until every removal queued by `forget_delivered` is
    /// done: a draining replica calls it after its sessions closed.
    pub async fn settle_removals(&self) {
        if let Engine::Redis(e) = self {
            e.settle_removals().await;
        }
    }

    /// Makes a registered session live: its doorbell is listened to, and every older
    /// connection of the user, on any replica, is told to end.
    pub async fn attach(&self, mailbox: &Mailbox) -> Result<(), Unavailable> {
        match self {
            Engine::Memory(e) => {
                e.attach(mailbox);
                Ok(())
            }
            Engine::Redis(e) => e.attach(mailbox).await,
        }
    }

    /// What a session reads before it re-reads its inbox, in one round trip.
    pub async fn read_mark(&self, user: &UserId) -> Result<ReadMark, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(ReadMark { sequence: e.sequence(user), generation: None }),
            Engine::Redis(e) => e.read_mark(user).await,
        }
    }

    /// The user has no session on this replica any more (the hub said so): stop listening for
    /// the user's doorbell.
    pub fn release(&self, user: &UserId) {
        match self {
            Engine::Memory(_) => {} // the hub is the memory engine's only listener
            Engine::Redis(e) => e.release(user),
        }
    }

    /// Whether the store answers and the doorbell link is up.
    pub async fn ready(&self) -> bool {
        match self {
            Engine::Memory(_) => true,
            Engine::Redis(e) => e.ready().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_renews_once_a_day_or_once_per_64th_of_a_short_term() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let hour = Duration::from_secs(3600);
        assert!(!renewal_due(year, year));
        assert!(!renewal_due(year - 23 * hour, year));
        assert!(renewal_due(year - 25 * hour, year));
        let minute = Duration::from_secs(64);
        assert!(!renewal_due(minute - Duration::from_millis(999), minute));
        assert!(renewal_due(minute - Duration::from_millis(1001), minute));
        assert!(renewal_due(Duration::ZERO, minute));
    }
}
