//! Storage charged to where it came from: every byte waiting in an inbox is counted against
//! the sender's address prefix and the sender's id, across all inboxes, and given back when the
//! message is delivered, acknowledged or expires. A prefix (or an id) may hold at most a share of
//! the store's capacity; as the store fills, that share shrinks, so the biggest holders are
//! refused first and a client that holds little is never refused because another holds a lot
//! (max–min fairness: whoever is under the water level is untouched by it).
//!
//! The level: at most half full, every holder may hold its whole share; from half full to
//! [`SOFT_FULL`] the share falls linearly to nothing; past it only the floor
//! (`limits.store_floor_bytes`) is left, which anyone may hold whatever the pressure.

use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use serde::Deserialize;

use crate::protocol::UserId;

/// The store is treated as full here (a fraction of its capacity): the rest is headroom for
/// what is not charged to anyone (records, indexes, the floors, Redis's own overhead).
pub const SOFT_FULL: f64 = 0.9;

/// Where shares start shrinking.
const PRESSURE_STARTS: f64 = 0.5;

/// The `[limits]` settings of the storage budgets.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageShares {
    /// Fraction of the store's capacity one address prefix may hold (all its ids together);
    /// 0: no such budget.
    pub per_prefix: f64,
    /// Fraction of the store's capacity one sender id may hold (across all recipients); 0: no
    /// such budget.
    pub per_sender: f64,
    /// Fraction of the store the registrations one address prefix made within
    /// `limits.inactive_user_ttl_secs` may take (their keys and records, [`registration_bytes`]
    /// each): opening a socket keeps a user a year, so what bounds the directory one network
    /// can grow is what it registered, used or not. 0: no such budget.
    pub directory_per_prefix: f64,
    /// What any prefix or sender may hold whatever the pressure (bytes).
    pub floor_bytes: u64,
    /// The store's capacity in bytes. 0: the memory engine's `limits.memory_max_bytes`; on
    /// Redis its `maxmemory` (read from the server every second), else 4 GiB with a warning.
    pub capacity_bytes: u64,
}

impl Default for StorageShares {
    fn default() -> Self {
        // A tenth of the store per network: ten prefixes together fill it before pressure
        // refuses them; a school behind one NAT shares a tenth of the store, far more than
        // 300 people have waiting. One id a fortieth: a quarter of its network's share.
        // A hundredth of the store for a network's registrations of a year: 5 MiB of the
        // memory engine's 512 MiB, some 12,000 X25519 users (300 pupils take 120 KiB).
        Self {
            per_prefix: 0.1,
            per_sender: 0.025,
            directory_per_prefix: 0.01,
            floor_bytes: 1024 * 1024,
            capacity_bytes: 0,
        }
    }
}

impl StorageShares {
    /// The first bad setting, if any.
    pub fn invalid(&self) -> Option<&'static str> {
        let fraction = |f: f64| f.is_finite() && (0.0..=1.0).contains(&f);
        if !fraction(self.per_prefix) {
            return Some("limits.storage.per_prefix");
        }
        if !fraction(self.per_sender) {
            return Some("limits.storage.per_sender");
        }
        if !fraction(self.directory_per_prefix) {
            return Some("limits.storage.directory_per_prefix");
        }
        None
    }

    /// Whether any storage is charged (a budget is on).
    pub fn charged(&self) -> bool {
        self.per_prefix > 0.0 || self.per_sender > 0.0
    }

    /// What one holder with `share` of the store may hold when `used` of `capacity` is used.
    pub fn allowed(&self, share: f64, capacity: u64, used: u64) -> u64 {
        if share == 0.0 {
            return u64::MAX; // no such budget
        }
        let fill = if capacity == 0 { 1.0 } else { used as f64 / capacity as f64 };
        let level = if fill <= PRESSURE_STARTS {
            1.0
        } else {
            ((SOFT_FULL - fill) / (SOFT_FULL - PRESSURE_STARTS)).clamp(0.0, 1.0)
        };
        ((share * capacity as f64 * level) as u64).max(self.floor_bytes)
    }

    /// What a prefix may hold now.
    pub fn per_prefix_allowed(&self, pressure: &Pressure) -> u64 {
        let (used, capacity) = pressure.read();
        self.allowed(self.per_prefix, capacity, used)
    }

    /// What a prefix's registrations may take now.
    pub fn directory_allowed(&self, pressure: &Pressure) -> u64 {
        let (used, capacity) = pressure.read();
        self.allowed(self.directory_per_prefix, capacity, used)
    }

    /// What a sender id may hold now.
    pub fn per_sender_allowed(&self, pressure: &Pressure) -> u64 {
        let (used, capacity) = pressure.read();
        self.allowed(self.per_sender, capacity, used)
    }
}

