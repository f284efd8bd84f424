//! The Redis engine: any number of replicas share one Redis and act as one server.
//!
//! Keys (every per-user key carries the user id as a `{hash tag}`, so one user's record,
//! inbox, channel and connection counter live in one Redis Cluster slot):
//!
//! | key                        | type    | what                                          |
//! |----------------------------|---------|-----------------------------------------------|
//! | `<p>user:{uid}`            | HASH    | `publicKey`, `createdAt`                      |
//! | `<p>pk:<sha256(key)>`      | STRING  | uid; makes login idempotent (`SET NX GET`)    |
//! | `<p>inbox:{uid}`           | STREAM  | accepted envelopes (field `e`) until removed  |
//! | `<p>conn:{uid}`            | STRING  | connection generation counter (takeover)      |
//! | `<p>deliver:{uid}`         | channel | doorbell: `m<id>\n<envelope>` or `t<generation>` |
//! | `<p>probe:<replica>`       | channel | this replica's link probe (cluster: one per shard, `<p>probe:{tag}:<replica>`) |
//!
//! A send is one script: check the recipient, check the inbox's room, XADD, refresh the TTL,
//! PUBLISH: stored and announced, or refused, never announced without being stored.
//! Subscriptions run on their own RESP3 connection whose pushes go straight into the hub.
//!
//! The subscription link is watched end to end: every `redis.probe_interval_ms` the replica
//! publishes a probe on its own channel (on a cluster one per shard, in a slot each master
//! owns) and expects it back. A link that dropped (a disconnection push) or went quiet (three
//! probes missing: a hung connection never errors) is rebuilt, every local user is subscribed
//! again and every session re-reads its inbox; while that lasts, `/readyz` fails.
//!
//! On a cluster a node ends the subscriptions of a slot it gives away (migration, failover)
//! with an unasked `sunsubscribe`: those users are subscribed again on the new owner and their
//! sessions re-read their inboxes, for what was announced to nobody in between.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use redis::aio::{AsyncPushSender, ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, ProtocolVersion, PushInfo, PushKind, RedisResult, Script, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{SendError, Unavailable};
use crate::config::{Limits, RedisMode, Settings};
use crate::hub::{Hub, Link};
use crate::protocol::{Delivery, MsgId, UserId};
use crate::telemetry::metric;

/// Appends an envelope to the recipient's inbox and rings its doorbell, in one step. Each
/// message gets the next number of its recipient (field `seq` of the user record), stored with
/// it and announced with it, so a session notices a doorbell that never came.
/// KEYS: user record, inbox. ARGV: envelope, capacity, ttl (ms), channel.
/// Returns the stream id, -1 for an unknown recipient, -2 for a full inbox.
///
/// The channel is an argument, not a key: on a cluster it is in the keys' slot all the same,
/// and a declared key that never exists would make every send to a slot being migrated fail
/// with TRYAGAIN until the migration ends (Redis counts it as a key that already moved).
const SEND_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[2]) then return -2 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1], 's', seq)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], 'm' .. id .. ' ' .. seq .. '\n' .. ARGV[1])
return id
"#;

/// Claims the next connection generation of a user and announces it, so that older
/// connections on every replica end. The counter never expires: one
/// restarting at 1 would make every older connection look newer. (KEYS: counter. ARGV:
/// channel, for the reason given at `SEND_SCRIPT`.)
const ATTACH_SCRIPT: &str = r#"
local generation = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], 't' .. generation)
return generation
"#;

/// Channels per SUBSCRIBE command when many users are (re)subscribed at once.
const SUBSCRIBE_CHUNK: usize = 1000;
/// Probes missed in a row before the subscription link counts as dead.
const PROBE_MISSES: u32 = 3;
/// How long the supervisor lets disconnection notices gather before it recovers once for all.
const DISCONNECT_SETTLE: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Arc<Hub>,
    keys: Keys,
    limits: Limits,
    timeout: Duration,
    links: Arc<Links>,
    subscriptions: mpsc::UnboundedSender<SubRequest>,
    removals: mpsc::UnboundedSender<Removal>,
    send_script: Script,
    attach_script: Script,
    /// Ends the background tasks (subscriber, supervisor) when the engine is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn user(&self, user: &UserId) -> String {
        format!("{}user:{{{user}}}", self.prefix)
    }
    fn inbox(&self, user: &UserId) -> String {
        format!("{}inbox:{{{user}}}", self.prefix)
    }
    fn generation(&self, user: &UserId) -> String {
        format!("{}conn:{{{user}}}", self.prefix)
    }
    fn channel(&self, user: &UserId) -> String {
        format!("{}deliver:{{{user}}}", self.prefix)
    }
    /// A link probe of this replica; on a cluster `tag` places it in a slot of one shard.
    fn probe(&self, replica: &str, tag: Option<&str>) -> String {
        match tag {
            Some(tag) => format!("{}probe:{{{tag}}}:{replica}", self.prefix),
            None => format!("{}probe:{replica}", self.prefix),
        }
    }
    fn key_index(&self, public_key: &str) -> String {
        let digest = Sha256::digest(public_key.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}pk:{hex}", self.prefix)
    }
    /// The user of a doorbell channel name, if it is one of ours.
    fn channel_user(&self, channel: &[u8]) -> Option<UserId> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?.strip_prefix(b"deliver:{")?;
        let uid = rest.strip_suffix(b"}")?;
        UserId::parse(std::str::from_utf8(uid).ok()?)
    }
}

/// A connection to one Redis (reconnecting by itself) or to a Redis Cluster (routing each
/// command to the shard owning its slot). Every command path above is the same for both.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Subscribes to doorbell channels: plain pub/sub on one Redis, sharded pub/sub (each
    /// channel on the shard of its `{uid}` slot) on a cluster.
    async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channels).await,
            // One channel per command, many at once: channels of different users are in
            // different slots (and redis-rs 1.8's own resubscription, which groups them by node,
            // fails with CROSSSLOT: the supervisor resubscribes this way after every reconnect).
            Conn::Cluster(c) => {
                let subscribe = |channel: &String| {
                    let (mut c, channel) = (c.clone(), channel.clone());
                    async move { c.ssubscribe(channel).await }
                };
                each_concurrently(channels, subscribe).await
            }
        }
    }
    async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channels).await,
            Conn::Cluster(c) => {
                let unsubscribe = |channel: &String| {
                    let (mut c, channel) = (c.clone(), channel.clone());
                    async move { c.sunsubscribe(channel).await }
                };
                each_concurrently(channels, unsubscribe).await
            }
        }
    }
}

/// Commands a cluster connection has in flight at once when one operation touches many slots.
const CLUSTER_CONCURRENCY: usize = 64;

/// Runs `command` for every item, up to `CLUSTER_CONCURRENCY` at once (each goes to its own
/// slot's shard); the first error, if any, once all are done.
async fn each_concurrently<T, F, Fut>(items: &[T], command: F) -> RedisResult<()>
where
    F: Fn(&T) -> Fut,
    Fut: Future<Output = RedisResult<()>>,
{
    let results: Vec<RedisResult<()>> =
        stream::iter(items.iter().map(command)).buffer_unordered(CLUSTER_CONCURRENCY).collect().await;
    results.into_iter().collect()
}

