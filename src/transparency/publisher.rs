//! The epoch loop: every `directory.epoch_interval_ms`, the replica holding the publisher's
//! lease (`Engine::hold_lease`; one process always holds it) publishes the registrations
//! waiting as one new epoch and records its root. Every replica runs the loop; only the holder
//! writes, and the engine refuses an epoch from anyone else.
//!
//! Each step can be repeated after a crash at any point without a second version, a lost
//! entry or a fork:
//! 1. the root of the tree's current epoch is recorded if missing (a publisher that died
//!    between writing an epoch and its root);
//! 2. the waiting registrations are published: akd skips a label whose value is already
//!    there, so entries a dead publisher published but did not clear make no new version
//!    (nor a new epoch, when that is all of them);
//! 3. the new epoch's root is recorded, then the entries are cleared.
//!
//! A root is recorded (and from then on served) only once the store's replicas have the
//! epoch (`Engine::await_replicas`, `directory.replicas_to_wait`): Redis replicates
//! asynchronously, and a replica promoted without an epoch whose root clients kept would be a
//! rollback to them, then a fork when the next publisher writes that epoch with other
//! registrations. When the replicas do not acknowledge in time, the round ends there and the
//! next one starts at step 1 again. They are asked before an epoch is written too, so a
//! replica that lags holds publication back without a written epoch making every lookup wait.
//!
//! The first round a replica holds the lease in, it queues every live user not in the
//! directory yet (registered before it existed, or while it was off): `Engine::backfill_pending`.

use std::time::{Duration, Instant};

use akd::{AkdLabel, AkdValue, EpochHash};
use tokio_util::sync::CancellationToken;

use super::keys::VrfKey;
use super::settings::DirectorySettings;
use super::store::EngineStore;
use super::{AkdDirectory, Transparency, open, open_with_cache};
use crate::engine::Engine;
use crate::engine::tree::batch::{ReplicaWait, Replication};
use crate::engine::unavailable::Unavailable;
use crate::protocol::UserId;
use crate::telemetry::metric;

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Published an epoch of `directory.max_epoch_entries`: more may be waiting.
    Full,
    /// Anything else: nothing to publish, not the lease holder, held back, or published all.
    Done,
}

pub struct Publisher {
    engine: Engine,
    directory: AkdDirectory,
    /// The VRF key, for each round's own directory (`publish`).
    vrf: VrfKey,
    /// Who this replica is to the lease.
    holder: String,
    lease: Duration,
    interval: Duration,
    max_entries: usize,
    replicas: ReplicaWait,
    holding: bool,
    /// Whether the last wait for the replicas ended short of them (said once, not every
    /// round).
    held_back: bool,
    /// Whether the users registered without the directory were queued (once per process).
    backfilled: bool,
}

impl Publisher {
    pub async fn new(settings: &DirectorySettings, transparency: &Transparency) -> Result<Self, Unavailable> {
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let engine = transparency.engine().clone();
        let store = EngineStore::publisher(engine.clone(), holder.clone());
        let directory = open(store, transparency.vrf().clone()).await?;
        Ok(Self {
            engine,
            directory,
            vrf: transparency.vrf().clone(),
            holder,
            lease: settings.lease(),
            interval: settings.epoch_interval(),
            max_entries: settings.max_epoch_entries,
            replicas: ReplicaWait { at_most: settings.replicas_to_wait, timeout: settings.replica_wait() },
            holding: false,
            held_back: false,
            backfilled: false,
        })
    }

