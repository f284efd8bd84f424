//! The accept loop: every TCP connection gets HTTP/1 or HTTP/2 from hyper, with bounds that
//! hold before anything is known about the client (`axum::serve` gives hyper no timer, so its
//! header timeout never fires and a slowloris could hold a connection for ever):
//!
//! - the first request head must arrive within `server.request_head_timeout_ms` (also the
//!   WebSocket handshake), and so must every later head on a keep-alive connection, which
//!   bounds idle keep-alive connections too;
//! - a request head is at most `server.max_request_head_bytes` (hyper answers 431 past it);
//! - at most `server.max_connections` connections at once on this replica, and
//!   `server.max_connections_per_address` from one TCP peer (trusted proxies are exempt: their
//!   clients are held by rate limits on the forwarded address). A connection over a cap still
//!   gets one answer, marked `OverCapacity` for the router: 503 on HTTP, close 1013 on a
//!   WebSocket; past twice the replica cap a connection is closed unanswered.
//!
//! Upgraded WebSockets leave hyper (and this loop's graceful shutdown) for the session task,
//! which the server tracks itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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

use crate::limits::TrustedProxies;
use crate::telemetry::metric;

/// Bounds on a connection before it has sent a request.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub head_timeout: Duration,
    pub max_head_bytes: usize,
    /// 0: no cap.
    pub max_connections: usize,
    /// 0: no cap.
    pub max_per_address: usize,
    pub trusted: TrustedProxies,
}

/// A request extension: this connection is over a connection cap (which one, for the metric).
#[derive(Debug, Clone, Copy)]
pub struct OverCapacity(pub &'static str);

/// Open connections, in all and per TCP peer address.
#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// A request extension: the connection's place among the counted ones. An upgraded socket
/// leaves hyper's connection task at once, so its session holds a clone until it ends.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<Counted>);

/// One connection's place in `Counts`, given back on drop.
struct Counted {
    counts: Arc<Mutex<Counts>>,
    address: Option<IpAddr>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(address) = self.address
            && let Some(n) = counts.by_address.get_mut(&address)
        {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&address);
            }
        }
    }
}

/// Counts a new connection from `peer`: its guard, and the cap it is over, if any (`Err`:
/// so far over that it is not answered at all).
fn admit(
    counts: &Arc<Mutex<Counts>>,
    limits: &ConnectionLimits,
    peer: IpAddr,
) -> Result<(Counted, Option<OverCapacity>), ()> {
    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
    let cap = limits.max_connections;
    if cap > 0 && c.total >= cap.saturating_mul(2) {
        return Err(());
    }
    let mut over = (cap > 0 && c.total >= cap).then_some(OverCapacity("replica"));
    c.total += 1;
    let address = (!limits.trusted.contains(peer)).then_some(peer);
    if let Some(address) = address {
        let n = c.by_address.entry(address).or_default();
        if limits.max_per_address > 0 && *n >= limits.max_per_address {
            over = over.or(Some(OverCapacity("address")));
        }
        *n += 1;
    }
    Ok((Counted { counts: counts.clone(), address }, over))
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
    let counts = Arc::new(Mutex::new(Counts::default()));
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
        let Ok((counted, over)) = admit(&counts, &limits, peer.ip()) else {
            metrics::counter!(metric::CONNECTIONS_REFUSED, "cap" => "replica").increment(1);
            continue; // dropped: closed unanswered
        };
        if let Some(OverCapacity(cap)) = over {
            metrics::counter!(metric::CONNECTIONS_REFUSED, "cap" => cap).increment(1);
        }
        let counted = ConnectionSlot(Arc::new(counted));
        let slot = counted.clone();
        let first_request = Arc::new(Notify::new());
        let seen = first_request.clone();
        let service = router.clone().map_request(move |mut request: axum::http::Request<Incoming>| {
            seen.notify_one();
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(slot.clone());
            if let Some(over) = over {
                request.extensions_mut().insert(over);
            }
            request
        });
        let head_timeout = limits.head_timeout;
        let connection =
            builder.serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service)).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _counted = counted;
            let mut connection = std::pin::pin!(connection);
            // hyper's header timeout starts once it knows the HTTP version; a client that sends
            // nothing (or half an HTTP/2 preface) is bounded here.
            tokio::select! {
                _ = &mut connection => return,
                _ = first_request.notified() => {}
                _ = tokio::time::sleep(head_timeout) => {
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
