//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' annotations
//! (`http.rs`) and the REST bodies (`protocol/rest.rs`), served at `/openapi.json`. The
//! WebSocket frames are not HTTP and are described in `docs/protocol.md`.

use axum::Json;
use utoipa::OpenApi;

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
        crate::http::login,
        crate::http::connect,
        crate::http::healthz,
        crate::http::readyz,
        crate::http::render_metrics,
        crate::auth::routes::challenge,
        crate::auth::routes::token,
        crate::auth::routes::status,
    ),
    tags(
        (name = "directory", description = "Public keys and user ids"),
        (name = "authentication", description = "Proof of possession of the registered key, and tokens"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
