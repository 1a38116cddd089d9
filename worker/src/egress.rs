//! The tool's declared network destinations (`egress`), checked after DNS resolution so a hostname can
//! never lead the worker to an address the tool did not declare.

use std::net::{IpAddr, SocketAddr};

use crate::spec::Egress;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| format!("`{text}` is not an IPv4 or IPv6 CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("`{text}`: prefix must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => masked(u32::from(net) as u128, u32::from(ip) as u128, self.prefix, 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

fn masked(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (net >> shift) == (ip >> shift)
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are checked as the IPv4 address they reach.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Ranges a broad CIDR does not open in the local sandbox's egress proxy, as the operator's NetworkPolicy
/// excepts the cluster's and the metadata ranges: the host itself (loopback, unspecified), private and
/// shared networks, link-local (cloud metadata) — an address there needs an entry no broader than its range.
pub const PROTECTED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// [`allowed`], and an address in a [`PROTECTED`] range is allowed only by an entry inside that range
/// (`127.0.0.1/32` opens the host's loopback; `0.0.0.0/0` does not).
pub fn allowed_narrowly(egress: &[Egress], addr: SocketAddr) -> bool {
    let ip = canonical(addr.ip());
    let protected = PROTECTED.iter().filter_map(|p| Cidr::parse(p).ok()).find(|p| p.contains(ip));
    egress.iter().any(|e| {
        Cidr::parse(&e.cidr).is_ok_and(|c| c.contains(ip) && protected.is_none_or(|p| c.prefix >= p.prefix))
            && (e.ports.is_empty() || e.ports.contains(&addr.port()))
    })
}

/// Whether the tool's egress allows a TCP connection to `addr`.
pub fn allowed(egress: &[Egress], addr: SocketAddr) -> bool {
    egress.iter().any(|e| {
        Cidr::parse(&e.cidr).is_ok_and(|c| c.contains(addr.ip())) && (e.ports.is_empty() || e.ports.contains(&addr.port()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, ports: &[u16]) -> Egress {
        Egress { cidr: cidr.into(), ports: ports.to_vec() }
    }

    #[test]
    fn cidrs_match_by_prefix_and_port() {
        let egress = [rule("140.82.112.0/20", &[443]), rule("2001:db8::/32", &[])];
        assert!(allowed(&egress, "140.82.127.1:443".parse().unwrap()));
        assert!(!allowed(&egress, "140.82.128.1:443".parse().unwrap()));
        assert!(!allowed(&egress, "140.82.112.1:80".parse().unwrap()));
        assert!(allowed(&egress, "[2001:db8::1]:8080".parse().unwrap()));
        assert!(allowed(&egress, "[::ffff:140.82.112.9]:443".parse().unwrap()), "mapped IPv4 is checked as IPv4");
        assert!(!allowed(&[], "127.0.0.1:80".parse().unwrap()), "no egress means no network");
        assert!(allowed(&[rule("0.0.0.0/0", &[])], "8.8.8.8:53".parse().unwrap()));
    }

    #[test]
    fn broad_cidrs_do_not_open_the_host_or_internal_ranges_unless_an_entry_lies_inside_them() {
        let any = [rule("0.0.0.0/0", &[443]), rule("::/0", &[443])];
        assert!(allowed_narrowly(&any, "93.184.216.34:443".parse().unwrap()));
        for internal in ["127.0.0.1:443", "10.1.2.3:443", "192.168.1.5:443", "169.254.169.254:443", "[::1]:443", "[::ffff:127.0.0.1]:443", "[fe80::1]:443"] {
            assert!(!allowed_narrowly(&any, internal.parse().unwrap()), "{internal}");
            assert!(allowed(&any, internal.parse().unwrap()), "the plain check still matches {internal}");
        }
        let narrow = [rule("127.0.0.1/32", &[8080]), rule("10.0.0.0/8", &[])];
        assert!(allowed_narrowly(&narrow, "127.0.0.1:8080".parse().unwrap()));
        assert!(!allowed_narrowly(&narrow, "127.0.0.1:22".parse().unwrap()));
        assert!(allowed_narrowly(&narrow, "10.9.9.9:22".parse().unwrap()));
        assert!(!allowed_narrowly(&[rule("0.0.0.0/1", &[])], "10.0.0.1:80".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_are_refused_with_the_text() {
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("10.0.0.0/33"));
        assert!(Cidr::parse("example.com/8").is_err());
        assert_eq!(Cidr::parse("10.1.2.3").unwrap(), Cidr::parse("10.1.2.3/32").unwrap());
    }
}
