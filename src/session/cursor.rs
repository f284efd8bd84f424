//! Where one connection stands in its user's inbox: what was sent, which message number comes
//! next, and whether live deliveries may be trusted. Pure bookkeeping, no socket, no engine: it
//! says what to do with each delivery, and the socket loop does it.
//!
//! Ordering and de-duplication rest on two numbers. The inbox id orders messages and tells a
//! duplicate (a live doorbell for a message the backlog already sent). The message number
//! (`seq`, counted per user by the engine) tells a gap: a live delivery that is not the next
//! number means a doorbell was missed, and forwarding it would overtake the missed message.

use crate::protocol::{Delivery, MsgId};

/// What to do with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Write it to the socket (the cursor already counts it as sent).
    Send,
    /// Already sent on this connection.
    Skip,
    /// A message number was skipped: ask for a re-read of the inbox instead of sending it.
    Reread,
    /// The last inbox read failed or a doorbell was missed: a re-read will bring it, in order.
    HoldBack,
}

#[derive(Debug, Default)]
pub(super) struct Cursor {
    /// Highest inbox id written on this connection.
    last_sent: Option<MsgId>,
    /// Number of the last message known to be sent to the user (read before each inbox read,
    /// raised by each delivery): a live delivery must carry the next one, or a doorbell was
    /// missed. `None` until the first read; `Some(0)`: the user never got a message.
    last_seq: Option<u64>,
    /// The last inbox read failed: live deliveries are held back (they could overtake what
    /// was not read) until a retry of the read succeeds.
    stale: bool,
}

impl Cursor {
    /// Where the next inbox read starts (after this id; from the start if `None`).
    pub(super) fn read_after(&self) -> Option<MsgId> {
        self.last_sent
    }

    pub(super) fn is_stale(&self) -> bool {
        self.stale
    }

    /// An inbox read failed: hold live deliveries back until one succeeds.
    pub(super) fn read_failed(&mut self) {
        self.stale = true;
    }

