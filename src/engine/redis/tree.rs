//! The verifiable key directory in Redis (`engine::tree`): every key under one hash tag,
//! `{kt}` (`Keys::tree`), so that an epoch — thousands of records — is written by one script,
//! all or nothing, on a Redis Cluster too. The directory lives on one shard of a cluster; it is
//! about a kilobyte per user and read only by `/directory/*`, while the traffic (inboxes,
//! doorbells) stays spread by user.
//!
//! An epoch is written only by the holder of the publisher's lease and only on top of the
//! epoch before it (`tree_commit.lua`): a publisher paused past its lease, or two that both
//! think they hold it, cannot write the same epoch twice. Roots are a list, epoch 1 first;
//! one is appended only after the last and never replaced (`tree_root.lua`), and only once the
//! master's replicas have the epoch (`await_replicas`): replication is asynchronous, and a
//! replica promoted without an epoch whose root was served would get that epoch written anew.
//!
//! A registration is written as waiting (`pending`) before its record and its key index
//! (`login.rs`): a crash between them leaves an entry whose registration never completed. The
//! publisher publishes only entries whose record and index name their user and key, waits on
//! the others until they are `ABANDONED` old, then drops them.

use std::sync::LazyLock;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncCommands, Script, Value};

use super::commands::{Command, once_loaded, timed};
use super::conn::{CLUSTER_CONCURRENCY, Conn};
use super::keys::{TREE_TAG, TreePart};
use super::slots::{first_range_per_master, slot_of};
use super::{RedisEngine, parse_indexed};
use crate::auth::canonical::index_material;
use crate::engine::tree::batch::{Pending, ReplicaWait, Replication, Secret, TreeBatch, TreeWrite};
use crate::engine::unavailable::Unavailable;
use crate::protocol::UserId;

/// Writes one epoch's records if the caller holds the lease and the directory is at the epoch
/// before. KEYS: lease, epoch, nodes, states. ARGV: holder, epoch, the number of nodes, each
/// node's key and record, then each state's label and length-prefixed record (appended to the
/// label's). An error reply starting `FENCED` refuses the whole epoch before any write.
static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("tree_commit.lua")));

/// Appends an epoch's root after the last; the same root again is 0, another root for a
/// recorded epoch (`FORK`), a gap (`GAP`) or an epoch whose records this Redis does not hold
/// (`BEHIND`: a master promoted without them) an error. KEYS: roots, epoch. ARGV: epoch, root.
static ROOT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("tree_root.lua")));

/// Takes the lease when free, renews it for its holder: 1 if ARGV[1] holds it now. KEYS:
/// lease. ARGV: holder, ttl (ms).
static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lease.lua")));

/// How long a waiting registration whose record or key index is missing is kept: far above the
/// time between the writes of a registration (then it was abandoned, by a crash).
const ABANDONED: Duration = Duration::from_secs(60);

/// Entries one `HSCAN` step asks for.
const SCAN_COUNT: usize = 1000;

impl RedisEngine {
    pub async fn tree_nodes(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let this = &self.inner;
        let mut get = redis::cmd("HMGET");
        get.arg(this.keys.tree(TreePart::Nodes)).arg(keys);
        this.timed(Command::DirectoryRead, get.query_async(&mut this.connections.directory())).await
    }

    pub async fn tree_states(&self, labels: &[Vec<u8>]) -> Result<Vec<Vec<Vec<u8>>>, Unavailable> {
        if labels.is_empty() {
            return Ok(Vec::new());
        }
        let this = &self.inner;
        let mut get = redis::cmd("HMGET");
        get.arg(this.keys.tree(TreePart::States)).arg(labels);
        let lists: Vec<Option<Vec<u8>>> =
            this.timed(Command::DirectoryRead, get.query_async(&mut this.connections.directory())).await?;
        lists.into_iter().map(|list| unframe(list.as_deref().unwrap_or_default())).collect()
    }

