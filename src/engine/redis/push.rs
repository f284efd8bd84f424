//! The push decoder: what the subscription connection receives. Doorbells go straight to the
//! hub; everything else (probes and echoes back, disconnections, subscriptions the server ended)
//! is only forwarded to the link, which alone keeps state about it.

use std::sync::Arc;

use redis::aio::AsyncPushSender;
use redis::{PushInfo, PushKind, Value};

use super::doorbell::Doorbell;
use super::keys::Keys;
use super::link::events::{LinkEvent, LinkEvents};
use crate::hub::Hub;
use crate::protocol::Delivery;

#[derive(Clone)]
pub(super) struct PushHandler {
    hub: Arc<Hub>,
    keys: Keys,
    /// This replica's id: its probe channels start with `<p>probe:` and end with it, and its
    /// echoes carry it.
    replica: Arc<str>,
    probe_prefix: Arc<[u8]>,
    link: LinkEvents,
}

impl AsyncPushSender for PushHandler {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage => self.on_message(info.data),
            PushKind::Disconnection => self.link.tell(LinkEvent::Disconnected),
            // Our own unsubscriptions are confirmed so, but a cluster node also sends it
            // unasked when the channel's slot moved away (a migration, a failover): the link
            // subscribes it again where it lives now, if it is still wanted.
            PushKind::SUnsubscribe => {
                if let Some(Value::BulkString(channel)) = info.data.into_iter().next() {
                    self.link.tell(LinkEvent::ServerDropped(channel));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl PushHandler {
    pub(super) fn new(hub: Arc<Hub>, keys: Keys, replica: Arc<str>, link: LinkEvents) -> Self {
        Self { probe_prefix: keys.probe("", None).as_bytes().into(), hub, keys, replica, link }
    }

    fn on_message(&self, data: Vec<Value>) {
        let mut data = data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) = (data.next(), data.next()) else {
            return;
        };
        if channel.starts_with(&self.probe_prefix) && channel.ends_with(self.replica.as_bytes()) {
            if let Some(Doorbell::Probe { n }) = Doorbell::decode(payload) {
                self.link.tell(LinkEvent::Probe { channel, n });
            }
            return;
        }
        let Some(user) = self.keys.channel_user(&channel) else { return };
        match Doorbell::decode(payload) {
            Some(Doorbell::Message { id, seq, envelope }) => {
                self.hub.deliver(&user, Delivery { id, ts: id.ms, seq, envelope });
            }
            Some(Doorbell::Takeover { generation }) => self.hub.takeover(&user, generation),
            // An echo proving a subscription; only this replica's.
            Some(Doorbell::Echo { replica, n }) if *replica == *self.replica => {
                self.link.tell(LinkEvent::Echo { channel, n });
            }
            _ => {}
        }
    }
}