    /// The inbox was read to its end; `sequence` is the message number read before the read
    /// began, so every message up to it has been sent now.
    pub(super) fn caught_up(&mut self, sequence: u64) {
        self.stale = false;
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

    /// A live delivery; `lagged`: the hub noticed a missed doorbell since the last re-read
    /// began, so this one may sit behind a gap.
    pub(super) fn live(&mut self, delivery: &Delivery, lagged: bool) -> Decision {
        if self.stale || lagged {
            return Decision::HoldBack;
        }
        if self.already_sent(delivery) {
            return Decision::Skip;
        }
        // A number was skipped: its doorbell never came (e.g. a cluster slot changed hands and
        // the subscription moved late). Number 0: an engine that does not count.
        let skipped = self.last_seq.is_some_and(|last| delivery.seq > last + 1);
        if delivery.seq > 0 && skipped {
            return Decision::Reread;
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
        assert_eq!(cursor.live(&delivery(6), false), Decision::Send);
    }

    #[test]
    fn backlog_never_asks_for_a_reread() {
        // An inbox read is the source of truth: numbers missing from it were removed.
        let mut cursor = caught_up(1);
        assert_eq!(cursor.backlog(&delivery(7)), Decision::Send);
    }

    #[test]
    fn live_doorbells_in_order_are_sent() {
        let mut cursor = caught_up(0);
        for seq in 1..=4 {
            assert_eq!(cursor.live(&delivery(seq), false), Decision::Send);
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
        assert_eq!(cursor.live(&delivery(1), false), Decision::Skip);
        assert_eq!(cursor.live(&delivery(2), false), Decision::Skip);
        assert_eq!(cursor.live(&delivery(3), false), Decision::Send);
        assert_eq!(cursor.live(&delivery(3), false), Decision::Skip);
    }

    #[test]
    fn a_gap_asks_for_a_reread_and_sends_nothing() {
        let mut cursor = caught_up(2);
        assert_eq!(cursor.live(&delivery(4), false), Decision::Reread);
        assert_eq!(cursor.read_after(), None, "nothing counts as sent");
        // The re-read brings the missed one and the one that came after it, in order.
        assert_eq!(cursor.backlog(&delivery(3)), Decision::Send);
        assert_eq!(cursor.backlog(&delivery(4)), Decision::Send);
        cursor.caught_up(4);
        assert_eq!(cursor.live(&delivery(4), false), Decision::Skip);
        assert_eq!(cursor.live(&delivery(5), false), Decision::Send);
    }

    #[test]
    fn no_gap_is_seen_before_the_first_read_or_without_numbers() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.live(&delivery(9), false), Decision::Send, "no number known yet");
        let mut cursor = caught_up(5);
        assert_eq!(cursor.live(&delivery(0), false), Decision::Send, "an engine that does not count");
    }

    #[test]
    fn stale_or_lagged_holds_live_deliveries_back() {
        let mut cursor = caught_up(0);
        assert_eq!(cursor.live(&delivery(1), true), Decision::HoldBack);
        cursor.read_failed();
        assert!(cursor.is_stale());
        assert_eq!(cursor.live(&delivery(1), false), Decision::HoldBack);
        assert_eq!(cursor.read_after(), None, "held back: not sent");
        cursor.caught_up(0);
        assert!(!cursor.is_stale());
        assert_eq!(cursor.live(&delivery(1), false), Decision::Send);
    }

    /// What can happen to one connection, in any order: a message is stored and its doorbell
    /// rings 0 (lost), 1 or 2 (repeated) times, possibly on a lagged mailbox; an inbox re-read
    /// runs in pages of any size, or fails.
    #[derive(Debug, Clone)]
    enum Event {
        Stored { rings: u8, lagged: bool },
        Reread { page: usize, fails: bool },
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..=2, proptest::bool::weighted(0.1)).prop_map(|(rings, lagged)| Event::Stored { rings, lagged }),
            1 => (1usize..=5, proptest::bool::weighted(0.2)).prop_map(|(page, fails)| Event::Reread { page, fails }),
        ]
    }

    /// Sends what a successful re-read sends: pages after `read_after` up to the end of what
    /// is stored, then `caught_up` with the number read before the read began.
    fn reread(cursor: &mut Cursor, stored: &[Delivery], page: usize, sent: &mut Vec<u64>) {
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

        /// Any interleaving of backlog pages, live doorbells (lost, repeated, lagged) and failed
        /// reads: the socket never gets a message twice or out of order, and once a read
        /// succeeds at the end it has had every message exactly once, in order.
        #[test]
        fn every_message_once_in_order(events in proptest::collection::vec(event(), 0..120)) {
            let mut cursor = Cursor::default();
            let mut stored = Vec::new();
            let mut sent: Vec<u64> = Vec::new();
            reread(&mut cursor, &stored, 3, &mut sent); // the connection's first read
            for event in events {
                match event {
                    Event::Stored { rings, lagged } => {
                        let d = delivery(stored.len() as u64 + 1);
                        stored.push(d.clone());
                        for _ in 0..rings {
                            match cursor.live(&d, lagged) {
                                Decision::Send => sent.push(d.seq),
                                Decision::Reread => reread(&mut cursor, &stored, 4, &mut sent),
                                // The hub asks for a re-read (a later Reread event runs it).
                                Decision::HoldBack | Decision::Skip => {}
                            }
                        }
                    }
                    Event::Reread { fails: true, .. } => cursor.read_failed(),
                    Event::Reread { page, fails: false } => reread(&mut cursor, &stored, page, &mut sent),
                }
                proptest::prop_assert!(sent.windows(2).all(|w| w[0] < w[1]), "duplicate or reordered: {sent:?}");
            }
            reread(&mut cursor, &stored, 5, &mut sent);
            proptest::prop_assert_eq!(sent, (1..=stored.len() as u64).collect::<Vec<_>>());
        }
    }
}
