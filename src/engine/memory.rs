//! The embedded engine: everything in this process, lost on restart. Same ids, limits and
//! ordering as the Redis engine, so one conformance suite covers both.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::SendError;
use crate::config::Limits;
use crate::hub::{Hub, Mailbox};
use crate::protocol::{Delivery, MsgId, UserId};

#[derive(Clone)]
pub struct MemoryEngine {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Arc<Hub>,
    limits: Limits,
    /// public key → user, and user → public key, under one lock so login is atomic.
    directory: RwLock<Directory>,
    inboxes: Mutex<HashMap<UserId, Inbox>>,
    generations: AtomicU64,
    /// Answered challenge ids until they expire (single use); expired ones are swept on
    /// every insert, so it holds at most the challenges answered within one challenge lifetime.
    burnt: Mutex<HashMap<String, Instant>>,
}

#[derive(Default)]
struct Directory {
    by_key: HashMap<String, UserId>,
    keys: HashMap<UserId, String>,
    /// Users who proved possession of their key once (see `auth`).
    protected: HashSet<UserId>,
}

struct Inbox {
    last: MsgId,
    /// Messages ever sent to the user (the last one's number).
    count: u64,
    written: Instant,
    messages: BTreeMap<MsgId, (u64, Bytes)>,
}

impl MemoryEngine {
    pub fn new(limits: Limits, hub: Arc<Hub>) -> Self {
        Self {
            inner: Arc::new(Inner {
                hub,
                limits,
                directory: RwLock::default(),
                inboxes: Mutex::default(),
                generations: AtomicU64::new(0),
                burnt: Mutex::default(),
            }),
        }
    }

    pub fn login(&self, public_key: &str) -> UserId {
        if let Some(user) = self.inner.read().by_key.get(public_key) {
            return user.clone();
        }
        let mut dir = self.inner.write();
        if let Some(user) = dir.by_key.get(public_key) {
            return user.clone();
        }
        let user = UserId::random();
        dir.by_key.insert(public_key.to_owned(), user.clone());
        dir.keys.insert(user.clone(), public_key.to_owned());
        user
    }

    pub fn public_key(&self, user: &UserId) -> Option<String> {
        self.inner.read().keys.get(user).cloned()
    }

    pub fn user_record(&self, user: &UserId) -> Option<super::UserRecord> {
        let dir = self.inner.read();
        let public_key = dir.keys.get(user)?.clone();
        Some(super::UserRecord { public_key, protected: dir.protected.contains(user) })
    }

    pub fn protect(&self, user: &UserId) {
        let mut dir = self.inner.write();
        if dir.keys.contains_key(user) {
            dir.protected.insert(user.clone());
        }
    }

    /// True the first time `jti` is burnt within `ttl`.
    pub fn burn_challenge(&self, jti: &str, ttl: Duration) -> bool {
        let mut burnt = self.inner.burnt.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        burnt.retain(|_, until| *until > now);
        if burnt.contains_key(jti) {
            return false;
        }
        burnt.insert(jti.to_owned(), now + ttl);
        true
    }

    pub fn send(&self, to: &UserId, envelope: Bytes) -> Result<MsgId, SendError> {
        if !self.inner.read().keys.contains_key(to) {
            return Err(SendError::UserNotFound);
        }
        let ttl = Duration::from_secs(self.inner.limits.inbox_ttl_secs);
        let mut inboxes = self.inner.inboxes();
        let inbox = inboxes.entry(to.clone()).or_insert_with(|| Inbox {
            last: MsgId::default(),
            count: 0,
            written: Instant::now(),
            messages: BTreeMap::new(),
        });
        if inbox.written.elapsed() > ttl {
            inbox.messages.clear(); // expired, as a Redis key with a TTL would have
        }
        if inbox.messages.len() >= self.inner.limits.inbox_capacity {
            return Err(SendError::InboxFull);
        }
        let now = unix_ms();
        let id = if now > inbox.last.ms {
            MsgId { ms: now, seq: 0 }
        } else {
            MsgId { ms: inbox.last.ms, seq: inbox.last.seq + 1 }
        };
        inbox.last = id;
        inbox.count += 1;
        let seq = inbox.count;
        inbox.written = Instant::now();
        inbox.messages.insert(id, (seq, envelope.clone()));
        // Rung under the inbox lock, so notifications keep the inbox's order.
        self.inner.hub.deliver(to, Delivery { id, ts: id.ms, seq, envelope });
        Ok(id)
    }

    pub fn backlog(&self, user: &UserId, after: Option<MsgId>, limit: usize) -> Vec<Delivery> {
        let inboxes = self.inner.inboxes();
        let Some(inbox) = inboxes.get(user) else { return Vec::new() };
        let range = match after {
            Some(after) => inbox.messages.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => inbox.messages.range(..),
        };
        range
            .take(limit)
            .map(|(id, (seq, env))| Delivery { id: *id, ts: id.ms, seq: *seq, envelope: env.clone() })
            .collect()
    }

    /// The number of the last message sent to `user` (0: none yet).
    pub fn sequence(&self, user: &UserId) -> u64 {
        self.inner.inboxes().get(user).map_or(0, |inbox| inbox.count)
    }

    pub fn remove(&self, user: &UserId, ids: &[MsgId]) {
        if let Some(inbox) = self.inner.inboxes().get_mut(user) {
            for id in ids {
                inbox.messages.remove(id);
            }
        }
    }

    pub fn attach(&self, mailbox: &Mailbox) {
        // One process: the hub already replaced any older local session; the generation
        // keeps the same bookkeeping as across replicas.
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.hub.set_generation(mailbox, generation);
    }
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }
    fn inboxes(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Inbox>> {
        self.inboxes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds since the Unix epoch (the clock of inbox ids).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
