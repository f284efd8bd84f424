//! The JSON bodies of the directory's endpoints (docs/protocol.md, "The key directory").
//!
//! Byte strings: hashes in lowercase hex, keys, signatures and proofs in standard base64 with
//! padding. Proofs are akd's protobuf messages (`akd_core::proto::specs::types`), base64-encoded.

use serde::{Deserialize, Serialize};

/// Domain separation of the bytes a root signature covers.
pub const ROOT_SIGNATURE_CONTEXT: &[u8] = b"enigma directory root v1\0";

/// An epoch's root, signed by the relay (Ed25519) over [`root_message`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SignedRoot {
    /// The epoch (1 is the first publication; the empty directory is epoch 0 and is not served).
    pub epoch: u64,
    /// The AKD root hash of this epoch, 32 bytes, hex.
    pub root_hash: String,
    /// The directory's VRF public key (32 bytes, base64): what hides which ids exist.
    pub vrf_public_key: String,
    /// The id of the signing key (as in the relay's configuration).
    pub key_id: String,
    /// The Ed25519 public key that signed this root (32 bytes, base64).
    pub signing_key: String,
    /// Ed25519 signature (64 bytes, base64) over [`root_message`].
    pub signature: String,
}

/// The bytes a root's signature covers: context, epoch (u64 big-endian), root hash, VRF key.
pub fn root_message(epoch: u64, root_hash: &[u8], vrf_public_key: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(ROOT_SIGNATURE_CONTEXT.len() + 8 + root_hash.len() + vrf_public_key.len());
    message.extend_from_slice(ROOT_SIGNATURE_CONTEXT);
    message.extend_from_slice(&epoch.to_be_bytes());
    message.extend_from_slice(root_hash);
    message.extend_from_slice(vrf_public_key);
    message
}

/// `GET /directory/lookup/{userId}`: the user's current key, proven against `root`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LookupAnswer {
    pub root: SignedRoot,
    pub user_id: String,
    pub public_key: String,
    /// The version of the user's key (1 for the registration's).
    pub version: u64,
    /// `LookupProof`, protobuf, base64.
    pub proof: String,
}

/// `GET /directory/history/{userId}`: every version of the user's key, proven against `root`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryAnswer {
    pub root: SignedRoot,
    pub user_id: String,
    /// `HistoryProof`, protobuf, base64.
    pub proof: String,
}

/// `GET /directory/audit/{fromEpoch}/{toEpoch}`: the append-only proof from `from` to `to`.
/// The relay may answer a shorter range than asked (`to` is then the last epoch covered); a
/// client asks again from there.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditAnswer {
    pub from: u64,
    pub to: u64,
    /// The signed roots of every epoch `from..=to`, in order.
    pub roots: Vec<SignedRoot>,
    /// `AppendOnlyProof`, protobuf, base64 (one single-epoch proof per step).
    pub proof: String,
}
