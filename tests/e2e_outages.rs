//! e2e on a real cluster: the API server is stopped for 60 s in the middle of a session
//! (`scripts/cluster.sh outage`). Calls on the session's running worker go on; a call that needs a new
//! worker pod fails with a specific error; once the API server is back everything recovers (new
//! workers start, the McpSession's counters catch up) without any restart of the gateway or operator.
//! Then the node's kubelet is stopped for 15 s and started again while calls run: running workers keep
//! answering, and new ones start once it is back.
//!
//! Its own test binary: the e2e binaries run one after another, so no other test sees the outage.

mod e2e_support;

use std::process::Command;
use std::time::{Duration, Instant};

use e2e_support::{AGENT_TOKEN, HelmRelease, TestNamespace, enabled, items, json_of, kubectl, kubectl_ok, kubectl_stdin, tool_image, wait_for};
use serde_json::{Value, json};

const OUTAGE_SECONDS: u64 = 60;

const MANIFESTS: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-echo}
spec:
  description: Returns its text.
  effect: read
  inputSchema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
  runtime:
    exec: {image: "TOOL_IMAGE", command: [echo], args: ["{{text}}"]}
  outputTrust: trusted
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-date}
spec:
  description: Returns the date.
  effect: read
  inputSchema: {type: object, properties: {}, additionalProperties: false}
  runtime:
    exec: {image: "TOOL_IMAGE", command: [date]}
  outputTrust: trusted
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: e2e-may-read}
spec:
  subjects: {users: [e2e]}
  tools: {names: [get-echo, get-date]}
  decision: allow
"#;

/// One request through the Service, retried for a minute while no connection can be made (after the
/// outage the node may be marked not ready for a moment, and its endpoints with it).
async fn post(url: &str, session: Option<&str>, body: &Value) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match e2e_support::mcp_request(url, session, body).send().await {
            Ok(response) => return response,
            Err(e) if e.is_connect() && Instant::now() < deadline => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(e) => panic!("the gateway does not answer: {e}"),
        }
    }
}

async fn call(url: &str, session: &str, tool: &str, arguments: Value) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": tool, "arguments": arguments}});
    post(url, Some(session), &body).await.text().await.unwrap_or_default()
}

async fn open_session(url: &str) -> String {
    e2e_support::open_raw_session(url, &["get_echo", "get_date"]).await
}

