//! The accept loop: every TCP connection gets HTTP/1 or HTTP/2 from hyper, with bounds that
//! hold before anything is known about the client (`axum::serve` gives hyper no timer, so its
//! header timeout never fires and a slowloris could hold a connection for ever):
//!
//! - the first request head must arrive within `server.request_head_timeout_ms` (also the
//!   WebSocket handshake), and so must every later head on a keep-alive connection, which
//!   bounds idle keep-alive connections too; hyper's header timeout is HTTP/1's only, so any
//!   connection with no request in progress for as long is also shut down here (HTTP/2:
//!   GOAWAY), however faithfully it answers PINGs;
//! - a request head is at most `server.max_request_head_bytes` (hyper answers 431 past it; on
//!   HTTP/2 that is the header list size), and an HTTP/2 connection has at most
//!   [`MAX_STREAMS`] streams at once;
//! - at most `server.max_connections` connections at once on this replica, and
//!   `server.max_connections_per_address` from one TCP peer's address prefix (`rate.address_prefix`:
//!   an IPv6 /64 is one peer; trusted proxies are exempt: their
//!   clients are held by rate limits on the forwarded address). A connection over a cap still
//!   gets one answer, marked `OverCapacity` for the router: 503 on HTTP, close 1013 on a
//!   WebSocket; past twice the replica cap a connection is closed unanswered.
//!
//! A connection that hyper ends is closed in stages (`closing`), so that its last answer is
//! read, not lost to a reset. Upgraded WebSockets leave hyper (and this loop's graceful
//! shutdown) for the session task, which the server tracks itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::closing;
use super::idle::{Requests, Tracked};
use crate::config::ServerSettings;
use crate::limits::address::{PrefixLengths, TrustedProxies};
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
    /// How addresses are grouped for `max_per_address` (`rate.address_prefix`): one IPv6 /64
    /// is one client.
    pub prefixes: PrefixLengths,
    pub trusted: TrustedProxies,
}

impl ConnectionLimits {
    /// The `[server]` settings' caps (addresses grouped by the default prefix lengths; the
    /// server sets `rate.address_prefix`'s).
    pub fn from_settings(server: &ServerSettings) -> Self {
        Self {
            head_timeout: Duration::from_millis(server.request_head_timeout_ms),
            max_head_bytes: server.max_request_head_bytes,
            max_connections: server.max_connections,
            max_per_address: server.max_connections_per_address,
            prefixes: PrefixLengths::default(),
            trusted: server.trusted_proxies(),
        }
    }
}

/// A request extension: this connection is over a connection cap (which one, for the metric).
#[derive(Debug, Clone, Copy)]
pub struct OverCapacity(pub &'static str);

/// Open connections, in all and per TCP peer address.
#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpNet, usize>,
}

/// A request extension: the connection's place among the counted ones. An upgraded socket
/// leaves hyper's connection task at once, so its session holds a clone until it ends.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<Counted>);

/// One connection's place in `Counts`, given back on drop.
struct Counted {
    counts: Arc<Mutex<Counts>>,
    address: Option<IpNet>,
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

/// A connection so far over the replica's cap (twice it) that it is closed unanswered.
#[derive(Debug)]
struct FarOverCapacity;

/// Counts a new connection from `peer`: its guard, and the cap it is over, if any.
fn admit(
    counts: &Arc<Mutex<Counts>>,
    limits: &ConnectionLimits,
    peer: IpAddr,
) -> Result<(Counted, Option<OverCapacity>), FarOverCapacity> {
    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
    let cap = limits.max_connections;
    if cap > 0 && c.total >= cap.saturating_mul(2) {
        return Err(FarOverCapacity);
    }
    let mut over = (cap > 0 && c.total >= cap).then_some(OverCapacity("replica"));
    c.total += 1;
    let address = (!limits.trusted.contains(peer)).then(|| limits.prefixes.of(peer));
    if let Some(address) = address {
        let n = c.by_address.entry(address).or_default();
        if limits.max_per_address > 0 && *n >= limits.max_per_address {
            over = over.or(Some(OverCapacity("address")));
        }
        *n += 1;
    }
    Ok((Counted { counts: counts.clone(), address }, over))
}

/// At most this many HTTP/2 streams at once on one connection (RFC 9113 §6.5.2 advises no
/// fewer than 100); HTTP/1 has one request at a time.
const MAX_STREAMS: u32 = 100;

/// Serves `router` on `listener` until `stop` is cancelled, then waits for the HTTP requests
/// in progress (not for upgraded sockets, nor for connections closing in stages) and returns.
pub async fn serve(listener: TcpListener, router: Router, limits: ConnectionLimits, stop: CancellationToken) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.head_timeout)
        .keep_alive_timeout(limits.head_timeout)
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
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
        let (requests, in_progress) = Requests::new();
        let router = router.clone();
        let service = tower::service_fn(move |mut request: axum::http::Request<Incoming>| {
            let in_flight = requests.start();
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(slot.clone());
            if let Some(over) = over {
                request.extensions_mut().insert(over);
            }
            let answer = router.clone().oneshot(request);
            async move {
                let response = answer.await?;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        });
        let (stream, mut returned) = closing::Stream::new(tcp);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let running = connections.token();
        let (idle, stop) = (limits.head_timeout, stop.clone());
        tokio::spawn(async move {
            let _counted = counted;
            drive(connection, in_progress, idle, &stop, peer).await;
            drop(running);
            // hyper let go of the stream (an upgraded socket's session holds it instead).
            if let Ok(tcp) = returned.try_recv() {
                closing::close_in_stages(tcp).await;
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Runs one connection until it ends. One that has had no request in progress for `idle` (the
/// first request included: a client that sends nothing, or half an HTTP/2 preface, before
/// hyper's own header timeout starts) is shut down gracefully: HTTP/1 closes, HTTP/2 sends
/// GOAWAY and closes once its streams are done; and dropped if it has not ended `idle` later.
/// On `stop` every connection is shut down gracefully, its requests in progress answered.
async fn drive<C>(
    connection: C,
    mut in_progress: watch::Receiver<usize>,
    idle: Duration,
    stop: &CancellationToken,
    peer: SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    let mut idle_since = Some(Instant::now());
    let mut cut_off = None;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            Ok(()) = in_progress.changed() => {
                idle_since = (*in_progress.borrow_and_update() == 0).then(Instant::now);
            }
            _ = at(idle_since.map(|since| since + idle)), if cut_off.is_none() => {
                tracing::debug!(%peer, "no request in progress for the idle bound; closing");
                if !shutting_down {
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                cut_off = Some(Instant::now() + idle);
            }
            _ = stop.cancelled(), if !shutting_down => {
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = at(cut_off) => {
                tracing::debug!(%peer, "connection still open after its graceful shutdown; dropped");
                return;
            }
        }
    }
}

/// Resolves at `deadline`, or never.
async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
