//! Where one connection stands in its user's inbox: what was sent, which message number comes
//! next, and whether live deliveries may be trusted. Pure bookkeeping, no socket, no engine: it
//! says what to do with each delivery and when to catch up, and the socket loop does it.
//!
//! Ordering and de-duplication rest on two numbers. The inbox id orders messages and tells a
//! duplicate (a live doorbell for a message the backlog already sent). The message number
//! (`seq`, counted per user by the engine) tells a gap: a live delivery that is not the next
//! number means a doorbell was missed, and forwarding it would overtake the missed message.
//!
//! One vocabulary: a session *falls behind* when a live delivery will not reach it (its queue
//! was full, the hub's doorbell link was down, a doorbell was lost, a number was skipped); it
//! then *catches up*: reads its inbox after the last id sent. Until a catch-up succeeds, live
//! deliveries are held back, because they could overtake what was missed.

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::{Delivery, MsgId};

/// How soon a failed catch-up is tried again.
const RETRY: Duration = Duration::from_millis(250);

/// What to do with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Write it to the socket (the cursor already counts it as sent).
    Send,
    /// Already sent on this connection.
    Skip,
    /// A message number was skipped: the cursor fell behind; catch up instead of sending it.
    CatchUp,
    /// The cursor is behind: a catch-up will bring it, in order.
    HoldBack,
}

/// Whether live deliveries may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Standing {
    /// Every message up to the last number known was sent: live deliveries go out in order.
    #[default]
    Current,
    /// A live delivery was missed since the last catch-up began: catch up before any goes out.
    Behind,
    /// The last catch-up failed: hold live deliveries back and try again at `retry_at`.
    Retrying { retry_at: Instant },
}

#[derive(Debug, Default)]
pub(super) struct Cursor {
    /// Highest inbox id written on this connection.
    last_sent: Option<MsgId>,
    /// Number of the last message known to be sent to the user (read before each catch-up,
    /// raised by each delivery): a live delivery must carry the next one, or a doorbell was
    /// missed. `None` until the first read; `Some(0)`: the user never got a message.
    last_seq: Option<u64>,
    standing: Standing,
}

impl Cursor {
    /// Where the next inbox read starts (after this id; from the start if `None`).
    pub(super) fn read_after(&self) -> Option<MsgId> {
        self.last_sent
    }

