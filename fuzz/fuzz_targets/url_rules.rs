//! URLs for hostIn: an accepted URL has the same host and port for the `url` crate (WHATWG) and for an
//! independent RFC 3986 split; `hostIn` never panics and agrees with the parser.
#![no_main]

#[path = "../../core/tests/support/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::url_rules(data));
