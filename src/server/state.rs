//! The state every request and session shares: settings, the engine, authentication, the hub,
//! the shutdown signal. Plain data: the routes and the sessions read it, the run loop builds it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Settings;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::limits::address::TrustedProxies;
use crate::transparency::Transparency;

/// Everything a request or a session needs.
pub struct Shared {
    pub settings: Settings,
    pub engine: Engine,
    pub auth: Auth,
    /// The verifiable key directory's reads, once it started (never with
    /// `directory.enabled = false`).
    pub directory: tokio::sync::OnceCell<Arc<Transparency>>,
    pub hub: Arc<Hub>,
    /// Cancelled when the server starts draining: sessions close with 1001.
    pub shutdown: CancellationToken,
    pub draining: AtomicBool,
    /// Upgraded sockets, which axum's graceful shutdown does not wait for.
    pub tracker: TaskTracker,
    pub metrics: Option<PrometheusHandle>,
    /// Whose forwarded client addresses count (`server.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
}

pub type AppState = Arc<Shared>;
