//! CIDR arithmetic for egress rules: which protected ranges a declared CIDR would open.

use std::net::IpAddr;

use toolwarden_core::compiler::parse_cidr;

/// Cloud metadata endpoints: the IPv4 link-local range (AWS, GCP, Azure, ...) and AWS's IPv6 endpoint.
pub const METADATA_CIDRS: [&str; 2] = ["169.254.0.0/16", "fd00:ec2::254/128"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The address with host bits cleared.
    network: u128,
    len: u8,
    v6: bool,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = parse_cidr(text.trim())?;
        let (bits, v6) = match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), false),
            IpAddr::V6(a) => (u128::from(a), true),
        };
        let total = if v6 { len } else { len + 96 };
        Ok(Cidr { network: bits & mask(total), len: total, v6 })
    }

    /// Whether every address of `inner` is in `self`.
    pub fn contains(&self, inner: &Cidr) -> bool {
        self.v6 == inner.v6 && self.len <= inner.len && inner.network & mask(self.len) == self.network
    }

    /// `contains`, and `inner` is smaller: the only case `ipBlock.except` accepts.
    pub fn strictly_contains(&self, inner: &Cidr) -> bool {
        self.contains(inner) && self.len < inner.len
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) }
}

/// The `except` list of an egress `ipBlock` for `declared`: every protected range it strictly contains,
/// unless the tool lists that range itself (then the tool asked for it). Ranges inside another excepted
/// range are left out. Invalid protected ranges are skipped (the CLI validates them at start-up).
pub fn excepts(declared: &str, listed: &[&str], protected: &[String]) -> Result<Vec<String>, String> {
    let outer = Cidr::parse(declared)?;
    let listed: Vec<Cidr> = listed.iter().filter_map(|c| Cidr::parse(c).ok()).collect();
    let candidates: Vec<(String, Cidr)> = protected
        .iter()
        .filter_map(|text| Cidr::parse(text).ok().map(|c| (text.trim().to_owned(), c)))
        .filter(|(_, c)| outer.strictly_contains(c) && !listed.contains(c))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for (i, (text, cidr)) in candidates.iter().enumerate() {
        let covered = candidates.iter().enumerate().any(|(j, (_, other))| {
            j != i && other.contains(cidr) && (other.strictly_contains(cidr) || j < i)
        });
        if !covered && !out.contains(text) {
            out.push(text.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protected() -> Vec<String> {
        ["169.254.0.0/16", "10.0.0.0/8", "10.244.0.0/16", "fd00:ec2::254/128", "fc00::/7"].map(String::from).to_vec()
    }

    #[test]
    fn containment_respects_prefix_and_family() {
        let any = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(any.strictly_contains(&Cidr::parse("169.254.0.0/16").unwrap()));
        assert!(!any.contains(&Cidr::parse("fc00::/7").unwrap()));
        assert!(Cidr::parse("10.1.2.3/8").unwrap().contains(&Cidr::parse("10.9.0.0/16").unwrap()));
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().strictly_contains(&Cidr::parse("10.0.0.0/8").unwrap()));
    }

    #[test]
    fn broad_ipv4_cidr_excepts_metadata_and_cluster_ranges_without_duplicates() {
        let out = excepts("0.0.0.0/0", &["0.0.0.0/0"], &protected()).unwrap();
        assert_eq!(out, vec!["169.254.0.0/16", "10.0.0.0/8"]);
    }

    #[test]
    fn broad_ipv6_cidr_excepts_only_ipv6_ranges() {
        assert_eq!(excepts("::/0", &["::/0"], &protected()).unwrap(), vec!["fc00::/7"]);
    }

    #[test]
    fn explicitly_listed_range_is_not_excepted() {
        let out = excepts("0.0.0.0/0", &["0.0.0.0/0", "169.254.0.0/16"], &protected()).unwrap();
        assert_eq!(out, vec!["10.0.0.0/8"]);
    }

    #[test]
    fn narrow_public_cidr_needs_no_excepts() {
        assert!(excepts("140.82.112.0/20", &["140.82.112.0/20"], &protected()).unwrap().is_empty());
        // A CIDR inside a protected range was asked for explicitly: it stays open.
        assert!(excepts("10.244.3.0/24", &["10.244.3.0/24"], &protected()).unwrap().is_empty());
    }

    #[test]
    fn invalid_cidr_is_refused_with_the_text() {
        let e = excepts("10.0.0.0/33", &[], &protected()).unwrap_err();
        assert!(e.contains("10.0.0.0/33"), "{e}");
    }
}
