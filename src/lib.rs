//! Enigma relay: a server for the Enigma end-to-end-encrypted messaging protocol.
//!
//! A message travels socket → `session` → `engine` (memory, or Redis shared by many
//! replicas) → `hub` of the replica holding the recipient's socket → `session` → socket.
//! The server never sees plaintext: payloads are opaque strings sealed by the clients.
//! `docs/architecture.md` walks one envelope through the modules, function by function.
//!
//! | module | job |
//! |---|---|
//! | `server` | the run loop: listeners, shared state, drain on shutdown |
//! | `auth` | proof of possession of the registered key, tokens, who may open a socket |
//! | [`config`] | settings: defaults, TOML file, `ENIGMA__…` environment, validation |
//! | `http` | routes: login, lookup, health, readiness, metrics, the WebSocket upgrade |
//! | `session` | one WebSocket's life |
//! | `hub` | which local session holds which user's socket |
//! | `limits` | rate limits across replicas, client addresses behind trusted proxies |
//! | `engine` | storage and delivery: memory, or Redis (single, Sentinel, Cluster) |
//! | [`protocol`] | the wire: ids, frames, error and close codes, REST bodies, key rules |
//! | [`telemetry`] | logs and metric names |
//! | `clock` | the wall clock as stored: milliseconds since the epoch |
//! | `sdk` | the client SDK behind the `enigma` CLI (feature `client`) |

pub(crate) mod auth;
pub(crate) mod clock;
pub mod config;
pub(crate) mod engine;
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod limits;
pub mod protocol;
#[cfg(feature = "client")]
pub mod sdk;
pub(crate) mod secrets;
pub(crate) mod server;
pub(crate) mod session;
pub mod telemetry;
pub(crate) mod transparency;
pub(crate) mod web;

pub use server::{Error, run, shutdown_signal};
