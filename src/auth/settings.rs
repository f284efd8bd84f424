//! `[auth]`: who must show a token, how long challenges and tokens live, and the keys tokens
//! are signed with.

use std::time::Duration;

use serde::Deserialize;

use super::sealing::decode_any_base64;

/// Smallest accepted token key: HS256 keys shorter than the hash add nothing but risk.
pub const MIN_TOKEN_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `claim` (default): a user who once proved possession of their key needs a token from
    /// then on; others behave as the specification says. `required`: every socket needs one.
    pub mode: AuthMode,
    /// `kid:base64secret` entries (`ENIGMA__AUTH__TOKEN_KEYS`, comma-separated): the first
    /// signs, every one verifies, so a new key can be introduced before the old is retired.
    /// Empty: one random key per deployment, generated once and kept in Redis or the embedded
    /// engine's data file (memory engine: per process). See `docs/security.md`.
    pub token_keys: Vec<String>,
    /// Names this deployment in tokens (`aud`): a token of another deployment is refused
    /// even if it happened to share a key.
    pub audience: String,
    /// How long a bearer token is accepted for opening a socket or calling the API.
    pub token_ttl_secs: u64,
    /// How long a challenge can be answered.
    pub challenge_ttl_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Claim,
    Required,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Claim => "claim",
            AuthMode::Required => "required",
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Claim,
            token_keys: Vec::new(),
            audience: "enigma-relay".into(),
            token_ttl_secs: 3600,
            challenge_ttl_secs: 60,
        }
    }
}

impl AuthSettings {
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }
    pub fn challenge_ttl(&self) -> Duration {
        Duration::from_secs(self.challenge_ttl_secs)
    }

    /// The configured keys, parsed: `(kid, secret)`, the signing key first.
    pub fn parsed_token_keys(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.token_keys.iter().map(|entry| parse_key_entry(entry)).collect()
    }

    /// Checks what the types cannot: `(key, reason)` on the first fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.token_ttl_secs == 0 {
            return Err(("auth.token_ttl_secs", "must be greater than zero".into()));
        }
        if self.challenge_ttl_secs == 0 {
            return Err(("auth.challenge_ttl_secs", "must be greater than zero".into()));
        }
        if self.audience.trim().is_empty() {
            return Err(("auth.audience", "must name the deployment".into()));
        }
        let keys = self.parsed_token_keys().map_err(|reason| ("auth.token_keys", reason))?;
        let mut kids: Vec<&str> = keys.iter().map(|(kid, _)| kid.as_str()).collect();
        kids.sort_unstable();
        if kids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(("auth.token_keys", "two keys share one id".into()));
        }
        Ok(())
    }
}

/// `kid:base64secret` → `(kid, secret)`.
pub fn parse_key_entry(entry: &str) -> Result<(String, Vec<u8>), String> {
    let (kid, secret) = entry
        .trim()
        .split_once(':')
        .ok_or_else(|| "each entry is `kid:base64secret` (the id names the key in tokens)".to_owned())?;
    if kid.is_empty() || !kid.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("key id `{kid}`: letters, digits, `-`, `_` and `.` only"));
    }
    let secret = decode_any_base64(secret).ok_or_else(|| format!("key `{kid}`: the secret is not base64"))?;
    if secret.len() < MIN_TOKEN_KEY_BYTES {
        return Err(format!("key `{kid}`: {} bytes, at least {MIN_TOKEN_KEY_BYTES} needed", secret.len()));
    }
    Ok((kid.to_owned(), secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let mut s = AuthSettings::default();
        s.validate().unwrap();
        s.token_keys = vec!["k1:short".into()];
        assert_eq!(s.validate().unwrap_err().0, "auth.token_keys");
        s.token_keys = vec!["nokid".into()];
        assert_eq!(s.validate().unwrap_err().0, "auth.token_keys");
        let secret = "A".repeat(44);
        s.token_keys = vec![format!("k1:{secret}"), format!("k2:{secret}")];
        s.validate().unwrap();
        s.token_keys = vec![format!("k1:{secret}"), format!("k1:{secret}")];
        assert!(s.validate().unwrap_err().1.contains("share"));
        s.token_keys.clear();
        s.token_ttl_secs = 0;
        assert_eq!(s.validate().unwrap_err().0, "auth.token_ttl_secs");
    }
}
