//! The local switchboard: which socket on this replica belongs to which user.
//!
//! Engines ring the hub's doorbell (`deliver`, `takeover`, `catch_up`, `resume_live`); the hub
//! hands the news to the one session that holds the user's socket here. The hub never blocks:
//! when a doorbell cannot be queued (queue full, byte budget spent, or live forwarding paused
//! because the engine's doorbell link had a gap) the session *falls behind* and catches up: it
//! reads its inbox, which is the source of truth. A lost doorbell costs a read, never a
//! message, and never an ordering: a session that fell behind forwards nothing live until it
//! has caught up (its cursor, `session/cursor.rs`, decides).
//!
//! A user's slot here is `Attaching` (registered, waiting for its generation, with the live
//! connection it replaces) or `Live` (with its generation); a session is kicked with a `Kick`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::{Delivery, UserId};

/// `Hub::live_paused`'s low bit: live forwarding is paused.
const PAUSED: u64 = 1;
/// One pause counted in `Hub::live_paused` (above the bit).
const PAUSE: u64 = 2;

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
    /// A live delivery did not reach the queue since the session last took this (see
    /// `take_fell_behind`); `fell_behind` wakes the session to catch up.
    behind: AtomicBool,
    fell_behind: Notify,
    /// Cancelled on takeover and on server shutdown (a child of the shutdown token).
    kicked: CancellationToken,
    /// Why, when the hub kicked (the shutdown token carries no reason: unset means shutdown).
    kick: OnceLock<Kick>,
}

/// Why the hub ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A newer connection of the same user took over, on this replica or another.
    Replaced,
    /// The server shuts down.
    Shutdown,
}

impl Mailbox {
    /// Resolves when the session fell behind and must catch up. A fall made while nobody
    /// waits is kept for the next wait.
    pub fn fell_behind(&self) -> tokio::sync::futures::Notified<'_> {
        self.fell_behind.notified()
    }

    /// Whether the session fell behind since the last call: queued deliveries may then sit
    /// behind a gap, and the session's cursor must hold them back until it has caught up.
    pub fn take_fell_behind(&self) -> bool {
        // Asked on every live delivery: a load, and a write only when it is set.
        self.behind.load(Ordering::SeqCst) && self.behind.swap(false, Ordering::SeqCst)
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

    /// Resolves with the reason when the session must end.
    pub async fn kicked(&self) -> Kick {
        self.kicked.cancelled().await;
        self.kick_reason()
    }

    pub fn is_kicked(&self) -> Option<Kick> {
        self.kicked.is_cancelled().then(|| self.kick_reason())
    }

    fn kick_reason(&self) -> Kick {
        self.kick.get().copied().unwrap_or(Kick::Shutdown)
    }

    /// Ends the session: a newer connection took over.
    fn replace(&self) {
        // The first reason wins: a session replaced and then shut down reports "replaced".
        let _ = self.kick.set(Kick::Replaced);
        self.kicked.cancel();
    }

    /// A live delivery will not reach the session (not queued, or lost on the way, or a
    /// skipped message number the session noticed itself): it must catch up.
    pub fn fall_behind(&self) {
        self.behind.store(true, Ordering::SeqCst);
        self.fell_behind.notify_one();
    }

    fn ring(&self, delivery: Delivery, byte_budget: usize) {
        let size = delivery.envelope.len();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.queue_limit || self.queued_bytes.load(Ordering::Acquire) + size > byte_budget {
            drop(queue);
            return self.fall_behind(); // the message is in the inbox: catching up reads it
        }
        self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        queue.push_back(delivery);
        drop(queue);
        self.queued.notify_one();
    }
}

