//! The wire: what clients send, what the server answers, and the error and close codes.
//!
//! Envelopes are serialized exactly once, when a send is accepted; from then on the server
//! moves those bytes (the stored form, the pub/sub notification, the frame for a spec client)
//! and never re-encodes them.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// WebSocket subprotocol of the acknowledging extension (see `docs/protocol.md`).
pub const SUBPROTOCOL_V1: &str = "enigma.v1";

/// Close codes the server uses (4000–4999 are private-use codes in RFC 6455).
pub mod close {
    /// The server is shutting down; reconnect (to another replica).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A frame over the size limit (far beyond the payload limit).
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server cannot serve right now (storage unreachable); reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The user of the socket does not exist.
    pub const USER_NOT_FOUND: u16 = 4404;
    /// Nothing arrived from the peer within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4408;
    /// A newer connection of the same user took over.
    pub const REPLACED: u16 = 4409;
    /// The client does not read fast enough; its messages stay stored.
    pub const SLOW_CONSUMER: u16 = 4429;
}

/// Machine-readable error codes carried by error frames next to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidFrame,
    BinaryNotSupported,
    Forbidden,
    UserNotFound,
    PayloadTooLarge,
    InboxFull,
    Unavailable,
    Internal,
}

/// A user id: a canonical (lowercase, hyphenated) UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().hyphenated().to_string())
    }
    /// Accepts only the canonical 36-character form, so one user has exactly one spelling.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 36 {
            return None;
        }
        let uuid = uuid::Uuid::try_parse(s).ok()?;
        let canonical = uuid.hyphenated().to_string();
        (canonical == s).then_some(Self(canonical))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Position of a message in a user's inbox: a Redis stream id (`<ms>-<seq>`), used by both
/// engines so that ordering and de-duplication work the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MsgId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for MsgId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        Ok(Self { ms: ms.parse().map_err(|_| ())?, seq: seq.parse().map_err(|_| ())? })
    }
}

/// A stored message: its id, acceptance time and the envelope JSON as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: MsgId,
    pub ts: u64,
    /// The message's number among all messages ever sent to its recipient (1, 2, 3, …): a
    /// session that sees a number skipped knows a doorbell went missing, whatever the cause.
    pub seq: u64,
    pub envelope: bytes::Bytes,
}

impl Delivery {
    /// The frame a client receives: the envelope's own bytes for spec clients (no copy), with
    /// `id` and `ts` spliced in front for acknowledging clients (no re-encoding of the payload).
    pub fn frame(&self, acknowledging: bool) -> bytes::Bytes {
        if !acknowledging {
            return self.envelope.clone();
        }
        let rest = self.envelope.strip_prefix(b"{").unwrap_or(&self.envelope);
        let head = format!("{{\"id\":\"{}\",\"ts\":{},", self.id, self.ts);
        let mut frame = Vec::with_capacity(head.len() + rest.len());
        frame.extend_from_slice(head.as_bytes());
        frame.extend_from_slice(rest);
        frame.into()
    }
}

/// A payload as it arrived: its JSON string literal, escapes and all. It is stored and
/// forwarded as is, never decoded and re-encoded (the server has no use for its content).
#[derive(Debug, Clone, Copy)]
pub struct RawPayload<'a>(&'a str);

impl<'a> RawPayload<'a> {
    /// `None` unless the value is a JSON string.
    pub fn new(raw: &'a serde_json::value::RawValue) -> Option<Self> {
        let literal = raw.get();
        (literal.len() >= 2 && literal.starts_with('"')).then_some(Self(literal))
    }

    /// The length of the string it denotes, in bytes (what the payload limit is about).
    pub fn decoded_len(&self) -> usize {
        let content = &self.0[1..self.0.len() - 1];
        if !content.contains('\\') {
            return content.len();
        }
        // Escapes are rare in sealed (base64) payloads: decode only then.
        serde_json::from_str::<String>(self.0).map_or(usize::MAX, |s| s.len())
    }
}

/// The envelope as it is stored and delivered: exactly the spec's three fields. User ids are
/// canonical UUIDs (nothing to escape) and the payload is a JSON string literal already.
pub fn envelope(from: &UserId, to: &UserId, payload: RawPayload<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.0.len() + 100);
    out.extend_from_slice(b"{\"from\":\"");
    out.extend_from_slice(from.as_str().as_bytes());
    out.extend_from_slice(b"\",\"to\":\"");
    out.extend_from_slice(to.as_str().as_bytes());
    out.extend_from_slice(b"\",\"payload\":");
    out.extend_from_slice(payload.0.as_bytes());
    out.push(b'}');
    out
}