/// How to (re)connect: a client for commands and one, speaking RESP3, for subscriptions.
#[allow(clippy::large_enum_variant, reason = "one per engine: its size does not matter")]
enum Connector {
    Single { client: redis::Client, pubsub_client: redis::Client },
    Sentinel(SentinelConnector),
    Cluster { client: ClusterClient, pubsub_client: ClusterClient },
}

/// Indices of a replica's two links in `SentinelConnector::reached`.
const COMMAND_LINK: usize = 0;
const SUBSCRIPTION_LINK: usize = 1;

/// Connects to the master the Sentinels name, and remembers which master each link reached, so
/// the supervisor can tell when a failover moved it.
struct SentinelConnector {
    sentinel: tokio::sync::Mutex<redis::sentinel::Sentinel>,
    /// The Sentinels, for the supervisor's "which master now?", and a connection to each once
    /// made.
    sentinels: Vec<redis::Client>,
    asked: tokio::sync::Mutex<Vec<Option<redis::aio::MultiplexedConnection>>>,
    /// The Sentinel that answered last (asked first next time).
    answered: std::sync::atomic::AtomicUsize,
    master: String,
    /// Credentials and database for the master (those of the first Sentinel URL).
    node: redis::sentinel::SentinelNodeConnectionInfo,
    /// The master's address the command and the subscription link were made for.
    reached: Mutex<[Option<String>; 2]>,
}

impl SentinelConnector {
    /// A client for the current master (Sentinel's answer, checked with `ROLE` on the master).
    async fn master(&self) -> RedisResult<redis::Client> {
        self.sentinel.lock().await.async_master_for(&self.master, Some(&self.node)).await
    }
    async fn connect(&self, link: usize, config: ConnectionManagerConfig) -> RedisResult<Conn> {
        let mut client = self.master().await?;
        let address = client.get_connection_info().addr().to_string();
        if link == SUBSCRIPTION_LINK {
            client = with_resp3(&client)?;
        }
        let con = client.get_connection_manager_with_config(config).await?;
        self.reached.lock().unwrap_or_else(|e| e.into_inner())[link] = Some(address);
        Ok(Conn::Single(con))
    }
    /// The master's address, if the Sentinels now name another one than a link reached: one
    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on a kept connection (cheap enough for every tick),
    /// and only when that differs, the full lookup that also checks `ROLE` on the master (so a
    /// Sentinel with a stale view does not move the links back and forth).
    async fn moved(&self, timeout: Duration) -> RedisResult<Option<String>> {
        let reached = self.reached.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let differs = |address: &str| reached.iter().any(|r| r.as_deref() != Some(address));
        if !differs(&self.named_master(timeout).await?) {
            return Ok(None);
        }
        let address = self.master().await?.get_connection_info().addr().to_string();
        Ok(differs(&address).then_some(address))
    }
    /// The master's address as the first Sentinel that answers names it, starting with the one
    /// that answered last; each gets an equal share of `timeout`, so a hung one cannot use it up.
    async fn named_master(&self, timeout: Duration) -> RedisResult<String> {
        let share = (timeout / self.sentinels.len().max(1) as u32).max(Duration::from_millis(50));
        let config =
            redis::AsyncConnectionConfig::new().set_connection_timeout(Some(share)).set_response_timeout(Some(share));
        let mut asked = self.asked.lock().await;
        let count = self.sentinels.len();
        let first = self.answered.load(Ordering::Relaxed);
        let mut last_error = None;
        for i in (0..count).map(|k| (first + k) % count) {
            // Taken out while in use: a connection that fails (or hangs past the share) is
            // dropped, not kept for the next tick.
            let con = match asked[i].take() {
                Some(con) => Ok(con),
                None => self.sentinels[i].get_multiplexed_async_connection_with_config(&config).await,
            };
            let mut con = match con {
                Ok(con) => con,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let mut ask = redis::cmd("SENTINEL");
            ask.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master);
            let answer = tokio::time::timeout(share, ask.query_async::<Option<(String, u16)>>(&mut con)).await;
            match answer {
                Ok(Ok(Some((host, port)))) => {
                    asked[i] = Some(con);
                    self.answered.store(i, Ordering::Relaxed);
                    return Ok(format!("{host}:{port}"));
                }
                Ok(Ok(None)) => {
                    asked[i] = Some(con);
                    last_error = Some(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the Sentinel does not know the master",
                        self.master.clone(),
                    )));
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => last_error = Some((redis::ErrorKind::Io, "no answer from the Sentinel").into()),
            }
        }
        Err(last_error.unwrap_or_else(|| (redis::ErrorKind::Client, "no Sentinel configured").into()))
    }
}

/// The same client speaking RESP3 (pushes: what a subscription connection needs).
fn with_resp3(client: &redis::Client) -> RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(resp3))
}

impl Connector {
    fn config(timeout: Duration) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2))
    }
    async fn cmd(&self, timeout: Duration) -> RedisResult<Conn> {
        match self {
            Connector::Single { client, .. } => {
                client.get_connection_manager_with_config(Self::config(timeout)).await.map(Conn::Single)
            }
            Connector::Sentinel(sentinel) => sentinel.connect(COMMAND_LINK, Self::config(timeout)).await,
            Connector::Cluster { client, .. } => client.get_async_connection().await.map(Conn::Cluster),
        }
    }
    async fn pubsub(&self, push: &PushHandler, timeout: Duration) -> RedisResult<Conn> {
        match self {
            Connector::Single { pubsub_client, .. } => {
                let config = Self::config(timeout).set_push_sender(push.clone()).set_automatic_resubscription();
                pubsub_client.get_connection_manager_with_config(config).await.map(Conn::Single)
            }
            Connector::Sentinel(sentinel) => {
                let config = Self::config(timeout).set_push_sender(push.clone()).set_automatic_resubscription();
                sentinel.connect(SUBSCRIPTION_LINK, config).await
            }
            // The push sender was given to the cluster client when it was built.
            Connector::Cluster { pubsub_client, .. } => pubsub_client.get_async_connection().await.map(Conn::Cluster),
        }
    }
}

/// The two connections, replaceable when one goes dead, and how to make new ones.
struct Links {
    cmd: RwLock<Conn>,
    pubsub: RwLock<Conn>,
    connector: Connector,
    push: PushHandler,
    timeout: Duration,
    /// Whether the subscription link is known to work (readiness depends on it).
    up: AtomicBool,
}

impl Links {
    fn cmd(&self) -> Conn {
        self.cmd.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn pubsub(&self) -> Conn {
        self.pubsub.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// `PUBLISH` on one Redis, `SPUBLISH` (sharded) on a cluster.
    fn publish_command(&self) -> &'static str {
        match self.connector {
            Connector::Single { .. } | Connector::Sentinel(_) => "PUBLISH",
            Connector::Cluster { .. } => "SPUBLISH",
        }
    }
    async fn connect_cmd(&self) -> RedisResult<Conn> {
        self.connector.cmd(self.timeout).await
    }
    async fn connect_pubsub(&self) -> RedisResult<Conn> {
        self.connector.pubsub(&self.push, self.timeout).await
    }
    fn is_cluster(&self) -> bool {
        matches!(self.connector, Connector::Cluster { .. })
    }
    /// Publishes `payload` on every channel, many at once (each to its own shard on a cluster).
    async fn publish_each(&self, channels: &[String], payload: &str) -> RedisResult<()> {
        let con = self.cmd();
        let publish = |channel: &String| {
            let mut con = con.clone();
            let publish = redis::cmd(self.publish_command()).arg(channel).arg(payload).to_owned();
            async move { publish.query_async::<()>(&mut con).await }
        };
        each_concurrently(channels, publish).await
    }
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        metrics::gauge!(metric::REDIS_LINK_UP).set(if up { 1.0 } else { 0.0 });
    }
}

