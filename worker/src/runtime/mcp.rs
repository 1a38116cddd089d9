//! `mcp`: an existing stdio MCP server, started once per worker on the first call, initialised, and asked
//! to run the one upstream tool. If it dies, hangs or speaks garbage, that call gets the reason and the
//! next call starts a fresh server. Calls reach the server one at a time.
//!
//! A call abandoned by the gateway (it cancelled the call and closed the connection) is cancelled
//! upstream too: the server gets `notifications/cancelled` for its request, and its late answer is
//! skipped. A write the abandonment cut in half would corrupt the server's input, so the server is
//! restarted instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex as SyncMutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{CallError, Tool, failure, human};
use crate::output::{STDERR_TAIL_BYTES, shown};
use crate::process;
use crate::protocol::{CallRequest, CallResult};
use crate::redact::Redactor;

pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// Longest JSON-RPC line accepted from the server.
const MAX_LINE: u64 = 32 * 1024 * 1024;

#[derive(Default)]
pub struct Upstream {
    /// Shared with the task that tells the server about an abandoned call.
    session: Arc<Mutex<Option<Session>>>,
}

struct Session {
    /// The server under its supervisor, which takes down everything it started when the session goes.
    server: process::Supervised,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<SyncMutex<VecDeque<u8>>>,
    next_id: u64,
    /// The request whose answer has not been read. Whoever takes the lock and finds one here knows its
    /// call was abandoned (a call that ends in any other way clears it or ends the session).
    unanswered: Option<u64>,
    /// A message is being written: set while writing, so a write cut short is known.
    writing: bool,
    /// The line being read; kept across calls, so a read cut short by an abandoned call goes on.
    line: Vec<u8>,
}

/// A failed exchange: the error code, the sentence, and whether the server must be restarted.
struct Failed(&'static str, String);

impl Upstream {
    /// Stops an idle server; one busy with a call is stopped by its supervisor when the worker shuts down.
    pub async fn stop(&self) {
        if let Ok(mut slot) = self.session.try_lock()
            && let Some(mut session) = slot.take()
        {
            session.kill().await;
        }
    }
}

pub async fn call(tool: &Tool, upstream: &Upstream, request: &CallRequest, redactor: &Redactor) -> Result<CallResult, CallError> {
    let deadline = Instant::now() + tool.timeout();
    let timed_out = || failure("timeout", format!("the MCP server did not answer within the {} timeout", human(tool.timeout())));
    let Ok(mut guard) = tokio::time::timeout_at(deadline, upstream.session.lock()).await else {
        return Ok(timed_out());
    };
    let abandoned = OnAbandon(Some(upstream.session.clone()));
    settle_abandoned(&mut guard).await;
    let outcome = tokio::time::timeout_at(deadline, exchange(tool, &mut guard, request)).await;
    abandoned.disarm();
    let result = match outcome {
        Ok(Ok(response)) => return Ok(map_result(tool.cap(), response, redactor)),
        Ok(Err(Failed(code, message))) => {
            // The message may quote the server's stderr or output.
            let (message, redacted) = redactor.redact(&message);
            CallResult { redacted, ..failure(code, message) }
        }
        Err(_) => timed_out(),
    };
    // The server is dead, confused or stuck: stop it; the next call starts a fresh one.
    if let Some(mut session) = guard.take() {
        session.kill().await;
    }
    Ok(result)
}

/// Dropped armed (the call's future was dropped mid-exchange): tells the server, in a task of its own.
struct OnAbandon(Option<Arc<Mutex<Option<Session>>>>);

impl OnAbandon {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for OnAbandon {
    fn drop(&mut self) {
        if let Some(session) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { settle_abandoned(&mut *session.lock().await).await });
        }
    }
}

/// Deals with what an abandoned call left (the lock is held, so no call is under way): a server whose
/// input was cut mid-message is stopped (the next call starts a fresh one); otherwise the server is told
/// that the unanswered request is cancelled.
async fn settle_abandoned(slot: &mut Option<Session>) {
    let Some(session) = slot.as_mut() else { return };
    if session.writing {
        if let Some(mut session) = slot.take() {
            session.kill().await;
        }
        return;
    }
    if let Some(id) = session.unanswered.take() {
        let notice = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id, "reason": "the client cancelled the call"}});
        if session.send(&notice).await.is_err()
            && let Some(mut session) = slot.take()
        {
            session.kill().await;
        }
    }
}

