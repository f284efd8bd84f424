//! `[directory]`: the verifiable key directory's epochs, its signing keys and its VRF key.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectorySettings {
    /// Whether registrations are published at all (`false`: nothing is recorded for the
    /// directory and `/directory/*` answers 503).
    pub enabled: bool,
    /// How often pending registrations are published as a new epoch.
    pub epoch_interval_ms: u64,
    /// How long the publisher's lease in Redis lasts unless renewed: another replica takes
    /// over this long after the publisher died.
    pub lease_ms: u64,
    /// Registrations one epoch publishes at most (the rest wait for the next).
    pub max_epoch_entries: usize,
    /// Epochs one `GET /directory/audit/…` answers at most (a longer range is cut short).
    pub max_audit_epochs: u64,
    /// Entries (registrations published) one `GET /directory/audit/…` answer covers at most,
    /// past its first epoch: a longer range is cut short after the epoch that reaches it.
    pub max_audit_entries: usize,
    /// How many of the Redis master's replicas must have acknowledged what was written before
    /// an epoch is written and before its root is recorded (served): at most this many of
    /// those online. Unset: every replica online (none on a lone Redis); 0: no wait.
    /// Replication is asynchronous: an epoch served before a replica had it is lost when that
    /// replica is promoted, and its next version is another root for the same epoch, a fork to
    /// every client that kept the first.
    pub replicas_to_wait: Option<u32>,
    /// How long the publisher waits for those replicas (`WAIT`) before it leaves the rest of
    /// its work for the next round. Unset: `epoch_interval_ms`.
    pub replica_wait_ms: Option<u64>,
    /// `kid:base64seed` entries (`ENIGMA__DIRECTORY__SIGNING_KEYS`, comma-separated), each a
    /// 32-byte Ed25519 seed: the first signs every root served. Empty: one key generated once
    /// and kept in Redis or the embedded engine's data file (memory engine: per process).
    pub signing_keys: Vec<String>,
    /// The VRF secret (32 bytes, base64) that hides which ids exist. Unset: generated once and
    /// kept like a generated signing key. Never change it on a live directory: every later
    /// epoch would be a different tree.
    pub vrf_key: Option<String>,
}

impl Default for DirectorySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            epoch_interval_ms: 1000,
            lease_ms: 5000,
            max_epoch_entries: 2_000,
            max_audit_epochs: 256,
            max_audit_entries: 4_000,
            replicas_to_wait: None,
            replica_wait_ms: None,
            signing_keys: Vec::new(),
            vrf_key: None,
        }
    }
}

/// A signing key: its id and its 32-byte seed.
#[derive(Clone)]
pub struct SigningEntry {
    pub id: String,
    pub seed: [u8; 32],
}