/// Receives the subscription connection's pushes: doorbells go to the hub, probes are
/// counted, a disconnection wakes the supervisor, a subscription the server dropped goes back
/// to the subscriber.
#[derive(Clone)]
struct PushHandler {
    hub: Arc<Hub>,
    keys: Keys,
    /// This replica's probe channels start with `<p>probe:` and end with its id.
    probe_prefix: Arc<[u8]>,
    probe_suffix: Arc<[u8]>,
    /// The highest probe number seen back, per probe channel.
    probe_seen: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
    /// The highest echo (`e<replica>:<n>`, see `prove_subscriptions`) seen back, per channel,
    /// while one is awaited: echoes numbered below `echo_floor` (late ones) are not kept.
    echoes: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
    echo_floor: Arc<AtomicU64>,
    disconnected: Arc<Notify>,
    /// Links lost so far (disconnections, failed resubscriptions): the supervisor recovers
    /// until it has handled the latest.
    disconnections: Arc<AtomicU64>,
    lost: mpsc::UnboundedSender<SubRequest>,
}

impl AsyncPushSender for PushHandler {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage => self.on_message(info.data),
            PushKind::Disconnection => {
                // From now until the supervisor has resubscribed and every session re-read
                // its inbox, announcements may be missing: forward nothing live (redis-rs
                // resubscribes by itself, so live messages would otherwise overtake the gap).
                self.link_lost();
            }
            // Our own unsubscriptions are confirmed so, but a cluster node also sends it
            // unasked when the channel's slot moved away (a migration, a failover): the
            // subscriber subscribes it again where it lives now, if it is still wanted.
            PushKind::SUnsubscribe => {
                if let Some(Value::BulkString(channel)) = info.data.into_iter().next() {
                    // Until subscribed again, its doorbells go nowhere: the session forwards
                    // nothing live before it re-read (and re-reads again once subscribed).
                    if let Some(user) = self.keys.channel_user(&channel) {
                        self.hub.resync(&user);
                    }
                    let _ = self.lost.send(SubRequest::Lost(channel));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl PushHandler {
    /// Announcements may be missing from now on: until the supervisor has resubscribed and
    /// every session re-read its inbox, forward nothing live (see `Hub::set_degraded`).
    fn link_lost(&self) {
        self.hub.set_degraded(true);
        self.disconnections.fetch_add(1, Ordering::AcqRel);
        self.disconnected.notify_one();
    }

    /// A stored message (`m<id>\n<envelope>`), a takeover (`t<generation>`) or our probe.
    fn on_message(&self, data: Vec<Value>) {
        let mut data = data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) = (data.next(), data.next()) else {
            return;
        };
        if channel.starts_with(&self.probe_prefix) && channel.ends_with(&self.probe_suffix) {
            if let Some(n) = std::str::from_utf8(&payload).ok().and_then(|n| n.parse::<u64>().ok()) {
                let mut seen = self.probe_seen.lock().unwrap_or_else(|e| e.into_inner());
                let seen = seen.entry(channel).or_default();
                *seen = (*seen).max(n);
            }
            return;
        }
        let Some(user) = self.keys.channel_user(&channel) else { return };
        match payload.first() {
            Some(b'm') => {
                let Some(newline) = payload.iter().position(|&b| b == b'\n') else { return };
                let Some((id, seq)) = std::str::from_utf8(&payload[1..newline]).ok().and_then(|h| h.split_once(' '))
                else {
                    return;
                };
                let (Some(id), Ok(seq)) = (parse_id(id.as_bytes()), seq.parse()) else { return };
                let envelope = Bytes::from(payload).slice(newline + 1..);
                self.hub.deliver(&user, Delivery { id, ts: id.ms, seq, envelope });
            }
            Some(b't') => {
                if let Some(generation) = std::str::from_utf8(&payload[1..]).ok().and_then(|g| g.parse().ok()) {
                    self.hub.takeover(&user, generation);
                }
            }
            Some(b'e') => {
                // An echo proving a subscription; only this replica's count.
                let Some(n) = payload[1..].strip_prefix(&*self.probe_suffix).and_then(|rest| rest.strip_prefix(b":"))
                else {
                    return;
                };
                let n = std::str::from_utf8(n).ok().and_then(|n| n.parse::<u64>().ok());
                if let Some(n) = n.filter(|&n| n >= self.echo_floor.load(Ordering::Acquire)) {
                    let mut echoes = self.echoes.lock().unwrap_or_else(|e| e.into_inner());
                    let seen = echoes.entry(channel).or_default();
                    *seen = (*seen).max(n);
                }
            }
            _ => {}
        }
    }
}

/// Work for the remover: messages written to specification clients leave their inboxes in
/// pipelined batches; a barrier answers once every removal queued before it is done.
enum Removal {
    Delivered(UserId, Vec<MsgId>),
    Barrier(oneshot::Sender<()>),
}

/// Removals queued per pipeline (one round trip).
const REMOVAL_BATCH: usize = 512;

enum SubRequest {
    /// Bring the user's subscription in line with the hub; answer once it is.
    Sync(UserId, Option<oneshot::Sender<Result<(), Unavailable>>>),
    /// Subscribe every user the hub holds (and the probe channels) again, on the current link.
    All(oneshot::Sender<Result<(), Unavailable>>),
    /// The probe channels to hold from now on (one per shard on a cluster).
    Probes(Vec<String>, oneshot::Sender<Result<(), Unavailable>>),
    /// The server ended this subscription by itself (its slot moved to another shard).
    Lost(Vec<u8>),
}

impl RedisEngine {
    pub async fn connect(settings: &Settings, hub: Arc<Hub>) -> Result<Self, Unavailable> {
        let timeout = Duration::from_millis(settings.redis.command_timeout_ms);
        let keys = Keys { prefix: settings.redis.prefix.clone() };
        let unavailable = |e: redis::RedisError| Unavailable(e.to_string());

        let replica = uuid::Uuid::new_v4().simple().to_string();
        let (subscriptions, requests) = mpsc::unbounded_channel();
        let push = PushHandler {
            hub: hub.clone(),
            keys: keys.clone(),
            probe_prefix: keys.probe("", None).as_bytes().into(),
            probe_suffix: replica.as_bytes().into(),
            probe_seen: Arc::default(),
            echoes: Arc::default(),
            echo_floor: Arc::default(),
            disconnected: Arc::new(Notify::new()),
            disconnections: Arc::default(),
            lost: subscriptions.clone(),
        };
        let connector = match settings.redis.mode {
            RedisMode::Single => {
                let url = settings.redis_urls()[0];
                let client = redis::Client::open(url).map_err(unavailable)?;
                let pubsub_client = with_resp3(&client).map_err(unavailable)?;
                Connector::Single { client, pubsub_client }
            }
            RedisMode::Sentinel => {
                // The URLs' credentials and database are the master's; a Sentinel has no
                // databases, so it is asked with database 0.
                let mut node = None;
                let mut sentinels = Vec::new();
                for url in settings.redis_urls() {
                    let info = redis::Client::open(url).map_err(unavailable)?.get_connection_info().clone();
                    node.get_or_insert_with(|| info.redis_settings().clone());
                    let db0 = info.redis_settings().clone().set_db(0);
                    sentinels.push(redis::Client::open(info.set_redis_settings(db0)).map_err(unavailable)?);
                }
                let node = node.ok_or_else(|| Unavailable("redis.url names no Sentinel".into()))?;
                let infos = sentinels.iter().map(|c| c.get_connection_info().clone()).collect();
                Connector::Sentinel(SentinelConnector {
                    sentinel: tokio::sync::Mutex::new(redis::sentinel::Sentinel::build(infos).map_err(unavailable)?),
                    asked: tokio::sync::Mutex::new(sentinels.iter().map(|_| None).collect()),
                    answered: Default::default(),
                    sentinels,
                    master: settings.redis.sentinel_master.trim().to_owned(),
                    node: redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(node),
                    reached: Mutex::default(),
                })
            }
            RedisMode::Cluster => {
                let seeds = settings.redis_urls();
                let builder = || {
                    ClusterClientBuilder::new(seeds.clone())
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        // Sends to a slot being migrated are refused with TRYAGAIN for a moment:
                        // retry soon and a few times (the default waits over a second).
                        .retries(6)
                        .min_retry_wait(5)
                        .max_retry_wait(timeout.as_millis() as u64 / 4)
                        .retry_wait_formula(10, 2)
                };
                let client = builder().build().map_err(unavailable)?;
                let pubsub_client = builder()
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(push.clone())
                    .build()
                    .map_err(unavailable)?;
                Connector::Cluster { client, pubsub_client }
            }
        };
        let cmd = retry_connect(|| connector.cmd(timeout)).await?;
        let pubsub = retry_connect(|| connector.pubsub(&push, timeout)).await?;
        let links = Arc::new(Links {
            cmd: RwLock::new(cmd),
            pubsub: RwLock::new(pubsub),
            connector,
            push,
            timeout,
            up: AtomicBool::new(false),
        });

        for counter in [metric::REDIS_RESUBSCRIPTIONS, metric::REDIS_DEAD_LINKS, metric::REDIS_MOVED_SUBSCRIPTIONS] {
            metrics::counter!(counter).increment(0);
        }
        let publish = links.publish_command();
        let stop = CancellationToken::new();
        let (removals, removal_queue) = mpsc::unbounded_channel();
        tokio::spawn(stop.clone().run_until_cancelled_owned(remover(links.clone(), keys.clone(), removal_queue)));
        let subscriber = subscriber(links.clone(), hub.clone(), keys.clone(), requests);
        tokio::spawn(stop.clone().run_until_cancelled_owned(subscriber));
        let supervisor = Supervisor {
            links: links.clone(),
            subscriptions: subscriptions.clone(),
            hub: hub.clone(),
            keys: keys.clone(),
            replica,
            probes: Vec::new(),
            tags: HashMap::new(),
            placed: HashMap::new(),
            probes_sent: 0,
            interval: Duration::from_millis(settings.redis.probe_interval_ms),
            handled: 0,
        };
        // The first link check doubles as the initial subscription of the probe channels.
        let mut supervisor = supervisor;
        supervisor.recover(false).await;
        tokio::spawn(stop.clone().run_until_cancelled_owned(supervisor.run()));

        Ok(Self {
            inner: Arc::new(Inner {
                hub,
                keys,
                limits: settings.limits.clone(),
                timeout,
                links,
                subscriptions,
                removals,
                send_script: Script::new(&with_publish(SEND_SCRIPT, publish)),
                attach_script: Script::new(&with_publish(ATTACH_SCRIPT, publish)),
                stop,
            }),
        })
    }

    pub async fn login(&self, public_key: &str) -> Result<UserId, Unavailable> {
        let this = &self.inner;
        let index = this.keys.key_index(public_key);
        let mut con = this.links.cmd();
        let existing: Option<String> = this.timed("login_get", con.get(&index)).await?;
        if let Some(user) = existing {
            return parse_indexed(&user);
        }
        // Create the record first, then claim the key: whoever claims it first wins, and a
        // loser's record (never announced to anyone) is removed again.
        let user = UserId::random();
        let record = this.keys.user(&user);
        let created = super::memory::unix_ms();
        let fields = [("publicKey", public_key), ("createdAt", &created.to_string())];
        let mut claim = redis::cmd("SET");
        claim.arg(&index).arg(user.as_str()).arg("NX").arg("GET");
        let previous: Option<String> = if this.links.is_cluster() {
            // The record and the index are in different slots: two commands, in this order.
            let _: () = this.timed("login_claim", con.hset_multiple(&record, &fields)).await?;
            this.timed("login_claim", claim.query_async(&mut con)).await?
        } else {
            let mut pipe = redis::pipe();
            pipe.hset_multiple(&record, &fields).ignore().add_command(claim);
            let (previous,): (Option<String>,) = this.timed("login_claim", pipe.query_async(&mut con)).await?;
            previous
        };
        match previous {
            None => Ok(user),
            Some(winner) => {
                let _: RedisResult<()> = con.del(&record).await;
                parse_indexed(&winner)
            }
        }
    }

    pub async fn public_key(&self, user: &UserId) -> Result<Option<String>, Unavailable> {
        let mut con = self.inner.links.cmd();
        self.inner.timed("lookup", con.hget(self.inner.keys.user(user), "publicKey")).await
    }

    /// Several sends in one pipeline: one round trip, executed in order.
    pub async fn send_many(&self, sends: &[(UserId, Bytes)]) -> Vec<Result<MsgId, SendError>> {
        let this = &self.inner;
        if this.links.is_cluster() {
            return self.send_per_recipient(sends).await;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (to, envelope) in sends {
            pipe.invoke_script(&self.send_invocation(to, envelope));
        }
        let mut con = this.links.cmd();
        let mut replies: Result<Vec<RedisResult<Value>>, Unavailable> =
            this.timed("send", pipe.query_async(&mut con)).await;
        // A pipeline does not load the script by itself (a restarted or failed-over Redis has
        // lost it): every EVALSHA then failed without effect, so load it and run them again.
        let missing_script = |r: &RedisResult<Value>| {
            r.as_ref().err().is_some_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        };
        // Only when every command failed so: a pipeline is not atomic, and if some of it ran
        // (the script was loaded meanwhile), running it again would store those twice; the
        // failed ones are then answered `unavailable` and retried by their senders.
        if replies.as_ref().is_ok_and(|all| !all.is_empty() && all.iter().all(missing_script)) {
            let invocation = this.send_script.prepare_invoke();
            if this.timed("send", invocation.load_async(&mut con)).await.is_ok() {
                replies = this.timed("send", pipe.query_async(&mut con)).await;
            }
        }
        match replies {
            Ok(replies) if replies.len() == sends.len() => replies
                .into_iter()
                .map(|reply| reply.map_err(|e| Unavailable(e.to_string()).into()).and_then(send_reply))
                .collect(),
            Ok(_) => sends.iter().map(|_| Err(Unavailable("short pipeline reply".into()).into())).collect(),
            Err(e) => sends.iter().map(|_| Err(e.clone().into())).collect(),
        }
    }

    /// On a cluster a pipeline must stay in one slot (and redis-rs retries a whole pipeline
    /// when any reply in it is a redirect, which would store the others twice): each
    /// recipient's sends go one after the other, in order, and different recipients' at once.
    async fn send_per_recipient(&self, sends: &[(UserId, Bytes)]) -> Vec<Result<MsgId, SendError>> {
        let mut by_recipient: HashMap<&UserId, Vec<usize>> = HashMap::new();
        for (i, (to, _)) in sends.iter().enumerate() {
            by_recipient.entry(to).or_default().push(i);
        }
        let per_recipient = by_recipient.into_values().map(|indices| async move {
            let mut results = Vec::with_capacity(indices.len());
            for i in indices {
                let (to, envelope) = &sends[i];
                results.push((i, self.send_one(to, envelope).await));
            }
            results
        });
        let done: Vec<_> = stream::iter(per_recipient).buffer_unordered(CLUSTER_CONCURRENCY).collect().await;
        let mut results: Vec<_> = done.into_iter().flatten().collect();
        results.sort_unstable_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, result)| result).collect()
    }

    pub async fn send_one(&self, to: &UserId, envelope: &Bytes) -> Result<MsgId, SendError> {
        let this = &self.inner;
        let mut con = this.links.cmd();
        let reply: Value = this.timed("send", self.send_invocation(to, envelope).invoke_async(&mut con)).await?;
        send_reply(reply)
    }

    fn send_invocation<'a>(&'a self, to: &UserId, envelope: &Bytes) -> redis::ScriptInvocation<'a> {
        let this = &self.inner;
        let mut invocation = this.send_script.prepare_invoke();
        invocation
            .key(this.keys.user(to))
            .key(this.keys.inbox(to))
            .arg(envelope.as_ref())
            .arg(this.limits.inbox_capacity)
            .arg(this.limits.inbox_ttl_secs.saturating_mul(1000))
            .arg(this.keys.channel(to));
        invocation
    }

    pub async fn backlog(
        &self,
        user: &UserId,
        after: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, Unavailable> {
        let mut con = self.inner.links.cmd();
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: StreamRangeReply =
            self.inner.timed("backlog", con.xrange_count(self.inner.keys.inbox(user), start, "+", limit)).await?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|entry| {
                let id: MsgId = entry.id.parse().ok()?;
                let (mut envelope, mut seq) = (None, 0);
                for (field, value) in entry.map {
                    match (field.as_str(), value) {
                        ("e", Value::BulkString(bytes)) => envelope = Some(Bytes::from(bytes)),
                        ("s", Value::BulkString(n)) => seq = std::str::from_utf8(&n).ok()?.parse().ok()?,
                        _ => {}
                    }
                }
                Some(Delivery { id, ts: id.ms, seq, envelope: envelope? })
            })
            .collect())
    }

    pub async fn remove(&self, user: &UserId, ids: &[MsgId]) -> Result<(), Unavailable> {
        let mut con = self.inner.links.cmd();
        let ids: Vec<String> = ids.iter().map(MsgId::to_string).collect();
        let _: usize = self.inner.timed("remove", con.xdel(self.inner.keys.inbox(user), &ids)).await?;
        Ok(())
    }

    pub fn forget_delivered(&self, user: &UserId, ids: Vec<MsgId>) {
        let _ = self.inner.removals.send(Removal::Delivered(user.clone(), ids));
    }

    pub async fn attach(&self, link: &Link) -> Result<(), Unavailable> {
        let this = &self.inner;
        // Removals this replica queued for earlier connections land before this one reads the
        // inbox, so a reconnecting client does not get again what it was just given.
        let (settled, barrier) = oneshot::channel();
        let _ = this.removals.send(Removal::Barrier(settled));
        let _ = tokio::time::timeout(this.timeout, barrier).await;
        // Subscribe first, read later: a message stored after the subscription is announced
        // to us, one stored before it is in the backlog the session reads next.
        let (done, subscribed) = oneshot::channel();
        let _ = this.subscriptions.send(SubRequest::Sync(link.user.clone(), Some(done)));
        // Subscribing may take a few command timeouts on a cluster (subscribe, echo, once more).
        match tokio::time::timeout(this.timeout * 4, subscribed).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(Unavailable("subscriber stopped".into())),
            Err(_) => return Err(Unavailable("subscribe timed out".into())),
        }
        let mut con = this.links.cmd();
        let mut invocation = this.attach_script.prepare_invoke();
        invocation.key(this.keys.generation(&link.user)).arg(this.keys.channel(&link.user));
        let generation: u64 = this.timed("attach", invocation.invoke_async(&mut con)).await?;
        this.hub.set_generation(link, generation);
        Ok(())
    }

    /// The message counter and the connection generation: both keys are in the user's slot,
    /// so one pipeline reads them, on a cluster too.
    pub async fn resync_state(&self, user: &UserId) -> Result<super::ResyncState, Unavailable> {
        let this = &self.inner;
        let mut con = this.links.cmd();
        let mut pipe = redis::pipe();
        pipe.hget(this.keys.user(user), "seq").get(this.keys.generation(user));
        let (sequence, generation): (Option<u64>, Option<u64>) =
            this.timed("resync_state", pipe.query_async(&mut con)).await?;
        Ok(super::ResyncState { sequence: sequence.unwrap_or(0), generation })
    }

    pub fn detach(&self, link: &Link) {
        if self.inner.hub.unregister(link) {
            let _ = self.inner.subscriptions.send(SubRequest::Sync(link.user.clone(), None));
        }
    }

    pub async fn ready(&self) -> bool {
        let this = &self.inner;
        if !this.links.up.load(Ordering::Acquire) {
            return false;
        }
        let mut con = this.links.cmd();
        this.timed("ping", redis::cmd("PING").query_async::<()>(&mut con)).await.is_ok()
    }
}

