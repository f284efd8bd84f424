//! The Lua scripts (`send.lua`, `attach.lua` beside this file) and how their answers read.
//!
//! The `.lua` files are templates: `$DOORBELL` becomes the announcement's Lua expression from
//! the doorbell codec, and `'PUBLISH'` becomes `'SPUBLISH'` on a cluster. Their text (free of
//! comments, opening with an empty line) renders to exactly the scripts earlier releases
//! loaded, SHA1s included, so the refactor changed nothing in Redis.

use redis::{Script, Value};

use super::super::{SendError, Unavailable};
use super::doorbell;
use crate::protocol::MsgId;

/// Appends an envelope to the recipient's inbox and rings its doorbell, in one step. Each
/// message gets the next number of its recipient (field `seq` of the user record), stored with
/// it and announced with it, so a session notices a doorbell that never came.
/// KEYS: user record, inbox. ARGV: envelope, capacity, ttl (ms), channel.
/// Returns the stream id, -1 for an unknown recipient, -2 for a full inbox.
///
/// The channel is an argument, not a key: on a cluster it is in the keys' slot all the same,
/// and a declared key that never exists would make every send to a slot being migrated fail
/// with TRYAGAIN until the migration ends (Redis counts it as a key that already moved).
const SEND: &str = include_str!("send.lua");

/// Claims the next connection generation of a user and announces it, so that older
/// connections on every replica end. The counter never expires: one
/// restarting at 1 would make every older connection look newer. (KEYS: counter. ARGV:
/// channel, for the reason given at `SEND`.)
const ATTACH: &str = include_str!("attach.lua");

/// Where a template takes its doorbell expression.
const DOORBELL: &str = "$DOORBELL";

pub(super) struct Scripts {
    pub(super) send: Script,
    pub(super) attach: Script,
}

impl Scripts {
    /// `publish` is `PUBLISH`, or `SPUBLISH` on a cluster (the channel is in the same `{uid}`
    /// slot as the keys, so a script stays on one shard).
    pub(super) fn new(publish: &str) -> Self {
        Self { send: Script::new(&send_source(publish)), attach: Script::new(&attach_source(publish)) }
    }
}

fn send_source(publish: &str) -> String {
    render(SEND, &doorbell::lua_message("id", "seq", "ARGV[1]"), publish)
}

fn attach_source(publish: &str) -> String {
    render(ATTACH, &doorbell::lua_takeover("generation"), publish)
}

fn render(template: &str, doorbell: &str, publish: &str) -> String {
    template.replace(DOORBELL, doorbell).replace("'PUBLISH'", &format!("'{publish}'"))
}

/// The send script's answer: the stream id, or why the message was refused.
pub(super) fn send_reply(reply: Value) -> Result<MsgId, SendError> {
    let unexpected = || SendError::from(Unavailable(format!("unexpected reply to send: {reply:?}")));
    match &reply {
        Value::Int(-1) => Err(SendError::UserNotFound),
        Value::Int(-2) => Err(SendError::InboxFull),
        Value::BulkString(id) => parse_id(id).ok_or_else(unexpected),
        Value::SimpleString(id) => parse_id(id.as_bytes()).ok_or_else(unexpected),
        _ => Err(unexpected()),
    }
}

fn parse_id(raw: &[u8]) -> Option<MsgId> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_whole_scripts() {
        for publish in ["PUBLISH", "SPUBLISH"] {
            for source in [send_source(publish), attach_source(publish)] {
                assert!(!source.contains('$'), "a placeholder left in {source}");
                assert!(source.contains(&format!("redis.call('{publish}', ")), "{source}");
            }
        }
        assert!(send_source("PUBLISH").contains(&doorbell::lua_message("id", "seq", "ARGV[1]")));
        assert!(attach_source("PUBLISH").contains(&doorbell::lua_takeover("generation")));
    }

    /// Redis caches scripts by SHA1: these are the scripts of the releases before the
    /// templates, so every replica runs the very same code. Change them only with the scripts.
    #[test]
    fn scripts_are_the_released_ones() {
        let hashes = |publish| {
            let scripts = Scripts::new(publish);
            (scripts.send.get_hash().to_owned(), scripts.attach.get_hash().to_owned())
        };
        let expected = |send: &str, attach: &str| (send.to_owned(), attach.to_owned());
        assert_eq!(
            hashes("PUBLISH"),
            expected("8e386d02388d4ecfb70c8b54bc148cd569aa0204", "fa919ad79178c8fd8cc92a8c3a5aab4916659622")
        );
        assert_eq!(
            hashes("SPUBLISH"),
            expected("53d0def73f4997d12f04bfedf0760e0f96742330", "c0064a62add219a81f218e6beb7be2f51bf75d32")
        );
    }
}
