//! Answers built the way the relay builds them, by akd's own in-memory directory with fixed keys:
//! what the checks are tested against, what the committed fixtures are made from, and what the
//! relay's tests can compare its answers with.
//!
//! The keys are fixed so that the answers are the same on every run: akd's hard-coded test VRF
//! key, and an Ed25519 signing key from a fixed seed. Never use them outside tests.

use akd::Directory;
use akd::ecvrf::{HardCodedAkdVRF, VRFKeyStorage};
use akd::storage::StorageManager;
use akd::storage::memory::AsyncInMemoryDatabase;
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, HistoryParams};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};

use crate::Config;
use crate::proof::{encode_audit, encode_history, encode_lookup};
use crate::wire::{AuditAnswer, HistoryAnswer, LookupAnswer, SignedRoot, root_message};

/// The seed of the test signing key.
pub const SIGNING_SEED: [u8; 32] = [0x5e; 32];
/// The test signing key's id.
pub const KEY_ID: &str = "test-1";

type Akd = Directory<Config, AsyncInMemoryDatabase, HardCodedAkdVRF>;

/// A directory in memory that publishes epochs and answers like the relay.
pub struct TestDirectory {
    akd: Akd,
    signing: SigningKey,
    key_id: String,
    vrf_public_key: [u8; 32],
    /// The signed root of epoch `i + 1` at `i`.
    roots: Vec<SignedRoot>,
}

impl TestDirectory {
    /// An empty directory (epoch 0) with the fixed keys.
    pub async fn new() -> TestDirectory {
        TestDirectory::with_signing_key(SigningKey::from_bytes(&SIGNING_SEED)).await
    }

    /// An empty directory whose roots `signing` signs.
    pub async fn with_signing_key(signing: SigningKey) -> TestDirectory {
        let storage = StorageManager::new_no_cache(AsyncInMemoryDatabase::new());
        let akd = Akd::new(storage, HardCodedAkdVRF, AzksParallelismConfig::default()).await.expect("in memory");
        let vrf = HardCodedAkdVRF.get_vrf_public_key().await.expect("hard-coded key");
        let vrf_public_key = *vrf.as_bytes();
        TestDirectory { akd, signing, key_id: KEY_ID.to_owned(), vrf_public_key, roots: Vec::new() }
    }

    /// Publishes one epoch with `entries` (user id, public key) and returns its signed root.
    pub async fn publish(&mut self, entries: &[(&str, &str)]) -> SignedRoot {
        let updates = entries.iter().map(|(user, key)| (AkdLabel::from(*user), AkdValue::from(*key))).collect();
        let published = self.akd.publish(updates).await.expect("distinct, non-empty updates");
        let root = sign_root(&self.signing, &self.key_id, published.epoch(), &published.hash(), &self.vrf_public_key);
        assert_eq!(published.epoch() as usize, self.roots.len() + 1, "one epoch per publish");
        self.roots.push(root.clone());
        root
    }

    /// Rotates the signing key the way the relay does: every root, old epochs too, is signed by
    /// `signing` from now on (the roots themselves do not change).
    pub fn rotate(&mut self, signing: SigningKey, key_id: &str) {
        for root in &mut self.roots {
            let hash: [u8; 32] = hex::decode(&root.root_hash).expect("hex").try_into().expect("32 bytes");
            *root = sign_root(&signing, key_id, root.epoch, &hash, &self.vrf_public_key);
        }
        (self.signing, self.key_id) = (signing, key_id.to_owned());
    }

    /// The signed root of `epoch`.
    pub fn root(&self, epoch: u64) -> SignedRoot {
        self.roots[epoch as usize - 1].clone()
    }

    /// The latest signed root.
    pub fn latest(&self) -> SignedRoot {
        self.roots.last().cloned().expect("published at least once")
    }

    pub fn signing_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn vrf_public_key(&self) -> [u8; 32] {
        self.vrf_public_key
    }

    /// `GET /directory/lookup/{user}`, against the latest root; `None` while `user` is not
    /// published (the relay's 404).
    pub async fn lookup(&self, user: &str) -> Option<LookupAnswer> {
        let (proof, epoch) = self.akd.lookup(AkdLabel::from(user)).await.ok()?;
        Some(LookupAnswer {
            root: self.root(epoch.epoch()),
            user_id: user.to_owned(),
            public_key: String::from_utf8(proof.value.0.clone()).expect("UTF-8 key"),
            version: proof.version,
            proof: encode_lookup(&proof).expect("a proof akd made encodes"),
        })
    }

    /// `GET /directory/history/{user}`, against the latest root; `None` while `user` is not
    /// published.
    pub async fn history(&self, user: &str) -> Option<HistoryAnswer> {
        let label = AkdLabel::from(user);
        let (proof, epoch) = self.akd.key_history(&label, HistoryParams::default()).await.ok()?;
        Some(HistoryAnswer {
            root: self.root(epoch.epoch()),
            user_id: user.to_owned(),
            proof: encode_history(&proof).expect("a proof akd made encodes"),
        })
    }

    /// `GET /directory/audit/{from}/{to}`.
    pub async fn audit(&self, from: u64, to: u64) -> AuditAnswer {
        let proof = self.akd.audit(from, to).await.expect("published epochs");
        AuditAnswer {
            from,
            to,
            roots: (from..=to).map(|e| self.root(e)).collect(),
            proof: encode_audit(&proof).expect("a proof akd made encodes"),
        }
    }
}

/// The root of `epoch` signed by `key`, as the relay signs it.
pub fn sign_root(key: &SigningKey, key_id: &str, epoch: u64, root_hash: &[u8; 32], vrf: &[u8; 32]) -> SignedRoot {
    let signature = key.sign(&root_message(epoch, root_hash, vrf));
    SignedRoot {
        epoch,
        root_hash: hex::encode(root_hash),
        vrf_public_key: STANDARD.encode(vrf),
        key_id: key_id.to_owned(),
        signing_key: STANDARD.encode(key.verifying_key().to_bytes()),
        signature: STANDARD.encode(signature.to_bytes()),
    }
}
