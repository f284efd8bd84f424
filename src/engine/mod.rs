//! Storage and delivery: the key directory, per-user inboxes and the doorbell that tells the
//! replica holding a user's socket that a message arrived.
//!
//! Three engines behave the same and pass the same tests: `embedded` (single process, kept in
//! a local data file; the default), `memory` (single process, nothing kept) and `redis` (any
//! number of replicas sharing a Redis). The first two are one type, `MemoryEngine`, with or
//! without a journal (`embedded`), so dispatch is a plain enum of two: it keeps every call
//! static. Every change the in-process engine makes is acknowledged only after
//! `MemoryEngine::durable` (at once for the memory engine, after the commit for the embedded
//! one).

pub mod embedded;
mod errors;
mod memory;
mod records;
pub(crate) mod redis;
pub mod tree;
pub(crate) mod unavailable;

use std::sync::Arc;

use bytes::Bytes;
use ipnet::IpNet;

use crate::config::{EngineKind, Settings};
use crate::hub::{Hub, Mailbox};
use crate::limits::bucket::{Ask, Subject, Verdict};
use crate::limits::storage::{Holder, Pressure};
use crate::protocol::{Delivery, MsgId, UserId};

pub use self::errors::{LoginError, SendError};
pub use self::memory::MemoryEngine;
pub use self::records::{ReadMark, Upkeep, UserRecord, Written};
pub use self::redis::RedisEngine;
pub use self::unavailable::Unavailable;

#[derive(Clone)]
pub enum Engine {
    /// The embedded engine (with a data file) or the memory engine (without).
    Memory(MemoryEngine),
    Redis(RedisEngine),
}

impl Engine {
    /// Redis when `redis.url` is set; else `engine`: the embedded engine on the data file in
    /// `data_dir` (read back into memory first), or the memory engine.
    pub async fn from_settings(settings: &Settings, hub: Arc<Hub>) -> Result<Self, Unavailable> {
        if settings.redis_url().is_some() {
            return Ok(Engine::Redis(RedisEngine::connect(settings, hub).await?));
        }
        let limits = settings.limits.clone();
        let engine = match settings.engine {
            EngineKind::Memory => {
                tracing::info!("engine: memory (nothing is kept after the process ends)");
                MemoryEngine::new(limits, hub)
            }
            EngineKind::Embedded => {
                let dir = std::path::Path::new(&settings.data_dir);
                let started = std::time::Instant::now();
                let (journal, snapshot, path) = embedded::open(dir)?;
                let (users, messages) = (snapshot.users.len(), snapshot.messages.len());
                let engine = MemoryEngine::embedded(limits, hub, journal, snapshot)?;
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(file = %path.display(), users, messages, ms, "engine: embedded, data file read");
                engine
            }
        };
        engine.set_publishing(settings.directory.enabled);
        Ok(Engine::Memory(engine))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Engine::Memory(e) => e.name(),
            Engine::Redis(_) => "redis",
        }
    }

    /// The user id of `public_key`, registering it on first sight. Idempotent, also when two
    /// replicas register the same key at the same moment. A registration is charged to the
    /// address prefix it came `from` until it is used (`mark_used`), and expires unless it is.
    pub async fn login(&self, public_key: &str, from: ipnet::IpNet) -> Result<UserId, LoginError> {
        match self {
            Engine::Memory(e) => {
                let user = e.login(public_key, from)?;
                e.durable().await?;
                Ok(user)
            }
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
                e.durable().await
            }
            Engine::Redis(e) => e.mark_used(user, record).await,
        }
    }

    /// Marks `user` protected, for good (it is stored with the user's record).
    pub async fn protect(&self, user: &UserId) -> Result<(), Unavailable> {
        match self {
            Engine::Memory(e) => {
                e.protect(user);
                e.durable().await
            }
            Engine::Redis(e) => e.protect(user).await,
        }
    }

    /// Burns a challenge id for `ttl`: true the first time, on any replica; false on replays.
    /// A burn that cannot be committed is taken back, so the client's retry of the same answer
    /// is not refused as a replay.
    pub async fn burn_challenge(&self, jti: &str, ttl: std::time::Duration) -> Result<bool, Unavailable> {
        match self {
            Engine::Memory(e) => {
                let Some(until) = e.burn_challenge(jti, ttl)? else { return Ok(false) };
                if let Err(error) = e.durable().await {
                    e.unburn_challenge(jti, until);
                    return Err(error);
                }
                Ok(true)
            }
            Engine::Redis(e) => e.burn_challenge(jti, ttl.as_millis() as u64).await,
        }
    }

    /// The token key shared by every replica when none is configured: the Redis engine stores
    /// `candidate` once and every replica reads the winner; the embedded engine keeps it in its
    /// data file, so tokens outlive a restart; the memory engine is one process.
    pub async fn shared_token_key(&self, candidate: &str) -> Result<String, Unavailable> {
        match self {
            Engine::Memory(e) => {
                let key = e.shared_token_key(candidate);
                e.durable().await?;
                Ok(key)
            }
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
            Engine::Memory(e) => {
                let mut results: Vec<_> =
                    sends.into_iter().map(|(to, envelope)| e.send(from, prefix, &to, envelope)).collect();
                // No receipt before the commit: a stored message is reported stored only once
                // it is in the data file.
                if results.iter().any(Result::is_ok)
                    && let Err(e) = e.durable().await
                {
                    for result in results.iter_mut().filter(|r| r.is_ok()) {
                        *result = Err(SendError::Unavailable(e.clone()));
                    }
                }
                results
            }
            Engine::Redis(e) => e.send_many(from, prefix, sends).await,
        }
    }

    /// Makes `people` contacts of `user` (the user wrote to them): their messages to the user
    /// are a contact's, not a stranger's (`limits.stranger_pool`).
    pub async fn add_contacts(&self, user: &UserId, people: &[UserId]) -> Result<(), Unavailable> {
        match self {
            Engine::Memory(e) => {
                e.add_contacts(user, people)?;
                e.durable().await
            }
            Engine::Redis(e) => e.add_contacts(user, people).await,
        }
    }

    /// Whether storage is charged through a ledger apart from the store (Redis), so sessions
    /// lease from it (`limits::lease::StorageLease`); the memory engine charges exactly.
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
                e.durable().await
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
    /// done: a draining replica calls it after its sessions closed (the embedded engine: until
    /// every change is committed to the data file).
    pub async fn finish_removals(&self) {
        match self {
            Engine::Memory(e) => {
                if let Err(e) = e.durable().await {
                    tracing::warn!(error = %e, "changes not written to the data file before exit");
                }
            }
            Engine::Redis(e) => e.finish_removals().await,
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

    /// What a session reads before it catches up from its inbox, in one round trip.
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

    /// Whether the store answers and the doorbell link is up (the embedded engine: its data
    /// file is being written).
    pub async fn ready(&self) -> bool {
        match self {
            Engine::Memory(e) => e.ready(),
            Engine::Redis(e) => e.ready().await,
        }
    }
}
