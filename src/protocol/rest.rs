//! The JSON bodies of the HTTP API: login, key lookup and errors. `http` writes them; the
//! SDK and the load generator read them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::codes::AnyErrorCode;

/// `GET /login/{publicKey}`: the user id of that key. The spec names the field `userId`;
/// the protocol's web client reads `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"userId": "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6", "user": "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6"}))]
pub struct LoginResponse {
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Readers need only `userId`: an older or other server may leave this out.
    #[serde(default)]
    pub user: String,
}

impl LoginResponse {
    pub fn new(user_id: &str) -> Self {
        LoginResponse { user_id: user_id.to_owned(), user: user_id.to_owned() }
    }
}

/// `GET /connect/{userId}`: the public key registered for a user, byte for byte as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"userId": "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6", "user": "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6", "publicKey": "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k="}))]
pub struct LookupResponse {
    /// Readers need only `publicKey`.
    #[serde(rename = "userId", default)]
    pub user_id: String,
    #[serde(default)]
    pub user: String,
    #[serde(rename = "publicKey")]
    pub public_key: String,
}

impl LookupResponse {
    pub fn new(user_id: &str, public_key: String) -> Self {
        LookupResponse { user_id: user_id.to_owned(), user: user_id.to_owned(), public_key }
    }
}

/// `POST /auth/challenge`: the user who wants to prove possession of their registered key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"userId": "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6"}))]
pub struct ChallengeRequest {
    #[serde(rename = "userId")]
    pub user_id: String,
    /// How the client wants an X25519 challenge sealed: absent (or `hpke-x25519`) for
    /// ChaCha20-Poly1305, `hpke-x25519-aes256gcm` for AES-256-GCM (what WebCrypto can open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(hpke-x25519|hpke-x25519-aes256gcm|rsa-oaep-sha256)$", example = "hpke-x25519-aes256gcm")]
    pub alg: Option<String>,
}

/// The answer to [`ChallengeRequest`]: a random secret sealed to the user's registered key,
/// and a signed ticket to hand back with the opened secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"challenge": "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOi…", "alg": "hpke-x25519", "sealed": "BASE64…", "expiresAt": 1764364800000u64}))]
pub struct ChallengeResponse {
    /// Opaque (a short-lived signed JWT); returned as is in [`TokenRequest::challenge`].
    pub challenge: String,
    /// How `sealed` was made: `hpke-x25519` or `rsa-oaep-sha256` (see `docs/protocol.md`).
    pub alg: String,
    /// The sealed secret, standard base64 (with padding).
    pub sealed: String,
    /// Until when the challenge can be answered, in milliseconds since the Unix epoch.
    #[serde(rename = "expiresAt")]
    pub expires_at: u64,
}

/// `POST /auth/token`: the ticket and the opened secret (base64, either alphabet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"challenge": "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOi…", "secret": "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k="}))]
pub struct TokenRequest {
    pub challenge: String,
    pub secret: String,
}

/// A bearer token for `Authorization: Bearer …` (or the `enigma.bearer.…` subprotocol entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOi…", "userId": "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6", "expiresAt": 1764368400000u64}))]
pub struct TokenResponse {
    pub token: String,
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Milliseconds since the Unix epoch.
    #[serde(rename = "expiresAt")]
    pub expires_at: u64,
}

/// `GET /auth/status/{userId}`: whether the user is protected; with a valid bearer token for
/// that user, `authenticated` is true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"userId": "3f1c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6", "protected": true, "authenticated": false, "mode": "claim"}))]
pub struct AuthStatus {
    #[serde(rename = "userId")]
    pub user_id: String,
    pub protected: bool,
    #[serde(default)]
    pub authenticated: bool,
    /// The server's `auth.mode`: `claim` or `required`.
    #[serde(default)]
    pub mode: String,
}

/// Every HTTP error: `{"error": "...", "code": "..."}`. The message is for people; the code
/// is for programs (absent from other servers' errors, hence optional when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": "user not found", "code": "user_not_found"}))]
pub struct ErrorBody {
    /// For people: what went wrong and what to do.
    pub error: String,
    /// For programs: `invalid_frame`, `user_not_found`, `not_found`, `unavailable`, … (the
    /// error codes of `docs/protocol.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "user_not_found")]
    pub code: Option<AnyErrorCode>,
}

/// `GET /healthz`: the process is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    pub status: String,
}

/// `GET /readyz`: whether this replica should get traffic (storage reachable, not draining).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"ready": true, "draining": false, "storage": true, "engine": "redis"}))]
pub struct Readiness {
    pub ready: bool,
    pub draining: bool,
    /// The store answers and the doorbell link is up.
    pub storage: bool,
    /// `memory` or `redis`.
    pub engine: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> (T, serde_json::Value) {
        let text = serde_json::to_string(value).unwrap();
        (serde_json::from_str(&text).unwrap(), serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn login_round_trips() {
        let login = LoginResponse::new("u1");
        let (read, json) = round_trip(&login);
        assert_eq!(read, login);
        assert_eq!(json, serde_json::json!({"userId": "u1", "user": "u1"}));
        let spec_only: LoginResponse = serde_json::from_str(r#"{"userId":"u2"}"#).unwrap();
        assert_eq!(spec_only.user_id, "u2");
    }

    #[test]
    fn lookup_round_trips() {
        let lookup = LookupResponse::new("u1", "a+b/c=".into());
        let (read, json) = round_trip(&lookup);
        assert_eq!(read, lookup);
        assert_eq!(json, serde_json::json!({"userId": "u1", "user": "u1", "publicKey": "a+b/c="}));
        assert!(serde_json::from_str::<LookupResponse>(r#"{"userId":"u1"}"#).is_err());
    }

    #[test]
    fn error_bodies_round_trip() {
        let body = ErrorBody { error: "user not found".into(), code: Some(ErrorCode::UserNotFound.into()) };
        let (read, json) = round_trip(&body);
        assert_eq!(read, body);
        assert_eq!(json, serde_json::json!({"error": "user not found", "code": "user_not_found"}));
        let bare: ErrorBody = serde_json::from_str(r#"{"error":"nope"}"#).unwrap();
        assert_eq!(bare, ErrorBody { error: "nope".into(), code: None });
    }
}
