//! The link: one task that alone owns this replica's subscription link — the subscribed set,
//! the probe channels and what came back through them, the echo numbers, the recovery and its
//! backoff, and when sessions get live deliveries again (`Hub::resume_live`, only if nothing
//! paused them since the recovery began: the push decoder pauses them too, at once).
//!
//! It is up (proven end to end: every probe interval a probe goes out on every probe channel
//! and must come back) or recovering (after a disconnection, a silence of `PROBE_MISSES`
//! probes, a lost event or a Sentinel failover; each attempt rebuilds the connections if asked,
//! subscribes everyone again and waits for a probe; a failed one is retried with backoff).
//! Three queues feed it: events from the push decoder (`events`), requests from the engine's
//! sessions (`requests`), and its own timers. Everything it awaits from Redis is awaited
//! through `Heard::during`, so events are taken in meanwhile.
//!
//! On a cluster the subscription connection is one per shard, and any of them may go quiet
//! alone: a probe goes to every shard (a channel in a slot each master owns, placed again
//! whenever the slots move), and the link counts as alive only while every probe comes back.

mod checks;
mod heard;
mod probes;
mod subscriptions;

pub(super) mod events;
pub(super) mod requests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use self::events::EventReceiver;
use self::heard::Heard;
use self::probes::Probes;
use self::requests::Requests;
use super::super::unavailable::{Unavailable, is_loading};
use super::connect::{Connections, Connector};
use crate::hub::Hub;
use crate::protocol::UserId;
use crate::telemetry::metric;

/// Probes missed in a row before the subscription link counts as dead.
const PROBE_MISSES: u32 = 3;
/// How long disconnection notices may gather before one recovery covers them all (every node
/// of a cluster reports its own drop).
const DISCONNECT_GRACE: Duration = Duration::from_millis(50);
/// The wait after the first failed recovery attempt; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Channels per SUBSCRIBE command, and requests taken in one batch.
pub(super) const SUBSCRIBE_CHUNK: usize = 1000;
/// Requests waiting for the link: a few batches of connecting users.
pub(super) const SUBSCRIPTION_QUEUE: usize = 4 * SUBSCRIBE_CHUNK;
/// Events waiting for the link: a few probe rounds and bursts of echoes and moved channels
/// (echoes come one per channel of a subscription batch).
pub(super) const EVENT_QUEUE: usize = 4 * SUBSCRIBE_CHUNK;

enum State {
    /// Proven end to end; `misses` probes in a row have not come back.
    Up { misses: u32 },
    /// The next attempt is due at `due`, on new connections if `rebuild`; `backoff` is the
    /// wait after it if it fails.
    Recovering { due: Instant, rebuild: bool, backoff: Duration },
}

pub(super) struct Link {
    connections: Arc<Connections>,
    hub: Arc<Hub>,
    keys: super::keys::Keys,
    /// This replica's id: its probe channels end with it, its echoes carry it.
    replica: Arc<str>,
    interval: Duration,
    heard: Heard,
    state: State,
    subscribed: HashSet<UserId>,
    probes: Probes,
    /// The number of the last echo sent (see `subscriptions`).
    echo: u64,
}

impl Link {
    pub(super) fn new(
        connections: Arc<Connections>,
        hub: Arc<Hub>,
        keys: super::keys::Keys,
        replica: Arc<str>,
        interval: Duration,
        events: EventReceiver,
    ) -> Self {
        Self {
            heard: Heard::new(events, hub.clone(), keys.clone()),
            connections,
            hub,
            keys,
            replica,
            interval,
            state: State::Up { misses: 0 },
            subscribed: HashSet::new(),
            probes: Probes::default(),
            echo: 0,
        }
    }

    /// Recovers until the link is proven end to end, the first time: this subscribes the probe
    /// channels too.
    pub(super) async fn start(&mut self) {
        self.recover_in(Duration::ZERO, false);
        while let State::Recovering { due, .. } = self.state {
            self.heard.during(tokio::time::sleep_until(due)).await;
            self.attempt().await;
        }
    }

