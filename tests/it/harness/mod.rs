//! Real processes for the tests: `redis-server` (alone, as a Cluster, behind a Sentinel) on
//! free ports, `enigma-server` replicas, and HTTP/WebSocket clients. Every process is killed
//! when its handle drops (also on a panic), every test gets its own ports and key prefix, so
//! tests run in parallel. Test files import from here only, never from each other.

mod auth;
mod backend;
mod bench;
mod cli;
mod cluster;
mod delay;
mod floor;
mod flow;
mod ipv6;
mod keys;
mod netns;
mod nginx;
mod ns_cluster;
mod ports;
mod prometheus;
mod proxy;
mod redis;
mod sentinel;
mod server;
mod tempdir;
mod tls;
mod traffic;
mod wait;
mod ws;

pub use auth::{
    Claimant, TEST_KID, TEST_SECRET, access_claims, expect_unauthorized, forge, test_token_keys, ws_with_token,
};
pub use backend::Backend;
pub use bench::run_bench;
pub use cli::{CliRun, CliUser};
pub use cluster::RedisCluster;
pub use delay::DelayProxy;
pub use floor::{Forwarder, run_floor};
pub use flow::{Flow, FlowTally};
pub use ipv6::{Ipv6Namespace, Ipv6Net, Subnet};
pub use keys::random_key;
pub use netns::{Host, Lan, NsProcess, NsRedis};
pub use nginx::{Nginx, nginx_binary};
pub use ns_cluster::NsCluster;
pub use ports::{ClosedPort, free_port};
pub use prometheus::{Prometheus, prometheus_binary};
pub use proxy::Blackhole;
pub use redis::Redis;
pub use sentinel::Sentinel;
pub use server::{Metrics, Server, ServerConfig};
pub use tempdir::TempDir;
pub use tls::TestCa;
pub use traffic::{
    CONVERGE, Tally, all_delivered_on_one_connection, assert_all_delivered, duplicates, exchange, fill_backlog,
    next_json, receive_all, send_until_receipted,
};
pub use wait::{DEADLINE, wait_until};
pub use ws::Ws;
