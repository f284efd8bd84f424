//! The WebSocket frames, each one type written and read by this module for both sides.
//!
//! Client frames: a send (`{from, to, payload, ref?}`) and an acknowledgement
//! (`{ack: id | [ids], ref?}`). Server frames: a delivery (the envelope, with `id` and `ts`
//! for acknowledging clients), a receipt (`{ref, id, status: "stored"}`) and an error
//! (`{error, code, ref?}`).
//!
//! Envelopes are serialized exactly once, when a send is accepted; from then on the server
//! moves those bytes (the stored form, the pub/sub notification, the frame for a spec client)
//! and never re-encodes them. Payloads stay the JSON string literal the client wrote.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::codes::{AnyErrorCode, ErrorCode};
use super::ids::{MsgId, UserId};

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
    /// Read back by [`ServerFrame::parse`].
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
    pub fn new(raw: &'a RawValue) -> Option<Self> {
        let literal = raw.get();
        (literal.len() >= 2 && literal.starts_with('"')).then_some(Self(literal))
    }

    /// The payload's length as it is stored and forwarded: the bytes between the quotes,
    /// escapes as written. The payload limit is about this, not the decoded length: a payload
    /// written as `\u0041` escapes would otherwise cost six times the limit in storage.
    pub fn stored_len(&self) -> usize {
        self.0.len() - 2
    }

    /// Whether every escape decodes: JSON's syntax lets `\udc00` (a lone surrogate) through,
    /// but no string holds it, so a recipient's parser would choke on the delivery. Decoded
    /// only when there is an escape (sealed, base64 payloads have none).
    pub fn is_decodable(&self) -> bool {
        !self.0.contains('\\') || serde_json::from_str::<String>(self.0).is_ok()
    }
}

/// The envelope as it is stored and delivered: exactly the spec's three fields, a
/// [`SendFrame`] without `ref`. Written by hand on the hot path: user ids are canonical UUIDs
/// (nothing to escape) and the payload is a JSON string literal already.
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

/// The sender of an envelope [`envelope`] wrote (its first field), without parsing the rest;
/// `None` for anything else.
pub fn envelope_sender(envelope: &[u8]) -> Option<&str> {
    let rest = envelope.strip_prefix(b"{\"from\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let sender = std::str::from_utf8(&rest[..end]).ok()?;
    // A user id as `UserId::parse` takes it (canonical), checked without allocating.
    let mut canonical = uuid::Uuid::encode_buffer();
    let uuid = uuid::Uuid::try_parse(sender).ok()?;
    (uuid.hyphenated().encode_lower(&mut canonical) == sender).then_some(sender)
}

// ---- client frames ----

/// A send: `{from, to, payload, ref?}`. `payload` is kept as its raw JSON value (the server
/// checks that it is a string only after checking `from`, see `session`).
#[derive(Debug, Clone, Serialize)]
pub struct SendFrame<'a> {
    pub from: Cow<'a, str>,
    pub to: Cow<'a, str>,
    pub payload: &'a RawValue,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<Cow<'a, str>>,
}

/// An acknowledgement: `{ack: id | [ids], ref?}`.
#[derive(Debug, Clone, Serialize)]
pub struct AckFrame<'a> {
    #[serde(rename = "ack")]
    pub ids: AckIds,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<Cow<'a, str>>,
}

/// The `ack` field as written: one id or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AckIds {
    One(String),
    Many(Vec<String>),
}

impl AckIds {
    /// The ids, unless one is not a message id or the list is empty.
    pub fn msg_ids(&self) -> Option<Vec<MsgId>> {
        let ids: Option<Vec<MsgId>> = match self {
            AckIds::One(id) => id.parse().ok().map(|id| vec![id]),
            AckIds::Many(ids) => ids.iter().map(|id| id.parse().ok()).collect(),
        };
        ids.filter(|ids| !ids.is_empty())
    }
}

/// A frame from a client.
#[derive(Debug, Clone)]
pub enum ClientFrame<'a> {
    Send(SendFrame<'a>),
    Ack(AckFrame<'a>),
}

/// A client frame the server cannot take: the error frame's code and message, and the frame's
/// `ref` when it could be read (a send with fields missing), to carry back to acknowledging
/// clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame<'a> {
    pub code: ErrorCode,
    pub message: String,
    pub reference: Option<Cow<'a, str>>,
}

