//! Who may act as a user: proof of possession of the registered key, and the tokens it earns.
//!
//! 1. `POST /auth/challenge {userId}`: a random secret is sealed to the user's registered key
//!    (`sealing`) and returned with a signed, short-lived ticket naming the user, the key and
//!    the secret's hash (`tokens`).
//! 2. `POST /auth/token {challenge, secret}`: whoever opened the secret gets an access token;
//!    the ticket's id is burnt in the engine (single use on every replica) and the user is
//!    marked *protected* in their record.
//! 3. A socket (or REST call) shows the token; `admit` decides with the record read anyway on
//!    connect, so the check costs one signature verification per connection, nothing per message.
//!
//! Nothing here is sticky: tickets and tokens are verified with keys every replica holds
//! (`auth.token_keys`, or one generated once and kept in the engine).

pub mod canonical;
mod refusal;
pub(crate) mod routes;
pub mod sealing;
pub(crate) mod settings;
pub mod tokens;
#[cfg(test)]
pub(crate) mod vectors;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use base64::Engine as _;

pub use self::refusal::Refusal;
use self::sealing::{BASE64, ClaimKey};
pub use self::settings::{AuthMode, AuthSettings};
use self::tokens::{Claims, Keyring, Kind, random_bytes, sha256_hex};
use crate::engine::{Engine, Unavailable, UserRecord};
use crate::protocol::auth::bearer_from_protocol;
use crate::protocol::{ChallengeResponse, TokenResponse, UserId};
use crate::telemetry::metric;

/// Why a challenge or token request failed.
#[derive(Debug)]
pub enum AuthError {
    UserNotFound,
    /// The registered key is of a kind that cannot be claimed.
    UnsupportedKey,
    Refused(Refusal),
    Unavailable(Unavailable),
}

impl From<Unavailable> for AuthError {
    fn from(e: Unavailable) -> Self {
        AuthError::Unavailable(e)
    }
}

pub struct Auth {
    settings: AuthSettings,
    keyring: Keyring,
}

impl Auth {
    /// The configured keys, or else the deployment's shared generated one (see `docs/security.md`).
    pub async fn from_settings(settings: &AuthSettings, engine: &Engine) -> Result<Auth, Unavailable> {
        let mut keys = settings.parsed_token_keys().map_err(Unavailable::said)?;
        if keys.is_empty() {
            let entry = engine.shared_token_key(&tokens::random_key_entry()).await?;
            let key = settings::parse_key_entry(&entry)
                .map_err(|e| Unavailable::said(format!("the stored token key is unusable: {e}")))?;
            keys.push(key);
        }
        let keyring = Keyring::new(&keys, &settings.audience).map_err(Unavailable::said)?;
        Ok(Auth { keyring, settings: settings.clone() })
    }

    pub fn mode(&self) -> AuthMode {
        self.settings.mode
    }

    /// Seals a fresh secret to `user`'s registered key.
    pub async fn challenge(
        &self,
        engine: &Engine,
        user_id: &str,
        wanted_alg: Option<&str>,
    ) -> Result<ChallengeResponse, AuthError> {
        let user = UserId::parse(user_id).ok_or(AuthError::UserNotFound)?;
        let record = engine.user_record(&user).await?.ok_or(AuthError::UserNotFound)?;
        let key = ClaimKey::parse(&record.public_key).ok_or(AuthError::UnsupportedKey)?;
        let secret = random_bytes::<32>();
        let alg = key.alg(wanted_alg);
        let sealed = key.seal(alg, user.as_str(), &secret).ok_or_else(|| Unavailable::said("sealing failed"))?;
        let now = now_secs();
        let exp = now + self.settings.challenge_ttl_secs;
        let ticket = Claims {
            sub: user.as_str().to_owned(),
            kfp: sha256_hex(record.public_key.as_bytes()),
            aud: self.settings.audience.clone(),
            iat: now,
            exp,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            kind: Kind::Challenge,
            sh: Some(sha256_hex(&secret)),
        };
        metrics::counter!(metric::AUTH_CHALLENGES).increment(1);
        Ok(ChallengeResponse {
            challenge: self.keyring.sign(&ticket),
            alg: alg.to_owned(),
            sealed: BASE64.encode(sealed),
            expires_at: exp * 1000,
        })
    }

