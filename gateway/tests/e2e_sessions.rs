//! End-to-end against a real cluster (runs only with `KUBECONFIG` set; needs `kubectl` on PATH).
//!
//! Each test makes its own namespace labelled `pod-security.kubernetes.io/enforce: restricted`, so the
//! API server's own Pod Security admission checks every worker pod, and removes it afterwards.
//! Set `TOOLWARDEN_E2E_WORKER_IMAGE` (an image with `/toolwarden-worker`) where the cluster can run
//! pods, to also start a worker for real and call a tool through it.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use toolwarden_core::config::ToolConfig;
use toolwarden_core::resources::{ClientInfo, McpSession};
use toolwarden_gateway::kubernetes::pod::{Binding, LABEL_SESSION, WorkerPodParams, build_worker_pod, pod_name};
use toolwarden_gateway::kubernetes::{KubernetesConfig, KubernetesRuntime, Metrics, SessionStart};

fn enabled(test: &str) -> bool {
    if std::env::var_os("KUBECONFIG").is_none() {
        assert!(std::env::var_os("TOOLWARDEN_E2E_REQUIRED").is_none(), "{test}: TOOLWARDEN_E2E_REQUIRED is set but KUBECONFIG is not");
        eprintln!("skipping {test}: KUBECONFIG is not set (scripts/e2e.sh runs the e2e tier on a cluster)");
        return false;
    }
    true
}

/// An image the cluster's node has, from the variable scripts/e2e.sh sets.
fn image(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| panic!("{variable} is not set: run the e2e tier with scripts/e2e.sh"))
}

fn kubectl(args: &[&str]) -> (bool, String) {
    match Command::new("kubectl").args(args).output() {
        Ok(out) => (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))),
        Err(e) => (false, format!("kubectl: {e}")),
    }
}

fn suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:08x}", nanos ^ std::process::id())
}

/// A restricted namespace that is deleted when the test ends, pass or fail.
struct TestNamespace(String);

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

async fn setup(test: &str) -> (Client, TestNamespace, KubernetesConfig) {
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/mcpsessions.toolwarden.dev.yaml");
    let (ok, out) = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
    assert!(ok, "installing the McpSession CRD: {out}");
    let (ok, out) = kubectl(&["wait", "--for=condition=Established", "crd/mcpsessions.toolwarden.dev", "--timeout=60s"]);
    assert!(ok, "{out}");
    let client = Client::try_default().await.expect("a client from KUBECONFIG");
    let name = format!("tw-e2e-{test}-{}", suffix());
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("creating the test namespace");
    let config = KubernetesConfig {
        gateway_id: format!("e2e-{}", suffix()),
        worker_image: image("TOOLWARDEN_E2E_WORKER_IMAGE"),
        start_timeout: Duration::from_secs(120),
        status_interval: Duration::from_millis(500),
        // Counters shown within a second (the default writes counters alone once a minute).
        counters_interval: Duration::from_secs(1),
        ..KubernetesConfig::default()
    };
    (client, TestNamespace(name), config)
}

fn echo_tool() -> ToolConfig {
    serde_json::from_value(json!({
        "name": "echo_text", "resource": "echo-text", "description": "Echoes its text.", "effect": "read",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "runtime": {"exec": {"image": image("TOOLWARDEN_E2E_TOOL_IMAGE"), "command": ["echo"], "args": ["{{text}}"]}},
        "timeoutMs": 10000, "maxOutputBytes": 4096, "outputTrust": "trusted"
    }))
    .unwrap()
}

fn start(namespace: &str, id: &str) -> SessionStart {
    SessionStart {
        namespace: namespace.into(),
        id: id.into(),
        subject: "e2e-alice".into(),
        groups: vec!["e2e".into()],
        client: ClientInfo { name: "e2e-client".into(), version: Some("1".into()) },
        protocol_version: Some("2025-11-25".into()),
    }
}

/// Creates a worker pod for the session exactly as the runtime builds it (the image need not run).
async fn create_session_pod(client: &Client, namespace: &str, session: &str) -> Pod {
    let sessions: Api<McpSession> = Api::namespaced(client.clone(), namespace);
    let uid = sessions.get(session).await.unwrap().metadata.uid.unwrap();
    let tool = echo_tool();
    let pod = build_worker_pod(&WorkerPodParams {
        tool: &tool,
        namespace,
        pod_name: pod_name(&tool.resource, &suffix()),
        worker_image: &image("TOOLWARDEN_E2E_WORKER_IMAGE"),
        token_sha256: &"0".repeat(64),
        gateway_id: "e2e",
        binding: Binding::Session { name: session.into(), uid },
        active_deadline_seconds: 600,
    })
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .expect("the API server (Pod Security `restricted` enforced) accepts the worker pod")
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let began = Instant::now();
    while began.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what} did not happen within {timeout:?}");
}

async fn session_pods(client: &Client, namespace: &str, session: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default().labels(&format!("{LABEL_SESSION}={session}"))).await.unwrap();
    list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count()
}