async fn exchange(tool: &Tool, slot: &mut Option<Session>, request: &CallRequest) -> Result<Value, Failed> {
    if slot.is_none() {
        *slot = Some(Session::start(tool).await?);
    }
    let session = slot.as_mut().expect("started above");
    let name = &tool.spec.runtime.mcp.as_ref().expect("mcp tool").tool;
    let mut params = json!({"name": name, "arguments": request.arguments});
    if let Some(traceparent) = request.valid_traceparent() {
        // Where MCP clients carry W3C trace context: the upstream's spans join the call's trace.
        params["_meta"] = json!({"traceparent": traceparent});
    }
    session.request("tools/call", params).await
}

impl Session {
    async fn start(tool: &Tool) -> Result<Session, Failed> {
        let mcp = tool.spec.runtime.mcp.as_ref().expect("mcp tool");
        let mut argv = mcp.command.clone();
        argv.extend(mcp.args.iter().cloned());
        let mut env = mcp.env.clone();
        env.extend(process::credential_env(&tool.spec).map_err(|m| Failed("spawn_failed", m))?);
        // A long-lived server accumulates CPU time across calls: the per-call CPU limit does not fit it.
        let limits = process::ChildLimits { cpu_seconds: None, ..tool.limits };
        let mut server = process::spawn(&argv, &env, &tool.session_dir, limits)
            .await
            .map_err(|m| Failed("spawn_failed", format!("the MCP server: {m}")))?;
        let child = server.child.as_mut().expect("a started program has its supervisor");
        let stderr = Arc::new(SyncMutex::new(VecDeque::new()));
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let tail = stderr.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                tail.extend(&buf[..n]);
                let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                tail.drain(..excess);
            }
        });
        let mut session = Session {
            stdin: child.stdin.take().expect("stdin is piped"),
            stdout: BufReader::new(child.stdout.take().expect("stdout is piped")),
            server,
            stderr,
            next_id: 1,
            unanswered: None,
            writing: false,
            line: Vec::new(),
        };
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "toolwarden-worker", "version": env!("CARGO_PKG_VERSION")},
        });
        let init = session.request("initialize", params).await?;
        if init.get("protocolVersion").and_then(Value::as_str).is_none() {
            return Err(Failed("upstream_protocol", "the MCP server's initialize result has no protocolVersion".into()));
        }
        session.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await?;
        Ok(session)
    }

    async fn send(&mut self, message: &Value) -> Result<(), Failed> {
        let mut line = serde_json::to_vec(message).expect("JSON values serialize");
        line.push(b'\n');
        self.writing = true;
        if self.stdin.write_all(&line).await.is_err() || self.stdin.flush().await.is_err() {
            return Err(self.crashed().await);
        }
        self.writing = false;
        Ok(())
    }

    /// Sends one request and reads until its response, answering what the server asks meanwhile.
    async fn request(&mut self, method: &str, params: Value) -> Result<Value, Failed> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await?;
        self.unanswered = Some(id);
        loop {
            // `read_until` appends what it reads before it is cut short, so `self.line` keeps a partial line.
            let room = MAX_LINE.saturating_sub(self.line.len() as u64);
            let n = (&mut self.stdout).take(room).read_until(b'\n', &mut self.line).await.unwrap_or(0);
            if n == 0 && room > 0 {
                return Err(self.crashed().await);
            }
            let line = std::mem::take(&mut self.line);
            if line.len() as u64 >= MAX_LINE && !line.ends_with(b"\n") {
                return Err(Failed("upstream_protocol", format!("the MCP server sent a line longer than {MAX_LINE} bytes")));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message: Value = serde_json::from_slice(&line).map_err(|_| {
                let shown = String::from_utf8_lossy(&line[..line.len().min(120)]).trim().to_string();
                Failed("upstream_protocol", format!("the MCP server wrote something that is not JSON-RPC: {shown:?}"))
            })?;
            if message.get("method").is_some() {
                // A request or notification from the server; answer requests so it does not wait forever.
                if let Some(server_id) = message.get("id") {
                    let reply = if message["method"] == "ping" {
                        json!({"jsonrpc": "2.0", "id": server_id, "result": {}})
                    } else {
                        json!({"jsonrpc": "2.0", "id": server_id, "error": {"code": -32601, "message": "not supported by toolwarden"}})
                    };
                    self.send(&reply).await?;
                }
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            self.unanswered = None;
            if let Some(error) = message.get("error") {
                let text = error.get("message").and_then(Value::as_str).unwrap_or("no message");
                let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
                return Ok(json!({"isError": true, "content": [{"type": "text", "text": format!("MCP error {code}: {text}")}]}));
            }
            return message
                .get("result")
                .cloned()
                .ok_or_else(|| Failed("upstream_protocol", "the MCP server answered without result or error".into()));
        }
    }

    /// The server closed its pipes: say how it ended, with the tail of its stderr.
    async fn crashed(&mut self) -> Failed {
        let status = tokio::time::timeout(std::time::Duration::from_millis(500), self.server.wait()).await;
        let how = match status {
            Ok(process::Ended::Exit(code)) => format!("exited (exit status: {code})"),
            Ok(process::Ended::Signal(n)) => format!("exited (killed by signal {n})"),
            _ => "closed its output".to_string(),
        };
        let tail = {
            let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
            String::from_utf8_lossy(&tail.iter().copied().collect::<Vec<u8>>()).trim().to_string()
        };
        let detail = if tail.is_empty() { String::new() } else { format!(": {tail}") };
        Failed("upstream_crashed", format!("the MCP server {how}; it will be restarted for the next call{detail}"))
    }

    async fn kill(&mut self) {
        self.server.stop().await;
    }
}