    /// Exchanges an answered challenge for an access token, once; marks the user protected.
    pub async fn redeem(&self, engine: &Engine, challenge: &str, secret: &str) -> Result<TokenResponse, AuthError> {
        let refused = |r: Refusal| AuthError::Refused(r.count());
        let ticket = self.keyring.verify(challenge.trim(), Kind::Challenge).map_err(refused)?;
        ticket.answered_by(secret).map_err(refused)?;
        let user = UserId::parse(&ticket.sub).ok_or_else(|| refused(Refusal::Malformed))?;
        let record = engine.user_record(&user).await?.ok_or(AuthError::UserNotFound)?;
        ticket.admits(user.as_str(), &record.public_key).map_err(refused)?;
        // Burnt for as long as the ticket could still verify (its expiry plus the leeway).
        let ttl = std::time::Duration::from_secs(ticket.exp.saturating_sub(now_secs()) + 10);
        if !engine.burn_challenge(&ticket.jti, ttl).await? {
            return Err(refused(Refusal::Replayed));
        }
        engine.protect(&user).await?;
        // A claim is a use: the id is kept (`limits.inactive_user_ttl_secs`), no longer an unused
        // registration. A failure here costs nothing the next socket does not mend.
        if let Err(e) = engine.mark_used(&user, &record).await {
            tracing::warn!(user = %user, error = %e, "cannot renew a claimed user's record");
        }
        let now = now_secs();
        let exp = now + self.settings.token_ttl_secs;
        let token = self.keyring.sign(&Claims {
            sub: ticket.sub,
            kfp: ticket.kfp,
            aud: self.settings.audience.clone(),
            iat: now,
            exp,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            kind: Kind::Access,
            sh: None,
        });
        metrics::counter!(metric::AUTH_TOKENS_ISSUED).increment(1);
        Ok(TokenResponse { token, user_id: user.as_str().to_owned(), expires_at: exp * 1000 })
    }

    /// Whether `token` lets its bearer act as `user`, whose record is `record`.
    pub fn check(&self, token: &str, user: &UserId, record: &UserRecord) -> Result<(), Refusal> {
        let claims = self.keyring.verify(token, Kind::Access).map_err(Refusal::count)?;
        claims.admits(user.as_str(), &record.public_key).map_err(Refusal::count)
    }

    /// May a socket for `user` open? A token shown is always checked (a bad one is refused
    /// even for an unprotected user: the client believes it is authenticating); without one,
    /// only an unprotected user in `claim` mode gets in, exactly as the specification says.
    pub fn admit(&self, token: Option<&str>, user: &UserId, record: &UserRecord) -> Result<(), Refusal> {
        match token {
            Some(token) => self.check(token, user, record),
            None if record.protected || self.settings.mode == AuthMode::Required => Err(Refusal::Missing.count()),
            None => Ok(()),
        }
    }
}

/// Registers the refusal counters at 0, so dashboards and alerts see every series.
pub(crate) fn register_metrics() {
    for reason in Refusal::ALL {
        metrics::counter!(metric::AUTH_REFUSALS, "reason" => reason.as_str()).increment(0);
    }
}

/// The bearer token of a request: `Authorization: Bearer …`, else a `Sec-WebSocket-Protocol`
/// entry `enigma.bearer.…` (browsers cannot set headers on a WebSocket). Never the query string:
/// URLs end up in proxy logs. `Err` when an `Authorization` header is there but not a bearer.
pub fn bearer(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Refusal::Malformed)?.trim();
        let (scheme, token) = value.split_once(' ').ok_or(Refusal::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(Refusal::Malformed);
        }
        return Ok(Some(token.trim().to_owned()));
    }
    let offered = headers.get_all(SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|v| v.to_str().ok());
    Ok(offered.flat_map(|v| v.split(',')).find_map(bearer_from_protocol).map(str::to_owned))
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_comes_from_the_header_or_the_subprotocol() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("enigma.v1, enigma.bearer.abc.def"));
        assert_eq!(bearer(&h), Ok(Some("abc.def".into())));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert_eq!(bearer(&h), Ok(Some("xyz".into())));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer(&h), Err(Refusal::Malformed));
    }
}
