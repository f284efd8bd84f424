//! The probe channels' bookkeeping: which channels carry probes (one on a single Redis, one per
//! master on a cluster), the hash tag that places each in its shard, and the numbers sent.

use std::collections::HashMap;

use super::heard::Heard;

#[derive(Default)]
pub(super) struct Probes {
    /// The probe channels subscribed.
    pub(super) channels: Vec<String>,
    /// A hash tag for each slot range in use (finding one takes up to ~16k CRCs).
    pub(super) tags: HashMap<(u16, u16), String>,
    /// The number of the last probe sent when each probe channel was placed.
    placed: HashMap<String, u64>,
    /// The number of the last probe sent.
    pub(super) sent: u64,
}

impl Probes {
    /// Whether probe `n` came back on every probe channel.
    pub(super) fn returned(&self, heard: &Heard, n: u64) -> bool {
        self.channels.iter().all(|c| heard.probes.get(c.as_bytes()).is_some_and(|&s| s >= n))
    }

    /// Whether the last probe sent did not come back on a channel that was already in place
    /// when it was sent.
    pub(super) fn missing(&self, heard: &Heard) -> bool {
        let n = self.sent;
        self.channels.iter().any(|c| {
            self.placed.get(c).is_some_and(|&placed| placed < n)
                && heard.probes.get(c.as_bytes()).is_none_or(|&s| s < n)
        })
    }

    /// The channels `wanted` adds and those it drops.
    pub(super) fn changes(&self, wanted: &[String]) -> (Vec<String>, Vec<String>) {
        let new = wanted.iter().filter(|c| !self.channels.contains(c)).cloned().collect();
        let old = self.channels.iter().filter(|c| !wanted.contains(c)).cloned().collect();
        (new, old)
    }

    /// `wanted` are the probe channels from now on; what came back on the others is forgotten.
    pub(super) fn replace(&mut self, wanted: Vec<String>, heard: &mut Heard) {
        heard.probes.retain(|c, _| wanted.iter().any(|w| w.as_bytes() == c));
        for channel in &wanted {
            self.placed.entry(channel.clone()).or_insert(self.sent);
        }
        self.placed.retain(|c, _| wanted.contains(c));
        self.channels = wanted;
    }
}
