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

use crate::engine::{Engine, Unavailable};
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

/// What a session charges its holders ahead at most at once: one ledger call per holder per
/// this much sent, for a busy sender.
const LEASE_MAX: u64 = 256 * 1024;

/// What a session's first lease is: a session that sends a few messages holds a few KiB ahead,
/// not a busy sender's lease, so a crowd behind one address (a school's NAT) leases little.
const LEASE_FIRST: u64 = 4 * 1024;

/// The storage a session has charged ahead to its prefix and its user (engines that keep a
/// ledger apart from their store: Redis; the memory engine charges each message exactly). Each
/// lease doubles the next one, up to [`LEASE_MAX`] and a 64th of what the holder may hold, so
/// busy senders pay one ledger call per 256 KiB and idle ones hold next to nothing ahead.
#[derive(Debug, Default)]
pub struct StorageLease {
    prefix: u64,
    sender: u64,
    /// The next lease's size (0: the first).
    next: u64,
}

/// Why a message could not be charged.
#[derive(Debug)]
pub enum NotHeld {
    /// The prefix or the sender holds its share of the store now.
    OverShare,
    Unavailable(Unavailable),
}

/// Charges `holder` ahead so that `left` covers `bytes`: a lease of `size` (within what it may
/// hold), or, refused that, exactly `bytes`.
async fn lease(
    engine: &Engine,
    holder: Holder<'_>,
    left: &mut u64,
    bytes: u64,
    size: u64,
    allowed: u64,
) -> Result<(), NotHeld> {
    if *left >= bytes {
        return Ok(());
    }
    let want = size.min(allowed / 64).max(bytes);
    let mut asks = vec![want];
    if want > bytes {
        asks.push(bytes); // near its share: exactly what this message needs
    }
    for ask in asks {
        match engine.hold(&holder, ask as i64, allowed).await {
            Ok(true) => {
                *left += ask;
                return Ok(());
            }
            Ok(false) => continue,
            Err(e) => return Err(NotHeld::Unavailable(e)),
        }
    }
    Err(NotHeld::OverShare)
}

impl StorageLease {
    /// Charges one message of `bytes` to `prefix` and `user`, leasing more when the lease is
    /// spent.
    pub async fn spend(
        &mut self,
        engine: &Engine,
        shares: &StorageShares,
        prefix: IpNet,
        user: &UserId,
        bytes: u64,
    ) -> Result<(), NotHeld> {
        if !engine.keeps_a_ledger() {
            return Ok(());
        }
        let pressure = engine.pressure();
        // A budget turned off (share 0) needs no ledger call: its lease never runs out.
        if shares.per_prefix == 0.0 {
            self.prefix = u64::MAX / 2;
        }
        if shares.per_sender == 0.0 {
            self.sender = u64::MAX / 2;
        }
        let size = if self.next == 0 { LEASE_FIRST } else { self.next };
        let leasing = self.prefix < bytes || self.sender < bytes;
        // Both holders at once: a session's first message waits for one ledger round trip, not
        // two. A grant whose partner was refused stays in the lease (given back at the end).
        let (by_prefix, by_sender) = futures_util::join!(
            lease(engine, Holder::Prefix(prefix), &mut self.prefix, bytes, size, shares.per_prefix_allowed(pressure)),
            lease(engine, Holder::Sender(user), &mut self.sender, bytes, size, shares.per_sender_allowed(pressure)),
        );
        by_prefix?;
        by_sender?;
        if leasing {
            self.next = (size * 2).min(LEASE_MAX);
        }
        self.prefix -= bytes;
        self.sender -= bytes;
        Ok(())
    }

    /// A charged message was not stored after all: its bytes go back to the lease.
    pub fn refund(&mut self, bytes: u64) {
        self.prefix += bytes;
        self.sender += bytes;
    }

    /// Gives back what is left (a session ends).
    pub async fn give_back(self, engine: &Engine, shares: &StorageShares, prefix: IpNet, user: &UserId) {
        let leases = [
            (Holder::Prefix(prefix), self.prefix, shares.per_prefix),
            (Holder::Sender(user), self.sender, shares.per_sender),
        ];
        for (holder, left, share) in leases {
            if left > 0 && share > 0.0 {
                engine.give_back(&holder, left).await;
            }
        }
    }
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
