//! The Lua scripts (`send.lua`, `attach.lua`, `remove.lua`, `limit.lua`, `contacts.lua`,
//! `unused.lua`, `keep_index.lua` beside this file) and how their answers read.
//!
//! The `.lua` files are templates: `$DOORBELL` becomes the announcement's Lua expression from
//! the doorbell codec, and `'PUBLISH'` becomes `'SPUBLISH'` on a cluster. They carry no
//! comments (Redis hashes the text: the SHA1s are pinned below); the comments are here.
//!
//! What the Lua side costs (redis-server's instructions under callgrind, Redis 7.0; see
//! `scripts/script_cost.py`): a `redis.call` is ~2,900 instructions beyond the command's own
//! work, a Lua number passed to it is formatted with `snprintf("%.17g")` (~2,500 more than a
//! string; Redis 7.2 formats numbers faster), a `tonumber` of a string is two `strtod`s (~1,600:
//! Lua 5.1's `tonumber` asks `lua_isnumber`, which converts, then converts again) where
//! arithmetic (`s + 0`) is one, and a string concatenation allocates and interns a new string.
//! Hence the scripts make no call they can do without (the recipient check rides on the
//! message number), pass what is already a string as a string and a constant as a string
//! (`HINCRBY seq '1'`: a `1` costs `%.17g` at every message), write the numbers they compute as
//! strings made by `string.format('%d')` (an integer `sprintf`, cheaper than Redis's `%.17g` of
//! a Lua number, and exact where Lua's own `%.14g` is not past 10^14; the message number made
//! once for the entry and the doorbell), read the numbers Redis hands them with `+ 0`
//! (`(held[1] or 0) + 0`: a field that is not there counts as 0; in the send, one that is not
//! a number fails that message before anything is written, while the removal, which must
//! never be held up, reads the share counts with `tonumber(v) or 0` once per sender and call:
//! see `SEND` and `REMOVE`), build each field name once,
//! and key what they gather by values, not by strings built per message.

use redis::{Script, Value};

use super::super::errors::SendError;
use super::super::unavailable::Unavailable;
use super::doorbell;
use crate::protocol::MsgId;