/// Where a user's connection on this replica stands. The session's guard
/// (`session::Attached`) registers it (`Hub::register`: `Attaching`) and unregisters it; the
/// engine's attach moves it on (`Hub::set_generation`: `Live`); announcements of newer
/// connections (`Hub::takeover`) kick it.
#[derive(Debug)]
enum Slot {
    /// Registered, waiting for its connection generation from the engine.
    Attaching {
        mailbox: Arc<Mailbox>,
        /// The live connection this one is about to replace: it ends only once the new one is
        /// attached, so a failed attach does not cost the user their working connection.
        replacing: Option<Live>,
        /// Highest generation announced for this user by any replica meanwhile.
        newest_seen: u64,
    },
    /// Attached: the user's live connection here.
    Live(Live),
}

#[derive(Debug)]
struct Live {
    mailbox: Arc<Mailbox>,
    generation: u64,
}

impl Slot {
    fn mailbox(&self) -> &Arc<Mailbox> {
        match self {
            Slot::Attaching { mailbox, .. } | Slot::Live(Live { mailbox, .. }) => mailbox,
        }
    }
}

#[derive(Debug)]
pub struct Hub {
    slots: Mutex<HashMap<UserId, Slot>>,
    next_id: AtomicU64,
    queue: usize,
    byte_budget: usize,
    /// Whether live forwarding is paused (the low bit: the engine's doorbell link may have
    /// missed messages, so nothing is handed to a session live, every doorbell makes it fall
    /// behind and catch up), and how many times it was paused (the other bits: a resume asked
    /// on behalf of a recovery that began before the last pause leaves it paused).
    live_paused: AtomicU64,
    shutdown: CancellationToken,
}

