//! The supervisor: watches the subscription connection end to end with probes, and brings it
//! back after a drop, a silent death or (with Sentinel) a failover, until a probe proves it.
//!
//! On a cluster the subscription connection is one per shard, and any of them may go quiet
//! alone: a probe goes to every shard (a channel in a slot each master owns, placed again
//! whenever the slots move), and the link counts as alive only while every probe comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Value;

use super::super::unavailable::{Unavailable, is_loading};
use super::commands::{Command, timed};
use super::connect::{Connections, Connector};
use super::doorbell::Doorbell;
use super::keys::Keys;
use super::slots::{first_range_per_master, tag_in_slots};
use super::subscriber::SubscriptionQueue;
use crate::hub::Hub;
use crate::telemetry::metric;

/// Probes missed in a row before the subscription link counts as dead.
const PROBE_MISSES: u32 = 3;
/// How long the supervisor lets disconnection notices gather before it recovers once for all.
const DISCONNECT_SETTLE: Duration = Duration::from_millis(50);

pub(super) struct Supervisor {
    connections: Arc<Connections>,
    subscriptions: SubscriptionQueue,
    hub: Arc<Hub>,
    keys: Keys,
    /// The probe channels currently subscribed.
    probes: Vec<String>,
    /// A hash tag for each slot range in use (finding one takes up to ~16k CRCs).
    tags: HashMap<(u16, u16), String>,
    /// The number of the last probe sent when each probe channel was placed.
    placed: HashMap<String, u64>,
    probes_sent: u64,
    interval: Duration,
    /// `PushHandler::disconnections` when the last recovery started.
    handled: u64,
}

