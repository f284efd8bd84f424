//! The embedded engine: everything in this process, lost on restart. Same ids, limits and
//! ordering as the Redis engine, so one conformance suite covers both: the inbox capacity in
//! messages and bytes, each sender's share of an inbox, the rate limiters' buckets. On top,
//! a total byte budget (`limits.memory_max_bytes`): a full process refuses sends, as a full
//! Redis does, instead of growing until it is killed.
//!
//! The key directory expires as the Redis records do: a registration nobody used after
//! `limits.unused_registration_ttl_secs`, a user who stopped using their id after
//! `limits.inactive_user_ttl_secs`; it counts in `memory_max_bytes` (`USER_BYTES`), and a
//! registration that does not fit is refused as a send is.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;

use super::errors::{LoginError, SendError};
use super::records::{Upkeep, UserRecord, renewal_due};
use super::unavailable::Unavailable;
use crate::clock::unix_ms;
use crate::config::Limits;
use crate::hub::{Hub, Mailbox};
use crate::limits::bucket::{Ask, Buckets, Rate, Subject, Verdict};
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
    /// How full the store is, for the storage shares' gauge (`limits::storage`).
    pressure: crate::limits::storage::Pressure,
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
    charges: Charges,
    swept: Option<Instant>,
}

/// What the inboxes hold, in all and charged to its sources (`limits::storage`). Apart from
/// the inboxes, so that an inbox being written can give back what it drops.
#[derive(Default)]
struct Charges {
    /// Envelope bytes stored in every inbox together.
    bytes: usize,
    /// Envelope bytes waiting per sender prefix and per sender, across all inboxes; an entry
    /// leaves when it reaches 0.
    by_prefix: HashMap<IpNet, usize>,
    by_sender: HashMap<UserId, usize>,
}

impl Charges {
    fn charge(&mut self, from: &UserId, prefix: IpNet, size: usize) {
        self.bytes += size;
        *self.by_prefix.entry(prefix).or_default() += size;
        *self.by_sender.entry(from.clone()).or_default() += size;
    }

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

/// What one user costs the directory besides its key (counted in `limits.memory_max_bytes`,
/// an estimate on the high side): the id held four times (36 bytes each in `users`, `by_key`,
/// `expiries`, and the unused set or the string headers), the entry, and the hash-table and
/// tree nodes around them. The key itself counts twice: as registered and as index material.
const USER_BYTES: usize = 320;

/// What one contact costs the directory (an id in a hash set).
const CONTACT_BYTES: usize = 64;

#[derive(Default)]
struct Directory {
    /// By index material (`auth::canonical`): every spelling of a recognised key is one user.
    by_key: HashMap<Vec<u8>, UserId>,
    users: HashMap<UserId, Entry>,
    /// Every user by the instant it expires, soonest first (what `forget_expired` takes).
    expiries: BTreeSet<(Instant, UserId)>,
    /// Registrations nobody used yet, per address prefix they came from, by expiry.
    unused: HashMap<IpNet, BTreeSet<(Instant, UserId)>>,
    /// What the directory counts for in `limits.memory_max_bytes`.
    bytes: usize,
    /// Whom each user wrote to, and when the list was last added to (it expires
    /// `limits.contacts_ttl_secs` after that, as the Redis set does).
    contacts: HashMap<UserId, (HashSet<UserId>, Instant)>,
    /// What each address prefix registered, by day (`limits.storage.directory_per_prefix`),
    /// as the Redis ledger `held:dir:<prefix>` keeps it.
    registered: HashMap<IpNet, BTreeMap<u64, u64>>,
}

/// Prefixes whose registrations are remembered before the ones with nothing left are swept.
const REGISTERED_SWEEP_AT: usize = 65_536;

struct Entry {
    public_key: String,
    /// Its `by_key` entry.
    material: Vec<u8>,
    /// Proved possession of the key once (see `auth`).
    protected: bool,
    expires: Instant,
    /// The address prefix it was registered from, until it is used.
    unused_from: Option<IpNet>,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.public_key.len() + self.material.len() + USER_BYTES
    }
}

