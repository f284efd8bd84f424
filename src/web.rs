//! The server's own web client: a few static files from `web/`, embedded in the binary at
//! build time (no build step, no Node.js to run it), served at `/` and `/assets/{file}`.
//! Every answer carries a strict Content-Security-Policy: scripts and connections to this
//! origin only, no inline script or style, no frames, so the page can talk to nobody else.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::http::error::ApiError;
use crate::protocol::ErrorCode;
use crate::server::state::AppState;

/// `connect-src 'self'` covers the WebSocket to the same host and port in current browsers
/// (CSP Level 3); `base-uri`, `form-action` and `frame-ancestors` do not fall back to
/// `default-src`, so they are named.
/// `'wasm-unsafe-eval'` lets the page compile its own WebAssembly module (the key directory's
/// checks, `/assets/enigma_verify.wasm`), and nothing else: JavaScript `eval` stays refused.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The page and its assets: (name under `/assets/`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../web/app.js")),
    ("hpke.js", "text/javascript; charset=utf-8", include_bytes!("../web/hpke.js")),
    ("store.js", "text/javascript; charset=utf-8", include_bytes!("../web/store.js")),
    ("payload.js", "text/javascript; charset=utf-8", include_bytes!("../web/payload.js")),
    ("relay.js", "text/javascript; charset=utf-8", include_bytes!("../web/relay.js")),
    ("directory.js", "text/javascript; charset=utf-8", include_bytes!("../web/directory.js")),
    ("drawer.js", "text/javascript; charset=utf-8", include_bytes!("../web/drawer.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../web/style.css")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../web/favicon.svg")),
    // `make wasm` builds it from crates/verify (reproducibly; `make test` compares).
    ("enigma_verify.wasm", "application/wasm", include_bytes!("../web/verify/enigma_verify.wasm")),
];
const INDEX: &str = include_str!("../web/index.html");

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/assets/{file}", get(asset))
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX.as_bytes())
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => page(content_type, body),
        None => ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint").into_response(),
    }
}

fn page(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Assets are not versioned by name: revalidate, so a new binary's page is never mixed
    // with an old cached script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_assets_and_no_inline_script() {
        let linked = |n: &str| n.ends_with(".css") || n.ends_with(".svg") || n == "app.js";
        for (name, _, _) in ASSETS.iter().filter(|(n, _, _)| linked(n)) {
            assert!(INDEX.contains(&format!("/assets/{name}")), "{name} is linked from index.html");
        }
        // An inline script would be refused by our own policy: none may creep in.
        for opening in INDEX.match_indices("<script") {
            let tag = &INDEX[opening.0..INDEX[opening.0..].find('>').unwrap() + opening.0];
            assert!(tag.contains("src=\"/assets/"), "inline or foreign script: {tag}");
        }
        assert!(!INDEX.contains("style=\""), "inline style");
        for (name, _, body) in ASSETS {
            // An SVG's namespace is a name, not an address anything is fetched from.
            let body = String::from_utf8_lossy(body).replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(!body.contains("http://") && !body.contains("https://"), "{name} names another origin");
        }
    }
}
