//! `Conn`: one connection type over one Redis and a Redis Cluster, so every command path
//! above it is the same for both; subscribing differs (sharded pub/sub on a cluster).

use std::future::Future;

use futures_util::{StreamExt, stream};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, RedisResult, Value};

/// A connection to one Redis (reconnecting by itself) or to a Redis Cluster (routing each
/// command to the shard owning its slot).
#[derive(Clone)]
pub(super) enum Conn {
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
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channels).await,
            // One channel per command, many at once: channels of different users are in
            // different slots (and redis-rs 1.8's own resubscription, which groups them by node,
            // fails with CROSSSLOT: the link resubscribes this way after every reconnect).
            Conn::Cluster(c) => {
                let subscribe = |channel: &String| {
                    let (mut c, channel) = (c.clone(), channel.clone());
                    async move { c.ssubscribe(channel).await }
                };
                each_concurrently(channels, subscribe).await
            }
        }
    }
    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
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
pub(super) const CLUSTER_CONCURRENCY: usize = 64;

/// Runs `command` for every item, up to `CLUSTER_CONCURRENCY` at once (each goes to its own
/// slot's shard); the first error, if any, once all are done.
pub(super) async fn each_concurrently<T, F, Fut>(items: &[T], command: F) -> RedisResult<()>
where
    F: Fn(&T) -> Fut,
    Fut: Future<Output = RedisResult<()>>,
{
    let results: Vec<RedisResult<()>> =
        stream::iter(items.iter().map(command)).buffer_unordered(CLUSTER_CONCURRENCY).collect().await;
    results.into_iter().collect()
}

/// The same client speaking RESP3 (pushes: what a subscription connection needs).
pub(super) fn with_resp3(client: &redis::Client) -> RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(resp3))
}
