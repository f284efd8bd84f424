//! The remover: messages written to specification clients leave their inboxes in pipelined
//! batches, one round trip for many sessions' writes and one script call for many users (one
//! per user on a cluster); a barrier
//! answers once every removal queued before it is done. A removal is the `REMOVE` script (it gives the senders' shares
//! back), which may safely run twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::commands::{Command, timed};
use futures_util::{StreamExt, stream};

use super::super::records::Written;
use super::super::unavailable::Unavailable;
use super::conn::{CLUSTER_CONCURRENCY, Conn};
use super::connect::Connections;
use super::keys::Keys;
use super::ledger;
use super::scripts::remove_script;
use crate::protocol::{MsgId, UserId, envelope_sender};

/// A message to remove: its id, and — when the relay wrote it and so knows — its sender and
/// envelope size, so that the script gives the share back without reading the entry. Kept
/// instead of the envelope: the removal queue holds ids and counts, not message bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Gone {
    id: MsgId,
    /// The sender's user id (always 36 ASCII bytes), if known.
    sender: Option<[u8; 36]>,
    size: usize,
}

impl Gone {
    /// A message written to a socket: sender and size from its envelope (one the relay cannot
    /// read is looked up in Redis instead; only the relay writes envelopes).
    pub(super) fn written(written: &Written) -> Self {
        let sender = envelope_sender(&written.envelope).and_then(|s| s.as_bytes().try_into().ok());
        Self { id: written.id, sender, size: written.envelope.len() }
    }

    /// An acknowledged id: the script reads its sender and size.
    pub(super) fn acknowledged(id: MsgId) -> Self {
        Self { id, sender: None, size: 0 }
    }
}

/// The removal of `gone` from `user`'s inbox, shares given back; `ledger` is what the script
/// does with what it freed (`ledger::Release`).
pub(super) fn removal<'a>(
    script: &'a redis::Script,
    keys: &Keys,
    ledger: &str,
    user: &UserId,
    gone: &[Gone],
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(ledger);
    add_removal(&mut invocation, keys, user, gone);
    invocation
}

/// The removals of several users in one call (single Redis only: the keys are in many slots).
fn removals<'a>(
    script: &'a redis::Script,
    keys: &Keys,
    ledger: &str,
    removals: &[UserRemoval],
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(ledger);
    for (user, ids) in removals {
        add_removal(&mut invocation, keys, user, ids);
    }
    invocation
}

fn add_removal(invocation: &mut redis::ScriptInvocation<'_>, keys: &Keys, user: &UserId, gone: &[Gone]) {
    invocation.key(keys.inbox(user)).key(keys.shares(user)).arg(gone.len());
    for message in gone {
        match &message.sender {
            Some(sender) => invocation.arg(message.id.to_string()).arg(&sender[..]).arg(message.size),
            None => invocation.arg(message.id.to_string()).arg("").arg(0),
        };
    }
}

/// Users per removal call (single Redis): bounds how long one call holds Redis up.
const USERS_PER_CALL: usize = 128;

/// Removals queued per pipeline (one round trip).
const REMOVAL_BATCH: usize = 512;

/// Removals waiting for the remover: sixteen pipelines. Only a Redis slower than the sockets
/// fills it; see `RemovalQueue::forget` for what happens then.
pub(super) const REMOVAL_QUEUE: usize = 16 * REMOVAL_BATCH;