/// An error frame: `{"error": "...", "code": "..."}`, with the `ref` of the send it answers
/// (acknowledging clients only).
#[derive(Debug, Serialize)]
pub struct ErrorFrame<'a> {
    pub error: &'a str,
    pub code: ErrorCode,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a str>,
}

pub fn error_frame(code: ErrorCode, message: &str, reference: Option<&str>) -> String {
    serde_json::to_string(&ErrorFrame { error: message, code, reference }).expect("plain struct")
}

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("public key is empty")]
    Empty,
    #[error("public key is longer than {0} bytes")]
    TooLong(usize),
    #[error("public key contains a character outside base64, base64url, hex and PEM: {0:?}")]
    BadChar(char),
}

/// Keys are opaque strings; only their length and alphabet are checked: base64 (`+/=`),
/// base64url (`-_`), hex, and PEM text (letters, `-`, spaces and line breaks).
pub fn validate_public_key(key: &str, max_len: usize) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > max_len {
        return Err(KeyError::TooLong(max_len));
    }
    match key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_' | ' ' | '\n' | '\r')))
    {
        Some(c) => Err(KeyError::BadChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_canonical() {
        let id = UserId::random();
        assert_eq!(UserId::parse(id.as_str()), Some(id.clone()));
        assert!(UserId::parse(&id.as_str().to_uppercase()).is_none());
        assert!(UserId::parse("not-a-uuid").is_none());
        assert!(UserId::parse("").is_none());
    }

    #[test]
    fn msg_ids_order_numerically() {
        let a: MsgId = "9-5".parse().unwrap();
        let b: MsgId = "10-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        assert!("10".parse::<MsgId>().is_err());
        assert!("x-1".parse::<MsgId>().is_err());
    }

    #[test]
    fn acknowledging_frames_splice_id_and_ts() {
        let d = Delivery {
            id: MsgId { ms: 5, seq: 1 },
            ts: 5,
            seq: 1,
            envelope: r#"{"from":"a","to":"b","payload":"p"}"#.into(),
        };
        assert_eq!(d.frame(false), r#"{"from":"a","to":"b","payload":"p"}"#.as_bytes());
        let v: serde_json::Value = serde_json::from_slice(&d.frame(true)).unwrap();
        assert_eq!(v["id"], "5-1");
        assert_eq!(v["ts"], 5);
        assert_eq!(v["payload"], "p");
    }

    #[test]
    fn envelopes_keep_the_payload_literal() {
        let (from, to) = (UserId::random(), UserId::random());
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(r#""a\"b\u00e9""#).unwrap();
        let payload = RawPayload::new(&raw).unwrap();
        assert_eq!(payload.decoded_len(), "a\"bé".len());
        let env: serde_json::Value = serde_json::from_slice(&envelope(&from, &to, payload)).unwrap();
        assert_eq!(env, serde_json::json!({"from": from.as_str(), "to": to.as_str(), "payload": "a\"bé"}));
        let plain: Box<serde_json::value::RawValue> = serde_json::from_str(r#""abc""#).unwrap();
        assert_eq!(RawPayload::new(&plain).unwrap().decoded_len(), 3);
        let number: Box<serde_json::value::RawValue> = serde_json::from_str("5").unwrap();
        assert!(RawPayload::new(&number).is_none());
    }

    #[test]
    fn key_alphabet() {
        assert!(validate_public_key("LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0=", 100).is_ok());
        assert!(validate_public_key("MIIBIjANBgkq/+ab==", 100).is_ok());
        assert!(validate_public_key("-----BEGIN PUBLIC KEY-----\nAB+/\n-----END PUBLIC KEY-----\n", 100).is_ok());
        assert!(validate_public_key("deadbeef", 100).is_ok());
        assert_eq!(validate_public_key("", 100), Err(KeyError::Empty));
        assert_eq!(validate_public_key("abc", 2), Err(KeyError::TooLong(2)));
        assert_eq!(validate_public_key("a<b", 100), Err(KeyError::BadChar('<')));
        assert_eq!(validate_public_key("a\"b", 100), Err(KeyError::BadChar('"')));
    }
}
