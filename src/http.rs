//! The HTTP face: login, key lookup, the WebSocket upgrade, health, readiness and metrics.
//! Every error is `{"error": "...", "code": "..."}` with a 4xx for client mistakes and an
//! opaque 503 for storage trouble (details go to the log, not to the client). Every route is
//! mounted here (the authentication routes and the web page too), and the OpenAPI document of
//! them is generated here.

pub(crate) mod client;
pub(crate) mod error;

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::OnFailedUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{MatchedPath, Path, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;

use crate::limits;
use crate::protocol::{
    ErrorBody, ErrorCode, Health, LoginResponse, LookupResponse, Readiness, SUBPROTOCOL_V1, UserId, validate_public_key,
};
use crate::server::connections::OverCapacity;
use crate::server::state::AppState;
use crate::session;
use crate::telemetry::metric;

use self::client::Client;
use self::error::ApiError;

pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.settings.server.cors_origins);
    // With `server.metrics_public = false`, `/metrics` exists only on `server.metrics_addr`:
    // the public port answers 404, so no proxy rule can leak it (its live-delivery counters
    // would tell an outsider who is online).
    let metrics = if state.settings.server.metrics_public { get(render_metrics) } else { get(not_found) };
    // A request, body included, must be answered within the head timeout: a body that never
    // comes would otherwise hold its connection (and its place under the caps) for ever. An
    // upgraded socket is past this: its handshake is answered at once.
    let whole_request = TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        std::time::Duration::from_millis(state.settings.server.request_head_timeout_ms),
    );
    Router::new()
        .route("/login/{*public_key}", get(login))
        .route("/login", get(login_without_key))
        .route("/login/", get(login_without_key))
        .route("/connect/{user_id}", any(connect))
        .route("/ws/{user_id}", any(websocket_only))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", metrics)
        .route("/openapi.json", get(document))
        .merge(crate::auth::routes::router())
        .merge(crate::transparency::routes::router())
        .merge(crate::web::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(whole_request)
        .layer(middleware::from_fn(refuse_over_capacity))
        .layer(middleware::from_fn(track_requests))
        .layer(cors)
        .with_state(state)
}

/// A connection over a connection cap gets 503 (a WebSocket handshake is let through, to be
/// closed with 1013 by `open_socket`: a socket client reads close codes, not statuses).
async fn refuse_over_capacity(request: Request, next: Next) -> Response {
    if request.extensions().get::<OverCapacity>().is_some() && !asks_for_websocket(request.headers()) {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "server is at capacity; retry later",
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    // Headers are mirrored, not `*`: a wildcard does not cover `Authorization` (Fetch standard).
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request());
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

/// Register a public key and get its user id.
///
/// Idempotent: the same key always gets the same id, also when two replicas register it at the
/// same moment. The key is the WHOLE rest of the path: raw base64 keeps its `/` and `+`
/// (`/login/MIIBIjANBgkq…/…+…=`), and the percent-encoded forms (`%2F`, `%2B`, `%3D`) name the
/// same key. Keys are opaque strings: only their length (`limits.max_public_key_bytes`, 8 KiB by
/// default) and alphabet are checked — letters, digits, `+ / = - _` (base64, base64url, hex),
/// and space and line breaks (PEM text). The protocol's web client sends base64 of an RSA PEM.
#[utoipa::path(
    get,
    path = "/login/{publicKey}",
    tag = "directory",
    params((
        "publicKey" = String,
        Path,
        description = "The public key: base64, base64url, hex or PEM text, raw or percent-encoded",
        min_length = 1,
        max_length = 8192,
        pattern = r"^[A-Za-z0-9+/=_\- \r\n]+$",
        example = "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k="
    )),
    responses(
        (status = 200, description = "Registered (or already registered): the key's user id", body = LoginResponse),
        (status = 400, description = "Empty, too long, or a character outside the alphabet", body = ErrorBody,
            example = json!({"error": "public key contains a character outside base64, base64url, hex and PEM: '<'", "code": "invalid_frame"})),
        (status = 429, description = "A new key from an address that registered too many at once, or holds too many registrations never used (`limits.max_unused_registrations_per_prefix`); retry after `Retry-After` seconds. A registered key is never refused for the second", body = ErrorBody,
            example = json!({"error": "too many registrations from this address were never used; retry later", "code": "rate_limited"})),
        (status = 503, description = "Storage unreachable or, on the memory engine, full (`limits.memory_max_bytes`); retry", body = ErrorBody,
            example = json!({"error": "service unavailable, retry later", "code": "unavailable"})),
    )
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    client: Client,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    limits::check_login(&state.engine, &state.settings.rate, client.prefix).await?;
    let Path(key) = key.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFrame,
            "public key is not valid UTF-8 once percent-decoded",
        )
    })?;
    validate_public_key(&key, state.settings.limits.max_public_key_bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, e.to_string()))?;
    let user = state.engine.login(&key, client.prefix).await?;
    metrics::counter!(metric::LOGINS).increment(1);
    Ok(Json(LoginResponse::new(user.as_str())).into_response())
}

