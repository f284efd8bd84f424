//! A signed root: the one check every other rests on. A root is taken only with a valid Ed25519
//! signature by the key it names, and that key must be one the client trusts when it pins keys
//! ([`Signers`]); what comes out is a [`VerifiedRoot`], the only form of a root the other checks
//! accept.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::error::VerifyError;
use crate::wire::{SignedRoot, root_message};

/// Bytes of a root hash, a VRF public key and an Ed25519 public key.
const KEY_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// Whose signature makes a root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Signers {
    /// Any key, as long as the root's signature verifies with the key it names: the signer is
    /// evidence, not the root of trust. What binds a root to the one this client kept is the
    /// chain from it (`keeper`: the same hash for the same epoch, append-only proofs to a newer
    /// one), so a relay may rotate its signing key and a client follows, told of the change.
    #[default]
    FirstSeen,
    /// Only these Ed25519 public keys (configured out of band).
    Pinned(Vec<[u8; KEY_LEN]>),
}

/// A root whose signature verified, its fields decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRoot {
    pub epoch: u64,
    pub root_hash: [u8; KEY_LEN],
    pub vrf_public_key: [u8; KEY_LEN],
    pub signing_key: [u8; KEY_LEN],
    /// The root as it came (what a client keeps, and checks again when it reads it back).
    pub signed: SignedRoot,
}

impl VerifiedRoot {
    pub fn hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

    /// Whether `root` names this root: its epoch and hash (however the hex is cased; the fields
    /// a signature does not cover, like the key id, do not matter).
    pub fn is(&self, root: &SignedRoot) -> bool {
        root.epoch == self.epoch && hex::decode(&root.root_hash).is_ok_and(|hash| hash == self.root_hash)
    }
}

/// Checks `root`'s signature by the key it names, and that the key is pinned when `signers` pins
/// keys. With [`Signers::FirstSeen`] this alone says nothing about whether the root belongs to
/// the directory a client kept a root of: only the keeper's chain does.
pub fn verify_root(root: &SignedRoot, signers: &Signers) -> Result<VerifiedRoot, VerifyError> {
    if root.epoch == 0 {
        return Err(VerifyError::Malformed("epoch 0 (the empty directory) is never published".into()));
    }
    let root_hash: [u8; KEY_LEN] = fixed(&hex::decode(&root.root_hash).ok(), "root hash (hex)")?;
    let vrf_public_key: [u8; KEY_LEN] = fixed(&STANDARD.decode(&root.vrf_public_key).ok(), "VRF key (base64)")?;
    let signing_key: [u8; KEY_LEN] = fixed(&STANDARD.decode(&root.signing_key).ok(), "signing key (base64)")?;
    let signature: [u8; SIGNATURE_LEN] = fixed(&STANDARD.decode(&root.signature).ok(), "signature (base64)")?;

    if let Signers::Pinned(trusted) = signers
        && !trusted.contains(&signing_key)
    {
        return Err(VerifyError::UntrustedSigner {
            epoch: root.epoch,
            signer: STANDARD.encode(signing_key),
            trusted: trusted.iter().map(|k| STANDARD.encode(k)).collect::<Vec<_>>().join(" or "),
        });
    }
    let bad = || VerifyError::BadSignature { epoch: root.epoch };
    let key = VerifyingKey::from_bytes(&signing_key).map_err(|_| bad())?;
    let message = root_message(root.epoch, &root_hash, &vrf_public_key);
    key.verify_strict(&message, &Signature::from_bytes(&signature)).map_err(|_| bad())?;
    Ok(VerifiedRoot { epoch: root.epoch, root_hash, vrf_public_key, signing_key, signed: root.clone() })
}