    /// Runs the loop on a thread of its own, with a runtime of its own, until `stop`: akd's
    /// work (a VRF evaluation per registration, the tree's hashes) is CPU-bound between its
    /// awaits, and on the server's runtime it would hold a worker thread the sessions and the
    /// Redis connections need for as long as a large epoch takes.
    pub fn spawn(self, stop: CancellationToken) -> std::io::Result<std::thread::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("enigma-directory".into()).spawn(move || runtime.block_on(self.run(stop)))
    }

    /// Runs until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            // A full epoch may leave more waiting: the next goes at once (a backlog — a burst
            // of registrations, the users from before the directory — is published as fast as
            // epochs can be made, not one epoch per interval).
            loop {
                match self.round().await {
                    Ok(Round::Full) if !stop.is_cancelled() => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "key directory: publishing failed; retrying next epoch");
                        break;
                    }
                }
            }
        }
    }

    /// One epoch's work (nothing unless this replica holds the lease).
    pub async fn round(&mut self) -> Result<Round, String> {
        let held = self.engine.hold_lease(&self.holder, self.lease).await.map_err(text)?;
        if held != self.holding {
            self.holding = held;
            tracing::info!(holder = %self.holder, held, "key directory: publisher lease {}", if held { "taken" } else { "lost" });
            metrics::gauge!(metric::DIRECTORY_PUBLISHER).set(if held { 1.0 } else { 0.0 });
        }
        if !held {
            self.report_epoch().await;
            return Ok(Round::Done);
        }
        let EpochHash(epoch, root) = self.directory.get_epoch_hash().await.map_err(text)?;
        if self.record_root(epoch, root).await? == Rooting::HeldBack {
            self.report_epoch().await;
            return Ok(Round::Done);
        }
        if !self.backfilled {
            // Users registered before the directory existed or while it was off: queued like
            // registrations (akd makes no second version of one already published).
            let queued = self.engine.backfill_pending().await.map_err(text)?;
            self.backfilled = true;
            if queued > 0 {
                tracing::info!(users = queued, "key directory: users registered without it queued for publication");
            }
        }
        let pending = self.engine.pending(self.max_entries).await.map_err(text)?;
        if let Ok(count) = self.engine.pending_count().await {
            metrics::gauge!(metric::DIRECTORY_PENDING).set(count as f64);
        }
        if pending.is_empty() {
            metrics::gauge!(metric::DIRECTORY_EPOCH).set(epoch as f64);
            return Ok(Round::Done);
        }
        let full = pending.len() >= self.max_entries;
        let users: Vec<UserId> = pending.iter().map(|p| p.user.clone()).collect();
        let updates = pending
            .into_iter()
            .map(|p| (super::label(&p.user), AkdValue(p.public_key.into_bytes())))
            .collect::<Vec<(AkdLabel, AkdValue)>>();
        let started = Instant::now();
        // A replica that lags holds the epoch back before it is written, too: once written,
        // every lookup waits for its root (akd answers at the tree's latest epoch), while
        // unwritten the directory goes on answering at the last root.
        if !self.replicated(epoch + 1).await? {
            self.report_epoch().await;
            return Ok(Round::Done);
        }
        let EpochHash(published, root) = self.publish(updates).await?;
        if self.record_root(published, root).await? == Rooting::HeldBack {
            // Its entries wait too: published (akd skips them next round), cleared once the
            // root is recorded.
            self.report_epoch().await;
            return Ok(Round::Done);
        }
        metrics::histogram!(metric::DIRECTORY_PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::gauge!(metric::DIRECTORY_EPOCH).set(published as f64);
        self.engine.published(&users).await.map_err(text)?;
        if published > epoch {
            tracing::debug!(epoch = published, entries = users.len(), "key directory: epoch published");
        }
        Ok(if full { Round::Full } else { Round::Done })
    }

    /// akd's publication, with the lease renewed meanwhile (a large epoch may take longer than
    /// the lease). Never cancelled halfway: akd's transaction would stay open; a publication
    /// that outlived a lost lease is refused by the engine when it writes. On a directory of
    /// its own with a node cache (`open_with_cache`): akd then reads the nodes the epoch
    /// touches in one batch per tree level instead of one round trip per node, and the cache
    /// ends with the round, so nothing another publisher wrote meanwhile is read stale.
    async fn publish(&self, updates: Vec<(AkdLabel, AkdValue)>) -> Result<EpochHash, String> {
        let store = EngineStore::publisher(self.engine.clone(), self.holder.clone());
        let directory = open_with_cache(store, self.vrf.clone()).await.map_err(text)?;
        let publish = directory.publish(updates);
        tokio::pin!(publish);
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.tick().await;
        loop {
            tokio::select! {
                published = &mut publish => return published.map_err(text),
                _ = renew.tick() => {
                    if let Err(e) = self.engine.hold_lease(&self.holder, self.lease).await {
                        tracing::warn!(error = %e, "key directory: cannot renew the publisher lease");
                    }
                }
            }
        }
    }

    /// Records `epoch`'s root unless it is recorded (epoch 0, the empty directory, has none),
    /// once the replicas have the epoch; else it is held back for the next round.
    async fn record_root(&mut self, epoch: u64, root: [u8; 32]) -> Result<Rooting, String> {
        if epoch == 0 {
            return Ok(Rooting::Recorded);
        }
        let rooted = self.engine.rooted_epoch().await.map_err(text)?;
        if epoch <= rooted {
            return Ok(Rooting::Recorded);
        }
        if !self.replicated(epoch).await? {
            return Ok(Rooting::HeldBack);
        }
        self.engine.add_root(epoch, root).await.map_err(text)?;
        Ok(Rooting::Recorded)
    }

    /// Whether the store's replicas have everything written so far (`epoch`: the epoch that
    /// waits on them, for the log), renewing the lease on the way.
    async fn replicated(&mut self, epoch: u64) -> Result<bool, String> {
        match self.engine.await_replicas(&self.holder, self.lease, self.replicas).await.map_err(text)? {
            Replication::Copied => {
                if std::mem::take(&mut self.held_back) {
                    tracing::info!(epoch, "key directory: the Redis replicas caught up; publishing goes on");
                }
                Ok(true)
            }
            Replication::Short { wanted, acknowledged } => {
                metrics::counter!(metric::DIRECTORY_UNREPLICATED).increment(1);
                if !std::mem::replace(&mut self.held_back, true) {
                    tracing::warn!(
                        epoch,
                        wanted,
                        acknowledged,
                        timeout_ms = self.replicas.timeout.as_millis() as u64,
                        "key directory: the Redis replicas have not acknowledged what was written; no new root is served until they do (asked again every epoch)"
                    );
                }
                Ok(false)
            }
            // The next round finds out (`hold_lease`) and says so.
            Replication::LeaseLost => Ok(false),
        }
    }

    /// A replica that does not publish still reports where the directory is.
    async fn report_epoch(&self) {
        if let Ok(epoch) = self.engine.rooted_epoch().await {
            metrics::gauge!(metric::DIRECTORY_EPOCH).set(epoch as f64);
        }
        if let Ok(count) = self.engine.pending_count().await {
            metrics::gauge!(metric::DIRECTORY_PENDING).set(count as f64);
        }
    }
}

/// What became of a root to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rooting {
    /// Recorded now or before: served.
    Recorded,
    /// Not recorded this round (the replicas did not acknowledge its epoch in time, or the
    /// lease was lost): nothing more is published until it is.
    HeldBack,
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}
