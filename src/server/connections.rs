//! The accept loop: every TCP connection gets HTTP/1 or HTTP/2 from hyper, with bounds that
//! hold before anything is known about the client (`axum::serve` gives hyper no timer, so its
//! header timeout never fires and a slowloris could hold a connection for ever):
//!
//! - the first request head must arrive within `server.request_head_timeout_ms` (also the
//!   WebSocket handshake), and so must every later head on a keep-alive connection, which
//!   bounds idle keep-alive connections too;
//! - a request head is at most `server.max_request_head_bytes` (hyper answers 431 past it).
//!
//! Upgraded WebSockets leave hyper (and this loop's graceful shutdown) for the session task,
//! which the server tracks itself.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bounds on a connection before it has sent a request.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub head_timeout: Duration,
    pub max_head_bytes: usize,
}

/// Serves `router` on `listener` until `stop` is cancelled, then waits for the HTTP requests
/// in progress (not for upgraded sockets) and returns.
pub async fn serve(listener: TcpListener, router: Router, limits: ConnectionLimits, stop: CancellationToken) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head_bytes);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(limits.head_timeout);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // No Nagle: a relay writes small frames that must leave now, not after the peer's
        // delayed ACK (that showed as a ~40 ms p99 plateau under load).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let first_request = Arc::new(Notify::new());
        let seen = first_request.clone();
        let service = router.clone().map_request(move |mut request: axum::http::Request<Incoming>| {
            seen.notify_one();
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let connection =
            builder.serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service)).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            // hyper's header timeout starts once it knows the HTTP version; a client that sends
            // nothing (or half an HTTP/2 preface) is bounded here.
            tokio::select! {
                _ = &mut connection => return,
                _ = first_request.notified() => {}
                _ = tokio::time::sleep(limits.head_timeout) => {
                    tracing::debug!(%peer, "no request within the head timeout; closed");
                    return;
                }
            }
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
