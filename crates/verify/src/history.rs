//! Every version of a user's key, proven against a verified root: what the key's owner checks
//! about themself on every connect, since nobody else can tell their key from an impostor's.
//! The relay answers with akd's default history parameters (every version).

use akd_core::verify::history::HistoryVerificationParams;
use akd_core::{AkdLabel, verify::key_history_verify};

use crate::Config;
use crate::error::VerifyError;
use crate::proof::decode_history;
use crate::root::VerifiedRoot;
use crate::wire::HistoryAnswer;

/// One version of a user's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub version: u64,
    /// The epoch it was published in.
    pub epoch: u64,
    /// The value's bytes as text (a value that is not UTF-8 is shown with replacement characters:
    /// it is nobody's key either way).
    pub public_key: String,
}

/// Verifies `answer` for `user` against `root`; returns every version, newest first.
pub fn verify_history(answer: &HistoryAnswer, user: &str, root: &VerifiedRoot) -> Result<Vec<KeyVersion>, VerifyError> {
    if answer.user_id != user {
        return Err(VerifyError::WrongUser { asked: user.to_owned(), presented: answer.user_id.clone() });
    }
    if !root.is(&answer.root) {
        return Err(VerifyError::OtherRoot { user: user.to_owned(), carried: answer.root.epoch, expected: root.epoch });
    }
    let proof = decode_history(&answer.proof)?;
    let results = key_history_verify::<Config>(
        &root.vrf_public_key,
        root.root_hash,
        root.epoch,
        AkdLabel::from(user),
        proof,
        HistoryVerificationParams::default(),
    )
    .map_err(|e| VerifyError::HistoryProof { user: user.to_owned(), reason: e.to_string() })?;
    Ok(results
        .into_iter()
        .map(|r| KeyVersion {
            version: r.version,
            epoch: r.epoch,
            public_key: String::from_utf8_lossy(&r.value.0).into_owned(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof::encode_history;
    use crate::root::{Signers, verify_root};
    use crate::testing::TestDirectory;

    async fn directory() -> TestDirectory {
        let mut directory = TestDirectory::new().await;
        directory.publish(&[("alice", "key-a1"), ("bob", "key-b1")]).await;
        directory.publish(&[("carol", "key-c1")]).await;
        directory.publish(&[("alice", "key-mallory")]).await;
        directory
    }

    #[tokio::test]
    async fn the_history_shows_every_version() {
        let directory = directory().await;
        let answer = directory.history("alice").await.unwrap();
        let root = verify_root(&answer.root, &Signers::FirstSeen).unwrap();
        let versions = verify_history(&answer, "alice", &root).unwrap();
        let seen: Vec<(u64, u64, &str)> =
            versions.iter().map(|v| (v.version, v.epoch, v.public_key.as_str())).collect();
        assert_eq!(seen, [(2, 3, "key-mallory"), (1, 1, "key-a1")]);
        let bob = directory.history("bob").await.unwrap();
        assert_eq!(verify_history(&bob, "bob", &root).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_history_with_a_version_left_out_is_refused() {
        let directory = directory().await;
        let mut answer = directory.history("alice").await.unwrap();
        let root = verify_root(&answer.root, &Signers::FirstSeen).unwrap();
        let mut proof = decode_history(&answer.proof).unwrap();
        // Hide the impostor's key: show only the first version.
        proof.update_proofs.remove(0);
        answer.proof = encode_history(&proof).unwrap();
        let error = verify_history(&answer, "alice", &root).unwrap_err();
        assert!(matches!(error, VerifyError::HistoryProof { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_swapped_value_or_user_is_refused() {
        let directory = directory().await;
        let answer = directory.history("alice").await.unwrap();
        let root = verify_root(&answer.root, &Signers::FirstSeen).unwrap();
        let mut proof = decode_history(&answer.proof).unwrap();
        proof.update_proofs[0].value = akd_core::AkdValue::from("key-a1");
        let mut swapped = answer.clone();
        swapped.proof = encode_history(&proof).unwrap();
        assert!(matches!(verify_history(&swapped, "alice", &root), Err(VerifyError::HistoryProof { .. })));
        assert!(matches!(verify_history(&answer, "bob", &root), Err(VerifyError::WrongUser { .. })));
        let mut relabelled = directory.history("bob").await.unwrap();
        relabelled.user_id = "alice".into();
        assert!(matches!(verify_history(&relabelled, "alice", &root), Err(VerifyError::HistoryProof { .. })));
    }
}
