//! The link proven end to end: every probe interval while up, a probe published on every probe
//! channel must come back through the subscription connection; the channels are placed again
//! when the cluster's slots move, and a Sentinel failover moves the link to the new master.

use std::time::Duration;

use redis::Value;

use super::super::super::unavailable::Unavailable;
use super::{Link, PROBE_MISSES, State};
use crate::engine::redis::commands::{Command, timed};
use crate::engine::redis::connect::Connector;
use crate::engine::redis::doorbell::Doorbell;
use crate::engine::redis::slots::{first_range_per_master, tag_in_slots};
use crate::telemetry::metric;

impl Link {
    /// Every probe interval while up: follows a Sentinel failover, places the probe channels
    /// again if the slots moved, counts the last probe's misses and sends the next.
    pub(super) async fn check(&mut self) {
        if let Some(master) = self.master_moved().await {
            tracing::warn!(%master, "Sentinel names a new master; moving the links to it");
            return self.recover_in(Duration::ZERO, true);
        }
        // Redis is waited for at most one interval (a silent shard must not stretch the
        // checks). The previous probe must have come back by now on every channel that had one
        // (a channel placed since has not).
        let _ = self.place_probes(self.interval).await;
        let missing = self.probes.missing(&self.heard);
        let State::Up { misses } = &mut self.state else { return };
        *misses = if missing { *misses + 1 } else { 0 };
        if *misses >= PROBE_MISSES {
            metrics::counter!(metric::REDIS_DEAD_LINKS).increment(1);
            tracing::warn!(misses = *misses, "Redis subscription link silent; rebuilding it");
            self.recover_in(Duration::ZERO, true);
        } else {
            let _ = self.probe(self.interval).await;
        }
    }

    /// With Sentinel: the new master's address after a failover (asked every tick; no answer
    /// keeps the connections where they are).
    async fn master_moved(&mut self) -> Option<String> {
        let Connector::Sentinel(sentinel) = &self.connections.connector else { return None };
        let timeout = self.connections.timeout;
        match self.heard.during(tokio::time::timeout(timeout * 2, sentinel.moved(timeout))).await {
            Ok(Ok(moved)) => moved,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no answer from the Sentinels");
                None
            }
            Err(_) => None,
        }
    }

    /// Publishes the next probe on every probe channel, waiting at most `limit`; returns its
    /// number. A probe that cannot be published in time counts as sent, so it is missed like
    /// one never delivered.
    pub(super) async fn probe(&mut self, limit: Duration) -> Result<u64, Unavailable> {
        self.probes.sent += 1;
        let n = self.probes.sent;
        let payload = Doorbell::Probe { n }.encode();
        let publish = self.connections.publish_each(&self.probes.channels, &payload);
        self.heard.during(timed(Command::Probe, limit, publish)).await?;
        Ok(n)
    }

    /// Subscribes the probe channels the topology asks for, if they changed, and unsubscribes
    /// those it no longer asks for.
    pub(super) async fn place_probes(&mut self, limit: Duration) -> Result<(), Unavailable> {
        let wanted = self.wanted_probes(limit).await?;
        if wanted == self.probes.channels {
            return Ok(());
        }
        let (new, old) = self.probes.changes(&wanted);
        let mut con = self.connections.pubsub();
        let timeout = self.connections.timeout;
        let mut result = Ok(());
        if !new.is_empty() {
            result = self.heard.during(timed(Command::Subscribe, timeout, con.subscribe(&new))).await;
        }
        if !old.is_empty()
            && let Err(e) = self.heard.during(timed(Command::Unsubscribe, timeout, con.unsubscribe(&old))).await
        {
            tracing::warn!(error = %e, "unsubscribing old probe channels failed");
        }
        self.probes.replace(wanted, &mut self.heard);
        result
    }

    /// The probe channels the topology asks for: one on a single Redis, one per master on a
    /// cluster (reading the slots waits at most `limit`).
    async fn wanted_probes(&mut self, limit: Duration) -> Result<Vec<String>, Unavailable> {
        if !self.connections.is_cluster() {
            return Ok(vec![self.keys.probe(&self.replica, None)]);
        }
        let mut con = self.connections.cmd();
        let slots: Value = self
            .heard
            .during(timed(Command::Probe, limit, redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut con)))
            .await?;
        let mut channels = Vec::new();
        let ranges = first_range_per_master(&slots);
        for &(start, end) in &ranges {
            let tag = self.probes.tags.entry((start, end)).or_insert_with(|| tag_in_slots(start, end));
            channels.push(self.keys.probe(&self.replica, Some(tag)));
        }
        self.probes.tags.retain(|range, _| ranges.contains(range));
        channels.sort();
        if channels.is_empty() {
            return Err(Unavailable::said("CLUSTER SLOTS lists no master"));
        }
        Ok(channels)
    }
}
