//! The local switchboard: which socket on this replica belongs to which user.
//!
//! Engines ring the hub's doorbell (`deliver`, `takeover`, `resync_all`); the hub hands the
//! news to the one session that holds the user's socket here. The hub never blocks: a session
//! whose queue is full is marked for a resync and re-reads its inbox, which is the source of
//! truth, so a lost doorbell costs a read, never a message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::protocol::{Delivery, UserId, close};

/// The hub's handle on one session; the session holds the same `Arc`.
#[derive(Debug)]
pub struct Link {
    pub id: u64,
    pub user: UserId,
    tx: mpsc::Sender<Delivery>,
    resync: Notify,
    kicked: CancellationToken,
    kick_code: AtomicU16,
}

impl Link {
    /// Resolves when the session must re-read its inbox (a doorbell may have been missed). A
    /// request made while nobody waits is kept for the next wait.
    pub fn resync_requested(&self) -> tokio::sync::futures::Notified<'_> {
        self.resync.notified()
    }
    /// Resolves with a close code when the session must end (taken over, shutting down).
    pub async fn kicked(&self) -> u16 {
        self.kicked.cancelled().await;
        self.kick_code.load(Ordering::Acquire)
    }
    fn kick(&self, code: u16) {
        // The first reason wins: a session replaced and then shut down reports "replaced".
        let _ = self.kick_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.kicked.cancel();
    }
    fn ring(&self, delivery: Delivery) {
        if self.tx.try_send(delivery).is_err() {
            // Full (or closing): the message is in the inbox; ask the session to re-read it.
            self.resync.notify_one();
        }
    }
}

#[derive(Debug)]
struct Slot {
    link: Arc<Link>,
    /// Connection generation claimed from the engine, once known.
    generation: Option<u64>,
    /// Highest generation announced for this user by any replica.
    newest_seen: u64,
}

#[derive(Debug)]
pub struct Hub {
    slots: Mutex<HashMap<UserId, Slot>>,
    next_id: AtomicU64,
    queue: usize,
}

impl Hub {
    /// `queue`: live deliveries buffered per session before it falls back to a resync.
    pub fn new(queue: usize) -> Self {
        Self { slots: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1), queue: queue.max(1) }
    }

    /// Makes a new session the user's socket on this replica; an older one here is replaced.
    pub fn register(&self, user: &UserId) -> (Arc<Link>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(self.queue);
        let link = Arc::new(Link {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.clone(),
            tx,
            resync: Notify::new(),
            kicked: CancellationToken::new(),
            kick_code: AtomicU16::new(0),
        });
        let slot = Slot { link: link.clone(), generation: None, newest_seen: 0 };
        if let Some(old) = self.lock().insert(user.clone(), slot) {
            old.link.kick(close::REPLACED);
        }
        (link, rx)
    }

    /// Removes the session; returns true if the user has no socket here any more.
    pub fn unregister(&self, link: &Link) -> bool {
        let mut slots = self.lock();
        match slots.get(&link.user) {
            Some(slot) if slot.link.id == link.id => {
                slots.remove(&link.user);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    pub fn is_registered(&self, user: &UserId) -> bool {
        self.lock().contains_key(user)
    }

    /// Records the generation the engine gave this session's connection; if a newer
    /// connection was announced meanwhile, this one is already obsolete.
    pub fn set_generation(&self, link: &Link, generation: u64) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(&link.user).filter(|s| s.link.id == link.id) {
            slot.generation = Some(generation);
            if generation < slot.newest_seen {
                slot.link.kick(close::REPLACED);
            }
        }
    }

    /// A connection of `user` with `generation` opened somewhere: older ones here end.
    pub fn takeover(&self, user: &UserId, generation: u64) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(user) {
            slot.newest_seen = slot.newest_seen.max(generation);
            if slot.generation.is_some_and(|g| g < generation) {
                slot.link.kick(close::REPLACED);
            }
        }
    }

    /// A message for `user` was stored; hand it to the user's session here, if any.
    pub fn deliver(&self, user: &UserId, delivery: Delivery) {
        if let Some(slot) = self.lock().get(user) {
            slot.link.ring(delivery);
        }
    }

    /// Every session re-reads its inbox (after the doorbell link was down).
    pub fn resync_all(&self) {
        for slot in self.lock().values() {
            slot.link.resync.notify_one();
        }
    }

    /// Ends every session with `code` (shutdown).
    pub fn kick_all(&self, code: u16) {
        for slot in self.lock().values() {
            slot.link.kick(code);
        }
    }

    pub fn users(&self) -> Vec<UserId> {
        self.lock().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Slot>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is a
        // single insert/remove), so a poisoned lock is still safe to use.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MsgId;

    fn delivery(seq: u64) -> Delivery {
        Delivery { id: MsgId { ms: 1, seq }, ts: 1, envelope: "{}".into() }
    }

    #[tokio::test]
    async fn newer_local_session_replaces_older() {
        let hub = Hub::new(4);
        let user = UserId::random();
        let (old, _rx1) = hub.register(&user);
        let (new, mut rx2) = hub.register(&user);
        assert_eq!(old.kicked().await, close::REPLACED);
        assert!(!hub.unregister(&old), "the old session must not remove the new one");
        hub.deliver(&user, delivery(1));
        assert_eq!(rx2.recv().await.unwrap().id.seq, 1);
        assert!(hub.unregister(&new));
        assert!(hub.is_empty());
    }

    #[tokio::test]
    async fn generations_decide_across_replicas() {
        let hub = Hub::new(4);
        let user = UserId::random();
        let (link, _rx) = hub.register(&user);
        // A newer connection is announced before ours learned its own generation.
        hub.takeover(&user, 7);
        hub.set_generation(&link, 6);
        assert_eq!(link.kicked().await, close::REPLACED);

        let (link, _rx) = hub.register(&user);
        hub.set_generation(&link, 9);
        hub.takeover(&user, 9); // our own announcement
        hub.takeover(&user, 8); // an older connection's late announcement
        assert!(!link.kicked.is_cancelled());
        hub.takeover(&user, 10);
        assert!(link.kicked.is_cancelled());
    }

    #[tokio::test]
    async fn full_queue_turns_into_resync() {
        let hub = Hub::new(1);
        let user = UserId::random();
        let (link, mut rx) = hub.register(&user);
        hub.deliver(&user, delivery(1));
        hub.deliver(&user, delivery(2)); // queue full: not lost, a resync is requested
        tokio::time::timeout(std::time::Duration::from_secs(1), link.resync_requested()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().id.seq, 1);
    }
}