    pub async fn tree_write(&self, batch: TreeBatch, write: TreeWrite) -> Result<(), Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.directory();
        match write {
            TreeWrite::Initial => {
                let nodes = this.keys.tree(TreePart::Nodes);
                let mut pipe = redis::pipe();
                for (key, value) in &batch.nodes {
                    pipe.hset_nx(&nodes, key, value).ignore();
                }
                this.timed(Command::DirectoryWrite, pipe.query_async::<()>(&mut con)).await
            }
            TreeWrite::Epoch { epoch, holder } => {
                let mut commit = COMMIT.prepare_invoke();
                for part in [TreePart::Lease, TreePart::Epoch, TreePart::Nodes, TreePart::States] {
                    commit.key(this.keys.tree(part));
                }
                commit.arg(holder).arg(epoch).arg(batch.nodes.len());
                for (key, value) in &batch.nodes {
                    commit.arg(key).arg(value);
                }
                for (label, _epoch, value) in &batch.states {
                    commit.arg(label).arg(frame(value));
                }
                let done: u64 = this.timed(Command::DirectoryWrite, commit.invoke_async(&mut con)).await?;
                debug_assert_eq!(done, epoch);
                Ok(())
            }
        }
    }

    pub async fn rooted_epoch(&self) -> Result<u64, Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.directory();
        this.timed(Command::DirectoryRead, con.llen(this.keys.tree(TreePart::Roots))).await
    }

    pub async fn roots(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>, Unavailable> {
        if from == 0 || to < from {
            return Ok(Vec::new());
        }
        let this = &self.inner;
        let mut con = this.connections.directory();
        let key = this.keys.tree(TreePart::Roots);
        let (start, stop) = ((from - 1) as isize, (to - 1) as isize);
        let roots: Vec<Vec<u8>> = this.timed(Command::DirectoryRead, con.lrange(key, start, stop)).await?;
        roots
            .into_iter()
            .map(|root| <[u8; 32]>::try_from(root.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|_| Unavailable::said("a root in Redis is not 32 bytes"))
    }

    pub async fn add_root(&self, epoch: u64, hash: [u8; 32]) -> Result<(), Unavailable> {
        let this = &self.inner;
        let mut add = ROOT.prepare_invoke();
        add.key(this.keys.tree(TreePart::Roots)).key(this.keys.tree(TreePart::Epoch)).arg(epoch).arg(&hash[..]);
        let _: u64 = this.timed(Command::DirectoryWrite, add.invoke_async(&mut this.connections.directory())).await?;
        Ok(())
    }

    pub async fn hold_lease(&self, holder: &str, ttl: Duration) -> Result<bool, Unavailable> {
        let this = &self.inner;
        let mut hold = LEASE.prepare_invoke();
        hold.key(this.keys.tree(TreePart::Lease)).arg(holder).arg(ttl.as_millis() as u64);
        let held: u64 =
            this.timed(Command::DirectoryLease, hold.invoke_async(&mut this.connections.directory())).await?;
        Ok(held == 1)
    }

    /// `Engine::await_replicas`: the replicas the master of the directory's keys has online
    /// (`ROLE`), at most `wait.at_most` of them; if there are any, the lease is renewed and
    /// `WAIT` sent for them, both on a connection of their own (`Connections::waiting`).
    /// `WAIT` waits for what the connection it is sent on wrote: the renewal, a write after
    /// everything the master took before it, puts all of that under the wait (an epoch, a
    /// reconnect ago or written by a publisher that died, too).
    pub async fn await_replicas(
        &self,
        holder: &str,
        ttl: Duration,
        wait: ReplicaWait,
    ) -> Result<Replication, Unavailable> {
        // 0 asks for no wait: no need to ask how many replicas there are.
        let most = wait.at_most.unwrap_or(u32::MAX);
        if most == 0 {
            return Ok(Replication::Copied);
        }
        let wanted = most.min(self.online_replicas().await?);
        if wanted == 0 {
            return Ok(Replication::Copied);
        }
        let waited = self.wait_for(holder, ttl, wanted, wait.timeout).await;
        if waited.is_err() {
            self.inner.connections.drop_waiting();
        }
        waited
    }

    async fn wait_for(
        &self,
        holder: &str,
        ttl: Duration,
        wanted: u32,
        timeout: Duration,
    ) -> Result<Replication, Unavailable> {
        let this = &self.inner;
        let mut con =
            this.connections.waiting(timeout).await.map_err(|e| Unavailable::redis_while("connecting for WAIT", e))?;
        let mut hold = LEASE.prepare_invoke();
        hold.key(this.keys.tree(TreePart::Lease)).arg(holder).arg(ttl.as_millis() as u64);
        let held: u64 = this.timed(Command::DirectoryLease, hold.invoke_async(&mut con)).await?;
        if held != 1 {
            return Ok(Replication::LeaseLost);
        }
        // `WAIT n 0` would wait for ever.
        let mut ask = redis::cmd("WAIT");
        ask.arg(wanted).arg((timeout.as_millis() as u64).max(1));
        let answer = timed(Command::DirectoryWait, this.timeout + timeout, on_tree_master(&mut con, ask)).await?;
        let acknowledged: u32 = redis::from_redis_value(answer).map_err(|e| Unavailable::said(e.to_string()))?;
        Ok(match acknowledged >= wanted {
            true => Replication::Copied,
            false => Replication::Short { wanted, acknowledged },
        })
    }

    /// How many replicas the master of the directory's keys has online: `ROLE` lists those.
    async fn online_replicas(&self) -> Result<u32, Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.directory();
        let role = this.timed(Command::DirectoryRead, on_tree_master(&mut con, redis::cmd("ROLE"))).await?;
        let Value::Array(fields) = role else {
            return Err(Unavailable::said("ROLE answered something else than a list"));
        };
        match fields.as_slice() {
            [Value::BulkString(role), _, Value::Array(replicas), ..] if role == b"master" => Ok(replicas.len() as u32),
            [Value::SimpleString(role), _, Value::Array(replicas), ..] if role == "master" => Ok(replicas.len() as u32),
            _ => Err(Unavailable::said("the key directory's Redis is not a master (ROLE)")),
        }
    }

    pub async fn shared_secret(&self, secret: Secret, candidate: &str) -> Result<String, Unavailable> {
        let this = &self.inner;
        let mut set = redis::cmd("SET");
        set.arg(this.keys.tree(TreePart::Secret(secret.as_str()))).arg(candidate).arg("NX").arg("GET");
        let previous: Option<String> = once_loaded(Command::DirectoryWrite, this.timeout, || {
            let mut con = this.connections.directory();
            let set = set.clone();
            async move { set.query_async(&mut con).await }
        })
        .await?;
        Ok(previous.unwrap_or_else(|| candidate.to_owned()))
    }

    pub async fn pending_count(&self) -> Result<u64, Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.directory();
        this.timed(Command::DirectoryRead, con.hlen(this.keys.tree(TreePart::Pending))).await
    }

    pub async fn published(&self, users: &[UserId]) -> Result<(), Unavailable> {
        if users.is_empty() {
            return Ok(());
        }
        let this = &self.inner;
        let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let mut con = this.connections.directory();
        this.timed(Command::DirectoryWrite, con.hdel::<_, _, u64>(this.keys.tree(TreePart::Pending), names)).await?;
        Ok(())
    }

    /// The value of a waiting registration's entry (`login.rs` writes it).
    pub(super) fn pending_entry(public_key: &str) -> String {
        format!("{} {public_key}", crate::clock::unix_ms())
    }

    /// Up to `max` waiting registrations whose registration completed; entries of abandoned
    /// ones (a crash between the two writes, a lost race) are dropped on the way.
    pub async fn pending(&self, max: usize) -> Result<Vec<Pending>, Unavailable> {
        let this = &self.inner;
        let key = this.keys.tree(TreePart::Pending);
        let mut entries: Vec<(String, String)> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("HSCAN");
            scan.arg(&key).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
            let (next, page): (u64, Vec<(String, String)>) =
                this.timed(Command::DirectoryRead, scan.query_async(&mut this.connections.directory())).await?;
            entries.extend(page);
            cursor = next;
            if cursor == 0 || entries.len() >= max {
                break;
            }
        }
        entries.truncate(max);
        let now = crate::clock::unix_ms();
        let checks = entries.into_iter().map(|(user, entry)| self.check_pending(user, entry, now));
        let verdicts: Vec<Result<Verdict, Unavailable>> =
            stream::iter(checks).buffer_unordered(CLUSTER_CONCURRENCY).collect().await;
        let mut ready = Vec::new();
        let mut dropped = Vec::new();
        for verdict in verdicts {
            match verdict? {
                Verdict::Ready(pending) => ready.push(pending),
                Verdict::Wait => {}
                Verdict::Drop(user) => dropped.push(user),
            }
        }
        if !dropped.is_empty() {
            // Once per entry: it is gone after this.
            tracing::info!(
                entries = dropped.len(),
                "key directory: registrations never completed (or with a damaged key index), not published"
            );
            let mut con = this.connections.directory();
            this.timed(Command::DirectoryWrite, con.hdel::<_, _, u64>(&key, dropped)).await?;
        }
        Ok(ready)
    }

    async fn check_pending(&self, user: String, entry: String, now: u64) -> Result<Verdict, Unavailable> {
        let this = &self.inner;
        let parsed = entry.split_once(' ').and_then(|(ms, key)| Some((ms.parse::<u64>().ok()?, key)));
        let (Some(id), Some((at_ms, public_key))) = (UserId::parse(&user), parsed) else {
            return Ok(Verdict::Drop(user));
        };
        let index = this.keys.key_index(&index_material(public_key).primary);
        let (mut one, mut other) = (this.connections.directory(), this.connections.directory());
        let (record_key, indexed): (Option<String>, Option<String>) = futures_util::try_join!(
            this.timed(Command::DirectoryRead, one.hget(this.keys.user(&id), "publicKey")),
            this.timed(Command::DirectoryRead, other.get(index)),
        )?;
        // An index that names no user (damaged) is one that does not name this one: the entry
        // waits, then goes with the abandoned, and no other entry waits on it.
        let indexed = indexed.as_deref().and_then(|owner| parse_indexed(owner).ok());
        // The entry is written before the record (`login.rs`): until the entry is old enough
        // to be abandoned, a missing record or index is a registration still under way.
        let abandoned = now.saturating_sub(at_ms) >= ABANDONED.as_millis() as u64;
        Ok(match (record_key, indexed) {
            (Some(key), Some(owner)) if key == public_key && owner == id => {
                Verdict::Ready(Pending { user: id, public_key: public_key.to_owned() })
            }
            _ if !abandoned => Verdict::Wait,
            _ => Verdict::Drop(user),
        })
    }
}

