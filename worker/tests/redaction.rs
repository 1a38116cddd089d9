//! A tool's own credentials never leave the worker in a result: stdout, stderr tails, HTTP bodies and
//! headers echoed back, MCP results — in the spellings a program is likely to print them.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use serde_json::{Value, json};
use support::{Worker, exec_spec};

const SECRET: &str = "tw-s3cret/Value+42 é";

/// Asserts the result carries no spelling of the secret that a reader could use, and is marked.
fn assert_clean(result: &Value) {
    let text = result.to_string();
    for fragment in ["s3cret", "s3cret".as_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>().as_str(), "czNjcmV0", "3NjcmV0"] {
        assert!(!text.contains(fragment), "{fragment} leaked: {result}");
    }
    assert_eq!(result["redacted"], true, "{result}");
}

/// An exec tool running Python with the secret as an env credential.
fn python_with_env_secret(code: &str, extra: Value) -> Worker {
    let mut spec = exec_spec(&["/usr/bin/python3", "-c", code], &[]);
    spec["credentials"] = json!([{"secretRef": {"name": "s", "key": "k"}, "env": "API_TOKEN"}]);
    spec["credentialSources"] = json!([{"env": "TW_TEST_SECRET"}]);
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    Worker::serve_with_env(&spec, &[], &[("TW_TEST_SECRET", SECRET)])
}

#[test]
fn an_env_credential_echoed_on_stdout_in_any_common_encoding_is_redacted() {
    let code = r#"import base64, binascii, json, os, urllib.parse
v = os.environ['API_TOKEN']
b = v.encode()
print('plain', v)
print('json', json.dumps({'token': v}))
print('url', urllib.parse.quote(v, safe=''), urllib.parse.quote_plus(v))
print('hex', b.hex(), b.hex().upper())
print('b64', base64.b64encode(b).decode(), base64.urlsafe_b64encode(b).decode().rstrip('='))
print('basic', base64.b64encode(b'user:' + b).decode())
print('done')"#;
    let worker = python_with_env_secret(code, json!({}));
    let result = worker.ran(json!({}));
    assert_eq!(result["isError"], false, "{result}");
    assert_clean(&result);
    let content = result["content"].as_str().unwrap();
    assert!(content.starts_with("plain [redacted]\njson {\"token\": \"[redacted]\"}\n"), "{content}");
    assert!(content.ends_with("done\n"), "the rest of the output is kept: {content}");
}

#[test]
fn a_credential_in_the_stderr_tail_of_a_failed_call_is_redacted() {
    let code = "import os, sys; sys.stderr.write('auth failed with ' + os.environ['API_TOKEN'] + '\\n'); sys.exit(3)";
    let worker = python_with_env_secret(code, json!({}));
    let result = worker.ran(json!({}));
    assert_eq!(result["errorCode"], "exit_status", "{result}");
    assert!(result["content"].as_str().unwrap().ends_with("auth failed with [redacted]"), "{result}");
    assert_clean(&result);
}

#[test]
fn a_credential_written_in_two_pieces_across_reads_and_across_the_cap_is_still_redacted() {
    // Two writes with a pause: the worker reads them as separate chunks.
    let split = "import os, sys, time
v = os.environ['API_TOKEN']
sys.stdout.write('x' * 5000 + v[:7]); sys.stdout.flush(); time.sleep(0.3)
sys.stdout.write(v[7:] + ' end'); sys.stdout.flush()";
    let worker = python_with_env_secret(split, json!({}));
    let result = worker.ran(json!({}));
    assert_clean(&result);
    assert!(result["content"].as_str().unwrap().ends_with("x[redacted] end"), "{result}");

    // The cap (100 bytes) falls inside the value: no prefix of it may survive the cut.
    let across = "import os, sys; sys.stdout.write('y' * 95 + os.environ['API_TOKEN'] + 'tail')";
    let worker = python_with_env_secret(across, json!({"maxOutputBytes": 100}));
    let result = worker.ran(json!({}));
    assert_eq!(result["truncated"], true, "{result}");
    let content = result["content"].as_str().unwrap();
    assert!(content.starts_with(&"y".repeat(95)) && !content.contains("tw-s3"), "{content}");
    assert_eq!(result["redacted"], true, "{result}");
}

