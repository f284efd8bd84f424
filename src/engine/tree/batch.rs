//! What the engines keep for the verifiable key directory, as plain values: akd's records as
//! opaque bytes, how a batch of them is written, the wait for the store's replicas, a
//! registration waiting to be published, the generated secrets, and what the embedded engine's
//! data file holds of it all.

use crate::protocol::UserId;

/// Records of one write: akd's azks and tree nodes `(key, value)`, its value states
/// `(label, epoch, value)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TreeBatch {
    pub nodes: Vec<(Vec<u8>, Vec<u8>)>,
    pub states: Vec<(Vec<u8>, u64, Vec<u8>)>,
}

impl TreeBatch {
    pub fn size(&self) -> usize {
        let nodes: usize = self.nodes.iter().map(|(k, v)| k.len() + v.len()).sum();
        let states: usize = self.states.iter().map(|(l, _, v)| l.len() + 8 + v.len()).sum();
        nodes + states
    }
}

/// How a batch is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeWrite {
    /// The empty directory's records: written where absent only (every replica makes the same
    /// ones, and one written by a publisher since must stay).
    Initial,
    /// Epoch `epoch`'s records, all or none; on Redis only while `holder` holds the lease
    /// and the directory is at `epoch - 1`.
    Epoch { epoch: u64, holder: String },
}

/// What the publisher waits for before it records an epoch's root: the store's replicas
/// acknowledging everything written so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// At most this many of the replicas online (`None`: all of them; 0: none).
    pub at_most: Option<u32>,
    /// How long to wait for their acknowledgements.
    pub timeout: std::time::Duration,
}

/// How a wait for the replicas ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// Every replica waited for has it (or there was none to wait for).
    Copied,
    /// Only `acknowledged` of the `wanted` replicas had it when the wait ended.
    Short { wanted: u32, acknowledged: u32 },
    /// The publisher no longer holds the lease: it records nothing.
    LeaseLost,
}

/// A registration waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub user: UserId,
    pub public_key: String,
}

/// A secret generated once for the deployment when none is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// The VRF key (`directory.vrf_key`).
    Vrf,
    /// The root signing key (`directory.signing_keys`).
    Signing,
}

impl Secret {
    pub fn as_str(self) -> &'static str {
        match self {
            Secret::Vrf => "vrf",
            Secret::Signing => "signing",
        }
    }
}

/// The key directory's part of the embedded engine's data file, read at startup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TreeSnapshot {
    pub nodes: Vec<(Vec<u8>, Vec<u8>)>,
    /// By label, then epoch.
    pub states: Vec<(Vec<u8>, u64, Vec<u8>)>,
    /// By epoch.
    pub roots: Vec<(u64, Vec<u8>)>,
    pub pending: Vec<(UserId, String)>,
    pub secrets: Vec<(String, String)>,
}
