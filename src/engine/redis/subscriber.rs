//! The subscriber: owns this replica's subscriptions. Requests are handled in order, in
//! batches, and each is decided from the hub's state at that moment, so a subscribe and an
//! unsubscribe of the same user can never overtake each other. On a cluster every new
//! subscription is proven by an echo through its channel.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::RedisResult;
use tokio::sync::{mpsc, oneshot};

use super::super::unavailable::Unavailable;
use super::commands::{Command, timed};
use super::conn::Conn;
use super::connect::Connections;
use super::doorbell::Doorbell;
use super::keys::Keys;
use crate::hub::Hub;
use crate::protocol::UserId;
use crate::telemetry::metric;

/// Channels per SUBSCRIBE command when many users are (re)subscribed at once.
const SUBSCRIBE_CHUNK: usize = 1000;

/// Requests waiting for the subscriber: a few batches of connecting users. When it is full,
/// `attach` waits for room within its timeout (and answers `unavailable`, so the client
/// retries), the supervisor waits, and the two callers that cannot wait fall back to something
/// safe (see `SubscriptionQueue::settle_later` and `server_dropped`).
pub(super) const SUBSCRIPTION_QUEUE: usize = 4 * SUBSCRIBE_CHUNK;

type Waiter = oneshot::Sender<Result<(), Unavailable>>;

pub(super) enum SubRequest {
    /// Bring the user's subscription in line with the hub; answer once it is.
    Settle(UserId, Option<Waiter>),
    /// Subscribe every user the hub holds (and the probe channels) again, on the current
    /// connection.
    ResubscribeAll(Waiter),
    /// The probe channels to hold from now on (one per shard on a cluster).
    Probes(Vec<String>, Waiter),
    /// The server ended this subscription by itself (its slot moved to another shard).
    ServerDropped(Vec<u8>),
}

/// The subscriber's bounded queue.
#[derive(Clone)]
pub(super) struct SubscriptionQueue(mpsc::Sender<SubRequest>);

impl SubscriptionQueue {
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<SubRequest>) {
        let (queue, receiver) = mpsc::channel(capacity);
        (Self(queue), receiver)
    }

    /// Subscribes the user if the hub holds it; waiting for room and for the answer together
    /// take at most `limit`.
    pub(super) async fn settle(&self, user: &UserId, limit: Duration) -> Result<(), Unavailable> {
        let (done, subscribed) = oneshot::channel();
        let ask = async {
            let _ = self.0.send(SubRequest::Settle(user.clone(), Some(done))).await;
            subscribed.await
        };
        match tokio::time::timeout(limit, ask).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Unavailable::said("subscriber stopped")),
            Err(_) => Err(Unavailable::said("subscribe timed out")),
        }
    }

    /// Unsubscribes the user if the hub no longer holds it, without waiting (`release` is not
    /// async). When the queue is full the subscription stays: it only brings doorbells the hub
    /// ignores, the user's next `settle` finds it in place, and the next full resubscription
    /// ends it.
    pub(super) fn settle_later(&self, user: &UserId) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.0.try_send(SubRequest::Settle(user.clone(), None)) {
            tracing::debug!("subscription queue full; an unused subscription stays until the next resubscription");
        }
    }

    /// Asks for a subscription the server ended to be made again, without waiting (pushes
    /// arrive on redis-rs's task). False when the queue is full: the caller recovers the whole
    /// link instead.
    pub(super) fn server_dropped(&self, channel: Vec<u8>) -> bool {
        !matches!(self.0.try_send(SubRequest::ServerDropped(channel)), Err(mpsc::error::TrySendError::Full(_)))
    }

    /// Subscribes everything again; `None` once the engine is gone.
    pub(super) async fn resubscribe_all(&self) -> Option<Result<(), Unavailable>> {
        let (done, resubscribed) = oneshot::channel();
        self.0.send(SubRequest::ResubscribeAll(done)).await.ok()?;
        Some(resubscribed.await.unwrap_or_else(|_| Err(Unavailable::said("subscriber stopped"))))
    }

    pub(super) async fn place_probes(&self, channels: Vec<String>) -> Result<(), Unavailable> {
        let (done, placed) = oneshot::channel();
        let _ = self.0.send(SubRequest::Probes(channels, done)).await;
        placed.await.unwrap_or_else(|_| Err(Unavailable::said("subscriber stopped")))
    }
}

pub(super) struct Subscriber {
    connections: Arc<Connections>,
    hub: Arc<Hub>,
    keys: Keys,
    subscribed: HashSet<UserId>,
    probes: Vec<String>,
    /// The number of the last echo sent (see `prove_subscriptions`).
    echo: u64,
}

/// What one batch of requests asks for.
#[derive(Default)]
struct Batch {
    users: HashSet<UserId>,
    /// Users whose subscription the server ended: subscribed again even if we think they
    /// are, then their sessions re-read what was announced meanwhile.
    lost: HashSet<UserId>,
    waiters: Vec<Waiter>,
    everyone: bool,
    new_probes: Vec<String>,
    old_probes: Vec<String>,
}

