//! The sender: the sends of every session of this replica go to Redis together. Sessions queue
//! their sends (one job per session batch, answered in order); one task takes whatever is
//! queued, stores it with one `SEND` script call per [`MESSAGES_PER_CALL`] messages, all in one
//! pipeline, and hands each job its results. While a round is in flight the next one gathers,
//! so the busier the replica, the more messages each script call carries: the cost a call
//! has whatever it carries (reading the command, setting up the script, the reply) is shared,
//! on both sides of the link (that fixed cost is most of what Redis spends on a message sent alone).
//!
//! A message whose recipient is connected to this replica is handed to its session here,
//! after the round, instead of being published and heard back (the script checks, atomically,
//! that this connection is still the user's newest; see `scripts::SEND`): no doorbell for Redis
//! to write, nor for this replica to read and decode.
//!
//! Single Redis and Sentinel only. On a cluster a script must stay in one slot, so each
//! recipient's messages are one call of their own (`RedisEngine::send_per_recipient`).
//!
//! A receipt still means stored: a result is the script's answer for that message, and a
//! round that fails or times out answers every message in it `unavailable` (stored or not,
//! as a timed-out command always was: the client retries, the spec's at-least-once).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::{RedisResult, Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::super::errors::SendError;
use super::super::unavailable::{Unavailable, is_noscript};
use super::commands::{Command, timed};
use super::connect::Connections;
use super::keys::Keys;
use super::scripts::{Stored, send_replies};
use crate::config::Limits;
use crate::hub::Hub;
use crate::protocol::{Delivery, MsgId, UserId};

/// Messages per script call: a call runs alone in Redis, so this bounds how long one call
/// holds everything else up (~1 ms).
pub(super) const MESSAGES_PER_CALL: usize = 128;

/// Jobs taken from the queue at once. A job is one session's batch (at most 64 sends,
/// `session::requests`), so that is at most 4,096 messages.
const JOBS_PER_ROUND: usize = 64;

/// Envelope bytes per round (one pipeline, one timeout): jobs taken together beyond it go in
/// the rounds after, so a few large messages cannot make one slow round fail everyone's sends.
const ROUND_BYTES: usize = 4 << 20;

/// Jobs waiting for a round: about one per sending session (a session waits for its answers
/// before it queues again; one that gave up waiting may leave a job behind it), so only a
/// replica with more sending sessions than this waits for room.
pub(super) const SEND_QUEUE: usize = 4096;

/// Results of one job, in the order of its sends.
pub(super) type Results = Vec<Result<MsgId, SendError>>;

pub(super) struct Job {
    from: UserId,
    prefix: String,
    sends: Vec<(UserId, Bytes)>,
    answer: oneshot::Sender<Results>,
}

/// The sender's bounded queue.
#[derive(Clone)]
pub(super) struct SendQueue {
    queue: mpsc::Sender<Job>,
}

impl SendQueue {
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<Job>) {
        let (queue, receiver) = mpsc::channel(capacity);
        (Self { queue }, receiver)
    }

    /// Stores `sends` of `from`, in order, with the other sessions' sends of the same round.
    /// Waits at most twice `timeout` for room and for the answer: a session answered
    /// `unavailable` then may still see its sends stored by a round that was slower (as a timed
    /// out command always could; the client retries, at least once).
    pub(super) async fn send(
        &self,
        from: &UserId,
        prefix: String,
        sends: Vec<(UserId, Bytes)>,
        timeout: Duration,
    ) -> Results {
        let count = sends.len();
        let (answer, answered) = oneshot::channel();
        let job = Job { from: from.clone(), prefix, sends, answer };
        let queued = async {
            self.queue.send(job).await.ok()?;
            answered.await.ok()
        };
        // A round is timed itself; this bounds the wait for room in a full queue.
        match tokio::time::timeout(timeout * 2, queued).await {
            Ok(Some(results)) => results,
            Ok(None) => unavailable(count, Unavailable::said("the engine is shutting down")),
            Err(_) => unavailable(count, Unavailable::said("timed out waiting for the sender")),
        }
    }
}

/// The sender task: one round at a time, until the queue closes.
pub(super) async fn sender(
    connections: Arc<Connections>,
    hub: Arc<Hub>,
    script: Script,
    keys: Keys,
    limits: Limits,
    mut queue: mpsc::Receiver<Job>,
) {
    // Loaded ahead, so the first round does not pay for NOSCRIPT (a restarted Redis still can:
    // `store` loads it again then).
    let load = script.prepare_invoke();
    let _ = timed(Command::Send, connections.timeout, load.load_async(&mut connections.cmd())).await;
    let mut jobs = Vec::with_capacity(JOBS_PER_ROUND);
    while queue.recv_many(&mut jobs, JOBS_PER_ROUND).await > 0 {
        while !jobs.is_empty() {
            let round: Vec<Job> = jobs.drain(..round_len(&jobs)).collect();
            let messages: Vec<Message<'_>> = round
                .iter()
                .flat_map(|job| {
                    job.sends.iter().map(|(to, envelope)| Message::new(&hub, &job.from, &job.prefix, to, envelope))
                })
                .collect();
            let stored = store(&connections, &script, &keys, &limits, &messages).await;
            let results = deliver_here(&hub, &messages, stored);
            drop(messages);
            let mut results = results.into_iter();
            for job in round {
                // A session that gave up waiting (its timeout) is gone: nothing to tell it.
                let _ = job.answer.send(results.by_ref().take(job.sends.len()).collect());
            }
        }
    }
}

