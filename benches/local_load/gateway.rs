//! The measured gateway (`toolwarden dev` over the bench manifests, tokens of several subjects) and a
//! bare MCP client for it: one keep-alive HTTP/1.1 connection per session.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Answers slower than this count as failed (the tool's own timeout is 10 s, a worker start 15 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/gateway_overhead_manifests")
}

/// The bearer token of subject number `i`.
pub fn token(i: usize) -> String {
    format!("bench-load-subject-{i:03}-token-0123456789abcdef")
}

/// Audit lines the gateway wrote, by kind.
#[derive(Default)]
pub struct AuditCounts {
    pub decisions: AtomicU64,
    pub results: AtomicU64,
    /// Result lines whose status is not `ok`.
    pub results_not_ok: AtomicU64,
}

pub struct Gateway {
    pub child: Child,
    pub addr: String,
    /// The gateway's `$TMPDIR`: its state directory (`toolwarden-PID`) is made here.
    pub tmp: PathBuf,
    pub audit: Arc<AuditCounts>,
}

impl Gateway {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The local runtime's state directory (per-worker directories live in it).
    pub fn state_dir(&self) -> PathBuf {
        self.tmp.join(format!("toolwarden-{}", self.pid()))
    }

    /// SIGTERM, then waits for the exit (the gateway stops its workers and removes its state dir).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) of the child we started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok();
        None
    }

    /// Sum of every sample of one metric family (all label sets), from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics_text().await, name)
    }

    pub async fn metrics_text(&self) -> String {
        let Ok(mut c) = Connection::open(&self.addr).await else { return String::new() };
        c.get("/metrics").await.unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts `toolwarden dev` with `subjects` tokens (all in group `developers`), `threads` serving threads
/// and `extra` arguments; its `$TMPDIR` is `tmp`.
pub fn start(tmp: &Path, subjects: usize, threads: u16, extra: &[&str]) -> Gateway {
    let tokens = tmp.join("tokens.yaml");
    let mut yaml = String::from("tokens:\n");
    for i in 0..subjects {
        let hash: String = Sha256::digest(token(i).as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        yaml.push_str(&format!("  - sha256: {hash}\n    subject: bench-{i:03}\n    groups: [developers]\n"));
    }
    std::fs::write(&tokens, yaml).expect("tokens file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_toolwarden"))
        .args(["dev", "--listen", "127.0.0.1:0", "--worker-threads", &threads.to_string()])
        .arg("--manifests")
        .arg(manifests())
        .arg("--tokens")
        .arg(&tokens)
        .args(extra)
        .env("TMPDIR", tmp)
        .env("TOOLWARDEN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("toolwarden dev starts");
    let stdout = child.stdout.take().expect("stdout");
    let audit = Arc::new(AuditCounts::default());
    let counts = audit.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading: the audit lines go to stdout, and a full pipe would stall the gateway.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.trim().to_owned());
            } else if line.contains(r#""event":"decision""#) {
                counts.decisions.fetch_add(1, Ordering::Relaxed);
            } else if line.contains(r#""event":"result""#) {
                counts.results.fetch_add(1, Ordering::Relaxed);
                if !line.contains(r#""status":"ok""#) {
                    counts.results_not_ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("toolwarden dev prints its address");
    Gateway { child, addr, tmp: tmp.to_owned(), audit }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(addr: &str) -> Result<Connection, String> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Connection { sender })
    }

    async fn send(&mut self, request: http::Request<Full<Bytes>>) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
        let exchange = async {
            self.sender.ready().await.map_err(|e| format!("connection: {e}"))?;
            let response = self.sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok((parts.status, parts.headers, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }

    async fn get(&mut self, path: &str) -> Result<String, String> {
        let request = http::Request::get(path).header("host", "127.0.0.1").body(Full::new(Bytes::new())).unwrap();
        let (_, _, body) = self.send(request).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// An MCP session (protocol 2025-11-25) of one subject, over its own connection.
pub struct Session {
    addr: String,
    token: String,
    pub id: String,
    connection: Option<Connection>,
    next_id: u64,
}

impl Session {
    pub async fn open(addr: &str, token: String) -> Result<Session, String> {
        let mut s = Session { addr: addr.to_owned(), token, id: String::new(), connection: None, next_id: 1 };
        let init = json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "local-load", "version": "1"}});
        let (headers, _) = s.post("initialize", Some(init)).await?;
        s.id = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).ok_or("initialize: no Mcp-Session-Id")?.to_owned();
        s.post("notifications/initialized", None).await?;
        Ok(s)
    }

    /// [`Session::open`] with owned arguments, for a spawned task.
    pub async fn open_at(addr: String, token: String) -> Result<Session, String> {
        Session::open(&addr, token).await
    }

    /// Closes the connection; the session stays open at the gateway (its next request reconnects).
    pub fn disconnect(&mut self) {
        self.connection = None;
    }

    /// Sends `make()`'s request; once more on a new connection when the kept one was closed before the
    /// request went out (the gateway closes keep-alive connections idle for its header timeout).
    async fn exchange(&mut self, make: impl Fn() -> http::Request<Full<Bytes>>) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
        for attempt in 0..2 {
            if self.connection.is_none() {
                self.connection = Some(Connection::open(&self.addr).await?);
            }
            let result = self.connection.as_mut().expect("connected").send(make()).await;
            if result.is_err() {
                self.connection = None;
            }
            match result {
                Err(e) if attempt == 0 && e.starts_with("connection:") => continue,
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// A request (with params) or a notification (`None`); the reply, if any.
    async fn post(&mut self, method: &str, params: Option<Value>) -> Result<(http::HeaderMap, Value), String> {
        let body = match params {
            Some(params) => {
                let id = self.next_id;
                self.next_id += 1;
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
            }
            None => json!({"jsonrpc": "2.0", "method": method}),
        };
        let body = Bytes::from(body.to_string());
        let (token, id) = (self.token.clone(), self.id.clone());
        let (status, headers, bytes) = self.exchange(|| session_request(&token, &id, http::Method::POST).body(Full::new(body.clone())).unwrap()).await?;
        if !status.is_success() {
            return Err(format!("{method}: HTTP {status}: {}", String::from_utf8_lossy(&bytes)));
        }
        Ok((headers, parse_reply(&bytes)))
    }

    /// Calls `show_text` with `text`: Ok(None) when it ran and showed the text back, Ok(Some(code)) when
    /// the answer was a tool result with `isError` (the gateway's code: a refusal or a worker failure),
    /// Err when the request failed.
    pub async fn call(&mut self, text: &str) -> Result<Option<String>, String> {
        let (_, reply) = self.post("tools/call", Some(json!({"name": "show_text", "arguments": {"text": text}}))).await?;
        let result = &reply["result"];
        if result.is_null() {
            return Err(format!("no result: {reply}"));
        }
        if result["isError"] == json!(true) {
            return Ok(Some(result["_meta"]["toolwarden.dev/code"].as_str().unwrap_or("no code").to_owned()));
        }
        if !result.to_string().contains(text) {
            return Err(format!("unexpected result: {reply}"));
        }
        Ok(None)
    }

    /// Ends the session (HTTP DELETE).
    pub async fn end(mut self) -> Result<(), String> {
        let (token, id) = (self.token.clone(), self.id.clone());
        let (status, _, bytes) = self.exchange(|| session_request(&token, &id, http::Method::DELETE).body(Full::new(Bytes::new())).unwrap()).await?;
        if !status.is_success() {
            return Err(format!("DELETE: HTTP {status}: {}", String::from_utf8_lossy(&bytes)));
        }
        Ok(())
    }
}

/// An MCP request of session `id` (none yet when empty), with the headers the gateway wants.
fn session_request(token: &str, id: &str, method: http::Method) -> http::request::Builder {
    let mut request = http::Request::builder()
        .method(method)
        .uri("/mcp/default")
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if !id.is_empty() {
        request = request.header("mcp-session-id", id);
    }
    request
}

/// The JSON-RPC reply in a JSON or SSE body (Null for an empty body).
fn parse_reply(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or(Value::Null)
}