impl Hub {
    /// `queue` and `byte_budget`: live deliveries (and their bytes) buffered per session
    /// before it falls behind and catches up. Sessions end when `shutdown` fires.
    pub fn new(queue: usize, byte_budget: usize, shutdown: CancellationToken) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue: queue.max(1),
            byte_budget: byte_budget.max(1),
            live_paused: AtomicU64::new(0),
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
            behind: AtomicBool::new(false),
            fell_behind: Notify::new(),
            kicked: self.shutdown.child_token(),
            kick: OnceLock::new(),
        });
        let mut slots = self.lock();
        let replacing = match slots.remove(user) {
            None => None,
            Some(Slot::Live(live)) => Some(live),
            Some(Slot::Attaching { mailbox, replacing, .. }) => {
                // Still attaching and already superseded: it never becomes live.
                mailbox.replace();
                replacing
            }
        };
        let newest_seen = replacing.as_ref().map_or(0, |live| live.generation);
        slots.insert(user.clone(), Slot::Attaching { mailbox: mailbox.clone(), replacing, newest_seen });
        mailbox
    }

    /// Removes the session; returns true if the user has no socket here any more. Called by
    /// the session's attachment guard, which then tells the engine to stop listening for the user.
    pub fn unregister(&self, mailbox: &Mailbox) -> bool {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(&mailbox.user) else { return true };
        match slot {
            Slot::Attaching { mailbox: attaching, replacing, .. } if attaching.id == mailbox.id => {
                // The attach failed: the connection it was to replace stays the live one. It
                // got no doorbells meanwhile, so it catches up.
                if let Some(live) = replacing.take() {
                    live.mailbox.fall_behind();
                    *slot = Slot::Live(live);
                    return false;
                }
            }
            Slot::Attaching { replacing, .. } => {
                // The connection being replaced ended by itself first.
                if replacing.as_ref().is_some_and(|live| live.mailbox.id == mailbox.id) {
                    *replacing = None;
                }
                return false;
            }
            Slot::Live(live) if live.mailbox.id == mailbox.id => {}
            Slot::Live(_) => return false,
        }
        slots.remove(&mailbox.user);
        true
    }

    pub fn is_registered(&self, user: &UserId) -> bool {
        self.lock().contains_key(user)
    }

    /// Records the generation the engine gave this session's connection: the session is now
    /// the user's live connection here; the one it replaces ends; if a newer connection was
    /// announced meanwhile (on any replica), this one is already obsolete.
    pub fn set_generation(&self, mailbox: &Mailbox, generation: u64) {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(&mailbox.user).filter(|slot| slot.mailbox().id == mailbox.id) else { return };
        let newest_seen = match slot {
            Slot::Attaching { replacing, newest_seen, .. } => {
                if let Some(previous) = replacing.take() {
                    previous.mailbox.replace();
                }
                *newest_seen
            }
            Slot::Live(live) => live.generation,
        };
        let live = Live { mailbox: slot.mailbox().clone(), generation };
        if generation < newest_seen {
            live.mailbox.replace();
        }
        *slot = Slot::Live(live);
    }

    /// A connection of `user` with `generation` opened somewhere: older ones here end.
    pub fn takeover(&self, user: &UserId, generation: u64) {
        match self.lock().get_mut(user) {
            Some(Slot::Attaching { newest_seen, .. }) => *newest_seen = (*newest_seen).max(generation),
            Some(Slot::Live(live)) if live.generation < generation => live.mailbox.replace(),
            Some(Slot::Live(_)) | None => {}
        }
    }

    /// The generation of `user`'s live connection here, when a message for the user may be
    /// handed to it directly instead of through the doorbell (see `engine::redis::sender`):
    /// attached, and the doorbell link healthy.
    pub fn live_generation(&self, user: &UserId) -> Option<u64> {
        if self.is_live_paused() {
            return None;
        }
        match self.lock().get(user) {
            Some(Slot::Live(live)) => Some(live.generation),
            Some(Slot::Attaching { .. }) | None => None,
        }
    }

    /// A message for `user` was stored; hand it to the user's session here, if any.
    pub fn deliver(&self, user: &UserId, delivery: Delivery) {
        if let Some(slot) = self.lock().get(user) {
            if self.is_live_paused() {
                slot.mailbox().fall_behind();
            } else {
                slot.mailbox().ring(delivery, self.byte_budget);
            }
        }
    }

    /// From now on doorbells only make sessions fall behind (see the type's docs), until the
    /// engine's doorbell link, which alone resumes, has recovered from every pause made so far.
    /// Called the moment a gap may have begun (a disconnection, a lost event), by whoever
    /// notices it first.
    pub fn pause_live(&self) {
        let _ = self.live_paused.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| Some((v | PAUSED) + PAUSE));
    }

    /// How many times live forwarding was paused so far: read by the doorbell link when a
    /// recovery begins, and handed back to `resume_live` once it has recovered.
    pub fn pauses(&self) -> u64 {
        self.live_paused.load(Ordering::SeqCst) / PAUSE
    }

    /// Every session falls behind and catches up, then live forwarding resumes: in this order,
    /// so that a live delivery can never be forwarded ahead of the gap's catch-up. It resumes
    /// only if it was not paused again since `pauses` said `seen` (that gap is not covered by
    /// the recovery that read it): whether live forwarding is on.
    pub fn resume_live(&self, seen: u64) -> bool {
        self.catch_up_all();
        let paused = (seen * PAUSE) | PAUSED;
        match self.live_paused.compare_exchange(paused, seen * PAUSE, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => true,
            Err(now) => now == seen * PAUSE,
        }
    }

    fn is_live_paused(&self) -> bool {
        self.live_paused.load(Ordering::SeqCst) & PAUSED != 0
    }

    /// Every session falls behind and catches up (after the doorbell link was down).
    fn catch_up_all(&self) {
        for slot in self.lock().values() {
            slot.mailbox().fall_behind();
        }
    }

    /// The user's session here, if any, falls behind and catches up (its doorbells may have
    /// been lost).
    pub fn catch_up(&self, user: &UserId) {
        if let Some(slot) = self.lock().get(user) {
            slot.mailbox().fall_behind();
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
        assert_eq!(old.kicked().await, Kick::Replaced);
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
        assert!(old.take_fell_behind(), "it missed doorbells meanwhile and must catch up");
        tokio::time::timeout(std::time::Duration::from_secs(1), old.fell_behind()).await.unwrap();
    }

    #[tokio::test]
    async fn a_replaced_connection_that_ends_first_is_not_given_back() {
        let hub = hub(4);
        let user = UserId::random();
        let old = hub.register(&user);
        hub.set_generation(&old, 1);
        let new = hub.register(&user);
        assert!(!hub.unregister(&old), "the new session is still attaching");
        assert!(hub.unregister(&new), "its attach failed too: nobody is left");
        assert!(hub.is_empty());
    }

    #[tokio::test]
    async fn a_session_superseded_while_attaching_never_becomes_live() {
        let hub = hub(4);
        let user = UserId::random();
        let live = hub.register(&user);
        hub.set_generation(&live, 1);
        let first = hub.register(&user);
        let second = hub.register(&user);
        assert_eq!(first.is_kicked(), Some(Kick::Replaced));
        assert!(live.is_kicked().is_none(), "still the live one until the newest is attached");
        assert!(!hub.unregister(&first));
        hub.set_generation(&second, 3);
        assert_eq!(live.kicked().await, Kick::Replaced);
        assert_eq!(hub.live_generation(&user), Some(3));
    }

    #[tokio::test]
    async fn generations_decide_across_replicas() {
        let hub = hub(4);
        let user = UserId::random();
        let mailbox = hub.register(&user);
        // A newer connection is announced before ours learned its own generation.
        hub.takeover(&user, 7);
        hub.set_generation(&mailbox, 6);
        assert_eq!(mailbox.kicked().await, Kick::Replaced);
        hub.unregister(&mailbox);

        let mailbox = hub.register(&user);
        hub.set_generation(&mailbox, 9);
        hub.takeover(&user, 9); // our own announcement
        hub.takeover(&user, 8); // an older connection's late announcement
        assert!(mailbox.is_kicked().is_none());
        hub.takeover(&user, 10);
        assert_eq!(mailbox.is_kicked(), Some(Kick::Replaced));
    }

    #[tokio::test]
    async fn missed_doorbells_make_the_session_fall_behind() {
        let hub = hub(1);
        let user = UserId::random();
        let mailbox = hub.register(&user);
        hub.set_generation(&mailbox, 1);
        hub.deliver(&user, delivery(1));
        assert!(!mailbox.take_fell_behind());
        hub.deliver(&user, delivery(2)); // queue full: not lost, the session must catch up
        assert!(mailbox.take_fell_behind());
        assert!(!mailbox.take_fell_behind(), "taken once");
        tokio::time::timeout(std::time::Duration::from_secs(1), mailbox.fell_behind()).await.unwrap();
        assert_eq!(mailbox.next().await.id.seq, 1);

        hub.pause_live();
        hub.deliver(&user, delivery(3));
        assert!(mailbox.try_next().is_none(), "nothing is forwarded live while paused");
        assert!(mailbox.take_fell_behind());
        assert_eq!(hub.live_generation(&user), None, "nor handed to it directly");
    }

    #[tokio::test]
    async fn live_forwarding_resumes_only_from_a_recovery_begun_after_the_last_pause() {
        let hub = hub(4);
        let user = UserId::random();
        let mailbox = hub.register(&user);
        hub.set_generation(&mailbox, 1);
        hub.pause_live();
        let seen = hub.pauses();
        hub.pause_live(); // a disconnection while the recovery that read `seen` runs
        assert!(!hub.resume_live(seen), "that gap is not covered: still paused");
        assert_eq!(hub.live_generation(&user), None);
        assert!(mailbox.take_fell_behind(), "sessions catch up all the same");
        let seen = hub.pauses();
        assert!(hub.resume_live(seen));
        assert_eq!(hub.live_generation(&user), Some(1));
        assert!(hub.resume_live(seen), "resuming twice is harmless");
        hub.deliver(&user, delivery(1));
        assert_eq!(mailbox.try_next().map(|d| d.id.seq), Some(1));
    }

    #[tokio::test]
    async fn shutdown_kicks_every_session() {
        let shutdown = CancellationToken::new();
        let hub = Hub::new(4, 1024, shutdown.clone());
        let mailbox = hub.register(&UserId::random());
        shutdown.cancel();
        assert_eq!(mailbox.kicked().await, Kick::Shutdown);
    }
}
