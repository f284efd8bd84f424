//! The push decoder: what the subscription connection receives. Doorbells go straight to the
//! hub; everything else (probes and echoes back, disconnections, subscriptions the server ended)
//! is only forwarded to the link, which alone keeps state about it. A disconnection also pauses
//! live forwarding here at once (the link alone resumes it, once recovered).

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
            // redis-rs reconnects and subscribes again before handing this on: doorbells of the
            // new connection may already arrive, while those of the gap are lost. Paused here,
            // before anything else is decoded, so none is forwarded live ahead of the gap.
            PushKind::Disconnection => {
                self.hub.pause_live();
                self.link.tell(LinkEvent::Disconnected);
            }
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

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::engine::redis::link::events::LinkEvents;
    use crate::protocol::UserId;

    #[tokio::test]
    async fn a_disconnection_pauses_live_forwarding_before_the_link_hears_of_it() {
        let hub = Arc::new(Hub::new(4, 1 << 20, CancellationToken::new()));
        let user = UserId::random();
        let mailbox = hub.register(&user);
        hub.set_generation(&mailbox, 1);
        let (events, _link) = LinkEvents::new(8, hub.clone());
        let keys = Keys { prefix: "t:".into() };
        let push = PushHandler::new(hub.clone(), keys.clone(), "r".into(), events);
        push.send(PushInfo { kind: PushKind::Disconnection, data: vec![] }).unwrap();
        // The link has not run: a doorbell of the connection redis-rs already made anew is
        // not forwarded live (the session catches up instead), nor handed over directly.
        assert_eq!(hub.live_generation(&user), None);
        let doorbell =
            Doorbell::Message { id: crate::protocol::MsgId { ms: 1, seq: 1 }, seq: 1, envelope: "{}".into() };
        let message = vec![Value::BulkString(keys.channel(&user).into_bytes()), Value::BulkString(doorbell.encode())];
        push.send(PushInfo { kind: PushKind::Message, data: message }).unwrap();
        assert!(mailbox.try_next().is_none());
        assert!(mailbox.take_fell_behind());
    }
}
