//! The gateway's HTTP edge: authentication, session ownership, bad input, audit lines, metrics, shutdown.

mod gateway_support;

use gateway_support::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_tokens_get_401_with_www_authenticate_and_nothing_else() {
    let dev = Dev::start(&[]);
    for token in [None, Some("wrong-token"), Some("")] {
        let response = mcp_post(&dev, token).json(&initialize_body()).send().await.unwrap();
        assert_eq!(response.status(), 401, "token {token:?}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(challenge.contains(&format!("resource_metadata=\"http://{}/.well-known/oauth-protected-resource/mcp/default\"", dev.addr)), "{challenge}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("tool") && !body.contains("default"), "nothing about the server leaks: {body}");
    }
    let approvals = http().get(dev.url("/approvals")).send().await.unwrap();
    assert_eq!(approvals.status(), 401);
    let metadata: Value = http().get(dev.url("/.well-known/oauth-protected-resource/mcp/default")).send().await.unwrap().json().await.unwrap();
    assert_eq!(metadata["resource"], json!(format!("http://{}/mcp/default", dev.addr)), "{metadata}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_presented_by_another_subject_is_refused() {
    let dev = Dev::start(&[]);
    let session = open_session(&dev, DEV_TOKEN).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let stolen = mcp_post_in_session(&dev, Some(APPROVER_TOKEN), &session).json(&list)
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status(), 404, "another caller's session is answered like an unknown one");
    let own = mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).json(&list)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert!(own.text().await.unwrap().contains("write_note"));
}

/// A reply that is the only message of its request comes as one JSON body (cheaper than an SSE stream
/// for both sides); the standalone GET stream stays SSE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_replies_are_json_and_the_listening_stream_is_sse() {
    let dev = Dev::start(&[]);
    let init = mcp_post(&dev, Some(DEV_TOKEN)).json(&initialize_body()).send().await.unwrap();
    assert_eq!(init.status(), 200);
    assert_eq!(init.headers()["content-type"], "application/json");
    let session = init.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let reply: Value = init.json().await.unwrap();
    assert_eq!(reply["result"]["protocolVersion"], "2025-06-18", "{reply}");
    let with_session = |body: Value| mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).json(&body);
    let accepted = with_session(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).send().await.unwrap();
    assert_eq!(accepted.status(), 202);
    let list = with_session(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).send().await.unwrap();
    assert_eq!(list.headers()["content-type"], "application/json");
    let reply: Value = list.json().await.unwrap();
    assert_eq!(reply["id"], 2);
    assert!(reply["result"]["tools"].as_array().is_some_and(|t| !t.is_empty()), "{reply}");
    let stream = http()
        .get(dev.mcp_url())
        .bearer_auth(DEV_TOKEN)
        .header("Accept", "text/event-stream")
        .header("Mcp-Session-Id", &session)
        .header("MCP-Protocol-Version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
}