/// How full the store is: bytes used and its capacity, as last measured (the memory engine
/// counts exactly; the Redis engine samples `INFO memory` every second).
#[derive(Debug, Default)]
pub struct Pressure {
    used: AtomicU64,
    capacity: AtomicU64,
}

impl Pressure {
    pub fn new(capacity: u64) -> Self {
        Self { used: AtomicU64::new(0), capacity: AtomicU64::new(capacity) }
    }

    pub fn set(&self, used: u64, capacity: u64) {
        self.used.store(used, Ordering::Relaxed);
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Adds `bytes` to the used bytes until the next sample.
    pub fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn read(&self) -> (u64, u64) {
        (self.used.load(Ordering::Relaxed), self.capacity.load(Ordering::Relaxed))
    }

    /// Used bytes as a fraction of the capacity (for the `enigma_store_pressure` gauge); an
    /// unknown capacity counts as full, as [`StorageShares::allowed`] treats it.
    pub fn fill(&self) -> f64 {
        let (used, capacity) = self.read();
        if capacity == 0 { 1.0 } else { used as f64 / capacity as f64 }
    }
}

/// Whom stored bytes are charged to.
#[derive(Debug, Clone, Copy)]
pub enum Holder<'a> {
    Prefix(IpNet),
    Sender(&'a UserId),
    /// The registrations a prefix made (kept for `limits.inactive_user_ttl_secs`).
    Registrations(IpNet),
}

/// What a registration of `public_key` is charged (`directory_per_prefix`): the key as
/// registered and as indexed, and the record, index and bookkeeping around them.
pub fn registration_bytes(public_key: &str) -> u64 {
    2 * public_key.len() as u64 + 320
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn shares_shrink_with_pressure_down_to_the_floor() {
        let shares = StorageShares::default();
        let capacity = 100 * 1024 * 1024;
        assert_eq!(shares.allowed(0.1, capacity, 0), capacity / 10);
        assert_eq!(shares.allowed(0.1, capacity, capacity / 2), capacity / 10);
        let mid = shares.allowed(0.1, capacity, capacity * 7 / 10);
        assert!(mid < capacity / 10 && mid > capacity / 40, "{mid}");
        assert_eq!(shares.allowed(0.1, capacity, capacity), shares.floor_bytes);
        assert_eq!(shares.allowed(0.1, 0, 0), shares.floor_bytes);
        assert_eq!(StorageShares { per_prefix: 1.5, ..shares }.invalid(), Some("limits.storage.per_prefix"));
        assert_eq!(shares.allowed(0.0, capacity, capacity), u64::MAX, "0 turns a budget off");
        assert_eq!(StorageShares { per_sender: f64::NAN, ..shares }.invalid(), Some("limits.storage.per_sender"));
    }

    proptest! {
        /// The fuller the store, the less anyone may hold; never less than the floor, never
        /// more than the share.
        #[test]
        fn allowed_falls_as_the_store_fills(capacity in 1u64..1 << 40, a in 0u64..1 << 41, b in 0u64..1 << 41) {
            let shares = StorageShares::default();
            let (low, high) = (a.min(b), a.max(b));
            let (at_low, at_high) = (shares.allowed(0.1, capacity, low), shares.allowed(0.1, capacity, high));
            prop_assert!(at_high <= at_low);
            prop_assert!(at_high >= shares.floor_bytes);
            prop_assert!(at_low <= ((0.1 * capacity as f64) as u64).max(shares.floor_bytes));
        }
    }
}
