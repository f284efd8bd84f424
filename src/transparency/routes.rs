//! `GET /directory/root`, `/directory/lookup/{userId}`, `/directory/history/{userId}`,
//! `/directory/audit/{fromEpoch}/{toEpoch}`: the key directory's answers, with the proofs a
//! client checks (docs/protocol.md, "The key directory"). Every replica answers; each costs
//! the client's address a token of `rate.directory_per_address`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{ReadError, Transparency};
use crate::http::client::Client;
use crate::http::error::ApiError;
use crate::limits;
use crate::protocol::{ErrorBody, ErrorCode, UserId};
use crate::server::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/directory/root", get(root))
        .route("/directory/lookup/{user_id}", get(lookup))
        .route("/directory/history/{user_id}", get(history))
        .route("/directory/audit/{from}/{to}", get(audit))
}

/// The latest epoch's signed root.
///
/// `{"epoch", "rootHash", "vrfPublicKey", "keyId", "signingKey", "signature"}`: the root hash
/// of the directory at that epoch and an Ed25519 signature over it (docs/protocol.md).
#[utoipa::path(get, path = "/directory/root", tag = "key directory",
    responses(
        (status = 200, description = "The latest signed root (`SignedRoot`, docs/protocol.md)", content_type = "application/json"),
        (status = 429, description = "Too many directory reads from this address; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 404, description = "No epoch published yet (with `Retry-After`: retry), or no directory on this server (`directory.enabled = false`, without `Retry-After`: use pins alone)", body = ErrorBody,
            example = json!({"error": "no epoch has been published yet; retry in a moment", "code": "not_found"})),
        (status = 503, description = "The directory is starting (with `Retry-After`) or its storage is unreachable; retry", body = ErrorBody,
            example = json!({"error": "service unavailable, retry later", "code": "unavailable"})),
    ))]
pub(crate) async fn root(State(state): State<AppState>, client: Client) -> Result<Response, ApiError> {
    let directory = admit(&state, &client).await?;
    answer(directory.root().await)
}

/// A user's current key, with a lookup proof against the latest epoch's signed root.
///
/// `{"root", "userId", "publicKey", "version", "proof"}`; `proof` is akd's `LookupProof`
/// (protobuf, base64). A user registered since the last epoch is not in it yet (404).
#[utoipa::path(get, path = "/directory/lookup/{userId}", tag = "key directory",
    params(("userId" = String, Path, description = "A user id (canonical UUID, lowercase)",
        pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        example = "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6")),
    responses(
        (status = 200, description = "The key and its proof (`LookupAnswer`, docs/protocol.md)", content_type = "application/json"),
        (status = 400, description = "Not a user id", body = ErrorBody,
            example = json!({"error": "not a user id (a canonical UUID)", "code": "invalid_frame"})),
        (status = 404, description = "Unknown, registered since the last epoch, or no directory on this server (`directory.enabled = false`)", body = ErrorBody,
            example = json!({"error": "user not in the key directory (unknown, or registered since the last epoch)", "code": "user_not_found"})),
        (status = 429, description = "Too many directory reads from this address", body = ErrorBody),
        (status = 503, description = "The directory is starting or its newest epoch is being recorded (both with `Retry-After`), or its storage is unreachable; retry", body = ErrorBody),
        (status = 500, description = "The proof could not be encoded (the server's fault, logged)", body = ErrorBody),
    ))]
pub(crate) async fn lookup(
    State(state): State<AppState>,
    client: Client,
    user: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let directory = admit(&state, &client).await?;
    let user = user_id(user)?;
    answer(directory.lookup(&user).await)
}

/// Every version of a user's key, with a history proof against the latest epoch's root.
///
/// `{"root", "userId", "proof"}`; `proof` is akd's `HistoryProof` (protobuf, base64).
#[utoipa::path(get, path = "/directory/history/{userId}", tag = "key directory",
    params(("userId" = String, Path, description = "A user id (canonical UUID, lowercase)",
        pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        example = "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6")),
    responses(
        (status = 200, description = "The history proof (`HistoryAnswer`, docs/protocol.md)", content_type = "application/json"),
        (status = 400, description = "Not a user id", body = ErrorBody),
        (status = 404, description = "Unknown, registered since the last epoch, or no directory on this server (`directory.enabled = false`)", body = ErrorBody),
        (status = 429, description = "Too many directory reads from this address", body = ErrorBody),
        (status = 503, description = "The directory is starting or its newest epoch is being recorded (both with `Retry-After`), or its storage is unreachable; retry", body = ErrorBody),
        (status = 500, description = "The proof could not be encoded (the server's fault, logged)", body = ErrorBody),
    ))]
