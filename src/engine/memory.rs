//! The embedded engine: everything in this process, lost on restart. Same ids, limits and
//! ordering as the Redis engine, so one conformance suite covers both: the inbox capacity in
//! messages and bytes, each sender's share of an inbox, the rate limiters' buckets. On top,
//! a total byte budget (`limits.memory_max_bytes`): a full process refuses sends, as a full
//! Redis does, instead of growing until it is killed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;

use super::SendError;
use super::Unavailable;
use crate::config::Limits;
use crate::hub::{Hub, Mailbox};
use crate::limits::{Ask, Buckets, Rate, Verdict};
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
    inboxes: Mutex<Store>,
    generations: AtomicU64,
    /// Answered challenge ids until they expire (single use); expired ones are swept on
    /// every insert, so it holds at most the challenges answered within one challenge lifetime.
    burnt: Mutex<HashMap<String, Instant>>,
    /// Rate-limit buckets by `kind:subject`, with their rates (to forget refilled ones).
    buckets: Mutex<HashMap<String, (Buckets, Vec<Rate>)>>,
}

/// Bucket records kept before refilled ones are swept out.
const BUCKETS_SWEEP_AT: usize = 65_536;

/// How often expired inboxes are swept out (a sweep is a pass over every inbox).
const EXPIRY_SWEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Store {
    inboxes: HashMap<UserId, Inbox>,
    /// Envelope bytes stored in every inbox together.
    bytes: usize,
    /// Envelope bytes waiting per sender prefix and per sender, across all inboxes
    /// (`limits::storage`); an entry leaves when it reaches 0.
    by_prefix: HashMap<IpNet, usize>,
    by_sender: HashMap<UserId, usize>,
    swept: Option<Instant>,
}

impl Store {
    /// Gives back what `stored` was charged.
    fn release(&mut self, stored: &Stored) {
        let size = stored.envelope.len();
        self.bytes -= size;
        release(&mut self.by_prefix, &stored.prefix, size);
        release(&mut self.by_sender, &stored.from, size);
    }
}

fn release<K: std::hash::Hash + Eq>(held: &mut HashMap<K, usize>, key: &K, size: usize) {
    if let Some(bytes) = held.get_mut(key) {
        *bytes = bytes.saturating_sub(size);
        if *bytes == 0 {
            held.remove(key);
        }
    }
}

#[derive(Default)]
struct Directory {
    /// By index material (`auth::canonical`): every spelling of a recognised key is one user.
    by_key: HashMap<Vec<u8>, UserId>,
    keys: HashMap<UserId, String>,
    /// Users who proved possession of their key once (see `auth`).
    protected: HashSet<UserId>,
    /// Whom each user wrote to, and when the list was last added to (it expires
    /// `limits.contacts_ttl_secs` after that, as the Redis set does).
    contacts: HashMap<UserId, (HashSet<UserId>, Instant)>,
}

impl Directory {
    fn is_contact(&self, user: &UserId, sender: &UserId, ttl: Duration) -> bool {
        self.contacts.get(user).is_some_and(|(people, at)| at.elapsed() <= ttl && people.contains(sender))
    }
}

struct Inbox {
    last: MsgId,
    /// Messages ever sent to the user (the last one's number).
    count: u64,
    written: Instant,
    messages: BTreeMap<MsgId, Stored>,
    /// Envelope bytes in `messages`.
    bytes: usize,
    /// Messages and bytes waiting per sender (its share).
    senders: HashMap<UserId, Share>,
    /// Messages and bytes waiting from strangers (the strangers' pool).
    strangers: (usize, usize),
}

#[derive(Default, Clone, Copy)]
struct Share {
    messages: usize,
    bytes: usize,
    /// The sender's waiting messages count in the strangers' pool.
    stranger: bool,
}

struct Stored {
    seq: u64,
    envelope: Bytes,
    from: UserId,
    /// The sender's address prefix, charged for it.
    prefix: IpNet,
}

impl Inbox {
    fn take(&mut self, id: &MsgId) -> Option<Stored> {
        let stored = self.messages.remove(id)?;
        let size = stored.envelope.len();
        self.bytes -= size;
        if let Some(share) = self.senders.get_mut(&stored.from) {
            share.messages -= 1;
            share.bytes -= size;
            if share.stranger {
                self.strangers.0 = self.strangers.0.saturating_sub(1);
                self.strangers.1 = self.strangers.1.saturating_sub(size);
            }
            if share.messages == 0 {
                self.senders.remove(&stored.from);
            }
        }
        Some(stored)
    }