impl Subscriber {
    pub(super) fn new(connections: Arc<Connections>, hub: Arc<Hub>, keys: Keys) -> Self {
        Self { connections, hub, keys, subscribed: HashSet::new(), probes: Vec::new(), echo: 0 }
    }

    pub(super) async fn run(mut self, mut requests: mpsc::Receiver<SubRequest>) {
        let mut received = Vec::new();
        while requests.recv_many(&mut received, SUBSCRIBE_CHUNK).await > 0 {
            let mut batch = self.gather(received.drain(..));
            let mut con = self.connections.pubsub();
            let mut result = self.settle_probes(&mut batch, &mut con).await;
            let (to_subscribe, to_unsubscribe) = self.plan(&mut batch);
            let (done, subscribing) = self.subscribe_users(&mut con, &to_subscribe).await;
            if subscribing.is_err() {
                result = subscribing;
            }
            let (ok, failed) = to_subscribe.split_at(done);
            self.catch_up_moved(&batch, ok, failed);
            self.unsubscribe_users(&mut con, &to_unsubscribe).await;
            for waiter in batch.waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }

    fn gather(&mut self, requests: impl Iterator<Item = SubRequest>) -> Batch {
        let mut batch = Batch::default();
        for request in requests {
            match request {
                SubRequest::Settle(user, waiter) => {
                    batch.users.insert(user);
                    batch.waiters.extend(waiter);
                }
                SubRequest::ResubscribeAll(waiter) => {
                    batch.everyone = true;
                    batch.waiters.push(waiter);
                }
                SubRequest::Probes(channels, waiter) => {
                    batch.old_probes.extend(self.probes.iter().filter(|c| !channels.contains(c)).cloned());
                    batch.new_probes.extend(channels.iter().filter(|c| !self.probes.contains(c)).cloned());
                    self.probes = channels;
                    batch.waiters.push(waiter);
                }
                SubRequest::ServerDropped(channel) => {
                    if let Some(probe) = self.probes.iter().find(|c| c.as_bytes() == channel) {
                        batch.new_probes.push(probe.clone());
                    } else if let Some(user) = self.keys.channel_user(&channel) {
                        batch.lost.insert(user);
                    }
                }
            }
        }
        if batch.everyone {
            // The connection may be a new one: subscribe everyone wanted again, and settle
            // everyone subscribed before (some may have left meanwhile).
            batch.users.extend(self.hub.users());
            batch.users.extend(self.subscribed.iter().cloned());
            batch.new_probes.clone_from(&self.probes);
        }
        batch
    }

    /// Subscribes the probe channels wanted and not held, unsubscribes those no longer wanted.
    async fn settle_probes(&self, batch: &mut Batch, con: &mut Conn) -> Result<(), Unavailable> {
        let timeout = self.connections.timeout;
        batch.new_probes.retain(|c| self.probes.contains(c));
        let mut result = Ok(());
        if !batch.new_probes.is_empty() {
            result = timed(Command::Subscribe, timeout, con.subscribe(&batch.new_probes)).await;
        }
        if !batch.old_probes.is_empty()
            && let Err(e) = timed(Command::Unsubscribe, timeout, con.unsubscribe(&batch.old_probes)).await
        {
            tracing::warn!(error = %e, "unsubscribing old probe channels failed");
        }
        result
    }

    /// Who to subscribe and who to unsubscribe, from the hub's state now.
    fn plan(&self, batch: &mut Batch) -> (Vec<UserId>, Vec<UserId>) {
        batch.users.extend(batch.lost.iter().cloned());
        let mut to_subscribe = Vec::new();
        let mut to_unsubscribe = Vec::new();
        for user in batch.users.drain() {
            match (self.hub.is_registered(&user), self.subscribed.contains(&user)) {
                (true, false) => to_subscribe.push(user),
                (true, true) if batch.everyone || batch.lost.contains(&user) => to_subscribe.push(user),
                (false, true) => to_unsubscribe.push(user),
                _ => {}
            }
        }
        (to_subscribe, to_unsubscribe)
    }

    /// Subscribes in chunks until one fails; returns how many users are subscribed.
    async fn subscribe_users(&mut self, con: &mut Conn, users: &[UserId]) -> (usize, Result<(), Unavailable>) {
        let mut done = 0;
        for chunk in users.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|u| self.keys.channel(u)).collect();
            let made = match timed(Command::Subscribe, self.connections.timeout, con.subscribe(&channels)).await {
                // redis-rs 1.8.1 takes a node's unasked `sunsubscribe` for the reply to whatever
                // waits on that connection, so a subscription can be answered OK and never made:
                // on a cluster each one is proven by an echo through its channel.
                Ok(()) if self.connections.is_cluster() => {
                    prove_subscriptions(&self.connections, con, channels, &mut self.echo)
                        .await
                        .map_err(Unavailable::from)
                }
                other => other,
            };
            if let Err(e) = made {
                return (done, Err(e)); // the link does not work: the rest would only wait as long each
            }
            self.subscribed.extend(chunk.iter().cloned());
            done += chunk.len();
        }
        (done, Ok(()))
    }

    /// Moved users subscribed again re-read their inboxes; moved users that could not be
    /// subscribed again bring the whole link down.
    fn catch_up_moved(&self, batch: &Batch, ok: &[UserId], failed: &[UserId]) {
        let mut moved = 0;
        for user in ok.iter().filter(|user| batch.lost.contains(*user)) {
            self.hub.catch_up(user);
            moved += 1;
        }
        metrics::counter!(metric::REDIS_MOVED_SUBSCRIPTIONS).increment(moved);
        // Users asking to connect are answered with the error (and retry); a full resubscription
        // is retried by the supervisor. Moved users have nobody else to bring them back: recover
        // the whole link (every user subscribed again, every session re-reads its inbox).
        if !batch.everyone && failed.iter().any(|user| batch.lost.contains(user)) {
            tracing::warn!("cannot subscribe moved channels again; recovering the link");
            self.connections.push.link_lost();
        }
    }

    async fn unsubscribe_users(&mut self, con: &mut Conn, users: &[UserId]) {
        for chunk in users.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|u| self.keys.channel(u)).collect();
            if let Err(e) = timed(Command::Unsubscribe, self.connections.timeout, con.unsubscribe(&channels)).await {
                // Some of them may still be subscribed: they only bring doorbells the hub
                // ignores. Forgotten all the same, so a user coming back is subscribed anew.
                tracing::warn!(error = %e, "unsubscribe failed");
            }
            chunk.iter().for_each(|user| {
                self.subscribed.remove(user);
            });
        }
    }
}

