//! What the push decoder tells the link: everything the subscription connection receives that
//! is not a doorbell. The queue is bounded and never waits (pushes arrive on redis-rs's task):
//! an event that finds it full is dropped, live forwarding pauses at once (the event may have
//! been a disconnection) and the link counts as lost, so a lost event ends in a recovery of the
//! whole link, never in silence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::hub::Hub;

pub(in crate::engine::redis) enum LinkEvent {
    /// Probe `n` came back through `channel`.
    Probe { channel: Vec<u8>, n: u64 },
    /// This replica's echo `n` came back through `channel`.
    Echo { channel: Vec<u8>, n: u64 },
    /// A subscription connection (one node's, on a cluster) dropped.
    Disconnected,
    /// The server ended the subscription to `channel` by itself (its slot moved to another shard).
    ServerDropped(Vec<u8>),
    /// Events were dropped on a full queue: whatever they said is unknown.
    Overflowed,
}

/// The decoder's end of the queue.
#[derive(Clone)]
pub(in crate::engine::redis) struct LinkEvents {
    queue: mpsc::Sender<LinkEvent>,
    overflow: Arc<Overflow>,
    /// Paused on an overflow, before the link hears of it.
    hub: Arc<Hub>,
}

/// The link's end of the queue.
pub(in crate::engine::redis) struct EventReceiver {
    queue: mpsc::Receiver<LinkEvent>,
    overflow: Arc<Overflow>,
}

#[derive(Default)]
struct Overflow {
    happened: AtomicBool,
    noticed: Notify,
}

impl LinkEvents {
    pub(in crate::engine::redis) fn new(capacity: usize, hub: Arc<Hub>) -> (Self, EventReceiver) {
        let (queue, receiver) = mpsc::channel(capacity);
        let overflow = Arc::new(Overflow::default());
        (Self { queue, overflow: overflow.clone(), hub }, EventReceiver { queue: receiver, overflow })
    }

    /// Queues `event` without waiting. On a full queue it is dropped, live forwarding pauses
    /// (the event may have said a connection dropped) and the link is told it overflowed (it
    /// then recovers as after a disconnection).
    pub(in crate::engine::redis) fn tell(&self, event: LinkEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(event) {
            self.hub.pause_live();
            if !self.overflow.happened.swap(true, Ordering::AcqRel) {
                tracing::warn!("link event queue full; recovering the whole link");
            }
            self.overflow.noticed.notify_one();
        }
        // Closed: the engine, and its link, are gone.
    }
}

impl EventReceiver {
    /// The next event, an overflow first; never resolves once every sender is gone.
    /// Cancel-safe.
    pub(in crate::engine::redis) async fn next(&mut self) -> LinkEvent {
        loop {
            if self.overflow.happened.swap(false, Ordering::AcqRel) {
                return LinkEvent::Overflowed;
            }
            tokio::select! {
                biased;
                event = self.queue.recv() => match event {
                    Some(event) => return event,
                    None => std::future::pending().await,
                },
                () = self.overflow.noticed.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::protocol::UserId;

    #[tokio::test]
    async fn a_full_queue_drops_the_event_pauses_live_forwarding_and_reports_an_overflow_once() {
        let hub = Arc::new(Hub::new(4, 1 << 20, CancellationToken::new()));
        let user = UserId::random();
        hub.set_generation(&hub.register(&user), 1);
        let (events, mut receiver) = LinkEvents::new(1, hub.clone());
        events.tell(LinkEvent::Disconnected);
        assert_eq!(hub.live_generation(&user), Some(1), "the queue itself pauses only on an overflow");
        events.tell(LinkEvent::ServerDropped(b"t:deliver:{x}".to_vec()));
        // The dropped event may have been a disconnection: live forwarding pauses before the
        // link hears of it.
        assert_eq!(hub.live_generation(&user), None);
        events.tell(LinkEvent::Probe { channel: b"t:probe:r".to_vec(), n: 1 });
        // The overflow comes first, once however many events were dropped...
        assert!(matches!(receiver.next().await, LinkEvent::Overflowed));
        // ...then what was queued, intact, and nothing else.
        assert!(matches!(receiver.next().await, LinkEvent::Disconnected));
        let nothing = tokio::time::timeout(Duration::from_millis(20), receiver.next()).await;
        assert!(nothing.is_err(), "the dropped events are not delivered");
        // With room again, events are queued as before.
        events.tell(LinkEvent::Echo { channel: b"t:deliver:{x}".to_vec(), n: 2 });
        assert!(matches!(receiver.next().await, LinkEvent::Echo { n: 2, .. }));
    }
}
