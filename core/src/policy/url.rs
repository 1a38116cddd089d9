//! URLs for `hostIn`: only those that every common parser reads with the same host.
//!
//! The WHATWG parser (browsers, the `url` crate), RFC 3986 parsers (Python's `urlsplit`) and curl differ
//! on backslashes, user names, control characters, stray whitespace, numeric hosts and missing slashes:
//! `http://docs.example.test\@evil.test/` is docs.example.test to one and evil.test to another. A host
//! check on one reading is worth nothing when the tool uses another, so only a strict subset of URLs is
//! accepted: `http(s)://host[:port]` followed by RFC 3986 path, query and fragment characters, where host is
//! a DNS name of letters, digits and hyphens or a dotted-decimal IPv4 address. Everything else is refused
//! with the reason, and the `url` crate must agree on host and port with what this module read.

/// The parts of an accepted URL that rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Lowercase, without a trailing dot.
    pub host: String,
    /// As written; `None` for the scheme's default.
    pub port: Option<u16>,
}

/// Why a URL was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlRefusal {
    NotHttp,
    NoAuthority,
    Control,
    Backslash,
    NonAscii,
    Userinfo,
    IpLiteral,
    BadHost,
    OddIpv4,
    BadPort,
    Unencoded(char),
    BadPercent,
    ParsersDisagree,
}

impl std::fmt::Display for UrlRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlRefusal::NotHttp => write!(f, "the value is not an http:// or https:// URL"),
            UrlRefusal::NoAuthority => write!(f, "the URL does not have `//` and a host right after http: or https:"),
            UrlRefusal::Control => write!(
                f,
                "the URL holds a space or a control character (tab, newline, NUL…), which some URL parsers drop and others keep"
            ),
            UrlRefusal::Backslash => write!(
                f,
                "the URL holds a backslash, which some URL parsers read as `/` and others as part of the host or user name"
            ),
            UrlRefusal::NonAscii => {
                write!(f, "the URL holds non-ASCII characters; write the host in punycode (xn--…) and percent-encode the rest")
            }
            UrlRefusal::Userinfo => write!(
                f,
                "the URL carries a user name or password before `@`, which URL parsers split differently; send it without one"
            ),
            UrlRefusal::IpLiteral => write!(f, "the URL's host is an IPv6 literal; use a host name"),
            UrlRefusal::BadHost => write!(
                f,
                "the URL's host may hold only letters, digits, `-` and `.` (no percent-encoding, `_` or empty labels)"
            ),
            UrlRefusal::OddIpv4 => write!(
                f,
                "the URL's host is an IP address in an unusual notation (hex, octal, a single number or fewer than four parts); write four decimal numbers"
            ),
            UrlRefusal::BadPort => write!(f, "the URL's port is not a number from 1 to 65535"),
            UrlRefusal::Unencoded(c) => write!(f, "the URL holds `{c}`, which must be percent-encoded"),
            UrlRefusal::BadPercent => write!(f, "the URL holds a `%` that does not start a percent-encoded byte (%XX)"),
            UrlRefusal::ParsersDisagree => write!(f, "URL parsers disagree about the URL's host or port"),
        }
    }
}

/// Parses `text` as an http(s) URL that common parsers agree on, or says why not.
pub fn parse_http_url(text: &str) -> Result<HttpUrl, UrlRefusal> {
    for c in text.chars() {
        if c.is_control() || c.is_whitespace() {
            return Err(UrlRefusal::Control);
        }
        if c == '\\' {
            return Err(UrlRefusal::Backslash);
        }
        if !c.is_ascii() {
            return Err(UrlRefusal::NonAscii);
        }
    }
    let (scheme, rest) = text.split_once(':').ok_or(UrlRefusal::NotHttp)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => "http",
        "https" => "https",
        _ => return Err(UrlRefusal::NotHttp),
    };
    let rest = rest.strip_prefix("//").filter(|r| !r.starts_with('/')).ok_or(UrlRefusal::NoAuthority)?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(UrlRefusal::Userinfo);
    }
    if authority.starts_with('[') {
        return Err(UrlRefusal::IpLiteral);
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (authority, None),
    };
    let host = check_host(host)?;
    check_tail(tail)?;
    // A second reading: the WHATWG parser must find the same host and port.
    let url = url::Url::parse(text).map_err(|_| UrlRefusal::ParsersDisagree)?;
    let theirs = url.host_str().map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    let default = if scheme == "https" { 443 } else { 80 };
    if theirs.as_deref() != Some(host.as_str()) || url.port_or_known_default() != Some(port.unwrap_or(default)) {
        return Err(UrlRefusal::ParsersDisagree);
    }
    Ok(HttpUrl { scheme, host, port })
}

fn parse_port(text: &str) -> Result<u16, UrlRefusal> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    match text.parse::<u16>() {
        Ok(port) if digits && port > 0 => Ok(port),
        _ => Err(UrlRefusal::BadPort),
    }
}

