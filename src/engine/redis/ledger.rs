//! The storage ledger on Redis (`limits::storage`): what each address prefix and each sender
//! has waiting in inboxes, across all of them and every replica.
//!
//! Each holder is a hash of day buckets (`d<day>` → bytes, the day of the Unix epoch):
//! `<prefix>held:net:<address prefix>` and `<prefix>held:{<uid>}` (the sender's slot). A session
//! charges its holders ahead, a lease at a time (`hold.lua`, which refuses a holder over what it
//! may hold now); every stream entry names its sender's prefix (field `p`), so the removal script
//! reports what each removal frees, by day, prefix and sender, and the remover takes it off the
//! ledger. A message that expires in its inbox is never reported: its bucket goes instead, once
//! older than the inbox TTL and a day (the ledger forgets by day what Redis forgets by key).
//!
//! The store's pressure is sampled from `INFO memory` every second (on a cluster, the fullest
//! primary: a prefix's messages go wherever their recipients' slots are).

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::commands::{Command, timed};
use super::connect::Connections;
use super::keys::Keys;
use super::scripts::release_script;
use crate::limits::storage::Pressure;

/// A day, in milliseconds (the ledger's buckets).
pub(super) const DAY_MS: u64 = 86_400_000;

/// The capacity assumed when neither `limits.storage.capacity_bytes` nor Redis's `maxmemory`
/// says (a Redis without `maxmemory` grows until the machine runs out).
pub(super) const UNKNOWN_CAPACITY: u64 = 4 << 30;

/// How often the pressure is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Where what a removal frees comes off the storage ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Release {
    /// Nowhere: no storage budget is charged.
    Off,
    /// In the removal call itself (single Redis): the removal script builds each holder's key
    /// from this root (`Keys::ledger_root`), with no report to read back and no call of its own.
    InCall(String),
    /// After it, by the release script (`release`): on a cluster a holder's key is in another
    /// slot than the inbox, and a script touches one slot.
    After,
}

impl Release {
    pub(super) fn new(connections: &Connections, keys: &Keys, charged: bool) -> Self {
        match (charged, connections.is_cluster()) {
            (false, _) => Self::Off,
            (true, false) => Self::InCall(keys.ledger_root()),
            (true, true) => Self::After,
        }
    }

    /// The removal script's first argument: the root, or empty (it reports what it freed).
    pub(super) fn arg(&self) -> &str {
        match self {
            Self::InCall(root) => root,
            Self::Off | Self::After => "",
        }
    }
}

/// What one removal freed: bytes of one sender in one prefix, stored on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Freed {
    pub(super) day: u64,
    pub(super) prefix: String,
    pub(super) sender: String,
    pub(super) bytes: u64,
}

/// The removal script's answer: how many entries it removed, and what they freed.
pub(super) fn removal_reply(reply: &Value) -> (u64, Vec<Freed>) {
    let Value::Array(items) = reply else { return (0, Vec::new()) };
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let removed = items.first().and_then(int).unwrap_or(0);
    let Some(Value::Array(freed)) = items.get(1) else { return (removed, Vec::new()) };
    let freed = freed
        .chunks_exact(4)
        .filter_map(|c| {
            Some(Freed { day: int(&c[0])?, prefix: text(&c[1])?, sender: text(&c[2])?, bytes: int(&c[3])? })
        })
        .collect();
    (removed, freed)
}

/// Takes what removals freed off the ledger: one `HINCRBY` per holder and day (pipelined on one
/// Redis; one at a time, many at once, on a cluster, where each is in its own slot). A failure
/// leaves the holders charged until the day's bucket goes; logged.
pub(super) async fn release(connections: &Connections, keys: &Keys, freed: Vec<Freed>) {
    if freed.is_empty() {
        return;
    }
    let mut by_key: std::collections::HashMap<(String, u64), u64> = std::collections::HashMap::new();
    for f in freed {
        if !f.prefix.is_empty() {
            *by_key.entry((keys.held_by_prefix(&f.prefix), f.day)).or_default() += f.bytes;
        }
        *by_key.entry((keys.held_by_sender(&f.sender), f.day)).or_default() += f.bytes;
    }
    let changes: Vec<(String, String, i64)> =
        by_key.into_iter().map(|((key, day), bytes)| (key, format!("d{day}"), -(bytes as i64))).collect();
    apply(connections, &changes).await;
}