/// An MCP `CallToolResult` → the worker's result: text content joined, structuredContent passed on,
/// the tool's credentials redacted from both.
fn map_result(cap: usize, result: Value, redactor: &Redactor) -> CallResult {
    let mut parts = Vec::new();
    for item in result.get("content").and_then(Value::as_array).into_iter().flatten() {
        match item.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(item.get("text").and_then(Value::as_str).unwrap_or_default().to_string()),
            Some("resource") => {
                if let Some(text) = item.pointer("/resource/text").and_then(Value::as_str) {
                    parts.push(text.to_string());
                }
            }
            Some(other) => parts.push(format!("[{other} content omitted]")),
            None => {}
        }
    }
    let mut structured = result.get("structuredContent").filter(|v| v.is_object()).cloned();
    let structured_redacted = structured.as_mut().is_some_and(|s| redactor.redact_json(s));
    let mut text = parts.join("\n");
    if text.is_empty()
        && let Some(s) = &structured
    {
        text = s.to_string();
    }
    let output_bytes = text.len() as u64;
    let out = shown(text.as_bytes(), output_bytes, cap, redactor);
    let is_error = result.get("isError").and_then(Value::as_bool).unwrap_or(false);
    CallResult {
        content: out.text,
        structured: if out.truncated_bytes > 0 { None } else { structured },
        is_error,
        error_code: is_error.then(|| "upstream_error".to_string()),
        output_bytes,
        truncated: out.truncated_bytes > 0,
        truncated_bytes: out.truncated_bytes,
        redacted: out.redacted || structured_redacted,
        ..CallResult::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_text_structured_content_and_errors() {
        let none = Redactor::default();
        let map_result = |cap, v| map_result(cap, v, &none);
        let ok = map_result(100, json!({"content": [{"type": "text", "text": "a"}, {"type": "image", "data": ""},
            {"type": "resource", "resource": {"uri": "x", "text": "b"}}], "structuredContent": {"n": 1}}));
        assert_eq!(ok.content, "a\n[image content omitted]\nb");
        assert_eq!(ok.structured, Some(json!({"n": 1})));
        assert!(!ok.is_error);
        let err = map_result(100, json!({"content": [{"type": "text", "text": "bad"}], "isError": true}));
        assert_eq!(err.error_code.as_deref(), Some("upstream_error"));
        let only_structured = map_result(100, json!({"structuredContent": {"n": 2}}));
        assert_eq!(only_structured.content, "{\"n\":2}");
        let cut = map_result(3, json!({"content": [{"type": "text", "text": "abcdef"}], "structuredContent": {"n": 3}}));
        assert_eq!((cut.content.as_str(), cut.truncated_bytes, cut.structured), ("abc", 3, None));
    }

    #[test]
    fn credentials_are_redacted_from_text_and_structured_content() {
        let redactor = Redactor::new(&["upstream-s3cret"]);
        let r = map_result(100, json!({"content": [{"type": "text", "text": "key upstream-s3cret"}],
            "structuredContent": {"echo": {"auth": "Bearer upstream-s3cret"}}}), &redactor);
        assert_eq!(r.content, "key [redacted]");
        assert_eq!(r.structured, Some(json!({"echo": {"auth": "Bearer [redacted]"}})));
        assert!(r.redacted);
        assert!(!map_result(100, json!({"content": [{"type": "text", "text": "fine"}]}), &redactor).redacted);
    }
}