impl Directory {
    fn is_contact(&self, user: &UserId, sender: &UserId, ttl: Duration) -> bool {
        self.contacts.get(user).is_some_and(|(people, at)| at.elapsed() <= ttl && people.contains(sender))
    }

    /// The user's entry, unless it has expired (it may not have been swept out yet).
    fn live(&self, user: &UserId) -> Option<&Entry> {
        self.users.get(user).filter(|entry| entry.expires > Instant::now())
    }

    /// Whether some user has expired and is still here.
    fn expired_any(&self, now: Instant) -> bool {
        self.expiries.first().is_some_and(|(at, _)| *at <= now)
    }

    /// Forgets every user expired by `now`: key index, record, contacts, place in the unused
    /// set. Each user is visited once, when it goes.
    fn forget_expired(&mut self, now: Instant) {
        while let Some((at, user)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            let Some(entry) = self.users.remove(&user) else { continue };
            self.bytes -= entry.bytes();
            if self.by_key.get(&entry.material) == Some(&user) {
                self.by_key.remove(&entry.material);
            }
            if let Some(prefix) = entry.unused_from {
                self.used(prefix, &(at, user.clone()));
            }
            if let Some((people, _)) = self.contacts.remove(&user) {
                self.bytes -= people.len() * CONTACT_BYTES;
            }
        }
    }

    /// Takes a registration out of its prefix's unused set.
    fn used(&mut self, prefix: IpNet, key: &(Instant, UserId)) {
        if let Some(waiting) = self.unused.get_mut(&prefix) {
            waiting.remove(key);
            if waiting.is_empty() {
                self.unused.remove(&prefix);
            }
        }
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
        let capacity = limits.memory_max_bytes as u64;
        Self {
            inner: Arc::new(Inner {
                hub,
                limits,
                directory: RwLock::default(),
                inboxes: Mutex::default(),
                generations: AtomicU64::new(0),
                burnt: Mutex::default(),
                pressure: crate::limits::storage::Pressure::new(capacity),
                buckets: Mutex::default(),
            }),
        }
    }

    /// The rules of the Redis engine's login: a new key from a prefix holding the most unused
    /// registrations is refused; one that does not fit in `memory_max_bytes` too, as a full
    /// store.
    pub fn login(&self, public_key: &str, from: IpNet) -> Result<UserId, LoginError> {
        // Nothing outlives the process here, so there are no records from before normalisation.
        let material = crate::auth::canonical::index_material(public_key).primary;
        {
            let dir = self.inner.read();
            if let Some(user) = dir.by_key.get(&material).filter(|user| dir.live(user).is_some()) {
                return Ok(user.clone());
            }
        }
        let limits = &self.inner.limits;
        let stored = self.inner.inboxes().charges.bytes;
        let now = Instant::now();
        let mut dir = self.inner.write();
        dir.forget_expired(now);
        if let Some(user) = dir.by_key.get(&material) {
            return Ok(user.clone());
        }
        let max = limits.max_unused_registrations_per_prefix;
        if let Some(waiting) = dir.unused.get(&from).filter(|waiting| max > 0 && waiting.len() >= max) {
            let first = waiting.first().map_or(now, |(at, _)| *at);
            return Err(LoginError::TooManyUnused { retry_after: first.saturating_duration_since(now) });
        }
        let expires = now + Duration::from_secs(limits.unused_registration_ttl_secs);
        let entry = Entry {
            public_key: public_key.to_owned(),
            material: material.clone(),
            protected: false,
            expires,
            unused_from: Some(from),
        };
        if stored + dir.bytes + entry.bytes() > limits.memory_max_bytes {
            return Err(Unavailable::said("memory engine full (limits.memory_max_bytes)").into());
        }
        // What its prefix registered within a year, against its share (`directory_per_prefix`).
        let shares = &limits.storage;
        if shares.directory_per_prefix > 0.0 {
            let today = unix_ms() / 86_400_000;
            let keep = limits.inactive_user_ttl_secs.div_ceil(86_400) + 1;
            if dir.registered.len() >= REGISTERED_SWEEP_AT {
                dir.registered.retain(|_, days| days.last_key_value().is_some_and(|(day, _)| *day + keep >= today));
            }
            let days = dir.registered.entry(from).or_default();
            days.retain(|day, _| *day + keep >= today);
            let held: u64 = days.values().sum();
            let used = (stored + dir.bytes) as u64;
            let charge = crate::limits::storage::registration_bytes(public_key);
            if held + charge > shares.allowed(shares.directory_per_prefix, self.inner.capacity() as u64, used) {
                return Err(LoginError::DirectoryShare);
            }
            *dir.registered.entry(from).or_default().entry(today).or_default() += charge;
        }
        let user = UserId::random();
        dir.bytes += entry.bytes();
        dir.by_key.insert(material, user.clone());
        dir.users.insert(user.clone(), entry);
        dir.expiries.insert((expires, user.clone()));
        dir.unused.entry(from).or_default().insert((expires, user.clone()));
        Ok(user)
    }

