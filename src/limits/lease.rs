//! A session's storage lease: bytes charged ahead to its address prefix's and its user's
//! ledgers (`storage`), spent message by message, so the send path pays one ledger round trip
//! per lease, not per message.

use ipnet::IpNet;

use super::storage::{Holder, StorageShares};
use crate::engine::{Engine, Unavailable};
use crate::protocol::UserId;

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
