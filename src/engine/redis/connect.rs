//! Connecting: which kind of Redis to reach and how (`Connector`), the engine's live
//! connections (`Connections`: commands, subscriptions, the key directory's), and the first
//! connection's retry.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::{ProtocolVersion, RedisResult};

use super::super::unavailable::{Unavailable, is_loading};
use super::conn::{Conn, each_concurrently, with_resp3};
use super::push::PushHandler;
use super::sentinel::{Role, SentinelConnector};
use crate::config::{RedisMode, Settings};
use crate::telemetry::metric;

/// How to (re)connect: a client for commands and one, speaking RESP3, for subscriptions.
#[allow(clippy::large_enum_variant, reason = "one per engine: its size does not matter")]
pub(super) enum Connector {
    Single { client: redis::Client, pubsub_client: redis::Client },
    Sentinel(SentinelConnector),
    Cluster { client: ClusterClient, pubsub_client: ClusterClient },
}

impl Connector {
    /// `push` receives the subscription connection's pushes (a cluster client takes it now).
    pub(super) fn from_settings(
        settings: &Settings,
        timeout: Duration,
        push: &PushHandler,
    ) -> Result<Self, Unavailable> {
        let unavailable = Unavailable::from;
        // rustls has two providers compiled in (the clients' reqwest brings aws-lc-rs): name
        // one for the process, so `rediss://` never panics on the choice. Idempotent.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = match settings.redis_tls_ca_file() {
            Some(path) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| Unavailable::io("redis.tls_ca_file", e))?),
            }),
            None => None,
        };
        Ok(match settings.redis.mode {
            RedisMode::Single => {
                let url = settings.redis_urls()[0];
                let client = match &certs {
                    Some(certs) if url.starts_with("rediss://") => redis::Client::build_with_tls(url, certs.clone()),
                    _ => redis::Client::open(url),
                }
                .map_err(unavailable)?;
                let pubsub_client = with_resp3(&client).map_err(unavailable)?;
                Connector::Single { client, pubsub_client }
            }
            RedisMode::Sentinel => Connector::Sentinel(SentinelConnector::from_settings(settings)?),
            RedisMode::Cluster => {
                let seeds = settings.redis_urls();
                let builder = || {
                    let builder = ClusterClientBuilder::new(seeds.clone());
                    let builder = match &certs {
                        Some(certs) => builder.certs(certs.clone()),
                        None => builder,
                    };
                    builder
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
        })
    }

    fn config(timeout: Duration) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2))
    }

    pub(super) async fn cmd(&self, timeout: Duration) -> RedisResult<Conn> {
        match self {
            Connector::Single { client, .. } => {
                client.get_connection_manager_with_config(Self::config(timeout)).await.map(Conn::Single)
            }
            Connector::Sentinel(sentinel) => sentinel.connect(Role::Commands, Self::config(timeout)).await,
            Connector::Cluster { client, .. } => client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    /// A command connection whose answers may take `wait` longer than a command's (`WAIT`).
    async fn waiting(&self, timeout: Duration, wait: Duration) -> RedisResult<Conn> {
        let config = || Self::config(timeout).set_response_timeout(Some(timeout + wait));
        match self {
            Connector::Single { client, .. } => {
                client.get_connection_manager_with_config(config()).await.map(Conn::Single)
            }
            Connector::Sentinel(sentinel) => sentinel.connect(Role::Commands, config()).await,
            Connector::Cluster { client, .. } => {
                let config = ClusterConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout + wait);
                client.get_async_connection_with_config(config).await.map(Conn::Cluster)
            }
        }
    }

    pub(super) async fn pubsub(&self, push: &PushHandler, timeout: Duration) -> RedisResult<Conn> {
        match self {
            Connector::Single { pubsub_client, .. } => {
                let config = Self::config(timeout).set_push_sender(push.clone()).set_automatic_resubscription();
                pubsub_client.get_connection_manager_with_config(config).await.map(Conn::Single)
            }
            Connector::Sentinel(sentinel) => {
                let config = Self::config(timeout).set_push_sender(push.clone()).set_automatic_resubscription();
                sentinel.connect(Role::Subscriptions, config).await
            }
            // The push sender was given to the cluster client when it was built.
            Connector::Cluster { pubsub_client, .. } => pubsub_client.get_async_connection().await.map(Conn::Cluster),
        }
    }
}

