//! `Origin` validation on the endpoints that take bearer tokens (`/mcp/...`, `/approvals...`).
//!
//! A browser adds `Origin` to every cross-site request and to every POST. Streamable HTTP requires a
//! server to check it: a page on another site, or one that rebinds its own DNS name to this gateway's
//! address, must not reach the MCP endpoint through a visitor's browser. Clients that are not browsers
//! (agents, the SDKs, curl) send no `Origin` and are not affected.
//!
//! An allowed origin is `scheme://host[:port]` (no port: the scheme's default port only),
//! `scheme://host:*` (any port) or `null` (what a browser sends from sandboxed or `file:` pages).

use http::HeaderValue;

/// Origins of a loopback address, on any port: allowed by default when the gateway listens on loopback.
pub const LOOPBACK_ORIGINS: [&str; 6] =
    ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*", "https://localhost:*", "https://127.0.0.1:*", "https://[::1]:*"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Port {
    Any,
    Exact(u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Null,
    Site { scheme: String, host: String, port: Port },
}

/// The origins a gateway accepts; a request without `Origin` is always accepted.
#[derive(Clone, Debug, Default)]
pub struct AllowedOrigins {
    entries: Vec<Entry>,
}

/// Why a request's `Origin` was refused (logged; the client gets one sentence for all of them).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not visible ASCII, or not `scheme://host[:port]`.
    Malformed,
    NotAllowed,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `scheme://host[:port]` with nothing after the authority, lowercased; `None` for anything else.
fn parse_site(value: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = value.split_once("://")?;
    let valid_scheme = !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !valid_scheme || rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let authority = http::uri::Authority::try_from(rest).ok()?;
    // A port that is there must be a number `http` can hold (it reads `:99999` or `:*` as no port).
    let port_text = rest.rsplit_once(']').map_or(rest, |(_, after)| after).split_once(':').map(|(_, port)| port);
    if port_text.is_some() && authority.port_u16().is_none() {
        return None;
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), host, authority.port_u16()))
}

impl AllowedOrigins {
    /// Parses the configured origins; `Err` names the first entry that is not an origin.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<AllowedOrigins, String> {
        let mut parsed = Vec::new();
        for raw in entries {
            let raw = raw.as_ref().trim();
            let entry = if raw.eq_ignore_ascii_case("null") {
                Entry::Null
            } else {
                let (base, any_port) = match raw.strip_suffix(":*") {
                    Some(base) => (base, true),
                    None => (raw, false),
                };
                let Some((scheme, host, port)) = parse_site(base).filter(|(_, _, p)| !(any_port && p.is_some())) else {
                    return Err(format!(
                        "`{raw}` is not an origin: write scheme://host, scheme://host:port, scheme://host:* (any port) or null"
                    ));
                };
                let port = match (any_port, port.or_else(|| default_port(&scheme))) {
                    (true, _) => Port::Any,
                    (false, Some(p)) => Port::Exact(p),
                    (false, None) => return Err(format!("`{raw}` has no port and {scheme} has no default port: add :PORT or :*")),
                };
                Entry::Site { scheme, host, port }
            };
            parsed.push(entry);
        }
        Ok(AllowedOrigins { entries: parsed })
    }

    /// Accepts a request without `Origin`, or whose `Origin` matches an entry.
    pub fn check(&self, origin: Option<&HeaderValue>) -> Result<(), Refused> {
        let Some(origin) = origin else { return Ok(()) };
        let value = origin.to_str().map_err(|_| Refused::Malformed)?.trim();
        if value.eq_ignore_ascii_case("null") {
            return if self.entries.contains(&Entry::Null) { Ok(()) } else { Err(Refused::NotAllowed) };
        }
        let (scheme, host, port) = parse_site(value).ok_or(Refused::Malformed)?;
        let port = port.or_else(|| default_port(&scheme));
        let allowed = self.entries.iter().any(|entry| match entry {
            Entry::Null => false,
            Entry::Site { scheme: s, host: h, port: p } => {
                *s == scheme && *h == host && (*p == Port::Any || port.is_some_and(|port| *p == Port::Exact(port)))
            }
        });
        if allowed { Ok(()) } else { Err(Refused::NotAllowed) }
    }
}

/// The sentence a refused request gets.
pub const REFUSAL: &str = "Forbidden: this Origin may not call the gateway (a web page of another site, or a DNS rebinding \
     attempt). Browser clients on a trusted origin need it listed with --allowed-origin (chart value gateway.allowedOrigins)";

#[cfg(test)]
mod tests {
    use super::*;

    fn check(allowed: &AllowedOrigins, origin: &str) -> Result<(), Refused> {
        allowed.check(Some(&HeaderValue::from_str(origin).unwrap()))
    }

    #[test]
    fn requests_without_origin_pass_and_foreign_origins_do_not() {
        let none = AllowedOrigins::default();
        assert_eq!(none.check(None), Ok(()), "non-browser clients send no Origin");
        for origin in ["http://evil.example", "null", "http://127.0.0.1:8080", "https://app.example.com"] {
            assert_eq!(check(&none, origin), Err(Refused::NotAllowed), "{origin}");
        }
    }

    #[test]
    fn entries_match_scheme_host_and_port() {
        let allowed = AllowedOrigins::new(&["https://App.Example.com", "http://localhost:*", "http://[::1]:3000", "null"]).unwrap();
        for ok in ["https://app.example.com", "https://APP.example.com:443", "http://localhost", "http://localhost:5173", "http://[::1]:3000", "null", "NULL"] {
            assert_eq!(check(&allowed, ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.test",
            "https://localhost",
            "http://[::1]:3001",
            "http://localhost.evil.test:80",
        ] {
            assert_eq!(check(&allowed, refused), Err(Refused::NotAllowed), "{refused}");
        }
        for malformed in ["app.example.com", "https://", "https://a.example/path", "https://user@a.example", "https://a.example:99999", "*"] {
            assert_eq!(check(&allowed, malformed), Err(Refused::Malformed), "{malformed}");
        }
        assert_eq!(allowed.check(Some(&HeaderValue::from_bytes(b"https://a\xff.example").unwrap())), Err(Refused::Malformed));
    }

    #[test]
    fn loopback_defaults_cover_every_port_of_loopback_only() {
        let allowed = AllowedOrigins::new(&LOOPBACK_ORIGINS).unwrap();
        for ok in ["http://localhost:8080", "http://127.0.0.1", "https://[::1]:9", "http://LOCALHOST:1"] {
            assert_eq!(check(&allowed, ok), Ok(()), "{ok}");
        }
        for refused in ["http://127.0.0.2:8080", "http://localhost.example:8080", "http://0.0.0.0:8080", "null"] {
            assert_eq!(check(&allowed, refused), Err(Refused::NotAllowed), "{refused}");
        }
    }

    #[test]
    fn configured_entries_that_are_not_origins_are_refused_with_the_entry() {
        for bad in ["example.com", "https://example.com/", "https://example.com:*:*", "https://example.com:80:*", "ftp2://x", "custom://host"] {
            let error = AllowedOrigins::new(&[bad]).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert!(AllowedOrigins::new(&["custom://host:*", "custom://host:7"]).is_ok(), "any scheme with a port");
    }
}
