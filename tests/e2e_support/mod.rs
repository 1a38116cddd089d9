//! Shared helpers of the e2e tests against a real cluster (tests/e2e_*.rs): kubectl and helm from
//! `.tools/bin` (scripts/install-tools.sh), namespaces that clean up after themselves, bounded polling,
//! and the images scripts/e2e.sh loads into the cluster's node.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// True when the e2e tests should run. Without `KUBECONFIG` they skip, unless `TOOLWARDEN_E2E_REQUIRED`
/// is set (scripts/e2e.sh sets it), which makes a missing cluster a failure instead.
pub fn enabled(test: &str) -> bool {
    if std::env::var_os("KUBECONFIG").is_some() {
        return true;
    }
    assert!(
        std::env::var_os("TOOLWARDEN_E2E_REQUIRED").is_none(),
        "{test}: TOOLWARDEN_E2E_REQUIRED is set but KUBECONFIG is not: the e2e tier must run against a cluster"
    );
    eprintln!("skipping {test}: KUBECONFIG is not set (scripts/e2e.sh brings up a cluster and runs the e2e tier)");
    false
}

/// An image the cluster's node has, from the variable scripts/e2e.sh sets.
pub fn image(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| panic!("{variable} is not set: run the e2e tier with scripts/e2e.sh"))
}

/// The busybox tool image every e2e tool runs in.
pub fn tool_image() -> String {
    image("TOOLWARDEN_E2E_TOOL_IMAGE")
}

pub fn tool(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin").join(name);
    if local.exists() { local } else { PathBuf::from(name) }
}

/// Runs a program; `(succeeded, stdout + stderr)`.
pub fn run(program: &str, args: &[&str]) -> (bool, String) {
    run_with_input(program, args, None)
}

pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> (bool, String) {
    let mut child = Command::new(tool(program))
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/install-tools.sh installs it): {e}"));
    if let Some(input) = input {
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("writing to stdin");
    }
    let out = child.wait_with_output().expect("waiting for the child");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

pub fn kubectl(args: &[&str]) -> (bool, String) {
    run("kubectl", args)
}

pub fn kubectl_stdin(args: &[&str], input: &str) -> (bool, String) {
    run_with_input("kubectl", args, Some(input))
}

/// kubectl that must succeed; its output.
pub fn kubectl_ok(args: &[&str]) -> String {
    let (ok, out) = kubectl(args);
    assert!(ok, "`kubectl {}` failed:\n{out}", args.join(" "));
    out
}

pub fn json_of(args: &[&str]) -> Value {
    let out = kubectl_ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?} printed no JSON ({e}): {out}"))
}

pub fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Whether an object's status has the condition `Ready` at `True` (a pod, an McpTool).
pub fn is_ready(object: &Value) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Polls (bounded) until `check` returns something.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A short random-enough suffix for names of one test run.
pub fn suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").subsec_nanos();
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// A namespace for one test, enforcing Pod Security `restricted`; deleted when dropped, pass or fail.
pub struct TestNamespace(pub String);

impl TestNamespace {
    pub fn create(prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{}", suffix());
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
        );
        let (ok, out) = kubectl_stdin(&["apply", "-f", "-"], &yaml);
        assert!(ok, "creating namespace {name}: {out}");
        TestNamespace(name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false", "--ignore-not-found"]);
    }
}

/// Installs (or updates) the CRDs from crds/ and waits until the API server serves them.
pub fn install_crds() {
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
    kubectl_ok(&[
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/mcptools.toolwarden.dev", "crd/toolpolicies.toolwarden.dev", "crd/mcpsessions.toolwarden.dev",
    ]);
}

pub fn helm(args: &[&str]) -> String {
    let (ok, out) = run("helm", args);
    assert!(ok, "`helm {}` failed:\n{out}", args.join(" "));
    out
}

/// The agent's bearer token of chart installs; the chart's Secret holds only its SHA-256.
pub const AGENT_TOKEN: &str = "test";
const AGENT_TOKEN_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// An approver's bearer token of chart installs (subject `e2e-approver`, group `approvers`).
pub const APPROVER_TOKEN: &str = "e2e-approver";
const APPROVER_TOKEN_SHA256: &str = "74553378f44bc8bddcb1ed0c24e42fb2172211d30f32f681749c13a1cd437691";

