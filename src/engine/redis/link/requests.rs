//! What the engine asks of the link for its sessions: a user's subscription brought in line
//! with the hub. A bounded queue: when it is full, `attach` waits for room within its timeout
//! (and answers `unavailable`, so the client retries), and `release`, which cannot wait, leaves
//! the subscription in place and the queue remembers it (see `SubscriptionQueue::settle_later`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::super::super::unavailable::Unavailable;
use crate::protocol::UserId;

pub(in crate::engine::redis) type Waiter = oneshot::Sender<Result<(), Unavailable>>;

/// Bring the user's subscription in line with the hub; answer the waiter, if any, once it is.
pub(in crate::engine::redis) struct Settle {
    pub(in crate::engine::redis) user: UserId,
    pub(in crate::engine::redis) waiter: Option<Waiter>,
}

/// The engine's end of the link's bounded request queue.
#[derive(Clone)]
pub(in crate::engine::redis) struct SubscriptionQueue {
    queue: mpsc::Sender<Settle>,
    skipped: Arc<AtomicBool>,
}

/// The link's end.
pub(in crate::engine::redis) struct Requests {
    queue: mpsc::Receiver<Settle>,
    skipped: Arc<AtomicBool>,
}

impl SubscriptionQueue {
    pub(in crate::engine::redis) fn new(capacity: usize) -> (Self, Requests) {
        let (queue, receiver) = mpsc::channel(capacity);
        let skipped = Arc::new(AtomicBool::new(false));
        (Self { queue, skipped: skipped.clone() }, Requests { queue: receiver, skipped })
    }

    /// Subscribes the user if the hub holds it; waiting for room and for the answer together
    /// take at most `limit`.
    pub(in crate::engine::redis) async fn settle(&self, user: &UserId, limit: Duration) -> Result<(), Unavailable> {
        let (done, subscribed) = oneshot::channel();
        let ask = async {
            let _ = self.queue.send(Settle { user: user.clone(), waiter: Some(done) }).await;
            subscribed.await
        };
        match tokio::time::timeout(limit, ask).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Unavailable::said("subscription link stopped")),
            Err(_) => Err(Unavailable::said("subscribe timed out")),
        }
    }

    /// Unsubscribes the user if the hub no longer holds it, without waiting (`release` is not
    /// async). When the queue is full the subscription stays for now: it only brings doorbells
    /// the hub ignores, the user's next `settle` finds it in place, and the link, told that a
    /// request was skipped, settles every subscription it holds at its next probe tick.
    pub(in crate::engine::redis) fn settle_later(&self, user: &UserId) {
        let request = Settle { user: user.clone(), waiter: None };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(request) {
            self.skipped.store(true, Ordering::Release);
            tracing::debug!("subscription queue full; an unused subscription stays until the link settles them all");
        }
    }
}

impl Requests {
    /// Takes up to `limit` requests, waiting for one; 0 once the engine is gone. Cancel-safe.
    pub(in crate::engine::redis) async fn recv_many(&mut self, buffer: &mut Vec<Settle>, limit: usize) -> usize {
        self.queue.recv_many(buffer, limit).await
    }

    /// Whether a request was skipped on a full queue since the last call.
    pub(in crate::engine::redis) fn take_skipped(&self) -> bool {
        self.skipped.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_makes_attach_wait_and_never_blocks_the_others() {
        let (queue, mut requests) = SubscriptionQueue::new(1);
        let user = UserId::random();
        queue.settle_later(&user);
        assert!(!requests.take_skipped());
        // Full: the caller that cannot wait returns at once, and the link is told...
        queue.settle_later(&user);
        assert!(requests.take_skipped());
        assert!(!requests.take_skipped(), "once");
        // ...and `attach` waits for room only as long as its timeout, then answers unavailable.
        let waited = queue.settle(&user, Duration::from_millis(20)).await;
        assert!(matches!(waited, Err(e) if e.to_string() == "storage unavailable: subscribe timed out"));
        // The one request queued is intact; with room again, `attach` gets its answer.
        let mut taken = Vec::new();
        assert_eq!(requests.recv_many(&mut taken, 10).await, 1);
        assert!(matches!(taken.pop(), Some(Settle { user: u, waiter: None }) if u == user));
        let attach = tokio::spawn({
            let (queue, user) = (queue.clone(), user.clone());
            async move { queue.settle(&user, Duration::from_secs(5)).await }
        });
        requests.recv_many(&mut taken, 10).await;
        match taken.pop() {
            Some(Settle { waiter: Some(done), .. }) => done.send(Ok(())).unwrap(),
            _ => panic!("expected attach's request"),
        }
        assert!(attach.await.unwrap().is_ok());
    }
}
