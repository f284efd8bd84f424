//! Who the client is, as far as limits per address go: the TCP peer, or — only when the peer
//! is a configured trusted proxy (`server.trusted_proxies`) — the address that proxy forwarded
//! (`X-Forwarded-For`, read from the right: the nearest address no trusted proxy added;
//! else `X-Real-IP`). A forwarded header from anyone else is ignored, so a client cannot
//! pick a fresh address per request. Budgets then count per prefix (`PrefixLengths`), not per
//! address.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The trusted proxies, parsed once at startup.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`) and plain addresses (`127.0.0.1`); the bad entry on error.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|e| e.parse::<IpNet>().or_else(|_| e.parse::<IpAddr>().map(IpNet::from)).map_err(|_| e.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.trusts(ip)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that came from `peer` with `headers`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(parse_ip)
            .collect();
        if let Some(client) = forwarded.iter().rev().find(|ip| !self.trusts(**ip)) {
            return *client;
        }
        if let Some(first) = forwarded.first() {
            return *first; // every hop is a trusted proxy: the first is as far as it goes
        }
        headers.get("x-real-ip").and_then(|v| v.to_str().ok()).and_then(parse_ip).unwrap_or(peer)
    }
}

/// How per-address budgets group addresses: what one holder gets for free. An IPv6 host is
/// given a /64 (2^64 addresses) by any provider, so a budget per full IPv6 address is a budget
/// per attacker's whim; a budget per /64 is one per subscriber. `rate.address_prefix` sets the
/// lengths (a /56 or /48 for providers that hand those out; a /24 for an IPv4 botnet-ish
/// range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixLengths {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for PrefixLengths {
    fn default() -> Self {
        Self { ipv4: 32, ipv6: 64 }
    }
}

impl PrefixLengths {
    /// The prefix `ip` belongs to (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn of(self, ip: IpAddr) -> IpNet {
        let net = match canonical(ip) {
            IpAddr::V4(v4) => ipnet::Ipv4Net::new(v4, self.ipv4.min(32)).map(IpNet::V4),
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, self.ipv6.min(128)).map(IpNet::V6),
        };
        net.map(|n| n.trunc()).unwrap_or_else(|_| IpNet::from(ip))
    }

    /// The first bad length, if any.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.ipv4 == 0 || self.ipv4 > 32 {
            return Some("rate.address_prefix.ipv4");
        }
        if self.ipv6 == 0 || self.ipv6 > 128 {
            return Some("rate.address_prefix.ipv6");
        }
        None
    }
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>().ok().or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip())).map(canonical)
}

/// IPv4 seen through an IPv6 socket (`::ffff:1.2.3.4`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn addresses_are_grouped_by_prefix() {
        let lengths = PrefixLengths::default();
        let of = |ip: &str| lengths.of(ip.parse().unwrap()).to_string();
        assert_eq!(of("2001:db8:1::1"), "2001:db8:1::/64");
        assert_eq!(of("2001:db8:1:0:ffff:1234:5678:9abc"), "2001:db8:1::/64");
        assert_ne!(of("2001:db8:1:1::1"), of("2001:db8:1::1"));
        assert_eq!(of("192.0.2.7"), "192.0.2.7/32");
        assert_eq!(of("::ffff:192.0.2.7"), "192.0.2.7/32");
        let wide = PrefixLengths { ipv4: 24, ipv6: 56 };
        assert_eq!(wide.of("192.0.2.7".parse().unwrap()).to_string(), "192.0.2.0/24");
        assert_eq!(wide.of("2001:db8:1:ff::1".parse().unwrap()).to_string(), "2001:db8:1::/56");
        assert_eq!(PrefixLengths { ipv4: 33, ipv6: 64 }.invalid(), Some("rate.address_prefix.ipv4"));
        assert_eq!(PrefixLengths { ipv4: 32, ipv6: 0 }.invalid(), Some("rate.address_prefix.ipv6"));
        assert_eq!(lengths.invalid(), None);
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let forged = headers(&[("x-forwarded-for", "203.0.113.9")]);
        // Straight from a client: the header is ignored.
        assert_eq!(proxies.client("192.0.2.1:5000".parse().unwrap(), &forged), "192.0.2.1".parse::<IpAddr>().unwrap());
        // Through the proxy: the forwarded address.
        assert_eq!(
            proxies.client("127.0.0.1:5000".parse().unwrap(), &forged),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A client that forged a first hop: the proxy appended the real one, read from the right.
        let chain = headers(&[("x-forwarded-for", "198.51.100.7, 192.0.2.44, 10.1.2.3")]);
        assert_eq!(proxies.client("10.9.9.9:1".parse().unwrap(), &chain), "192.0.2.44".parse::<IpAddr>().unwrap());
        let real_ip = headers(&[("x-real-ip", "192.0.2.5")]);
        assert_eq!(
            proxies.client("[::ffff:127.0.0.1]:1".parse().unwrap(), &real_ip),
            "192.0.2.5".parse::<IpAddr>().unwrap()
        );
        // Garbage in the header: the proxy itself.
        let junk = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(proxies.client("127.0.0.1:1".parse().unwrap(), &junk), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert_eq!(
            TrustedProxies::default().client("127.0.0.1:1".parse().unwrap(), &forged),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
