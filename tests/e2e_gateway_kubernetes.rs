//! End-to-end through the real gateway against a cluster (runs only with `KUBECONFIG` set; needs
//! `kubectl`): `toolwarden gateway --runtime kubernetes` runs on this machine, an MCP client opens a
//! session, and we watch what an operator would see with kubectl: the McpSession and its printer
//! columns, the worker pod and its spec, a cancelled call stopped inside its pod, and both gone when the
//! session ends or is deleted; and a service account authenticating with a projected token through
//! TokenReview.
//!
//! Set `TOOLWARDEN_E2E_WORKER_IMAGE` (an image holding `/toolwarden-worker`) where the cluster can run
//! pods: the tool call must then return its output through the pod. Without it, the worker image cannot
//! be pulled, and the call must fail with a specific error and leave no pod behind.

mod gateway_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_support::{Client, code, text};
use rmcp::model::{CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest, Implementation};
use rmcp::service::PeerRequestOptions;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use toolwarden_core::config::{CONFIG_MAP_KEY, CONFIG_MAP_LABEL, CONFIG_MAP_NAME};

const TOKEN: &str = "e2e-gateway-token-0123456789abcdef";
/// The audience of the service-account tokens the gateway accepts (`--token-review-audience`).
const AUDIENCE: &str = "toolwarden-e2e";

fn kubectl(args: &[&str]) -> (bool, String) {
    match Command::new("kubectl").args(args).output() {
        Ok(out) => (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))),
        Err(e) => (false, format!("kubectl: {e}")),
    }
}

fn kubectl_stdin(args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("kubectl").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kubectl runs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn json_of(args: &[&str]) -> Value {
    let (ok, out) = kubectl(args);
    assert!(ok, "kubectl {args:?}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?} printed no JSON ({e}): {out}"))
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Polls (bounded) until `check` returns something.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Cleanup {
    namespace: String,
    gateway: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut gateway) = self.gateway.take() {
            let _ = gateway.kill();
            let _ = gateway.wait();
        }
        let _ = kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]);
    }
}

const MANIFESTS: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-echo}
spec:
  description: Returns its text (an echo).
  effect: read
  inputSchema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
  runtime:
    exec: {image: "busybox:1.36", command: [echo], args: ["{{text}}"]}
  outputTrust: trusted
  limits: {timeout: 10s}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: e2e-may-echo}
spec:
  subjects: {users: [e2e-user], serviceAccounts: [NAMESPACE/e2e-agent]}
  tools: {names: [get-echo]}
  decision: allow
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: check-after}
spec:
  description: Waits the given number of seconds, with a second wait in the background.
  effect: read
  inputSchema: {type: object, properties: {secs: {type: integer}}, required: [secs], additionalProperties: false}
  runtime:
    exec: {image: "busybox:1.36", command: [/bin/sh, -c, 'sleep "$1" & sleep "$1"; echo woke', sh], args: ["{{secs}}"]}
  outputTrust: trusted
  limits: {timeout: 10m}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: e2e-user-may-wait}
spec:
  subjects: {users: [e2e-user]}
  tools: {names: [check-after]}
  decision: allow
"#;

/// The ConfigMap the operator would write for MANIFESTS in `namespace`, compiled by the same core.
fn config_map(namespace: &str) -> String {
    let text = MANIFESTS.replace("NAMESPACE", namespace);
    let manifests = toolwarden_core::manifest::load_str(&text, std::path::Path::new("e2e.yaml")).expect("e2e manifests load");
    let mut tools: Vec<_> = manifests.tools.iter().map(|t| &t.object).collect();
    let policies: Vec<_> = manifests.policies.iter().map(|p| &p.object).collect();
    tools.sort_by_key(|t| t.metadata.name.clone());
    let compiled = toolwarden_core::compiler::compile_namespace(namespace, &tools, &policies);
    assert!(compiled.errors.is_empty(), "e2e manifests compile: {:?}", compiled.errors);
    let config = compiled.config;
    serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP_NAME, "namespace": namespace, "labels": {CONFIG_MAP_LABEL: "gateway"}},
        "data": {CONFIG_MAP_KEY: config.to_json()},
    }))
    .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn connect(url: &str) -> Client {
    connect_as(url, TOKEN).await
}

async fn connect_as(url: &str, token: &str) -> Client {
    let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token));
    let mut info = ClientConfig::new(ClientCapabilities::default(), Implementation::new("e2e-client", "1.0"));
    info.protocol_version = rmcp::model::ProtocolVersion::V_2025_06_18;
    rmcp::ServiceExt::serve(info, transport).await.expect("the MCP client connects through the gateway")
}

fn sessions(namespace: &str) -> Vec<Value> {
    items(&json_of(&["get", "mcpsessions", "-n", namespace, "-o", "json"]))
}

