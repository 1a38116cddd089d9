//! The `http` runtime against a local test server.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::Worker;

/// A test API on 127.0.0.1 that records every request (request line, headers, body).
struct Api {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

fn api() -> Api {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            log.lock().unwrap().push(format!("{head}\r\n{}", String::from_utf8_lossy(&body)));
            let (status, extra, body) = match path.as_str() {
                "/missing" => ("404 Not Found", "", "{\"message\":\"no such thing\"}".to_string()),
                "/moved" => ("302 Found", "Location: /elsewhere\r\n", String::new()),
                "/big" => ("200 OK", "", "y".repeat(1_000_000)),
                _ => ("200 OK", "", json!({"path": path}).to_string()),
            };
            let mut out = stream;
            let _ = write!(
                out,
                "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Api { port, seen }
}

fn http_spec(url: &str, port: u16) -> Value {
    json!({
        "name": "call_api", "resource": "call-api", "description": "t", "effect": "write", "inputSchema": {"type": "object"},
        "outputSchema": {"type": "object"},
        "runtime": {"http": {"method": "POST", "url": url, "query": {"q": "query"}, "body": ["title"],
                             "headers": {"Accept": "application/json"}}},
        "egress": [{"cidr": "127.0.0.1/32", "ports": [port]}],
        "timeoutMs": 5000, "maxOutputBytes": 65_536, "outputTrust": "untrusted",
    })
}

fn with_credential(mut spec: Value, file: &std::path::Path) -> Value {
    spec["credentials"] = json!([{"secretRef": {"name": "api", "key": "token"}, "header": {"name": "Authorization", "prefix": "Bearer "}}]);
    spec["credentialSources"] = json!([{"path": file.to_str().unwrap()}]);
    spec
}

#[test]
fn the_credential_header_is_sent_with_encoded_path_query_and_body() {
    let api = api();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("header-0");
    std::fs::write(&secret, "gh-token-123\n").unwrap();
    let spec = with_credential(http_spec(&format!("http://127.0.0.1:{}/repos/{{owner}}/pulls", api.port), api.port), &secret);
    let worker = Worker::serve(&spec, &[]);
    let result = worker.ran(json!({"owner": "a/b c", "query": "x&y", "title": "Fix it", "ignored": 1}));
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["httpStatus"], 200);
    assert_eq!(result["structured"]["path"], "/repos/a%2Fb%20c/pulls?q=x%26y");
    let seen = api.seen.lock().unwrap().join("\n");
    assert!(seen.starts_with("POST /repos/a%2Fb%20c/pulls?q=x%26y HTTP/1.1"), "{seen}");
    assert!(seen.to_ascii_lowercase().contains("authorization: bearer gh-token-123\r\n"), "{seen}");
    assert!(seen.ends_with("{\"title\":\"Fix it\"}"), "{seen}");
    assert!(!worker.log().contains("gh-token-123"), "the secret never reaches the log");
}

#[test]
fn an_undeclared_host_is_refused_before_any_connection() {
    let api = api();
    // The API listens on 127.0.0.1 (every 127/8 address reaches it), but only 127.0.0.1 is declared.
    let worker = Worker::serve(&http_spec(&format!("http://127.0.0.2:{}/x", api.port), api.port), &[]);
    let result = worker.ran(json!({"title": "t"}));
    assert_eq!(result["errorCode"], "egress_denied", "{result}");
    assert!(result["content"].as_str().unwrap().contains("127.0.0.2"));
    // A name is checked after resolution: localhost resolves to loopback, allowed only on the declared port.
    let other_port = Worker::serve(&http_spec(&format!("http://localhost:{}/x", api.port + 1), api.port), &[]);
    assert_eq!(other_port.ran(json!({"title": "t"}))["errorCode"], "egress_denied");
    assert!(api.seen.lock().unwrap().is_empty(), "no request reached the server");
}

#[test]
fn a_tool_without_egress_reaches_nothing() {
    let api = api();
    let mut spec = http_spec(&format!("http://127.0.0.1:{}/x", api.port), api.port);
    spec["egress"] = json!([]);
    let worker = Worker::serve(&spec, &[]);
    assert_eq!(worker.ran(json!({}))["errorCode"], "egress_denied");
    assert!(api.seen.lock().unwrap().is_empty());
}

#[test]
fn status_400_and_above_is_an_error_with_the_status() {
    let api = api();
    let worker = Worker::serve(&http_spec(&format!("http://127.0.0.1:{}/missing", api.port), api.port), &[]);
    let result = worker.ran(json!({}));
    assert_eq!(result["isError"], true);
    assert_eq!(result["errorCode"], "http_status");
    assert_eq!(result["httpStatus"], 404);
    assert!(result["content"].as_str().unwrap().contains("no such thing"));
}

#[test]
fn redirects_are_not_followed_unless_the_tool_says_so() {
    let api = api();
    let mut spec = http_spec(&format!("http://127.0.0.1:{}/moved", api.port), api.port);
    let worker = Worker::serve(&spec, &[]);
    let result = worker.ran(json!({}));
    assert_eq!(result["isError"], true);
    assert!(result["content"].as_str().unwrap().contains("not followed"), "{result}");
    assert_eq!(api.seen.lock().unwrap().len(), 1);

    spec["runtime"]["http"]["followRedirects"] = json!(true);
    let following = Worker::serve(&spec, &[]);
    let result = following.ran(json!({}));
    assert_eq!(result["structured"]["path"], "/elsewhere", "{result}");
}

#[test]
fn a_large_response_is_capped_and_marked_truncated() {
    let api = api();
    let mut spec = http_spec(&format!("http://127.0.0.1:{}/big", api.port), api.port);
    spec["maxOutputBytes"] = json!(1000);
    let worker = Worker::serve(&spec, &[]);
    let result = worker.ran(json!({}));
    assert_eq!(result["content"].as_str().unwrap().len(), 1000);
    assert_eq!(result["truncated"], true);
    assert_eq!(result["truncatedBytes"], 999_000);
}

#[test]
fn a_path_parameter_that_is_not_a_scalar_is_invalid_arguments() {
    let api = api();
    let worker = Worker::serve(&http_spec(&format!("http://127.0.0.1:{}/repos/{{owner}}", api.port), api.port), &[]);
    let answer = worker.call(json!({"owner": ["a", "b"]}));
    assert_eq!(answer.status, 422);
    assert!(api.seen.lock().unwrap().is_empty());
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The `traceparent` header lines of the requests the API saw.
fn traceparents(api: &Api) -> Vec<String> {
    let seen = api.seen.lock().unwrap();
    seen.iter().flat_map(|r| r.lines().filter(|l| l.to_ascii_lowercase().starts_with("traceparent:")).map(str::to_owned).collect::<Vec<_>>()).collect()
}

#[test]
fn a_traced_call_sends_its_traceparent_and_it_replaces_a_fixed_one() {
    let api = api();
    let mut spec = http_spec(&format!("http://127.0.0.1:{}/x", api.port), api.port);
    spec["runtime"]["http"]["headers"]["Traceparent"] = json!("00-11111111111111111111111111111111-2222222222222222-01");
    let worker = Worker::serve(&spec, &[]);
    let answer = worker.call_with(&json!({"callId": "c", "arguments": {"title": "t"}, "traceparent": TRACEPARENT}));
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(traceparents(&api), [format!("traceparent: {TRACEPARENT}")], "one header, the call's");
    // Untraced, the tool's fixed header is sent as it always was.
    worker.ran(json!({"title": "t"}));
    assert_eq!(traceparents(&api)[1], "traceparent: 00-11111111111111111111111111111111-2222222222222222-01");
}

#[test]
fn a_malformed_traceparent_is_not_passed_on() {
    let api = api();
    let worker = Worker::serve(&http_spec(&format!("http://127.0.0.1:{}/x", api.port), api.port), &[]);
    for bad in ["00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "00-1-2-01", "x\r\nX-Injected: 1", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
        let answer = worker.call_with(&json!({"callId": "c", "arguments": {"title": "t"}, "traceparent": bad}));
        assert_eq!(answer.status, 200, "the call still runs: {:?}", answer.body);
    }
    assert_eq!(api.seen.lock().unwrap().len(), 4);
    assert!(traceparents(&api).is_empty(), "{:?}", traceparents(&api));
    assert!(!api.seen.lock().unwrap().join("").contains("X-Injected"));
}