/// Applies ledger changes `(key, day field, bytes)` with the release script (`allow-oom`: it
/// only frees): one call for all on one Redis, one per key on a cluster.
pub(super) async fn apply(connections: &Connections, changes: &[(String, String, i64)]) {
    let script = release_script();
    let con = connections.cmd();
    let result = if connections.is_cluster() {
        let each = |change: &(String, String, i64)| {
            let (mut con, script, (key, field, bytes)) = (con.clone(), script.clone(), change.clone());
            async move { script.key(key).arg(field).arg(bytes).invoke_async::<()>(&mut con).await }
        };
        timed(Command::Release, connections.timeout, super::conn::each_concurrently(changes, each)).await
    } else {
        let mut invocation = script.prepare_invoke();
        for (key, field, bytes) in changes {
            invocation.key(key).arg(field).arg(*bytes);
        }
        let mut con = con;
        timed(Command::Release, connections.timeout, invocation.invoke_async::<()>(&mut con)).await
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot take freed storage off the ledger; it is forgotten with its day");
    }
}

/// Samples the store's pressure every second until the engine stops.
pub(super) async fn sample_pressure(connections: Arc<Connections>, pressure: Arc<Pressure>, configured: u64) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Said once each, not every second: the last sample stays in force meanwhile.
    let (mut failing, mut told_unbounded) = (false, false);
    loop {
        every.tick().await;
        let mut con = connections.cmd();
        let info: Result<Value, _> =
            timed(Command::Ping, connections.timeout, redis::cmd("INFO").arg("memory").query_async(&mut con)).await;
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read Redis's memory (INFO memory); the storage shares keep the last pressure seen");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        let mut fullest: Option<(u64, u64)> = None;
        for text in info_texts(&info) {
            let used = info_field(&text, "used_memory").unwrap_or(0);
            let max = info_field(&text, "maxmemory").filter(|m| *m > 0);
            if configured == 0 && max.is_none() && !told_unbounded {
                told_unbounded = true;
                tracing::warn!(
                    assumed_bytes = UNKNOWN_CAPACITY,
                    "Redis has no maxmemory and limits.storage.capacity_bytes is not set: the storage shares assume 4 GiB; set maxmemory (with noeviction)"
                );
            }
            let capacity = if configured > 0 { configured } else { max.unwrap_or(UNKNOWN_CAPACITY) };
            let fuller = fullest.is_none_or(|(u, c)| used as f64 / capacity as f64 > u as f64 / c as f64);
            if fuller {
                fullest = Some((used, capacity));
            }
        }
        if let Some((used, capacity)) = fullest {
            pressure.set(used, capacity);
        }
    }
}

/// The `INFO` texts of a reply: one Redis's, or each node's on a cluster.
fn info_texts(reply: &Value) -> Vec<String> {
    match reply {
        Value::BulkString(b) => vec![String::from_utf8_lossy(b).into_owned()],
        Value::VerbatimString { text, .. } => vec![text.clone()],
        Value::SimpleString(s) => vec![s.clone()],
        Value::Map(pairs) => pairs.iter().flat_map(|(_, v)| info_texts(v)).collect(),
        Value::Array(items) => items.iter().flat_map(info_texts).collect(),
        _ => Vec::new(),
    }
}

/// A numeric field of an `INFO` text.
fn info_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_removal_replies_read_back() {
        let text = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:50331648\r\n";
        assert_eq!(info_field(text, "used_memory"), Some(1_048_576));
        assert_eq!(info_field(text, "maxmemory"), Some(50_331_648));
        assert_eq!(info_texts(&Value::BulkString(text.as_bytes().to_vec())).len(), 1);
        let reply = Value::Array(vec![
            Value::Int(2),
            Value::Array(vec![
                Value::Int(20_000),
                Value::BulkString(b"127.0.0.2/32".to_vec()),
                Value::BulkString(b"u1".to_vec()),
                Value::Int(600),
            ]),
        ]);
        let freed = Freed { day: 20_000, prefix: "127.0.0.2/32".into(), sender: "u1".into(), bytes: 600 };
        assert_eq!(removal_reply(&reply), (2, vec![freed]));
        assert_eq!(removal_reply(&Value::Int(3)), (0, Vec::new()));
    }
}
