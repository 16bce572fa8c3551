//! The address a request really comes from, for rate limits and audit.
//!
//! `X-Forwarded-For` is believed only when the TCP peer is one of
//! `http.trusted_proxies`: anyone else could write any address there and
//! dodge per-address limits. Behind a chain of trusted proxies the header
//! is read from the right (each proxy appends the address it saw), and the
//! first address that is not itself a trusted proxy is the client.

use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// `ip` as text, for the `X-Forwarded-For` of every proxied request.
/// `Ipv4Addr`'s `Display` goes through the formatting machinery and cost
/// ≈ 1.3 k instructions per request; `itoa` writes the four octets.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut digits = itoa::Buffer::new();
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text
}

/// An address block such as `10.0.0.0/8`, `::1/128` or a bare address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr` or `addr/prefix`; `None` when either part is invalid.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The parsed `http.trusted_proxies`.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses every entry; the error is the first invalid one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| Cidr::parse(e.as_ref()).ok_or_else(|| e.as_ref().to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request that arrived from `peer`.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        // Each proxy appends what it saw, so walk from the right; a header
        // may be repeated, and later headers are appended after earlier ones.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage cannot be attributed to anyone: keep the last
                // address a trusted hop vouched for.
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` element: an address, possibly with a port
/// (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {

    #[test]
    fn ip_text_matches_display() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "192.168.100.7",
            "1.22.133.4",
            "100.10.9.99",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let addr: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(addr), addr.to_string());
        }
    }

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.200.1.2")));
        assert!(net.contains(ip("::ffff:10.1.1.1")), "v4-mapped v6 is v4");
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(
            TrustedProxies::parse(&["10.0.0.0/8", "bad/1"]).unwrap_err(),
            "bad/1"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let h = xff(&["1.2.3.4"]);
        assert_eq!(trusted.client_addr(ip("8.8.8.8"), &h), ip("8.8.8.8"));
        assert_eq!(trusted.client_addr(ip("10.0.0.5"), &h), ip("1.2.3.4"));
        let none = TrustedProxies::default();
        assert_eq!(none.client_addr(ip("10.0.0.5"), &h), ip("10.0.0.5"));
        assert_eq!(
            trusted.client_addr(ip("10.0.0.5"), &HeaderMap::new()),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn chains_are_read_from_the_right() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        // The client forged the first entry; the trusted proxy appended the
        // address it really saw.
        let h = xff(&["6.6.6.6, 5.5.5.5", "10.1.1.1"]);
        assert_eq!(trusted.client_addr(ip("10.0.0.5"), &h), ip("5.5.5.5"));
        let h = xff(&["garbage, 10.1.1.1"]);
        assert_eq!(trusted.client_addr(ip("10.0.0.5"), &h), ip("10.1.1.1"));
        let h = xff(&["[2001:db8::1]:443"]);
        assert_eq!(trusted.client_addr(ip("10.0.0.5"), &h), ip("2001:db8::1"));
    }
}