    pub fn public_key(&self, user: &UserId) -> Option<String> {
        self.inner.read().live(user).map(|entry| entry.public_key.clone())
    }

    pub fn user_record(&self, user: &UserId) -> Option<UserRecord> {
        let dir = self.inner.read();
        let entry = dir.live(user)?;
        let term = Duration::from_secs(self.inner.limits.inactive_user_ttl_secs);
        let upkeep = match entry.unused_from {
            Some(prefix) => Upkeep::Unused(prefix),
            None if renewal_due(entry.expires.saturating_duration_since(Instant::now()), term) => Upkeep::Due,
            None => Upkeep::Kept,
        };
        Some(UserRecord { public_key: entry.public_key.clone(), protected: entry.protected, upkeep })
    }

    /// Keeps `user` for `limits.inactive_user_ttl_secs` from now; no longer an unused
    /// registration.
    pub fn mark_used(&self, user: &UserId) {
        let now = Instant::now();
        let expires = now + Duration::from_secs(self.inner.limits.inactive_user_ttl_secs);
        let mut dir = self.inner.write();
        dir.forget_expired(now);
        let Some(entry) = dir.users.get_mut(user) else { return };
        let was = (std::mem::replace(&mut entry.expires, expires), user.clone());
        let unused_from = entry.unused_from.take();
        dir.expiries.remove(&was);
        dir.expiries.insert((expires, user.clone()));
        if let Some(prefix) = unused_from {
            dir.used(prefix, &was);
        }
    }