impl RedisEngine {
    /// Queues every live user record that is not in the directory yet (users registered
    /// before it existed, or while it was off): `SCAN` over each node (each master of a
    /// cluster), a page at a time. The number queued.
    pub async fn backfill_pending(&self) -> Result<u64, Unavailable> {
        let this = &self.inner;
        // One node, or the first slot of each master (a command routed to it reaches it).
        let nodes: Vec<Option<u16>> = if this.connections.is_cluster() {
            let mut con = this.connections.directory();
            let slots: Value =
                this.timed(Command::DirectoryRead, redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut con)).await?;
            first_range_per_master(&slots).into_iter().map(|(start, _)| Some(start)).collect()
        } else {
            vec![None]
        };
        let pattern = format!("{}user:{{*}}", this.keys.prefix);
        let mut queued = 0;
        for node in nodes {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_COUNT);
                let page: Value = match (node, this.connections.directory()) {
                    (Some(slot), Conn::Cluster(mut con)) => {
                        let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                            slot,
                            SlotAddr::Master,
                        )));
                        this.timed(Command::DirectoryRead, con.route_command(scan, to)).await?
                    }
                    (_, mut con) => this.timed(Command::DirectoryRead, scan.query_async(&mut con)).await?,
                };
                let (next, keys): (u64, Vec<String>) =
                    redis::from_redis_value(page).map_err(|e| Unavailable::said(e.to_string()))?;
                queued += self.queue_unpublished(keys).await?;
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(queued)
    }

    /// Of the users whose record keys are `keys`, queues those with no state in the directory
    /// (akd's label is the user id, `transparency::label`) and not waiting already.
    async fn queue_unpublished(&self, keys: Vec<String>) -> Result<u64, Unavailable> {
        let this = &self.inner;
        let record_prefix = format!("{}user:{{", this.keys.prefix);
        let users: Vec<UserId> = keys
            .iter()
            .filter_map(|key| key.strip_prefix(&record_prefix)?.strip_suffix('}'))
            .filter_map(UserId::parse)
            .collect();
        let labels: Vec<Vec<u8>> = users.iter().map(|user| user.as_str().as_bytes().to_vec()).collect();
        let states = self.tree_states(&labels).await?;
        let absent = users.into_iter().zip(states).filter(|(_, states)| states.is_empty()).map(|(user, _)| user);
        let reads = absent.map(|user| async move {
            let mut con = this.connections.directory();
            let key: Option<String> =
                this.timed(Command::DirectoryRead, con.hget(this.keys.user(&user), "publicKey")).await?;
            Ok::<_, Unavailable>(key.map(|key| (user, key)))
        });
        let found: Vec<Result<Option<(UserId, String)>, Unavailable>> =
            stream::iter(reads).buffer_unordered(CLUSTER_CONCURRENCY).collect().await;
        let pending = this.keys.tree(TreePart::Pending);
        let mut queue = redis::pipe();
        let mut queued = 0;
        for found in found {
            if let Some((user, key)) = found? {
                queue.hset_nx(&pending, user.as_str(), RedisEngine::pending_entry(&key));
                queued += 1;
            }
        }
        if queued > 0 {
            let mut con = this.connections.directory();
            let added: Vec<u64> = this.timed(Command::DirectoryWrite, queue.query_async(&mut con)).await?;
            return Ok(added.iter().sum());
        }
        Ok(0)
    }
}