#[test]
fn a_file_credential_printed_by_the_tool_is_redacted_and_clean_output_is_not_marked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let mut spec = exec_spec(&["/bin/sh", "-c", "cat \"$TOOLWARDEN_CREDENTIALS_DIR/api-key\"; echo \"args: $1\"", "sh"], &["{{word}}"]);
    spec["credentials"] = json!([{"secretRef": {"name": "s", "key": "k"}, "file": "api-key"}]);
    spec["credentialSources"] = json!([{"path": file.to_str().unwrap()}]);
    let worker = Worker::serve(&spec, &[]);
    let result = worker.ran(json!({"word": "hello"}));
    assert_eq!(result["content"], "[redacted]\nargs: hello\n", "{result}");
    assert_clean(&result);
    let clean = Worker::serve(&exec_spec(&["/bin/echo", "nothing secret"], &[]), &[]).ran(json!({}));
    assert!(clean.get("redacted").is_none(), "{clean}");
}

/// An API on 127.0.0.1 that answers every request with the request's own headers.
fn echoing_api() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let status = if head.starts_with("GET /fail") { "401 Unauthorized" } else { "200 OK" };
            let body = json!({"youSent": head}).to_string();
            let mut out = stream;
            let _ = write!(out, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    port
}

#[test]
fn an_upstream_api_echoing_the_credential_header_back_is_redacted() {
    let port = echoing_api();
    for path in ["echo", "fail"] {
        let spec = json!({
            "name": "get_echo", "resource": "get-echo", "description": "t", "effect": "read", "inputSchema": {"type": "object"},
            "outputSchema": {"type": "object"},
            "runtime": {"http": {"method": "GET", "url": format!("http://127.0.0.1:{port}/{path}")}},
            "credentials": [{"secretRef": {"name": "s", "key": "k"}, "header": {"name": "Authorization", "prefix": "Bearer "}}],
            "credentialSources": [{"env": "TW_TEST_SECRET"}],
            "egress": [{"cidr": "127.0.0.1/32", "ports": [port]}],
            "timeoutMs": 10_000, "maxOutputBytes": 65_536, "outputTrust": "trusted",
        });
        // The value goes into a header, so it must be ASCII: drop the é.
        let ascii = SECRET.trim_end_matches(" é");
        let worker = Worker::serve_with_env(&spec, &[], &[("TW_TEST_SECRET", ascii)]);
        let result = worker.ran(json!({}));
        assert_clean(&result);
        assert!(result["content"].as_str().unwrap().contains("Bearer [redacted]"), "{result}");
        if path == "echo" {
            assert!(result["structured"]["youSent"].as_str().unwrap().contains("Bearer [redacted]"), "{result}");
        } else {
            assert_eq!(result["errorCode"], "http_status", "{result}");
        }
    }
}

#[test]
fn an_mcp_upstream_returning_its_credential_is_redacted_in_text_and_structured_content() {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("leaky_server.py");
    std::fs::write(
        &server,
        r#"import json, os, sys
v = os.environ['API_TOKEN']
for line in sys.stdin:
    m = json.loads(line)
    if 'id' not in m:
        continue
    if m['method'] == 'initialize':
        r = {'protocolVersion': '2025-06-18', 'capabilities': {'tools': {}}, 'serverInfo': {'name': 'leaky', 'version': '1'}}
    else:
        r = {'content': [{'type': 'text', 'text': 'key=' + v}], 'structuredContent': {'env': {'API_TOKEN': v}}}
    print(json.dumps({'jsonrpc': '2.0', 'id': m['id'], 'result': r}), flush=True)
"#,
    )
    .unwrap();
    let spec = json!({
        "name": "show_env", "resource": "show-env", "description": "t", "effect": "read",
        "inputSchema": {"type": "object"}, "outputSchema": {"type": "object"},
        "runtime": {"mcp": {"image": "unused", "command": ["/usr/bin/python3"], "args": [server.to_str().unwrap()], "tool": "show_env"}},
        "credentials": [{"secretRef": {"name": "s", "key": "k"}, "env": "API_TOKEN"}],
        "credentialSources": [{"env": "TW_TEST_SECRET"}],
        "timeoutMs": 10_000, "maxOutputBytes": 65_536, "outputTrust": "trusted",
    });
    let worker = Worker::serve_with_env(&spec, &[], &[("TW_TEST_SECRET", SECRET)]);
    let result = worker.ran(json!({}));
    assert_eq!(result["content"], "key=[redacted]", "{result}");
    assert_eq!(result["structured"], json!({"env": {"API_TOKEN": "[redacted]"}}));
    assert_clean(&result);
}