    pub fn protect(&self, user: &UserId) {
        let mut dir = self.inner.write();
        if let Some(entry) = dir.users.get_mut(user) {
            entry.protected = true;
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
        if dir.live(user).is_none() {
            return; // forgotten meanwhile: nothing to keep contacts for
        }
        let Directory { contacts, bytes, .. } = &mut *dir;
        let (known, at) = contacts.entry(user.clone()).or_insert_with(|| (HashSet::new(), Instant::now()));
        if at.elapsed() > ttl {
            *bytes -= known.len() * CONTACT_BYTES;
            known.clear();
        }
        *at = Instant::now();
        for person in people {
            if known.len() >= limits.max_contacts {
                break;
            }
            if known.insert(person.clone()) {
                *bytes += CONTACT_BYTES;
            }
        }
    }

    pub fn send(&self, from: &UserId, prefix: IpNet, to: &UserId, envelope: Bytes) -> Result<MsgId, SendError> {
        let limits = &self.inner.limits;
        let stranger = {
            let dir = self.inner.read();
            if dir.live(to).is_none() {
                return Err(SendError::UserNotFound);
            }
            limits.stranger_pool > 0 && !dir.is_contact(to, from, Duration::from_secs(limits.contacts_ttl_secs))
        };
        // The directory counts in the byte budget too (read before the inbox lock is taken).
        let directory = self.inner.directory_bytes();
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
                store.charges.release(&stored);
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
        let used = store.charges.bytes as u64;
        let holds = |held: Option<&usize>| held.copied().unwrap_or(0) as u64 + size as u64;
        if holds(store.charges.by_prefix.get(&prefix)) > shares.allowed(shares.per_prefix, capacity, used)
            || holds(store.charges.by_sender.get(from)) > shares.allowed(shares.per_sender, capacity, used)
        {
            return Err(SendError::OverStorage);
        }
        if store.charges.bytes + directory + size > limits.memory_max_bytes {
            return Err(SendError::Unavailable(Unavailable::said("memory engine full (limits.memory_max_bytes)")));
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
        store.charges.charge(from, prefix, size);
        self.inner.pressure.set(store.charges.bytes as u64, capacity);
        // Rung under the inbox lock, so notifications keep the inbox's order.
        self.inner.hub.deliver(to, Delivery { id, ts: id.ms, seq, envelope });
        Ok(id)
    }

    /// Takes tokens from the buckets of `kind:subject` (see `crate::limits::Buckets`).
    pub fn take_tokens(&self, kind: &str, subject: Subject<'_>, asks: &[Ask]) -> Verdict {
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
            store.charges.release(stored);
        }
        self.inner.pressure.set(store.charges.bytes as u64, self.inner.capacity() as u64);
    }

    /// How full the store is.
    pub fn pressure(&self) -> &crate::limits::storage::Pressure {
        &self.inner.pressure
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

    /// What the key directory counts for in `limits.memory_max_bytes`, once expired users are
    /// forgotten (the write lock only when one is due).
    fn directory_bytes(&self) -> usize {
        let now = Instant::now();
        {
            let dir = self.read();
            if !dir.expired_any(now) {
                return dir.bytes;
            }
        }
        let mut dir = self.write();
        dir.forget_expired(now);
        dir.bytes
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
            self.charges.release(stored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(limits: Limits) -> MemoryEngine {
        MemoryEngine::new(limits, Arc::new(Hub::new(16, 1 << 20, tokio_util::sync::CancellationToken::new())))
    }

    fn prefix(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn unused_registrations_expire_and_a_prefix_holds_only_so_many() {
        let limits = Limits { max_unused_registrations_per_prefix: 3, ..Limits::default() };
        let engine = engine(limits.clone());
        let here = prefix("192.0.2.7/32");
        let users: Vec<UserId> = (0..3).map(|i| engine.login(&format!("key{i}"), here).unwrap()).collect();
        assert_eq!(engine.login("key0", here).unwrap(), users[0], "a registered key is never refused");
        let refused = engine.login("key3", here).unwrap_err();
        assert!(
            matches!(refused, LoginError::TooManyUnused { retry_after } if retry_after > Duration::from_secs(6 * 24 * 3600)),
            "{refused:?}"
        );
        engine.login("key3", prefix("192.0.2.8/32")).expect("another prefix registers");
        // A use makes room, and keeps the user for the inactive-user TTL.
        let record = engine.user_record(&users[1]).unwrap();
        assert_eq!(record.upkeep, Upkeep::Unused(here));
        engine.mark_used(&users[1]);
        assert_eq!(engine.user_record(&users[1]).unwrap().upkeep, Upkeep::Kept);
        let fourth = engine.login("key4", here).expect("room again after a use");

        let later = Instant::now() + Duration::from_secs(limits.unused_registration_ttl_secs + 1);
        let mut dir = engine.inner.write();
        dir.forget_expired(later);
        let left: Vec<&UserId> = dir.users.keys().collect();
        assert_eq!(left, [&users[1]], "only the used one is left");
        assert!(!dir.unused.contains_key(&here));
        assert!(!dir.by_key.values().any(|u| u == &fourth || u == &users[0]));
        let entry = &dir.users[&users[1]];
        assert_eq!(dir.bytes, entry.bytes());
        dir.forget_expired(later + Duration::from_secs(limits.inactive_user_ttl_secs));
        assert!(dir.users.is_empty() && dir.by_key.is_empty() && dir.expiries.is_empty());
        assert_eq!(dir.bytes, 0);
    }

    #[test]
    fn the_directory_counts_in_the_memory_budget() {
        let limits = Limits { memory_max_bytes: 10 * (USER_BYTES + 2 * 40), ..Limits::default() };
        let engine = engine(limits);
        let here = prefix("192.0.2.7/32");
        let key = |i: usize| format!("{i:040}");
        for i in 0..10 {
            engine.login(&key(i), here).expect("fits");
        }
        assert!(matches!(engine.login(&key(10), here), Err(LoginError::Unavailable(_))));
        engine.login(&key(3), here).expect("a registered key still logs in");
    }
}
