//! e2e through the real gateway on a real cluster (scripts/e2e.sh): `toolwarden gateway --runtime
//! kubernetes` runs on this machine with the images the project ships, an MCP client opens sessions, and
//! we check what an operator sees with kubectl and what the sandbox really is, read from inside the pod:
//! the McpSession and its printer columns, a hardened worker pod that returns the call's output, a
//! cancelled call stopped inside the pod, `kubectl delete mcpsession` ending the session, a warm pool's
//! pod bound to a session, TokenReview, and worker starts that fail for a reason the caller is told.

mod e2e_support;
mod gateway_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_support::{TestNamespace, enabled, image, install_crds, items, json_of, kubectl, kubectl_ok, kubectl_stdin, tool_image, wait_for};
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

const MANIFESTS: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-echo}
spec:
  description: Returns its text (an echo).
  effect: read
  inputSchema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
  runtime:
    exec: {image: "TOOL_IMAGE", command: [echo], args: ["{{text}}"]}
  outputTrust: trusted
  limits: {timeout: 10s, tmpSize: 8Mi}
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: check-after}
spec:
  description: Waits the given number of seconds, with a second wait in the background.
  effect: read
  inputSchema: {type: object, properties: {secs: {type: integer}}, required: [secs], additionalProperties: false}
  runtime:
    exec: {image: "TOOL_IMAGE", command: [/bin/sh, -c, 'sleep "$1" & sleep "$1"; echo woke', sh], args: ["{{secs}}"]}
  outputTrust: trusted
  limits: {timeout: 10m}
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-warm-echo}
spec:
  description: Returns its text, from a warm pool.
  effect: read
  inputSchema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
  runtime:
    exec: {image: "TOOL_IMAGE", command: [echo], args: ["{{text}}"]}
  outputTrust: trusted
  sandbox: {warmPool: 1}
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-missing-image}
spec:
  description: Runs in an image no node has and no registry serves.
  effect: read
  inputSchema: {type: object}
  runtime:
    exec: {image: "toolwarden.invalid/no-such-image:1", command: [/bin/true]}
  outputTrust: trusted
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: e2e-user-may-call}
spec:
  subjects: {users: [e2e-user]}
  tools: {names: ["*"]}
  decision: allow
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: e2e-agent-may-echo}
spec:
  subjects: {serviceAccounts: [NAMESPACE/e2e-agent]}
  tools: {names: [get-echo]}
  decision: allow
"#;

/// The ConfigMap the operator would write for MANIFESTS in `namespace`, compiled by the same core.
fn config_map(namespace: &str, tool_image: &str) -> String {
    let text = MANIFESTS.replace("NAMESPACE", namespace).replace("TOOL_IMAGE", tool_image);
    let manifests = toolwarden_core::manifest::load_str(&text, std::path::Path::new("e2e.yaml")).expect("e2e manifests load");
    let mut tools: Vec<_> = manifests.tools.iter().map(|t| &t.object).collect();
    let policies: Vec<_> = manifests.policies.iter().map(|p| &p.object).collect();
    tools.sort_by_key(|t| t.metadata.name.clone());
    let compiled = toolwarden_core::compiler::compile_namespace(namespace, &tools, &policies);
    assert!(compiled.errors.is_empty(), "e2e manifests compile: {:?}", compiled.errors);
    serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP_NAME, "namespace": namespace, "labels": {CONFIG_MAP_LABEL: "gateway"}},
        "data": {CONFIG_MAP_KEY: compiled.config.to_json()},
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

/// A namespace with the e2e tools, and `toolwarden gateway --runtime kubernetes` serving it; the
/// gateway is killed and the namespace deleted on drop.
struct Setup {
    ns: TestNamespace,
    gateway: Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
    }
}

