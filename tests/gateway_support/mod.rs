//! Shared helpers of the gateway tests: start the real `toolwarden dev` on a temp copy of `examples/`,
//! connect rmcp clients, make raw HTTP requests, read the audit log.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::RoleClient;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, Tool};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

pub const DEV_TOKEN: &str = "test-developer-token-0123456789";
pub const APPROVER_TOKEN: &str = "test-approver-token-0123456789";

pub type Client = RunningService<RoleClient, ClientConfig>;

/// A running `toolwarden dev`, killed on drop. Its `TMPDIR` is `dir`, so the state directory it
/// leaves when killed goes with `dir`.
pub struct Dev {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub audit: PathBuf,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn drain(stream: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line);
        }
    });
}

impl Dev {
    /// `toolwarden dev` over a copy of examples/ with `extra` files (name, YAML) added.
    pub fn start(extra: &[(&str, &str)]) -> Dev {
        Dev::start_with_args(extra, &[])
    }

    /// [`Dev::start`] with more command-line arguments for `toolwarden dev`.
    pub fn start_with_args(extra: &[(&str, &str)], args: &[&str]) -> Dev {
        Dev::start_inner(extra, args, &[], None)
    }

    /// [`Dev::start_with_args`] with environment variables for `toolwarden dev` (`OTEL_*`...).
    pub fn start_with_env(extra: &[(&str, &str)], args: &[&str], env: &[(&str, &str)]) -> Dev {
        Dev::start_inner(extra, args, env, None)
    }

    /// [`Dev::start`] appending its audit lines to `audit` (which may outlive this run).
    pub fn start_logging_to(audit: &Path) -> Dev {
        Dev::start_inner(&[], &[], &[], Some(audit.to_owned()))
    }

    /// [`Dev::start_with_args`] appending its audit lines to `audit`.
    pub fn start_with_args_logging_to(extra: &[(&str, &str)], args: &[&str], audit: &Path) -> Dev {
        Dev::start_inner(extra, args, &[], Some(audit.to_owned()))
    }

