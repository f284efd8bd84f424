//! Signed tickets and tokens: JWT (RFC 7519) via the `jsonwebtoken` crate, HS256, with the
//! key id in the header (`kid`) so that keys can be rotated: the first configured key signs,
//! every configured key verifies.
//!
//! Two kinds share the format, told apart by the `kind` claim so one can never pass for the
//! other: a `challenge` ticket (user, key fingerprint, SHA-256 of the sealed secret; ~60 s)
//! and an `access` token (user, key fingerprint; `auth.token_ttl_secs`). Both carry `aud` (the
//! deployment), `iat`, `exp` and a random `jti`.

use std::collections::HashMap;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::refusal::Refusal;
use super::sealing::{BASE64, decode_any_base64};

/// Clock skew tolerated between replicas, in seconds.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Challenge,
    Access,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// SHA-256 (hex) of the registered key the user proved: a token names the key it was
    /// earned with.
    pub kfp: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub kind: Kind,
    /// Challenge tickets only: SHA-256 (hex) of the sealed secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sh: Option<String>,
}

impl Claims {
    /// Whether `secret` (base64, either alphabet) is the secret this challenge ticket sealed.
    pub fn answered_by(&self, secret: &str) -> Result<(), Refusal> {
        let opened = decode_any_base64(secret).ok_or(Refusal::WrongSecret)?;
        match &self.sh {
            Some(hash) if *hash == sha256_hex(&opened) => Ok(()),
            _ => Err(Refusal::WrongSecret),
        }
    }

    /// Whether this access token lets its bearer act as `user`, whose registered key is `key`.
    pub fn admits(&self, user: &str, key: &str) -> Result<(), Refusal> {
        if self.sub != user {
            return Err(Refusal::WrongUser);
        }
        if self.kfp != sha256_hex(key.as_bytes()) {
            return Err(Refusal::WrongKey);
        }
        Ok(())
    }
}

/// The token keys: one signs, all verify.
pub struct Keyring {
    kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl Keyring {
    /// `keys` in `(kid, secret)` form, the signing key first; `Err` without keys or with an
    /// empty secret.
    pub fn new(keys: &[(String, Vec<u8>)], audience: &str) -> Result<Keyring, String> {
        let (kid, secret) = keys.first().ok_or("no token key")?;
        let unusable = |e: jsonwebtoken::errors::Error| format!("unusable token key: {e}");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let mut verifying = HashMap::new();
        for (kid, secret) in keys {
            verifying.insert(kid.clone(), DecodingKey::from_secret(secret).map_err(unusable)?);
        }
        Ok(Keyring {
            kid: kid.clone(),
            signing: EncodingKey::from_secret(secret).map_err(unusable)?,
            verifying,
            validation,
        })
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        // HS256 over serializable claims cannot fail.
        jsonwebtoken::encode(&header, claims, &self.signing).unwrap_or_default()
    }

    /// The claims of a token this deployment signed, still valid, of `kind`.
    pub fn verify(&self, token: &str, kind: Kind) -> Result<Claims, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(Refusal::BadSignature);
        }
        let key = header.kid.as_deref().and_then(|kid| self.verifying.get(kid)).ok_or(Refusal::BadSignature)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => Refusal::Expired,
            ErrorKind::InvalidAudience => Refusal::WrongAudience,
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => Refusal::BadSignature,
            _ => Refusal::Malformed,
        })?;
        if data.claims.kind != kind {
            return Err(Refusal::Malformed);
        }
        Ok(data.claims)
    }
}

/// A new random key entry (`auto-<hex>:<base64>`), for a deployment that configured none.
pub fn random_key_entry() -> String {
    let secret = random_bytes::<32>();
    let id = hex(&Sha256::digest(secret)[..4]);
    format!("auto-{id}:{}", BASE64.encode(secret))
}

/// `N` bytes from the operating system's generator. Its failure is not something any input
/// can cause, and nothing secure can go on without it.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes
}

/// SHA-256 of `data` in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(kid: &str, byte: u8, aud: &str) -> Keyring {
        Keyring::new(&[(kid.into(), vec![byte; 32])], aud).unwrap()
    }

    fn claims(kind: Kind, exp_from_now: i64) -> Claims {
        let now = super::super::now_secs();
        Claims {
            sub: "u".into(),
            kfp: "f".into(),
            aud: "a".into(),
            iat: now,
            exp: (now as i64 + exp_from_now) as u64,
            jti: "j".into(),
            kind,
            sh: None,
        }
    }

    #[test]
    fn each_bad_token_is_refused_for_its_reason() {
        let a = ring("k1", 1, "a");
        let good = a.sign(&claims(Kind::Access, 60));
        assert_eq!(a.verify(&good, Kind::Access).unwrap().sub, "u");
        assert_eq!(a.verify(&good, Kind::Challenge), Err(Refusal::Malformed));
        assert_eq!(a.verify(&a.sign(&claims(Kind::Access, -60)), Kind::Access), Err(Refusal::Expired));
        // Same key id, other secret (another deployment); other key id; other audience.
        assert_eq!(
            a.verify(&ring("k1", 2, "a").sign(&claims(Kind::Access, 60)), Kind::Access),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            a.verify(&ring("k2", 1, "a").sign(&claims(Kind::Access, 60)), Kind::Access),
            Err(Refusal::BadSignature)
        );
        let mut other_aud = claims(Kind::Access, 60);
        other_aud.aud = "b".into();
        assert_eq!(a.verify(&a.sign(&other_aud), Kind::Access), Err(Refusal::WrongAudience));
        assert_eq!(a.verify("garbage", Kind::Access), Err(Refusal::Malformed));
        // A tampered payload: the signature no longer matches.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut c = claims(Kind::Access, 60);
        c.sub = "mallory".into();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(a.verify(&parts.join("."), Kind::Access), Err(Refusal::BadSignature));
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let old = ring("old", 1, "a");
        let token = old.sign(&claims(Kind::Access, 60));
        let rotated = Keyring::new(&[("new".into(), vec![2; 32]), ("old".into(), vec![1; 32])], "a").unwrap();
        assert!(rotated.verify(&token, Kind::Access).is_ok());
        assert!(rotated.sign(&claims(Kind::Access, 60)).len() > 10);
    }

    #[test]
    fn key_entries_parse() {
        use super::super::settings::parse_key_entry;
        assert!(parse_key_entry(&random_key_entry()).is_ok());
        assert!(parse_key_entry("k:AAAA").is_err());
        assert!(parse_key_entry(":AAAA").is_err());
    }
}