async fn login_without_key() -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, "public key is empty: use /login/{publicKey}")
}

/// Look up a user's public key (or open the user's WebSocket).
///
/// Without a WebSocket handshake this returns the public key exactly as it was registered.
/// With one (`Upgrade: websocket`, spec 0.3.0) it opens the user's socket, like `/ws/{userId}`;
/// a broken handshake is refused with 400 or 426. User ids are matched in their canonical form
/// (lowercase, hyphenated UUID); anything else is not found.
#[utoipa::path(
    get,
    path = "/connect/{userId}",
    tag = "directory",
    params(("userId" = String, Path, description = "A user id (canonical UUID)",
        example = "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6")),
    responses(
        (status = 200, description = "The user's public key, byte for byte as registered", body = LookupResponse),
        (status = 404, description = "No such user", body = ErrorBody,
            example = json!({"error": "user not found", "code": "user_not_found"})),
        (status = 503, description = "Storage unreachable; retry", body = ErrorBody,
            example = json!({"error": "service unavailable, retry later", "code": "unavailable"})),
    )
)]
pub(crate) async fn connect(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    client: Client,
    Path(user_id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match upgrade {
        Ok(upgrade) => open_socket(state, &user_id, &headers, upgrade, client).await,
        // A request that asks for a WebSocket but gets the handshake wrong (version, key) is told
        // why, not answered with the key lookup it did not ask for.
        Err(rejection) if asks_for_websocket(&headers) => upgrade_refused(rejection),
        Err(_) if method == Method::GET || method == Method::HEAD => match lookup(&state, &user_id).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        },
        Err(_) => with_allow(method_not_allowed().await.into_response(), "GET,HEAD"),
    }
}

/// A 405 names the methods the path takes (RFC 9110 §15.5.6).
fn with_allow(mut response: Response, methods: &'static str) -> Response {
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(methods));
    response
}

fn asks_for_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket"))))
}

fn upgrade_refused(rejection: WebSocketUpgradeRejection) -> Response {
    let status = match rejection {
        WebSocketUpgradeRejection::InvalidWebSocketVersionHeader(_) => StatusCode::UPGRADE_REQUIRED,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut response =
        ApiError::new(status, ErrorCode::InvalidFrame, format!("WebSocket handshake refused: {rejection}"))
            .into_response();
    // RFC 6455 §4.4: a version mismatch names the version the server speaks.
    response.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("13"));
    response
}

/// `/ws/{userId}`: the WebSocket only (spec 0.3.1, the protocol's web client); a plain request
/// gets 426. Not in the OpenAPI document: its frames are described in `docs/protocol.md`.
async fn websocket_only(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    client: Client,
    Path(user_id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match upgrade {
        Ok(upgrade) => open_socket(state, &user_id, &headers, upgrade, client).await,
        // GET opens a socket over HTTP/1.1, CONNECT over HTTP/2 (RFC 8441).
        Err(_) if method != Method::GET && method != Method::CONNECT => {
            with_allow(method_not_allowed().await.into_response(), "GET")
        }
        Err(rejection) if asks_for_websocket(&headers) => upgrade_refused(rejection),
        Err(rejection) => ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::InvalidFrame,
            format!("a WebSocket upgrade is expected here: {rejection}"),
        )
        .into_response(),
    }
}

async fn lookup(state: &AppState, user_id: &str) -> Result<Response, ApiError> {
    let found = match UserId::parse(user_id) {
        Some(user) => state.engine.public_key(&user).await?.map(|key| (user, key)),
        None => None,
    };
    let outcome = if found.is_some() { "found" } else { "not_found" };
    metrics::counter!(metric::LOOKUPS, "result" => outcome).increment(1);
    let (user, key) = found.ok_or_else(ApiError::user_not_found)?;
    Ok(Json(LookupResponse::new(user.as_str(), key)).into_response())
}

