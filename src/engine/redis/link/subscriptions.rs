//! The link's subscriptions: requests are handled in order, in batches, and each is decided
//! from the hub's state at that moment, so a subscribe and an unsubscribe of the same user can
//! never overtake each other. On a cluster every new subscription is proven by an echo through
//! its channel.

use std::collections::HashSet;

use redis::RedisResult;
use tokio::time::Instant;

use super::super::super::unavailable::Unavailable;
use super::requests::{Settle, Waiter};
use super::{Link, SUBSCRIBE_CHUNK};
use crate::engine::redis::commands::{Command, timed};
use crate::engine::redis::conn::Conn;
use crate::engine::redis::doorbell::Doorbell;
use crate::protocol::UserId;
use crate::telemetry::metric;

/// What one batch asks for.
#[derive(Default)]
struct Batch {
    users: HashSet<UserId>,
    /// Users whose subscription the server ended: subscribed again even if we think they
    /// are, then their sessions catch up on what was announced meanwhile.
    lost: HashSet<UserId>,
    waiters: Vec<Waiter>,
    /// Every user the hub holds (and the probe channels), on a connection that may be new.
    everyone: bool,
    probes: bool,
}

impl Link {
    /// Brings the requested users' subscriptions (and those the server ended) in line with the
    /// hub, and answers the requests.
    pub(super) async fn settle_requests(&mut self, requests: impl Iterator<Item = Settle>) {
        let mut batch = Batch::default();
        for Settle { user, waiter } in requests {
            batch.users.insert(user);
            batch.waiters.extend(waiter);
        }
        let _ = self.settle(batch).await;
    }

    /// Unsubscribes every user subscribed whom the hub no longer holds (releases skipped on a
    /// full request queue).
    pub(super) async fn settle_subscribed(&mut self) {
        let batch = Batch { users: self.subscribed.clone(), ..Batch::default() };
        let _ = self.settle(batch).await;
    }

    /// Subscribes every user the hub holds and the probe channels again, on the current
    /// connection, and settles every user subscribed before (some may have left meanwhile).
    pub(super) async fn resubscribe_all(&mut self) -> Result<(), Unavailable> {
        let mut batch = Batch { everyone: true, probes: true, ..Batch::default() };
        batch.users.extend(self.hub.users());
        batch.users.extend(self.subscribed.iter().cloned());
        self.settle(batch).await
    }

    async fn settle(&mut self, mut batch: Batch) -> Result<(), Unavailable> {
        for channel in std::mem::take(&mut self.heard.dropped) {
            if self.probes.channels.iter().any(|c| c.as_bytes() == channel) {
                batch.probes = true;
            } else if let Some(user) = self.keys.channel_user(&channel) {
                batch.lost.insert(user);
            }
        }
        let mut con = self.connections.pubsub();
        let mut result = Ok(());
        if batch.probes && !self.probes.channels.is_empty() {
            let subscribe = con.subscribe(&self.probes.channels);
            result = self.heard.during(timed(Command::Subscribe, self.connections.timeout, subscribe)).await;
        }
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
            let subscribe = timed(Command::Subscribe, self.connections.timeout, con.subscribe(&channels));
            let made = match self.heard.during(subscribe).await {
                // redis-rs 1.8.1 takes a node's unasked `sunsubscribe` for the reply to whatever
                // waits on that connection, so a subscription can be answered OK and never made:
                // on a cluster each one is proven by an echo through its channel.
                Ok(()) if self.connections.is_cluster() => {
                    self.prove_subscriptions(con, channels).await.map_err(Unavailable::from)
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

    /// Moved users subscribed again catch up; moved users that could not be
    /// subscribed again bring the whole link down.
    fn catch_up_moved(&mut self, batch: &Batch, ok: &[UserId], failed: &[UserId]) {
        let mut moved = 0;
        for user in ok.iter().filter(|user| batch.lost.contains(*user)) {
            self.hub.catch_up(user);
            moved += 1;
        }
        metrics::counter!(metric::REDIS_MOVED_SUBSCRIPTIONS).increment(moved);
        // Users asking to connect are answered with the error (and retry); a full resubscription
        // is retried by the recovery. Moved users have nobody else to bring them back: recover
        // the whole link (every user subscribed again, every session catches up).
        if !batch.everyone && failed.iter().any(|user| batch.lost.contains(user)) {
            tracing::warn!("cannot subscribe moved channels again; recovering the link");
            self.heard.lose();
        }
    }

    async fn unsubscribe_users(&mut self, con: &mut Conn, users: &[UserId]) {
        for chunk in users.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|u| self.keys.channel(u)).collect();
            let unsubscribe = timed(Command::Unsubscribe, self.connections.timeout, con.unsubscribe(&channels));
            if let Err(e) = self.heard.during(unsubscribe).await {
                // Some of them may still be subscribed: they only bring doorbells the hub
                // ignores. Forgotten all the same, so a user coming back is subscribed anew.
                tracing::warn!(error = %e, "unsubscribe failed");
            }
            chunk.iter().for_each(|user| {
                self.subscribed.remove(user);
            });
        }
    }

    /// Proves cluster subscriptions just made: an echo of this replica goes through every
    /// channel and must come back. Channels that stay silent are subscribed once more (their
    /// slot may have moved in between) and proven again; still silent, they are an error.
    async fn prove_subscriptions(&mut self, con: &mut Conn, channels: Vec<String>) -> RedisResult<()> {
        let mut silent = channels;
        for attempt in 0..2 {
            silent = self.echo_through(silent).await?;
            if silent.is_empty() {
                return Ok(());
            }
            tracing::debug!(silent = silent.len(), attempt, "subscriptions without echo");
            if attempt == 0 {
                self.heard.during(con.subscribe(&silent)).await?;
            }
        }
        Err((redis::ErrorKind::Io, "subscriptions made but silent", format!("{} channels", silent.len())).into())
    }

    /// Publishes the next echo on every channel and returns those it did not come back
    /// through within the command timeout (the hub never sees echoes).
    async fn echo_through(&mut self, channels: Vec<String>) -> RedisResult<Vec<String>> {
        self.echo += 1;
        let timeout = self.connections.timeout;
        self.heard.expect_echo(self.echo, &channels);
        let payload = Doorbell::Echo { replica: self.replica.to_string(), n: self.echo }.encode();
        let publish = tokio::time::timeout(timeout, self.connections.publish_each(&channels, &payload));
        let published = match self.heard.during(publish).await {
            Ok(result) => result,
            Err(_) => Err((redis::ErrorKind::Io, "echo publish timed out").into()),
        };
        if published.is_ok() {
            self.heard.until(Instant::now() + timeout, |heard| heard.echo_returned()).await;
        }
        let silent = self.heard.end_echo();
        published?;
        Ok(silent)
    }
}