/// Stores a batch of messages, each appended to its recipient's inbox and announced on its
/// doorbell in one step: stored and announced, or refused, never announced without being
/// stored. Each message gets the next number of its recipient (field `seq` of the user record),
/// stored with it and announced with it, so a session notices a doorbell that never came.
/// The inbox's share record (a hash in the same slot) counts what each sender has waiting
/// (`n:<sender>`, `b:<sender>` envelope bytes) and the bytes of all (`bytes`); each entry
/// names its sender (field `f`), so `REMOVE` gives the share back, and both expire together.
/// Per message it runs seven commands (HMGET, XLEN, SISMEMBER, HINCRBY, XADD, HSET, GET or
/// PUBLISH; six with no strangers' pool): the
/// share counts are read once and written in one HSET, and the TTLs are refreshed only when the
/// last refresh (field `x` of the share record, stream-id time) is older than 1/64 of the TTL:
/// both keys then expire `ttl + ttl/64` after it, so never sooner than `ttl` after the last
/// write, and a send seldom pays for two PEXPIREs. The two keys always carry the same expiry
/// (set by the same call, and a script sees one frozen clock), so an inbox that expired took
/// its share record with it: a fresh `x` means the inbox has its expiry. (Only a deletion from
/// outside — an operator's `DEL`, eviction, which `maxmemory-policy noeviction` rules out —
/// could leave the share record without its inbox: the inbox recreated then gets its expiry at
/// the next refresh, at most `ttl/64` later, if another message comes.)
/// Every stored number is read before the first write (a field that is not a number stops the
/// message with nothing written: `{-4, error}`); `x` with `tonumber`, so that a damaged one
/// reads as "not refreshed" and is written again by this send (the removal rewrites the
/// counts, never `x`).
/// The recipient check costs no command of its own: user records are never deleted, only
/// expire, so `HINCRBY seq` answers 1 only for a user's first message ever or for a record that
/// is not there (the increment just made it); only then is the record asked for its
/// `publicKey`, and one without is deleted again and the message answered -1. Nothing is
/// written before that answer. A refusal asks first, so an unknown recipient is answered -1
/// whatever else would have refused it (as when an `EXISTS` came first).
/// One call carries many messages (`sender`): the cost of a call itself is shared by them.
/// A message whose recipient's live connection is on the sending replica is not published when
/// that connection is still the user's newest (its generation, passed in, is the counter's):
/// the replica hands it over itself. A newer connection anywhere has claimed a newer generation
/// first (and reads the inbox after claiming it), so it finds the message stored or hears it.
/// Strangers: a sender the recipient has not written to (not in the recipient's contacts set)
/// is a stranger; all strangers' messages together are counted in the share record (`sn`, `sb`)
/// and held to the strangers' pool, one stranger to an eighth of it, and a stranger's own
/// entries are marked (`s:<sender>`) so `REMOVE` gives the pool back. A marked sender who has
/// become a contact takes its entries out of the pool at its next send.
/// KEYS: per message its recipient's user record, inbox, shares, contacts. ARGV: capacity, ttl
/// (ms), share (messages, 0: none), share (bytes, 0: none), inbox byte cap, strangers' pool
/// (messages, 0: no pool), strangers' pool (bytes); then per message its
/// envelope, channel, sender, connection counter and the local connection's generation (both
/// empty when the recipient has none here).
/// Returns per message the stream id (published), `{id, seq}` (stored, not published: the
/// replica delivers it), -1 for an unknown recipient, -2 for a full inbox, -3 for a sender
/// over its share, -5 for a stranger when the strangers' pool is full, or `{-4, error}` for the error that stopped it (each message on its own:
/// one that fails does not take the others with it; a plain value, not an error reply, which
/// redis-rs would turn into a failure of the whole call). `#!lua` without flags: refused as a whole, before
/// any write, when Redis is over its memory limit.
///
/// The channel is an argument, not a key: on a cluster it is in the keys' slot all the same,
/// and a declared key that never exists would make every send to a slot being migrated fail
/// with TRYAGAIN until the migration ends (Redis counts it as a key that already moved).
const SEND: &str = include_str!("send.lua");

/// Claims the next connection generation of a user and announces it, so that older
/// connections on every replica end. The counter expires (ARGV[2], ms) like any abandoned
/// record, and starts again at Redis's clock in milliseconds, not at 1: a connection older
/// than the expiry still counts as older. (KEYS: counter. ARGV: channel, for the reason given
/// at `SEND`; ttl.)
const ATTACH: &str = include_str!("attach.lua");

/// Removes delivered or acknowledged entries and gives their senders' shares back; an id
/// no longer there changes nothing, so a removal may run twice. Any number of users at once
/// (single Redis; one per call on a cluster). KEYS: per user its inbox, shares. ARGV: the
/// storage ledger's key root (`Keys::ledger_root`) or empty, then per user
/// the number of its ids, then per id the id, its sender and envelope size (empty and 0 when
/// not known: the entry is read). With a root (single Redis, the ledger on: `ledger::Release`)
/// what the removal freed comes off the holders' day buckets in the same call — per day one
/// `HINCRBY` on the prefix's key (`<root>net:<prefix>`) and one on each sender's
/// (`<root>{<sender>}`), a key that is gone not made again (`RELEASE_RULE`, as in `RELEASE`);
/// keys built here, not declared, which only a single Redis allows — and it returns how many were removed and an
/// empty report. Without, it returns how many were removed and what that freed per day,
/// address prefix and sender (the storage ledger's release, `ledger::removal_reply`). Per user
/// one XDEL per id (its answer says whether that entry was there, and so whose share it gives
/// back), one HMGET and one HSET/HDEL for all senders' shares. The report is gathered in tables
/// keyed by day, prefix and sender, and an entry's day is read from its id's leading digits
/// (the milliseconds divided by 10^5: a day is 864 of those, so the digits name the day), once
/// per distinct value (see "What the Lua side costs" above). The share record's numbers are
/// read with `tonumber(v) or 0` (once per sender and call, not per message): a field that is not
/// a number counts as 0 and is written again, so a damaged record is repaired, never a removal
/// held up (which would leave every user of the call undeleted, and delivered again).
const REMOVE: &str = include_str!("remove.lua");

