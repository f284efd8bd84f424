//! The local switchboard: which socket on this replica belongs to which user.
//!
//! Engines ring the hub's doorbell (`deliver`, `takeover`, `resume_live`); the hub hands the
//! news to the one session that holds the user's socket here. The hub never blocks: when a
//! doorbell cannot be queued (queue full, byte budget spent, or the hub is degraded because the
//! engine's doorbell mailbox had a gap) the session is marked *lagged* and asked to re-read its
//! inbox, which is the source of truth. A lost doorbell costs a read, never a message, and
//! never an ordering: a lagged session forwards nothing live until it has re-read.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::{Delivery, UserId, close};

/// The hub's handle on one session; the session holds the same `Arc`.
#[derive(Debug)]
pub struct Mailbox {
    pub id: u64,
    pub user: UserId,
    /// Live deliveries waiting for the session (a plain deque: an idle socket costs nothing).
    queue: Mutex<VecDeque<Delivery>>,
    queue_limit: usize,
    queued: Notify,
    /// Envelope bytes in `queue` (bounded by the hub's byte budget).
    queued_bytes: AtomicUsize,
    /// A doorbell was not queued since the session last started re-reading its inbox.
    lagged: AtomicBool,
    reread: Notify,
    /// Cancelled on takeover and on server shutdown (a child of the shutdown token).
    kicked: CancellationToken,
    kick_code: AtomicU16,
}

impl Mailbox {
    /// Resolves when the session must re-read its inbox (a doorbell may have been missed). A
    /// request made while nobody waits is kept for the next wait.
    pub fn reread_requested(&self) -> tokio::sync::futures::Notified<'_> {
        self.reread.notified()
    }

    /// Starts a re-read: doorbells missed from now on will be noticed by `is_lagged`.
    pub fn begin_reread(&self) {
        self.lagged.store(false, Ordering::SeqCst);
    }

    /// Whether a doorbell was missed since `begin_reread`: queued deliveries may then sit
    /// behind a gap and must not be forwarded before the next re-read.
    pub fn is_lagged(&self) -> bool {
        self.lagged.load(Ordering::SeqCst)
    }

    /// The next queued live delivery, if any.
    pub fn try_next(&self) -> Option<Delivery> {
        let delivery = self.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()?;
        self.queued_bytes.fetch_sub(delivery.envelope.len(), Ordering::AcqRel);
        Some(delivery)
    }

    /// Waits for the next queued live delivery. Cancel-safe: a delivery is only taken by the
    /// poll that returns it.
    pub async fn next(&self) -> Delivery {
        loop {
            if let Some(delivery) = self.try_next() {
                return delivery;
            }
            self.queued.notified().await;
        }
    }

    /// Resolves with the close code when the session must end: 4409 when a newer connection
    /// took over, 1001 when the server shuts down.
    pub async fn kicked(&self) -> u16 {
        self.kicked.cancelled().await;
        self.kick_code()
    }

    pub fn is_kicked(&self) -> Option<u16> {
        self.kicked.is_cancelled().then(|| self.kick_code())
    }

    fn kick_code(&self) -> u16 {
        match self.kick_code.load(Ordering::Acquire) {
            0 => close::GOING_AWAY, // the shutdown token, not a takeover
            code => code,
        }
    }

    fn kick(&self, code: u16) {
        // The first reason wins: a session replaced and then shut down reports "replaced".
        let _ = self.kick_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.kicked.cancel();
    }

    /// A missed doorbell was noticed by the session itself (a skipped message number).
    pub fn request_reread(&self) {
        self.lag();
    }

    fn lag(&self) {
        self.lagged.store(true, Ordering::SeqCst);
        self.reread.notify_one();
    }

    fn ring(&self, delivery: Delivery, byte_budget: usize) {
        let size = delivery.envelope.len();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.queue_limit || self.queued_bytes.load(Ordering::Acquire) + size > byte_budget {
            drop(queue);
            return self.lag(); // the message is in the inbox: re-read it
        }
        self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        queue.push_back(delivery);
        drop(queue);
        self.queued.notify_one();
    }
}

#[derive(Debug)]
struct Slot {
    mailbox: Arc<Mailbox>,
    /// Connection generation claimed from the engine, once attached.
    generation: Option<u64>,
    /// Highest generation announced for this user by any replica.
    newest_seen: u64,
    /// The live connection this one is about to replace: it ends only once the new one is
    /// attached, so a failed attach does not cost the user their working connection.
    previous: Option<(Arc<Mailbox>, Option<u64>)>,
}

