//! A user's current key, proven against a verified root: the VRF hides the label, the Merkle
//! paths show the version exists and is the latest, and the commitment binds the value. The
//! value the proof commits to must be the key the answer names, and the label the user asked for.

use akd_core::{AkdLabel, verify::lookup_verify};

use crate::Config;
use crate::error::VerifyError;
use crate::proof::decode_lookup;
use crate::root::VerifiedRoot;
use crate::wire::LookupAnswer;

/// A key the directory proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenKey {
    pub user_id: String,
    /// Exactly as `GET /connect/{userId}` returns it.
    pub public_key: String,
    pub version: u64,
    /// The epoch of the root it was proven against.
    pub epoch: u64,
}

impl ProvenKey {
    /// Whether `key` (what `GET /connect` gave) is the proven key, byte for byte.
    pub fn confirm(&self, key: &str) -> Result<(), VerifyError> {
        if self.public_key == key { Ok(()) } else { Err(VerifyError::KeyDiffers { user: self.user_id.clone() }) }
    }
}

/// Verifies `answer` for `user` against `root` (which the client verified and keeps: the answer's
/// own root must be that one).
pub fn verify_lookup(answer: &LookupAnswer, user: &str, root: &VerifiedRoot) -> Result<ProvenKey, VerifyError> {
    if answer.user_id != user {
        return Err(VerifyError::WrongUser { asked: user.to_owned(), presented: answer.user_id.clone() });
    }
    if !root.is(&answer.root) {
        return Err(VerifyError::OtherRoot { user: user.to_owned(), carried: answer.root.epoch, expected: root.epoch });
    }
    let proof = decode_lookup(&answer.proof)?;
    if proof.value.0 != answer.public_key.as_bytes() || proof.version != answer.version {
        return Err(VerifyError::ValueMismatch { user: user.to_owned() });
    }
    let label = AkdLabel::from(user);
    let result = lookup_verify::<Config>(&root.vrf_public_key, root.root_hash, root.epoch, label, proof)
        .map_err(|e| VerifyError::LookupProof { user: user.to_owned(), reason: e.to_string() })?;
    // What was verified is the proof's value; it was compared with the answer's above.
    if result.value.0 != answer.public_key.as_bytes() {
        return Err(VerifyError::ValueMismatch { user: user.to_owned() });
    }
    Ok(ProvenKey {
        user_id: user.to_owned(),
        public_key: answer.public_key.clone(),
        version: result.version,
        epoch: root.epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof::encode_lookup;
    use crate::root::{Signers, verify_root};
    use crate::testing::TestDirectory;

    async fn directory() -> TestDirectory {
        let mut directory = TestDirectory::new().await;
        directory.publish(&[("alice", "key-a1"), ("bob", "key-b1")]).await;
        directory.publish(&[("alice", "key-a2"), ("carol", "key-c1")]).await;
        directory
    }

    fn root_of(answer: &LookupAnswer) -> VerifiedRoot {
        verify_root(&answer.root, &Signers::FirstSeen).unwrap()
    }

    #[tokio::test]
    async fn a_lookup_proves_the_latest_key() {
        let directory = directory().await;
        let answer = directory.lookup("alice").await.unwrap();
        let proven = verify_lookup(&answer, "alice", &root_of(&answer)).unwrap();
        assert_eq!((proven.public_key.as_str(), proven.version, proven.epoch), ("key-a2", 2, 2));
        proven.confirm("key-a2").unwrap();
        assert!(matches!(proven.confirm("key-a1"), Err(VerifyError::KeyDiffers { .. })));
        let bob = directory.lookup("bob").await.unwrap();
        assert_eq!(verify_lookup(&bob, "bob", &root_of(&bob)).unwrap().version, 1);
    }

    #[tokio::test]
    async fn a_swapped_value_is_refused() {
        let directory = directory().await;
        let mut answer = directory.lookup("alice").await.unwrap();
        let root = root_of(&answer);
        answer.public_key = "key-mallory".into();
        assert!(matches!(verify_lookup(&answer, "alice", &root), Err(VerifyError::ValueMismatch { .. })));

        // The value swapped inside the proof too: the commitment no longer opens.
        let mut proof = decode_lookup(&answer.proof).unwrap();
        proof.value = akd_core::AkdValue::from("key-mallory");
        answer.proof = encode_lookup(&proof).unwrap();
        let error = verify_lookup(&answer, "alice", &root).unwrap_err();
        assert!(matches!(error, VerifyError::LookupProof { .. }), "{error}");

        // An older version of the key, with its own (older) proof fields, is not the latest.
        let mut old = directory.lookup("alice").await.unwrap();
        let mut proof = decode_lookup(&old.proof).unwrap();
        proof.version = 1;
        proof.value = akd_core::AkdValue::from("key-a1");
        old.public_key = "key-a1".into();
        old.version = 1;
        old.proof = encode_lookup(&proof).unwrap();
        assert!(verify_lookup(&old, "alice", &root).is_err());
    }

    #[tokio::test]
    async fn another_users_answer_is_refused() {
        let directory = directory().await;
        let bob = directory.lookup("bob").await.unwrap();
        let root = root_of(&bob);
        // Presented as is: the answer says whom it is about.
        assert!(matches!(verify_lookup(&bob, "alice", &root), Err(VerifyError::WrongUser { .. })));
        // Relabelled: the VRF label is not alice's.
        let mut relabelled = bob.clone();
        relabelled.user_id = "alice".into();
        let error = verify_lookup(&relabelled, "alice", &root).unwrap_err();
        assert!(matches!(error, VerifyError::LookupProof { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_proof_against_another_root_is_refused() {
        let mut directory = directory().await;
        let answer = directory.lookup("bob").await.unwrap();
        directory.publish(&[("dave", "key-d1")]).await;
        let newer = directory.lookup("bob").await.unwrap();
        let root = root_of(&newer);
        // Carrying its own (older) root: not the kept one.
        assert!(matches!(verify_lookup(&answer, "bob", &root), Err(VerifyError::OtherRoot { .. })));
        // Carrying the kept root with the older proof: the proof does not verify against it.
        let mut stale = answer.clone();
        stale.root = newer.root.clone();
        assert!(matches!(verify_lookup(&stale, "bob", &root), Err(VerifyError::LookupProof { .. })));
    }

    #[tokio::test]
    async fn tampered_proof_bytes_are_refused_without_panicking() {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        let directory = directory().await;
        let answer = directory.lookup("alice").await.unwrap();
        let root = root_of(&answer);
        let bytes = STANDARD.decode(&answer.proof).unwrap();
        let (mut refused, mut tried) = (0, 0);
        for i in (0..bytes.len()).step_by((bytes.len() / 96).max(1)) {
            tried += 1;
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            let mut tampered = answer.clone();
            tampered.proof = STANDARD.encode(&flipped);
            if verify_lookup(&tampered, "alice", &root).is_err() {
                refused += 1;
            }
        }
        // Every bit the proof carries matters, except where protobuf allows another spelling.
        assert!(refused >= tried * 9 / 10, "{refused} of {tried} flips refused");
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            let mut truncated = answer.clone();
            truncated.proof = STANDARD.encode(&bytes[..cut]);
            assert!(verify_lookup(&truncated, "alice", &root).is_err(), "cut at {cut}");
        }
        let mut garbage = answer.clone();
        garbage.proof = "not base64!".into();
        assert!(matches!(verify_lookup(&garbage, "alice", &root), Err(VerifyError::Undecodable(_))));
    }
}