/// One rate-limit check (`crate::limits::Buckets::take`, the same arithmetic) on Redis's
/// clock: up to two dimensions in one hash (`at`, `t1`, `t2`) that expires once it would be
/// full again. KEYS: the bucket. ARGV: ttl (ms), then per dimension burst, per second, want,
/// min. Returns `{1, granted…}` or `{0, retry after ms}`.
const LIMIT: &str = include_str!("limit.lua");

/// Adds people to a user's contacts (whom the user wrote to), up to a maximum, and keeps the
/// list for its TTL from now. KEYS: the contacts set. ARGV: ttl (ms), maximum, then the ids.
/// Returns the list's size.
const CONTACTS: &str = include_str!("contacts.lua");

/// Counts a new registration against its address prefix's registrations nobody used yet (a
/// ZSET of uids by expiry, on Redis's clock): the expired ones leave first; at the maximum it
/// is refused. The set lives as long as its newest member. KEYS: the set. ARGV: uid, ttl
/// (ms), maximum (0: none). Returns 0 (counted) or how long until the oldest expires (ms).
/// `#!lua` without flags: refused as a whole when Redis is over its memory limit (a
/// registration that cannot be stored is refused anyway).
const UNUSED: &str = include_str!("unused.lua");

/// Keeps a key index entry for its TTL from now, if it still names the user (records from
/// before key normalisation may have two entries, and another user's is not ours to keep).
/// KEYS: the entry. ARGV: uid, ttl (ms). Returns 1 if kept. `allow-oom`: it frees nothing but
/// adds nothing either, and a full Redis must not make a user's id expire.
const KEEP_INDEX: &str = include_str!("keep_index.lua");

/// Charges (or gives back) storage to one holder's ledger (`ledger`), refusing a charge that
/// would make it hold more than allowed; day buckets older than the inbox TTL and a day are
/// dropped on the way. KEYS: the holder's hash. ARGV: today, days kept, bytes (negative: given
/// back), allowed, ttl (ms). Returns `{1, held}` or `{0, held}` (refused).
const HOLD: &str = include_str!("hold.lua");

/// Takes bytes off storage ledgers (`ledger`): only frees, so it runs on a full Redis too
/// (`allow-oom`), like every script a reader runs. KEYS: ledger hashes (one per call on a
/// cluster). ARGV: per key its day field and the (negative) change. Each key by
/// `RELEASE_RULE`, the rule `REMOVE` follows too.
const RELEASE: &str = include_str!("release.lua");

/// How bytes come off one ledger key, in `RELEASE` and `REMOVE` alike (where their templates
/// say `$RELEASE`): a Lua `release(key, field, change)`, the change a negative integer as a
/// string. A ledger that is gone (expired: its holder held nothing for the inbox TTL and a day)
/// is not made again: one `HINCRBY` a key, and only when its answer is the change itself (the
/// day's field was 0 or not there, as after midnight, or the key did not exist) a `PTTL`, and a
/// key without expiry — one the `HINCRBY` just made: `HOLD` gives every ledger one — is deleted
/// in the same step, if that field is all it holds (`HLEN` 1: a key left without expiry by
/// other means keeps its other days' charges). (An `EXISTS` first cost one more call a key,
/// every time.)
const RELEASE_RULE: &str = include_str!("release_rule.lua");