/// Sends `command` to the master of the directory's keys: on a cluster, the one owning their
/// slot (a command without a key would go to any node, or to every master).
async fn on_tree_master(con: &mut Conn, command: redis::Cmd) -> redis::RedisResult<Value> {
    match con {
        Conn::Cluster(con) => {
            let slot = slot_of(TREE_TAG.as_bytes());
            let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)));
            con.route_command(command, to).await
        }
        Conn::Single(_) => command.query_async(con).await,
    }
}

/// What becomes of a waiting registration.
enum Verdict {
    Ready(Pending),
    /// Its record or key index is not written yet: the registration may be under way.
    Wait,
    Drop(String),
}

/// A state record as it is appended to its label's list: its length (u32, big-endian), then it.
fn frame(record: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(4 + record.len());
    framed.extend_from_slice(&(record.len() as u32).to_be_bytes());
    framed.extend_from_slice(record);
    framed
}

/// The records of a label's list.
fn unframe(mut list: &[u8]) -> Result<Vec<Vec<u8>>, Unavailable> {
    let mut records = Vec::new();
    while let Some((len, rest)) = list.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        let Some((record, rest)) = rest.split_at_checked(len) else { break };
        records.push(record.to_vec());
        list = rest;
    }
    if !list.is_empty() {
        return Err(Unavailable::said("a key directory state list in Redis is cut short"));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lists_read_back() {
        let list = [frame(b"one"), frame(b""), frame(b"three")].concat();
        assert_eq!(unframe(&list).unwrap(), vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert!(unframe(&list[..list.len() - 1]).is_err());
        assert!(unframe(&[]).unwrap().is_empty());
    }
}