impl DirectorySettings {
    pub fn epoch_interval(&self) -> Duration {
        Duration::from_millis(self.epoch_interval_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub fn replica_wait(&self) -> Duration {
        Duration::from_millis(self.replica_wait_ms.unwrap_or(self.epoch_interval_ms))
    }

    /// The configured signing keys, the signing one first.
    pub fn parsed_signing_keys(&self) -> Result<Vec<SigningEntry>, String> {
        self.signing_keys.iter().map(|entry| parse_signing_entry(entry)).collect()
    }

    /// The configured VRF secret, if any.
    pub fn parsed_vrf_key(&self) -> Result<Option<[u8; 32]>, String> {
        self.vrf_key.as_deref().map(|text| seed(text.trim()).map_err(|e| format!("the VRF key {e}"))).transpose()
    }

    /// Checks what the types cannot: `(key, reason)` on the first fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.epoch_interval_ms == 0 {
            return Err(("directory.epoch_interval_ms", "must be greater than zero".into()));
        }
        if self.lease_ms < 1000 || self.lease_ms < self.epoch_interval_ms.saturating_mul(2) {
            return Err((
                "directory.lease_ms",
                "must be at least 1000 and twice directory.epoch_interval_ms (the lease is renewed every epoch)".into(),
            ));
        }
        if self.max_epoch_entries == 0 {
            return Err(("directory.max_epoch_entries", "must be greater than zero".into()));
        }
        if self.max_audit_epochs == 0 {
            return Err(("directory.max_audit_epochs", "must be greater than zero".into()));
        }
        if self.max_audit_entries == 0 {
            return Err(("directory.max_audit_entries", "must be greater than zero".into()));
        }
        if let Some(wait) = self.replica_wait_ms {
            // The wait renews the lease as it starts, the next round after the interval.
            if wait == 0 || wait > self.lease_ms.saturating_sub(self.epoch_interval_ms) {
                return Err((
                    "directory.replica_wait_ms",
                    "must be greater than zero and at most directory.lease_ms minus directory.epoch_interval_ms (the lease must outlast a round that waits)".into(),
                ));
            }
        }
        let keys = self.parsed_signing_keys().map_err(|reason| ("directory.signing_keys", reason))?;
        let mut ids: Vec<&str> = keys.iter().map(|key| key.id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(("directory.signing_keys", "two keys share one id".into()));
        }
        self.parsed_vrf_key().map_err(|reason| ("directory.vrf_key", reason))?;
        Ok(())
    }
}

/// `kid:base64seed` → the entry.
pub fn parse_signing_entry(entry: &str) -> Result<SigningEntry, String> {
    let (id, secret) = entry
        .trim()
        .split_once(':')
        .ok_or_else(|| "each entry is `kid:base64seed` (the id names the key in signed roots)".to_owned())?;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("key id `{id}`: letters, digits, `-`, `_` and `.` only"));
    }
    let seed = seed(secret).map_err(|e| format!("key `{id}`: the seed {e}"))?;
    Ok(SigningEntry { id: id.to_owned(), seed })
}

/// 32 bytes from standard base64.
fn seed(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD.decode(text).map_err(|_| "is not standard base64".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("is {} bytes, 32 needed", bytes.len()))
}

/// A seed as the settings spell it.
pub fn encode_seed(seed: &[u8; 32]) -> String {
    STANDARD.encode(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let mut s = DirectorySettings::default();
        s.validate().unwrap();
        let seed = encode_seed(&[7; 32]);
        s.signing_keys = vec![format!("k1:{seed}"), format!("k2:{seed}")];
        s.validate().unwrap();
        assert_eq!(s.parsed_signing_keys().unwrap()[0].id, "k1");
        s.signing_keys = vec![format!("k1:{seed}"), format!("k1:{seed}")];
        assert!(s.validate().unwrap_err().1.contains("share"));
        s.signing_keys = vec!["k1:c2hvcnQ=".into()];
        assert!(s.validate().unwrap_err().1.contains("32 needed"));
        s.signing_keys = vec![format!("bad id:{seed}")];
        assert_eq!(s.validate().unwrap_err().0, "directory.signing_keys");
        s.signing_keys.clear();
        s.vrf_key = Some("not base64!".into());
        assert_eq!(s.validate().unwrap_err().0, "directory.vrf_key");
        s.vrf_key = Some(seed);
        assert_eq!(s.parsed_vrf_key().unwrap(), Some([7; 32]));
        s.epoch_interval_ms = 0;
        assert_eq!(s.validate().unwrap_err().0, "directory.epoch_interval_ms");
    }

    #[test]
    fn the_replica_wait_fits_in_the_lease() {
        let mut s = DirectorySettings::default();
        assert_eq!(s.replica_wait(), s.epoch_interval(), "an epoch's replicas have until the next one is due");
        s.replica_wait_ms = Some(4000);
        s.validate().unwrap();
        for bad in [0, 4001] {
            s.replica_wait_ms = Some(bad);
            assert_eq!(s.validate().unwrap_err().0, "directory.replica_wait_ms", "{bad}");
        }
    }
}
