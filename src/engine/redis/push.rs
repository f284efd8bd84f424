//! The push decoder: what the subscription connection receives. Doorbells go to the hub,
//! probes and echoes are counted for the supervisor and the subscriber, a disconnection wakes
//! the supervisor, a subscription the server dropped goes back to the subscriber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redis::aio::AsyncPushSender;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::doorbell::Doorbell;
use super::keys::Keys;
use super::subscriber::SubscriptionQueue;
use crate::hub::Hub;
use crate::protocol::Delivery;

#[derive(Clone)]
pub(super) struct PushHandler {
    hub: Arc<Hub>,
    keys: Keys,
    /// This replica's id: its probe channels start with `<p>probe:` and end with it, and its
    /// echoes carry it.
    pub(super) replica: Arc<str>,
    probe_prefix: Arc<[u8]>,
    /// The highest probe number seen back, per probe channel.
    pub(super) probe_seen: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
    /// The highest echo (see `subscriber::prove_subscriptions`) seen back, per channel, while
    /// one is awaited: echoes numbered below `echo_floor` (late ones) are not kept.
    pub(super) echoes: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
    pub(super) echo_floor: Arc<AtomicU64>,
    pub(super) disconnected: Arc<Notify>,
    /// Connections lost so far (disconnections, failed resubscriptions): the supervisor
    /// recovers until it has handled the latest.
    pub(super) disconnections: Arc<AtomicU64>,
    subscriptions: SubscriptionQueue,
}

impl AsyncPushSender for PushHandler {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage => self.on_message(info.data),
            PushKind::Disconnection => {
                // From now until the supervisor has resubscribed and every session re-read
                // its inbox, announcements may be missing: forward nothing live (redis-rs
                // resubscribes by itself, so live messages would otherwise overtake the gap).
                self.link_lost();
            }
            // Our own unsubscriptions are confirmed so, but a cluster node also sends it
            // unasked when the channel's slot moved away (a migration, a failover): the
            // subscriber subscribes it again where it lives now, if it is still wanted.
            PushKind::SUnsubscribe => {
                if let Some(Value::BulkString(channel)) = info.data.into_iter().next() {
                    // Until subscribed again, its doorbells go nowhere: the session forwards
                    // nothing live before it re-read (and re-reads again once subscribed).
                    if let Some(user) = self.keys.channel_user(&channel) {
                        self.hub.catch_up(&user);
                    }
                    if !self.subscriptions.server_dropped(channel) {
                        // No room to ask for it alone: recovering the whole link subscribes
                        // every user again and has every session re-read its inbox.
                        tracing::warn!("subscription queue full; recovering the link for a moved channel");
                        self.link_lost();
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl PushHandler {
    pub(super) fn new(hub: Arc<Hub>, keys: Keys, replica: String, subscriptions: SubscriptionQueue) -> Self {
        Self {
            probe_prefix: keys.probe("", None).as_bytes().into(),
            hub,
            keys,
            replica: replica.into(),
            probe_seen: Arc::default(),
            echoes: Arc::default(),
            echo_floor: Arc::default(),
            disconnected: Arc::new(Notify::new()),
            disconnections: Arc::default(),
            subscriptions,
        }
    }

    /// Announcements may be missing from now on: until the supervisor has resubscribed and
    /// every session re-read its inbox, forward nothing live (see `Hub::set_degraded`).
    pub(super) fn link_lost(&self) {
        self.hub.set_degraded(true);
        self.disconnections.fetch_add(1, Ordering::AcqRel);
        self.disconnected.notify_one();
    }

    fn on_message(&self, data: Vec<Value>) {
        let mut data = data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) = (data.next(), data.next()) else {
            return;
        };
        if channel.starts_with(&self.probe_prefix) && channel.ends_with(self.replica.as_bytes()) {
            if let Some(Doorbell::Probe { n }) = Doorbell::decode(payload) {
                record_highest(&self.probe_seen, channel, n);
            }
            return;
        }
        let Some(user) = self.keys.channel_user(&channel) else { return };
        match Doorbell::decode(payload) {
            Some(Doorbell::Message { id, seq, envelope }) => {
                self.hub.deliver(&user, Delivery { id, ts: id.ms, seq, envelope });
            }
            Some(Doorbell::Takeover { generation }) => self.hub.takeover(&user, generation),
            // An echo proving a subscription; only this replica's count.
            Some(Doorbell::Echo { replica, n })
                if *replica == *self.replica && n >= self.echo_floor.load(Ordering::Acquire) =>
            {
                record_highest(&self.echoes, channel, n);
            }
            _ => {}
        }
    }
}

fn record_highest(seen: &Mutex<HashMap<Vec<u8>, u64>>, channel: Vec<u8>, n: u64) {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.entry(channel).or_default();
    *seen = (*seen).max(n);
}