pub(crate) async fn history(
    State(state): State<AppState>,
    client: Client,
    user: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let directory = admit(&state, &client).await?;
    let user = user_id(user)?;
    answer(directory.history(&user).await)
}

/// The append-only proof between two epochs, with the signed root of every epoch between.
///
/// `{"from", "to", "roots", "proof"}`; `proof` is akd's `AppendOnlyProof` (protobuf, base64).
/// At most `directory.max_audit_epochs` epochs (256) per answer and, past its first epoch, at
/// most `directory.max_audit_entries` entries (4,000) or 2 s of work: `to` then says where it
/// stopped, and the client asks again from there.
#[utoipa::path(get, path = "/directory/audit/{fromEpoch}/{toEpoch}", tag = "key directory",
    params(
        ("fromEpoch" = u64, Path, description = "The first epoch (at least 1)", minimum = 1),
        ("toEpoch" = u64, Path, description = "The last epoch (above fromEpoch, at most the latest)", minimum = 2),
    ),
    responses(
        (status = 200, description = "The proof and roots (`AuditAnswer`, docs/protocol.md)", content_type = "application/json"),
        (status = 400, description = "Not epochs, from ≥ to, or beyond the latest epoch", body = ErrorBody,
            example = json!({"error": "to (90) is beyond the latest epoch (12)", "code": "invalid_frame"})),
        (status = 404, description = "No directory on this server (`directory.enabled = false`)", body = ErrorBody),
        (status = 429, description = "Too many directory reads from this address", body = ErrorBody),
        (status = 503, description = "The directory is starting (with `Retry-After`) or its storage is unreachable; retry", body = ErrorBody),
        (status = 500, description = "The proof could not be encoded (the server's fault, logged)", body = ErrorBody),
    ))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    client: Client,
    epochs: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let directory = admit(&state, &client).await?;
    let bad = |what: &str| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, what.to_owned());
    let Path((from, to)) = epochs.map_err(|_| bad("expected /directory/audit/{fromEpoch}/{toEpoch}"))?;
    let (Ok(from), Ok(to)) = (from.parse::<u64>(), to.parse::<u64>()) else {
        return Err(bad("epochs are whole numbers"));
    };
    answer(directory.audit(from, to).await)
}

/// The rate limit, then the directory: off on this server is 404 (as on a server that only
/// speaks the specification: clients use their pins alone), not started yet is 503 with
/// `Retry-After` (clients ask again).
async fn admit(state: &AppState, client: &Client) -> Result<Arc<Transparency>, ApiError> {
    limits::check_directory(&state.engine, &state.settings.rate, client.prefix).await?;
    state.directory.get().cloned().ok_or_else(|| match state.settings.directory.enabled {
        true => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the key directory is starting; retry",
        )
        .retry_after(1),
        false => ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no key directory on this server"),
    })
}

fn user_id(user: Result<Path<String>, PathRejection>) -> Result<UserId, ApiError> {
    let bad = || ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, "not a user id (a canonical UUID)");
    let Path(user) = user.map_err(|_| bad())?;
    UserId::parse(&user).ok_or_else(bad)
}

fn answer<T: Serialize>(result: Result<T, ReadError>) -> Result<Response, ApiError> {
    match result {
        Ok(body) => Ok(Json(body).into_response()),
        Err(ReadError::NotPublished) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, ErrorCode::UserNotFound, ReadError::NotPublished.to_string()))
        }
        Err(ReadError::BadRange(reason)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, reason))
        }
        Err(ReadError::NoEpoch) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, ReadError::NoEpoch.to_string())
                .retry_after(1))
        }
        Err(ReadError::Unrooted) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, ReadError::Unrooted.to_string())
                .retry_after(1))
        }
        Err(ReadError::Unavailable(reason)) => {
            tracing::warn!(error = %reason, "key directory read failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "service unavailable, retry later",
            ))
        }
        Err(ReadError::Unencodable(e)) => {
            tracing::error!(error = %e, "key directory: a proof could not be encoded");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "the key directory could not encode its proof; this is the server's fault",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use enigma_verify::proof::ProofEncodeError;

    use super::*;

    /// A proof that cannot be written is the server's fault: a 500 that says so without the
    /// cause (which goes to the log), never a 200 with an empty proof.
    #[tokio::test]
    async fn a_proof_that_cannot_be_encoded_is_a_500() {
        let cause = ProofEncodeError { kind: "lookup", reason: "a secret detail".into() };
        let response = answer::<()>(Err(ReadError::Unencodable(cause))).unwrap_err().into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "internal", "{body}");
        assert!(body["error"].as_str().unwrap().contains("could not encode its proof"), "{body}");
        assert!(!body.to_string().contains("secret"), "{body}");
    }
}