async fn open_socket(
    state: AppState,
    user_id: &str,
    headers: &HeaderMap,
    upgrade: WebSocketUpgrade,
    client: Client,
) -> Response {
    let Client { prefix, over_capacity, slot } = client;
    if state.draining.load(Ordering::Acquire) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "server is shutting down")
            .into_response();
    }
    let limits = &state.settings.limits;
    // Room for the largest accepted payload inside its envelope (escaping may grow it), so
    // an oversized payload gets an error frame; far larger frames end the connection (1009).
    let max_message = limits.max_payload_bytes * 2 + 16 * 1024;
    if over_capacity {
        // Upgraded only to be closed with 1013 (try again later), which a socket client reads;
        // what it wrote meanwhile is read (and dropped) within the same bounds as a session's.
        return socket_upgrade(upgrade, max_message).on_upgrade(session::refuse_over_capacity);
    }
    // Every socket open costs its address's budget, before anything is looked up; the user's
    // budget is spent only by a socket admitted as the user (`session::admit`). Refused with
    // 429 and `Retry-After`.
    if let Err(refused) = limits::check_socket_address(&state.engine, &state.settings.rate, prefix).await {
        return ApiError::from(refused).into_response();
    }
    let admission = match session::admit(&state, user_id, crate::auth::bearer(headers)).await {
        session::Admission::Limited(refused) => return ApiError::from(refused).into_response(),
        admission => admission,
    };
    if state.draining.load(Ordering::Acquire) {
        drop(admission); // detaches
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "server is shutting down")
            .into_response();
    }
    let tracker = state.tracker.clone();
    socket_upgrade(upgrade, max_message)
        .on_upgrade(move |socket| tracker.track_future(session::serve(socket, state, admission, slot, prefix)))
}

/// Every socket's upgrade, served or refused: the subprotocol, its buffers and the largest
/// message read.
fn socket_upgrade(upgrade: WebSocketUpgrade, max_message: usize) -> WebSocketUpgrade<impl OnFailedUpgrade> {
    upgrade
        .protocols([SUBPROTOCOL_V1])
        // Grows for larger frames; an idle socket keeps only this much.
        .read_buffer_size(2 * 1024)
        // Frames written in one batch leave in one syscall (the writer flushes per batch).
        .write_buffer_size(16 * 1024)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: storage reachable (the doorbell link up) and not draining.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = Readiness),
        (status = 503, description = "Not ready: storage unreachable or draining", body = Readiness,
            example = json!({"ready": false, "draining": true, "storage": true, "engine": "redis"})),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let draining = state.draining.load(Ordering::Acquire);
    let storage = state.engine.ready().await;
    let body = Readiness { ready: !draining && storage, draining, storage, engine: state.engine.name().to_owned() };
    let status = if body.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// The separate metrics listener's router: `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(render_metrics)).fallback(not_found).with_state(state)
}

/// Prometheus metrics (text exposition format); `docs/operations.md` lists every series.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Every series", content_type = "text/plain; version=0.0.4", body = String,
            example = "# TYPE enigma_connections_open gauge\nenigma_connections_open 3\n"),
        (status = 404, description = "Metrics are not enabled", body = ErrorBody),
    ))]
pub(crate) async fn render_metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
        }
        None => ApiError::new(StatusCode::NOT_FOUND, ErrorCode::Internal, "metrics are not enabled").into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::InvalidFrame, "method not allowed")
}

/// Counts requests by route template (never the raw path: it carries keys and user ids).
async fn track_requests(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.unwrap_or_else(|| "unmatched".into());
    let status = response.status().as_u16().to_string();
    // A fixed set: any token is a valid HTTP method, and each label value is a new series.
    let method = match method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::POST => "POST",
        _ => "other",
    };
    let labels = [("route", route), ("method", method.to_owned()), ("status", status)];
    metrics::counter!(metric::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(metric::HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Enigma relay",
        description = "The key directory and relay of the Enigma end-to-end-encrypted messaging protocol. \
            Every error is a JSON body `{\"error\", \"code\"}`: a message for people and a code for programs. \
            The WebSocket protocol (frames, close codes, the `enigma.v1` extension) is described in docs/protocol.md.",
        license(name = "MIT")
    ),
    paths(
        login,
        connect,
        healthz,
        readyz,
        render_metrics,
        crate::auth::routes::challenge,
        crate::auth::routes::token,
        crate::auth::routes::status,
        crate::transparency::routes::root,
        crate::transparency::routes::lookup,
        crate::transparency::routes::history,
        crate::transparency::routes::audit,
    ),
    tags(
        (name = "directory", description = "Public keys and user ids"),
        (name = "authentication", description = "Proof of possession of the registered key, and tokens"),
        (name = "key directory", description = "The verifiable key directory: signed roots, lookup, history and append-only proofs"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`: the OpenAPI 3.1 document of these routes, generated from the handlers'
/// annotations and the REST bodies (`protocol/rest.rs`). The WebSocket frames are not HTTP and
/// are described in `docs/protocol.md`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
