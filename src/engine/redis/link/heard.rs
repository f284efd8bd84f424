//! What the link has heard from the push decoder, kept by the link alone: probes and echoes
//! back, losses, channels the server ended. The link takes events while it waits for Redis
//! (`during`) and waits for what it expects by taking them (`until`): never a poll.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;

use super::events::{EventReceiver, LinkEvent};
use crate::engine::redis::keys::Keys;
use crate::hub::Hub;

/// Channels the server ended that wait to be subscribed again; past it they are forgotten and
/// the whole link recovers instead (every user subscribed again, every session catches up).
const DROPPED: usize = 4000;

pub(super) struct Heard {
    events: EventReceiver,
    hub: Arc<Hub>,
    keys: Keys,
    /// The highest probe number back, per probe channel.
    pub(super) probes: HashMap<Vec<u8>, u64>,
    /// The echo awaited, with the channels it has not come back through yet.
    echo: Option<(u64, HashSet<Vec<u8>>)>,
    /// A connection dropped (or events were lost) since the last recovery attempt began.
    pub(super) lost: bool,
    /// Channels the server ended by itself, to subscribe again.
    pub(super) dropped: HashSet<Vec<u8>>,
}

impl Heard {
    pub(super) fn new(events: EventReceiver, hub: Arc<Hub>, keys: Keys) -> Self {
        Self { events, hub, keys, probes: HashMap::new(), echo: None, lost: false, dropped: HashSet::new() }
    }

    /// Waits for the next event and takes it in.
    pub(super) async fn next(&mut self) {
        let event = self.events.next().await;
        self.take(event);
    }

    /// Awaits `work`, taking events in meanwhile (a loss heard is acted on as soon as `work`
    /// is done, whatever the link is doing; the decoder has paused live forwarding already).
    pub(super) async fn during<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                event = self.events.next() => self.take(event),
            }
        }
    }

    /// Takes events in until `done` holds or `deadline` passes; whether `done` holds.
    pub(super) async fn until(&mut self, deadline: Instant, done: impl Fn(&Self) -> bool) -> bool {
        while !done(self) {
            tokio::select! {
                event = self.events.next() => self.take(event),
                () = tokio::time::sleep_until(deadline) => return done(self),
            }
        }
        true
    }

    /// Expects echo `n` back through every one of `channels` (echoes of other numbers are
    /// ignored from now on).
    pub(super) fn expect_echo(&mut self, n: u64, channels: &[String]) {
        self.echo = Some((n, channels.iter().map(|c| c.as_bytes().to_vec()).collect()));
    }

    /// Whether the echo expected came back through every channel.
    pub(super) fn echo_returned(&self) -> bool {
        self.echo.as_ref().is_none_or(|(_, silent)| silent.is_empty())
    }

    /// Stops expecting the echo; the channels it did not come back through.
    pub(super) fn end_echo(&mut self) -> Vec<String> {
        let silent = self.echo.take().map(|(_, silent)| silent).unwrap_or_default();
        silent.into_iter().filter_map(|c| String::from_utf8(c).ok()).collect()
    }

    /// Announcements may be missing from now on: until the link is recovered and every session
    /// caught up, nothing is forwarded live (redis-rs resubscribes by itself, so live
    /// messages would otherwise overtake the gap). The decoder pauses too, the moment it sees a
    /// disconnection or drops an event; this covers the losses the link finds itself.
    pub(super) fn lose(&mut self) {
        self.hub.pause_live();
        self.lost = true;
    }

    fn take(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Probe { channel, n } => {
                let seen = self.probes.entry(channel).or_default();
                *seen = (*seen).max(n);
            }
            LinkEvent::Echo { channel, n } => {
                if let Some((_, silent)) = self.echo.as_mut().filter(|(expected, _)| *expected == n) {
                    silent.remove(&channel);
                }
            }
            LinkEvent::Disconnected | LinkEvent::Overflowed => self.lose(),
            LinkEvent::ServerDropped(channel) => {
                if let Some(user) = self.keys.channel_user(&channel) {
                    // A cluster confirms our own unsubscriptions so too: they are of users the
                    // hub no longer holds, and nobody wants them subscribed again.
                    if !self.hub.is_registered(&user) {
                        return;
                    }
                    // Until subscribed again, its doorbells go nowhere: the session forwards
                    // nothing live before it caught up (and catches up again once subscribed).
                    self.hub.catch_up(&user);
                }
                if self.dropped.len() < DROPPED {
                    self.dropped.insert(channel);
                } else if !self.lost {
                    tracing::warn!("too many moved channels at once; recovering the whole link");
                    self.lose();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::engine::redis::link::events::LinkEvents;
    use crate::protocol::UserId;

    /// A hub holding one live session, and what the link hears about it.
    fn heard() -> (Heard, LinkEvents, Arc<Hub>, UserId) {
        let hub = Arc::new(Hub::new(4, 1 << 20, CancellationToken::new()));
        let user = UserId::random();
        let mailbox = hub.register(&user);
        hub.set_generation(&mailbox, 1);
        let (events, receiver) = LinkEvents::new(8, hub.clone());
        (Heard::new(receiver, hub.clone(), Keys { prefix: "t:".into() }), events, hub, user)
    }

    #[tokio::test]
    async fn a_disconnection_pauses_live_forwarding_while_the_link_waits_for_redis() {
        let (mut heard, events, hub, user) = heard();
        let (answer, redis) = tokio::sync::oneshot::channel::<()>();
        events.tell(LinkEvent::Disconnected);
        let redis_answers_once_paused = async {
            let deadline = Instant::now() + Duration::from_secs(5);
            while hub.live_generation(&user).is_some() {
                assert!(Instant::now() < deadline, "live forwarding was not paused");
                tokio::task::yield_now().await;
            }
            answer.send(()).unwrap();
        };
        let (answered, ()) = tokio::join!(heard.during(redis), redis_answers_once_paused);
        assert!(answered.is_ok());
        assert!(heard.lost, "the link knows it must recover");
    }

    #[tokio::test]
    async fn echoes_are_awaited_and_a_moved_channel_makes_its_session_catch_up() {
        let (mut heard, events, hub, user) = heard();
        let channels = ["t:deliver:{a}".to_owned(), "t:deliver:{b}".to_owned()];
        heard.expect_echo(2, &channels);
        events.tell(LinkEvent::Echo { channel: channels[0].clone().into_bytes(), n: 2 });
        events.tell(LinkEvent::Echo { channel: channels[1].clone().into_bytes(), n: 1 }); // a late one
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!heard.until(soon, Heard::echo_returned).await, "the late echo does not count");
        assert_eq!(heard.end_echo(), vec![channels[1].clone()]);

        let mailbox = hub.register(&user);
        hub.set_generation(&mailbox, 2);
        mailbox.take_fell_behind();
        let channel = Keys { prefix: "t:".into() }.channel(&user).into_bytes();
        events.tell(LinkEvent::ServerDropped(channel.clone()));
        heard.next().await;
        assert!(mailbox.take_fell_behind(), "its doorbells went nowhere meanwhile: the session catches up");
        assert!(heard.dropped.contains(&channel), "and the link subscribes it again");
    }

    #[tokio::test]
    async fn the_confirmation_of_our_own_unsubscription_is_not_a_moved_channel() {
        let (mut heard, events, _hub, _user) = heard();
        let departed = Keys { prefix: "t:".into() }.channel(&UserId::random()).into_bytes();
        events.tell(LinkEvent::ServerDropped(departed));
        heard.next().await;
        assert!(heard.dropped.is_empty(), "a user the hub does not hold is not subscribed again");
        assert!(!heard.lost);
    }
}
