//! The authentication endpoints: `POST /auth/challenge`, `POST /auth/token`,
//! `GET /auth/status/{userId}`. Refusals are 401 with `WWW-Authenticate` (RFC 6750).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{AuthError, Refusal, bearer};
use crate::http::client::Client;
use crate::http::error::ApiError;
use crate::limits;
use crate::protocol::auth::{ALG_HPKE_X25519, ALG_HPKE_X25519_AES256GCM, ALG_RSA_OAEP_SHA256};
use crate::protocol::{
    AuthStatus, ChallengeRequest, ChallengeResponse, ErrorBody, ErrorCode, TokenRequest, TokenResponse, UserId,
};
use crate::server::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/challenge", post(challenge))
        .route("/auth/token", post(token))
        .route("/auth/status/{user_id}", get(status))
}

/// Ask for a challenge: a random secret sealed to the user's registered public key.
///
/// Only the holder of the private key can open it. X25519 keys (32 bytes in base64 or base64url:
/// the SDK's and the web page's) are sealed with HPKE (RFC 9180); RSA keys (SubjectPublicKeyInfo
/// as base64 DER, PEM, or base64 of PEM: the protocol's web client's) with RSA-OAEP-SHA256. Other
/// keys cannot be claimed (422). `docs/protocol.md` gives the exact exchange.
#[utoipa::path(post, path = "/auth/challenge", tag = "authentication",
    request_body = ChallengeRequest,
    responses(
        (status = 200, description = "The sealed secret and the ticket to return with it", body = ChallengeResponse),
        (status = 400, description = "The body is not `{\"userId\": \"…\"}`", body = ErrorBody,
            example = json!({"error": "invalid request body: …", "code": "invalid_frame"})),
        (status = 404, description = "No such user", body = ErrorBody,
            example = json!({"error": "user not found", "code": "user_not_found"})),
        (status = 422, description = "The registered key cannot prove possession", body = ErrorBody,
            example = json!({"error": "the registered key cannot prove possession (only X25519 and RSA keys can): this user cannot be protected", "code": "unsupported_key"})),
        (status = 429, description = "Too many challenges from this address; retry after `Retry-After` seconds", body = ErrorBody,
            example = json!({"error": "too many requests; retry later", "code": "rate_limited"})),
        (status = 503, description = "Storage unreachable; retry", body = ErrorBody),
    ))]
pub(crate) async fn challenge(
    State(state): State<AppState>,
    client: Client,
    body: Result<Json<ChallengeRequest>, JsonRejection>,
) -> Result<Response, Response> {
    // Sealing costs CPU (RSA especially): each address gets a budget, as logins do.
    limits::check_challenge(&state.engine, &state.settings.rate, client.prefix)
        .await
        .map_err(|refused| ApiError::from(refused).into_response())?;
    let Json(request) = body.map_err(bad_body)?;
    let wanted = request.alg.as_deref();
    if let Some(alg) = wanted
        && ![ALG_HPKE_X25519, ALG_HPKE_X25519_AES256GCM, ALG_RSA_OAEP_SHA256].contains(&alg)
    {
        let message = format!(
            "unknown alg `{alg}`: ask for {ALG_HPKE_X25519}, {ALG_HPKE_X25519_AES256GCM} or {ALG_RSA_OAEP_SHA256}"
        );
        return Err(ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, message).into_response());
    }
    let answer = state.auth.challenge(&state.engine, &request.user_id, wanted).await.map_err(refused)?;
    Ok(Json(answer).into_response())
}

/// Answer a challenge with the opened secret and get a bearer token.
///
/// The first successful answer makes the user *protected*: from then on every socket for that
/// user needs a token (`Authorization: Bearer`, or a `Sec-WebSocket-Protocol` entry
/// `enigma.bearer.<token>` offered together with `enigma.v1`). A challenge answers once.
#[utoipa::path(post, path = "/auth/token", tag = "authentication",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "A short-lived token for this user and key", body = TokenResponse),
        (status = 400, description = "The body is not `{\"challenge\", \"secret\"}`", body = ErrorBody),
        (status = 401, description = "Refused: the answer is wrong, expired, forged or replayed, or the token is invalid (`WWW-Authenticate: Bearer error=\"invalid_token\"`)", body = ErrorBody,
            example = json!({"error": "the challenge was already answered", "code": "unauthorized"})),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 503, description = "Storage unreachable; retry", body = ErrorBody),
    ))]
pub(crate) async fn token(
    State(state): State<AppState>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, Response> {
    let Json(request) = body.map_err(bad_body)?;
    let answer = state.auth.redeem(&state.engine, &request.challenge, &request.secret).await.map_err(refused)?;
    Ok(Json(answer).into_response())
}

/// Public (like the key directory): whether a user is protected. With a bearer token, also
/// whether the token is valid for that user; an invalid one is a 401.
/// Whether a user is protected (public, like the key directory). With a bearer token, also
/// whether the token is valid for that user.
#[utoipa::path(get, path = "/auth/status/{userId}", tag = "authentication",
    params(("userId" = String, Path, description = "A user id (canonical UUID)",
        example = "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6")),
    responses(
        (status = 200, description = "The user's protection, and whether the presented token is valid", body = AuthStatus),
        (status = 401, description = "Refused: the answer is wrong, expired, forged or replayed, or the token is invalid (`WWW-Authenticate: Bearer error=\"invalid_token\"`)", body = ErrorBody,
            example = json!({"error": "the challenge was already answered", "code": "unauthorized"})),
        (status = 404, description = "No such user", body = ErrorBody,
            example = json!({"error": "user not found", "code": "user_not_found"})),
        (status = 503, description = "Storage unreachable; retry", body = ErrorBody),
    ))]
pub(crate) async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Result<Response, Response> {
    let user = UserId::parse(&user_id).ok_or_else(|| refused(AuthError::UserNotFound))?;
    let record = state.engine.user_record(&user).await.map_err(|e| ApiError::from(e).into_response())?;
    let record = record.ok_or_else(|| refused(AuthError::UserNotFound))?;
    let token = bearer(&headers).map_err(|r| refused(AuthError::Refused(r.count())))?;
    let authenticated = match token {
        Some(token) => {
            state.auth.check(&token, &user, &record).map_err(|r| refused(AuthError::Refused(r)))?;
            true
        }
        None => false,
    };
    Ok(Json(AuthStatus {
        user_id: user.as_str().to_owned(),
        protected: record.protected,
        authenticated,
        mode: state.auth.mode().as_str().to_owned(),
    })
    .into_response())
}

fn bad_body(rejection: JsonRejection) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, format!("invalid request body: {rejection}"))
        .into_response()
}

fn refused(error: AuthError) -> Response {
    match error {
        AuthError::UserNotFound => {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::UserNotFound, "user not found").into_response()
        }
        AuthError::UnsupportedKey => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UnsupportedKey,
            "the registered key cannot prove possession (only X25519 and RSA keys can): this user cannot be protected",
        )
        .into_response(),
        AuthError::Unavailable(e) => ApiError::from(e).into_response(),
        AuthError::Refused(refusal) => {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, refusal.message()).into_response();
            let challenge = match refusal {
                Refusal::Missing => "Bearer",
                _ => r#"Bearer error="invalid_token""#,
            };
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            response
        }
    }
}
