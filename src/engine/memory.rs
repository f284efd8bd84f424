//! The in-process engine: everything in this process. Same ids, limits and ordering as the
//! Redis engine, so one conformance suite covers both: the inbox capacity in messages and
//! bytes, each sender's share of an inbox, the rate limiters' buckets. On top, a total byte
//! budget (`limits.memory_max_bytes`): a full process refuses sends, as a full Redis does,
//! instead of growing until it is killed.
//!
//! Alone it is the `memory` engine, lost on restart. With a journal (`super::embedded`) it is
//! the `embedded` engine: every change is also appended to the journal under the lock that
//! made it, and `restore` rebuilds the state from the data file at startup (what the inboxes
//! hold, and whom it is charged to, recomputed from the stored messages). Rate-limit buckets
//! and connection generations stay in the process only.
//!
//! The key directory expires as the Redis records do: a registration nobody used after
//! `limits.unused_registration_ttl_secs`, a user who stopped using their id after
//! `limits.inactive_user_ttl_secs`; it counts in `memory_max_bytes` (`USER_BYTES`), and a
//! registration that does not fit is refused as a send is.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;

use super::embedded::records::{ContactsRow, InboxRow, MessageRow, UserRow};
use super::embedded::{Journal, Record, Snapshot};
use super::errors::{LoginError, SendError};
use super::records::{Upkeep, UserRecord, renewal_due};
use super::tree::batch::{Secret, TreeBatch, TreeWrite};
use super::tree::state::TreeState;
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
    /// The embedded engine's journal: every change is also written to the data file. `None`:
    /// the memory engine, which writes nothing.
    journal: Option<Journal>,
    /// The generated token signing key, kept in the data file (embedded engine only).
    token_key: Mutex<Option<String>>,
    /// The verifiable key directory's records (`engine::tree`); taken after `directory` when
    /// both are (a registration is recorded as waiting under the directory's lock).
    tree: Mutex<TreeState>,
    /// Whether registrations are recorded for the key directory (`directory.enabled`).
    publishes: AtomicBool,
}

/// Where changes are written, if anywhere: the record is built only when there is a journal,
/// so the memory engine pays nothing for it.
#[derive(Clone, Copy)]
struct Log<'a>(Option<&'a Journal>);

impl Log<'_> {
    fn record(self, record: impl FnOnce() -> Record) {
        if let Some(journal) = self.0 {
            journal.append(record());
        }
    }

    /// Records that are committed together or not at all.
    fn record_all(self, records: impl FnOnce() -> Vec<Record>) {
        if let Some(journal) = self.0 {
            journal.append_all(records());
        }
    }
}

/// What a refused change says when the journal's queue is full (`embedded::journal`).
const JOURNAL_FULL: &str = "the data file is not keeping up; retry";

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

    fn row(&self) -> UserRow {
        UserRow {
            public_key: self.public_key.clone(),
            material: self.material.clone(),
            protected: self.protected,
            expires_ms: wall_ms(self.expires),
            unused_from: self.unused_from,
        }
    }
}

