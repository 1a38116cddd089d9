//! The properties the fuzz targets check, shared by `fuzz/fuzz_targets/*` (libFuzzer) and
//! `core/tests/fuzz_corpus.rs` (which replays the seed corpora and every crash turned regression on
//! the stable toolchain). Each function takes one raw input and panics when a property fails.
#![allow(dead_code)] // each includer uses a subset

use std::path::Path;

use serde_json::{Value, json};
use toolwarden_core::approval::{TokenBinding, TokenError, issue_token, verify_token};
use toolwarden_core::compiler::compile_manifests;
use toolwarden_core::config::{GatewayConfig, RuleCheck, RuleConfig};
use toolwarden_core::manifest::load_str;
use toolwarden_core::policy::path::{absolute, canonical_path, check_path_within, is_within};
use toolwarden_core::policy::rules::{CallContext, Verdict};
use toolwarden_core::policy::url::parse_http_url;
use toolwarden_core::policy::{CompiledRule, Engine, Session, Subject, decide, explain};

/// Manifests → compiler → engine → decide: any text gives errors, or a config that survives the trip
/// through JSON (operator → ConfigMap → gateway) unchanged and builds an engine. Input: YAML, optionally
/// followed by a line `#args` and the JSON arguments of one call to every tool.
pub fn manifest_compile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (yaml, args) = match text.split_once("\n#args\n") {
        Some((yaml, args)) => (yaml, serde_json::from_str::<Value>(args).unwrap_or(Value::Null)),
        None => (text, Value::Object(Default::default())),
    };
    let Ok(manifests) = load_str(yaml, Path::new("fuzz.yaml")) else { return };
    let Ok((configs, _warnings)) = compile_manifests(&manifests) else { return };
    for config in configs.into_values() {
        let back = GatewayConfig::from_json(&config.to_json()).expect("a compiled config reads back");
        assert_eq!(back, config, "a compiled config survives the trip through JSON");
        let engine = Engine::new(config).expect("a compiled config builds an engine");
        let subject = Subject::new("fuzz", &["developers", "devs"]);
        for tainted in [false, true] {
            let session = Session { id: "s".into(), tainted, client: "fuzz".into() };
            for tool in &engine.config().tools {
                let _ = decide(&engine, &subject, &session, &tool.name, &args);
                let _ = explain(&engine, &subject, &session, &tool.name, &args).to_string();
            }
        }
    }
}

const BASES: &[&str] = &["/", "/notes", "/srv/data"];

fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// An independent percent-decoder (lossy UTF-8, as a program might decode).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(Some(h)), Some(Some(l))) = (bytes.get(i + 1).map(|b| hex(*b)), bytes.get(i + 2).map(|b| hex(*b)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Path arguments: a canonical form is a fixed point inside the base that names the place the spelling
/// names and holds nothing a program could read another way; `pathWithin` on an undeclared argument
/// never accepts a value that some decoding takes out of its base. Input: a byte choosing the base, then
/// the value.
pub fn path_rules(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(value) = std::str::from_utf8(rest) else { return };
    let base = BASES[pick as usize % BASES.len()];
    if let Ok(canonical) = canonical_path(base, value) {
        assert_eq!(canonical_path(base, &canonical).as_deref(), Ok(canonical.as_str()), "fixed point");
        assert!(!canonical.starts_with('/') && !canonical.ends_with('/'), "{canonical:?}");
        assert!(canonical == "." || canonical.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{canonical:?}");
        assert!(!canonical.contains('\\') && !canonical.chars().any(char::is_control), "{canonical:?}");
        let full = absolute(base, &canonical);
        assert!(is_within(base, &full), "{full} is within {base}");
        let joined = if value.starts_with('/') { value.to_string() } else { format!("{base}/{value}") };
        assert_eq!(normalize(&joined).as_deref(), Some(full.as_str()), "the spelling names the same place");
    }
    if check_path_within(base, value).is_ok() {
        let mut spelling = value.to_string();
        for _ in 0..3 {
            let joined = if spelling.starts_with('/') { spelling.clone() } else { format!("{base}/{spelling}") };
            let full = normalize(&joined).expect("accepted paths never climb above /");
            assert!(is_within(base, &full), "{value:?} -> {full}");
            let decoded = percent_decode(&spelling);
            if decoded == spelling {
                break;
            }
            spelling = decoded;
        }
    }
}

/// RFC 3986 appendix B, written independently: authority up to the first `/`, `?` or `#`; userinfo up
/// to the last `@`; port after the last `:`.
fn rfc3986_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let (_, rest) = text.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().ok()?)),
        None => (host_port, None),
    };
    Some((host.trim_end_matches('.').to_ascii_lowercase(), port))
}