/// Where a template takes `RELEASE_RULE`.
const RELEASE_AT: &str = "$RELEASE";

/// Where a template takes its doorbell expression.
const DOORBELL: &str = "$DOORBELL";

pub(super) struct Scripts {
    pub(super) send: Script,
    pub(super) attach: Script,
    pub(super) remove: Script,
    pub(super) limit: Script,
    pub(super) contacts: Script,
    pub(super) hold: Script,
    pub(super) unused: Script,
    pub(super) keep_index: Script,
}

impl Scripts {
    /// `publish` is `PUBLISH`, or `SPUBLISH` on a cluster (the channel is in the same `{uid}`
    /// slot as the keys, so a script stays on one shard).
    pub(super) fn new(publish: &str) -> Self {
        Self {
            send: Script::new(&send_source(publish)),
            attach: Script::new(&attach_source(publish)),
            remove: remove_script(),
            limit: Script::new(LIMIT),
            contacts: Script::new(CONTACTS),
            hold: Script::new(HOLD),
            unused: Script::new(UNUSED),
            keep_index: Script::new(KEEP_INDEX),
        }
    }
}

/// The ledger's release script (the remover uses it too).
pub(super) fn release_script() -> Script {
    Script::new(&with_release_rule(RELEASE))
}

/// The removal script, for the remover task (which starts before `Scripts`).
pub(super) fn remove_script() -> Script {
    Script::new(&with_release_rule(REMOVE))
}

fn with_release_rule(template: &str) -> String {
    template.replace(RELEASE_AT, RELEASE_RULE.trim_end())
}

fn send_source(publish: &str) -> String {
    render(SEND, &doorbell::lua_message("id", "number", "envelope"), publish)
}

fn attach_source(publish: &str) -> String {
    render(ATTACH, &doorbell::lua_takeover("generation"), publish)
}

fn render(template: &str, doorbell: &str, publish: &str) -> String {
    template.replace(DOORBELL, doorbell).replace("'PUBLISH'", &format!("'{publish}'"))
}

/// A stored message: its id, and its number when the sending replica is to deliver it itself
/// (not published, see `SEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) id: MsgId,
    pub(super) local_seq: Option<u64>,
}

/// The send script's answer for `count` messages: one result each.
pub(super) fn send_replies(reply: Value, count: usize) -> Vec<Result<Stored, SendError>> {
    match reply {
        Value::Array(replies) if replies.len() == count => replies.into_iter().map(send_reply).collect(),
        reply => {
            let why = format!("unexpected reply to send ({count} messages): {reply:?}");
            (0..count).map(|_| Err(Unavailable::said(why.clone()).into())).collect()
        }
    }
}

