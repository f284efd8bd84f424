//! The client's side of authentication: answer a challenge with the identity's private key,
//! keep the access token, show it when opening a socket (`docs/protocol.md`,
//! "Authentication"). Done by default: proving possession once makes the user protected, so
//! nobody who only knows the user id can take the connection over.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::Url;
use serde::Deserialize;

use super::client::{CachedToken, Client, Socket, http_error, open_socket};
use super::error::Error;
use crate::clock::unix_ms;
use crate::protocol::auth::{ALG_HPKE_X25519, ALG_HPKE_X25519_AES256GCM};
use crate::protocol::{
    AuthStatus, ChallengeRequest, ChallengeResponse, ErrorBody, ErrorCode, TokenRequest, TokenResponse,
};

/// A token is renewed this long before it expires, so that it is still valid on arrival.
const RENEW_BEFORE_MS: u64 = 60_000;

impl Client {
    /// Proves possession of this identity's key for `user` and returns a fresh access token
    /// (from then on the user is protected on that server). `Ok(None)` from a server without
    /// authentication (it has no `/auth/challenge`).
    pub async fn authenticate(&self, user: &str) -> Result<Option<TokenResponse>, Error> {
        let (status, body) =
            self.post(&["auth", "challenge"], &ChallengeRequest { user_id: user.to_owned(), alg: None }).await?;
        match status {
            200 => {}
            // An older server, or one that predates authentication: the specification's way.
            404 if ErrorBody::deserialize(&body).is_ok_and(|b| b.code.is_some_and(|c| c.is(ErrorCode::NotFound))) => {
                return Ok(None);
            }
            404 => return Err(Error::UserNotFound(user.to_owned())),
            _ => return Err(http_error(status, &body)),
        }
        let challenge = ChallengeResponse::deserialize(&body)
            .map_err(|_| Error::Protocol(format!("challenge answer without its fields: {body}")))?;
        if challenge.alg != ALG_HPKE_X25519 && challenge.alg != ALG_HPKE_X25519_AES256GCM {
            return Err(Error::Protocol(format!("challenge sealed with `{}`, not for this key", challenge.alg)));
        }
        let sealed =
            STANDARD.decode(&challenge.sealed).map_err(|_| Error::Protocol("sealed challenge is not base64".into()))?;
        let secret = self
            .identity()
            .open_challenge(user, &challenge.alg, &sealed)
            .map_err(|e| Error::KeyMismatch { user: format!("{user} (the challenge does not open: {e})") })?;
        let request = TokenRequest { challenge: challenge.challenge, secret: STANDARD.encode(secret) };
        let (status, body) = self.post(&["auth", "token"], &request).await?;
        if status != 200 {
            return Err(http_error(status, &body));
        }
        let token = TokenResponse::deserialize(&body).map_err(|_| Error::Protocol(format!("token answer: {body}")))?;
        *self.inner.token.lock().expect("not poisoned") =
            Some(CachedToken { user: user.to_owned(), token: token.token.clone(), expires_at: token.expires_at });
        Ok(Some(token))
    }

    /// A token for `user` that is not about to expire: the cached one, or a new one.
    pub async fn bearer(&self, user: &str) -> Result<Option<String>, Error> {
        if let Some(cached) = self.inner.token.lock().expect("not poisoned").as_ref()
            && cached.user == user
            && cached.expires_at > unix_ms() + RENEW_BEFORE_MS
        {
            return Ok(Some(cached.token.clone()));
        }
        Ok(self.authenticate(user).await?.map(|t| t.token))
    }

    /// Drops the cached token (the server refused it: its key was rotated away, say).
    pub fn forget_token(&self) {
        *self.inner.token.lock().expect("not poisoned") = None;
    }

    /// Whether `user` is protected on the server, and whether this client's token is valid.
    pub async fn auth_status(&self, user: &str) -> Result<AuthStatus, Error> {
        let url = self.endpoint(&["auth", "status", user]);
        let mut request = self.inner.http.get(url);
        let token =
            self.inner.token.lock().expect("not poisoned").as_ref().filter(|t| t.user == user).map(|t| t.token.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, body) = self.read_body(self.send(request).await?).await?;
        match status {
            200 => AuthStatus::deserialize(&body).map_err(|_| Error::Protocol(format!("status answer: {body}"))),
            404 => Err(Error::UserNotFound(user.to_owned())),
            _ => Err(http_error(status, &body)),
        }
    }

    /// Opens a socket for `user`, authenticated unless the server has no authentication.
    pub(super) async fn open_socket(&self, url: &Url, user: &str, limit: Duration) -> Result<Socket, Error> {
        let token = self.bearer(user).await?;
        open_socket(url, limit, token.as_deref(), self.inner.tls.clone()).await
    }

    async fn post<T: serde::Serialize>(&self, segments: &[&str], body: &T) -> Result<(u16, serde_json::Value), Error> {
        let request = self.inner.http.post(self.endpoint(segments)).json(body);
        let response = self.send(request).await?;
        self.read_body(response).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        request.send().await.map_err(|e| self.unreachable(&e))
    }
}
