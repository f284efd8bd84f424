//! The remover: messages written to specification clients leave their inboxes in pipelined
//! batches, one round trip for many sessions' writes; a barrier answers once every removal
//! queued before it is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::commands::{Command, timed};
use super::conn::each_concurrently;
use super::connect::Connections;
use super::keys::Keys;
use crate::protocol::{MsgId, UserId};

/// Removals queued per pipeline (one round trip).
const REMOVAL_BATCH: usize = 512;

/// Removals waiting for the remover: sixteen pipelines. Only a Redis slower than the sockets
/// fills it; see `RemovalQueue::forget` for what happens then.
pub(super) const REMOVAL_QUEUE: usize = 16 * REMOVAL_BATCH;

pub(super) enum Removal {
    Delivered(UserId, Vec<MsgId>),
    Barrier(oneshot::Sender<()>),
}

/// The remover's bounded queue.
#[derive(Clone)]
pub(super) struct RemovalQueue {
    queue: mpsc::Sender<Removal>,
    /// Removals that found the queue full, for the log.
    skipped: Arc<AtomicU64>,
}

impl RemovalQueue {
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<Removal>) {
        let (queue, receiver) = mpsc::channel(capacity);
        (Self { queue, skipped: Arc::default() }, receiver)
    }

    /// Queues the removal of delivered messages without waiting (the caller is a socket
    /// writer). When the queue is full the removal is skipped and logged, never waited for:
    /// the messages stay stored and are delivered again on the client's next connection,
    /// the duplicate window specification clients already have (they de-duplicate by id).
    /// Returns whether it was queued.
    pub(super) fn forget(&self, user: &UserId, ids: Vec<MsgId>) -> bool {
        match self.queue.try_send(Removal::Delivered(user.clone(), ids)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let skipped = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(skipped, "removal queue full; delivered messages stay stored until read again");
                false
            }
            // The engine is shutting down: nothing removes anything any more.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Waits until every removal queued before is done. Waiting for room in a full queue is
    /// part of it; the caller bounds the whole wait with its timeout.
    pub(super) async fn barrier(&self) {
        let (settled, barrier) = oneshot::channel();
        if self.queue.send(Removal::Barrier(settled)).await.is_ok() {
            let _ = barrier.await;
        }
    }
}

pub(super) async fn remover(connections: Arc<Connections>, keys: Keys, mut queue: mpsc::Receiver<Removal>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, REMOVAL_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut barriers = Vec::new();
        for removal in batch.drain(..) {
            match removal {
                Removal::Delivered(user, ids) => {
                    let ids: Vec<String> = ids.iter().map(MsgId::to_string).collect();
                    pipe.xdel(keys.inbox(&user), &ids).ignore();
                }
                Removal::Barrier(done) => barriers.push(done),
            }
        }
        let mut con = connections.cmd();
        let result = if pipe.is_empty() {
            Ok(())
        } else if connections.is_cluster() {
            // A cluster pipeline goes to one shard: each user's removal on its own, many at once.
            let commands: Vec<&redis::Cmd> = pipe.cmd_iter().collect();
            let remove = |command: &&redis::Cmd| {
                let mut con = con.clone();
                let command = (*command).clone();
                async move { command.query_async::<()>(&mut con).await }
            };
            timed(Command::Remove, connections.timeout, each_concurrently(&commands, remove)).await
        } else {
            timed(Command::Remove, connections.timeout, pipe.exec_async(&mut con)).await
        };
        if let Err(e) = result {
            // Still stored: delivered again on the next connection rather than lost.
            tracing::warn!(error = %e, "cannot remove delivered messages");
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_skips_removals_and_bounds_barriers() {
        let (queue, mut receiver) = RemovalQueue::new(1);
        let user = UserId::random();
        let id = MsgId { ms: 1, seq: 0 };
        assert!(queue.forget(&user, vec![id]));
        // Full: skipped at once (the messages stay stored), never blocking the writer.
        assert!(!queue.forget(&user, vec![id]));
        // A barrier waits for room, within the caller's timeout.
        assert!(tokio::time::timeout(Duration::from_millis(20), queue.barrier()).await.is_err());
        // The first removal is still there, and once it is taken a barrier gets in.
        assert!(matches!(receiver.recv().await, Some(Removal::Delivered(u, ids)) if u == user && ids == [id]));
        let barrier = tokio::spawn({
            let queue = queue.clone();
            async move { queue.barrier().await }
        });
        match receiver.recv().await {
            Some(Removal::Barrier(done)) => done.send(()).unwrap(),
            _ => panic!("expected the barrier"),
        }
        barrier.await.unwrap();
    }
}