pub(super) enum Removal {
    Delivered(UserId, Vec<Gone>),
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
    pub(super) fn forget(&self, user: &UserId, gone: Vec<Gone>) -> bool {
        match self.queue.try_send(Removal::Delivered(user.clone(), gone)) {
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
        let (done, barrier) = oneshot::channel();
        if self.queue.send(Removal::Barrier(done)).await.is_ok() {
            let _ = barrier.await;
        }
    }
}

/// Runs removals until the queue closes; with `ledger`, what they free comes off the storage
/// ledger (`ledger`): in the removal call itself on a single Redis, by the release script after
/// it on a cluster.
pub(super) async fn remover(
    connections: Arc<Connections>,
    keys: Keys,
    mut queue: mpsc::Receiver<Removal>,
    ledger: bool,
) {
    let script = remove_script();
    let release = ledger::Release::new(&connections, &keys, ledger);
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, REMOVAL_BATCH).await > 0 {
        linger(&mut queue, &mut batch).await;
        let (removals, barriers) = merge(&mut batch);
        let mut con = connections.cmd();
        let result: Result<Vec<redis::Value>, _> = if removals.is_empty() {
            Ok(Vec::new())
        } else if connections.is_cluster() {
            // A cluster pipeline goes to one shard: each user's removal on its own, many at once
            // (`invoke_async` loads the script on a shard that lacks it).
            timed(Command::Remove, connections.timeout, remove_each(removals, &script, &keys, release.arg(), &con))
                .await
        } else {
            let mut pipe = redis::pipe();
            for call in removals.chunks(USERS_PER_CALL) {
                pipe.invoke_script(&self::removals(&script, &keys, release.arg(), call));
            }
            let mut result = timed(Command::Remove, connections.timeout, pipe.query_async(&mut con)).await;
            if worth_reloading(&result) {
                let invocation = script.prepare_invoke();
                if timed(Command::Remove, connections.timeout, invocation.load_async(&mut con)).await.is_ok() {
                    result = timed(Command::Remove, connections.timeout, pipe.query_async(&mut con)).await;
                }
            }
            result
        };
        match result {
            // What the removals freed comes off the storage ledger (a cluster's: after them).
            Ok(replies) if release == ledger::Release::After => {
                let freed = replies.iter().flat_map(|reply| ledger::removal_reply(reply).1).collect();
                ledger::release(&connections, &keys, freed).await;
            }
            Ok(_) => {}
            // Still stored: delivered again on the next connection rather than lost.
            Err(e) => tracing::warn!(error = %e, "cannot remove delivered messages"),
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

/// Whether a failed removal pipeline is worth loading the script for and running again: a new,
/// restarted or failed-over Redis lacks the script, and a pipeline does not load it (a removal
/// done twice changes nothing). Only then: after a timeout or a lost link, loading would not
/// help, and the messages stay stored (delivered again) rather than wait on a second try.
fn worth_reloading<T>(result: &Result<T, Unavailable>) -> bool {
    result.as_ref().is_err_and(Unavailable::is_noscript)
}

/// How long the remover gathers before a call: a removal costs Redis a script step per user
/// (one share update for all that user's messages) plus one `XDEL` per message, so the more of
/// a user's messages one call carries, the less each costs (measured: 6.6 µs a message one at a
/// time, 2.7 five at a time, 1.8 at 25). Delivered messages only stay stored that much longer;
/// a barrier (a reconnecting user) ends the wait at once.
const LINGER: Duration = Duration::from_millis(25);

/// Gathers removals for up to [`LINGER`], until the batch is full or someone waits on it.
async fn linger(queue: &mut mpsc::Receiver<Removal>, batch: &mut Vec<Removal>) {
    let waited_on = |batch: &[Removal]| batch.iter().any(|r| matches!(r, Removal::Barrier(_)));
    let deadline = tokio::time::Instant::now() + LINGER;
    while batch.len() < REMOVAL_BATCH && !waited_on(batch) {
        let room = REMOVAL_BATCH - batch.len();
        // `recv_many` is cancel safe: nothing taken is lost when the deadline wins.
        match tokio::time::timeout_at(deadline, queue.recv_many(batch, room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// One user's delivered messages.
type UserRemoval = (UserId, Vec<Gone>);

/// Takes a batch apart: one removal per user (a session writes one message at a time, so a
/// busy user's removals arrive one by one; one script call for all of them costs Redis a
/// fraction of one each), in the order their users first came, ids in queue order; and the
/// barriers.
fn merge(batch: &mut Vec<Removal>) -> (Vec<UserRemoval>, Vec<oneshot::Sender<()>>) {
    let mut removals: Vec<UserRemoval> = Vec::new();
    let mut index: HashMap<UserId, usize> = HashMap::new();
    let mut barriers = Vec::new();
    for queued in batch.drain(..) {
        match queued {
            Removal::Delivered(user, ids) => match index.get(&user) {
                Some(&i) => removals[i].1.extend(ids),
                None => {
                    index.insert(user.clone(), removals.len());
                    removals.push((user, ids));
                }
            },
            Removal::Barrier(done) => barriers.push(done),
        }
    }
    (removals, barriers)
}

/// Runs each removal on its own, many at once (on a cluster each goes to its slot's shard).
async fn remove_each(
    removals: Vec<UserRemoval>,
    script: &redis::Script,
    keys: &Keys,
    ledger: &str,
    con: &Conn,
) -> redis::RedisResult<Vec<redis::Value>> {
    let results: Vec<redis::RedisResult<redis::Value>> = stream::iter(removals.into_iter().map(|(user, ids)| {
        let (mut con, script, keys) = (con.clone(), script.clone(), keys.clone());
        async move { removal(&script, &keys, ledger, &user, &ids).invoke_async::<redis::Value>(&mut con).await }
    }))
    .buffer_unordered(CLUSTER_CONCURRENCY)
    .collect()
    .await;
    // What succeeded is reported (its freed bytes leave the ledger) even when another user's
    // removal failed; the failure is still the batch's answer for the log.
    let mut replies = Vec::with_capacity(results.len());
    let mut failed = None;
    for result in results {
        match result {
            Ok(reply) => replies.push(reply),
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        tracing::warn!(error = %e, "cannot remove some delivered messages");
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_batch_makes_one_removal_per_user() {
        let (a, b) = (UserId::random(), UserId::random());
        let id = |seq| Gone::acknowledged(MsgId { ms: 1, seq });
        let (done, _wait) = oneshot::channel();
        let mut batch = vec![
            Removal::Delivered(a.clone(), vec![id(1)]),
            Removal::Delivered(b.clone(), vec![id(7)]),
            Removal::Barrier(done),
            Removal::Delivered(a.clone(), vec![id(2), id(3)]),
        ];
        let (removals, barriers) = merge(&mut batch);
        assert_eq!(removals, vec![(a, vec![id(1), id(2), id(3)]), (b, vec![id(7)])]);
        assert_eq!(barriers.len(), 1);
        assert!(batch.is_empty());
    }

    #[test]
    fn only_a_missing_script_is_worth_a_reload() {
        let reply = |raw: &[u8]| redis::parse_redis_value(raw).unwrap().extract_error().unwrap_err();
        let noscript: Result<(), _> = Err(Unavailable::from(reply(b"-NOSCRIPT No matching script.\r\n")));
        assert!(worth_reloading(&noscript));
        let late: Result<(), _> = Err(Unavailable::late(Duration::from_millis(300)));
        assert!(!worth_reloading(&late));
        let dropped = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!worth_reloading(&Err::<(), _>(Unavailable::from(dropped))));
        assert!(!worth_reloading(&Err::<(), _>(Unavailable::from(reply(b"-OOM over maxmemory\r\n")))));
        assert!(!worth_reloading(&Ok::<(), Unavailable>(())));
    }

    #[tokio::test]
    async fn a_full_queue_skips_removals_and_bounds_barriers() {
        let (queue, mut receiver) = RemovalQueue::new(1);
        let user = UserId::random();
        let id = Gone::acknowledged(MsgId { ms: 1, seq: 0 });
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
