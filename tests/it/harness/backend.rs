//! The engine a test runs against: memory, embedded (a data directory of its own per server
//! config), or a Redis of the test's own as a single node, a Cluster or behind a Sentinel.
//! `both_engines!` (in `main.rs`) builds one per test from it.

use super::cluster::RedisCluster;
use super::redis::Redis;
use super::sentinel::Sentinel;
use super::server::{Server, ServerConfig};

/// One engine: memory, a Redis of the test's own, a Redis Cluster of its own, or a Redis
/// named by a Sentinel of its own.
pub enum Backend {
    Memory,
    /// Each `config()` gets a fresh data directory, removed with the last server using it.
    Embedded,
    Redis(Redis),
    Cluster(RedisCluster),
    /// The master and the Sentinel watching it (dropped in this order).
    Sentinel(Redis, Sentinel),
}

impl Backend {
    pub fn memory() -> Self {
        Backend::Memory
    }
    pub fn embedded() -> Self {
        Backend::Embedded
    }
    pub fn redis() -> Self {
        Backend::Redis(Redis::start())
    }
    /// Three masters: users' slots fall on every one of them.
    pub fn cluster() -> Self {
        Backend::Cluster(RedisCluster::start(3, 0))
    }
    pub fn sentinel() -> Self {
        let master = Redis::start();
        let sentinel = Sentinel::start(&master);
        Backend::Sentinel(master, sentinel)
    }
    pub fn config(&self) -> ServerConfig {
        match self {
            Backend::Memory => ServerConfig::memory(),
            Backend::Embedded => ServerConfig::embedded(),
            Backend::Redis(redis) => ServerConfig::redis(redis),
            Backend::Cluster(cluster) => ServerConfig::cluster(cluster),
            Backend::Sentinel(_, sentinel) => ServerConfig::sentinel(sentinel),
        }
    }
    pub fn is_redis(&self) -> bool {
        self.config().redis_url.is_some()
    }
    pub fn server(&self) -> Server {
        Server::start(&self.config())
    }
}
