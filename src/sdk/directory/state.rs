//! The client's directory state and the plain types of its API: a leaf, so that the client
//! (which holds the state) and the directory checks (which are the client's methods, in
//! `directory/mod.rs`) do not import each other.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use enigma_verify::VerifiedRoot;
use enigma_verify::keeper::{RootKeeper, Signer, SignerChange};
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
    /// The newest root verified. `signer_changed`: its signer is not the one of the root this
    /// client kept before (the relay rotated its signing key); the roots by the new key were
    /// proven to extend the kept root, which is how they were taken. Worth telling the user.
    Verified { epoch: u64, signer_changed: Option<SignerChange> },
}

/// A key checked with the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProof {
    Proven(ProvenKey),
    /// The server has no directory ([`DirectoryPolicy::Verify`] allows it).
    NoDirectory,
}

/// A root by its epoch, hash and VRF key, written `EPOCH:HASH:VRF` (both in lowercase hex):
/// how `enigma audit` prints the root it keeps, and how a root another client verified is given
/// to compare with ([`crate::sdk::Client::audit_directory`], `enigma audit --root`). Two clients
/// that hold the same `EpochRoot` were shown the same directory up to that epoch. The VRF key is
/// part of it: the root hash does not cover it, and one tree read with two VRF keys shows two
/// clients different keys for one id (each finds its entries at other labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpochRoot {
    epoch: u64,
    hash: [u8; 32],
    vrf: [u8; 32],
}

/// Text that is not `EPOCH:HASH:VRF`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0}; expected EPOCH:HASH:VRF, as `enigma audit` prints its kept root (e.g. 12:9f2c…:41d0…, two times 64 hex digits)"
)]
pub struct BadEpochRoot(String);

impl EpochRoot {
    /// Epoch 0 (the empty directory) is never published: it is refused.
    pub fn new(epoch: u64, hash: [u8; 32], vrf: [u8; 32]) -> Result<EpochRoot, BadEpochRoot> {
        if epoch == 0 {
            return Err(BadEpochRoot("epoch 0 is never published (epochs start at 1)".into()));
        }
        Ok(EpochRoot { epoch, hash, vrf })
    }

    /// The VRF key the root was signed with.
    pub fn vrf(&self) -> &[u8; 32] {
        &self.vrf
    }

    pub fn vrf_hex(&self) -> String {
        hex::encode(self.vrf)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

impl From<&VerifiedRoot> for EpochRoot {
    fn from(root: &VerifiedRoot) -> Self {
        EpochRoot { epoch: root.epoch, hash: root.root_hash, vrf: root.vrf_public_key }
    }
}

impl FromStr for EpochRoot {
    type Err = BadEpochRoot;

    fn from_str(text: &str) -> Result<Self, BadEpochRoot> {
        let bad = |what: &str| BadEpochRoot(what.to_owned());
        let mut parts = text.trim().split(':');
        let (Some(epoch), Some(hash), Some(vrf), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three parts separated by `:`"));
        };
        let epoch: u64 = epoch.parse().map_err(|_| bad(&format!("the epoch {epoch:?} is not a whole number")))?;
        let hex32 = |what: &str, text: &str| -> Result<[u8; 32], BadEpochRoot> {
            hex::decode(text)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| bad(&format!("the {what} {text:?} is not 64 hex digits")))
        };
        EpochRoot::new(epoch, hex32("hash", hash)?, hex32("VRF key", vrf)?)
    }
}

impl fmt::Display for EpochRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.epoch, self.hash_hex(), self.vrf_hex())
    }
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
    /// The newest root, now kept.
    pub root: SignedRoot,
    /// [`AuditSummary::root`] as another client compares it.
    pub kept: EpochRoot,
    /// The roots given to compare with, in epoch order: the audited chain has every one (any
    /// other outcome is an error, not a summary).
    pub compared: Vec<EpochRoot>,
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
    /// Since this client started: from the signer of the root it kept then to the one now.
    pub(super) signer_change: Option<SignerChange>,
}

impl DirectoryState {
    /// Notes that the kept root's signer changed `from` a key `to` another (one change after
    /// another is one change, from the first signer to the last; back to the first is none).
    pub(super) fn signer_changed(&mut self, from: Signer, to: Signer) {
        let from = self.signer_change.take().map_or(from, |earlier| earlier.from);
        self.signer_change = (from.key != to.key).then_some(SignerChange { from, to });
    }
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    #[default]
    Unknown,
    Absent,
    Present,
}