/// A DNS name of letter-digit-hyphen labels, or a dotted-decimal IPv4 address; lowercased, without the
/// trailing dot.
pub(crate) fn check_host(host: &str) -> Result<String, UrlRefusal> {
    if host.is_empty() {
        return Err(UrlRefusal::NoAuthority);
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(UrlRefusal::BadHost);
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        let ldh = label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if label.is_empty() || label.len() > 63 || !ldh || label.starts_with('-') || label.ends_with('-') {
            return Err(UrlRefusal::BadHost);
        }
    }
    // WHATWG reads a host whose last label is a number (decimal, 0x hex, octal) as an IPv4 address in any
    // of several notations; RFC 3986 parsers read it as a name. Only the notation all agree on is kept.
    let last = labels[labels.len() - 1];
    let numeric = last.bytes().all(|b| b.is_ascii_digit()) || last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x"));
    if numeric && !is_dotted_quad(&labels) {
        return Err(UrlRefusal::OddIpv4);
    }
    Ok(name.to_ascii_lowercase())
}

fn is_dotted_quad(labels: &[&str]) -> bool {
    labels.len() == 4
        && labels.iter().all(|l| {
            l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) && (l.len() == 1 || !l.starts_with('0')) && l.parse::<u16>().is_ok_and(|n| n <= 255)
        })
}

/// Path, query and fragment: RFC 3986 characters only, `%` only as `%XX`, one `#`.
fn check_tail(tail: &str) -> Result<(), UrlRefusal> {
    let bytes = tail.as_bytes();
    let mut fragment = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return Err(UrlRefusal::BadPercent);
                }
                i += 2;
            }
            b'#' if !fragment => fragment = true,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@' | b'/' | b'?' => {}
            other => return Err(UrlRefusal::Unencoded(other as char)),
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> Result<String, UrlRefusal> {
        parse_http_url(text).map(|u| u.host)
    }

    #[test]
    fn plain_urls_are_read() {
        for (text, want) in [
            ("https://docs.example.test/", "docs.example.test"),
            ("http://docs.example.test", "docs.example.test"),
            ("HTTPS://Docs.Example.TEST./a/b?q=1&r=a@b#frag", "docs.example.test"),
            ("https://docs.example.test:8443/x", "docs.example.test"),
            ("https://docs.example.test?x", "docs.example.test"),
            ("https://docs.example.test#x", "docs.example.test"),
            ("https://10.0.0.1/", "10.0.0.1"),
            ("https://xn--bcher-kva.example/", "xn--bcher-kva.example"),
            ("https://docs.example.test/a%20b/%2e%2e/c", "docs.example.test"),
            ("https://1.2.example.test/", "1.2.example.test"),
        ] {
            assert_eq!(host(text), Ok(want.to_string()), "{text}");
        }
        assert_eq!(parse_http_url("https://a.test:8443/").unwrap().port, Some(8443));
    }

    #[test]
    fn urls_parsers_read_differently_are_refused() {
        use UrlRefusal::*;
        for (text, refusal) in [
            ("http://docs.example.test\\@evil.test/", Backslash),
            ("http://evil.test\\docs.example.test/", Backslash),
            ("http://docs.example.test@evil.test/", Userinfo),
            ("http://user:pass@docs.example.test/", Userinfo),
            ("http://a@b@evil.test/", Userinfo),
            ("http://docs.example.test%40evil.test/", BadHost),
            ("http://evil%2etest/", BadHost),
            ("http://docs_example.test/", BadHost),
            ("http://docs..example.test/", BadHost),
            ("http://-docs.example.test/", BadHost),
            ("http://docs.example.test../", BadHost),
            ("http://docs.example.test\t/", Control),
            ("http://docs.exa\nmple.test/", Control),
            (" http://docs.example.test/", Control),
            ("http://docs.example.test /", Control),
            ("http://docs.example.test/\0", Control),
            ("http://dоcs.example.test/", NonAscii),
            ("http://docs.example.test\u{3002}evil.test/", NonAscii),
            ("http://０x7f.1/", NonAscii),
            ("http://0x7f.1/", OddIpv4),
            ("http://0x7f000001/", OddIpv4),
            ("http://2130706433/", OddIpv4),
            ("http://0177.0.0.1/", OddIpv4),
            ("http://127.1/", OddIpv4),
            ("http://127.0.0.1.5/", OddIpv4),
            ("http://256.0.0.1/", OddIpv4),
            ("http://[::1]/", IpLiteral),
            ("http://docs.example.test:/", BadPort),
            ("http://docs.example.test:0/", BadPort),
            ("http://docs.example.test:080/", BadPort),
            ("http://docs.example.test:99999/", BadPort),
            ("http://docs.example.test:80:80/", BadPort),
            ("http:docs.example.test/", NoAuthority),
            ("http:/docs.example.test/", NoAuthority),
            ("http:///docs.example.test/", NoAuthority),
            ("http://", NoAuthority),
            ("ftp://docs.example.test/", NotHttp),
            ("docs.example.test/", NotHttp),
            ("javascript:alert(1)", NotHttp),
            ("https://docs.example.test/a b", Control),
            ("https://docs.example.test/<x>", Unencoded('<')),
            ("https://docs.example.test/a#b#c", Unencoded('#')),
            ("https://docs.example.test/%zz", BadPercent),
            ("https://docs.example.test/%", BadPercent),
        ] {
            assert_eq!(host(text), Err(refusal), "{text}");
        }
    }
}