/// The send script's answer for one message: where it was stored, or why it was refused.
fn send_reply(reply: Value) -> Result<Stored, SendError> {
    let unexpected = || SendError::from(Unavailable::said(format!("unexpected reply to send: {reply:?}")));
    let published = |id| Stored { id, local_seq: None };
    match &reply {
        Value::Array(local) => match local.as_slice() {
            [Value::Int(-4), Value::BulkString(error)] => {
                Err(Unavailable::said(format!("send failed in Redis: {}", String::from_utf8_lossy(error))).into())
            }
            [Value::BulkString(id), Value::Int(seq)] => {
                let seq = u64::try_from(*seq).ok();
                parse_id(id).zip(seq).map(|(id, seq)| Stored { id, local_seq: Some(seq) }).ok_or_else(unexpected)
            }
            _ => Err(unexpected()),
        },
        Value::ServerError(e) => Err(Unavailable::redis_while("send failed in Redis", e.clone().into()).into()),
        Value::Int(-1) => Err(SendError::UserNotFound),
        Value::Int(-2) => Err(SendError::InboxFull),
        Value::Int(-3) => Err(SendError::OverShare),
        Value::Int(-5) => Err(SendError::StrangersFull),
        Value::BulkString(id) => parse_id(id).map(published).ok_or_else(unexpected),
        Value::SimpleString(id) => parse_id(id.as_bytes()).map(published).ok_or_else(unexpected),
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
        for template in [RELEASE, REMOVE] {
            let source = with_release_rule(template);
            assert!(!source.contains('$'), "a placeholder left in {source}");
            assert!(source.starts_with("#!lua flags=allow-oom\n"), "{source}");
            assert!(source.contains("local function release(key, field, change)"), "{source}");
        }
        assert!(send_source("PUBLISH").contains(&doorbell::lua_message("id", "number", "envelope")));
        assert!(attach_source("PUBLISH").contains(&doorbell::lua_takeover("generation")));
    }

    #[test]
    fn send_replies_read_each_message_on_its_own() {
        let id = || Value::BulkString(b"1700000000123-4".to_vec());
        let replies = Value::Array(vec![
            id(),
            Value::Array(vec![id(), Value::Int(9)]),
            Value::Int(-1),
            Value::Int(-2),
            Value::Int(-3),
            Value::Array(vec![Value::Int(-4), Value::BulkString(b"WRONGTYPE".to_vec())]),
            Value::Okay,
        ]);
        let read = send_replies(replies, 7);
        let msg = MsgId { ms: 1_700_000_000_123, seq: 4 };
        assert_eq!(read[0].as_ref().ok(), Some(&Stored { id: msg, local_seq: None }));
        assert_eq!(read[1].as_ref().ok(), Some(&Stored { id: msg, local_seq: Some(9) }));
        assert!(matches!(read[2], Err(SendError::UserNotFound)));
        assert!(matches!(read[3], Err(SendError::InboxFull)));
        assert!(matches!(read[4], Err(SendError::OverShare)));
        assert!(matches!(&read[5], Err(SendError::Unavailable(e)) if e.to_string().contains("WRONGTYPE")));
        assert!(matches!(read[6], Err(SendError::Unavailable(_))));
        // A reply of the wrong length answers every message `unavailable`.
        assert!(send_replies(Value::Array(vec![id()]), 2).iter().all(|r| matches!(r, Err(SendError::Unavailable(_)))));
    }

    /// Redis caches scripts by SHA1, and replicas of two releases may run side by side during a
    /// rollout: these pin the scripts, so a change to one is deliberate. Changed with the
    /// inbox shares (send: sender field and share record; attach: the counter's expiry), and
    /// for the cost per message (send: one HSET, TTLs refreshed every 1/64 of the TTL), and for
    /// contacts, strangers and the storage ledger (send: contacts key, strangers pool, prefix),
    /// and for the recipient check read from the message number (send: no `EXISTS`), and for
    /// fewer number conversions and strings per message (send: a stranger's mark written as a
    /// string, each sender field name built once, the message number written once as a string
    /// for the entry and the doorbell), and for the message number's increment passed as a
    /// string, and for stored numbers read with `+ 0` instead of `tonumber`, and for the share
    /// record's numbers written as strings (`string.format('%d')`), and for every stored number read
    /// before the first write (the refresh time with `tonumber`).
    #[test]
    fn scripts_are_the_released_ones() {
        let hashes = |publish| {
            let scripts = Scripts::new(publish);
            (scripts.send.get_hash().to_owned(), scripts.attach.get_hash().to_owned())
        };
        let expected = |send: &str, attach: &str| (send.to_owned(), attach.to_owned());
        assert_eq!(
            hashes("PUBLISH"),
            expected("b39ec02c00efef5fffd17f15e0246e8bca7b0124", "cf6da73c52ab1cff2fe47d41bb0066127fc821b6")
        );
        assert_eq!(
            hashes("SPUBLISH"),
            expected("107e2e44649e2eca7acd20a390729de5ccd2e06f", "4f8d5e4c3b9f6dff37327393ca243386d5a69c33")
        );
    }
}
