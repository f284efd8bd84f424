//! The verifiable key directory's storage (`crate::transparency`), as every engine keeps it:
//! akd's records as opaque bytes (`transparency::codec` makes them), the root hash of every
//! epoch, the registrations waiting to be published, the publisher's lease and the generated
//! keys. The engines never read akd's records; they keep them, write an epoch's all at once,
//! and (Redis) refuse an epoch from a publisher that lost its lease.

pub mod batch;
pub mod state;

use std::time::Duration;

use self::batch::{Pending, ReplicaWait, Replication, Secret, TreeBatch, TreeWrite};
use super::Engine;
use super::unavailable::Unavailable;
use crate::protocol::UserId;

impl Engine {
    /// akd's azks and tree nodes under `keys`, in order (`None`: absent).
    pub async fn tree_nodes(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.tree().nodes(keys)),
            Engine::Redis(e) => e.tree_nodes(keys).await,
        }
    }

    /// Every value state of each label, in epoch order.
    pub async fn tree_states(&self, labels: &[Vec<u8>]) -> Result<Vec<Vec<Vec<u8>>>, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.tree().states(labels)),
            Engine::Redis(e) => e.tree_states(labels).await,
        }
    }

    /// Writes `batch` (see `TreeWrite`); once this returns it is stored (in the data file,
    /// for the embedded engine) and every reader sees all of it.
    pub async fn tree_write(&self, batch: TreeBatch, write: TreeWrite) -> Result<(), Unavailable> {
        match self {
            Engine::Memory(e) => e.tree_write(batch, write).await,
            Engine::Redis(e) => e.tree_write(batch, write).await,
        }
    }

    /// The last epoch whose root is recorded (0: none).
    pub async fn rooted_epoch(&self) -> Result<u64, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.tree().rooted()),
            Engine::Redis(e) => e.rooted_epoch().await,
        }
    }

    /// The recorded roots of the epochs `from..=to` (fewer when `to` is past the last).
    pub async fn roots(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.tree().roots(from, to)),
            Engine::Redis(e) => e.roots(from, to).await,
        }
    }

    /// Records `epoch`'s root after the last one; the same root again changes nothing, another
    /// root for a recorded epoch is refused.
    pub async fn add_root(&self, epoch: u64, hash: [u8; 32]) -> Result<(), Unavailable> {
        match self {
            Engine::Memory(e) => e.add_root(epoch, hash).await,
            Engine::Redis(e) => e.add_root(epoch, hash).await,
        }
    }

    /// Renews `holder`'s lease for `ttl`, then waits until the replicas `wait` names have
    /// everything the store took before the renewal (an epoch's records, whoever wrote them).
    /// The publisher calls it before it records a root: an epoch served before a replica had
    /// it would be lost, and written anew (another root), when that replica is promoted. One
    /// process (memory, embedded) has no replicas.
    pub async fn await_replicas(
        &self,
        holder: &str,
        ttl: Duration,
        wait: ReplicaWait,
    ) -> Result<Replication, Unavailable> {
        match self {
            Engine::Memory(_) => Ok(Replication::Copied),
            Engine::Redis(e) => e.await_replicas(holder, ttl, wait).await,
        }
    }

    /// Up to `max` registrations waiting to be published (Redis: only those whose registration
    /// completed; abandoned ones are dropped).
    pub async fn pending(&self, max: usize) -> Result<Vec<Pending>, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.tree().pending(max)),
            Engine::Redis(e) => e.pending(max).await,
        }
    }

    /// Queues every live user that is not in the directory yet (registered before it existed
    /// or while it was off): the number queued. Safe to repeat: akd makes no new version of a
    /// value already published.
    pub async fn backfill_pending(&self) -> Result<u64, Unavailable> {
        match self {
            Engine::Memory(e) => e.backfill_pending().await,
            Engine::Redis(e) => e.backfill_pending().await,
        }
    }

    /// How many registrations wait to be published.
    pub async fn pending_count(&self) -> Result<u64, Unavailable> {
        match self {
            Engine::Memory(e) => Ok(e.tree().pending_count() as u64),
            Engine::Redis(e) => e.pending_count().await,
        }
    }

    /// `users` are in the directory now: no longer waiting.
    pub async fn published(&self, users: &[UserId]) -> Result<(), Unavailable> {
        match self {
            Engine::Memory(e) => e.published(users).await,
            Engine::Redis(e) => e.published(users).await,
        }
    }

    /// Takes or renews the publisher's lease for `holder`, for `ttl`: whether `holder` holds it
    /// now. One process (memory, embedded) always does.
    pub async fn hold_lease(&self, holder: &str, ttl: Duration) -> Result<bool, Unavailable> {
        match self {
            Engine::Memory(_) => Ok(true),
            Engine::Redis(e) => e.hold_lease(holder, ttl).await,
        }
    }

    /// The deployment's generated `secret`: `candidate` if none was stored before, else the
    /// stored one (the memory engine: `candidate`, one process).
    pub async fn shared_secret(&self, secret: Secret, candidate: &str) -> Result<String, Unavailable> {
        match self {
            Engine::Memory(e) => e.shared_secret(secret, candidate).await,
            Engine::Redis(e) => e.shared_secret(secret, candidate).await,
        }
    }
}