/// The connections, replaceable when one goes dead, and how to make new ones.
pub(super) struct Connections {
    cmd: RwLock<Conn>,
    pubsub: RwLock<Conn>,
    /// The key directory's own command connection: its publisher, lease and proofs live on one
    /// shard of a cluster, and a cluster connection that cannot reach a node stalls every
    /// command it carries while it refreshes its slots. Kept apart, a directory retrying on an
    /// unreachable shard never holds up the messages of users on the reachable ones.
    directory: RwLock<Conn>,
    /// The key directory publisher's connection for `WAIT`, made when first needed and dropped
    /// when it fails or the others are made anew: `WAIT` holds up the connection it is sent on
    /// until the replicas answer, and the directory connection carries this replica's proofs.
    waiting: Mutex<Option<Conn>>,
    pub(super) connector: Connector,
    /// Where every subscription connection made (or made anew) sends its pushes.
    push: PushHandler,
    pub(super) timeout: Duration,
    /// Whether the subscription connection is known to work (readiness depends on it); set by
    /// the link alone.
    up: AtomicBool,
}

impl Connections {
    /// Connects both, retrying while Redis is not reachable yet.
    pub(super) async fn open(
        connector: Connector,
        push: PushHandler,
        timeout: Duration,
        target: &str,
    ) -> Result<Self, Unavailable> {
        let cmd = retry_connect(target, || connector.cmd(timeout)).await?;
        let pubsub = retry_connect(target, || connector.pubsub(&push, timeout)).await?;
        let directory = retry_connect(target, || connector.cmd(timeout)).await?;
        Ok(Self {
            cmd: RwLock::new(cmd),
            pubsub: RwLock::new(pubsub),
            directory: RwLock::new(directory),
            waiting: Mutex::new(None),
            connector,
            push,
            timeout,
            up: AtomicBool::new(false),
        })
    }

    pub(super) fn cmd(&self) -> Conn {
        self.cmd.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(super) fn pubsub(&self) -> Conn {
        self.pubsub.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(super) fn directory(&self) -> Conn {
        self.directory.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// The publisher's connection for `WAIT` (answers may take `wait` longer than a command's).
    pub(super) async fn waiting(&self, wait: Duration) -> RedisResult<Conn> {
        if let Some(con) = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(con);
        }
        let con = self.connector.waiting(self.timeout, wait).await?;
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some(con.clone());
        Ok(con)
    }
    /// Drops the `WAIT` connection (it failed): the next wait makes a new one.
    pub(super) fn drop_waiting(&self) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    /// `PUBLISH` on one Redis, `SPUBLISH` (sharded) on a cluster.
    pub(super) fn publish_command(&self) -> &'static str {
        match self.connector {
            Connector::Single { .. } | Connector::Sentinel(_) => "PUBLISH",
            Connector::Cluster { .. } => "SPUBLISH",
        }
    }
    /// Makes every connection anew and puts them in place of the old ones.
    pub(super) async fn reconnect(&self) -> Result<(), Unavailable> {
        let (cmd, pubsub, directory) = tokio::join!(
            self.connector.cmd(self.timeout),
            self.connector.pubsub(&self.push, self.timeout),
            self.connector.cmd(self.timeout)
        );
        let unavailable = |e| Unavailable::redis_while("reconnecting", e);
        let (cmd, pubsub, directory) =
            (cmd.map_err(unavailable)?, pubsub.map_err(unavailable)?, directory.map_err(unavailable)?);
        *self.cmd.write().unwrap_or_else(|e| e.into_inner()) = cmd;
        *self.pubsub.write().unwrap_or_else(|e| e.into_inner()) = pubsub;
        *self.directory.write().unwrap_or_else(|e| e.into_inner()) = directory;
        // Made anew when next needed, to the master the others reached.
        self.drop_waiting();
        Ok(())
    }
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.connector, Connector::Cluster { .. })
    }
    /// Publishes `payload` on every channel, many at once (each to its own shard on a cluster).
    pub(super) async fn publish_each(&self, channels: &[String], payload: &[u8]) -> RedisResult<()> {
        let con = self.cmd();
        let publish = |channel: &String| {
            let mut con = con.clone();
            let publish = redis::cmd(self.publish_command()).arg(channel).arg(payload).to_owned();
            async move { publish.query_async::<()>(&mut con).await }
        };
        each_concurrently(channels, publish).await
    }
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        metrics::gauge!(metric::REDIS_LINK_UP).set(if up { 1.0 } else { 0.0 });
    }
}

/// The first connection may take a while (Redis starting next to us): retry with backoff.
/// A Redis loading its dataset is there and will answer: that is waited for as long as the
/// load takes, not counted as a failed attempt. (Redis 7 lets a connection's handshake through
/// while it loads, so this seldom sees `LOADING`: the engine's first commands do, see
/// `commands::once_loaded`.)
async fn retry_connect<F, Fut>(target: &str, mut connect: F) -> Result<Conn, Unavailable>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<Conn>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match connect().await {
            Ok(con) => return Ok(con),
            Err(e) if is_loading(&e) => {
                tracing::warn!(redis = target, error = %e, "Redis is loading its dataset; waiting for it")
            }
            Err(e) if attempt >= 8 => return Err(e.into()),
            Err(e) => {
                tracing::warn!(redis = target, error = %e, attempt, "Redis not reachable yet; retrying");
                attempt += 1;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