impl Directory {
    /// Enters `user` with every index that follows from its entry (a registration, or a row read
    /// back from the data file).
    fn insert(&mut self, user: UserId, entry: Entry) {
        self.bytes += entry.bytes();
        self.by_key.insert(entry.material.clone(), user.clone());
        self.expiries.insert((entry.expires, user.clone()));
        if let Some(prefix) = entry.unused_from {
            self.unused.entry(prefix).or_default().insert((entry.expires, user.clone()));
        }
        self.users.insert(user, entry);
    }

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
    fn forget_expired(&mut self, now: Instant, log: Log) {
        while let Some((at, user)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            let Some(entry) = self.users.remove(&user) else { continue };
            log.record(|| Record::ForgetUser(user.clone()));
            self.bytes -= entry.bytes();
            if self.by_key.get(&entry.material) == Some(&user) {
                self.by_key.remove(&entry.material);
            }
            if let Some(prefix) = entry.unused_from {
                self.used(prefix, &(at, user.clone()));
            }
            if let Some((people, _)) = self.contacts.remove(&user) {
                log.record(|| Record::ForgetContacts(user.clone()));
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
    /// Counted in the strangers' pool when it was sent.
    stranger: bool,
}

impl Stored {
    fn row(&self) -> MessageRow {
        MessageRow {
            seq: self.seq,
            from: self.from.clone(),
            prefix: self.prefix,
            stranger: self.stranger,
            envelope: self.envelope.clone(),
        }
    }
}

impl Inbox {
    fn empty() -> Inbox {
        Inbox {
            last: MsgId::default(),
            count: 0,
            written: Instant::now(),
            messages: BTreeMap::new(),
            bytes: 0,
            senders: HashMap::new(),
            strangers: (0, 0),
        }
    }

    fn row(&self) -> InboxRow {
        InboxRow { last: self.last, count: self.count, written_ms: wall_ms(self.written) }
    }

    /// Stores a message and counts it in its sender's share and, from a stranger, in the
    /// strangers' pool (`send` decided it may; `restore` replays what was stored).
    fn put(&mut self, id: MsgId, stored: Stored) {
        let size = stored.envelope.len();
        let stranger = stored.stranger;
        let share = self.senders.entry(stored.from.clone()).or_default();
        if stranger {
            self.strangers.0 += 1;
            self.strangers.1 += size;
        } else if share.stranger {
            // Now a contact: what it has waiting leaves the strangers' pool.
            self.strangers.0 = self.strangers.0.saturating_sub(share.messages);
            self.strangers.1 = self.strangers.1.saturating_sub(share.bytes);
        }
        share.stranger = stranger;
        share.messages += 1;
        share.bytes += size;
        self.bytes += size;
        self.messages.insert(id, stored);
    }

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
    fn clear(&mut self) -> BTreeMap<MsgId, Stored> {
        self.senders.clear();
        self.strangers = (0, 0);
        self.bytes = 0;
        std::mem::take(&mut self.messages)
    }
}

impl MemoryEngine {
    /// The memory engine: nothing outlives the process.
    pub fn new(limits: Limits, hub: Arc<Hub>) -> Self {
        Self::build(limits, hub, None)
    }

    /// The embedded engine: the state `snapshot` held, every change written to `journal`.
    pub fn embedded(limits: Limits, hub: Arc<Hub>, journal: Journal, snapshot: Snapshot) -> Result<Self, Unavailable> {
        let engine = Self::build(limits, hub, Some(journal));
        engine.restore(snapshot)?;
        Ok(engine)
    }

    fn build(limits: Limits, hub: Arc<Hub>, journal: Option<Journal>) -> Self {
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
                journal,
                token_key: Mutex::default(),
                tree: Mutex::default(),
                publishes: AtomicBool::new(true),
            }),
        }
    }