#[tokio::test]
async fn session_is_visible_to_kubectl_with_its_printer_columns() {
    if !enabled("session_is_visible_to_kubectl_with_its_printer_columns") {
        return;
    }
    let (client, ns, config) = setup("columns").await;
    let rt = KubernetesRuntime::new(client, config, Metrics::default());
    rt.start().await.unwrap();
    rt.start_session(start(&ns.0, "e2e-columns")).await.unwrap();
    rt.record_call("e2e-columns", false, None);
    rt.record_call("e2e-columns", true, None);
    wait_until("status with phase Active, 1 call and 1 denial", Duration::from_secs(20), async || {
        let (ok, out) = kubectl(&["get", "mcpsessions", "-n", &ns.0]);
        ok && out.lines().any(|l| {
            let cols: Vec<_> = l.split_whitespace().collect();
            cols.len() >= 9 && cols[..8] == ["e2e-columns", "e2e-alice", "e2e-client", "Active", "1", "1", "0", "false"]
        })
    })
    .await;
    let (_, out) = kubectl(&["get", "mcpsessions", "-n", &ns.0]);
    let header: Vec<_> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SUBJECT", "CLIENT", "PHASE", "CALLS", "DENIED", "PENDING", "TAINTED", "AGE"], "{out}");
    let (_, wide) = kubectl(&["get", "mcps", "-n", &ns.0, "-o", "wide"]);
    assert!(wide.lines().next().unwrap_or_default().contains("WORKERS"), "{wide}");
    rt.end_session("e2e-columns", "closed").await.unwrap();
}

#[tokio::test]
async fn deleting_the_mcp_session_removes_its_worker_pod() {
    if !enabled("deleting_the_mcp_session_removes_its_worker_pod") {
        return;
    }
    let (client, ns, config) = setup("delete").await;
    let rt = KubernetesRuntime::new(client.clone(), config, Metrics::default());
    rt.start().await.unwrap();
    let mut ended = rt.subscribe_ended();
    rt.start_session(start(&ns.0, "e2e-delete")).await.unwrap();
    let pod = create_session_pod(&client, &ns.0, "e2e-delete").await;
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(pod.metadata.owner_references.as_ref().unwrap()[0].kind, "McpSession");
    assert_eq!(session_pods(&client, &ns.0, "e2e-delete").await, 1);

    let (ok, out) = kubectl(&["delete", "mcpsession", "e2e-delete", "-n", &ns.0, "--wait=false"]);
    assert!(ok, "{out}");
    let event = tokio::time::timeout(Duration::from_secs(15), ended.recv()).await.expect("the gateway noticed").unwrap();
    assert_eq!(event.reason, "deleted");
    wait_until("the session's pods are gone", Duration::from_secs(30), async || session_pods(&client, &ns.0, "e2e-delete").await == 0).await;
}

#[tokio::test]
async fn ending_the_session_removes_its_pod_and_mcp_session() {
    if !enabled("ending_the_session_removes_its_pod_and_mcp_session") {
        return;
    }
    let (client, ns, config) = setup("end").await;
    let rt = KubernetesRuntime::new(client.clone(), config, Metrics::default());
    rt.start().await.unwrap();
    rt.start_session(start(&ns.0, "e2e-end")).await.unwrap();
    create_session_pod(&client, &ns.0, "e2e-end").await;
    rt.end_session("e2e-end", "closed").await.unwrap();
    wait_until("the session's pods are gone", Duration::from_secs(30), async || session_pods(&client, &ns.0, "e2e-end").await == 0).await;
    let sessions: Api<McpSession> = Api::namespaced(client.clone(), &ns.0);
    wait_until("the McpSession is gone", Duration::from_secs(30), async || sessions.get_opt("e2e-end").await.unwrap().is_none()).await;
}

#[tokio::test]
async fn tool_call_returns_its_result_through_the_pod() {
    if !enabled("tool_call_returns_its_result_through_the_pod") {
        return;
    }
    let (client, ns, config) = setup("call").await;
    let rt = KubernetesRuntime::new(client.clone(), config, Metrics::default());
    rt.start().await.unwrap();
    rt.start_session(start(&ns.0, "e2e-call")).await.unwrap();
    let endpoint = rt.worker("e2e-call", &echo_tool()).await.expect("the worker pod starts and becomes ready");

    // The test runs outside the cluster, so it reaches the pod through a port-forward.
    let mut forward = Command::new("kubectl")
        .args(["port-forward", "-n", &ns.0, &format!("pod/{}", endpoint.pod), "18443:8443"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let body = json!({"callId": "e2e-1", "arguments": {"text": "hello; rm -rf /"}}).to_string();
    let response = raw_post("127.0.0.1:18443", "/v1/call", &endpoint.token, &body).await;
    let _ = forward.kill();
    let _ = forward.wait();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("hello; rm -rf /"), "{response}");

    rt.end_session("e2e-call", "closed").await.unwrap();
    wait_until("the worker pod is gone", Duration::from_secs(30), async || session_pods(&client, &ns.0, "e2e-call").await == 0).await;
}

/// A minimal HTTP/1.1 POST, so the test needs no HTTP client crate.
async fn raw_post(addr: &str, path: &str, token: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("port-forward is listening");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: worker\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}
