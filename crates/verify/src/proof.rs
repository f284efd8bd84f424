//! Proofs on the wire: akd's proof types as their protobuf messages, base64-encoded
//! ([`crate::wire`]). One pair of functions per proof type, used by the relay to answer and by
//! every client to read.

use akd_core::proto::specs::types as specs;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use protobuf::Message;

/// A proof that cannot be read: not base64, not the protobuf message, or not a valid proof.
#[derive(Debug, thiserror::Error)]
#[error("unreadable {kind} proof: {reason}")]
pub struct ProofDecodeError {
    pub kind: &'static str,
    pub reason: String,
}

/// A proof that cannot be written: protobuf refused the message built from it (a field it requires
/// is missing). A fault of whoever made the proof, never answered as an empty proof.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the {kind} proof: {reason}")]
pub struct ProofEncodeError {
    pub kind: &'static str,
    pub reason: String,
}

fn encode<M: Message>(kind: &'static str, message: &M) -> Result<String, ProofEncodeError> {
    let bytes = message.write_to_bytes().map_err(|e| ProofEncodeError { kind, reason: e.to_string() })?;
    Ok(STANDARD.encode(bytes))
}

fn decode<M: Message>(kind: &'static str, text: &str) -> Result<M, ProofDecodeError> {
    let fail = |reason: String| ProofDecodeError { kind, reason };
    let bytes = STANDARD.decode(text).map_err(|e| fail(e.to_string()))?;
    M::parse_from_bytes(&bytes).map_err(|e| fail(e.to_string()))
}

macro_rules! proof_codec {
    ($encode:ident, $decode:ident, $proof:ident, $kind:literal) => {
        #[doc = concat!("A `", stringify!($proof), "` as protobuf, base64.")]
        pub fn $encode(proof: &akd_core::$proof) -> Result<String, ProofEncodeError> {
            encode($kind, &specs::$proof::from(proof))
        }

        #[doc = concat!("A `", stringify!($proof), "` read back from [`", stringify!($encode), "`]'s text.")]
        pub fn $decode(text: &str) -> Result<akd_core::$proof, ProofDecodeError> {
            let message: specs::$proof = decode($kind, text)?;
            akd_core::$proof::try_from(&message).map_err(|e| ProofDecodeError { kind: $kind, reason: format!("{e:?}") })
        }
    };
}

proof_codec!(encode_lookup, decode_lookup, LookupProof, "lookup");
proof_codec!(encode_history, decode_history, HistoryProof, "history");
proof_codec!(encode_audit, decode_audit, AppendOnlyProof, "append-only");