impl Setup {
    async fn start(prefix: &str) -> Setup {
        let _ = rustls::crypto::ring::default_provider().install_default();
        install_crds();
        let ns = TestNamespace::create(prefix);
        let (ok, out) = kubectl_stdin(&["apply", "-f", "-"], &config_map(&ns.0, &tool_image()));
        assert!(ok, "writing the gateway config: {out}");
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(&tokens, format!("tokens:\n  - sha256: {}\n    subject: e2e-user\n    groups: [e2e]\n", sha256_hex(TOKEN.as_bytes()))).unwrap();
        let port = free_port();
        let gateway = Command::new(env!("CARGO_BIN_EXE_toolwarden"))
            .args(["gateway", "--runtime", "kubernetes", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--gateway-id", &ns.0, "--namespace", &ns.0, "--worker-start-timeout", "90s"])
            .args(["--worker-image", &image("TOOLWARDEN_E2E_WORKER_IMAGE")])
            .arg("--tokens")
            .arg(&tokens)
            .args(["--token-review-audience", AUDIENCE])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("toolwarden gateway starts");
        let setup = Setup { ns, gateway, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(setup.http.get(format!("{}/readyz", setup.base)).send().await, Ok(r) if r.status().is_success()) {
            assert!(Instant::now() < deadline, "the gateway did not become ready (config from the ConfigMap) within 60 s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        setup
    }

    fn url(&self) -> String {
        format!("{}/mcp/{}", self.base, self.ns.0)
    }

    /// An rmcp client that does not silently open a new session when its own is gone, so a test sees
    /// what the gateway answered.
    async fn connect_as(&self, token: &str) -> Client {
        let config = StreamableHttpClientTransportConfig::with_uri(self.url()).auth_header(token).reinit_on_expired_session(false);
        let transport = StreamableHttpClientTransport::from_config(config);
        let mut info = ClientConfig::new(ClientCapabilities::default(), Implementation::new("e2e-client", "1.0"));
        info.protocol_version = rmcp::model::ProtocolVersion::V_2025_06_18;
        rmcp::ServiceExt::serve(info, transport).await.expect("the MCP client connects through the gateway")
    }

    async fn connect(&self) -> Client {
        self.connect_as(TOKEN).await
    }

    fn sessions(&self) -> Vec<Value> {
        items(&json_of(&["get", "mcpsessions", "-n", &self.ns.0, "-o", "json"]))
    }

    /// Worker pods bound to a session (warm-pool pods waiting for one are not).
    fn worker_pods(&self) -> Vec<Value> {
        items(&json_of(&["get", "pods", "-n", &self.ns.0, "-l", "app.kubernetes.io/component=worker,toolwarden.dev/session", "-o", "json"]))
    }

    fn warm_pods(&self) -> Vec<Value> {
        items(&json_of(&["get", "pods", "-n", &self.ns.0, "-l", "app.kubernetes.io/component=worker,toolwarden.dev/pool=unbound", "-o", "json"]))
    }

    fn running_pod_of(&self, tool: &str) -> Option<String> {
        self.worker_pods()
            .into_iter()
            .find(|p| p["metadata"]["labels"]["toolwarden.dev/tool"] == tool && p["status"]["phase"] == "Running")
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
    }

    async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }

    /// `tools/initialize` over raw HTTP: the status, and the session id the gateway gave.
    async fn raw_post(&self, token: &str, session: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.http.post(self.url()).bearer_auth(token).header("Accept", "application/json, text/event-stream").json(body);
        if let Some(session) = session {
            request = request.header("Mcp-Session-Id", session).header("Mcp-Protocol-Version", "2025-06-18");
        }
        request.send().await.unwrap()
    }
}

async fn call(client: &Client, tool: &str, args: Value) -> rmcp::model::CallToolResult {
    let mut params = CallToolRequestParams::new(tool.to_owned());
    params.arguments = args.as_object().cloned();
    client.call_tool(params).await.unwrap_or_else(|e| panic!("tools/call {tool}: {e}"))
}

fn exec_in(ns: &str, pod: &str, script: &str) -> String {
    kubectl_ok(&["exec", "-n", ns, pod, "-c", "worker", "--", "/bin/sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_its_calls_in_a_hardened_worker_pod_until_kubectl_deletes_it() {
    if !enabled("a_session_runs_its_calls_in_a_hardened_worker_pod_until_kubectl_deletes_it") {
        return;
    }
    let setup = Setup::start("tw-e2e-gw").await;
    let ns = setup.ns.0.clone();

    // A session is an McpSession that kubectl shows with its printer columns.
    let client = setup.connect().await;
    let tools = client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["check_after", "get_echo", "get_missing_image", "get_warm_echo"]);
    let session = wait_for("the McpSession of the first session", Duration::from_secs(30), || {
        setup.sessions().into_iter().find(|s| s["spec"]["subject"] == "e2e-user")
    });
    let session_name = session["metadata"]["name"].as_str().unwrap().to_owned();
    let table = wait_for("the session's status (phase Active)", Duration::from_secs(30), || {
        let table = kubectl_ok(&["get", "mcpsessions", "-n", &ns]);
        table.contains("Active").then_some(table)
    });
    for column in ["SUBJECT", "CLIENT", "PHASE", "CALLS", "DENIED", "PENDING", "TAINTED", "AGE"] {
        assert!(table.contains(column), "`kubectl get mcpsessions` lacks column {column}:\n{table}");
    }
    assert!(table.contains("e2e-user") && table.contains("e2e-client") && table.contains("Active"), "{table}");

    // The first call starts the session's worker pod, which Pod Security `restricted` admitted, and the
    // output comes back through it.
    let result = call(&client, "get_echo", json!({"text": "hello from a pod; rm -rf /"})).await;
    assert_eq!(result.is_error, Some(false), "{}", text(&result));
    assert!(text(&result).contains("hello from a pod; rm -rf /"), "{}", text(&result));
    let pods = setup.worker_pods();
    let pod = pods.iter().find(|p| p["metadata"]["labels"]["toolwarden.dev/tool"] == "get-echo").expect("the get-echo worker pod");
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "McpSession", "{pod}");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["name"], session_name.as_str(), "{pod}");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false, "{pod}");
    assert_eq!(pod["spec"]["enableServiceLinks"], false, "{pod}");
    let env = pod["spec"]["containers"][0]["env"].to_string();
    assert!(!env.contains(TOKEN), "the pod must carry only the token's hash");

    // What the sandbox is, read from inside it.
    let inside = exec_in(&ns, &pod_name, "id -u; id -g; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status; grep -E ' (/|/tmp) ' /proc/mounts; touch /rootfs-write 2>&1; echo; dd if=/dev/zero of=/tmp/fill bs=1M count=16 2>&1; rm -f /tmp/fill; ls /var/run/secrets 2>&1; true");
    let lines: Vec<&str> = inside.lines().collect();
    assert_eq!(&lines[..2], ["65532", "65532"], "uid and gid inside the pod:\n{inside}");
    for (field, value) in [("CapEff", "0000000000000000"), ("CapPrm", "0000000000000000"), ("CapBnd", "0000000000000000"), ("NoNewPrivs", "1"), ("Seccomp", "2")] {
        assert!(lines.iter().any(|l| l.starts_with(&format!("{field}:")) && l.ends_with(value)), "{field} is not {value} inside the pod:\n{inside}");
    }
    let root = lines.iter().find(|l| l.split_whitespace().nth(1) == Some("/")).unwrap_or_else(|| panic!("no / mount:\n{inside}"));
    assert!(root.split_whitespace().nth(3).unwrap().split(',').any(|o| o == "ro"), "the root filesystem is not read-only: {root}");
    let tmp = lines.iter().find(|l| l.split_whitespace().nth(1) == Some("/tmp")).unwrap_or_else(|| panic!("no /tmp mount:\n{inside}"));
    assert!(tmp.starts_with("tmpfs ") && tmp.contains("size=8192k"), "/tmp is not an 8 MiB tmpfs: {tmp}");
    assert!(inside.contains("Read-only file system"), "writing to / must fail:\n{inside}");
    assert!(inside.contains("No space left on device"), "writing 16 MiB to an 8 MiB /tmp must fail:\n{inside}");
    assert!(inside.contains("No such file or directory"), "no service-account token may be mounted:\n{inside}");

    // A cancelled call is stopped inside its pod: the worker kills everything the call started.
    let mut params = CallToolRequestParams::new("check_after");
    params.arguments = json!({"secs": 317}).as_object().cloned();
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
    let handle = client.send_cancellable_request(request, PeerRequestOptions::no_options()).await.expect("the call is sent");
    let slow_pod = wait_for("the slow tool's worker pod", Duration::from_secs(120), || setup.running_pod_of("check-after"));
    let sleeps = || exec_in(&ns, &slow_pod, "ps").lines().filter(|l| l.contains("sleep 317")).count();
    wait_for("the call's two sleeps to run in the pod", Duration::from_secs(60), || (sleeps() == 2).then_some(()));
    handle.cancel(Some("e2e: the user pressed Esc".into())).await.expect("the client cancels");
    wait_for("the cancelled call's processes to stop", Duration::from_secs(30), || (sleeps() == 0).then_some(()));
    let cancelled = format!(r#"toolwarden_tool_calls_total{{namespace="{ns}",tool="check_after",decision="allow",status="cancelled"}} 1"#);
    let metrics = setup.metrics().await;
    assert!(metrics.contains(&cancelled), "{cancelled} missing from:\n{metrics}");

    // `kubectl delete mcpsession` ends the session: its pods go, and its id is unknown from then on.
    let session_id = session["metadata"]["annotations"]["toolwarden.dev/session-id"].as_str().map(str::to_owned);
    kubectl_ok(&["delete", "mcpsession", "-n", &ns, &session_name, "--wait=false"]);
    wait_for("the deleted session's pods to go", Duration::from_secs(60), || setup.worker_pods().is_empty().then_some(()));
    wait_for("the McpSession to go", Duration::from_secs(60), || {
        (!setup.sessions().iter().any(|s| s["metadata"]["name"] == session_name.as_str())).then_some(())
    });
    let mut params = CallToolRequestParams::new("get_echo");
    params.arguments = json!({"text": "again"}).as_object().cloned();
    let after = client.call_tool(params).await;
    assert!(after.is_err(), "a deleted session must not run calls: {after:?}");
    if let Some(id) = session_id {
        let ping = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"});
        assert_eq!(setup.raw_post(TOKEN, Some(&id), &ping).await.status(), 404, "the deleted session's id must be unknown");
    }
    assert!(setup.sessions().is_empty(), "no session may be started in its place: {:?}", setup.sessions());
    drop(client);

    // Ending a session from the client (DELETE) removes its McpSession too.
    let second = setup.connect().await;
    let second_name = wait_for("the second McpSession", Duration::from_secs(30), || {
        setup.sessions().first().map(|s| s["metadata"]["name"].as_str().unwrap().to_owned())
    });
    call(&second, "get_echo", json!({"text": "second"})).await;
    second.cancel().await.expect("the client closes its session");
    wait_for("the closed session's McpSession to go", Duration::from_secs(60), || {
        (!setup.sessions().iter().any(|s| s["metadata"]["name"] == second_name.as_str())).then_some(())
    });
    wait_for("the closed session's pods to go", Duration::from_secs(60), || setup.worker_pods().is_empty().then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_authenticates_through_token_review() {
    if !enabled("a_service_account_authenticates_through_token_review") {
        return;
    }
    let setup = Setup::start("tw-e2e-tokenreview").await;
    let ns = setup.ns.0.clone();
    kubectl_ok(&["create", "serviceaccount", "e2e-agent", "-n", &ns]);
    let token_for = |audience: &str| kubectl_ok(&["create", "token", "e2e-agent", "-n", &ns, "--audience", audience, "--duration", "10m"]).trim().to_owned();
    // Its subject is what policies name in `serviceAccounts`: it sees only get_echo.
    let agent = setup.connect_as(&token_for(AUDIENCE)).await;
    let tools = agent.list_all_tools().await.expect("tools/list as the service account");
    assert_eq!(tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>(), vec!["get_echo"]);
    let subject = format!("system:serviceaccount:{ns}:e2e-agent");
    wait_for("the service account's McpSession", Duration::from_secs(30), || {
        setup.sessions().into_iter().find(|s| s["spec"]["subject"] == subject.as_str())
    });
    agent.cancel().await.expect("the service account's client closes its session");
    // A token for another audience, and a deleted service account's token, are refused.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}});
    assert_eq!(setup.raw_post(&token_for("some-other-service"), None, &initialize).await.status(), 401, "a token for another audience");
    let valid = token_for(AUDIENCE);
    kubectl_ok(&["delete", "serviceaccount", "e2e-agent", "-n", &ns]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.raw_post(&valid, None, &initialize).await.status() != 401 {
        assert!(Instant::now() < deadline, "a deleted service account's token was still accepted after 30 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_pod_is_bound_to_the_session_that_calls_first() {
    if !enabled("a_warm_pool_pod_is_bound_to_the_session_that_calls_first") {
        return;
    }
    let setup = Setup::start("tw-e2e-warm").await;
    let warm = wait_for("a ready warm pod for get-warm-echo", Duration::from_secs(120), || {
        setup
            .warm_pods()
            .into_iter()
            .find(|p| {
                p["metadata"]["labels"]["toolwarden.dev/tool"] == "get-warm-echo"
                    && e2e_support::is_ready(p)
            })
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
    });
    let client = setup.connect().await;
    let result = call(&client, "get_warm_echo", json!({"text": "from the pool"})).await;
    assert_eq!(result.is_error, Some(false), "{}", text(&result));
    assert!(text(&result).contains("from the pool"), "{}", text(&result));
    let bound = json_of(&["get", "pod", "-n", &setup.ns.0, &warm, "-o", "json"]);
    let session = setup.sessions().into_iter().next().expect("the session's McpSession");
    assert_eq!(bound["metadata"]["ownerReferences"][0]["name"], session["metadata"]["name"], "the warm pod now belongs to the session: {bound}");
    assert_ne!(bound["metadata"]["labels"]["toolwarden.dev/pool"], "unbound", "{bound}");
    let metrics = setup.metrics().await;
    assert!(metrics.lines().any(|l| l.starts_with("toolwarden_warm_pool_hits_total") && l.ends_with(" 1")), "a warm-pool hit is counted:\n{metrics}");
    // The pool is topped up for the next session.
    wait_for("a new warm pod", Duration::from_secs(120), || {
        setup.warm_pods().into_iter().find(|p| p["metadata"]["name"] != warm.as_str())
    });
    client.cancel().await.expect("the client closes its session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_start_failures_say_why_and_leave_no_pod() {
    if !enabled("worker_start_failures_say_why_and_leave_no_pod") {
        return;
    }
    let setup = Setup::start("tw-e2e-startfail").await;
    let client = setup.connect().await;
    // An image no node has and no registry serves.
    let result = call(&client, "get_missing_image", json!({})).await;
    assert_eq!(result.is_error, Some(true), "{}", text(&result));
    assert_eq!(code(&result).as_deref(), Some("image_pull"), "{}", text(&result));
    assert!(text(&result).contains("toolwarden.invalid/no-such-image:1"), "the refusal names the image: {}", text(&result));
    wait_for("the failed worker pod to be deleted", Duration::from_secs(60), || setup.worker_pods().is_empty().then_some(()));

    // A ResourceQuota that allows no more pods: the API server refuses the pod (403), the caller is
    // told it is a quota, and may retry later.
    kubectl_ok(&["create", "quota", "no-pods", "-n", &setup.ns.0, "--hard=pods=0"]);
    wait_for("the quota to be counted", Duration::from_secs(30), || {
        let quota = json_of(&["get", "quota", "no-pods", "-n", &setup.ns.0, "-o", "json"]);
        quota["status"]["hard"]["pods"].is_string().then_some(())
    });
    let result = call(&client, "get_echo", json!({"text": "x"})).await;
    assert_eq!(result.is_error, Some(true), "{}", text(&result));
    assert_eq!(code(&result).as_deref(), Some("quota_exceeded"), "{}", text(&result));
    assert!(text(&result).contains("no-pods"), "the refusal names the quota: {}", text(&result));
    let (_, events) = kubectl(&["get", "events", "-n", &setup.ns.0]);
    assert!(setup.worker_pods().is_empty(), "no pod exists: {events}");
    client.cancel().await.expect("the client closes its session");
}
