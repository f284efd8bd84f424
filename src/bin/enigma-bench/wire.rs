//! The generator's frames: a spec envelope whose payload starts with the message's sequence
//! number and its send-time stamp (16 hex digits each, see `traffic` for which time), padded
//! to the requested size.
//!
//! Frames are built into one reusable buffer per sender: the `Bytes` handed to tungstenite is
//! copied into its write buffer and dropped, so the next `reserve` takes the same memory back
//! and the steady state allocates nothing per message.

use std::collections::BTreeMap;

use bytes::BytesMut;
use enigma::protocol::{ClientFrame, DeliveryFrame, SendFrame, ServerFrame};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Hex digits for the sequence number plus those for the send-time stamp.
pub const STAMP_LEN: usize = 32;
const PAYLOAD_FIELD: &str = "\"payload\":\"";

/// Builds one pair's frames.
pub struct FrameBuilder {
    template: Vec<u8>,
    stamp_at: usize,
    buf: BytesMut,
}

impl FrameBuilder {
    /// `payload_bytes` must be at least [`STAMP_LEN`]; the rest is padding.
    pub fn new(from: &str, to: &str, payload_bytes: usize) -> FrameBuilder {
        assert!(payload_bytes >= STAMP_LEN, "payload too short for the stamp");
        let mut padding = "0".repeat(STAMP_LEN);
        padding.extend(std::iter::repeat_n('x', payload_bytes - STAMP_LEN));
        let payload = serde_json::value::to_raw_value(&padding).expect("a string");
        let send = SendFrame { from: from.into(), to: to.into(), payload: &payload, reference: None };
        let template = ClientFrame::Send(send).to_json().into_bytes();
        // The payload is the last field written and its padding needs no escape: the stamp
        // is the start of the padding, just before the closing `"}`.
        let stamp_at = template.len() - "\"}".len() - payload_bytes;
        assert_eq!(&template[stamp_at..stamp_at + payload_bytes], padding.as_bytes());
        // Room for a few frames: each is dropped once tungstenite has copied it, and `reserve`
        // then reclaims the space.
        FrameBuilder { buf: BytesMut::with_capacity(template.len() * 4), template, stamp_at }
    }

    pub fn frame(&mut self, seq: u64, stamp_ns: u64) -> Utf8Bytes {
        self.buf.reserve(self.template.len());
        self.buf.extend_from_slice(&self.template);
        let mut frame = self.buf.split();
        let stamp = &mut frame[self.stamp_at..self.stamp_at + STAMP_LEN];
        write_hex(&mut stamp[..16], seq);
        write_hex(&mut stamp[16..], stamp_ns);
        Utf8Bytes::try_from(frame.freeze()).expect("the frame is ASCII")
    }
}

fn write_hex(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn read_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| Some(acc << 4 | u64::from((d as char).to_digit(16)?)))
}

/// What a received text frame is.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// One of ours: its sequence number, send-time stamp (ns on the run's clock) and, on an
    /// acknowledging (`enigma.v1`) socket, the inbox id to acknowledge it by.
    Stamped { seq: u64, stamp_ns: u64, id: Option<String> },
    /// An error frame, by code.
    Error(String),
    /// Anything else (counted as an error: the server sent something we did not ask for).
    Other(&'a str),
}

/// The stamp at the start of a payload: (sequence number, send time).
fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let stamp = payload.get(..STAMP_LEN)?;
    Some((read_hex(&stamp[..16])?, read_hex(&stamp[16..])?))
}

/// Classifies a frame. A specification client's fast path looks for the payload field
/// directly instead of parsing the JSON: at 100k messages/s the generator's CPU is the
/// server's CPU on a 2-core machine. The server writes the payload exactly as sent (it never
/// re-encodes it), so the stamp is always the first 32 characters of the field. An
/// acknowledging socket's deliveries are read with the protocol's own parser, which gives
/// the id to acknowledge.
pub fn classify(text: &str, acknowledging: bool) -> Received<'_> {
    if acknowledging {
        if let Ok(ServerFrame::Delivery(DeliveryFrame { id: Some(id), payload, .. })) = ServerFrame::parse(text)
            && let Some((seq, stamp_ns)) = read_stamp(payload.as_bytes())
        {
            return Received::Stamped { seq, stamp_ns, id: Some(id) };
        }
    } else if let Some(at) = text.find(PAYLOAD_FIELD)
        && let Some((seq, stamp_ns)) = read_stamp(&text.as_bytes()[at + PAYLOAD_FIELD.len()..])
    {
        return Received::Stamped { seq, stamp_ns, id: None };
    }
    match ServerFrame::parse(text) {
        Ok(ServerFrame::Error(error)) if error.code.as_str().is_empty() => Received::Error("unknown".into()),
        Ok(ServerFrame::Error(error)) => Received::Error(error.code.as_str().to_owned()),
        _ => Received::Other(text),
    }
}

