//! The client's address, as far as it can be trusted: the TCP peer, or —
//! when the peer is one of `trusted_proxies` — the nearest address in
//! `X-Forwarded-For` that is not itself a trusted proxy (the rule of NGINX's
//! `real_ip_recursive` and Envoy's `xff_num_trusted_hops`). Only the token
//! endpoint's throttle uses it; forwarding never acts on client-sent
//! `X-Forwarded-*`.

use std::net::IpAddr;

use http::HeaderMap;

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address
/// is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        match (canonical(self.network), addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket
/// reports) as the IPv4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address for `peer` given the request's headers.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |addr: IpAddr| trusted.iter().any(|cidr| cidr.contains(addr));
    let peer = canonical(peer);
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Right to left: each hop was added by the one after it; stop at the
    // first hop no trusted proxy vouches for.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| {
            let text = value.to_str().unwrap_or("");
            text.rsplit(',').map(str::trim).collect::<Vec<_>>()
        });
    for hop in hops {
        let Ok(addr) = hop.parse::<IpAddr>() else {
            // Garbage (or a `host:port`): the last trusted hop is the best
            // we know.
            return client;
        };
        client = canonical(addr);
        if !is_trusted(client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_contain_what_they_should() {
        let private = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(private.contains(ip("10.1.2.3")));
        assert!(private.contains(ip("::ffff:10.1.2.3")));
        assert!(!private.contains(ip("11.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8::1")));
        assert!(!Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db9::1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.7"));
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_addr(ip("9.9.9.9"), &headers, &trusted),
            ip("9.9.9.9")
        );
        // Behind trusted proxies: the nearest untrusted hop, not the
        // client-written leftmost one.
        assert_eq!(
            client_addr(ip("10.0.0.1"), &headers, &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        let mut garbage = HeaderMap::new();
        garbage.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, junk, 10.0.0.9"),
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), &garbage, &trusted),
            ip("10.0.0.9")
        );
    }
}
