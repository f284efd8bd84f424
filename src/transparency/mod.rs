//! The verifiable key directory (key transparency): every registration is published in an
//! append-only Auditable Key Directory (`akd`, WhatsApp's configuration) — label the user id,
//! value the public key exactly as `GET /connect/{userId}` returns it — in epochs, each root
//! signed. Clients check lookups, histories and append-only proofs against the roots
//! (`enigma_verify`, docs/protocol.md "The key directory").
//!
//! - `settings`: `[directory]`.
//! - `codec`: akd's records as bytes; `store`: akd's storage over the engine (`engine::tree`).
//! - `keys`: the root signing key and the VRF key.
//! - `publisher`: the epoch loop, on one replica at a time (the engine's lease).
//! - `routes`: `GET /directory/*`.
//!
//! This module answers reads on every replica: each answer's proof is made against the epoch
//! akd read, and the root it carries is that epoch's, so the two always agree.

pub mod codec;
pub mod keys;
pub mod publisher;
pub mod routes;
pub mod settings;
pub mod store;

use std::time::{Duration, Instant};

use akd::errors::{AkdError, StorageError};
use akd::{AkdLabel, AppendOnlyProof, AzksParallelismConfig, Directory, EpochHash, HistoryParams};
use enigma_verify::Config;
use enigma_verify::proof::{ProofEncodeError, encode_audit, encode_history, encode_lookup};
use enigma_verify::wire::{AuditAnswer, HistoryAnswer, LookupAnswer, SignedRoot};

use self::keys::{RootSigner, VrfKey};
use self::settings::DirectorySettings;
use self::store::EngineStore;
use crate::engine::Engine;
use crate::engine::unavailable::Unavailable;
use crate::protocol::UserId;

/// The directory as akd runs it over one engine.
pub type AkdDirectory = Directory<Config, EngineStore, VrfKey>;

/// Why a directory read has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no epoch has been published yet; retry in a moment")]
    NoEpoch,
    #[error("the latest epoch is being recorded; retry in a moment")]
    Unrooted,
    #[error("user not in the key directory (unknown, or registered since the last epoch)")]
    NotPublished,
    #[error("{0}")]
    BadRange(String),
    #[error("key directory unavailable: {0}")]
    Unavailable(String),
    /// A proof akd made could not be written: the server's fault, never answered as an empty proof.
    #[error(transparent)]
    Unencodable(#[from] ProofEncodeError),
}

impl From<Unavailable> for ReadError {
    fn from(e: Unavailable) -> Self {
        ReadError::Unavailable(e.to_string())
    }
}

impl From<AkdError> for ReadError {
    fn from(e: AkdError) -> Self {
        match e {
            AkdError::Storage(StorageError::NotFound(_)) => ReadError::NotPublished,
            other => ReadError::Unavailable(other.to_string()),
        }
    }
}

/// The directory's read side, shared by every request of a replica.
pub struct Transparency {
    engine: Engine,
    reader: AkdDirectory,
    signer: RootSigner,
    vrf: VrfKey,
    vrf_public_key: [u8; 32],
    max_audit_epochs: u64,
    max_audit_entries: usize,
    /// Audit answers open at once (each holds its node cache and its proof so far); more wait
    /// within the request's timeout.
    audits: tokio::sync::Semaphore,
    /// Epoch steps of audit answers computed at once (each a core while akd hashes).
    audit_steps: tokio::sync::Semaphore,
}

/// Audit answers one replica has open at once: each holds the tree nodes it read (megabytes at
/// a large epoch) and its proof so far.
const CONCURRENT_AUDITS: usize = 16;

/// Epoch steps of audit answers one replica computes at once: each takes a core while akd
/// hashes. Taken per step, so an answer of one epoch (a lookup's) waits for one step at most.
const CONCURRENT_AUDIT_STEPS: usize = 2;

/// The node cache of one audit answer or publication: akd then reads the nodes an epoch needs
/// level by level, in one batch per level, instead of one round trip per node (an epoch of
/// 2,000 entries at 100,000 users: tens of thousands of nodes).
const CACHE_BYTES: usize = 256 << 20;