impl Inner {
    async fn timed<T>(
        &self,
        command: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        timed(command, self.timeout, fut).await
    }
}

/// Runs one Redis call with a deadline, recording its latency and any error by command.
async fn timed<T>(
    command: &'static str,
    limit: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, Unavailable> {
    let started = Instant::now();
    let result = match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Unavailable(e.to_string())),
        Err(_) => Err(Unavailable(format!("no answer from Redis within {limit:?}"))),
    };
    command_histogram(command).record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!(metric::REDIS_ERRORS, "command" => command).increment(1);
    }
    result
}

/// Every command label `timed` is called with.
const COMMANDS: [&str; 12] = [
    "send",
    "remove",
    "attach",
    "backlog",
    "lookup",
    "login_get",
    "login_claim",
    "resync_state",
    "ping",
    "probe",
    "subscribe",
    "unsubscribe",
];

/// The latency histogram of a command, registered once (a labelled `histogram!` call is a
/// registry lookup, too much on the per-message path).
fn command_histogram(command: &'static str) -> &'static metrics::Histogram {
    static HISTOGRAMS: OnceLock<Vec<metrics::Histogram>> = OnceLock::new();
    let histograms = HISTOGRAMS.get_or_init(|| {
        COMMANDS.iter().map(|c| metrics::histogram!(metric::REDIS_COMMAND_SECONDS, "command" => *c)).collect()
    });
    let index = COMMANDS.iter().position(|c| *c == command).expect("every timed command is listed in COMMANDS");
    &histograms[index]
}

/// The send script's answer: the stream id, or why the message was refused.
fn send_reply(reply: Value) -> Result<MsgId, SendError> {
    let unexpected = || SendError::from(Unavailable(format!("unexpected reply to send: {reply:?}")));
    match &reply {
        Value::Int(-1) => Err(SendError::UserNotFound),
        Value::Int(-2) => Err(SendError::InboxFull),
        Value::BulkString(id) => parse_id(id).ok_or_else(unexpected),
        Value::SimpleString(id) => parse_id(id.as_bytes()).ok_or_else(unexpected),
        _ => Err(unexpected()),
    }
}

/// A script with its `PUBLISH` turned into `publish` (`SPUBLISH` on a cluster: the channel is
/// in the same `{uid}` slot as the keys, so the script stays on one shard).
fn with_publish(script: &str, publish: &str) -> String {
    script.replace("'PUBLISH'", &format!("'{publish}'"))
}

fn parse_id(raw: &[u8]) -> Option<MsgId> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

fn parse_indexed(user: &str) -> Result<UserId, Unavailable> {
    UserId::parse(user).ok_or_else(|| Unavailable(format!("key index holds a malformed user id {user:?}")))
}

/// The first connection may take a while (Redis starting next to us): retry with backoff.
async fn retry_connect<F, Fut>(mut connect: F) -> Result<Conn, Unavailable>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<Conn>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match connect().await {
            Ok(con) => return Ok(con),
            Err(e) if attempt >= 8 => return Err(Unavailable(e.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "Redis not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
        }
    }
}

/// Removes delivered messages in pipelined batches: one round trip for many sessions' writes.
async fn remover(links: Arc<Links>, keys: Keys, mut queue: mpsc::UnboundedReceiver<Removal>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, REMOVAL_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut barriers = Vec::new();
        for removal in batch.drain(..) {
            match removal {
                Removal::Delivered(user, ids) => {
                    let ids: Vec<String> = ids.iter().map(MsgId::to_string).collect();
                    pipe.xdel(keys.inbox(&user), &ids).ignore();
                }
                Removal::Barrier(done) => barriers.push(done),
            }
        }
        let mut con = links.cmd();
        let result = if pipe.is_empty() {
            Ok(())
        } else if links.is_cluster() {
            // A cluster pipeline goes to one shard: each user's removal on its own, many at once.
            let commands: Vec<&redis::Cmd> = pipe.cmd_iter().collect();
            let remove = |command: &&redis::Cmd| {
                let mut con = con.clone();
                let command = (*command).clone();
                async move { command.query_async::<()>(&mut con).await }
            };
            timed("remove", links.timeout, each_concurrently(&commands, remove)).await
        } else {
            timed("remove", links.timeout, pipe.exec_async(&mut con)).await
        };
        if let Err(e) = result {
            // Still stored: delivered again on the next connection rather than lost.
            tracing::warn!(error = %e, "cannot remove delivered messages");
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

/// Owns the subscription state of this replica. Requests are handled in order, in batches,
/// and each is decided from the hub's state at that moment, so a subscribe and an
/// unsubscribe of the same user can never overtake each other.
async fn subscriber(links: Arc<Links>, hub: Arc<Hub>, keys: Keys, mut requests: mpsc::UnboundedReceiver<SubRequest>) {
    let mut subscribed: HashSet<UserId> = HashSet::new();
    let mut probes: Vec<String> = Vec::new();
    let mut echo = 0;
    let mut batch = Vec::new();
    while requests.recv_many(&mut batch, SUBSCRIBE_CHUNK).await > 0 {
        let mut users = HashSet::new();
        // Users whose subscription the server ended: subscribed again even if we think they
        // are, then their sessions re-read what was announced meanwhile.
        let mut lost = HashSet::new();
        let mut waiters = Vec::new();
        let mut everyone = false;
        let (mut new_probes, mut old_probes) = (Vec::new(), Vec::new());
        for request in batch.drain(..) {
            match request {
                SubRequest::Sync(user, waiter) => {
                    users.insert(user);
                    waiters.extend(waiter);
                }
                SubRequest::All(waiter) => {
                    everyone = true;
                    waiters.push(waiter);
                }
                SubRequest::Probes(channels, waiter) => {
                    old_probes.extend(probes.iter().filter(|c| !channels.contains(c)).cloned());
                    new_probes.extend(channels.iter().filter(|c| !probes.contains(c)).cloned());
                    probes = channels;
                    waiters.push(waiter);
                }
                SubRequest::Lost(channel) => {
                    if let Some(probe) = probes.iter().find(|c| c.as_bytes() == channel) {
                        new_probes.push(probe.clone());
                    } else if let Some(user) = keys.channel_user(&channel) {
                        lost.insert(user);
                    }
                }
            }
        }
        let mut con = links.pubsub();
        let mut result = Ok(());
        if everyone {
            // The link may be a new connection: subscribe everyone wanted again, and settle
            // everyone subscribed before (some may have left meanwhile).
            users.extend(hub.users());
            users.extend(subscribed.iter().cloned());
            new_probes.clone_from(&probes);
        }
        new_probes.retain(|c| probes.contains(c));
        if !new_probes.is_empty()
            && let Err(e) = timed("subscribe", links.timeout, con.subscribe(&new_probes)).await
        {
            result = Err(e);
        }
        if !old_probes.is_empty()
            && let Err(e) = timed("unsubscribe", links.timeout, con.unsubscribe(&old_probes)).await
        {
            tracing::warn!(error = %e, "unsubscribing old probe channels failed");
        }
        users.extend(lost.iter().cloned());
        let mut to_subscribe = Vec::new();
        let mut to_unsubscribe = Vec::new();
        for user in users {
            match (hub.is_registered(&user), subscribed.contains(&user)) {
                (true, false) => to_subscribe.push(user),
                (true, true) if everyone || lost.contains(&user) => to_subscribe.push(user),
                (false, true) => to_unsubscribe.push(user),
                _ => {}
            }
        }
        let mut done = 0;
        for chunk in to_subscribe.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|u| keys.channel(u)).collect();
            let made = match timed("subscribe", links.timeout, con.subscribe(&channels)).await {
                // redis-rs 1.8.1 takes a node's unasked `sunsubscribe` for the reply to whatever
                // waits on that connection, so a subscription can be answered OK and never made:
                // on a cluster each one is proven by an echo through its channel.
                Ok(()) if links.is_cluster() => prove_subscriptions(&links, &mut con, channels, &mut echo)
                    .await
                    .map_err(|e| Unavailable(e.to_string())),
                other => other,
            };
            if let Err(e) = made {
                result = Err(e);
                break; // the link does not work: the rest would only wait as long each
            }
            subscribed.extend(chunk.iter().cloned());
            done += chunk.len();
        }
        let (ok, failed) = to_subscribe.split_at(done);
        let mut moved = 0;
        for user in ok.iter().filter(|user| lost.contains(*user)) {
            hub.resync(user);
            moved += 1;
        }
        metrics::counter!(metric::REDIS_MOVED_SUBSCRIPTIONS).increment(moved);
        // Users asking to connect are answered with the error (and retry); a full resubscription
        // is retried by the supervisor. Moved users have nobody else to bring them back: recover
        // the whole link (every user subscribed again, every session re-reads its inbox).
        if !everyone && failed.iter().any(|user| lost.contains(user)) {
            tracing::warn!("cannot subscribe moved channels again; recovering the link");
            links.push.link_lost();
        }
        for chunk in to_unsubscribe.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|u| keys.channel(u)).collect();
            if let Err(e) = timed("unsubscribe", links.timeout, con.unsubscribe(&channels)).await {
                // Some of them may still be subscribed: they only bring doorbells the hub
                // ignores. Forgotten all the same, so a user coming back is subscribed anew.
                tracing::warn!(error = %e, "unsubscribe failed");
            }
            chunk.iter().for_each(|user| {
                subscribed.remove(user);
            });
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Proves cluster subscriptions just made: an echo of this replica goes through every channel
/// and must come back. Channels that stay silent are subscribed once more (their slot may have
/// moved in between) and proven again; still silent, they are an error.
async fn prove_subscriptions(links: &Links, con: &mut Conn, channels: Vec<String>, echo: &mut u64) -> RedisResult<()> {
    let mut silent = channels;
    for attempt in 0..2 {
        *echo += 1;
        silent = echo_through(links, silent, *echo).await?;
        if silent.is_empty() {
            return Ok(());
        }
        tracing::debug!(silent = silent.len(), attempt, "subscriptions without echo");
        if attempt == 0 {
            con.subscribe(&silent).await?;
        }
    }
    Err((redis::ErrorKind::Io, "subscriptions made but silent", format!("{} channels", silent.len())).into())
}

/// Publishes echo `n` on every channel and returns those it did not come back through within
/// the command timeout (the hub ignores echoes).
async fn echo_through(links: &Links, channels: Vec<String>, n: u64) -> RedisResult<Vec<String>> {
    let echoes = &links.push.echoes;
    links.push.echo_floor.store(n, Ordering::Release);
    let payload = format!("e{}:{n}", String::from_utf8_lossy(&links.push.probe_suffix));
    let published = match tokio::time::timeout(links.timeout, links.publish_each(&channels, &payload)).await {
        Ok(result) => result,
        Err(_) => Err((redis::ErrorKind::Io, "echo publish timed out").into()),
    };
    let mut silent = channels;
    let deadline = Instant::now() + links.timeout;
    while published.is_ok() && !silent.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut seen = echoes.lock().unwrap_or_else(|e| e.into_inner());
        silent.retain(|c| match seen.get(c.as_bytes()) {
            Some(&e) if e >= n => {
                seen.remove(c.as_bytes());
                false
            }
            _ => true,
        });
    }
    published?;
    Ok(silent)
}

/// Watches the subscription link and brings it back after a drop or a silent death.
///
/// On a cluster the link is one connection per shard, and any of them may go quiet alone: a
/// probe goes to every shard (a channel in a slot each master owns, placed again whenever the
/// slots move), and the link counts as alive only while every probe comes back.
struct Supervisor {
    links: Arc<Links>,
    subscriptions: mpsc::UnboundedSender<SubRequest>,
    hub: Arc<Hub>,
    keys: Keys,
    replica: String,
    /// The probe channels currently subscribed.
    probes: Vec<String>,
    /// A hash tag for each slot range in use (finding one takes up to ~16k CRCs).
    tags: HashMap<(u16, u16), String>,
    /// The number of the last probe sent when each probe channel was placed.
    placed: HashMap<String, u64>,
    probes_sent: u64,
    interval: Duration,
    /// `PushHandler::disconnections` when the last recovery started.
    handled: u64,
}

impl Supervisor {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut misses = 0;
        loop {
            tokio::select! {
                _ = self.links.push.disconnected.notified() => {
                    // Every node of a cluster reports its own drop: let them all arrive, so
                    // one recovery covers them.
                    tokio::time::sleep(DISCONNECT_SETTLE).await;
                    if self.links.push.disconnections.load(Ordering::Acquire) == self.handled {
                        continue; // already covered by the last recovery
                    }
                    tracing::warn!("Redis subscription link dropped; reconnecting");
                    // A cluster connection that lost nodes can stall on its own slot refresh
                    // and resubscription (redis-rs 1.8.1), and a Sentinel-named master may be
                    // a replica by now (a failover ends its clients' connections): start from
                    // new connections. One Redis at one address is simply reconnected.
                    let rebuild = !matches!(self.links.connector, Connector::Single { .. });
                    self.recover(rebuild).await;
                    misses = 0;
                }
                _ = tick.tick() => {
                    if let Some(master) = self.master_moved().await {
                        tracing::warn!(%master, "Sentinel names a new master; moving the links to it");
                        self.recover(true).await;
                        misses = 0;
                        continue;
                    }
                    // A tick waits for Redis at most one interval (a silent shard must not
                    // stretch the checks). The previous probe must have come back by now on
                    // every channel that had one (a channel placed since has not).
                    let _ = self.place_probes(self.interval).await;
                    misses = if self.probe_missing() { misses + 1 } else { 0 };
                    if misses >= PROBE_MISSES {
                        metrics::counter!(metric::REDIS_DEAD_LINKS).increment(1);
                        tracing::warn!(misses, "Redis subscription link silent; rebuilding it");
                        self.recover(true).await;
                        misses = 0;
                    } else {
                        let _ = self.probe(self.interval).await;
                    }
                }
            }
        }
    }

    /// With Sentinel: the new master's address after a failover (asked every tick; no answer
    /// keeps the links where they are).
    async fn master_moved(&self) -> Option<String> {
        let Connector::Sentinel(sentinel) = &self.links.connector else { return None };
        match tokio::time::timeout(self.links.timeout * 2, sentinel.moved(self.links.timeout)).await {
            Ok(Ok(moved)) => moved,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no answer from the Sentinels");
                None
            }
            Err(_) => None,
        }
    }

    /// Whether the last probe sent did not come back on a channel that was already in place
    /// when it was sent.
    fn probe_missing(&self) -> bool {
        let n = self.probes_sent;
        let seen = self.links.push.probe_seen.lock().unwrap_or_else(|e| e.into_inner());
        self.probes.iter().any(|c| {
            self.placed.get(c).is_some_and(|&placed| placed < n) && seen.get(c.as_bytes()).is_none_or(|&s| s < n)
        })
    }

    /// Whether probe `n` came back on every probe channel.
    fn probes_returned(&self, n: u64) -> bool {
        let seen = self.links.push.probe_seen.lock().unwrap_or_else(|e| e.into_inner());
        self.probes.iter().all(|c| seen.get(c.as_bytes()).is_some_and(|&s| s >= n))
    }

    /// Publishes the next probe on every probe channel, waiting at most `limit`; returns its
    /// number. A probe that cannot be published in time counts as sent, so it is missed like
    /// one never delivered.
    async fn probe(&mut self, limit: Duration) -> Result<u64, Unavailable> {
        self.probes_sent += 1;
        let n = self.probes_sent;
        timed("probe", limit, self.links.publish_each(&self.probes, &n.to_string())).await?;
        Ok(n)
    }

    /// Subscribes the probe channels the topology asks for, if they changed: one on a single
    /// Redis, one per master on a cluster (reading the slots waits at most `limit`).
    async fn place_probes(&mut self, limit: Duration) -> Result<(), Unavailable> {
        let wanted = if self.links.is_cluster() {
            let mut con = self.links.cmd();
            let slots: Value = timed("probe", limit, redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut con)).await?;
            let mut channels = Vec::new();
            let ranges = first_range_per_master(&slots);
            for &(start, end) in &ranges {
                let tag = self.tags.entry((start, end)).or_insert_with(|| tag_in_slots(start, end));
                channels.push(self.keys.probe(&self.replica, Some(tag)));
            }
            self.tags.retain(|range, _| ranges.contains(range));
            channels.sort();
            if channels.is_empty() {
                return Err(Unavailable("CLUSTER SLOTS lists no master".into()));
            }
            channels
        } else {
            vec![self.keys.probe(&self.replica, None)]
        };
        if wanted == self.probes {
            return Ok(());
        }
        let (done, placed) = oneshot::channel();
        let _ = self.subscriptions.send(SubRequest::Probes(wanted.clone(), done));
        let result = placed.await.unwrap_or_else(|_| Err(Unavailable("subscriber stopped".into())));
        self.links
            .push
            .probe_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c, _| wanted.iter().any(|w| w.as_bytes() == c));
        for channel in &wanted {
            self.placed.entry(channel.clone()).or_insert(self.probes_sent);
        }
        self.placed.retain(|c, _| wanted.contains(c));
        self.probes = wanted;
        result
    }

    /// Until the link is proven to work end to end: (re)build it if asked, subscribe every
    /// local user again, check a probe comes back; then every session re-reads its inbox.
    async fn recover(&mut self, rebuild: bool) {
        // Whatever was lost until now, this recovery covers.
        self.handled = self.links.push.disconnections.load(Ordering::Acquire);
        self.links.set_up(false);
        self.hub.set_degraded(true);
        let mut rebuild = rebuild;
        let mut delay = Duration::from_millis(50);
        loop {
            if self.try_recover(rebuild).await {
                break;
            }
            // A link that failed to come back is replaced on the next attempt.
            rebuild = true;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        self.links.set_up(true);
        metrics::counter!(metric::REDIS_RESUBSCRIPTIONS).increment(1);
        // Re-read requests first, live forwarding after: see `Hub::set_degraded`.
        self.hub.resync_all();
        self.hub.set_degraded(false);
        tracing::info!(users = self.hub.len(), "Redis subscription link up; sessions resynchronised");
    }

    async fn try_recover(&mut self, rebuild: bool) -> bool {
        match self.try_recover_once(rebuild).await {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(error = %why.0, "Redis subscription link not recovered yet; retrying");
                false
            }
        }
    }

    async fn try_recover_once(&mut self, rebuild: bool) -> Result<(), Unavailable> {
        let started = Instant::now();
        if rebuild {
            let (cmd, pubsub) = tokio::join!(self.links.connect_cmd(), self.links.connect_pubsub());
            let unavailable = |e: redis::RedisError| Unavailable(format!("reconnecting: {e}"));
            let (cmd, pubsub) = (cmd.map_err(unavailable)?, pubsub.map_err(unavailable)?);
            *self.links.cmd.write().unwrap_or_else(|e| e.into_inner()) = cmd;
            *self.links.pubsub.write().unwrap_or_else(|e| e.into_inner()) = pubsub;
        }
        self.place_probes(self.links.timeout).await?;
        let (done, resubscribed) = oneshot::channel();
        if self.subscriptions.send(SubRequest::All(done)).is_err() {
            return Ok(()); // the engine is gone; nothing left to recover
        }
        resubscribed.await.unwrap_or_else(|_| Err(Unavailable("subscriber stopped".into())))?;
        let subscribed = started.elapsed();
        let n = self.probe(self.links.timeout).await?;
        let deadline = Instant::now() + self.links.timeout;
        while !self.probes_returned(n) {
            if Instant::now() > deadline {
                return Err(Unavailable("the probe did not come back".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::debug!(?subscribed, total = ?started.elapsed(), "subscription link checked end to end");
        Ok(())
    }
}

/// The first slot range of every master in a `CLUSTER SLOTS` reply
/// (`[[start, end, [host, port, id, ..], replicas..], ..]`), in no particular order.
fn first_range_per_master(reply: &Value) -> Vec<(u16, u16)> {
    let mut first: HashMap<Vec<u8>, (u16, u16)> = HashMap::new();
    let Value::Array(ranges) = reply else { return Vec::new() };
    for range in ranges {
        let Value::Array(fields) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else { continue };
        if start > end || end >= 16384 {
            continue;
        }
        // The node's address (host, port) names the master.
        let name = format!("{:?}", master.iter().take(2).collect::<Vec<_>>()).into_bytes();
        let entry = first.entry(name).or_insert((start, end));
        if start < entry.0 {
            *entry = (start, end);
        }
    }
    first.into_values().collect()
}

/// The Redis Cluster slot of a key or hash tag (CRC16/XMODEM modulo 16384).
fn slot_of(tag: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag) % 16384
}

/// The first decimal number whose slot is in `start..=end` (every slot has one below 10^6).
fn tag_in_slots(start: u16, end: u16) -> String {
    (0u32..1_000_000)
        .map(|n| n.to_string())
        .find(|tag| (start..=end).contains(&slot_of(tag.as_bytes())))
        .unwrap_or_else(|| "0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timed_command_has_a_histogram() {
        let source = include_str!("redis.rs");
        let code = &source[..source.find("#[cfg(test)]").unwrap()];
        for call in code.split("timed(").skip(1) {
            let Some(name) = call.trim_start().strip_prefix('"').and_then(|rest| rest.split('"').next()) else {
                continue;
            };
            assert!(COMMANDS.contains(&name), "timed(\"{name}\") is missing from COMMANDS");
        }
    }

    #[test]
    fn slots_match_redis_and_every_range_gets_a_tag() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        for (start, end) in [(0, 0), (5460, 5461), (16383, 16383), (0, 16383)] {
            let tag = tag_in_slots(start, end);
            assert!((start..=end).contains(&slot_of(tag.as_bytes())), "{tag} for {start}-{end}");
        }
    }

    #[test]
    fn one_probe_range_per_master_from_cluster_slots() {
        let node = |port: i64| Value::Array(vec![Value::BulkString(b"127.0.0.1".to_vec()), Value::Int(port)]);
        let range =
            |start, end, port| Value::Array(vec![Value::Int(start), Value::Int(end), node(port), node(port + 1)]);
        let reply =
            Value::Array(vec![range(100, 200, 7000), range(0, 99, 7002), range(5, 4, 7000), range(201, 300, 7002)]);
        let mut ranges = first_range_per_master(&reply);
        ranges.sort();
        assert_eq!(ranges, [(0, 99), (100, 200)]);
        assert!(first_range_per_master(&Value::Nil).is_empty());
    }

    #[test]
    fn keys_carry_the_user_as_hash_tag() {
        let keys = Keys { prefix: "t:".into() };
        let user = UserId::random();
        assert_eq!(keys.inbox(&user), format!("t:inbox:{{{user}}}"));
        assert_eq!(keys.channel_user(keys.channel(&user).as_bytes()), Some(user.clone()));
        assert_eq!(keys.channel_user(b"other:deliver:{x}"), None);
        assert!(keys.key_index("abc").starts_with("t:pk:"));
        assert_eq!(keys.key_index("abc").len(), "t:pk:".len() + 64);
    }
}
