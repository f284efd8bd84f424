//! What a check can find wrong with the directory's answers. Every variant names what was refused
//! and why, in words for the person reading them; callers decide on the variant, never the text.

use crate::proof::ProofDecodeError;

/// A refused directory answer.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A field that is not what the wire format says (bad hex or base64, a wrong length).
    #[error("the directory's answer is malformed: {0}")]
    Malformed(String),

    #[error(transparent)]
    Undecodable(#[from] ProofDecodeError),

    /// The signature over a root does not verify with the key the root names.
    #[error("the directory's root of epoch {epoch} has an invalid signature")]
    BadSignature { epoch: u64 },

    /// A validly signed root, by a key this client does not trust.
    #[error("the directory's root of epoch {epoch} is signed by {signer}, not by the directory's key {trusted}")]
    UntrustedSigner { epoch: u64, signer: String, trusted: String },

    /// A root older than one seen before: the directory is being rolled back (or, for a given
    /// root, the root is another server's).
    #[error("ROLLBACK: the directory presents epoch {presented}{}", seen_in.rollback(*seen))]
    Rollback { seen: u64, presented: u64, seen_in: SeenIn },

    /// Two roots for one epoch: the directory shows different histories to different clients.
    #[error("FORK: the directory presents root {presented} for epoch {epoch}, {}", seen_in.fork(seen))]
    Fork { epoch: u64, seen: String, presented: String, seen_in: SeenIn },

    /// The VRF key (what hides which ids exist, and binds labels to positions) changed.
    #[error("the directory's VRF key changed at epoch {epoch}; its entries cannot be compared with earlier ones")]
    VrfKeyChanged { epoch: u64 },

    /// The answer is about another user than the one asked for.
    #[error("the directory answered about user {presented} when asked about {asked}")]
    WrongUser { asked: String, presented: String },

    /// The answer names a key the proof does not prove.
    #[error("the directory's answer names a key for {user} that its proof does not prove")]
    ValueMismatch { user: String },

    /// The answer is proven against another root than the one it carries.
    #[error("the directory's answer for {user} carries root {carried} but is checked against epoch {expected}")]
    OtherRoot { user: String, carried: u64, expected: u64 },

    /// The lookup proof itself does not verify.
    #[error("the directory's proof of the key of {user} does not verify: {reason}")]
    LookupProof { user: String, reason: String },

    /// The history proof does not verify.
    #[error("the directory's proof of the key history of {user} does not verify: {reason}")]
    HistoryProof { user: String, reason: String },

    /// The directory proves a key, and another one was given elsewhere (`GET /connect`).
    #[error(
        "the directory proves another key for {user} than the server gave: nothing is sealed to a key the \
         directory does not prove"
    )]
    KeyDiffers { user: String },

    /// An audit answer that does not cover what was asked (or covers nothing).
    #[error("the directory's audit answer covers epochs {from}..{to}, asked for {asked_from}..{asked_to}")]
    AuditRange { asked_from: u64, asked_to: u64, from: u64, to: u64 },

    /// The append-only proof between two roots does not verify: entries were changed or removed.
    #[error("the directory is NOT append-only between epochs {from} and {to}: {reason}")]
    AppendOnly { from: u64, to: u64, reason: String },
}

/// Where the root a [`VerifyError::Rollback`] or a [`VerifyError::Fork`] contradicts was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeenIn {
    /// The root this client verified and keeps.
    KeptRoot,
    /// A root given to compare with: what another client verified (`enigma audit --root`), by its
    /// epoch and hash.
    GivenRoot,
}

/// The ends of the two messages, which say where the contradicted root was seen.
impl SeenIn {
    fn rollback(self, seen: u64) -> String {
        match self {
            SeenIn::KeptRoot => {
                format!(", older than epoch {seen} this client already verified; it may be hiding keys published since")
            }
            SeenIn::GivenRoot => format!(
                " as its newest, older than epoch {seen} of the root given to compare with: the directory was rolled \
                 back, or the root given is another server's"
            ),
        }
    }

    fn fork(self, seen: &str) -> String {
        match self {
            SeenIn::KeptRoot => format!(
                "but this client verified root {seen} for it; it may be showing different keys to different people"
            ),
            SeenIn::GivenRoot => format!(
                "but the root given to compare with is {seen}: if it was copied from another client's audit of this \
                 server, the two were shown different directories (it may be showing different keys to different \
                 people)"
            ),
        }
    }
}

impl VerifyError {
    /// A stable name for the kind of refusal (what the page decides on, and shows beside the text).
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::Undecodable(_) => "undecodable",
            VerifyError::BadSignature { .. } => "bad_signature",
            VerifyError::UntrustedSigner { .. } => "untrusted_signer",
            VerifyError::Rollback { .. } => "rollback",
            VerifyError::Fork { .. } => "fork",
            VerifyError::VrfKeyChanged { .. } => "vrf_key_changed",
            VerifyError::WrongUser { .. } => "wrong_user",
            VerifyError::ValueMismatch { .. } => "value_mismatch",
            VerifyError::OtherRoot { .. } => "other_root",
            VerifyError::LookupProof { .. } => "lookup_proof",
            VerifyError::HistoryProof { .. } => "history_proof",
            VerifyError::KeyDiffers { .. } => "key_differs",
            VerifyError::AuditRange { .. } => "audit_range",
            VerifyError::AppendOnly { .. } => "append_only",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refusal says whose root it contradicts: this client's, or one given to compare with.
    #[test]
    fn a_fork_or_a_rollback_says_where_the_other_root_was_seen() {
        let fork = |seen_in| VerifyError::Fork { epoch: 7, seen: "aa".into(), presented: "bb".into(), seen_in };
        let kept = fork(SeenIn::KeptRoot).to_string();
        assert!(kept.starts_with("FORK: the directory presents root bb for epoch 7, but this client verified root aa"));
        let given = fork(SeenIn::GivenRoot).to_string();
        assert!(given.contains("for epoch 7, but the root given to compare with is aa:"), "{given}");
        let rollback = |seen_in| VerifyError::Rollback { seen: 9, presented: 4, seen_in };
        let kept = rollback(SeenIn::KeptRoot).to_string();
        assert!(kept.contains("presents epoch 4, older than epoch 9 this client already verified"), "{kept}");
        let given = rollback(SeenIn::GivenRoot).to_string();
        assert!(given.contains("epoch 4 as its newest, older than epoch 9 of the root given"), "{given}");
        assert_eq!((fork(SeenIn::GivenRoot).kind(), rollback(SeenIn::GivenRoot).kind()), ("fork", "rollback"));
    }
}