#[derive(Debug)]
pub struct Hub {
    slots: Mutex<HashMap<UserId, Slot>>,
    next_id: AtomicU64,
    queue: usize,
    byte_budget: usize,
    /// Set while the engine's doorbell mailbox may have missed messages: nothing is forwarded
    /// live, every doorbell becomes a re-read.
    degraded: AtomicBool,
    shutdown: CancellationToken,
}

impl Hub {
    /// `queue` and `byte_budget`: live deliveries (and their bytes) buffered per session
    /// before it falls back to re-reading its inbox. Sessions end when `shutdown` fires.
    pub fn new(queue: usize, byte_budget: usize, shutdown: CancellationToken) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue: queue.max(1),
            byte_budget: byte_budget.max(1),
            degraded: AtomicBool::new(false),
            shutdown,
        }
    }

    /// Makes a new session the user's socket on this replica. An older session here keeps
    /// its socket until the new one is attached (`set_generation`). Called by the session's
    /// registration guard (`session::Attached`), whose drop undoes it (`unregister`).
    pub fn register(&self, user: &UserId) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.clone(),
            queue: Mutex::new(VecDeque::new()),
            queue_limit: self.queue,
            queued: Notify::new(),
            queued_bytes: AtomicUsize::new(0),
            lagged: AtomicBool::new(false),
            reread: Notify::new(),
            kicked: self.shutdown.child_token(),
            kick_code: AtomicU16::new(0),
        });
        let mut slots = self.lock();
        let previous = match slots.remove(user) {
            None => None,
            Some(old) if old.generation.is_some() => Some((old.mailbox, old.generation)),
            Some(old) => {
                // Still attaching and already superseded: it never becomes live.
                old.mailbox.kick(close::REPLACED);
                old.previous
            }
        };
        let newest_seen = previous.as_ref().and_then(|(_, g)| *g).unwrap_or(0);
        slots.insert(user.clone(), Slot { mailbox: mailbox.clone(), generation: None, newest_seen, previous });
        mailbox
    }

    /// Removes the session; returns true if the user has no socket here any more. Called by
    /// the session's attachment guard, which then tells the engine to stop listening for the user.
    pub fn unregister(&self, mailbox: &Mailbox) -> bool {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(&mailbox.user) else { return true };
        if slot.mailbox.id == mailbox.id {
            match slot.previous.take() {
                // The attach failed: the connection it was to replace stays the live one. It
                // got no doorbells meanwhile, so it re-reads its inbox.
                Some((previous, generation)) if slot.generation.is_none() => {
                    previous.lag();
                    slot.mailbox = previous;
                    slot.generation = generation;
                    false
                }
                _ => {
                    slots.remove(&mailbox.user);
                    true
                }
            }
        } else {
            if slot.previous.as_ref().is_some_and(|(p, _)| p.id == mailbox.id) {
                slot.previous = None;
            }
            false
        }
    }

    pub fn is_registered(&self, user: &UserId) -> bool {
        self.lock().contains_key(user)
    }

    /// Records the generation the engine gave this session's connection: the session is now
    /// the user's live connection here; the one it replaces ends; if a newer connection was
    /// announced meanwhile (on any replica), this one is already obsolete.
    pub fn set_generation(&self, mailbox: &Mailbox, generation: u64) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(&mailbox.user).filter(|s| s.mailbox.id == mailbox.id) {
            slot.generation = Some(generation);
            if let Some((previous, _)) = slot.previous.take() {
                previous.kick(close::REPLACED);
            }
            if generation < slot.newest_seen {
                slot.mailbox.kick(close::REPLACED);
            }
        }
    }

    /// A connection of `user` with `generation` opened somewhere: older ones here end.
    pub fn takeover(&self, user: &UserId, generation: u64) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(user) {
            slot.newest_seen = slot.newest_seen.max(generation);
            if slot.generation.is_some_and(|g| g < generation) {
                slot.mailbox.kick(close::REPLACED);
            }
        }
    }

    /// The generation of `user`'s live connection here, when a message for the user may be
    /// handed to it directly instead of through the doorbell (see `engine::redis::sender`):
    /// attached, and the doorbell link healthy.
    pub fn live_generation(&self, user: &UserId) -> Option<u64> {
        if self.degraded.load(Ordering::SeqCst) {
            return None;
        }
        self.lock().get(user).and_then(|slot| slot.generation)
    }

    /// A message for `user` was stored; hand it to the user's session here, if any.
    pub fn deliver(&self, user: &UserId, delivery: Delivery) {
        if let Some(slot) = self.lock().get(user) {
            if self.degraded.load(Ordering::SeqCst) {
                slot.mailbox.lag();
            } else {
                slot.mailbox.ring(delivery, self.byte_budget);
            }
        }
    }

    /// From now on doorbells only ask sessions to re-read (see the type's docs). The engine's
    /// doorbell link alone pauses and resumes.
    pub fn pause_live(&self) {
        self.degraded.store(true, Ordering::SeqCst);
    }

    /// Every session re-reads its inbox, then live forwarding resumes: in this order, so that a
    /// live delivery can never be forwarded ahead of the gap's re-read.
    pub fn resume_live(&self) {
        self.reread_all();
        self.degraded.store(false, Ordering::SeqCst);
    }

    /// Every session re-reads its inbox (after the doorbell mailbox was down).
    fn reread_all(&self) {
        for slot in self.lock().values() {
            slot.mailbox.lag();
        }
    }

    /// The user's session here, if any, re-reads its inbox (its doorbells may have been lost).
    pub fn reread(&self, user: &UserId) {
        if let Some(slot) = self.lock().get(user) {
            slot.mailbox.lag();
        }
    }

    pub fn users(&self) -> Vec<UserId> {
        self.lock().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Slot>> {
        // Every update under the lock is a whole insert, remove or field assignment, so a
        // poisoned lock never leaves the map half-updated: it is still safe to use.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MsgId;

    fn hub(queue: usize) -> Hub {
        Hub::new(queue, 1 << 20, CancellationToken::new())
    }

    fn delivery(seq: u64) -> Delivery {
        Delivery { id: MsgId { ms: 1, seq }, ts: 1, seq, envelope: "{}".into() }
    }

    #[tokio::test]
    async fn newer_local_session_replaces_older_once_attached() {
        let hub = hub(4);
        let user = UserId::random();
        let old = hub.register(&user);
        hub.set_generation(&old, 1);
        let new = hub.register(&user);
        assert!(old.is_kicked().is_none(), "the old socket lives until the new one is attached");
        hub.set_generation(&new, 2);
        assert_eq!(old.kicked().await, close::REPLACED);
        assert!(!hub.unregister(&old), "the old session must not remove the new one");
        hub.deliver(&user, delivery(1));
        assert_eq!(new.next().await.id.seq, 1);
        assert!(hub.unregister(&new));
        assert!(hub.is_empty());
    }

    #[tokio::test]
    async fn a_failed_attach_keeps_the_working_connection() {
        let hub = hub(4);
        let user = UserId::random();
        let old = hub.register(&user);
        hub.set_generation(&old, 1);
        let new = hub.register(&user);
        assert!(!hub.unregister(&new), "the old connection is still registered");
        assert!(old.is_kicked().is_none());
        assert!(old.is_lagged(), "it missed doorbells meanwhile and must re-read");
        tokio::time::timeout(std::time::Duration::from_secs(1), old.reread_requested()).await.unwrap();
    }

    #[tokio::test]
    async fn generations_decide_across_replicas() {
        let hub = hub(4);
        let user = UserId::random();
        let mailbox = hub.register(&user);
        // A newer connection is announced before ours learned its own generation.
        hub.takeover(&user, 7);
        hub.set_generation(&mailbox, 6);
        assert_eq!(mailbox.kicked().await, close::REPLACED);
        hub.unregister(&mailbox);

        let mailbox = hub.register(&user);
        hub.set_generation(&mailbox, 9);
        hub.takeover(&user, 9); // our own announcement
        hub.takeover(&user, 8); // an older connection's late announcement
        assert!(mailbox.is_kicked().is_none());
        hub.takeover(&user, 10);
        assert_eq!(mailbox.is_kicked(), Some(close::REPLACED));
    }

    #[tokio::test]
    async fn missed_doorbells_turn_into_a_lagged_reread() {
        let hub = hub(1);
        let user = UserId::random();
        let mailbox = hub.register(&user);
        hub.set_generation(&mailbox, 1);
        mailbox.begin_reread();
        hub.deliver(&user, delivery(1));
        assert!(!mailbox.is_lagged());
        hub.deliver(&user, delivery(2)); // queue full: not lost, a re-read is requested
        assert!(mailbox.is_lagged());
        tokio::time::timeout(std::time::Duration::from_secs(1), mailbox.reread_requested()).await.unwrap();
        assert_eq!(mailbox.next().await.id.seq, 1);

        hub.pause_live();
        mailbox.begin_reread();
        hub.deliver(&user, delivery(3));
        assert!(mailbox.try_next().is_none(), "nothing is forwarded live while degraded");
        assert!(mailbox.is_lagged());
    }

    #[tokio::test]
    async fn shutdown_kicks_every_session_with_1001() {
        let shutdown = CancellationToken::new();
        let hub = Hub::new(4, 1024, shutdown.clone());
        let mailbox = hub.register(&UserId::random());
        shutdown.cancel();
        assert_eq!(mailbox.kicked().await, close::GOING_AWAY);
    }
}