/// How an arrival relates to what its pair sent before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one expected, or one after a gap (the gap's messages are missing for now).
    New,
    /// A message that fills an earlier gap: it was overtaken by a later one.
    Reordered,
    /// Already received.
    Duplicate,
}

/// Per-pair sequence check. Gaps are kept as ranges (start → end, exclusive), so a burst of
/// losses costs one entry, not one per message; the server keeps order, so this stays empty.
#[derive(Debug, Default)]
pub struct SeqTracker {
    next: u64,
    missing: BTreeMap<u64, u64>,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                self.missing.insert(self.next, seq);
            }
            self.next = seq + 1;
            return Arrival::New;
        }
        let Some((&start, &end)) = self.missing.range(..=seq).next_back() else { return Arrival::Duplicate };
        if seq >= end {
            return Arrival::Duplicate;
        }
        self.missing.remove(&start);
        if start < seq {
            self.missing.insert(start, seq);
        }
        if seq + 1 < end {
            self.missing.insert(seq + 1, end);
        }
        Arrival::Reordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enigma::protocol::{Delivery, ErrorCode, MsgId, error_frame};

    #[test]
    fn frames_round_trip() {
        let mut builder = FrameBuilder::new("alice", "bob", 64);
        for (seq, ts) in [(0, 0), (7, 123_456_789), (u64::MAX, u64::MAX - 1)] {
            let frame = builder.frame(seq, ts);
            let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
            assert_eq!(value["from"], "alice");
            assert_eq!(value["to"], "bob");
            assert_eq!(value["payload"].as_str().unwrap().len(), 64);
            assert_eq!(classify(frame.as_str(), false), Received::Stamped { seq, stamp_ns: ts, id: None });
        }
    }

    #[test]
    fn the_buffer_is_reused_once_frames_are_dropped() {
        let mut builder = FrameBuilder::new("a", "b", 256);
        let first = builder.frame(1, 1);
        let ptr = first.as_str().as_ptr();
        drop(first);
        let mut reused = false;
        for i in 0..200 {
            let f = builder.frame(i, i);
            reused |= f.as_str().as_ptr() == ptr;
        }
        assert!(reused, "BytesMut should reclaim its buffer");
    }

    #[test]
    fn classifies_server_frames() {
        let delivered = r#"{"from":"a","to":"b","payload":"000000000000000a000000000000000bxx"}"#;
        assert_eq!(classify(delivered, false), Received::Stamped { seq: 10, stamp_ns: 11, id: None });
        let full = error_frame(ErrorCode::InboxFull, "full", None);
        for acknowledging in [false, true] {
            assert_eq!(classify(&full, acknowledging), Received::Error(ErrorCode::InboxFull.as_str().into()));
            assert_eq!(classify(r#"{"error":"full"}"#, acknowledging), Received::Error("unknown".into()));
            assert_eq!(
                classify(r#"{"from":"a","to":"b","payload":"short"}"#, acknowledging),
                Received::Other(r#"{"from":"a","to":"b","payload":"short"}"#)
            );
        }
    }

    #[test]
    fn acknowledging_deliveries_carry_their_id() {
        // Built by the server's own code: the envelope as stored, `id` and `ts` spliced in.
        let mut builder = FrameBuilder::new("a", "b", 64);
        let sent = builder.frame(10, 11);
        let delivery = Delivery {
            id: MsgId { ms: 1732563000123, seq: 4 },
            ts: 1732563000123,
            seq: 1,
            envelope: bytes::Bytes::copy_from_slice(sent.as_str().as_bytes()),
        };
        let frame = delivery.frame(true);
        let text = std::str::from_utf8(&frame).unwrap();
        let expected = Received::Stamped { seq: 10, stamp_ns: 11, id: Some("1732563000123-4".into()) };
        assert_eq!(classify(text, true), expected);
        // A receipt is not a delivery.
        let receipt = enigma::protocol::receipt_frame("r", MsgId { ms: 1, seq: 2 });
        assert_eq!(classify(&receipt, true), Received::Other(&receipt));
    }

    #[test]
    fn tracks_loss_reordering_and_duplicates() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), Arrival::New);
        assert_eq!(t.observe(1), Arrival::New);
        assert_eq!(t.observe(1), Arrival::Duplicate);
        assert_eq!(t.observe(5), Arrival::New); // 2, 3, 4 missing
        assert_eq!(t.observe(3), Arrival::Reordered);
        assert_eq!(t.observe(3), Arrival::Duplicate);
        assert_eq!(t.observe(2), Arrival::Reordered);
        assert_eq!(t.observe(4), Arrival::Reordered);
        assert!(t.missing.is_empty());
        assert_eq!(t.observe(0), Arrival::Duplicate);
        assert_eq!(t.observe(6), Arrival::New);
    }
}