    /// Runs until the engine is gone (its request queue closed).
    pub(super) async fn run(mut self, mut requests: Requests) {
        // `start` has just proven the link: the first check is one interval away.
        let mut tick = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut received = Vec::new();
        loop {
            let due = match self.state {
                State::Recovering { due, .. } => Some(due),
                State::Up { .. } => None,
            };
            tokio::select! {
                () = self.heard.next() => {}
                n = requests.recv_many(&mut received, SUBSCRIBE_CHUNK) => {
                    if n == 0 {
                        return;
                    }
                    self.settle_requests(received.drain(..)).await;
                }
                _ = tick.tick(), if due.is_none() => {
                    self.check().await;
                    if requests.take_skipped() {
                        self.settle_subscribed().await;
                    }
                }
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.attempt().await;
                }
            }
            self.after_event().await;
        }
    }

    /// While up, acts on what was heard until nothing is left to act on: a loss starts a
    /// recovery; moved channels are subscribed again, and whatever was heard meanwhile (a loss,
    /// more moved channels) is looked at again, not left until the next wake-up.
    async fn after_event(&mut self) {
        while matches!(self.state, State::Up { .. }) {
            if self.heard.lost {
                self.recover_after_loss();
            } else if !self.heard.dropped.is_empty() {
                self.settle_requests(std::iter::empty()).await;
            } else {
                return;
            }
        }
    }

    /// A connection dropped or an event was lost: recover after a short grace.
    fn recover_after_loss(&mut self) {
        tracing::warn!("Redis subscription link dropped; reconnecting");
        // A cluster connection that lost nodes can stall on its own slot refresh and
        // resubscription (redis-rs 1.8.1), and a Sentinel-named master may be a replica by now
        // (a failover ends its clients' connections): start from new connections. One Redis at
        // one address is simply reconnected.
        let rebuild = !matches!(self.connections.connector, Connector::Single { .. });
        self.recover_in(DISCONNECT_GRACE, rebuild);
    }

    /// The link is down from now on: unready, nothing forwarded live, an attempt `after` this
    /// long.
    fn recover_in(&mut self, after: Duration, rebuild: bool) {
        self.connections.set_up(false);
        self.heard.lose();
        self.state = State::Recovering { due: Instant::now() + after, rebuild, backoff: FIRST_BACKOFF };
    }

    /// One recovery attempt; up when it proves the link and nothing was lost meanwhile, else
    /// the next one: after the backoff, on new connections, if it failed (a link that failed to
    /// come back is replaced); after the disconnection grace if a loss was heard during it.
    async fn attempt(&mut self) {
        let State::Recovering { rebuild, backoff, .. } = self.state else { return };
        // Whatever was lost until now, this attempt covers; a loss heard during it (or a pause
        // made by the decoder that the link has not heard of yet) needs another.
        self.heard.lost = false;
        let pauses = self.hub.pauses();
        match self.rebuild_and_prove(rebuild).await {
            Ok(()) if self.heard.lost => self.recover_after_loss(),
            Ok(()) => self.link_up(pauses).await,
            Err(why) => {
                tracing::warn!(error = %why, "Redis subscription link not recovered yet; retrying");
                let due = Instant::now() + backoff;
                self.state = State::Recovering { due, rebuild: true, backoff: (backoff * 2).min(MAX_BACKOFF) };
            }
        }
    }

    /// New connections if asked, probes placed, everyone subscribed again, and a probe seen
    /// back.
    async fn rebuild_and_prove(&mut self, rebuild: bool) -> Result<(), Unavailable> {
        let started = std::time::Instant::now();
        if rebuild {
            self.heard.during(self.connections.reconnect()).await?;
        }
        let timeout = self.connections.timeout;
        self.place_probes(timeout).await?;
        self.resubscribe_all().await?;
        let subscribed = started.elapsed();
        let n = self.probe(timeout).await?;
        if !self.heard.until(Instant::now() + timeout, |heard| self.probes.returned(heard, n)).await {
            return Err(Unavailable::said("the probe did not come back"));
        }
        tracing::debug!(?subscribed, total = ?started.elapsed(), "subscription link checked end to end");
        Ok(())
    }

    /// Every session catches up and live forwarding resumes, unless it was paused again since
    /// the attempt read `pauses` (a disconnection not heard yet): then another recovery.
    async fn link_up(&mut self, pauses: u64) {
        if !self.hub.resume_live(pauses) {
            return self.recover_after_loss();
        }
        self.state = State::Up { misses: 0 };
        self.connections.set_up(true);
        metrics::counter!(metric::REDIS_RESUBSCRIPTIONS).increment(1);
        tracing::info!(users = self.hub.len(), "Redis subscription link up; sessions resynchronised");
        self.say_if_loading().await;
    }

    /// Subscribing and publishing work while Redis loads its dataset (restarted with a large
    /// one), reading and writing do not: the link is up, and the replica stays unready (`ready`
    /// asks Redis) and answers `unavailable` until the load ends. Says so, once per recovery.
    async fn say_if_loading(&mut self) {
        let mut con = self.connections.cmd();
        let ping = redis::cmd("PING");
        let answer =
            self.heard.during(tokio::time::timeout(self.connections.timeout, ping.query_async::<()>(&mut con)));
        if let Ok(Err(e)) = answer.await
            && is_loading(&e)
        {
            tracing::warn!("Redis is loading its dataset; not ready until it has");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use tokio_util::sync::CancellationToken;

    use super::events::{LinkEvent, LinkEvents};
    use super::*;
    use crate::engine::redis::conn::with_resp3;
    use crate::engine::redis::keys::Keys;
    use crate::engine::redis::link::requests::SubscriptionQueue;
    use crate::engine::redis::push::PushHandler;

    /// A redis-server of the test's own, on a free port, killed when dropped.
    struct Redis(Child, u16);

    impl Redis {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server");
            Self(child, port)
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A link to `redis` proven up, for a hub holding one live session; the events' sender,
    /// the hub, the session's user. Probes every `interval`.
    async fn link(redis: &Redis, interval: Duration) -> (Link, LinkEvents, Arc<Hub>, UserId) {
        let hub = Arc::new(Hub::new(4, 1 << 20, CancellationToken::new()));
        let user = UserId::random();
        hub.set_generation(&hub.register(&user), 1);
        let keys = Keys { prefix: format!("t{}:", redis.1) };
        let (events, receiver) = LinkEvents::new(EVENT_QUEUE, hub.clone());
        let push = PushHandler::new(hub.clone(), keys.clone(), "r".into(), events.clone());
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.1)).unwrap();
        let connector = Connector::Single { pubsub_client: with_resp3(&client).unwrap(), client };
        let timeout = Duration::from_secs(2);
        let connections = Arc::new(Connections::open(connector, push, timeout, "test").await.unwrap());
        let mut link = Link::new(connections, hub.clone(), keys, "r".into(), interval, receiver);
        link.start().await;
        assert!(link.connections.is_up() && hub.live_generation(&user).is_some());
        (link, events, hub, user)
    }

    #[tokio::test]
    async fn a_loss_heard_while_moved_channels_are_subscribed_again_starts_a_recovery_at_once() {
        let redis = Redis::start();
        // No probe tick during the test: only the link's own reaction can recover it.
        let (link, events, hub, user) = link(&redis, Duration::from_secs(3600)).await;
        let (connections, pauses) = (link.connections.clone(), hub.pauses());
        // The channel is taken first; the disconnection while it is subscribed again.
        events.tell(LinkEvent::ServerDropped(link.keys.channel(&user).into_bytes()));
        events.tell(LinkEvent::Disconnected);
        let (_queue, requests) = SubscriptionQueue::new(SUBSCRIPTION_QUEUE);
        let running = tokio::spawn(link.run(requests));
        // Paused when the loss is heard; recovered (ready, live again) only by a recovery.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(hub.pauses() > pauses && connections.is_up() && hub.live_generation(&user).is_some()) {
            assert!(Instant::now() < deadline, "the link did not recover from the loss");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        running.abort();
    }

    #[tokio::test]
    async fn a_loss_heard_during_a_successful_attempt_means_another_attempt() {
        let redis = Redis::start();
        let (mut link, events, hub, user) = link(&redis, Duration::from_secs(3600)).await;
        link.recover_in(Duration::ZERO, false);
        // Taken during the attempt (it clears what was heard before it).
        events.tell(LinkEvent::Disconnected);
        link.attempt().await;
        assert!(matches!(link.state, State::Recovering { .. }), "not up after an attempt that heard a loss");
        assert!(!link.connections.is_up(), "nor ready");
        assert_eq!(hub.live_generation(&user), None, "nor forwarding live");
        // The next attempt, hearing nothing, brings it up.
        link.attempt().await;
        assert!(matches!(link.state, State::Up { .. }) && link.connections.is_up());
        assert_eq!(hub.live_generation(&user), Some(1));
    }
}
