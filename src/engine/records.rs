//! What the engine hands back and takes besides messages: a user's directory record and where
//! it stands against its expiry, what a session reads before an inbox read, what a socket
//! wrote.

use std::time::Duration;

use bytes::Bytes;

use crate::protocol::MsgId;

/// A user's directory entry as a socket's admission reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub public_key: String,
    /// The user proved possession of the key once: every later socket needs a token.
    pub protected: bool,
    /// Where the record's expiry stands, read with it: what `Engine::mark_used` has to do.
    pub upkeep: Upkeep,
}

/// Where a user record stands against its expiry (`limits.unused_registration_ttl_secs`,
/// `limits.inactive_user_ttl_secs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upkeep {
    /// Registered from this address prefix and never used since: it expires
    /// `unused_registration_ttl_secs` after the registration, and counts against the prefix's
    /// `max_unused_registrations_per_prefix` until then.
    Unused(ipnet::IpNet),
    /// Used, and renewed recently: nothing to do.
    Kept,
    /// Used, but renewed longer ago than `renewal_due` allows (or made before records expired,
    /// with no expiry at all): the next use renews it.
    Due,
}

/// Whether a used record with `remaining` time to live must be renewed to its full `term` (the
/// inactive-user TTL): once it has lost a day, or 1/64 of the term when that is shorter. So a
/// socket open writes at most once a day per user; everything else is a read it makes anyway.
pub fn renewal_due(remaining: Duration, term: Duration) -> bool {
    let slack = (term / 64).min(Duration::from_secs(24 * 3600));
    remaining + slack < term
}

/// A message written to a specification client's socket, for `Engine::forget_delivered`: its
/// envelope tells the Redis engine the sender and size to give back (`protocol::envelope_sender`)
/// without reading the entry again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: MsgId,
    pub envelope: Bytes,
}

/// Read before an inbox read.
#[derive(Debug, Clone, Copy)]
pub struct ReadMark {
    /// The number of the last message sent to the user (0: none yet): every message numbered
    /// up to it is in the inbox read that follows, or was delivered already, so the next live
    /// one must carry the number after it.
    pub sequence: u64,
    /// The user's newest connection generation (engines that coordinate replicas only): lets
    /// a session notice a takeover announced while its doorbells were being missed.
    pub generation: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_renews_once_a_day_or_once_per_64th_of_a_short_term() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let hour = Duration::from_secs(3600);
        assert!(!renewal_due(year, year));
        assert!(!renewal_due(year - 23 * hour, year));
        assert!(renewal_due(year - 25 * hour, year));
        let minute = Duration::from_secs(64);
        assert!(!renewal_due(minute - Duration::from_millis(999), minute));
        assert!(renewal_due(minute - Duration::from_millis(1001), minute));
        assert!(renewal_due(Duration::ZERO, minute));
    }
}