fn restart_counts(namespace: &str) -> Vec<(String, u64)> {
    let pods = items(&json_of(&["get", "pods", "-n", namespace, "-o", "json"]));
    pods.iter()
        .map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            (name, p["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap_or(0))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_api_server_outage_stops_only_what_needs_the_api_server() {
    if !enabled("a_sixty_second_api_server_outage_stops_only_what_needs_the_api_server") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Counters written within a second (the default waits a minute after the last write).
    let release = HelmRelease::install(&["gateway.replicas=1", "operator.replicas=1", "gateway.sessionCountersInterval=1s"]);
    let tenant_namespace = TestNamespace::create("tw-e2e-outage");
    let (ns, tenant) = (release.namespace.0.clone(), tenant_namespace.0.clone());
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant, "-f", "-"], &MANIFESTS.replace("TOOL_IMAGE", &tool_image()));
    assert!(ok, "{out}");
    for tool in ["mcptool/get-echo", "mcptool/get-date"] {
        kubectl_ok(&["wait", "-n", &tenant, "--for=condition=Ready", tool, "--timeout=60s"]);
    }
    let url = release.mcp_url(&tenant);
    let session = open_session(&url).await;
    let first = call(&url, &session, "get_echo", json!({"text": "before"})).await;
    assert!(first.contains("before") && !first.contains(r#""isError":true"#), "{first}");
    let restarts_before = restart_counts(&ns);

    // The API server goes away for a minute.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
    let mut outage = Command::new("bash").arg(&script).args(["outage", "kube-apiserver", &OUTAGE_SECONDS.to_string()]).spawn().expect("cluster.sh outage");
    wait_for("the API server to stop answering", Duration::from_secs(30), || (!kubectl(&["get", "--raw", "/readyz"]).0).then_some(()));
    let down = Instant::now();

    // The session's running worker needs no API server: its calls go on.
    let mut served = 0;
    while down.elapsed() < Duration::from_secs(20) {
        let answer = call(&url, &session, "get_echo", json!({"text": format!("during {served}")})).await;
        assert!(answer.contains(&format!("during {served}")) && !answer.contains(r#""isError":true"#), "a call on a running worker failed: {answer}");
        served += 1;
    }
    println!("e2e_outages: {served} calls answered by the running worker while the API server was down");
    // A call that needs a new worker pod cannot have one: a specific, transient error.
    let refused = call(&url, &session, "get_date", json!({})).await;
    assert!(refused.contains(r#""isError":true"#), "{refused}");
    assert!(refused.contains(r#""toolwarden.dev/code":"api_error""#) || refused.contains("start_timeout"), "a specific code: {refused}");
    assert!(refused.contains(r#""transient":true"#), "the caller learns it may retry: {refused}");
    println!("e2e_outages: a new worker during the outage: {}", &refused[..refused.len().min(400)]);

    let status = outage.wait().expect("the outage ends");
    assert!(status.success(), "cluster.sh outage failed");
    println!("e2e_outages: the API server was back after {} s", down.elapsed().as_secs());

    // Back: a new worker starts, the calls made meanwhile reach the McpSession, nothing restarted.
    let after = wait_for_answer(&url, &session).await;
    assert!(!after.contains(r#""isError":true"#), "{after}");
    let expected_calls = 1 + served + 1;
    wait_for("the McpSession counts the calls made during the outage", Duration::from_secs(60), || {
        let sessions = items(&json_of(&["get", "mcpsessions", "-n", &tenant, "-o", "json"]));
        (sessions.len() == 1 && sessions[0]["status"]["calls"].as_u64() >= Some(expected_calls)).then_some(())
    });
    assert_eq!(restart_counts(&ns), restarts_before, "no gateway or operator container restarted");

    // The kubelet restarts while calls run: containers keep running without it.
    let mut outage = Command::new("bash").arg(&script).args(["outage", "kubelet", "15"]).spawn().expect("cluster.sh outage kubelet");
    let restarting = Instant::now();
    let mut served = 0;
    while restarting.elapsed() < Duration::from_secs(12) {
        let answer = call(&url, &session, "get_echo", json!({"text": format!("kubelet {served}")})).await;
        assert!(answer.contains(&format!("kubelet {served}")) && !answer.contains(r#""isError":true"#), "a call on a running worker failed: {answer}");
        served += 1;
    }
    assert!(outage.wait().expect("the kubelet outage ends").success(), "cluster.sh outage kubelet failed");
    println!("e2e_outages: {served} calls answered while the kubelet was down");
    let ended = reqwest::Client::new().delete(&url).bearer_auth(AGENT_TOKEN).header("Mcp-Session-Id", &session).send().await.unwrap();
    assert!(ended.status().is_success(), "DELETE: {}", ended.status());
    let session = open_session(&url).await;
    let fresh = wait_for_answer(&url, &session).await;
    assert!(!fresh.contains(r#""isError":true"#), "a new worker pod starts after the kubelet restart: {fresh}");
    assert_eq!(restart_counts(&ns), restarts_before, "no gateway or operator container restarted");
}

/// `get_date` once the gateway can start workers again (its API clients reconnect with backoff).
async fn wait_for_answer(url: &str, session: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = call(url, session, "get_date", json!({})).await;
        if !answer.contains(r#""isError":true"#) {
            return answer;
        }
        assert!(Instant::now() < deadline, "no new worker 120 s after the API server came back: {answer}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
