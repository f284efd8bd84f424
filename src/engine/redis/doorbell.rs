//! The doorbell codec: what travels on a user's channel (and on a replica's probe channels).
//!
//! One encoder (`Doorbell::encode`) and one decoder (`Doorbell::decode`). The send and attach
//! scripts build their announcements inside Redis; the Lua expressions they publish come from
//! `lua_message` and `lua_takeover` here, built from the same tag bytes, so the formats cannot
//! drift apart (the tests evaluate those expressions and decode the result).

use bytes::Bytes;

use crate::protocol::MsgId;

const MESSAGE: u8 = b'm';
const MESSAGE_NUMBER: u8 = b' ';
const MESSAGE_BODY: u8 = b'\n';
const TAKEOVER: u8 = b't';
const ECHO: u8 = b'e';
const ECHO_NUMBER: u8 = b':';

/// One announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Doorbell {
    /// A stored message: `m<id> <seq>\n<envelope>` (id and number as in the inbox).
    Message { id: MsgId, seq: u64, envelope: Bytes },
    /// A newer connection of the user, to end older ones: `t<generation>`.
    Takeover { generation: u64 },
    /// A replica proving its subscription to this channel: `e<replica>:<n>` (the hub never
    /// sees it).
    Echo { replica: String, n: u64 },
    /// A replica's link probe, on its own probe channel only: `<n>`.
    Probe { n: u64 },
}

impl Doorbell {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Doorbell::Message { id, seq, envelope } => {
                let mut out = vec![MESSAGE];
                out.extend_from_slice(id.to_string().as_bytes());
                out.push(MESSAGE_NUMBER);
                out.extend_from_slice(seq.to_string().as_bytes());
                out.push(MESSAGE_BODY);
                out.extend_from_slice(envelope);
                out
            }
            Doorbell::Takeover { generation } => [&[TAKEOVER], generation.to_string().as_bytes()].concat(),
            Doorbell::Echo { replica, n } => {
                [&[ECHO], replica.as_bytes(), &[ECHO_NUMBER], n.to_string().as_bytes()].concat()
            }
            Doorbell::Probe { n } => n.to_string().into_bytes(),
        }
    }

    /// `None` for anything malformed: a doorbell that cannot be read is ignored (the inbox
    /// still holds the message; the session's numbering notices the gap).
    pub(crate) fn decode(payload: Vec<u8>) -> Option<Self> {
        match *payload.first()? {
            MESSAGE => {
                let body = payload.iter().position(|&b| b == MESSAGE_BODY)?;
                let header = std::str::from_utf8(&payload[1..body]).ok()?;
                let (id, seq) = header.split_once(char::from(MESSAGE_NUMBER))?;
                let (id, seq) = (id.parse().ok()?, seq.parse().ok()?);
                let envelope = Bytes::from(payload).slice(body + 1..);
                Some(Doorbell::Message { id, seq, envelope })
            }
            TAKEOVER => Some(Doorbell::Takeover { generation: number(&payload[1..])? }),
            ECHO => {
                let split = payload.iter().rposition(|&b| b == ECHO_NUMBER)?;
                let replica = std::str::from_utf8(&payload[1..split]).ok()?.to_owned();
                Some(Doorbell::Echo { replica, n: number(&payload[split + 1..])? })
            }
            _ => Some(Doorbell::Probe { n: number(&payload)? }),
        }
    }
}