/// How many of `jobs` (at least one) the next round takes: up to [`ROUND_BYTES`] of envelopes.
fn round_len(jobs: &[Job]) -> usize {
    let mut bytes = 0;
    let within = jobs
        .iter()
        .take_while(|job| {
            bytes += job.sends.iter().map(|(_, envelope)| envelope.len()).sum::<usize>();
            bytes <= ROUND_BYTES
        })
        .count();
    within.max(1)
}

/// One message of a round.
#[derive(Clone, Copy)]
pub(super) struct Message<'a> {
    pub(super) from: &'a UserId,
    /// The sender's address prefix (stored with the entry: the ledger's release names it).
    pub(super) prefix: &'a str,
    pub(super) to: &'a UserId,
    pub(super) envelope: &'a Bytes,
    /// The generation of the recipient's live connection on this replica, if any.
    pub(super) local: Option<u64>,
}

impl<'a> Message<'a> {
    pub(super) fn new(hub: &Hub, from: &'a UserId, prefix: &'a str, to: &'a UserId, envelope: &'a Bytes) -> Self {
        Self { from, prefix, to, envelope, local: hub.live_generation(to) }
    }
}

/// Hands the messages the script did not publish to their recipients' sessions here (in
/// order: one recipient's messages are in number order in a round, and rounds follow each
/// other), and gives the senders their ids. A local recipient's message whose answer was lost
/// (a timed-out or failed round: it may be stored, and was then not published) makes that
/// session catch up from its inbox, so a stored message never waits for the next one to be noticed.
pub(super) fn deliver_here(hub: &Hub, messages: &[Message<'_>], stored: Vec<Result<Stored, SendError>>) -> Results {
    messages
        .iter()
        .zip(stored)
        .map(|(message, stored)| {
            if let (Err(SendError::Unavailable(_)), Some(_)) = (&stored, message.local) {
                hub.catch_up(message.to);
            }
            let Stored { id, local_seq } = stored?;
            if let Some(seq) = local_seq {
                hub.deliver(message.to, Delivery { id, ts: id.ms, seq, envelope: message.envelope.clone() });
            }
            Ok(id)
        })
        .collect()
}

/// The `SEND` call for `messages` (on a cluster: all to one recipient).
pub(super) fn invocation<'a>(
    script: &'a Script,
    keys: &Keys,
    limits: &Limits,
    messages: &[Message<'_>],
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation
        .arg(limits.inbox_capacity)
        .arg(limits.inbox_ttl_secs.saturating_mul(1000))
        .arg(limits.inbox_share)
        .arg(limits.inbox_share_bytes)
        .arg(limits.inbox_max_bytes)
        .arg(limits.stranger_pool)
        .arg(limits.stranger_pool_bytes);
    for message in messages {
        invocation
            .key(keys.user(message.to))
            .key(keys.inbox(message.to))
            .key(keys.shares(message.to))
            .key(keys.contacts(message.to))
            .arg(message.envelope.as_ref())
            .arg(keys.channel(message.to))
            .arg(message.from.as_str())
            .arg(message.prefix);
        match message.local {
            Some(generation) => invocation.arg(keys.generation(message.to)).arg(generation),
            None => invocation.arg("").arg(""),
        };
    }
    invocation
}

/// Stores a round in one pipeline: one result per message, in order.
async fn store(
    connections: &Connections,
    script: &Script,
    keys: &Keys,
    limits: &Limits,
    messages: &[Message<'_>],
) -> Vec<Result<Stored, SendError>> {
    let calls: Vec<&[Message<'_>]> = messages.chunks(MESSAGES_PER_CALL).collect();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for call in &calls {
        pipe.invoke_script(&invocation(script, keys, limits, call));
    }
    let mut con = connections.cmd();
    let timeout = connections.timeout;
    let mut replies: Result<Vec<RedisResult<Value>>, Unavailable> =
        timed(Command::Send, timeout, pipe.query_async(&mut con)).await;
    // A pipeline does not load the script by itself (a restarted or failed-over Redis has
    // lost it): every EVALSHA then failed without effect, so load it and run them again.
    // (`ignore_errors`: each call's own error is in its reply, where `timed` does not see it.)
    let missing_script = |r: &RedisResult<Value>| r.as_ref().err().is_some_and(is_noscript);
    // Only when every call failed so: a pipeline is not atomic, and if some of it ran (the
    // script was loaded meanwhile), running it again would store those twice; the failed
    // ones are then answered `unavailable` and retried by their senders.
    if replies.as_ref().is_ok_and(|all| !all.is_empty() && all.iter().all(missing_script)) {
        let load = script.prepare_invoke();
        if timed(Command::Send, timeout, load.load_async(&mut con)).await.is_ok() {
            replies = timed(Command::Send, timeout, pipe.query_async(&mut con)).await;
        }
    }
    match replies {
        Ok(replies) if replies.len() == calls.len() => replies
            .into_iter()
            .zip(&calls)
            .flat_map(|(reply, call)| match reply {
                Ok(reply) => send_replies(reply, call.len()),
                Err(e) => unavailable(call.len(), e.into()),
            })
            .collect(),
        Ok(_) => unavailable(messages.len(), Unavailable::said("short pipeline reply")),
        Err(e) => unavailable(messages.len(), e),
    }
}

/// `count` results, each failed for `why`.
pub(super) fn unavailable<T>(count: usize, why: Unavailable) -> Vec<Result<T, SendError>> {
    (0..count).map(|_| Err(why.clone().into())).collect()
}
