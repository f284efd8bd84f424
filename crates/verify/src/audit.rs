//! The append-only check between two roots: every root in the range signed and chained from the
//! kept one, and akd's append-only proof for each step (nothing changed or removed, only added).
//!
//! akd's auditor (`akd::auditor::audit_verify`) rebuilds the tree of each step in its in-memory
//! storage and spawns its insertions as tokio tasks: [`verify_audit`] must run inside a tokio
//! runtime (a current-thread one will do; the page builds one, see `wasm`).

use crate::Config;
use crate::error::{SeenIn, VerifyError};
use crate::proof::decode_audit;
use crate::root::{Signers, VerifiedRoot, verify_root};
use crate::wire::AuditAnswer;

/// Verifies `answer` to a request for `start.epoch..asked_to`: returns the verified roots of
/// `start.epoch + 1..=answer.to` (the relay may stop short of `asked_to`; ask again from there).
pub async fn verify_audit(
    answer: &AuditAnswer,
    start: &VerifiedRoot,
    asked_to: u64,
    signers: &Signers,
) -> Result<Vec<VerifiedRoot>, VerifyError> {
    let (from, to) = (answer.from, answer.to);
    let range = || VerifyError::AuditRange { asked_from: start.epoch, asked_to, from, to };
    // `to < u64::MAX` keeps akd's `epoch + 1` from overflowing on a hostile answer.
    if from != start.epoch || to <= from || to > asked_to || to == u64::MAX {
        return Err(range());
    }
    if answer.roots.len() as u64 != to - from + 1 {
        return Err(range());
    }
    let mut verified: Vec<VerifiedRoot> = Vec::with_capacity(answer.roots.len());
    for (expected, root) in (from..=to).zip(&answer.roots) {
        if root.epoch != expected {
            return Err(range());
        }
        // Signed, by a pinned key if keys are pinned; by whichever key otherwise: the chain from
        // `start` (checked below) is what makes these roots the kept directory's.
        let root = verify_root(root, signers)?;
        if root.vrf_public_key != start.vrf_public_key {
            return Err(VerifyError::VrfKeyChanged { epoch: root.epoch });
        }
        verified.push(root);
    }
    if verified[0].root_hash != start.root_hash {
        return Err(VerifyError::Fork {
            epoch: from,
            seen: start.hash_hex(),
            presented: verified[0].hash_hex(),
            seen_in: SeenIn::KeptRoot,
        });
    }
    let proof = decode_audit(&answer.proof)?;
    let failed = |reason: String| VerifyError::AppendOnly { from, to, reason };
    if !proof.epochs.iter().copied().eq(from..to) {
        return Err(failed(format!("the proof covers epochs {:?}", proof.epochs)));
    }
    let hashes = verified.iter().map(|root| root.root_hash).collect();
    akd::auditor::audit_verify::<Config>(hashes, proof).await.map_err(|e| failed(e.to_string()))?;
    verified.remove(0);
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof::encode_audit;
    use crate::testing::{TestDirectory, sign_root};
    use ed25519_dalek::SigningKey;

    async fn directory() -> TestDirectory {
        let mut directory = TestDirectory::new().await;
        directory.publish(&[("alice", "key-a1")]).await;
        directory.publish(&[("bob", "key-b1")]).await;
        directory.publish(&[("alice", "key-a2"), ("carol", "key-c1")]).await;
        directory.publish(&[("dave", "key-d1")]).await;
        directory
    }

    fn start(directory: &TestDirectory, epoch: u64) -> VerifiedRoot {
        verify_root(&directory.root(epoch), &Signers::FirstSeen).unwrap()
    }

    #[tokio::test]
    async fn an_append_only_range_verifies() {
        let directory = directory().await;
        let answer = directory.audit(1, 4).await;
        let roots = verify_audit(&answer, &start(&directory, 1), 4, &Signers::FirstSeen).await.unwrap();
        assert_eq!(roots.iter().map(|r| r.epoch).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(roots[2].signed, directory.root(4));
        // A shorter answer than asked is fine: the client asks again from its end.
        let short = directory.audit(2, 3).await;
        let roots = verify_audit(&short, &start(&directory, 2), 4, &Signers::FirstSeen).await.unwrap();
        assert_eq!(roots.len(), 1);
    }

    #[tokio::test]
    async fn ranges_that_are_not_what_was_asked_are_refused() {
        let directory = directory().await;
        let answer = directory.audit(1, 4).await;
        let one = start(&directory, 1);
        let s = Signers::FirstSeen;
        // Past what was asked, from elsewhere, or empty.
        assert!(matches!(verify_audit(&answer, &one, 3, &s).await, Err(VerifyError::AuditRange { .. })));
        assert!(matches!(
            verify_audit(&answer, &start(&directory, 2), 4, &s).await,
            Err(VerifyError::AuditRange { .. })
        ));
        let mut empty = answer.clone();
        empty.to = 1;
        empty.roots.truncate(1);
        assert!(matches!(verify_audit(&empty, &one, 4, &s).await, Err(VerifyError::AuditRange { .. })));
        // A gap: a root left out, or the roots out of order.
        let mut gap = answer.clone();
        gap.roots.remove(2);
        assert!(matches!(verify_audit(&gap, &one, 4, &s).await, Err(VerifyError::AuditRange { .. })));
        let mut shuffled = answer.clone();
        shuffled.roots.swap(1, 2);
        assert!(matches!(verify_audit(&shuffled, &one, 4, &s).await, Err(VerifyError::AuditRange { .. })));
        // A hostile `to`.
        let mut huge = answer.clone();
        huge.to = u64::MAX;
        assert!(verify_audit(&huge, &one, u64::MAX, &s).await.is_err());
    }

    #[tokio::test]
    async fn a_range_not_chained_from_the_kept_root_is_a_fork() {
        let directory = directory().await;
        let mut other = TestDirectory::new().await;
        other.publish(&[("alice", "key-mallory")]).await;
        let forked = verify_root(&other.root(1), &Signers::FirstSeen).unwrap();
        let answer = directory.audit(1, 4).await;
        let error = verify_audit(&answer, &forked, 4, &Signers::FirstSeen).await.unwrap_err();
        assert!(matches!(error, VerifyError::Fork { epoch: 1, .. }), "{error}");
    }

    #[tokio::test]
    async fn every_root_in_the_range_must_be_signed_and_by_a_pinned_key_if_pinned() {
        let directory = directory().await;
        let mut answer = directory.audit(1, 4).await;
        let intruder = SigningKey::from_bytes(&[3u8; 32]);
        let hash: [u8; 32] = hex::decode(&answer.roots[2].root_hash).unwrap().try_into().unwrap();
        answer.roots[2] = sign_root(&intruder, "x", 3, &hash, &directory.vrf_public_key());
        // The same root signed by another key (a rotation): on the chain, so taken first-seen...
        let roots = verify_audit(&answer, &start(&directory, 1), 4, &Signers::FirstSeen).await.unwrap();
        assert_eq!(roots[1].signing_key, intruder.verifying_key().to_bytes());
        // ...but not when the directory's key is pinned.
        let pinned = Signers::Pinned(vec![directory.signing_key()]);
        let error = verify_audit(&answer, &start(&directory, 1), 4, &pinned).await.unwrap_err();
        assert!(matches!(error, VerifyError::UntrustedSigner { epoch: 3, .. }), "{error}");
        // Another root, signed by another key: the new signer buys nothing, the chain breaks.
        answer.roots[2] = sign_root(&intruder, "x", 3, &[5u8; 32], &directory.vrf_public_key());
        let error = verify_audit(&answer, &start(&directory, 1), 4, &Signers::FirstSeen).await.unwrap_err();
        assert!(matches!(error, VerifyError::AppendOnly { .. }), "{error}");
        let mut unsigned = directory.audit(1, 4).await;
        unsigned.roots[3].signature = unsigned.roots[1].signature.clone();
        let error = verify_audit(&unsigned, &start(&directory, 1), 4, &Signers::FirstSeen).await.unwrap_err();
        assert!(matches!(error, VerifyError::BadSignature { epoch: 4 }), "{error}");
    }

    #[tokio::test]
    async fn a_history_that_was_rewritten_is_not_append_only() {
        // The same first epoch, then two different continuations: one honest, one where the
        // directory changed what it had published (alice's key rewritten in place is not
        // expressible in akd, so the rewrite is a second directory that diverges).
        let honest = directory().await;
        let mut rewritten = TestDirectory::new().await;
        rewritten.publish(&[("alice", "key-a1")]).await;
        rewritten.publish(&[("bob", "key-mallory")]).await;
        let mut answer = honest.audit(1, 2).await;
        // Roots of the rewritten directory, validly signed: only the proof can tell.
        answer.roots = vec![rewritten.root(1), rewritten.root(2)];
        let error = verify_audit(&answer, &start(&rewritten, 1), 2, &Signers::FirstSeen).await.unwrap_err();
        assert!(matches!(error, VerifyError::AppendOnly { .. }), "{error}");

        // A proof for other epochs than the range's.
        let mut proof = decode_audit(&honest.audit(1, 3).await.proof).unwrap();
        proof.epochs = vec![2, 3];
        let mut moved = honest.audit(1, 3).await;
        moved.proof = encode_audit(&proof).unwrap();
        let error = verify_audit(&moved, &start(&honest, 1), 3, &Signers::FirstSeen).await.unwrap_err();
        assert!(matches!(error, VerifyError::AppendOnly { .. }), "{error}");
    }

    #[tokio::test]
    async fn tampered_audit_proofs_are_refused_without_panicking() {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        let directory = directory().await;
        let answer = directory.audit(2, 3).await;
        let two = start(&directory, 2);
        let bytes = STANDARD.decode(&answer.proof).unwrap();
        let mut refused = 0;
        let step = (bytes.len() / 64).max(1);
        let mut tried = 0;
        for i in (0..bytes.len()).step_by(step) {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            let mut tampered = answer.clone();
            tampered.proof = STANDARD.encode(&flipped);
            tried += 1;
            if verify_audit(&tampered, &two, 3, &Signers::FirstSeen).await.is_err() {
                refused += 1;
            }
        }
        assert!(refused >= tried * 9 / 10, "{refused} of {tried} flips refused");
        let mut truncated = answer.clone();
        truncated.proof = STANDARD.encode(&bytes[..bytes.len() / 2]);
        assert!(verify_audit(&truncated, &two, 3, &Signers::FirstSeen).await.is_err());
    }
}
