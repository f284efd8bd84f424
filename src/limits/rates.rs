//! The `[rate]` settings: every budget's burst and refill rate, and how client addresses are
//! grouped. Plain settings: the configuration reads them without importing the limiter.

use serde::Deserialize;

use super::address::PrefixLengths;
use super::bucket::Rate;

/// The `[rate]` section: each budget's `burst` and `per_second`; `burst = 0` turns one off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSettings {
    /// `GET /login/…` per client address.
    pub login_per_address: Rate,
    /// Challenge requests (claiming a user id) per client address.
    pub challenge_per_address: Rate,
    /// WebSocket opens per client address.
    pub socket_per_address: Rate,
    /// Key directory reads (`GET /directory/…`: proofs cost a VRF evaluation each) per client
    /// address.
    pub directory_per_address: Rate,
    /// WebSocket opens per user.
    pub socket_per_user: Rate,
    /// Messages sent per user.
    pub send_messages_per_user: Rate,
    /// Payload bytes sent per user (as stored).
    pub send_bytes_per_user: Rate,
    /// How the per-address budgets group client addresses: IPv4 /32 and IPv6 /64 by default.
    pub address_prefix: PrefixLengths,
}

impl Default for RateSettings {
    fn default() -> Self {
        // A school behind one NAT address: 300 registrations and sockets in a burst pass, then
        // 5 a second (300 a minute); a flood of thousands waits. A phone back online flushes
        // 500 queued messages at once; after the burst 20 a second, far above typing.
        Self {
            login_per_address: Rate::new(400, 5.0),
            challenge_per_address: Rate::new(400, 5.0),
            socket_per_address: Rate::new(400, 5.0),
            directory_per_address: Rate::new(400, 20.0),
            socket_per_user: Rate::new(60, 1.0),
            send_messages_per_user: Rate::new(1_000, 20.0),
            send_bytes_per_user: Rate::new(16 * 1024 * 1024, 256.0 * 1024.0),
            address_prefix: PrefixLengths::default(),
        }
    }
}

impl RateSettings {
    /// The first bad budget: a burst needs a positive refill rate.
    pub fn invalid(&self) -> Option<&'static str> {
        self.all()
            .into_iter()
            .find(|(_, r)| {
                let refills = r.per_second.is_finite() && r.per_second > 0.0;
                !r.is_off() && !refills
            })
            .map(|(k, _)| k)
    }

    fn all(&self) -> [(&'static str, Rate); 7] {
        [
            ("rate.login_per_address", self.login_per_address),
            ("rate.challenge_per_address", self.challenge_per_address),
            ("rate.socket_per_address", self.socket_per_address),
            ("rate.directory_per_address", self.directory_per_address),
            ("rate.socket_per_user", self.socket_per_user),
            ("rate.send_messages_per_user", self.send_messages_per_user),
            ("rate.send_bytes_per_user", self.send_bytes_per_user),
        ]
    }
}