/// Proves cluster subscriptions just made: an echo of this replica goes through every channel
/// and must come back. Channels that stay silent are subscribed once more (their slot may have
/// moved in between) and proven again; still silent, they are an error.
async fn prove_subscriptions(
    connections: &Connections,
    con: &mut Conn,
    channels: Vec<String>,
    echo: &mut u64,
) -> RedisResult<()> {
    let mut silent = channels;
    for attempt in 0..2 {
        *echo += 1;
        silent = echo_through(connections, silent, *echo).await?;
        if silent.is_empty() {
            return Ok(());
        }
        tracing::debug!(silent = silent.len(), attempt, "subscriptions without echo");
        if attempt == 0 {
            con.subscribe(&silent).await?;
        }
    }
    Err((redis::ErrorKind::Io, "subscriptions made but silent", format!("{} channels", silent.len())).into())
}

/// Publishes echo `n` on every channel and returns those it did not come back through within
/// the command timeout (the hub never sees echoes).
async fn echo_through(connections: &Connections, channels: Vec<String>, n: u64) -> RedisResult<Vec<String>> {
    let push = &connections.push;
    push.echo_floor.store(n, Ordering::Release);
    let payload = Doorbell::Echo { replica: push.replica.to_string(), n }.encode();
    let published = match tokio::time::timeout(connections.timeout, connections.publish_each(&channels, &payload)).await
    {
        Ok(result) => result,
        Err(_) => Err((redis::ErrorKind::Io, "echo publish timed out").into()),
    };
    let mut silent = channels;
    let deadline = Instant::now() + connections.timeout;
    while published.is_ok() && !silent.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut seen = push.echoes.lock().unwrap_or_else(|e| e.into_inner());
        silent.retain(|c| match seen.get(c.as_bytes()) {
            Some(&e) if e >= n => {
                seen.remove(c.as_bytes());
                false
            }
            _ => true,
        });
    }
    published?;
    Ok(silent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_makes_attach_wait_and_never_blocks_the_others() {
        let (queue, mut requests) = SubscriptionQueue::new(1);
        let user = UserId::random();
        queue.settle_later(&user);
        // Full: the callers that cannot wait return at once...
        queue.settle_later(&user);
        assert!(!queue.server_dropped(b"t:deliver:{x}".to_vec()));
        // ...and `attach` waits for room only as long as its timeout, then answers unavailable.
        let waited = queue.settle(&user, Duration::from_millis(20)).await;
        assert!(matches!(waited, Err(e) if e.to_string() == "storage unavailable: subscribe timed out"));
        // The one request queued is intact; with room again, `attach` gets its answer.
        assert!(matches!(requests.recv().await, Some(SubRequest::Settle(u, None)) if u == user));
        let attach = tokio::spawn({
            let (queue, user) = (queue.clone(), user.clone());
            async move { queue.settle(&user, Duration::from_secs(5)).await }
        });
        match requests.recv().await {
            Some(SubRequest::Settle(_, Some(done))) => done.send(Ok(())).unwrap(),
            _ => panic!("expected attach's request"),
        }
        assert!(attach.await.unwrap().is_ok());
        assert!(queue.server_dropped(b"t:deliver:{x}".to_vec()));
    }
}
