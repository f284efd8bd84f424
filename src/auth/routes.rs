//! The authentication endpoints: `POST /auth/challenge`, `POST /auth/token`,
//! `GET /auth/status/{userId}`. Refusals are 401 with `WWW-Authenticate` (RFC 6750).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{AuthError, Refusal, bearer};
use crate::AppState;
use crate::http::ApiError;
use crate::protocol::auth::{ALG_HPKE_X25519, ALG_HPKE_X25519_AES256GCM, ALG_RSA_OAEP_SHA256};
use crate::protocol::{AuthStatus, ChallengeRequest, ErrorCode, TokenRequest, UserId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/challenge", post(challenge))
        .route("/auth/token", post(token))
        .route("/auth/status/{user_id}", get(status))
}

async fn challenge(
    State(state): State<AppState>,
    body: Result<Json<ChallengeRequest>, JsonRejection>,
) -> Result<Response, Response> {
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

async fn token(
    State(state): State<AppState>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, Response> {
    let Json(request) = body.map_err(bad_body)?;
    let answer = state.auth.redeem(&state.engine, &request.challenge, &request.secret).await.map_err(refused)?;
    Ok(Json(answer).into_response())
}

/// Public (like the key directory): whether a user is protected. With a bearer token, also
/// whether the token is valid for that user; an invalid one is a 401.
async fn status(
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
