//! The directory's two secrets: the Ed25519 key that signs every root served
//! (`directory.signing_keys`, the first; else one generated once for the deployment) and the
//! VRF key that hides which ids exist (`directory.vrf_key`; else generated once). Generated
//! ones are kept by the engine (Redis, the embedded engine's data file), so every replica and
//! every restart uses the same.

use std::sync::Arc;

use akd::ecvrf::{VRFKeyStorage, VrfError};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use enigma_verify::wire::{SignedRoot, root_message};
use sha2::{Digest, Sha256};

use super::settings::{DirectorySettings, SigningEntry, encode_seed, parse_signing_entry};
use crate::engine::Engine;
use crate::engine::tree::batch::Secret;
use crate::engine::unavailable::Unavailable;

/// Signs roots with the directory's signing key.
pub struct RootSigner {
    id: String,
    key: SigningKey,
}

impl RootSigner {
    pub fn new(entry: &SigningEntry) -> Self {
        Self { id: entry.id.clone(), key: SigningKey::from_bytes(&entry.seed) }
    }

    /// `epoch`'s root, signed over `enigma_verify::wire::root_message`.
    pub fn sign(&self, epoch: u64, root_hash: &[u8; 32], vrf_public_key: &[u8; 32]) -> SignedRoot {
        let signature = self.key.sign(&root_message(epoch, root_hash, vrf_public_key));
        SignedRoot {
            epoch,
            root_hash: hex::encode(root_hash),
            vrf_public_key: STANDARD.encode(vrf_public_key),
            key_id: self.id.clone(),
            signing_key: STANDARD.encode(self.key.verifying_key().as_bytes()),
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }
}

/// The VRF secret, held for the process's life (akd asks for it on every label it computes).
#[derive(Clone)]
pub struct VrfKey(Arc<[u8; 32]>);

#[async_trait]
impl VRFKeyStorage for VrfKey {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

/// The signing key and the VRF key: configured, or the deployment's generated ones.
pub async fn load(settings: &DirectorySettings, engine: &Engine) -> Result<(RootSigner, VrfKey), Unavailable> {
    let signing = match settings.parsed_signing_keys().map_err(Unavailable::said)?.into_iter().next() {
        Some(entry) => entry,
        None => {
            let seed = random_seed();
            let id = format!("auto-{}", hex::encode(&Sha256::digest(seed)[..4]));
            let stored = engine.shared_secret(Secret::Signing, &format!("{id}:{}", encode_seed(&seed))).await?;
            parse_signing_entry(&stored)
                .map_err(|e| Unavailable::said(format!("the stored directory signing key is unusable: {e}")))?
        }
    };
    let vrf = match settings.parsed_vrf_key().map_err(Unavailable::said)? {
        Some(seed) => seed,
        None => {
            let stored = engine.shared_secret(Secret::Vrf, &encode_seed(&random_seed())).await?;
            let bytes = STANDARD.decode(stored.trim()).unwrap_or_default();
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| Unavailable::said("the stored directory VRF key is not 32 bytes of base64"))?
        }
    };
    Ok((RootSigner::new(&signing), VrfKey(Arc::new(vrf))))
}

/// 32 bytes from the operating system's generator. Its failure is not something any input can
/// cause, and no key can be made without it.
fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the operating system's random generator failed");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    #[test]
    fn a_signed_root_verifies_with_the_key_it_names() {
        let signer = RootSigner::new(&SigningEntry { id: "k1".into(), seed: [5; 32] });
        let root = signer.sign(7, &[1; 32], &[2; 32]);
        assert_eq!((root.epoch, root.key_id.as_str()), (7, "k1"));
        let key: [u8; 32] = STANDARD.decode(&root.signing_key).unwrap().try_into().unwrap();
        let signature: [u8; 64] = STANDARD.decode(&root.signature).unwrap().try_into().unwrap();
        let key = VerifyingKey::from_bytes(&key).unwrap();
        let message = root_message(7, &[1; 32], &[2; 32]);
        key.verify(&message, &Signature::from_bytes(&signature)).unwrap();
        assert!(key.verify(&root_message(8, &[1; 32], &[2; 32]), &Signature::from_bytes(&signature)).is_err());
    }
}