fn fixed<const N: usize>(bytes: &Option<Vec<u8>>, what: &str) -> Result<[u8; N], VerifyError> {
    bytes
        .as_deref()
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| VerifyError::Malformed(format!("{what} is not {N} bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestDirectory, sign_root};
    use ed25519_dalek::SigningKey;

    async fn a_root() -> (TestDirectory, SignedRoot) {
        let mut directory = TestDirectory::new().await;
        let root = directory.publish(&[("alice", "key-a")]).await;
        (directory, root)
    }

    #[tokio::test]
    async fn a_signed_root_verifies_and_keeps_its_fields() {
        let (directory, root) = a_root().await;
        let verified = verify_root(&root, &Signers::FirstSeen).unwrap();
        assert_eq!(verified.epoch, 1);
        assert_eq!(verified.hash_hex(), root.root_hash);
        assert_eq!(verified.signing_key, directory.signing_key());
        verify_root(&root, &Signers::Pinned(vec![directory.signing_key()])).unwrap();
    }

    #[tokio::test]
    async fn a_root_is_named_by_its_epoch_and_hash_only() {
        let (_, root) = a_root().await;
        let verified = verify_root(&root, &Signers::FirstSeen).unwrap();
        let mut spelled = root.clone();
        spelled.root_hash = root.root_hash.to_uppercase();
        spelled.key_id = "renamed".into();
        assert!(verified.is(&root) && verified.is(&spelled));
        let mut other = root.clone();
        other.root_hash = hex::encode([7u8; 32]);
        assert!(!verified.is(&other));
        other = root.clone();
        other.epoch += 1;
        assert!(!verified.is(&other));
        other.root_hash = "not hex".into();
        assert!(!verified.is(&other));
    }

    #[tokio::test]
    async fn any_changed_field_breaks_the_signature() {
        let (_, root) = a_root().await;
        let mut epoch = root.clone();
        epoch.epoch = 2;
        let mut hash = root.clone();
        hash.root_hash = hex::encode([7u8; 32]);
        let mut vrf = root.clone();
        vrf.vrf_public_key = STANDARD.encode([7u8; 32]);
        for tampered in [epoch, hash, vrf] {
            let error = verify_root(&tampered, &Signers::FirstSeen).unwrap_err();
            assert!(matches!(error, VerifyError::BadSignature { .. }), "{error}");
        }
    }

    #[tokio::test]
    async fn a_root_signed_by_another_key_is_untrusted_only_when_keys_are_pinned() {
        let (directory, root) = a_root().await;
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let hash: [u8; 32] = hex::decode(&root.root_hash).unwrap().try_into().unwrap();
        let forged = sign_root(&other, "other", root.epoch, &hash, &directory.vrf_public_key());
        // Valid by itself, so a first-seen client takes its signature (the keeper decides whether
        // it is on the chain of the kept root)...
        assert_eq!(verify_root(&forged, &Signers::FirstSeen).unwrap().signing_key, other.verifying_key().to_bytes());
        // ...but not against a pinned key.
        let pinned = Signers::Pinned(vec![directory.signing_key()]);
        assert!(matches!(verify_root(&forged, &pinned), Err(VerifyError::UntrustedSigner { .. })));
        // A root that names the trusted key but was signed by another.
        let mut lying = forged.clone();
        lying.signing_key = root.signing_key.clone();
        assert!(matches!(verify_root(&lying, &pinned), Err(VerifyError::BadSignature { .. })));
    }

    #[tokio::test]
    async fn malformed_fields_are_refused_not_panicked_on() {
        let (_, root) = a_root().await;
        let mutations: [fn(&mut SignedRoot); 7] = [
            |r| r.root_hash = "zz".into(),
            |r| r.root_hash = "abcd".into(),
            |r| r.vrf_public_key = "%%%".into(),
            |r| r.signing_key = STANDARD.encode([1u8; 31]),
            |r| r.signature = STANDARD.encode([1u8; 63]),
            |r| r.signature = String::new(),
            |r| r.epoch = 0,
        ];
        for mutate in mutations {
            let mut bad = root.clone();
            mutate(&mut bad);
            assert!(matches!(verify_root(&bad, &Signers::FirstSeen), Err(VerifyError::Malformed(_))));
        }
        // 32 bytes that are not a curve point.
        let mut bad = root.clone();
        bad.signing_key = STANDARD.encode([0xffu8; 32]);
        assert!(verify_root(&bad, &Signers::FirstSeen).is_err());
    }
}