impl<'a> ClientFrame<'a> {
    /// Reads a client's text frame. An `ack` field makes it an acknowledgement whatever else
    /// it holds; otherwise it is a send and needs `from`, `to` and `payload`. Unknown fields
    /// are ignored. The payload is borrowed from `text` as its raw literal, never decoded.
    pub fn parse(text: &'a str) -> Result<ClientFrame<'a>, BadFrame<'a>> {
        let frame: ClientFields<'a> = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                let (code, message) = describe_parse_error(text, &e);
                return Err(BadFrame { code, message, reference: None });
            }
        };
        // serde reads a struct from an array too (`["a","b","c"]` would be a send).
        if text.trim_start_matches([' ', '\t', '\n', '\r']).as_bytes().first() != Some(&b'{') {
            return Err(not_an_object());
        }
        let ClientFields { from, to, payload, reference, ack } = frame;
        if let Some(ids) = ack {
            return Ok(ClientFrame::Ack(AckFrame { ids, reference }));
        }
        match (from, to, payload) {
            (Some(from), Some(to), Some(payload)) => Ok(ClientFrame::Send(SendFrame { from, to, payload, reference })),
            (from, to, payload) => {
                let missing = ["from", "to", "payload"]
                    .into_iter()
                    .zip([from.is_none(), to.is_none(), payload.is_none()])
                    .filter_map(|(name, absent)| absent.then_some(name))
                    .collect::<Vec<_>>()
                    .join("`, `");
                Err(BadFrame {
                    code: ErrorCode::InvalidFrame,
                    message: format!("missing field `{missing}`"),
                    reference,
                })
            }
        }
    }

    pub fn to_json(&self) -> String {
        match self {
            ClientFrame::Send(send) => serde_json::to_string(send),
            ClientFrame::Ack(ack) => serde_json::to_string(ack),
        }
        .expect("plain struct")
    }
}

/// What a client frame may hold; which of it makes a valid frame is decided in `parse`.
#[derive(Debug, Deserialize)]
struct ClientFields<'a> {
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "ref")]
    reference: Option<Cow<'a, str>>,
    #[serde(default)]
    ack: Option<AckIds>,
}

fn not_an_object() -> BadFrame<'static> {
    BadFrame { code: ErrorCode::InvalidFrame, message: "a frame must be a JSON object".into(), reference: None }
}

/// Turns a parse failure into a message that names what is wrong.
fn describe_parse_error(text: &str, error: &serde_json::Error) -> (ErrorCode, String) {
    use serde_json::Value;
    if !error.is_data() {
        return (ErrorCode::InvalidJson, format!("invalid JSON: {error}"));
    }
    // The cold path: parse again, loosely, to say which field has the wrong type.
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        let BadFrame { code, message, .. } = not_an_object();
        return (code, message);
    };
    for field in ["from", "to", "payload", "ref"] {
        if map.get(field).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return (ErrorCode::InvalidFrame, format!("field `{field}` must be a string"));
        }
    }
    if map.contains_key("ack") {
        return (ErrorCode::InvalidFrame, "`ack` must be a message id or a list of ids".into());
    }
    (ErrorCode::InvalidFrame, format!("invalid frame: {error}"))
}

// ---- server frames ----

/// The answer to a stored send: `{ref, id, status: "stored"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptFrame<'a> {
    #[serde(rename = "ref")]
    pub reference: Cow<'a, str>,
    pub id: Cow<'a, str>,
    status: &'static str,
}

impl<'a> ReceiptFrame<'a> {
    const STORED: &'static str = "stored";

    pub fn stored(reference: impl Into<Cow<'a, str>>, id: impl Into<Cow<'a, str>>) -> Self {
        ReceiptFrame { reference: reference.into(), id: id.into(), status: Self::STORED }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain struct")
    }
}

/// The receipt for the send with `ref` `reference`, stored as inbox message `id`.
pub fn receipt_frame(reference: &str, id: MsgId) -> String {
    ReceiptFrame::stored(reference, id.to_string()).to_json()
}

/// An error frame: `{"error": "...", "code": "..."}`, with the `ref` of the send it answers
/// (acknowledging clients only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorFrame<'a> {
    pub error: Cow<'a, str>,
    pub code: AnyErrorCode,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<Cow<'a, str>>,
    /// With `rate_limited`: how long until the same request would pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain struct")
    }
}