impl Supervisor {
    pub(super) fn new(
        connections: Arc<Connections>,
        subscriptions: SubscriptionQueue,
        hub: Arc<Hub>,
        keys: Keys,
        interval: Duration,
    ) -> Self {
        Self {
            connections,
            subscriptions,
            hub,
            keys,
            probes: Vec::new(),
            tags: HashMap::new(),
            placed: HashMap::new(),
            probes_sent: 0,
            interval,
            handled: 0,
        }
    }

    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut misses = 0;
        loop {
            tokio::select! {
                _ = self.connections.push.disconnected.notified() => {
                    // Every node of a cluster reports its own drop: let them all arrive, so
                    // one recovery covers them.
                    tokio::time::sleep(DISCONNECT_SETTLE).await;
                    if self.connections.push.disconnections.load(Ordering::Acquire) == self.handled {
                        continue; // already covered by the last recovery
                    }
                    tracing::warn!("Redis subscription link dropped; reconnecting");
                    // A cluster connection that lost nodes can stall on its own slot refresh
                    // and resubscription (redis-rs 1.8.1), and a Sentinel-named master may be
                    // a replica by now (a failover ends its clients' connections): start from
                    // new connections. One Redis at one address is simply reconnected.
                    let rebuild = !matches!(self.connections.connector, Connector::Single { .. });
                    self.recover_link(rebuild).await;
                    misses = 0;
                }
                _ = tick.tick() => {
                    if let Some(master) = self.master_moved().await {
                        tracing::warn!(%master, "Sentinel names a new master; moving the links to it");
                        self.recover_link(true).await;
                        misses = 0;
                        continue;
                    }
                    // A tick waits for Redis at most one interval (a silent shard must not
                    // stretch the checks). The previous probe must have come back by now on
                    // every channel that had one (a channel placed since has not).
                    let _ = self.place_probes(self.interval).await;
                    misses = if self.probe_missing() { misses + 1 } else { 0 };
                    if misses >= PROBE_MISSES {
                        metrics::counter!(metric::REDIS_DEAD_LINKS).increment(1);
                        tracing::warn!(misses, "Redis subscription link silent; rebuilding it");
                        self.recover_link(true).await;
                        misses = 0;
                    } else {
                        let _ = self.probe(self.interval).await;
                    }
                }
            }
        }
    }

    /// With Sentinel: the new master's address after a failover (asked every tick; no answer
    /// keeps the connections where they are).
    async fn master_moved(&self) -> Option<String> {
        let Connector::Sentinel(sentinel) = &self.connections.connector else { return None };
        let timeout = self.connections.timeout;
        match tokio::time::timeout(timeout * 2, sentinel.moved(timeout)).await {
            Ok(Ok(moved)) => moved,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no answer from the Sentinels");
                None
            }
            Err(_) => None,
        }
    }

    /// Whether the last probe sent did not come back on a channel that was already in place
    /// when it was sent.
    fn probe_missing(&self) -> bool {
        let n = self.probes_sent;
        let seen = self.connections.push.probe_seen.lock().unwrap_or_else(|e| e.into_inner());
        self.probes.iter().any(|c| {
            self.placed.get(c).is_some_and(|&placed| placed < n) && seen.get(c.as_bytes()).is_none_or(|&s| s < n)
        })
    }

    /// Whether probe `n` came back on every probe channel.
    fn probes_returned(&self, n: u64) -> bool {
        let seen = self.connections.push.probe_seen.lock().unwrap_or_else(|e| e.into_inner());
        self.probes.iter().all(|c| seen.get(c.as_bytes()).is_some_and(|&s| s >= n))
    }

    /// Publishes the next probe on every probe channel, waiting at most `limit`; returns its
    /// number. A probe that cannot be published in time counts as sent, so it is missed like
    /// one never delivered.
    async fn probe(&mut self, limit: Duration) -> Result<u64, Unavailable> {
        self.probes_sent += 1;
        let n = self.probes_sent;
        let payload = Doorbell::Probe { n }.encode();
        timed(Command::Probe, limit, self.connections.publish_each(&self.probes, &payload)).await?;
        Ok(n)
    }

    /// The probe channels the topology asks for: one on a single Redis, one per master on a
    /// cluster (reading the slots waits at most `limit`).
    async fn wanted_probes(&mut self, limit: Duration) -> Result<Vec<String>, Unavailable> {
        let replica = &self.connections.push.replica;
        if !self.connections.is_cluster() {
            return Ok(vec![self.keys.probe(replica, None)]);
        }
        let mut con = self.connections.cmd();
        let slots: Value =
            timed(Command::Probe, limit, redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut con)).await?;
        let mut channels = Vec::new();
        let ranges = first_range_per_master(&slots);
        for &(start, end) in &ranges {
            let tag = self.tags.entry((start, end)).or_insert_with(|| tag_in_slots(start, end));
            channels.push(self.keys.probe(replica, Some(tag)));
        }
        self.tags.retain(|range, _| ranges.contains(range));
        channels.sort();
        if channels.is_empty() {
            return Err(Unavailable::said("CLUSTER SLOTS lists no master"));
        }
        Ok(channels)
    }

    /// Subscribes the probe channels the topology asks for, if they changed.
    async fn place_probes(&mut self, limit: Duration) -> Result<(), Unavailable> {
        let wanted = self.wanted_probes(limit).await?;
        if wanted == self.probes {
            return Ok(());
        }
        let result = self.subscriptions.place_probes(wanted.clone()).await;
        self.connections
            .push
            .probe_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c, _| wanted.iter().any(|w| w.as_bytes() == c));
        for channel in &wanted {
            self.placed.entry(channel.clone()).or_insert(self.probes_sent);
        }
        self.placed.retain(|c, _| wanted.contains(c));
        self.probes = wanted;
        result
    }

    /// Until the link is proven to work end to end: (re)build it if asked, subscribe every
    /// local user again, check a probe comes back; then every session re-reads its inbox.
    pub(super) async fn recover_link(&mut self, rebuild: bool) {
        // Whatever was lost until now, this recovery covers.
        self.handled = self.connections.push.disconnections.load(Ordering::Acquire);
        self.connections.set_up(false);
        self.hub.set_degraded(true);
        let mut rebuild = rebuild;
        let mut delay = Duration::from_millis(50);
        loop {
            match self.rebuild_and_prove(rebuild).await {
                Ok(()) => break,
                Err(why) => tracing::warn!(error = %why, "Redis subscription link not recovered yet; retrying"),
            }
            // A link that failed to come back is replaced on the next attempt.
            rebuild = true;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        self.connections.set_up(true);
        metrics::counter!(metric::REDIS_RESUBSCRIPTIONS).increment(1);
        // Catch-ups first, live forwarding after: see `Hub::set_degraded`.
        self.hub.catch_up_all();
        self.hub.set_degraded(false);
        tracing::info!(users = self.hub.len(), "Redis subscription link up; sessions resynchronised");
        self.say_if_loading().await;
    }

    /// Subscribing and publishing work while Redis loads its dataset (restarted with a large
    /// one), reading and writing do not: the link is up, and the replica stays unready (`ready`
    /// asks Redis) and answers `unavailable` until the load ends. Says so, once per recovery.
    async fn say_if_loading(&self) {
        let mut con = self.connections.cmd();
        let ping = redis::cmd("PING");
        if let Ok(Err(e)) = tokio::time::timeout(self.connections.timeout, ping.query_async::<()>(&mut con)).await
            && is_loading(&e)
        {
            tracing::warn!("Redis is loading its dataset; not ready until it has");
        }
    }

    /// One recovery attempt: new connections if asked, probes placed, everyone subscribed
    /// again, and a probe seen back.
    async fn rebuild_and_prove(&mut self, rebuild: bool) -> Result<(), Unavailable> {
        let started = Instant::now();
        if rebuild {
            self.connections.reconnect().await?;
        }
        let timeout = self.connections.timeout;
        self.place_probes(timeout).await?;
        let Some(resubscribed) = self.subscriptions.resubscribe_all().await else {
            return Ok(()); // the engine is gone; nothing left to recover
        };
        resubscribed?;
        let subscribed = started.elapsed();
        let n = self.probe(timeout).await?;
        let deadline = Instant::now() + timeout;
        while !self.probes_returned(n) {
            if Instant::now() > deadline {
                return Err(Unavailable::said("the probe did not come back"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::debug!(?subscribed, total = ?started.elapsed(), "subscription link checked end to end");
        Ok(())
    }
}
