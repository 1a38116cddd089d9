//! Attacks on the HTTP edge: browser origins (DNS rebinding, cross-site pages), probing other callers'
//! session ids, and malformed bodies. Each is refused before anything runs, with a JSON answer.

mod gateway_support;

use gateway_support::*;
use serde_json::{Value, json};

/// A status, the headers that matter to a client (all but `date`) and the body.
async fn answer(response: reqwest::Response) -> (u16, Vec<(String, String)>, String) {
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").to_owned()))
        .collect();
    headers.sort();
    (status, headers, response.text().await.unwrap())
}

fn metric_line(metrics: &str, prefix: &str) -> Option<String> {
    metrics.lines().find(|l| l.starts_with(prefix)).map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused_before_anything_runs() {
    let dev = Dev::start_with_args(&[], &["--allowed-origin", "https://console.example.com"]);
    let session = open_session(&dev, DEV_TOKEN).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).json(&initialized).send().await.unwrap().status(), 202);
    let write = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "write_note", "arguments": {"path": "origin.md", "content": "x"}}});

    // A page on another site (or a rebound DNS name: the Host is the gateway's own) calls with a valid
    // token: refused, on every path, whatever the token.
    let port = dev.addr.rsplit_once(':').unwrap().1;
    for origin in ["http://evil.example", &format!("http://rebound.evil.example:{port}"), "null", "https://console.example.com:8443", "not an origin"] {
        let requests = [
            ("initialize", mcp_post(&dev, Some(DEV_TOKEN)).header("Origin", origin).json(&initialize_body())),
            ("tools/call", mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).header("Origin", origin).json(&write)),
            ("no token", mcp_post(&dev, None).header("Origin", origin).json(&initialize_body())),
        ];
        for (what, request) in requests {
            let (status, headers, body) = answer(request.send().await.unwrap()).await;
            assert_eq!(status, 403, "{what} from {origin}: {body}");
            assert!(headers.contains(&("content-type".into(), "application/json".into())), "{headers:?}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"]["code"], -32600, "{body}");
            assert!(body["error"]["message"].as_str().unwrap().starts_with("Forbidden: this Origin may not call the gateway"), "{body}");
            assert!(!headers.iter().any(|(name, _)| name == "mcp-session-id"), "no session was made");
        }
        let listed = http().get(dev.url("/approvals")).bearer_auth(APPROVER_TOKEN).header("Origin", origin).send().await.unwrap();
        assert_eq!(listed.status(), 403, "{origin}");
        let body: Value = listed.json().await.unwrap();
        assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");
        let decided = http().post(dev.url("/approvals/ap-0/approve")).bearer_auth(APPROVER_TOKEN).header("Origin", origin).send().await.unwrap();
        assert_eq!(decided.status(), 403, "{origin}");
    }
    let lines = dev.audit_lines();
    assert!(lines.is_empty(), "nothing was decided or ran: {lines:?}");
    let metrics = http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric_line(&metrics, "toolwarden_http_requests_refused_total{reason=\"origin\"}").as_deref(), Some("toolwarden_http_requests_refused_total{reason=\"origin\"} 25"), "{metrics}");
    assert_eq!(metric_line(&metrics, "toolwarden_sessions_active ").as_deref(), Some("toolwarden_sessions_active 1"), "only the test's own session");

    // No Origin (agents, SDKs), a listed origin, and loopback pages of a loopback-bound server pass.
    for origin in [None, Some("https://console.example.com"), Some(&format!("http://127.0.0.1:{port}")), Some("http://localhost:5173")] {
        let mut request = mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).json(&write);
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(reply["result"]["content"][0]["text"].as_str().is_some_and(|t| t.starts_with("wrote origin.md")), "{origin:?}: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_allowed_origin_stops_the_gateway_from_starting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolwarden"))
        .args(["dev", "--listen", "127.0.0.1:0", "--allowed-origin", "https://console.example.com/app"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`https://console.example.com/app` is not an origin"), "{stderr}");
}

/// A second namespace, so that a session id can be presented at another namespace's path too.
const OTHER_NAMESPACE: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: count-letters, namespace: other}
spec:
  description: Counts the letters of a text.
  effect: read
  inputSchema: {type: object, properties: {text: {type: string}}, additionalProperties: false}
  runtime:
    exec:
      image: busybox:1.36
      command: [wc, -c]
  outputTrust: trusted
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: everyone-count-letters, namespace: other}
spec:
  subjects: {users: ["*"]}
  tools: {names: [count-letters]}
  decision: allow
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_callers_session_id_is_answered_exactly_like_an_unknown_one() {
    let dev = Dev::start(&[("zz-other.yaml", OTHER_NAMESPACE)]);
    let session = open_session(&dev, DEV_TOKEN).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).json(&initialized).send().await.unwrap().status(), 202);
    let unknown = "0f3c2a9e-8d41-4c6b-9a57-2b1e6f0d7c35";
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let write = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "write_note", "arguments": {"path": "stolen.md", "content": "x"}}});
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}});

    // (token, path) pairs that do not own the session: another subject, and the owner at another namespace.
    for (token, path) in [(APPROVER_TOKEN, "/mcp/default"), (DEV_TOKEN, "/mcp/other")] {
        let requests = |id: &str| {
            let post_as = |body: &Value, accept: &str, content_type: &str| {
                http()
                    .post(dev.url(path))
                    .bearer_auth(token)
                    .header("Accept", accept)
                    .header("Content-Type", content_type)
                    .header("Mcp-Session-Id", id)
                    .header("MCP-Protocol-Version", "2025-06-18")
                    .body(body.to_string())
            };
            let post = |body: &Value| post_as(body, "application/json, text/event-stream", "application/json");
            vec![
                ("tools/list", post(&list)),
                ("tools/call", post(&write)),
                ("notification", post(&cancel)),
                ("tools/call without SSE in Accept", post_as(&write, "application/json", "application/json")),
                ("tools/call as text", post_as(&write, "application/json, text/event-stream", "text/plain")),
                ("GET stream", http().get(dev.url(path)).bearer_auth(token).header("Accept", "text/event-stream").header("Mcp-Session-Id", id)),
                ("DELETE", http().delete(dev.url(path)).bearer_auth(token).header("Mcp-Session-Id", id)),
            ]
        };
        for ((what, stolen), (_, unknown)) in requests(&session).into_iter().zip(requests(unknown)) {
            let stolen = answer(stolen.send().await.unwrap()).await;
            let unknown = answer(unknown.send().await.unwrap()).await;
            assert_eq!(stolen, unknown, "{what} at {path}: another caller's session must look unknown");
            assert!(stolen.0 >= 400, "{what} at {path}: refused, {stolen:?}");
        }
    }
    // Nothing ran in the session, and it still works for its owner (the DELETEs did not end it).
    assert!(!dev.audit_lines().iter().any(|l| l["arguments"]["path"] == "stolen.md"), "nothing was called through the stolen id");
    let own: Value = mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).json(&list).send().await.unwrap().json().await.unwrap();
    assert!(own["result"]["tools"].as_array().is_some_and(|t| !t.is_empty()), "{own}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_a_json_rpc_error_of_their_kind_on_every_path() {
    let mut dev = Dev::start(&[]);
    let session = open_session(&dev, DEV_TOKEN).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).json(&initialized).send().await.unwrap().status(), 202);
    let call = |arguments: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"write_note","arguments":{arguments}}}}}"#)
    };
    let deep = format!("{{\"path\":\"a.md\",\"content\":{}\"x\"{}}}", "[".repeat(300), "]".repeat(300));
    let cases: Vec<(&str, Vec<u8>, u16, i64, &str)> = vec![
        // These three reached rmcp, which answered `415 text/plain`.
        ("nested too deep", call(&deep).into_bytes(), 400, -32700, "recursion limit"),
        ("number out of range", call(r#"{"path":"a.md","content":"x","n":1e400}"#).into_bytes(), 400, -32700, "number out of range"),
        ("lone surrogate", call(r#"{"path":"a.md","content":"\ud800"}"#).into_bytes(), 400, -32700, "hex escape"),
        ("lone trailing surrogate", call(r#"{"path":"a.md","content":"\udc00"}"#).into_bytes(), 400, -32700, "surrogate"),
        ("params not an object", br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":[1]}"#.to_vec(), 400, -32602, "params must be an object"),
        ("_meta not an object", br#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"_meta":[]}}"#.to_vec(), 400, -32602, "_meta must be an object"),
        ("id not a string or integer", br#"{"jsonrpc":"2.0","id":{},"method":"tools/list"}"#.to_vec(), 400, -32600, "id must be"),
        ("a repeated key", br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}"#.to_vec(), 400, -32600, "appears twice"),
        ("truncated", call(r#"{"path":"a.md""#).into_bytes(), 400, -32700, "EOF"),
        ("not UTF-8", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"x\":\"\xff\"}".to_vec(), 400, -32700, "UTF-8"),
        ("a batch", format!("[{}]", call("{}")).into_bytes(), 400, -32600, "batch"),
        ("too large", vec![b' '; 2 * 1024 * 1024], 413, -32600, "larger than"),
    ];
    for (what, body, status, code, why) in cases {
        for in_session in [true, false] {
            let request = if in_session { mcp_post_in_session(&dev, Some(DEV_TOKEN), &session) } else { mcp_post(&dev, Some(DEV_TOKEN)) };
            let (got, headers, text) = answer(request.body(body.clone()).send().await.unwrap()).await;
            assert_eq!(got, status, "{what} (in a session: {in_session}): {text}");
            assert!(headers.contains(&("content-type".into(), "application/json".into())), "{what}: {headers:?}");
            let reply: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
            assert_eq!((reply["jsonrpc"].as_str(), &reply["id"], reply["error"]["code"].as_i64()), (Some("2.0"), &Value::Null, Some(code)), "{what}: {reply}");
            assert!(reply["error"]["message"].as_str().unwrap().contains(why), "{what}: {reply}");
        }
    }
    // rmcp's own protocol refusals come in the same form.
    let as_text = in_session(http().post(dev.mcp_url()), &session)
        .bearer_auth(DEV_TOKEN)
        .header("Accept", "application/json, text/event-stream")
        .header("Content-Type", "text/plain")
        .body(call("{}"));
    let (status, headers, text) = answer(as_text.send().await.unwrap()).await;
    assert_eq!(status, 415);
    assert!(headers.contains(&("content-type".into(), "application/json".into())), "{headers:?}");
    assert!(text.contains("Content-Type must be application/json") && text.contains("-32600"), "{text}");
    let gone = mcp_post_in_session(&dev, Some(DEV_TOKEN), "no-such-session").json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    let (status, _, text) = answer(gone.send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["message"], "Not Found: Session not found");

    // The approvals API answers its malformed bodies in its own JSON form.
    for (body, status, code) in [
        (b"{\"reason\": \"\\ud800\"}".to_vec(), 400, "bad_request"),
        (b"{\"reason\": 1e400}".to_vec(), 400, "bad_request"),
        (b"{\"why\": \"x\"}".to_vec(), 400, "bad_request"),
        (vec![b' '; 3 * 1024 * 1024], 413, "body_too_large"),
    ] {
        let response = http().post(dev.url("/approvals/ap-0/approve")).bearer_auth(APPROVER_TOKEN).body(body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{code}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    assert!(!dev.audit_lines().iter().any(|l| l["tool"] == "write_note"), "no malformed call was decided or ran");
    assert!(dev.is_running(), "the gateway is still up");
    let fine: Value = mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).body(call(r#"{"path":"a.md","content":"\ud83d\ude00"}"#)).send().await.unwrap().json().await.unwrap();
    assert!(fine["result"]["content"][0]["text"].as_str().is_some_and(|t| t.starts_with("wrote a.md")), "{fine}");
}