/// The work one audit answer does at most past its first epoch (see `Transparency::audit`):
/// far below the request's timeout on a loaded machine.
const AUDIT_BUDGET: Duration = Duration::from_secs(2);

impl Transparency {
    /// The directory over `engine`, with its keys (generated once when not configured).
    pub async fn start(settings: &DirectorySettings, engine: &Engine) -> Result<Self, Unavailable> {
        let (signer, vrf) = keys::load(settings, engine).await?;
        let reader = open(EngineStore::reader(engine.clone()), vrf.clone()).await?;
        let vrf_public_key = reader.get_public_key().await.map_err(|e| Unavailable::said(e.to_string()))?.to_bytes();
        Ok(Self {
            engine: engine.clone(),
            reader,
            signer,
            vrf,
            vrf_public_key,
            max_audit_epochs: settings.max_audit_epochs,
            max_audit_entries: settings.max_audit_entries,
            audits: tokio::sync::Semaphore::new(CONCURRENT_AUDITS),
            audit_steps: tokio::sync::Semaphore::new(CONCURRENT_AUDIT_STEPS),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn vrf(&self) -> &VrfKey {
        &self.vrf
    }

    fn sign(&self, epoch: u64, root_hash: &[u8; 32]) -> SignedRoot {
        self.signer.sign(epoch, root_hash, &self.vrf_public_key)
    }

    /// The signed root of `epoch_hash`, after checking it against the recorded root of its
    /// epoch (not yet recorded: the publisher is between writing the epoch and its root, and
    /// the reader is told to retry in a moment).
    async fn signed(&self, epoch_hash: &EpochHash) -> Result<SignedRoot, ReadError> {
        let EpochHash(epoch, hash) = epoch_hash;
        if *epoch == 0 {
            return Err(ReadError::NoEpoch);
        }
        // An epoch whose root is not recorded yet is not served: a client would be refused
        // an audit up to it (`audit` stops at the last recorded root).
        let Some(recorded) = self.engine.roots(*epoch, *epoch).await?.first().copied() else {
            return Err(ReadError::Unrooted);
        };
        if recorded != *hash {
            tracing::error!(epoch, "key directory: the tree's root differs from the recorded one");
            return Err(ReadError::Unavailable(format!("epoch {epoch}: root mismatch")));
        }
        Ok(self.sign(*epoch, hash))
    }

    /// The latest epoch's signed root.
    pub async fn root(&self) -> Result<SignedRoot, ReadError> {
        let latest = self.engine.rooted_epoch().await?;
        let hash = self.engine.roots(latest, latest).await?.first().copied().ok_or(ReadError::NoEpoch)?;
        Ok(self.sign(latest, &hash))
    }

    /// `user`'s current key, proven against the latest epoch.
    pub async fn lookup(&self, user: &UserId) -> Result<LookupAnswer, ReadError> {
        let (proof, epoch_hash) = self.reader.lookup(label(user)).await?;
        let root = self.signed(&epoch_hash).await?;
        let public_key = String::from_utf8(proof.value.0.clone())
            .map_err(|_| ReadError::Unavailable("a published key is not UTF-8".into()))?;
        Ok(LookupAnswer {
            root,
            user_id: user.as_str().to_owned(),
            public_key,
            version: proof.version,
            proof: encode_lookup(&proof)?,
        })
    }

    /// Every version of `user`'s key, proven against the latest epoch.
    pub async fn history(&self, user: &UserId) -> Result<HistoryAnswer, ReadError> {
        let (proof, epoch_hash) = self.reader.key_history(&label(user), HistoryParams::Complete).await?;
        let root = self.signed(&epoch_hash).await?;
        Ok(HistoryAnswer { root, user_id: user.as_str().to_owned(), proof: encode_history(&proof)? })
    }

    /// The append-only proof from `from` towards `to`, cut short (`to` then says where it
    /// stopped) after `directory.max_audit_epochs` epochs or, past the first epoch, once the
    /// epochs taken add up to `directory.max_audit_entries` entries or `AUDIT_BUDGET` of work:
    /// an epoch's proof grows with the registrations it published, so a bound in epochs alone
    /// let an answer over a large directory outlast the request's timeout (every answer is then
    /// refused, and nobody can audit). With the signed roots of every epoch in it.
    pub async fn audit(&self, from: u64, to: u64) -> Result<AuditAnswer, ReadError> {
        if from == 0 {
            return Err(ReadError::BadRange("epochs start at 1".into()));
        }
        if from >= to {
            return Err(ReadError::BadRange(format!("from ({from}) must be below to ({to})")));
        }
        let latest = self.engine.rooted_epoch().await?;
        if to > latest {
            return Err(ReadError::BadRange(format!("to ({to}) is beyond the latest epoch ({latest})")));
        }
        let last = to.min(from.saturating_add(self.max_audit_epochs));
        let closed = |_| ReadError::Unavailable("shutting down".into());
        let _answer = self.audits.acquire().await.map_err(closed)?;
        let started = Instant::now();
        let reader = open_with_cache(EngineStore::reader(self.engine.clone()), self.vrf.clone()).await?;
        // One epoch at a time (akd's proof of a range is its epochs' proofs side by side), each
        // step taking its turn: a long audit does not hold up the short ones of lookups.
        let (mut proof, mut entries, mut to) = (AppendOnlyProof { proofs: Vec::new(), epochs: Vec::new() }, 0, from);
        while to < last {
            let turn = self.audit_steps.acquire().await.map_err(closed)?;
            let step = match reader.audit(to, to + 1).await {
                Ok(step) => step,
                // The cache read the tree as it was at the first step; an epoch published since
                // can leave a later step without a node it needs: answer what is proven.
                Err(e) if to > from => {
                    tracing::debug!(error = %e, epoch = to, "key directory: an audit answer cut short");
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            drop(turn);
            entries += step.proofs.iter().map(|p| p.inserted.len()).sum::<usize>();
            proof.proofs.extend(step.proofs);
            proof.epochs.extend(step.epochs);
            to += 1;
            if entries >= self.max_audit_entries || started.elapsed() >= AUDIT_BUDGET {
                break;
            }
        }
        let hashes = self.engine.roots(from, to).await?;
        if hashes.len() as u64 != to - from + 1 {
            return Err(ReadError::Unavailable(format!("roots of epochs {from} to {to} missing")));
        }
        let roots = (from..=to).zip(&hashes).map(|(epoch, hash)| self.sign(epoch, hash)).collect();
        Ok(AuditAnswer { from, to, roots, proof: encode_audit(&proof)? })
    }
}

/// akd over `store`, creating the empty directory's records if there are none.
pub async fn open(store: EngineStore, vrf: VrfKey) -> Result<AkdDirectory, Unavailable> {
    directory(akd::storage::StorageManager::new_no_cache(store), vrf).await
}

/// Like `open`, with a node cache of at most `CACHE_BYTES`, for one audit answer or one
/// publication: never kept longer, so nothing written since is read stale.
pub(crate) async fn open_with_cache(store: EngineStore, vrf: VrfKey) -> Result<AkdDirectory, Unavailable> {
    directory(akd::storage::StorageManager::new(store, None, Some(CACHE_BYTES), None), vrf).await
}

async fn directory(
    storage: akd::storage::StorageManager<EngineStore>,
    vrf: VrfKey,
) -> Result<AkdDirectory, Unavailable> {
    Directory::new(storage, vrf, AzksParallelismConfig::disabled())
        .await
        .map_err(|e| Unavailable::said(format!("cannot open the key directory: {e}")))
}

/// A user's label in the directory: the id's UTF-8 bytes.
pub fn label(user: &UserId) -> AkdLabel {
    AkdLabel(user.as_str().as_bytes().to_vec())
}
