//! The client's directory state and the plain types of its API: a leaf, so that the client
//! (which holds the state) and the directory checks (which are the client's methods, in
//! `directory/mod.rs`) do not import each other.

use std::time::Duration;

use enigma_verify::keeper::RootKeeper;
use enigma_verify::lookup::ProvenKey;
use enigma_verify::wire::SignedRoot;

/// How long a lookup waits for a user the directory has not published yet.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// How a client treats a server's key directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DirectoryPolicy {
    /// Verify every key with the directory; a server without one is used with pins alone.
    #[default]
    Verify,
    /// Refuse a server without a directory ([`crate::sdk::Error::NoDirectory`]).
    Require,
}

/// What this client knows of its server's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryStatus {
    /// Not asked yet.
    Unknown,
    /// The server has none (404 at `/directory/root`): keys are checked against pins only.
    Absent,
    /// The newest root verified.
    Verified { epoch: u64 },
}

/// A key checked with the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProof {
    Proven(ProvenKey),
    /// The server has no directory ([`DirectoryPolicy::Verify`] allows it).
    NoDirectory,
}

/// What `enigma audit` found: the whole history, append-only and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    /// Epochs 1 to this one were verified.
    pub epochs: u64,
    /// Leaves the append-only proofs added after epoch 1 (one per key version, and one marker
    /// per version replaced).
    pub leaves: u64,
    /// Audit answers fetched.
    pub answers: u64,
    pub root: SignedRoot,
    pub elapsed: Duration,
}

/// The client's view of the directory; one per client, behind an async lock (lookups that need
/// the keeper take turns, one request at a time: none holds it while waiting for a user to be
/// published).
#[derive(Default)]
pub(in crate::sdk) struct DirectoryState {
    pub(super) presence: Presence,
    /// Built at first use from the root kept in the pin file, if any.
    pub(super) keeper: Option<RootKeeper>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    #[default]
    Unknown,
    Absent,
    Present,
}
