//! Redis Cluster slot maths: which slot a tag hashes to, a tag for a given slot range, and the
//! ranges each master owns (where the link places one probe channel per shard).

use std::collections::HashMap;

use redis::Value;

/// The first slot range of every master in a `CLUSTER SLOTS` reply
/// (`[[start, end, [host, port, id, ..], replicas..], ..]`), in no particular order.
pub(super) fn first_range_per_master(reply: &Value) -> Vec<(u16, u16)> {
    let mut first: HashMap<Vec<u8>, (u16, u16)> = HashMap::new();
    let Value::Array(ranges) = reply else { return Vec::new() };
    for range in ranges {
        let Value::Array(fields) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else { continue };
        if start > end || end >= 16384 {
            continue;
        }
        // The node's address (host, port) names the master.
        let name = format!("{:?}", master.iter().take(2).collect::<Vec<_>>()).into_bytes();
        let entry = first.entry(name).or_insert((start, end));
        if start < entry.0 {
            *entry = (start, end);
        }
    }
    first.into_values().collect()
}

/// The Redis Cluster slot of a key or hash tag (CRC16/XMODEM modulo 16384).
pub(super) fn slot_of(tag: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag) % 16384
}

/// The first decimal number whose slot is in `start..=end` (every slot has one below 10^6).
pub(super) fn tag_in_slots(start: u16, end: u16) -> String {
    (0u32..1_000_000)
        .map(|n| n.to_string())
        .find(|tag| (start..=end).contains(&slot_of(tag.as_bytes())))
        .unwrap_or_else(|| "0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_and_every_range_gets_a_tag() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        for (start, end) in [(0, 0), (5460, 5461), (16383, 16383), (0, 16383)] {
            let tag = tag_in_slots(start, end);
            assert!((start..=end).contains(&slot_of(tag.as_bytes())), "{tag} for {start}-{end}");
        }
    }

    #[test]
    fn one_probe_range_per_master_from_cluster_slots() {
        let node = |port: i64| Value::Array(vec![Value::BulkString(b"127.0.0.1".to_vec()), Value::Int(port)]);
        let range =
            |start, end, port| Value::Array(vec![Value::Int(start), Value::Int(end), node(port), node(port + 1)]);
        let reply =
            Value::Array(vec![range(100, 200, 7000), range(0, 99, 7002), range(5, 4, 7000), range(201, 300, 7002)]);
        let mut ranges = first_range_per_master(&reply);
        ranges.sort();
        assert_eq!(ranges, [(0, 99), (100, 200)]);
        assert!(first_range_per_master(&Value::Nil).is_empty());
    }
}
