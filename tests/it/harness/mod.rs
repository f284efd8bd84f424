//! Real processes for the tests: `redis-server` (alone, as a Cluster, behind a Sentinel) on
//! free ports, `enigma-server` replicas, and HTTP/WebSocket clients. Every process is killed
//! when its handle drops (also on a panic), every test gets its own ports and key prefix, so
//! tests run in parallel. Test files import from here only, never from each other.

mod backend;
mod cluster;
mod keys;
mod ports;
mod proxy;
mod redis;
mod sentinel;
mod server;
mod tempdir;
mod traffic;
mod wait;
mod ws;

pub use backend::Backend;
pub use cluster::RedisCluster;
pub use keys::random_key;
pub use ports::{ClosedPort, free_port};
pub use proxy::Blackhole;
pub use redis::Redis;
pub use sentinel::Sentinel;
pub use server::{Metrics, Server, ServerConfig};
pub use tempdir::TempDir;
pub use traffic::{
    CONVERGE, Tally, all_delivered_on_one_connection, assert_all_delivered, duplicates, exchange, fill_backlog,
    next_json, receive_all, send_until_receipted,
};
pub use wait::{DEADLINE, wait_until};
pub use ws::Ws;