fn worker_pods(namespace: &str) -> Vec<Value> {
    items(&json_of(&["get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=worker", "-o", "json"]))
}

/// Runs everywhere, cluster or not: manifests that do not compile would only fail against a cluster.
#[test]
fn the_e2e_manifests_compile() {
    let config_map: Value = serde_json::from_str(&config_map("tw-e2e-check")).unwrap();
    assert_eq!(config_map["metadata"]["namespace"], "tw-e2e-check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_through_the_gateway_are_mcpsessions_with_worker_pods() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("skipping sessions_through_the_gateway_are_mcpsessions_with_worker_pods: KUBECONFIG is not set");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let worker_image = std::env::var("TOOLWARDEN_E2E_WORKER_IMAGE").ok();
    let suffix = format!("{:08x}", std::process::id() ^ Instant::now().elapsed().subsec_nanos());
    let namespace = format!("tw-e2e-gw-{suffix}");
    let mut cleanup = Cleanup { namespace: namespace.clone(), gateway: None };

    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    let (ok, out) = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
    assert!(ok, "installing the CRDs: {out}");
    let (ok, out) = kubectl(&["wait", "--for=condition=Established", "crd/mcpsessions.toolwarden.dev", "--timeout=60s"]);
    assert!(ok, "{out}");
    let namespace_yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
    );
    let (ok, out) = kubectl_stdin(&["apply", "-f", "-"], &namespace_yaml);
    assert!(ok, "creating the namespace: {out}");
    let (ok, out) = kubectl_stdin(&["apply", "-f", "-"], &config_map(&namespace));
    assert!(ok, "writing the gateway config: {out}");

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, format!("tokens:\n  - sha256: {}\n    subject: e2e-user\n    groups: [e2e]\n", sha256_hex(TOKEN.as_bytes()))).unwrap();
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_toolwarden"));
    command
        .args(["gateway", "--runtime", "kubernetes", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--gateway-id", &format!("e2e-{suffix}"), "--namespace", &namespace, "--worker-start-timeout", "90s"])
        .arg("--tokens")
        .arg(&tokens)
        .args(["--token-review-audience", AUDIENCE])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(image) = &worker_image {
        command.args(["--worker-image", image]);
    }
    cleanup.gateway = Some(command.spawn().expect("toolwarden gateway starts"));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status().is_success()) {
        assert!(Instant::now() < deadline, "the gateway did not become ready (config from the ConfigMap) within 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A session is an McpSession that kubectl shows with its printer columns.
    let client = connect(&format!("{base}/mcp/{namespace}")).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    assert_eq!(tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>(), vec!["check_after", "get_echo"]);
    let session = wait_for("the McpSession of the first session", Duration::from_secs(30), || {
        sessions(&namespace).into_iter().find(|s| s["spec"]["subject"] == "e2e-user")
    });
    let session_name = session["metadata"]["name"].as_str().unwrap().to_owned();
    let (ok, table) = kubectl(&["get", "mcpsessions", "-n", &namespace]);
    assert!(ok, "{table}");
    for column in ["SUBJECT", "PHASE", "CALLS", "DENIED", "TAINTED", "AGE"] {
        assert!(table.to_uppercase().contains(column), "`kubectl get mcpsessions` lacks column {column}:\n{table}");
    }
    assert!(table.contains("e2e-user"), "{table}");

    // The first call of the tool starts its worker pod, owned by the session, hardened.
    let call_client = client.clone();
    let call = tokio::spawn(async move {
        let mut params = CallToolRequestParams::new("get_echo");
        params.arguments = json!({"text": "hello from a pod; rm -rf /"}).as_object().cloned();
        call_client.call_tool(params).await
    });
    let pod = wait_for("the worker pod of the first call", Duration::from_secs(30), || {
        worker_pods(&namespace).into_iter().find(|p| p["metadata"]["labels"]["toolwarden.dev/tool"] == "get-echo")
    });
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "McpSession", "{pod}");
    assert_eq!(owner["name"], session_name.as_str(), "{pod}");
    let spec = &pod["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false, "{spec}");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{spec}");
    let container = &spec["containers"][0];
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false, "{container}");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{container}");
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]), "{container}");
    let env = container["env"].as_array().cloned().unwrap_or_default();
    assert!(!env.iter().any(|e| e.to_string().contains(TOKEN)), "the pod must carry only the token's hash");

    let result = call.await.unwrap().expect("tools/call answers");
    if worker_image.is_some() {
        assert_eq!(result.is_error, Some(false), "{}", text(&result));
        assert!(text(&result).contains("hello from a pod; rm -rf /"), "{}", text(&result));
    } else {
        // No pullable worker image: a specific error, and no leaked pod.
        assert_eq!(result.is_error, Some(true), "{}", text(&result));
        let reason = code(&result).unwrap_or_default();
        assert!(["image_pull", "start_timeout"].contains(&reason.as_str()), "unexpected error {reason}: {}", text(&result));
        wait_for("the failed worker pod to be deleted", Duration::from_secs(60), || worker_pods(&namespace).is_empty().then_some(()));
    }

    // A cancelled call is stopped inside its pod: the worker kills everything the call started.
    if worker_image.is_some() {
        let mut params = CallToolRequestParams::new("check_after");
        params.arguments = json!({"secs": 317}).as_object().cloned();
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = client.send_cancellable_request(request, PeerRequestOptions::no_options()).await.expect("the call is sent");
        let pod = wait_for("the slow tool's worker pod", Duration::from_secs(120), || {
            worker_pods(&namespace)
                .into_iter()
                .find(|p| p["metadata"]["labels"]["toolwarden.dev/tool"] == "check-after" && p["status"]["phase"] == "Running")
        });
        let pod_name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        let sleeps = || {
            let (_, ps) = kubectl(&["exec", "-n", &namespace, &pod_name, "-c", "worker", "--", "ps"]);
            ps.lines().filter(|l| l.contains("sleep 317")).count()
        };
        wait_for("the call's two sleeps to run in the pod", Duration::from_secs(60), || (sleeps() == 2).then_some(()));
        handle.cancel(Some("e2e: the user pressed Esc".into())).await.expect("the client cancels");
        wait_for("the cancelled call's processes to stop", Duration::from_secs(30), || (sleeps() == 0).then_some(()));
        let cancelled = format!(r#"toolwarden_tool_calls_total{{namespace="{namespace}",tool="check_after",decision="allow",status="cancelled"}} 1"#);
        let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains(&cancelled), "{cancelled} missing from:\n{metrics}");
    }

    // `kubectl delete mcpsession` ends the session: its pods go, and the client's session is gone.
    let (ok, out) = kubectl(&["delete", "mcpsession", "-n", &namespace, &session_name, "--wait=false"]);
    assert!(ok, "{out}");
    wait_for("the deleted session's pods to go", Duration::from_secs(60), || worker_pods(&namespace).is_empty().then_some(()));
    wait_for("the McpSession to go", Duration::from_secs(60), || {
        (!sessions(&namespace).iter().any(|s| s["metadata"]["name"] == session_name.as_str())).then_some(())
    });
    let mut params = CallToolRequestParams::new("get_echo");
    params.arguments = json!({"text": "again"}).as_object().cloned();
    let after = client.call_tool(params).await;
    assert!(
        after.is_err() || after.as_ref().is_ok_and(|r| r.is_error == Some(true)),
        "a deleted session must not run calls: {after:?}"
    );
    drop(client);

    // Ending a session from the client (DELETE) removes its McpSession too.
    let second = connect(&format!("{base}/mcp/{namespace}")).await;
    let second_name = wait_for("the second McpSession", Duration::from_secs(30), || {
        sessions(&namespace).into_iter().find(|s| s["metadata"]["name"] != session_name.as_str()).map(|s| s["metadata"]["name"].as_str().unwrap().to_owned())
    });
    second.cancel().await.expect("the client closes its session");
    wait_for("the closed session's McpSession to go", Duration::from_secs(60), || {
        (!sessions(&namespace).iter().any(|s| s["metadata"]["name"] == second_name.as_str())).then_some(())
    });
    assert!(worker_pods(&namespace).is_empty(), "no worker pod may outlive its session");

    // A service account authenticates with a token for the gateway's audience (TokenReview); its
    // subject is what policies name in `serviceAccounts`. A token for another audience is refused.
    let (ok, out) = kubectl(&["create", "serviceaccount", "e2e-agent", "-n", &namespace]);
    assert!(ok, "{out}");
    let token_for = |audience: &str| {
        let (ok, token) = kubectl(&["create", "token", "e2e-agent", "-n", &namespace, "--audience", audience, "--duration", "10m"]);
        assert!(ok, "kubectl create token: {token}");
        token.trim().to_owned()
    };
    let agent = connect_as(&format!("{base}/mcp/{namespace}"), &token_for(AUDIENCE)).await;
    let tools = agent.list_all_tools().await.expect("tools/list as the service account");
    assert_eq!(tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>(), vec!["get_echo"]);
    let subject = format!("system:serviceaccount:{namespace}:e2e-agent");
    wait_for("the service account's McpSession", Duration::from_secs(30), || {
        sessions(&namespace).into_iter().find(|s| s["spec"]["subject"] == subject.as_str())
    });
    agent.cancel().await.expect("the service account's client closes its session");
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}});
    let refused = http
        .post(format!("{base}/mcp/{namespace}"))
        .bearer_auth(token_for("some-other-service"))
        .header("Accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "a token minted for another audience is refused");
}