    /// When the failed catch-up is to be tried again, if the last one failed.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        match self.standing {
            Standing::Retrying { retry_at } => Some(retry_at),
            Standing::Current | Standing::Behind => None,
        }
    }

    /// A live delivery was missed: hold live deliveries back until a catch-up succeeds (a
    /// pending retry stays as it is).
    pub(super) fn fall_behind(&mut self) {
        if self.standing == Standing::Current {
            self.standing = Standing::Behind;
        }
    }

    /// A catch-up failed at `now`: hold live deliveries back, retry a little later.
    pub(super) fn catch_up_failed(&mut self, now: Instant) {
        self.standing = Standing::Retrying { retry_at: now + RETRY };
    }

    /// The inbox was read to its end; `sequence` is the message number read before the read
    /// began, so every message up to it has been sent now.
    pub(super) fn caught_up(&mut self, sequence: u64) {
        self.standing = Standing::Current;
        self.last_seq = Some(self.last_seq.unwrap_or(0).max(sequence));
    }

    /// A delivery from an inbox read: sent unless it already was.
    pub(super) fn backlog(&mut self, delivery: &Delivery) -> Decision {
        if self.already_sent(delivery) {
            return Decision::Skip;
        }
        self.record(delivery);
        Decision::Send
    }

    /// A live delivery.
    pub(super) fn live(&mut self, delivery: &Delivery) -> Decision {
        if self.standing != Standing::Current {
            return Decision::HoldBack;
        }
        if self.already_sent(delivery) {
            return Decision::Skip;
        }
        // A number was skipped: its doorbell never came (e.g. a cluster slot changed hands and
        // the subscription moved late). Number 0: an engine that does not count.
        let skipped = self.last_seq.is_some_and(|last| delivery.seq > last + 1);
        if delivery.seq > 0 && skipped {
            self.standing = Standing::Behind;
            return Decision::CatchUp;
        }
        self.record(delivery);
        Decision::Send
    }

    fn already_sent(&self, delivery: &Delivery) -> bool {
        self.last_sent.is_some_and(|last| delivery.id <= last)
    }

    fn record(&mut self, delivery: &Delivery) {
        self.last_seq = Some(self.last_seq.unwrap_or(0).max(delivery.seq));
        self.last_sent = Some(delivery.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64) -> Delivery {
        Delivery { id: MsgId { ms: 1_000 + seq, seq: 0 }, ts: 1, seq, envelope: "{}".into() }
    }

    /// A cursor that has read an empty inbox of a user who got `sequence` messages before.
    fn caught_up(sequence: u64) -> Cursor {
        let mut cursor = Cursor::default();
        cursor.caught_up(sequence);
        cursor
    }

    #[test]
    fn backlog_pages_continue_where_the_last_one_ended() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.read_after(), None);
        for seq in 1..=3 {
            assert_eq!(cursor.backlog(&delivery(seq)), Decision::Send);
        }
        assert_eq!(cursor.read_after(), Some(delivery(3).id));
        // A page overlapping the previous one (the read raced a removal) sends only what is new.
        for seq in 3..=5 {
            let expected = if seq == 3 { Decision::Skip } else { Decision::Send };
            assert_eq!(cursor.backlog(&delivery(seq)), expected);
        }
        cursor.caught_up(5);
        assert_eq!(cursor.read_after(), Some(delivery(5).id));
        assert_eq!(cursor.live(&delivery(6)), Decision::Send);
    }

    #[test]
    fn backlog_never_asks_for_a_catch_up() {
        // An inbox read is the source of truth: numbers missing from it were removed.
        let mut cursor = caught_up(1);
        assert_eq!(cursor.backlog(&delivery(7)), Decision::Send);
    }

    #[test]
    fn live_doorbells_in_order_are_sent() {
        let mut cursor = caught_up(0);
        for seq in 1..=4 {
            assert_eq!(cursor.live(&delivery(seq)), Decision::Send);
        }
        assert_eq!(cursor.read_after(), Some(delivery(4).id));
    }

    #[test]
    fn duplicates_are_skipped() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.backlog(&delivery(1)), Decision::Send);
        assert_eq!(cursor.backlog(&delivery(2)), Decision::Send);
        cursor.caught_up(2);
        // The doorbells of what the backlog just sent arrive afterwards.
        assert_eq!(cursor.live(&delivery(1)), Decision::Skip);
        assert_eq!(cursor.live(&delivery(2)), Decision::Skip);
        assert_eq!(cursor.live(&delivery(3)), Decision::Send);
        assert_eq!(cursor.live(&delivery(3)), Decision::Skip);
    }

    #[test]
    fn a_gap_asks_for_a_catch_up_and_sends_nothing() {
        let mut cursor = caught_up(2);
        assert_eq!(cursor.live(&delivery(4)), Decision::CatchUp);
        assert_eq!(cursor.read_after(), None, "nothing counts as sent");
        // The catch-up brings the missed one and the one that came after it, in order.
        assert_eq!(cursor.backlog(&delivery(3)), Decision::Send);
        assert_eq!(cursor.backlog(&delivery(4)), Decision::Send);
        cursor.caught_up(4);
        assert_eq!(cursor.live(&delivery(4)), Decision::Skip);
        assert_eq!(cursor.live(&delivery(5)), Decision::Send);
    }

    #[test]
    fn no_gap_is_seen_before_the_first_read_or_without_numbers() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.live(&delivery(9)), Decision::Send, "no number known yet");
        let mut cursor = caught_up(5);
        assert_eq!(cursor.live(&delivery(0)), Decision::Send, "an engine that does not count");
    }

    #[test]
    fn behind_or_retrying_holds_live_deliveries_back() {
        let mut cursor = caught_up(0);
        cursor.fall_behind();
        assert_eq!(cursor.standing, Standing::Behind);
        assert_eq!(cursor.live(&delivery(1)), Decision::HoldBack);
        let now = Instant::now();
        cursor.catch_up_failed(now);
        assert_eq!(cursor.retry_at(), Some(now + RETRY));
        cursor.fall_behind();
        assert_eq!(cursor.retry_at(), Some(now + RETRY), "falling behind again keeps the retry");
        assert_eq!(cursor.live(&delivery(1)), Decision::HoldBack);
        assert_eq!(cursor.read_after(), None, "held back: not sent");
        cursor.caught_up(0);
        assert_eq!(cursor.standing, Standing::Current);
        assert_eq!(cursor.retry_at(), None);
        assert_eq!(cursor.live(&delivery(1)), Decision::Send);
    }

    /// What can happen to one connection, in any order: a message is stored and its doorbell
    /// rings 0 (lost), 1 or 2 (repeated) times, possibly after the session fell behind; a
    /// catch-up runs in pages of any size, or fails.
    #[derive(Debug, Clone)]
    enum Event {
        Stored { rings: u8, behind: bool },
        CatchUp { page: usize, fails: bool },
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..=2, proptest::bool::weighted(0.1)).prop_map(|(rings, behind)| Event::Stored { rings, behind }),
            1 => (1usize..=5, proptest::bool::weighted(0.2)).prop_map(|(page, fails)| Event::CatchUp { page, fails }),
        ]
    }

    /// Sends what a successful catch-up sends: pages after `read_after` up to the end of what
    /// is stored, then `caught_up` with the number read before the read began.
    fn catch_up(cursor: &mut Cursor, stored: &[Delivery], page: usize, sent: &mut Vec<u64>) {
        let mark = stored.len() as u64;
        loop {
            let after = cursor.read_after();
            let next: Vec<&Delivery> = stored.iter().filter(|d| after.is_none_or(|a| d.id > a)).take(page).collect();
            for d in &next {
                if cursor.backlog(d) == Decision::Send {
                    sent.push(d.seq);
                }
            }
            if next.len() < page {
                break;
            }
        }
        cursor.caught_up(mark);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Any interleaving of backlog pages, live doorbells (lost, repeated, after falling
        /// behind) and failed reads: the socket never gets a message twice or out of order, and once a read
        /// succeeds at the end it has had every message exactly once, in order.
        #[test]
        fn every_message_once_in_order(events in proptest::collection::vec(event(), 0..120)) {
            let mut cursor = Cursor::default();
            let mut stored = Vec::new();
            let mut sent: Vec<u64> = Vec::new();
            catch_up(&mut cursor, &stored, 3, &mut sent); // the connection's first read
            for event in events {
                match event {
                    Event::Stored { rings, behind } => {
                        let d = delivery(stored.len() as u64 + 1);
                        stored.push(d.clone());
                        for _ in 0..rings {
                            if behind {
                                cursor.fall_behind();
                            }
                            match cursor.live(&d) {
                                Decision::Send => sent.push(d.seq),
                                Decision::CatchUp => catch_up(&mut cursor, &stored, 4, &mut sent),
                                // The session catches up later (a later CatchUp event).
                                Decision::HoldBack | Decision::Skip => {}
                            }
                        }
                    }
                    Event::CatchUp { fails: true, .. } => cursor.catch_up_failed(Instant::now()),
                    Event::CatchUp { page, fails: false } => catch_up(&mut cursor, &stored, page, &mut sent),
                }
                proptest::prop_assert!(sent.windows(2).all(|w| w[0] < w[1]), "duplicate or reordered: {sent:?}");
            }
            catch_up(&mut cursor, &stored, 5, &mut sent);
            proptest::prop_assert_eq!(sent, (1..=stored.len() as u64).collect::<Vec<_>>());
        }
    }
}
