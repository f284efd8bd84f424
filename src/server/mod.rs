//! The server's life: build the state, serve HTTP and WebSockets on a bound listener, and on
//! shutdown drain (readiness off, new sockets refused, open ones closed with 1001) within the
//! grace period. `main` and the tests share this one entry point.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod closing;
pub(crate) mod connections;
mod idle;
pub(crate) mod state;

use self::connections::ConnectionLimits;
use self::state::{AppState, Shared};
use crate::auth::Auth;
use crate::config::Settings;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::transparency::Transparency;
use crate::transparency::publisher::Publisher;
use crate::{http, telemetry};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] crate::engine::Unavailable),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves on `listener` until `shutdown` resolves, then drains: readiness turns false, new
/// sockets are refused, open ones are closed with 1001, and the call returns within
/// `server.shutdown_grace_ms`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // The recorder first: the engine already measures while it connects.
    let metrics = telemetry::prometheus();
    telemetry::register_all();
    // The labelled series whose labels another module owns, each registered by its owner.
    crate::session::register_metrics();
    crate::auth::register_metrics();
    crate::limits::register_metrics();
    let stopping = CancellationToken::new();
    let limits = &settings.limits;
    let hub = Arc::new(Hub::new(limits.outbound_queue_frames, limits.outbound_queue_bytes, stopping.clone()));
    let engine = Engine::from_settings(&settings, hub.clone()).await?;
    let auth = Auth::from_settings(&settings.auth, &engine).await?;
    let grace = settings.server.shutdown_grace();
    let trusted_proxies = settings.server.trusted_proxies();
    let state = Arc::new(Shared {
        trusted_proxies,
        settings,
        engine,
        auth,
        directory: tokio::sync::OnceCell::new(),
        hub,
        shutdown: stopping,
        draining: AtomicBool::new(false),
        tracker: TaskTracker::new(),
        metrics,
    });
    metrics::gauge!(telemetry::metric::DRAINING).set(0.0);

    if state.settings.directory.enabled {
        tokio::spawn(start_directory(state.clone()));
    }

    let addr = listener.local_addr()?;
    tracing::info!(%addr, engine = state.engine.name(), "enigma relay listening");
    // A line on stdout for scripts and tests that start the server on port 0.
    println!("listening on {addr}");

    let drain = {
        let state = state.clone();
        async move {
            shutdown.await;
            tracing::info!("draining: refusing new sockets, closing open ones with 1001");
            state.draining.store(true, Ordering::Release);
            metrics::gauge!(telemetry::metric::DRAINING).set(1.0);
            state.shutdown.cancel();
        }
    };
    let limits = ConnectionLimits {
        prefixes: state.settings.rate.address_prefix,
        ..ConnectionLimits::from_settings(&state.settings.server)
    };
    if let Some(addr) = state.settings.metrics_addr() {
        let metrics_listener = TcpListener::bind(addr).await?;
        tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
        let app = http::metrics_router(state.clone());
        tokio::spawn(connections::serve(metrics_listener, app, limits.clone(), state.shutdown.clone()));
    }
    let serve = tokio::spawn(connections::serve(listener, http::router(state.clone()), limits, state.shutdown.clone()));
    // The store's pressure, as the engine last saw it (Redis: sampled every second).
    let engine = state.engine.clone();
    let pressure = async move {
        let gauge = metrics::gauge!(telemetry::metric::STORE_PRESSURE);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            gauge.set(engine.pressure().fill());
        }
    };
    tokio::spawn(state.shutdown.clone().run_until_cancelled_owned(pressure));

    drain.await;
    let finished = tokio::time::timeout(grace, async {
        // HTTP first: a socket still being admitted becomes a tracked session (closed at
        // once with 1001) before the tracker is waited for.
        let _ = serve.await;
        state.tracker.close();
        state.tracker.wait().await;
        // What the closed sessions wrote leaves the inboxes before the process does.
        state.engine.finish_removals().await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!(sockets = state.hub.len(), "grace period over; exiting with connections still open");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed by this call, not when
/// the future is first polled: a SIGTERM that arrives while the server is still starting must
/// drain it, not kill it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {},
                        _ = interrupt.recv() => {},
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The key directory, started beside the server rather than before it: its keys and records are
/// read from the store, which may not answer yet (Redis loading its dataset); registrations are
/// recorded as waiting meanwhile and `/directory/*` answers 503. Tried again every second until
/// it starts, then its epoch loop runs until shutdown.
async fn start_directory(state: AppState) {
    let settings = &state.settings.directory;
    let stop = state.shutdown.clone();
    loop {
        let starting = async {
            let directory = Transparency::start(settings, &state.engine).await?;
            let publisher = Publisher::new(settings, &directory).await?;
            Ok::<_, crate::engine::Unavailable>((directory, publisher))
        };
        match stop.run_until_cancelled(starting).await {
            None => return,
            Some(Ok((directory, publisher))) => {
                let _ = state.directory.set(Arc::new(directory));
                tracing::info!("key directory started");
                if let Err(e) = publisher.spawn(stop) {
                    tracing::error!(error = %e, "key directory: cannot start the publisher's thread; nothing is published");
                }
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "key directory not started yet; retrying in a second");
                if stop.run_until_cancelled(tokio::time::sleep(Duration::from_secs(1))).await.is_none() {
                    return;
                }
            }
        }
    }
}