/// URLs for hostIn: an accepted URL has the same host and port for the `url` crate (WHATWG) and for
/// an RFC 3986 split; `hostIn` agrees with the parser and never panics.
pub fn url_rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = parse_http_url(text);
    if let Ok(url) = &parsed {
        assert_eq!(rfc3986_host_port(text), Some((url.host.clone(), url.port)), "RFC 3986 reads {text:?} the same way");
        let whatwg = url::Url::parse(text).expect("accepted URLs parse");
        assert_eq!(whatwg.host_str().map(|h| h.trim_end_matches('.').to_ascii_lowercase()), Some(url.host.clone()));
        assert_eq!(parse_http_url(text), parsed, "stable");
    }
    let rule = CompiledRule::compile(&RuleConfig {
        name: "u".into(),
        argument: Some("u".into()),
        check: RuleCheck::HostIn(vec!["docs.example.test".into(), "*.example.test".into()]),
        message: "m".into(),
    })
    .expect("the rule compiles");
    let ctx = CallContext { subject: "s", groups: &[], session_id: "s", tainted: false, client: "c", paths: &[] };
    let verdict = rule.evaluate(&json!({"u": text}), &ctx);
    match (&parsed, &verdict) {
        (Ok(url), Verdict::Pass) => assert!(url.host == "docs.example.test" || url.host.ends_with(".example.test")),
        (Ok(_), Verdict::Fail) | (Err(_), Verdict::Unreadable(_)) => {}
        other => panic!("hostIn and the parser disagree on {text:?}: {other:?}"),
    }
}

/// CEL `expression` rules: any source fails to compile with a message or evaluates over any arguments
/// to a verdict. Input: the expression, then optionally `\n#args\n` and JSON arguments.
pub fn cel_expression(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (source, args) = match text.split_once("\n#args\n") {
        Some((source, args)) => (source, serde_json::from_str::<Value>(args).unwrap_or(Value::Null)),
        None => (text, json!({"to": "a@example.com", "n": 3, "tags": ["x"], "o": {"k": true}})),
    };
    let config = RuleConfig { name: "e".into(), argument: None, check: RuleCheck::Expression(source.to_string()), message: "m".into() };
    let Ok(rule) = CompiledRule::compile(&config) else { return };
    let groups = vec!["devs".to_string()];
    let ctx = CallContext { subject: "ann", groups: &groups, session_id: "s", tainted: false, client: "c", paths: &[] };
    let _ = rule.evaluate(&args, &ctx);
    let _ = rule.matches(&args, &ctx);
}

const KEY: &[u8] = b"fuzz-key-fuzz-key-fuzz-key-32byt";

/// Confirm tokens: any string is refused with a reason, never verified without the key; a token issued
/// for a binding (the input split at U+001F) verifies for it only.
pub fn confirm_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let binding = TokenBinding { session: "s1", tool: "send_email", arguments_hash: "abc" };
    if let Ok(verified) = verify_token(KEY, text, binding, 1_000) {
        panic!("a token nobody issued verified: {text:?} -> {verified:?}");
    }
    let mut parts = text.splitn(3, '\u{1f}');
    let session = parts.next().unwrap_or_default();
    let tool = parts.next().unwrap_or_default();
    let hash = parts.next().unwrap_or_default();
    let binding = TokenBinding { session, tool, arguments_hash: hash };
    let token = issue_token(KEY, binding, 1_000, 60_000, [7; 16]);
    assert!(verify_token(KEY, &token, binding, 1_001).is_ok());
    assert_eq!(verify_token(KEY, &token, binding, 61_000), Err(TokenError::Expired));
    let other = format!("{session}x");
    assert_eq!(verify_token(KEY, &token, TokenBinding { session: &other, ..binding }, 1_001), Err(TokenError::OtherSession));
    assert_eq!(verify_token(b"another key", &token, binding, 1_001), Err(TokenError::BadSignature));
}