    /// `embedded` when changes are written to a data file, else `memory`.
    pub fn name(&self) -> &'static str {
        if self.inner.journal.is_some() { "embedded" } else { "memory" }
    }

    /// Waits until every change made so far is committed to the data file (at once without
    /// one).
    pub async fn durable(&self) -> Result<(), Unavailable> {
        match &self.inner.journal {
            Some(journal) => journal.durable().await,
            None => Ok(()),
        }
    }

    /// Whether the data file is being written and keeping up: no commit failing, the queue not
    /// full (always, without one).
    pub fn ready(&self) -> bool {
        self.inner.has_room()
    }

    /// The token key kept in the data file, `candidate` stored as it the first time; without a
    /// data file, `candidate` (one process, one key).
    pub fn shared_token_key(&self, candidate: &str) -> String {
        if self.inner.journal.is_none() {
            return candidate.to_owned();
        }
        let mut key = self.inner.token_key.lock().unwrap_or_else(|e| e.into_inner());
        key.get_or_insert_with(|| {
            self.inner.log().record(|| Record::TokenKey(candidate.to_owned()));
            candidate.to_owned()
        })
        .clone()
    }

    /// Rebuilds the state from what the data file held: the directory as it was, each inbox's
    /// messages put back in order (so each sender's share, the strangers' pool and the
    /// storage charges come out as the sends made them). Deadlines already past are swept out
    /// as usual, by the next use.
    fn restore(&self, snapshot: Snapshot) -> Result<(), Unavailable> {
        let Snapshot { users, inboxes, messages, contacts, burnt, registered, token_key, tree } = snapshot;
        *self.tree() = TreeState::restore(tree)
            .map_err(|e| Unavailable::said(format!("the key directory in the data file is damaged: {e}")))?;
        let mut dir = self.inner.write();
        for (user, row) in users {
            let entry = Entry {
                public_key: row.public_key,
                material: row.material,
                protected: row.protected,
                expires: instant_at(row.expires_ms),
                unused_from: row.unused_from,
            };
            dir.insert(user, entry);
        }
        for (user, row) in contacts {
            dir.bytes += row.people.len() * CONTACT_BYTES;
            dir.contacts.insert(user, (row.people.into_iter().collect(), instant_at(row.at_ms)));
        }
        dir.registered = registered.into_iter().map(|(prefix, days)| (prefix, days.into_iter().collect())).collect();
        drop(dir);
        let mut store = self.inner.inboxes();
        let Store { inboxes: boxes, charges, .. } = &mut *store;
        for (user, row) in inboxes {
            let inbox =
                Inbox { last: row.last, count: row.count, written: instant_at(row.written_ms), ..Inbox::empty() };
            boxes.insert(user, inbox);
        }
        for (user, id, row) in messages {
            let inbox = boxes.entry(user).or_insert_with(Inbox::empty);
            // Never behind what it holds, so new ids and numbers follow the stored ones.
            inbox.last = inbox.last.max(id);
            inbox.count = inbox.count.max(row.seq);
            charges.charge(&row.from, row.prefix, row.envelope.len());
            let stored = Stored {
                seq: row.seq,
                envelope: row.envelope,
                from: row.from,
                prefix: row.prefix,
                stranger: row.stranger,
            };
            inbox.put(id, stored);
        }
        self.inner.pressure.set(charges.bytes as u64, self.inner.capacity() as u64);
        drop(store);
        let burnt = burnt.into_iter().map(|(jti, until)| (jti, instant_at(until)));
        *self.inner.burnt.lock().unwrap_or_else(|e| e.into_inner()) = burnt.collect();
        *self.inner.token_key.lock().unwrap_or_else(|e| e.into_inner()) = token_key;
        Ok(())
    }

    /// The rules of the Redis engine's login: a new key from a prefix holding the most unused
    /// registrations is refused; one that does not fit in `memory_max_bytes` too, as a full
    /// store.
    pub fn login(&self, public_key: &str, from: IpNet) -> Result<UserId, LoginError> {
        // Every record here was made with today's normalisation (the data file stores it).
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
        let log = self.inner.log();
        let mut dir = self.inner.write();
        dir.forget_expired(now, log);
        if let Some(user) = dir.by_key.get(&material) {
            return Ok(user.clone());
        }
        if !self.inner.has_room() {
            return Err(Unavailable::said(JOURNAL_FULL).into());
        }
        let max = limits.max_unused_registrations_per_prefix;
        if let Some(waiting) = dir.unused.get(&from).filter(|waiting| max > 0 && waiting.len() >= max) {
            let first = waiting.first().map_or(now, |(at, _)| *at);
            return Err(LoginError::TooManyUnused { retry_after: first.saturating_duration_since(now) });
        }
        let expires = now + Duration::from_secs(limits.unused_registration_ttl_secs);
        let entry =
            Entry { public_key: public_key.to_owned(), material, protected: false, expires, unused_from: Some(from) };
        if stored + dir.bytes + entry.bytes() > limits.memory_max_bytes {
            return Err(Unavailable::said("memory engine full (limits.memory_max_bytes)").into());
        }
        // What its prefix registered within a year, against its share (`directory_per_prefix`).
        let shares = &limits.storage;
        if shares.directory_per_prefix > 0.0 {
            let today = unix_ms() / 86_400_000;
            let keep = limits.inactive_user_ttl_secs.div_ceil(86_400) + 1;
            if dir.registered.len() >= REGISTERED_SWEEP_AT {
                dir.registered.retain(|prefix, days| {
                    let kept = days.last_key_value().is_some_and(|(day, _)| *day + keep >= today);
                    if !kept {
                        log.record(|| Record::ForgetRegistered(*prefix));
                    }
                    kept
                });
            }
            let days = dir.registered.entry(from).or_default();
            days.retain(|day, _| *day + keep >= today);
            let held: u64 = days.values().sum();
            let used = (stored + dir.bytes) as u64;
            let charge = crate::limits::storage::registration_bytes(public_key);
            if held + charge > shares.allowed(shares.directory_per_prefix, self.inner.capacity() as u64, used) {
                return Err(LoginError::DirectoryShare);
            }
            let days = dir.registered.entry(from).or_default();
            *days.entry(today).or_default() += charge;
            log.record(|| Record::Registered(from, days.iter().map(|(day, bytes)| (*day, *bytes)).collect()));
        }
        let user = UserId::random();
        if self.inner.publishes.load(Ordering::Relaxed) {
            // Waiting for the key directory from the same commit on: no registration is lost
            // to it by a crash.
            self.tree().add_pending(user.clone(), public_key.to_owned());
            log.record_all(|| {
                vec![Record::User(user.clone(), entry.row()), Record::Pending(user.clone(), public_key.to_owned())]
            });
        } else {
            log.record(|| Record::User(user.clone(), entry.row()));
        }
        dir.insert(user.clone(), entry);
        Ok(user)
    }

    /// Whether registrations are recorded for the key directory (on unless turned off).
    pub fn set_publishing(&self, on: bool) {
        self.inner.publishes.store(on, Ordering::Relaxed);
    }

    pub fn tree(&self) -> MutexGuard<'_, TreeState> {
        self.inner.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `batch`: in the data file first, then where readers see it, so nobody is shown
    /// an epoch a crash could take back.
    pub async fn tree_write(&self, batch: TreeBatch, write: TreeWrite) -> Result<(), Unavailable> {
        let fresh = self.tree().fresh(batch, &write);
        if fresh.nodes.is_empty() && fresh.states.is_empty() {
            return Ok(());
        }
        if self.inner.journal.is_some() {
            if !self.inner.has_room() {
                return Err(Unavailable::said(JOURNAL_FULL));
            }
            self.inner.log().record(|| Record::Tree(fresh.clone()));
            self.durable().await?;
        }
        self.tree().apply(fresh);
        Ok(())
    }

    pub async fn add_root(&self, epoch: u64, hash: [u8; 32]) -> Result<(), Unavailable> {
        if !self.tree().check_root(epoch, &hash).map_err(Unavailable::said)? {
            return Ok(());
        }
        self.inner.log().record(|| Record::Root(epoch, hash));
        self.durable().await?;
        self.tree().add_root(epoch, hash).map_err(Unavailable::said)?;
        Ok(())
    }

    /// Queues every live user not in the directory and not waiting (`Engine::backfill_pending`),
    /// in the data file first, a batch at a time.
    pub async fn backfill_pending(&self) -> Result<u64, Unavailable> {
        const BATCH: usize = 1000;
        let live: Vec<(UserId, String)> = {
            let dir = self.inner.read();
            let now = Instant::now();
            let users = dir.users.iter().filter(|(_, entry)| entry.expires > now);
            users.map(|(user, entry)| (user.clone(), entry.public_key.clone())).collect()
        };
        let mut queued = 0;
        for batch in live.chunks(BATCH) {
            let absent: Vec<(UserId, String)> = {
                let tree = self.tree();
                let labels: Vec<Vec<u8>> = batch.iter().map(|(user, _)| user.as_str().as_bytes().to_vec()).collect();
                let states = tree.states(&labels);
                let unqueued =
                    batch.iter().zip(states).filter(|((user, _), states)| states.is_empty() && !tree.is_pending(user));
                unqueued.map(|(entry, _)| entry.clone()).collect()
            };
            if absent.is_empty() {
                continue;
            }
            self.inner.log().record_all(|| absent.iter().map(|(u, k)| Record::Pending(u.clone(), k.clone())).collect());
            self.durable().await?;
            let mut tree = self.tree();
            for (user, key) in absent {
                tree.add_pending(user, key);
                queued += 1;
            }
        }
        Ok(queued)
    }

    pub async fn published(&self, users: &[UserId]) -> Result<(), Unavailable> {
        self.inner.log().record(|| Record::Published(users.to_vec()));
        self.durable().await?;
        self.tree().published(users);
        Ok(())
    }

    /// The generated `secret`, kept in the data file; without one, `candidate` the first time
    /// and the same for the process's life.
    pub async fn shared_secret(&self, secret: Secret, candidate: &str) -> Result<String, Unavailable> {
        let value = {
            let mut tree = self.tree();
            match tree.secret(secret.as_str()) {
                Some(value) => value.clone(),
                None => {
                    tree.set_secret(secret.as_str(), candidate.to_owned());
                    self.inner.log().record(|| Record::Secret(secret.as_str().to_owned(), candidate.to_owned()));
                    candidate.to_owned()
                }
            }
        };
        self.durable().await?;
        Ok(value)
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
        let log = self.inner.log();
        let mut dir = self.inner.write();
        dir.forget_expired(now, log);
        let Some(entry) = dir.users.get_mut(user) else { return };
        let was = (std::mem::replace(&mut entry.expires, expires), user.clone());
        let unused_from = entry.unused_from.take();
        log.record(|| Record::User(user.clone(), entry.row()));
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
            self.inner.log().record(|| Record::User(user.clone(), entry.row()));
        }
    }

    /// Burns `jti` for `ttl`: its deadline the first time within `ttl` (to give to
    /// `unburn_challenge` if the burn cannot be committed), `None` for a replay. A new burn grows
    /// the store: refused while the journal has no room.
    pub fn burn_challenge(&self, jti: &str, ttl: Duration) -> Result<Option<Instant>, Unavailable> {
        let mut burnt = self.inner.burnt.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let log = self.inner.log();
        burnt.retain(|jti, until| {
            let kept = *until > now;
            if !kept {
                log.record(|| Record::Unburn(jti.clone()));
            }
            kept
        });
        if burnt.contains_key(jti) {
            return Ok(None);
        }
        if !self.inner.has_room() {
            return Err(Unavailable::said(JOURNAL_FULL));
        }
        let until = now + ttl;
        burnt.insert(jti.to_owned(), until);
        log.record(|| Record::Burn(jti.to_owned(), wall_ms(until)));
        Ok(Some(until))
    }

    /// Takes back the burn of `jti` that `burn_challenge` answered `until` (its commit failed,
    /// so the client was told `unavailable` and may answer the same challenge again); a later
    /// burn of the same id (after this one expired) is left alone.
    pub fn unburn_challenge(&self, jti: &str, until: Instant) {
        let mut burnt = self.inner.burnt.lock().unwrap_or_else(|e| e.into_inner());
        if burnt.get(jti) == Some(&until) {
            burnt.remove(jti);
            self.inner.log().record(|| Record::Unburn(jti.to_owned()));
        }
    }

    /// Adds `people` to `user`'s contacts, up to `limits.max_contacts`; refused while the
    /// journal has no room.
    pub fn add_contacts(&self, user: &UserId, people: &[UserId]) -> Result<(), Unavailable> {
        let limits = &self.inner.limits;
        let ttl = Duration::from_secs(limits.contacts_ttl_secs);
        let mut dir = self.inner.write();
        if dir.live(user).is_none() {
            return Ok(()); // forgotten meanwhile: nothing to keep contacts for
        }
        if !self.inner.has_room() {
            return Err(Unavailable::said(JOURNAL_FULL));
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
        self.inner.log().record(|| {
            Record::Contacts(user.clone(), ContactsRow { at_ms: wall_ms(*at), people: known.iter().cloned().collect() })
        });
        Ok(())
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
        let log = self.inner.log();
        let mut store = self.inner.inboxes();
        store.sweep(ttl, log);
        if !self.inner.has_room() {
            return Err(SendError::Unavailable(Unavailable::said(JOURNAL_FULL)));
        }
        let store = &mut *store;
        let inbox = store.inboxes.entry(to.clone()).or_insert_with(Inbox::empty);
        if inbox.written.elapsed() > ttl {
            // Expired, as a Redis key with a TTL would have.
            for (id, stored) in inbox.clear() {
                log.record(|| Record::Remove(to.clone(), id));
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
        let stored = Stored { seq, envelope: envelope.clone(), from: from.clone(), prefix, stranger };
        log.record(|| Record::Message(to.clone(), id, stored.row()));
        log.record(|| Record::Inbox(to.clone(), inbox.row()));
        inbox.put(id, stored);
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
        let log = self.inner.log();
        let mut store = self.inner.inboxes();
        let taken: Vec<Stored> = match store.inboxes.get_mut(user) {
            Some(inbox) => ids
                .iter()
                .filter_map(|id| {
                    let stored = inbox.take(id)?;
                    log.record(|| Record::Remove(user.clone(), *id));
                    Some(stored)
                })
                .collect(),
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

    fn log(&self) -> Log<'_> {
        Log(self.journal.as_ref())
    }

    /// Whether a change that grows the store may be made: always without a journal.
    fn has_room(&self) -> bool {
        self.journal.as_ref().is_none_or(Journal::has_room)
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
        dir.forget_expired(now, self.log());
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
    fn sweep(&mut self, ttl: Duration, log: Log) {
        if self.swept.is_some_and(|at| at.elapsed() < EXPIRY_SWEEP) {
            return;
        }
        self.swept = Some(Instant::now());
        // Emptied, not forgotten: the message counter goes on, as the user record's does in Redis.
        let mut expired = Vec::new();
        for (user, inbox) in &mut self.inboxes {
            if inbox.written.elapsed() > ttl && !inbox.messages.is_empty() {
                for (id, stored) in inbox.clear() {
                    log.record(|| Record::Remove(user.clone(), id));
                    expired.push(stored);
                }
            }
        }
        for stored in &expired {
            self.charges.release(stored);
        }
    }
}

/// `at` on the wall clock (ms since the Unix epoch), as the data file keeps deadlines.
fn wall_ms(at: Instant) -> u64 {
    let (now, wall) = (Instant::now(), unix_ms());
    match at.checked_duration_since(now) {
        Some(ahead) => wall.saturating_add(ahead.as_millis() as u64),
        None => wall.saturating_sub(now.duration_since(at).as_millis() as u64),
    }
}

/// The instant of a wall-clock time read from the data file.
fn instant_at(ms: u64) -> Instant {
    let (now, wall) = (Instant::now(), unix_ms());
    if ms >= wall {
        now + Duration::from_millis(ms - wall)
    } else {
        // Before the monotonic clock's origin it cannot be told apart from the origin; it is
        // long past either way.
        now.checked_sub(Duration::from_millis(wall - ms)).unwrap_or(now)
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
        dir.forget_expired(later, Log(None));
        let left: Vec<&UserId> = dir.users.keys().collect();
        assert_eq!(left, [&users[1]], "only the used one is left");
        assert!(!dir.unused.contains_key(&here));
        assert!(!dir.by_key.values().any(|u| u == &fourth || u == &users[0]));
        let entry = &dir.users[&users[1]];
        assert_eq!(dir.bytes, entry.bytes());
        dir.forget_expired(later + Duration::from_secs(limits.inactive_user_ttl_secs), Log(None));
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

    fn embedded(limits: Limits, dir: &std::path::Path) -> MemoryEngine {
        let (journal, snapshot, _) = super::super::embedded::open(dir).unwrap();
        let hub = Arc::new(Hub::new(16, 1 << 20, tokio_util::sync::CancellationToken::new()));
        MemoryEngine::embedded(limits, hub, journal, snapshot).unwrap()
    }

    /// Everything the rules read, but instants (compared apart, to the millisecond).
    fn fingerprint(engine: &MemoryEngine) -> String {
        fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
            items.sort();
            items
        }
        let dir = engine.inner.read();
        let users = sorted(
            dir.users.iter().map(|(u, e)| (u.clone(), e.public_key.clone(), e.protected, e.unused_from)).collect(),
        );
        let by_key = sorted(dir.by_key.iter().map(|(k, u)| (k.clone(), u.clone())).collect());
        let unused = sorted(
            dir.unused.iter().map(|(p, set)| (*p, sorted(set.iter().map(|(_, u)| u.clone()).collect()))).collect(),
        );
        let contacts = sorted(
            dir.contacts.iter().map(|(u, (people, _))| (u.clone(), sorted(people.iter().cloned().collect()))).collect(),
        );
        let registered = sorted(dir.registered.iter().map(|(p, days)| (*p, days.clone())).collect());
        let store = engine.inner.inboxes();
        let inboxes = sorted(
            store
                .inboxes
                .iter()
                .map(|(u, i)| {
                    let messages: Vec<_> = i
                        .messages
                        .iter()
                        .map(|(id, m)| (*id, m.seq, m.from.clone(), m.prefix, m.stranger, m.envelope.clone()))
                        .collect();
                    let senders = sorted(
                        i.senders
                            .iter()
                            .map(|(s, share)| (s.clone(), share.messages, share.bytes, share.stranger))
                            .collect(),
                    );
                    (u.clone(), i.last, i.count, messages, i.bytes, senders, i.strangers)
                })
                .collect(),
        );
        let charges = &store.charges;
        let by_prefix = sorted(charges.by_prefix.iter().map(|(p, b)| (*p, *b)).collect());
        let by_sender = sorted(charges.by_sender.iter().map(|(s, b)| (s.clone(), *b)).collect());
        let burnt = sorted(engine.inner.burnt.lock().unwrap().keys().cloned().collect());
        let token = engine.inner.token_key.lock().unwrap().clone();
        format!(
            "{users:?}\n{by_key:?}\n{unused:?}\n{contacts:?}\n{registered:?}\n{}\n{inboxes:?}\n{} {by_prefix:?} \
             {by_sender:?}\n{burnt:?} {token:?} {:.6}",
            dir.bytes,
            charges.bytes,
            engine.inner.pressure.fill()
        )
    }

    #[tokio::test]
    async fn the_embedded_engine_comes_back_as_it_was() {
        let scratch = super::super::embedded::tests::Scratch::new();
        let limits = Limits { stranger_pool: 16, stranger_pool_bytes: 8 << 20, ..Limits::default() };
        let (home, away) = (prefix("192.0.2.7/32"), prefix("2001:db8::/64"));
        let (before, a, b, expires) = {
            let engine = embedded(limits.clone(), scratch.path());
            assert_eq!(engine.name(), "embedded");
            let a = engine.login("key-a", home).unwrap();
            let b = engine.login("key-b", away).unwrap();
            let c = engine.login("key-c", home).unwrap();
            engine.mark_used(&a);
            engine.mark_used(&b);
            engine.protect(&a);
            engine.add_contacts(&b, std::slice::from_ref(&a)).unwrap();
            let envelope = |text: &str| Bytes::from(text.to_owned());
            engine.send(&a, home, &b, envelope("a to b, a contact")).unwrap();
            engine.send(&c, home, &b, envelope("c to b, a stranger")).unwrap();
            // c becomes a contact: what it has waiting leaves the strangers' pool.
            engine.add_contacts(&b, std::slice::from_ref(&c)).unwrap();
            engine.send(&c, home, &b, envelope("c to b, now a contact")).unwrap();
            let first = engine.send(&c, home, &a, envelope("c to a, one")).unwrap();
            engine.send(&c, home, &a, envelope("c to a, two")).unwrap();
            engine.remove(&a, &[first]);
            assert!(engine.burn_challenge("jti-1", Duration::from_secs(60)).unwrap().is_some());
            assert_eq!(engine.shared_token_key("key-one"), "key-one");
            engine.durable().await.unwrap();
            let expires = wall_ms(engine.inner.read().users[&a].expires);
            (fingerprint(&engine), a, b, expires)
        };
        let engine = embedded(limits, scratch.path());
        assert_eq!(fingerprint(&engine), before);
        assert!(wall_ms(engine.inner.read().users[&a].expires).abs_diff(expires) <= 5, "deadlines kept");
        assert_eq!(engine.user_record(&a).unwrap().upkeep, Upkeep::Kept);
        assert!(engine.user_record(&a).unwrap().protected);
        assert!(engine.burn_challenge("jti-1", Duration::from_secs(60)).unwrap().is_none(), "still burnt");
        assert_eq!(engine.shared_token_key("key-two"), "key-one", "the first key is kept");
        // Numbers and ids go on after the stored ones.
        let last = engine.backlog(&b, None, 10).last().unwrap().id;
        let next = engine.send(&a, home, &b, Bytes::from_static(b"after")).unwrap();
        assert!(next > last);
        assert_eq!(engine.sequence(&b), 4);
    }

    fn journaled(store: impl super::super::embedded::journal::Store) -> MemoryEngine {
        let journal = Journal::start(store).unwrap();
        let hub = Arc::new(Hub::new(16, 1 << 20, tokio_util::sync::CancellationToken::new()));
        MemoryEngine::embedded(Limits::default(), hub, journal, Snapshot::default()).unwrap()
    }

    fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// While commits fail, nothing that grows the store is queued: contacts and challenge
    /// burns are refused as sends and registrations are, and the server is not ready.
    #[test]
    fn growth_is_refused_while_the_file_is_not_written() {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let engine = journaled(Switched(failing.clone()));
        let here = prefix("192.0.2.7/32");
        let (a, b) = (engine.login("key-a", here).unwrap(), engine.login("key-b", here).unwrap());
        let journal = engine.inner.journal.clone().unwrap();
        eventually("the logins are committed", || journal.waiting() == 0);
        failing.store(true, Ordering::Release);
        engine.mark_used(&a); // a renewal is always queued; its commit fails
        eventually("the failing commit is noticed", || !engine.ready());
        let waiting = journal.waiting();
        for n in 0..1000 {
            assert!(engine.add_contacts(&a, std::slice::from_ref(&b)).is_err());
            assert!(engine.burn_challenge(&format!("jti-{n}"), Duration::from_secs(60)).is_err());
            assert!(engine.send(&a, here, &b, Bytes::from_static(b"hello")).is_err());
            assert!(engine.login(&format!("key-{n}"), here).is_err());
        }
        assert_eq!(journal.waiting(), waiting, "the queue did not grow");
    }

    /// A store that fails while `failing` is set.
    struct Switched(Arc<std::sync::atomic::AtomicBool>);

    impl super::super::embedded::journal::Store for Switched {
        fn commit(&mut self, _: &[Record]) -> Result<(), String> {
            match self.0.load(Ordering::Acquire) {
                true => Err("disk full".into()),
                false => Ok(()),
            }
        }
    }

    /// A burn whose commit failed was answered `unavailable`: the client's retry of the same
    /// answer is taken once the file is written again, and only once.
    #[tokio::test]
    async fn a_burn_that_was_not_committed_does_not_refuse_the_retry() {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let memory = journaled(Switched(failing.clone()));
        let engine = super::super::Engine::Memory(memory.clone());
        let ttl = Duration::from_secs(60);
        assert!(engine.burn_challenge("jti", ttl).await.is_err(), "not committed");
        failing.store(false, Ordering::Release);
        eventually("the file is written again", || memory.ready());
        assert!(engine.burn_challenge("jti", ttl).await.unwrap(), "the retry is taken");
        assert!(!engine.burn_challenge("jti", ttl).await.unwrap(), "and is single use");
    }
}