/// A plain `tools/call` in a session is answered by the gateway without rmcp's session routing
/// (`direct_call`); a request with anything rmcp must check still goes through rmcp. Both give the same
/// answer, and rmcp's Host check (DNS rebinding) still refuses calls addressed to another name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_calls_get_the_same_answer_directly_and_through_rmcp() {
    let dev = Dev::start(&[]);
    let session = open_session(&dev, DEV_TOKEN).await;
    let with_session = |body: &Value| mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).json(body);
    let accepted = with_session(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).send().await.unwrap();
    assert_eq!(accepted.status(), 202);
    let calls = [
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "count_words", "arguments": {"text": "a b c", "unit": "words"}}}),
        json!({"jsonrpc": "2.0", "id": "three", "method": "tools/call", "params": {"name": "drop_database", "arguments": {}}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "count_words", "arguments": {"text": 7}}}),
    ];
    for call in &calls {
        let direct = with_session(call).send().await.unwrap();
        assert_eq!(direct.status(), 200);
        assert_eq!(direct.headers()["content-type"], "application/json");
        let mut direct: Value = direct.json().await.unwrap();
        // An `Mcp-Method` header (ignored by rmcp before protocol 2026-07-28) sends the request to rmcp.
        let routed = with_session(call).header("Mcp-Method", "tools/call").send().await.unwrap();
        assert_eq!(routed.status(), 200);
        assert_eq!(routed.headers()["content-type"], "application/json");
        let mut routed: Value = routed.json().await.unwrap();
        assert_eq!(direct["id"], call["id"], "{direct}");
        // Each call that reached a decision has its own id; everything else matches.
        for reply in [&mut direct, &mut routed] {
            reply["result"]["_meta"].as_object_mut().map(|m| m.remove("toolwarden.dev/callId"));
        }
        assert_eq!(direct, routed, "the same call, answered directly and by rmcp");
        assert!(direct["result"].get("resultType").is_none(), "no resultType before 2026-07-28: {direct}");
    }
    let calls_audited = dev.audit_lines().iter().filter(|l| l["event"] == "decision").count();
    assert_eq!(calls_audited, 2 * calls.len(), "every call is audited on both paths");

    let rebinding = with_session(&calls[0]).header("Host", "evil.example").send().await.unwrap();
    assert_eq!(rebinding.status(), 403, "a Host outside the allowed names is refused on the direct path too");
    let quiet = http()
        .post(dev.mcp_url())
        .bearer_auth(DEV_TOKEN)
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .header("Mcp-Session-Id", &session)
        .json(&calls[0])
        .send()
        .await
        .unwrap();
    assert_eq!(quiet.status(), 406, "rmcp's Accept rule still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_specific_errors_and_the_gateway_stays_up() {
    let mut dev = Dev::start(&[]);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("malformed JSON", mcp_post(&dev, Some(DEV_TOKEN)).body("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": "), 400),
        ("not JSON-RPC", mcp_post(&dev, Some(DEV_TOKEN)).body("{\"hello\": \"world\"}"), 400),
        ("batch", mcp_post(&dev, Some(DEV_TOKEN)).body(format!("[{0},{0}]", initialize_body())), 400),
        ("invalid UTF-8", mcp_post(&dev, Some(DEV_TOKEN)).body(vec![b'{', 0xff, 0xfe, b'}']), 400),
        ("deep JSON", mcp_post(&dev, Some(DEV_TOKEN)).body(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))), 400),
        ("huge body", mcp_post(&dev, Some(DEV_TOKEN)).body(vec![b' '; 2 * 1024 * 1024]), 413),
        (
            "wrong content type",
            http().post(dev.mcp_url()).bearer_auth(DEV_TOKEN).header("Accept", "application/json, text/event-stream").header("Content-Type", "text/plain").body(initialize_body().to_string()),
            415,
        ),
        ("no session", mcp_post(&dev, Some(DEV_TOKEN)).json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})), 400),
    ];
    for (what, request, want) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), want, "{what}: {:?}", response.text().await);
    }
    // `/mcp/{plain label}` skips the router; any other spelling goes through the router's own route.
    // Both give the same answers.
    let initialize_at = |path: &str, token: Option<&str>| {
        let request = http().post(dev.url(path)).header("Accept", "application/json, text/event-stream").json(&initialize_body());
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap_or_default())
        }
    };
    let unknown = initialize_at("/mcp/nowhere", Some(DEV_TOKEN)).await;
    assert_eq!(unknown.0, 404, "{unknown:?}");
    assert!(unknown.1.contains("no tools are served at /mcp/nowhere"), "{unknown:?}");
    let routed = initialize_at("/mcp/NoWhere", Some(DEV_TOKEN)).await;
    assert_eq!(routed.0, 404, "{routed:?}");
    assert!(routed.1.contains("no tools are served at /mcp/NoWhere"), "{routed:?}");
    assert_eq!(initialize_at("/mcp/def%61ult", None).await.0, 401, "the routed path authenticates too");
    assert_eq!(initialize_at("/mcp/def%61ult", Some(DEV_TOKEN)).await.0, 200, "the routed path serves MCP");
    assert_eq!(initialize_at("/mcp/default/extra", Some(DEV_TOKEN)).await.0, 404, "no such route");

    let client = dev.client(DEV_TOKEN).await;
    let unknown_method = client.send_request(rmcp::model::ClientRequest::ListPromptsRequest(Default::default())).await;
    assert!(unknown_method.is_err(), "prompts are not served: {unknown_method:?}");
    assert!(client.list_all_tools().await.is_ok(), "still serving after all that");
    assert!(dev.is_running());
    assert_eq!(http().get(dev.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http().get(dev.url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_hold_every_required_field_and_no_secret() {
    let dev = Dev::start(&[]);
    let client = dev.client(DEV_TOKEN).await;
    ok(&call(&client, "write_note", json!({"path": "a.md", "content": "hello"})).await);
    refused(&call(&client, "list_notes", json!({"limit": 500})).await, "argument_rule_failed");
    let long = "y".repeat(5000);
    let _ = call(&client, "count_words", json!({"text": long, "unit": "words", "api_token": "sk-supersecret-value"})).await;
    let lines = dev.audit_lines();
    assert!(lines.len() >= 4, "{lines:?}");
    let fields = [
        "timestamp", "event", "call_id", "session_id", "subject", "client", "namespace", "tool", "arguments", "argument_provenance",
        "policy", "rule", "decision", "code", "approval", "status", "duration_ms", "output_bytes", "truncated", "worker", "message",
        "chain_start", "chain", "seq", "prev_hash",
    ];
    for line in &lines {
        for field in fields {
            assert!(line.get(field).is_some(), "{field} missing from {line}");
        }
        assert_eq!(line["subject"], "developer");
        assert_eq!(line["client"], "gateway-test");
    }
    let write: Vec<&Value> = lines.iter().filter(|l| l["tool"] == "write_note").collect();
    assert_eq!(write.len(), 2, "one decision line and one result line");
    assert_eq!((write[0]["event"].as_str(), write[1]["event"].as_str()), (Some("decision"), Some("result")));
    assert_eq!(write[0]["call_id"], write[1]["call_id"]);
    assert_eq!(write[1]["status"], "ok");
    assert_eq!(write[1]["worker"], "local");
    assert!(write[1]["duration_ms"].is_u64() && write[1]["output_bytes"].is_u64());
    let denied = lines.iter().find(|l| l["tool"] == "list_notes").unwrap();
    assert_eq!((denied["decision"].as_str(), denied["code"].as_str()), (Some("deny"), Some("argument_rule_failed")));
    assert_eq!(denied["policy"], "developers-read-notes");
    let text = std::fs::read_to_string(&dev.audit).unwrap();
    assert!(!text.contains("sk-supersecret-value"), "secret argument leaked");
    assert!(!text.contains(&"y".repeat(300)), "long values are shortened");
    assert!(!text.contains(DEV_TOKEN), "bearer token leaked");
    let stdout = dev.stdout.lock().unwrap().join("\n");
    assert!(stdout.contains("\"event\":\"decision\""), "audit lines also go to stdout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_calls_made() {
    let dev = Dev::start(&[]);
    let client = dev.client(DEV_TOKEN).await;
    for _ in 0..2 {
        ok(&call(&client, "count_words", json!({"text": "a b", "unit": "words"})).await);
    }
    refused(&call(&client, "purge_cache", json!({})).await, "tool_disabled");
    let _ = call(&client, "delete_note", json!({"path": "a.md"})).await;
    let metrics = http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "toolwarden_tool_calls_total{namespace=\"default\",tool=\"count_words\",decision=\"allow\",status=\"ok\"} 2",
        "toolwarden_tool_calls_total{namespace=\"default\",tool=\"purge_cache\",decision=\"deny\",status=\"refused\"} 1",
        "toolwarden_tool_calls_total{namespace=\"default\",tool=\"delete_note\",decision=\"human\",status=\"pending\"} 1",
        "toolwarden_denials_total{namespace=\"default\",tool=\"purge_cache\",reason=\"tool_disabled\"} 1",
        "toolwarden_tool_call_duration_seconds_count{namespace=\"default\",tool=\"count_words\"} 2",
        "toolwarden_approvals_pending{namespace=\"default\"} 1",
        "toolwarden_config_generation{namespace=\"default\"} 1",
        "toolwarden_sessions_active 1",
        "toolwarden_worker_start_duration_seconds_count{runtime=\"local\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dev = Dev::start_with_args(&[], &["--header-read-timeout", "1s"]);
    let mut slow = tokio::net::TcpStream::connect(&dev.addr).await.unwrap();
    slow.write_all(b"POST /mcp/default HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(15), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the gateway still holds a connection whose headers never ended");
    // Clients that send whole requests are unaffected.
    let response = mcp_post(&dev, Some(DEV_TOKEN)).json(&initialize_body()).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

const READ_A_LOT: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: read-a-lot}
spec:
  description: Prints eight megabytes.
  effect: read
  outputTrust: trusted
  inputSchema: {type: object, additionalProperties: false}
  runtime:
    exec:
      image: python:3.12-slim
      command: [python3, -c, "import sys; sys.stdout.write('x' * 8000000)"]
  limits: {maxOutputBytes: 16777216}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: developers-read-a-lot}
spec:
  subjects: {groups: [developers]}
  tools: {names: [read-a-lot]}
  decision: allow
"#;

/// Whether the kernel still has an established TCP connection from local port `server` to `client`
/// (`/proc/net/tcp`, IPv4 loopback): the gateway's side of one client connection.
fn connection_open(server: u16, client: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| addr.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        port(fields[1]) == Some(server) && port(fields[2]) == Some(client) && fields[3] == "01"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answer_is_cut_off_and_counted() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dev = Dev::start_with_args(&[("read-a-lot.yaml", READ_A_LOT)], &["--write-stall-timeout", "2s"]);
    let session = open_session(&dev, DEV_TOKEN).await;
    let port: u16 = dev.addr.rsplit_once(':').unwrap().1.parse().unwrap();

    // A client asks for an 8 MB answer and never reads it: a small receive buffer, nothing read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(dev.addr.parse().unwrap()).await.unwrap();
    let client_port = stalled.local_addr().unwrap().port();
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "read_a_lot", "arguments": {}}}).to_string();
    let request = format!(
        "POST /mcp/default HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {DEV_TOKEN}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: {session}\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(request.as_bytes()).await.unwrap();

    // The call itself ran to its end and was audited; then the gateway gave up on the connection.
    let metric = "toolwarden_http_connections_closed_total{reason=\"write_stalled\"} 1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let metrics = loop {
        let metrics = http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.lines().any(|l| l == metric) {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "the stalled connection was not closed and counted within 60 s: {:?}", metrics.lines().find(|l| l.contains("connections_closed")));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("toolwarden_tool_calls_total{namespace=\"default\",tool=\"read_a_lot\",decision=\"allow\",status=\"ok\"} 1"), "{metrics}");
    let result = dev.audit_lines().into_iter().find(|l| l["event"] == "result" && l["tool"] == "read_a_lot").expect("the call's result line");
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["output_bytes"], 8_000_000, "{result}");
    assert!(!connection_open(port, client_port), "the gateway's side of the stalled connection is gone");

    // What the client gets when it finally reads: part of the answer, then a reset, never the whole.
    let mut received = Vec::new();
    // (a reset ends the read with an error, which is what the client sees)
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), stalled.read_to_end(&mut received)).await.expect("the read ends");
    assert!(received.len() < 8_000_000, "the client got the whole answer ({} bytes): the connection was not cut", received.len());

    // The session and the gateway are unaffected: the same call read by a client that reads.
    let reply: Value = mcp_post_in_session(&dev, Some(DEV_TOKEN), &session)
        .json(&json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "read_a_lot", "arguments": {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["result"]["content"][0]["text"].as_str().map(str::len), Some(8_000_000), "{}", reply.to_string().chars().take(300).collect::<String>());
    let metrics = http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == metric), "a reading client is not counted as stalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_gateway_cleanly() {
    let mut dev = Dev::start(&[]);
    let state_dir = dev.state_dir();
    // Sessions with a worker each, their clients still connected at SIGTERM: one with an open stream
    // (rmcp's client), two on idle keep-alive connections (one HTTP client that keeps them).
    let client = dev.client(DEV_TOKEN).await;
    ok(&call(&client, "write_note", json!({"path": "a.md", "content": "x"})).await);
    let keep_alive = http();
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "write_note", "arguments": {"path": "a.md", "content": "x"}}});
    for _ in 0..2 {
        let id = open_session_via(&keep_alive, &dev, DEV_TOKEN).await;
        let answer = in_session(mcp_post_via(&keep_alive, &dev, Some(DEV_TOKEN)), &id).json(&call).send().await.unwrap();
        assert!(answer.text().await.unwrap().contains("wrote a.md"));
    }
    assert_eq!(std::fs::read_dir(&state_dir).unwrap().count(), 3, "one worker directory per session");
    let status = dev.terminate();
    assert!(status.success(), "exit status {status}");
    let stderr = dev.stderr.lock().unwrap().join("\n");
    assert!(stderr.contains("gateway stopped"), "{stderr}");
    assert_eq!(stderr.matches("session ended").count(), 3, "each session is ended before the exit: {stderr}");
    assert!(!state_dir.exists(), "the workers' directories and their parent are removed: {:?}", std::fs::read_dir(&state_dir).map(|d| d.count()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_stops_its_workers() {
    let dev = Dev::start(&[]);
    let id = open_session(&dev, DEV_TOKEN).await;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "write_note", "arguments": {"path": "a.md", "content": "x"}}});
    let answer = mcp_post_in_session(&dev, Some(DEV_TOKEN), &id).json(&call).send().await.unwrap();
    assert!(answer.text().await.unwrap().contains("wrote a.md"));
    let metric = async |name: &str| -> String {
        let text = http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_owned()
    };
    assert_eq!(metric("toolwarden_sessions_active").await, "toolwarden_sessions_active 1");
    assert_eq!(metric("toolwarden_worker_pods_active").await, "toolwarden_worker_pods_active 1");

    // Someone else cannot end it.
    let foreign = http().delete(dev.mcp_url()).bearer_auth(APPROVER_TOKEN).header("Mcp-Session-Id", &id).send().await.unwrap();
    assert_eq!(foreign.status(), 404);
    let deleted = http().delete(dev.mcp_url()).bearer_auth(DEV_TOKEN).header("Mcp-Session-Id", &id).send().await.unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    dev.eventually("the session and its worker are gone", async || {
        metric("toolwarden_sessions_active").await == "toolwarden_sessions_active 0"
            && metric("toolwarden_worker_pods_active").await == "toolwarden_worker_pods_active 0"
    })
    .await;
    let after = mcp_post_in_session(&dev, Some(DEV_TOKEN), &id).json(&call).send().await.unwrap();
    assert_eq!(after.status(), 404, "an ended session is unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_holds_at_most_the_allowed_sessions() {
    use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

    let dev = Dev::start_with_args(&[], &["--max-sessions-per-subject", "2"]);
    let first = open_session(&dev, DEV_TOKEN).await;
    let second = open_session(&dev, DEV_TOKEN).await;
    let refused = mcp_post(&dev, Some(DEV_TOKEN)).json(&initialize_body()).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("developer already has 2 open sessions") && message.contains("DELETE"), "{body}");

    // The open sessions still work, and another subject is not held back.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let listed = mcp_post_in_session(&dev, Some(DEV_TOKEN), &second).json(&list).send().await.unwrap();
    assert!(listed.text().await.unwrap().contains("write_note"));
    open_session(&dev, APPROVER_TOKEN).await;

    // A stateless (2026-07-28) client's session counts too: its first request is refused.
    let stateless = |token: &str| {
        let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(dev.mcp_url()).auth_header(token));
        let info = ClientConfig::new(ClientCapabilities::default(), Implementation::new("stateless-limit", "1.0"));
        info.serve_with_lifecycle(transport, ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] })
    };
    let client = stateless(DEV_TOKEN).await.expect("2026-07-28 client connects");
    let error = client.list_all_tools().await.expect_err("a third session of developer");
    assert!(error.to_string().contains("developer already has 2 open sessions"), "{error}");

    // Ending one makes room.
    let deleted = http().delete(dev.mcp_url()).bearer_auth(DEV_TOKEN).header("Mcp-Session-Id", &first).send().await.unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    dev.eventually("a new session is admitted once one ended", async || {
        mcp_post(&dev, Some(DEV_TOKEN)).json(&initialize_body()).send().await.unwrap().status() == 200
    })
    .await;
    let metrics = http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"toolwarden_sessions_refused_total{namespace="default",reason="subject_limit"} 2"#), "{metrics}");
}