/// `helm install` of charts/toolwarden with its default images (the ones scripts/e2e.sh loads) into a
/// fresh namespace enforcing Pod Security `restricted`; uninstalled when dropped unless `installed` was
/// cleared.
pub struct HelmRelease {
    pub name: String,
    pub fullname: String,
    pub namespace: TestNamespace,
    pub chart: String,
    pub installed: bool,
}

impl HelmRelease {
    /// Installs with the agent token `AGENT_TOKEN` (subject `e2e`, group `developers`), the approver
    /// token `APPROVER_TOKEN` (subject `e2e-approver`) and `sets`, and
    /// waits until every Deployment is available.
    pub fn install(sets: &[&str]) -> HelmRelease {
        install_crds();
        let name = format!("tw-{}", suffix());
        let namespace = TestNamespace::create("tw-e2e-helm");
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/toolwarden").display().to_string();
        let tokens = format!(
            "tokens:\n  - sha256: {AGENT_TOKEN_SHA256}\n    subject: e2e\n    groups: [developers]\n  - sha256: {APPROVER_TOKEN_SHA256}\n    subject: e2e-approver\n    groups: [approvers]\n"
        );
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gateway-tokens"}, "stringData": {"tokens.yaml": tokens}});
        let (ok, out) = kubectl_stdin(&["apply", "-n", &namespace.0, "-f", "-"], &secret.to_string());
        assert!(ok, "the gateway tokens Secret: {out}");
        let mut args = vec!["install", &name, &chart, "--namespace", &namespace.0, "--set", "gateway.auth.tokensSecret=gateway-tokens"];
        for set in sets {
            args.extend(["--set", set]);
        }
        args.extend(["--wait", "--timeout", "5m"]);
        helm(&args);
        let fullname = format!("{name}-toolwarden");
        let release = HelmRelease { name, fullname, namespace, chart, installed: true };
        for component in ["gateway", "operator"] {
            kubectl_ok(&["wait", "-n", &release.namespace.0, "--for", "condition=available", "--timeout=120s", &format!("deployment/{}-{component}", release.fullname)]);
        }
        release
    }

    /// The gateway Service's MCP URL for `tenant` (this machine routes to Service addresses).
    pub fn mcp_url(&self, tenant: &str) -> String {
        let ip = kubectl_ok(&["get", "service", &format!("{}-gateway", self.fullname), "-n", &self.namespace.0, "-o", "jsonpath={.spec.clusterIP}"]);
        format!("http://{ip}:8080/mcp/{tenant}")
    }
}

impl Drop for HelmRelease {
    fn drop(&mut self) {
        if self.installed {
            let _ = run("helm", &["uninstall", &self.name, "--namespace", &self.namespace.0, "--wait", "--timeout", "3m"]);
        }
    }
}

/// A raw MCP request (protocol 2025-06-18) with the agent token, in `session` when given. Connections
/// give up after 500 ms: one to a lost pod's address otherwise waits for the ARP timeout.
pub fn mcp_request(url: &str, session: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
    let client = reqwest::Client::builder().connect_timeout(Duration::from_millis(500)).build().expect("an HTTP client");
    let mut request = client
        .post(url)
        .bearer_auth(AGENT_TOKEN)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .timeout(Duration::from_secs(90))
        .json(body);
    if let Some(session) = session {
        request = request.header("Mcp-Session-Id", session);
    }
    request
}

/// Opens a session over raw HTTP once the gateway lists every one of `tools`; returns its id.
pub async fn open_raw_session(url: &str, tools: &[&str]) -> String {
    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}});
    let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let list = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(response) = mcp_request(url, None, &initialize).send().await
            && response.status() == 200
            && let Some(id) = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
        {
            let _ = response.text().await;
            let _ = mcp_request(url, Some(&id), &initialized).send().await;
            let listed = match mcp_request(url, Some(&id), &list).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if tools.iter().all(|tool| listed.contains(tool)) {
                return id;
            }
        }
        assert!(Instant::now() < deadline, "the gateway did not list {tools:?} within 90 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Audit lines of tool calls (JSON with an `event` and a `call_id`) in a gateway's log text.
pub fn audit_lines(log: &str) -> Vec<Value> {
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|l| l["event"].is_string() && l["call_id"].is_string()).collect()
}

/// The `toolwarden.dev/code` of a tool result in an MCP answer's text, if it has one.
pub fn result_code(body: &str) -> Option<String> {
    let marker = r#""toolwarden.dev/code":""#;
    let start = body.find(marker)? + marker.len();
    Some(body[start..].split('"').next()?.to_owned())
}