    /// Empties the inbox: what it held, to be given back.
    fn clear(&mut self) -> Vec<Stored> {
        self.senders.clear();
        self.strangers = (0, 0);
        self.bytes = 0;
        std::mem::take(&mut self.messages).into_values().collect()
    }
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
                buckets: Mutex::default(),
            }),
        }
    }

    pub fn login(&self, public_key: &str) -> UserId {
        // Nothing outlives the process here, so there are no records from before normalisation.
        let material = crate::auth::canonical::index_material(public_key).primary;
        if let Some(user) = self.inner.read().by_key.get(&material) {
            return user.clone();
        }
        let mut dir = self.inner.write();
        if let Some(user) = dir.by_key.get(&material) {
            return user.clone();
        }
        let user = UserId::random();
        dir.by_key.insert(material, user.clone());
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

    /// Adds `people` to `user`'s contacts, up to `limits.max_contacts`.
    pub fn add_contacts(&self, user: &UserId, people: &[UserId]) {
        let limits = &self.inner.limits;
        let ttl = Duration::from_secs(limits.contacts_ttl_secs);
        let mut dir = self.inner.write();
        let (known, at) = dir.contacts.entry(user.clone()).or_insert_with(|| (HashSet::new(), Instant::now()));
        if at.elapsed() > ttl {
            known.clear();
        }
        *at = Instant::now();
        for person in people {
            if known.len() >= limits.max_contacts {
                break;
            }
            known.insert(person.clone());
        }
    }

    pub fn send(&self, from: &UserId, prefix: IpNet, to: &UserId, envelope: Bytes) -> Result<MsgId, SendError> {
        let limits = &self.inner.limits;
        let stranger = {
            let dir = self.inner.read();
            if !dir.keys.contains_key(to) {
                return Err(SendError::UserNotFound);
            }
            limits.stranger_pool > 0 && !dir.is_contact(to, from, Duration::from_secs(limits.contacts_ttl_secs))
        };
        let ttl = Duration::from_secs(limits.inbox_ttl_secs);
        let size = envelope.len();
        let mut store = self.inner.inboxes();
        store.sweep(ttl);
        let store = &mut *store;
        let inbox = store.inboxes.entry(to.clone()).or_insert_with(|| Inbox {
            last: MsgId::default(),
            count: 0,
            written: Instant::now(),
            messages: BTreeMap::new(),
            bytes: 0,
            senders: HashMap::new(),
            strangers: (0, 0),
        });
        if inbox.written.elapsed() > ttl {
            // Expired, as a Redis key with a TTL would have.
            for stored in inbox.clear() {
                let size = stored.envelope.len();
                store.bytes -= size;
                release(&mut store.by_prefix, &stored.prefix, size);
                release(&mut store.by_sender, &stored.from, size);
            }
        }
        if inbox.messages.len() >= limits.inbox_capacity || inbox.bytes + size > limits.inbox_max_bytes {
            return Err(SendError::InboxFull);
        }
        let held = inbox.senders.get(from).copied().unwrap_or_default();
        if (limits.inbox_share > 0 && held.messages >= limits.inbox_share)
            || (limits.inbox_share_bytes > 0 && held.bytes + size > limits.inbox_share_bytes)
        {
            return Err(SendError::OverShare);
        }
        // The same rules as `send.lua`: one stranger holds at most an eighth of the pool.
        if stranger {
            let (pool, pool_bytes) = (limits.stranger_pool, limits.stranger_pool_bytes);
            if held.messages >= (pool / 8).max(1) || held.bytes + size > pool_bytes / 8 {
                return Err(SendError::OverShare);
            }
            if inbox.strangers.0 >= pool || inbox.strangers.1 + size > pool_bytes {
                return Err(SendError::StrangersFull);
            }
        }
        // Charged to its source: the sender's prefix and the sender, each within its share of
        // the store at the present pressure (`limits::storage`).
        let shares = &limits.storage;
        let capacity = self.inner.capacity() as u64;
        let used = store.bytes as u64;
        let holds = |held: Option<&usize>| held.copied().unwrap_or(0) as u64 + size as u64;
        if holds(store.by_prefix.get(&prefix)) > shares.allowed(shares.per_prefix, capacity, used)
            || holds(store.by_sender.get(from)) > shares.allowed(shares.per_sender, capacity, used)
        {
            return Err(SendError::OverStorage);
        }
        if store.bytes + size > limits.memory_max_bytes {
            return Err(SendError::Unavailable(Unavailable("memory engine full (limits.memory_max_bytes)".into())));
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
        inbox.messages.insert(id, Stored { seq, envelope: envelope.clone(), from: from.clone(), prefix });
        inbox.bytes += size;
        let share = inbox.senders.entry(from.clone()).or_default();
        if stranger {
            inbox.strangers.0 += 1;
            inbox.strangers.1 += size;
        } else if share.stranger {
            // Now a contact: what it has waiting leaves the strangers' pool.
            inbox.strangers.0 = inbox.strangers.0.saturating_sub(share.messages);
            inbox.strangers.1 = inbox.strangers.1.saturating_sub(share.bytes);
        }
        share.stranger = stranger;
        share.messages += 1;
        share.bytes += size;
        store.bytes += size;
        *store.by_prefix.entry(prefix).or_default() += size;
        *store.by_sender.entry(from.clone()).or_default() += size;
        // Rung under the inbox lock, so notifications keep the inbox's order.
        self.inner.hub.deliver(to, Delivery { id, ts: id.ms, seq, envelope });
        Ok(id)
    }

    /// Takes tokens from the buckets of `kind:subject` (see `crate::limits::Buckets`).
    pub fn take_tokens(&self, kind: &str, subject: &str, asks: &[Ask]) -> Verdict {
        let now = unix_ms();
        let mut buckets = self.inner.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= BUCKETS_SWEEP_AT {
            // Full buckets are worth nothing: forgetting them changes no answer.
            buckets.retain(|_, (b, rates)| !b.refilled(rates, now));
        }
        let (bucket, rates) = buckets
            .entry(format!("{kind}:{subject}"))
            .or_insert_with(|| (Buckets::full(asks, now), asks.iter().map(|a| a.rate).collect()));
        rates.clear();
        rates.extend(asks.iter().map(|a| a.rate));
        bucket.take(asks, now)
    }

    pub fn backlog(&self, user: &UserId, after: Option<MsgId>, limit: usize) -> Vec<Delivery> {
        let store = self.inner.inboxes();
        let Some(inbox) = store.inboxes.get(user) else { return Vec::new() };
        let range = match after {
            Some(after) => inbox.messages.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => inbox.messages.range(..),
        };
        range
            .take(limit)
            .map(|(id, m)| Delivery { id: *id, ts: id.ms, seq: m.seq, envelope: m.envelope.clone() })
            .collect()
    }

    /// The number of the last message sent to `user` (0: none yet).
    pub fn sequence(&self, user: &UserId) -> u64 {
        self.inner.inboxes().inboxes.get(user).map_or(0, |inbox| inbox.count)
    }

    pub fn remove(&self, user: &UserId, ids: &[MsgId]) {
        let mut store = self.inner.inboxes();
        let taken: Vec<Stored> = match store.inboxes.get_mut(user) {
            Some(inbox) => ids.iter().filter_map(|id| inbox.take(id)).collect(),
            None => return,
        };
        for stored in &taken {
            store.release(stored);
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
    /// The store's capacity for the storage shares: `limits.storage.capacity_bytes`, else
    /// `limits.memory_max_bytes`.
    fn capacity(&self) -> usize {
        match self.limits.storage.capacity_bytes {
            0 => self.limits.memory_max_bytes,
            bytes => usize::try_from(bytes).unwrap_or(usize::MAX).min(self.limits.memory_max_bytes),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }
    fn inboxes(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inboxes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// Drops inboxes nobody wrote to for `ttl`, as Redis expires them, at most once a minute:
    /// an inbox must not wait for a new message to expire.
    fn sweep(&mut self, ttl: Duration) {
        if self.swept.is_some_and(|at| at.elapsed() < EXPIRY_SWEEP) {
            return;
        }
        self.swept = Some(Instant::now());
        // Emptied, not forgotten: the message counter goes on, as the user record's does in Redis.
        let mut expired = Vec::new();
        for inbox in self.inboxes.values_mut() {
            if inbox.written.elapsed() > ttl && !inbox.messages.is_empty() {
                expired.extend(inbox.clear());
            }
        }
        for stored in &expired {
            self.release(stored);
        }
    }
}

/// Milliseconds since the Unix epoch (the clock of inbox ids).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