/// A tool whose program kills the worker serving it, mid-call.
const CRASHING: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: crash-worker}
spec:
  description: Kills the worker that runs it (a test of the gateway's handling of dying workers).
  effect: write
  inputSchema: {type: object, properties: {}, additionalProperties: false}
  runtime:
    exec:
      image: busybox
      # Its parent is the call's supervisor; the worker is the supervisor's parent.
      command: [sh, -c, "kill -KILL $(cut -d' ' -f4 /proc/$PPID/stat); sleep 5"]
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: developers-crash}
spec:
  subjects: {groups: [developers]}
  tools: {names: [crash-worker]}
  decision: allow
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_mid_call_gets_a_specific_error_and_an_audit_record() {
    let mut dev = Dev::start(&[("zz-test.yaml", CRASHING)]);
    let client = dev.client(DEV_TOKEN).await;
    let result = call(&client, "crash_worker", json!({})).await;
    assert_eq!(result.is_error, Some(true), "{result:?}");
    assert_eq!(code(&result).as_deref(), Some("worker_died"), "{result:?}");
    assert!(text(&result).contains("the worker stopped"), "{result:?}");
    let lines = dev.audit_lines();
    let outcome = lines.iter().find(|l| l["tool"] == "crash_worker" && l["event"] == "result").expect("a result line");
    assert_eq!((outcome["status"].as_str(), outcome["code"].as_str()), (Some("worker_failed"), Some("worker_died")));
    assert!(dev.is_running());
    ok(&call(&client, "count_words", json!({"text": "still here", "unit": "words"})).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_session_starts_is_bounded_per_gateway() {
    let dev = Dev::start_with_args(&[], &["--max-sessions", "2"]);
    open_session(&dev, DEV_TOKEN).await;
    open_session(&dev, gateway_support::APPROVER_TOKEN).await;
    // A third caller's (here the first's again) session would exceed what this gateway holds.
    let refused = mcp_post(&dev, Some(DEV_TOKEN)).json(&initialize_body()).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("holds 2 sessions, the most it allows"), "{body}");
    let metrics = http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"toolwarden_sessions_refused_total{namespace="default",reason="gateway_limit"} 1"#), "{metrics}");
}