fn number(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// The Lua expression announcing a stored message, from Lua expressions for its parts.
pub(super) fn lua_message(id: &str, seq: &str, envelope: &str) -> String {
    let (tag, number, body) = (lua_string(MESSAGE), lua_string(MESSAGE_NUMBER), lua_string(MESSAGE_BODY));
    format!("{tag} .. {id} .. {number} .. {seq} .. {body} .. {envelope}")
}

/// The Lua expression announcing a takeover, from a Lua expression for the generation.
pub(super) fn lua_takeover(generation: &str) -> String {
    format!("{} .. {generation}", lua_string(TAKEOVER))
}

/// A Lua string literal of one byte.
fn lua_string(byte: u8) -> String {
    match byte {
        b'\n' => "'\\n'".to_owned(),
        b'\'' | b'\\' => format!("'\\{}'", char::from(byte)),
        _ => format!("'{}'", char::from(byte)),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn round_trip(doorbell: Doorbell) {
        assert_eq!(Doorbell::decode(doorbell.encode()), Some(doorbell));
    }

    #[test]
    fn every_variant_round_trips() {
        let id = MsgId { ms: 1_700_000_000_123, seq: 4 };
        round_trip(Doorbell::Message { id, seq: 42, envelope: Bytes::from_static(b"{\"x\":\"a b\\nc\"}\n") });
        round_trip(Doorbell::Message { id, seq: 0, envelope: Bytes::new() });
        round_trip(Doorbell::Takeover { generation: 7 });
        round_trip(Doorbell::Echo { replica: "0f3a9c".into(), n: 12 });
        round_trip(Doorbell::Probe { n: 99 });
    }

    #[test]
    fn the_bytes_on_the_wire() {
        let id = MsgId { ms: 5, seq: 1 };
        let message = Doorbell::Message { id, seq: 3, envelope: Bytes::from_static(b"{}") };
        assert_eq!(message.encode(), b"m5-1 3\n{}");
        assert_eq!(Doorbell::Takeover { generation: 2 }.encode(), b"t2");
        assert_eq!(Doorbell::Echo { replica: "r1".into(), n: 8 }.encode(), b"er1:8");
        assert_eq!(Doorbell::Probe { n: 8 }.encode(), b"8");
    }

    #[test]
    fn malformed_doorbells_are_ignored() {
        for payload in [&b""[..], b"m5-1 3", b"mx 3\n{}", b"m5-1 x\n{}", b"t", b"tx", b"er1", b"er1:x", b"x"] {
            assert_eq!(Doorbell::decode(payload.to_vec()), None, "{:?}", String::from_utf8_lossy(payload));
        }
    }

    /// Evaluates a Lua concatenation of string literals and the named variables, which is all
    /// the doorbell expressions are.
    pub(in super::super) fn eval_lua_concat(expression: &str, variables: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in expression.split(" .. ") {
            if let Some(literal) = part.strip_prefix('\'').and_then(|p| p.strip_suffix('\'')) {
                let mut chars = literal.chars();
                while let Some(c) = chars.next() {
                    let c = match c {
                        '\\' => match chars.next() {
                            Some('n') => '\n',
                            Some(other) => other,
                            None => panic!("dangling escape in {expression}"),
                        },
                        c => c,
                    };
                    out.extend_from_slice(c.to_string().as_bytes());
                }
            } else {
                let (_, value) = variables.iter().find(|(name, _)| *name == part).expect("an unknown Lua variable");
                out.extend_from_slice(value);
            }
        }
        out
    }

    #[test]
    fn the_scripts_announce_what_the_decoder_reads() {
        let id = MsgId { ms: 1_700_000_000_123, seq: 0 };
        let envelope = b"{\"to\":\"u\",\"body\":\"x\"}";
        let lua = lua_message("id", "seq", "ARGV[1]");
        let published = eval_lua_concat(&lua, &[("id", b"1700000000123-0"), ("seq", b"17"), ("ARGV[1]", envelope)]);
        let expected = Doorbell::Message { id, seq: 17, envelope: Bytes::from_static(envelope) };
        assert_eq!(published, expected.encode());
        assert_eq!(Doorbell::decode(published), Some(expected));

        let published = eval_lua_concat(&lua_takeover("generation"), &[("generation", b"31")]);
        assert_eq!(Doorbell::decode(published), Some(Doorbell::Takeover { generation: 31 }));
    }
}