pub fn error_frame(code: ErrorCode, message: &str, reference: Option<&str>) -> String {
    ErrorFrame {
        error: message.into(),
        code: code.into(),
        reference: reference.map(Cow::Borrowed),
        retry_after_ms: None,
    }
    .to_json()
}

/// A `rate_limited` error frame: retry after `retry_after_ms`.
pub fn rate_limited_frame(message: &str, reference: Option<&str>, retry_after_ms: u64) -> String {
    ErrorFrame {
        error: message.into(),
        code: ErrorCode::RateLimited.into(),
        reference: reference.map(Cow::Borrowed),
        retry_after_ms: Some(retry_after_ms),
    }
    .to_json()
}

/// A delivery as a client reads it: the envelope, with `id` and `ts` when the connection
/// uses the acknowledging subprotocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFrame {
    pub id: Option<String>,
    pub ts: Option<u64>,
    pub from: String,
    pub to: Option<String>,
    pub payload: String,
}

/// A frame from the server, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Delivery(DeliveryFrame),
    Receipt(ReceiptFrame<'static>),
    Error(ErrorFrame<'static>),
    /// A JSON object of no known shape (perhaps from a newer server), with its `ref` if any.
    Other {
        reference: Option<String>,
    },
}

impl ServerFrame {
    /// Reads a server frame. Fails only on text that is not a JSON object with string fields.
    pub fn parse(text: &str) -> Result<ServerFrame, serde_json::Error> {
        #[derive(Deserialize)]
        struct Loose {
            id: Option<String>,
            ts: Option<u64>,
            from: Option<String>,
            to: Option<String>,
            payload: Option<String>,
            #[serde(rename = "ref")]
            reference: Option<String>,
            status: Option<String>,
            error: Option<String>,
            code: Option<AnyErrorCode>,
            retry_after_ms: Option<u64>,
        }
        let f: Loose = serde_json::from_str(text)?;
        if let Some(error) = f.error {
            let code = f.code.unwrap_or_else(|| AnyErrorCode::Unknown(String::new()));
            return Ok(ServerFrame::Error(ErrorFrame {
                error: error.into(),
                code,
                reference: f.reference.map(Cow::Owned),
                retry_after_ms: f.retry_after_ms,
            }));
        }
        match (f.status.as_deref(), f.id, f.reference, f.from, f.payload) {
            (Some(ReceiptFrame::STORED), Some(id), Some(reference), _, _) => {
                Ok(ServerFrame::Receipt(ReceiptFrame::stored(reference, id)))
            }
            (_, id, None, Some(from), Some(payload)) => {
                Ok(ServerFrame::Delivery(DeliveryFrame { id, ts: f.ts, from, to: f.to, payload }))
            }
            (_, _, reference, _, _) => Ok(ServerFrame::Other { reference }),
        }
    }

    /// The `ref` of the send this frame answers, if it answers one.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ServerFrame::Receipt(receipt) => Some(&receipt.reference),
            ServerFrame::Error(error) => error.reference.as_deref(),
            ServerFrame::Other { reference } => reference.as_deref(),
            ServerFrame::Delivery(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_sender_of_an_envelope_is_its_first_field() {
        let (from, to) = (UserId::random(), UserId::random());
        let payload: Box<RawValue> = raw("\"aGk=\"");
        let written = envelope(&from, &to, RawPayload::new(&payload).unwrap());
        assert_eq!(envelope_sender(&written), Some(from.as_str()));
        let upper = from.as_str().to_uppercase();
        for other in [
            b"".as_slice(),
            b"{}",
            b"{\"to\":\"x\",\"from\":\"y\"}",
            b"{\"from\":\"not-a-user\",\"to\":\"x\"}",
            format!("{{\"from\":\"{upper}\",\"to\":\"x\"}}").as_bytes(),
            b"{\"from\":\"unterminated",
        ] {
            assert_eq!(envelope_sender(other), None, "{}", String::from_utf8_lossy(other));
        }
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
    fn payloads_whose_escapes_decode_to_nothing_are_not_decodable() {
        assert!(RawPayload::new(&raw(r#""plain base64+/=""#)).unwrap().is_decodable());
        assert!(RawPayload::new(&raw(r#""a\"b\u00e9\ud83d\ude00""#)).unwrap().is_decodable());
        // Found by the client_frame fuzzer: valid JSON syntax, but no string holds it.
        assert!(!RawPayload::new(&raw(r#""x\ude00""#)).unwrap().is_decodable());
        assert!(!RawPayload::new(&raw(r#""\ud83d""#)).unwrap().is_decodable());
    }

    #[test]
    fn envelopes_keep_the_payload_literal() {
        let (from, to) = (UserId::random(), UserId::random());
        let raw_payload = raw(r#""a\"b\u00e9""#);
        let payload = RawPayload::new(&raw_payload).unwrap();
        assert_eq!(payload.stored_len(), r#"a\"b\u00e9"#.len());
        let env: serde_json::Value = serde_json::from_slice(&envelope(&from, &to, payload)).unwrap();
        assert_eq!(env, serde_json::json!({"from": from.as_str(), "to": to.as_str(), "payload": "a\"bé"}));
        assert_eq!(RawPayload::new(&raw(r#""abc""#)).unwrap().stored_len(), 3);
        assert!(RawPayload::new(&raw("5")).is_none());
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let check = |text: &str| {
            let bad = ClientFrame::parse(text).unwrap_err();
            (bad.code, bad.message)
        };
        assert_eq!(check("{nope").0, ErrorCode::InvalidJson);
        assert_eq!(check("[1,2]"), (ErrorCode::InvalidFrame, "a frame must be a JSON object".into()));
        assert_eq!(check(r#"{"from": 5}"#), (ErrorCode::InvalidFrame, "field `from` must be a string".into()));
        assert_eq!(check(r#"{"to": ["x"]}"#), (ErrorCode::InvalidFrame, "field `to` must be a string".into()));
        assert_eq!(check(r#"{"ack": 5}"#).1, "`ack` must be a message id or a list of ids");
        assert_eq!(check(r#""hello""#), (ErrorCode::InvalidFrame, "a frame must be a JSON object".into()));
    }

    #[test]
    fn arrays_are_not_frames() {
        for text in [r#"["a","b","c"]"#, r#" ["a","b","\"c\"",null,["1-0"]]"#, "[]"] {
            let bad = ClientFrame::parse(text).unwrap_err();
            assert_eq!(bad, not_an_object(), "{text}");
        }
    }

    #[test]
    fn missing_fields_are_named_and_keep_the_ref() {
        let bad = ClientFrame::parse(r#"{"to":"b","ref":"7"}"#).unwrap_err();
        assert_eq!(bad.code, ErrorCode::InvalidFrame);
        assert_eq!(bad.message, "missing field `from`, `payload`");
        assert_eq!(bad.reference.as_deref(), Some("7"));
        let bad = ClientFrame::parse(r#"{"ack":null}"#).unwrap_err();
        assert_eq!(bad.message, "missing field `from`, `to`, `payload`");
    }

    #[test]
    fn escaped_strings_are_accepted() {
        let Ok(ClientFrame::Send(f)) = ClientFrame::parse(r#"{"from":"a\u0062","to":"b","payload":"x\"y\u00e9"}"#)
        else {
            panic!("a send")
        };
        assert_eq!(f.from, "ab");
        assert_eq!(f.payload.get(), r#""x\"y\u00e9""#);
    }

    #[test]
    fn sends_round_trip() {
        let payload = raw(r#""x\"y""#);
        for reference in [None, Some(Cow::Borrowed("12"))] {
            let sent = SendFrame { from: "a".into(), to: "b".into(), payload: &payload, reference: reference.clone() };
            let text = ClientFrame::Send(sent).to_json();
            let Ok(ClientFrame::Send(read)) = ClientFrame::parse(&text) else { panic!("a send: {text}") };
            assert_eq!((read.from.as_ref(), read.to.as_ref(), read.payload.get()), ("a", "b", payload.get()));
            assert_eq!(read.reference, reference);
        }
        // The stored envelope is a send without `ref`.
        let (from, to) = (UserId::random(), UserId::random());
        let text = String::from_utf8(envelope(&from, &to, RawPayload::new(&payload).unwrap())).unwrap();
        let Ok(ClientFrame::Send(read)) = ClientFrame::parse(&text) else { panic!("a send: {text}") };
        assert_eq!((read.from.as_ref(), read.to.as_ref()), (from.as_str(), to.as_str()));
    }

    #[test]
    fn acks_round_trip() {
        let acks = [
            (AckIds::One("1-2".into()), Some(vec![MsgId { ms: 1, seq: 2 }])),
            (
                AckIds::Many(vec!["1-2".into(), "3-4".into()]),
                Some(vec![MsgId { ms: 1, seq: 2 }, MsgId { ms: 3, seq: 4 }]),
            ),
            (AckIds::Many(vec![]), None),
            (AckIds::Many(vec!["1-2".into(), "x".into()]), None),
        ];
        for (ids, parsed) in acks {
            for reference in [None, Some(Cow::Borrowed("r"))] {
                let text = ClientFrame::Ack(AckFrame { ids: ids.clone(), reference: reference.clone() }).to_json();
                let Ok(ClientFrame::Ack(read)) = ClientFrame::parse(&text) else { panic!("an ack: {text}") };
                assert_eq!((&read.ids, &read.reference), (&ids, &reference));
                assert_eq!(read.ids.msg_ids(), parsed);
            }
        }
    }

    #[test]
    fn receipts_round_trip() {
        let text = receipt_frame("9", MsgId { ms: 1, seq: 2 });
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            serde_json::json!({"ref": "9", "id": "1-2", "status": "stored"})
        );
        let frame = ServerFrame::parse(&text).unwrap();
        assert_eq!(frame, ServerFrame::Receipt(ReceiptFrame::stored("9".to_owned(), "1-2".to_owned())));
        assert_eq!(frame.reference(), Some("9"));
    }

    #[test]
    fn errors_round_trip() {
        for code in ErrorCode::ALL {
            for reference in [None, Some("r")] {
                let text = error_frame(code, "what went wrong", reference);
                let ServerFrame::Error(read) = ServerFrame::parse(&text).unwrap() else { panic!("an error: {text}") };
                assert_eq!((read.error.as_ref(), &read.code), ("what went wrong", &AnyErrorCode::Known(code)));
                assert_eq!(read.reference.as_deref(), reference);
            }
        }
        let newer = ServerFrame::parse(r#"{"error":"slow down","code":"sender_banned"}"#).unwrap();
        let ServerFrame::Error(newer) = newer else { panic!("an error") };
        assert_eq!(newer.code, AnyErrorCode::Unknown("sender_banned".into()));
        assert_eq!(
            ErrorFrame { reference: None, ..newer.clone() }.to_json(),
            r#"{"error":"slow down","code":"sender_banned"}"#
        );
        let limited = rate_limited_frame("slow down", Some("r7"), 1500);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&limited).unwrap(),
            serde_json::json!({"error": "slow down", "code": "rate_limited", "ref": "r7", "retry_after_ms": 1500})
        );
        let ServerFrame::Error(read) = ServerFrame::parse(&limited).unwrap() else { panic!("an error") };
        assert_eq!((read.code, read.retry_after_ms), (AnyErrorCode::Known(ErrorCode::RateLimited), Some(1500)));
    }

    #[test]
    fn deliveries_round_trip() {
        let (from, to) = (UserId::random(), UserId::random());
        let payload = raw(r#""sealed\/payload""#);
        let envelope = envelope(&from, &to, RawPayload::new(&payload).unwrap());
        let d = Delivery { id: MsgId { ms: 7, seq: 3 }, ts: 7, seq: 1, envelope: envelope.into() };
        for acknowledging in [false, true] {
            let frame = d.frame(acknowledging);
            let read = ServerFrame::parse(std::str::from_utf8(&frame).unwrap()).unwrap();
            let expected = DeliveryFrame {
                id: acknowledging.then(|| "7-3".to_owned()),
                ts: acknowledging.then_some(7),
                from: from.to_string(),
                to: Some(to.to_string()),
                payload: "sealed/payload".into(),
            };
            assert_eq!(read, ServerFrame::Delivery(expected));
            assert_eq!(read.reference(), None);
        }
        assert_eq!(ServerFrame::parse(r#"{"hello":1}"#).unwrap(), ServerFrame::Other { reference: None });
        assert!(ServerFrame::parse("[").is_err());
    }
}
