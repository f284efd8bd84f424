//! A recipient's accounting with acknowledged delivery (`enigma.v1`) and reconnections.
//!
//! `enigma.v1` delivers at least once: whatever a socket received but did not acknowledge is
//! delivered again on the next socket. Such a re-delivery is what the protocol promises, not
//! a fault, so it is counted apart from a real duplicate (a message delivered twice that had
//! been acknowledged, or on a specification socket, where a message leaves the store when it
//! is written). "Lost" stays "sent and never received": a re-delivery fills no gap.
//!
//! The tracker knows which messages the server still owes again: those received on a socket
//! whose acknowledgement was not written before that socket closed. Acknowledgements are
//! batched (one `{"ack": [ids]}` frame for up to [`ACK_BATCH`] deliveries), and a batch counts
//! as written only once the socket took it.

use std::collections::BTreeSet;

use enigma::protocol::{AckFrame, AckIds, ClientFrame};

use crate::wire::{Arrival, SeqTracker};

/// Deliveries acknowledged by one frame at most: a batch never waits for more than this.
pub const ACK_BATCH: usize = 64;
/// Messages remembered as owed again, per pair. Past it, a re-delivery is counted as a real
/// duplicate: wrong in the pessimistic direction, and visible.
const MAX_OWED: usize = 65_536;

/// How an arrival counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First arrival, in order or after a gap.
    New,
    /// First arrival, filling an earlier gap.
    Reordered,
    /// Received before on an earlier socket and never acknowledged there: `enigma.v1` delivers
    /// it again, as it promises.
    Redelivered,
    /// Received before, and nothing allows it again.
    Duplicate,
}

/// One recipient's view of its pair's messages across its sockets.
#[derive(Debug, Default)]
pub struct PairTracker {
    seqs: SeqTracker,
    /// Received on an earlier socket without an acknowledgement written: the server owes them.
    owed: BTreeSet<u64>,
    /// Received on this socket, acknowledgement not yet written: (sequence number, inbox id).
    pending: Vec<(u64, String)>,
}

impl PairTracker {
    /// Counts an arrival; with an `id` (an acknowledging socket) it joins the next
    /// acknowledgement, whatever it counts as (a re-delivery must be acknowledged too, or it
    /// stays stored).
    pub fn observe(&mut self, seq: u64, id: Option<String>) -> Outcome {
        let outcome = match self.seqs.observe(seq) {
            Arrival::New => Outcome::New,
            Arrival::Reordered => Outcome::Reordered,
            Arrival::Duplicate if self.owed.remove(&seq) => Outcome::Redelivered,
            Arrival::Duplicate => Outcome::Duplicate,
        };
        if let Some(id) = id {
            self.pending.push((seq, id));
        }
        outcome
    }

    /// Whether an acknowledgement is waiting to be written.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the waiting acknowledgement is a full batch.
    pub fn batch_full(&self) -> bool {
        self.pending.len() >= ACK_BATCH
    }

    /// The acknowledgement frame for everything pending (none if nothing is), built with the
    /// protocol's own types. The ids stay pending until [`PairTracker::acked`].
    pub fn ack_frame(&self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let ids = AckIds::Many(self.pending.iter().map(|(_, id)| id.clone()).collect());
        Some(ClientFrame::Ack(AckFrame { ids, reference: None }).to_json())
    }

    /// The frame from [`PairTracker::ack_frame`] was written: returns how many it acknowledged.
    pub fn acked(&mut self) -> u64 {
        let n = self.pending.len() as u64;
        self.pending.clear();
        n
    }

    /// The socket closed: what it received and did not acknowledge comes again on the next.
    pub fn socket_closed(&mut self) {
        for (seq, _) in self.pending.drain(..) {
            if self.owed.len() < MAX_OWED {
                self.owed.insert(seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(frame: &str) -> Vec<String> {
        match ClientFrame::parse(frame) {
            Ok(ClientFrame::Ack(ack)) => ack.ids.msg_ids().unwrap().iter().map(|id| id.to_string()).collect(),
            other => panic!("an ack: {other:?}"),
        }
    }

    #[test]
    fn acknowledgements_are_batched_and_written_once() {
        let mut t = PairTracker::default();
        assert_eq!(t.ack_frame(), None);
        assert_eq!(t.observe(0, Some("1-0".into())), Outcome::New);
        assert_eq!(t.observe(1, Some("1-1".into())), Outcome::New);
        assert!(t.has_pending() && !t.batch_full());
        assert_eq!(ids(&t.ack_frame().unwrap()), ["1-0", "1-1"]);
        assert_eq!(t.acked(), 2);
        assert_eq!(t.ack_frame(), None);
        for seq in 2..2 + ACK_BATCH as u64 {
            t.observe(seq, Some(format!("2-{seq}")));
        }
        assert!(t.batch_full());
    }

    #[test]
    fn unacknowledged_messages_may_come_back_once_after_a_reconnect() {
        let mut t = PairTracker::default();
        for seq in 0..4 {
            t.observe(seq, Some(format!("1-{seq}")));
        }
        t.acked(); // 0..4 acknowledged
        t.observe(4, Some("1-4".into()));
        t.observe(5, Some("1-5".into()));
        t.socket_closed(); // 4 and 5 were never acknowledged
        assert_eq!(t.observe(4, Some("1-4".into())), Outcome::Redelivered);
        assert_eq!(t.observe(5, Some("1-5".into())), Outcome::Redelivered);
        assert_eq!(t.observe(6, Some("1-6".into())), Outcome::New);
        // The re-deliveries are acknowledged again, or they would stay stored.
        assert_eq!(ids(&t.ack_frame().unwrap()), ["1-4", "1-5", "1-6"]);
        // A second copy of a re-delivered message, or one that was acknowledged, is real.
        assert_eq!(t.observe(5, Some("1-5".into())), Outcome::Duplicate);
        assert_eq!(t.observe(2, Some("1-2".into())), Outcome::Duplicate);
    }

    #[test]
    fn without_a_reconnect_or_acknowledgements_a_duplicate_is_real() {
        // A specification socket: no ids, nothing is ever owed again.
        let mut t = PairTracker::default();
        assert_eq!(t.observe(0, None), Outcome::New);
        t.socket_closed();
        assert_eq!(t.observe(0, None), Outcome::Duplicate);
        assert!(!t.has_pending());
        // An acknowledging socket that has not closed: the server does not re-deliver.
        let mut t = PairTracker::default();
        t.observe(0, Some("1-0".into()));
        assert_eq!(t.observe(0, Some("1-0".into())), Outcome::Duplicate);
    }

    #[test]
    fn gaps_and_reordering_still_count() {
        let mut t = PairTracker::default();
        assert_eq!(t.observe(0, None), Outcome::New);
        assert_eq!(t.observe(2, None), Outcome::New);
        assert_eq!(t.observe(1, None), Outcome::Reordered);
        assert_eq!(t.observe(1, None), Outcome::Duplicate);
    }
}
