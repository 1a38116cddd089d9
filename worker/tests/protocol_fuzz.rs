//! The worker protocol under random input (a seeded mutation fuzzer that runs in every `cargo test`;
//! core's parsers have coverage-guided cargo-fuzz targets, scripts/fuzz.sh): call bodies are mutated,
//! and whatever parses as a `CallRequest` goes through argv expansion and http URL templating. Nothing
//! may panic, and the templating keeps its promises on every input: a string argument is exactly one
//! argv entry, and a path parameter never changes the URL's host or adds a path segment.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use toolwarden_worker::protocol::CallRequest;
use toolwarden_worker::template::{expand_argv, http_target};

const ROUNDS: usize = 20_000;

fn seeds() -> Vec<String> {
    vec![
        json!({"callId": "c1", "arguments": {"path": "notes/a.md", "text": "hello", "n": 3}}).to_string(),
        json!({"callId": "c2", "arguments": {"path": "../../etc/passwd", "text": "a b; rm -rf /", "tags": ["x", "y"]}, "preview": true}).to_string(),
        json!({"callId": "c3", "arguments": {"path": "a/../b?x=1#f", "text": "--flag=1", "n": -1.5e300}}).to_string(),
        json!({"callId": "c4", "arguments": null}).to_string(),
        json!({"callId": "c5", "arguments": {"path": "%2e%2e/%00", "text": "\u{202e}\u{0}\n"}}).to_string(),
    ]
}

/// xorshift64: the same inputs on every run, so a failure reproduces.
fn rng(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn mutate(body: &mut Vec<u8>, next: &mut impl FnMut() -> u64) {
    const PIECES: [&[u8]; 16] = [
        b"\\ud800", b"1e400", b"[[[[", b"]]", b"\"", b"\\", b"{", b"}", b",", b":", b"\x00", b"\xff", b"null",
        b"\"/\"", b"\"@evil.test/\"", b"\"a/../../b\"",
    ];
    for _ in 0..=next() % 3 {
        let at = (next() as usize) % (body.len() + 1);
        match next() % 3 {
            0 => body.truncate(at),
            1 => {
                let piece = PIECES[(next() as usize) % PIECES.len()];
                body.splice(at..at, piece.iter().copied());
            }
            _ => {
                if at < body.len() {
                    body[at] ^= 1 << (next() % 8);
                }
            }
        }
    }
}

#[test]
fn mutated_call_bodies_never_panic_and_templates_keep_their_promises() {
    let templates: Vec<String> = ["--path", "{{path}}", "--text={{text}}", "{{text}}", "{{n?}}", "{{tags?}}"].map(String::from).to_vec();
    let query: BTreeMap<String, String> = [("q".to_string(), "text".to_string())].into();
    let (mut parsed, mut expanded, mut targeted) = (0, 0, 0);
    let seeds = seeds();
    let mut next = rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..ROUNDS {
        let mut body = seeds[round % seeds.len()].clone().into_bytes();
        mutate(&mut body, &mut next);
        let Ok(request) = serde_json::from_slice::<CallRequest>(&body) else { continue };
        parsed += 1;
        let arguments = if request.arguments.is_null() { json!({}) } else { request.arguments.clone() };
        if let Ok(argv) = expand_argv(&templates, &arguments) {
            expanded += 1;
            // A string argument is one argv entry, byte for byte: no splitting, no shell.
            if let Some(Value::String(path)) = arguments.get("path") {
                assert_eq!(argv.get(1), Some(path), "{}", String::from_utf8_lossy(&body));
            }
        }
        if let Ok(target) = http_target("https://api.example.test/v1/items/{path}", &query, &[], &arguments) {
            targeted += 1;
            let url = url::Url::parse(&target.url).unwrap_or_else(|e| panic!("{}: unparsable URL {:?}: {e}", String::from_utf8_lossy(&body), target.url));
            assert_eq!(url.host_str(), Some("api.example.test"), "a path parameter moved the host: {}", target.url);
            let segments: Vec<&str> = url.path_segments().map(|s| s.collect()).unwrap_or_default();
            assert_eq!(segments.len(), 3, "a path parameter added a segment: {}", target.url);
            assert!(!matches!(segments[2], "." | ".."), "a path parameter became a dot segment: {}", target.url);
        }
    }
    // The mutations must reach the templating, or the test checks nothing.
    // (About 1 mutated body in 15 still parses; half of those carry the arguments the templates need.)
    assert!(parsed > ROUNDS / 20 && expanded > ROUNDS / 40 && targeted > ROUNDS / 40, "parsed {parsed}, expanded {expanded}, targeted {targeted}");
}