    fn start_inner(extra: &[(&str, &str)], args: &[&str], env: &[(&str, &str)], audit: Option<PathBuf>) -> Dev {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"), &manifests);
        for (name, text) in extra {
            std::fs::write(manifests.join(name), text).unwrap();
        }
        let audit = audit.unwrap_or_else(|| dir.path().join("audit.jsonl"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_toolwarden"))
            .args(["dev", "--listen", "127.0.0.1:0", "--manifests"])
            .arg(&manifests)
            .arg("--audit-log")
            .arg(&audit)
            .args(args)
            .env("TOOLWARDEN_DEV_TOKEN", DEV_TOKEN)
            .env("TOOLWARDEN_DEV_APPROVER_TOKEN", APPROVER_TOKEN)
            .env("TMPDIR", dir.path())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("toolwarden dev starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        drain(child.stdout.take().unwrap(), stdout.clone());
        drain(child.stderr.take().unwrap(), stderr.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let found = stdout.lock().unwrap().iter().find_map(|l| l.strip_prefix("listening on http://").map(str::to_owned));
            if let Some(addr) = found {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("toolwarden dev exited with {status}: {:?}", stderr.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "toolwarden dev did not print its address: {:?}", stderr.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        };
        Dev { child, addr, dir, audit, stdout, stderr }
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn mcp_url(&self) -> String {
        self.url("/mcp/default")
    }

    /// A protocol 2025-06-18 client (session via `Mcp-Session-Id`).
    pub async fn client(&self, token: &str) -> Client {
        let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(self.mcp_url()).auth_header(token));
        let mut info = ClientConfig::new(ClientCapabilities::default(), Implementation::new("gateway-test", "1.0"));
        info.protocol_version = rmcp::model::ProtocolVersion::V_2025_06_18;
        rmcp::ServiceExt::serve(info, transport).await.expect("client connects")
    }

    /// The audit lines of calls and approvals so far (the chain's start record left out). Result lines may
    /// wait up to 20 ms to share a write with the next decision line, so this first waits until the file
    /// has stopped growing.
    pub fn audit_lines(&self) -> Vec<Value> {
        let size = || std::fs::metadata(&self.audit).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = size();
        loop {
            std::thread::sleep(Duration::from_millis(60));
            let now = size();
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("audit lines are JSON"))
            .filter(|l| l["event"] != "chain_start")
            .collect()
    }

    /// Waits (bounded) until `check` holds, polling.
    pub async fn eventually(&self, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}; stderr: {:?}", self.stderr.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The local runtime's state directory (parent of the workers' directories).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(format!("toolwarden-{}", self.child.id()))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGKILL (no shutdown code runs) and waits for the exit.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        self.child.wait().expect("the killed process is reaped");
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "toolwarden dev did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn names(tools: &[Tool]) -> Vec<String> {
    tools.iter().map(|t| t.name.to_string()).collect()
}

pub async fn call(client: &rmcp::service::Peer<RoleClient>, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(map) = args else { panic!("arguments must be an object") };
    client.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(map)).await.expect("tools/call answers")
}

pub fn text(result: &CallToolResult) -> String {
    result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join("\n")
}

/// The refusal code of a result (`_meta["toolwarden.dev/code"]`).
pub fn code(result: &CallToolResult) -> Option<String> {
    result.meta.as_ref().and_then(|m| m.0.get("toolwarden.dev/code")).and_then(Value::as_str).map(str::to_owned)
}

pub fn refused(result: &CallToolResult, expected_code: &str) -> String {
    assert_eq!(result.is_error, Some(true), "expected a refusal, got {result:?}");
    assert_eq!(code(result).as_deref(), Some(expected_code), "wrong code in {result:?}");
    text(result)
}

pub fn ok(result: &CallToolResult) -> String {
    assert_ne!(result.is_error, Some(true), "expected success, got {result:?}");
    text(result)
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

/// A raw JSON-RPC POST to `/mcp/default` with the headers MCP requires, on a new connection.
pub fn mcp_post(dev: &Dev, token: Option<&str>) -> reqwest::RequestBuilder {
    mcp_post_via(&http(), dev, token)
}

/// [`mcp_post`] through `client`, which keeps its connections open between requests.
pub fn mcp_post_via(client: &reqwest::Client, dev: &Dev, token: Option<&str>) -> reqwest::RequestBuilder {
    let mut req = client
        .post(dev.mcp_url())
        .header("Accept", "application/json, text/event-stream")
        .header("Content-Type", "application/json");
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req
}

/// [`mcp_post`] inside an initialized session (protocol 2025-06-18, as [`initialize_body`] asks).
pub fn mcp_post_in_session(dev: &Dev, token: Option<&str>, session: &str) -> reqwest::RequestBuilder {
    in_session(mcp_post(dev, token), session)
}

/// Adds the headers of an initialized session (protocol 2025-06-18, as [`initialize_body`] asks).
pub fn in_session(request: reqwest::RequestBuilder, session: &str) -> reqwest::RequestBuilder {
    request.header("Mcp-Session-Id", session).header("MCP-Protocol-Version", "2025-06-18")
}

/// Initializes a session over raw HTTP (protocol 2025-06-18) and returns its `Mcp-Session-Id`.
pub async fn open_session(dev: &Dev, token: &str) -> String {
    open_session_via(&http(), dev, token).await
}

/// [`open_session`] through `client`.
pub async fn open_session_via(client: &reqwest::Client, dev: &Dev, token: &str) -> String {
    let response = mcp_post_via(client, dev, Some(token)).json(&initialize_body()).send().await.unwrap();
    assert_eq!(response.status(), 200, "initialize");
    let id = response.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(response.text().await);
    id
}

pub fn initialize_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
}

#[path = "../../worker/tests/support/procs.rs"]
mod procs;
#[allow(unused_imports)] // not every test binary looks for processes
pub use procs::live_processes_with;
