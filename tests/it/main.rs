//! Integration tests: one binary, real `redis-server` and `enigma-server` processes, real
//! HTTP and WebSocket clients.

/// Runs each `async fn name(b: Backend)` of the calling module as two tests, one on the memory
/// engine and one on a Redis of its own (modules `memory::name` and `redis::name`).
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => { both_engines!(@flavor "current_thread"; $($name),*); };
    (multi_thread: $($name:ident),* $(,)?) => { both_engines!(@flavor "multi_thread"; $($name),*); };
    // The same two, and modules `cluster::name` on a Redis Cluster of the test's own and
    // `sentinel::name` on a Redis whose address a Sentinel of the test's own gives.
    // And `embedded::name` on the embedded engine (a data directory of the test's own).
    (with_cluster: $($name:ident),* $(,)?) => {
        both_engines!(@flavor "current_thread"; $($name),*);
        mod embedded {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::embedded()).await })*
        }
        mod cluster {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::cluster()).await })*
        }
        mod sentinel {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::sentinel()).await })*
        }
    };
    (@flavor $flavor:literal; $($name:ident),*) => {
        mod memory {
            $(#[tokio::test(flavor = $flavor)] async fn $name() { super::$name(super::Backend::memory()).await })*
        }
        mod redis {
            $(#[tokio::test(flavor = $flavor)] async fn $name() { super::$name(super::Backend::redis()).await })*
        }
    };
}

mod auth;
mod balancer;
mod bench_churn;
mod cli;
mod cluster;
mod conformance;
mod costs;
mod deploy_assets;
mod directory;
mod doc_links;
mod durable;
mod endings;
mod expiry;
mod faults;
mod floors;
// `pub`: the harness is a toolbox for every test file; a helper no test uses today (or a
// handle held only to be dropped) is not dead code.
pub mod harness;
mod hostile;
mod imports;
mod limits;
mod load;
mod misbehaviour;
mod observability;
mod one_key;
mod partitions;
mod prometheus;
mod promises;
mod replicas;
mod rollout;
mod secure;
mod sentinel;
mod startup;
mod sybil;
mod vectors;
