//! Tracing of `tools/call` (docs/tracing.md): one trace per call, with a span per step the call took:
//! `authenticate`, `decide`, `rate_limit`, `approval`, `worker.start`, `worker.call`, `result`, under a
//! root `tools/call {tool}`. Off unless the gateway has [`toolwarden_telemetry::Telemetry`]; then each
//! step's start and end are taken and the spans written when the call ends.
//!
//! Spans carry names, codes, counts and the arguments as the audit log shows them (sanitised: secrets and
//! long strings redacted), never a raw argument value, a credential, a token or a message that could
//! quote either.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use http::HeaderMap;
use toolwarden_core::audit::AuditRecord;
use toolwarden_core::policy::Decision;
use toolwarden_telemetry::{Parent, SpanId, SpanKind, SpanWriter, Telemetry, Trace, parse_traceparent};
use toolwarden_worker::protocol::CallResult;

use crate::runtime::RuntimeError;

/// The `_meta` key of a result that names its trace.
pub const TRACE_ID_META_KEY: &str = "toolwarden.dev/traceId";

/// When the HTTP edge received a request and when it had authenticated it; measured only while tracing.
#[derive(Clone, Copy, Debug)]
pub struct Edge {
    pub received: SystemTime,
    pub authenticated: SystemTime,
}

/// The caller's trace context: `_meta.traceparent` of the `tools/call` when it is valid (where MCP clients
/// put it), else the request's `traceparent` header when valid. A malformed value is ignored: the call
/// then starts a trace of its own.
pub fn caller_parent(headers: Option<&HeaderMap>, meta: Option<&serde_json::Map<String, serde_json::Value>>) -> Option<Parent> {
    let from_meta = meta.and_then(|m| m.get("traceparent")).and_then(|v| v.as_str()).and_then(parse_traceparent);
    from_meta.or_else(|| {
        let headers = headers?;
        let mut values = headers.get_all("traceparent").iter();
        let only = values.next()?;
        // Repeated headers are ambiguous: neither is trusted.
        if values.next().is_some() {
            return None;
        }
        only.to_str().ok().and_then(parse_traceparent)
    })
}

/// One call's trace while it runs. Dropping it (with the call) writes its root span.
pub struct CallTrace {
    trace: Option<Trace>,
    started: SystemTime,
}

impl CallTrace {
    /// Starts the trace of a call of `tool`; the `authenticate` span comes from `edge` when there is one.
    pub fn start(telemetry: &Arc<Telemetry>, parent: Option<Parent>, edge: Option<Edge>) -> CallTrace {
        let mut trace = Trace::start(telemetry, parent, "tools/call");
        let started = edge.map_or_else(SystemTime::now, |e| e.received);
        if let Some(edge) = edge {
            trace.child("authenticate", edge.received, edge.authenticated, |_| {});
        }
        CallTrace { trace: Some(trace), started }
    }

    pub fn trace_id_hex(&self) -> String {
        self.trace.as_ref().map(Trace::trace_id_hex).unwrap_or_default()
    }

    /// Adds a child span `name` from `start` to now; `write` runs only when the trace is sampled.
    fn add(&mut self, name: &str, start: SystemTime, write: impl FnOnce(&mut SpanWriter<'_>)) {
        if let Some(trace) = self.trace.as_mut().filter(|t| t.sampled()) {
            trace.child(name, start, SystemTime::now(), write);
        }
    }

    /// `decide`: the policy engine's decision, from `start` to now.
    pub fn decided(&mut self, start: SystemTime, decision: &Decision, record: &AuditRecord) {
        self.add("decide", start, |span| {
            span.str("toolwarden.decision", decision.label());
            // serde_json's writer straight into the span: its `Display` goes through a formatter.
            span.written("toolwarden.arguments", |buf| {
                let _ = serde_json::to_writer(buf, &record.arguments);
            });
            match decision {
                Decision::Deny(d) => {
                    span.opt_str("toolwarden.policy", d.policy.as_deref()).opt_str("toolwarden.rule", d.rule.as_deref());
                    span.str("toolwarden.code", d.code.as_str());
                }
                Decision::Allow(a) => {
                    span.opt_str("toolwarden.policy", a.policies.first().map(String::as_str));
                }
                Decision::NeedsApproval(r) => {
                    span.str("toolwarden.policy", &r.policy);
                }
            }
            if !record.argument_provenance.is_empty() {
                span.display("toolwarden.argument_provenance", &Joined(&record.argument_provenance));
            }
        });
    }

    /// `rate_limit`: the subject's and session's limits were checked.
    pub fn rate_limited(&mut self, start: SystemTime, limited: Option<&str>) {
        self.add("rate_limit", start, |span| {
            span.str("toolwarden.rate_limit", if limited.is_some() { "limited" } else { "ok" });
            span.opt_str("toolwarden.policy", limited);
        });
    }

    /// `approval`: the confirm or human approval step, with the state it left the call in.
    pub fn approval(&mut self, start: SystemTime, mode: &'static str, state: &str) {
        self.add("approval", start, |span| {
            span.str("toolwarden.approval.mode", mode).str("toolwarden.approval", state);
        });
    }

    /// An id for the `worker.call` span, and the `traceparent` naming it, for the worker to pass on. A
    /// trace the sampler left out is passed on too, flagged unsampled, so the tool's side can still
    /// correlate (and leave it out as well).
    pub fn worker_call_context(&self) -> Option<(SpanId, String)> {
        let trace = self.trace.as_ref()?;
        let id = trace.new_span_id();
        Some((id, trace.traceparent(id)))
    }

    /// `worker.start` (when the call started a worker) and `worker.call` (the exchange with it).
    #[allow(clippy::too_many_arguments)]
    pub fn worker(
        &mut self,
        start: SystemTime,
        started_worker: Option<WorkerStart>,
        call_span: Option<SpanId>,
        runtime: &'static str,
        tool_runtime: &'static str,
        preview: bool,
        outcome: &Result<CallResult, RuntimeError>,
    ) {
        let Some(trace) = self.trace.as_mut().filter(|t| t.sampled()) else { return };
        let mut call_start = start;
        if let Some(w) = started_worker {
            call_start = w.ended;
            trace.child("worker.start", w.started, w.ended, |span| {
                span.str("toolwarden.worker.start", w.kind).str("toolwarden.worker.runtime", runtime);
                if let Some(code) = w.failed {
                    span.str("error.type", code).error(code);
                }
            });
        }
        trace.child("worker.call", call_start.max(start), SystemTime::now(), |span| {
            span.kind(SpanKind::Client);
            span.str("toolwarden.worker.runtime", runtime).str("toolwarden.tool.runtime", tool_runtime);
            span.bool("toolwarden.worker.started", started_worker.is_some());
            if preview {
                span.bool("toolwarden.preview", true);
            }
            let error = match outcome {
                Ok(r) if r.is_error => Some(r.error_code.as_deref().unwrap_or("error")),
                Ok(_) => None,
                Err(e) => Some(e.code),
            };
            if let Ok(r) = outcome {
                span.int("toolwarden.worker.duration_ms", r.duration_ms as i64);
                if let Some(status) = r.http_status {
                    span.int("http.response.status_code", i64::from(status));
                }
            }
            if let Some(code) = error {
                span.str("error.type", code).error(code);
            }
            if let Some(id) = call_span {
                span.id(id);
            }
        });
    }

    /// `result`: the result line was written and counted (status, bytes, truncated, redacted).
    pub fn result(&mut self, start: SystemTime, record: &AuditRecord) {
        self.add("result", start, |span| outcome_attributes(span, record));
    }

    /// Ends the trace: the root span `tools/call {tool}` from the request's arrival to now, with the
    /// call's record (its lines are written) as attributes.
    pub fn finish(&mut self, record: &AuditRecord) {
        let Some(trace) = self.trace.take() else { return };
        trace.finish("tools/call", Some(&record.tool), self.started, SystemTime::now(), |span| {
            span.kind(SpanKind::Server);
            span.str("mcp.method.name", "tools/call").str("gen_ai.operation.name", "execute_tool").str("gen_ai.tool.name", &record.tool);
            span.str("mcp.session.id", &record.session_id).str("toolwarden.call_id", &record.call_id);
            span.str("toolwarden.namespace", &record.namespace).str("enduser.id", &record.subject).str("toolwarden.client", &record.client);
            span.str("toolwarden.decision", &record.decision).str("toolwarden.approval", &record.approval);
            outcome_attributes(span, record);
            if matches!(record.status.as_deref(), Some("error" | "timeout" | "worker_failed")) {
                span.error(record.code.as_deref().unwrap_or("error"));
            }
        });
    }
}

/// Status and output figures of a call, as its result line has them.
fn outcome_attributes(span: &mut SpanWriter<'_>, record: &AuditRecord) {
    span.opt_str("toolwarden.status", record.status.as_deref()).opt_str("toolwarden.code", record.code.as_deref());
    if let Some(bytes) = record.output_bytes {
        span.int("toolwarden.output_bytes", bytes as i64);
    }
    if let Some(truncated) = record.truncated {
        span.bool("toolwarden.truncated", truncated);
    }
    if let Some(redacted) = record.redacted {
        span.bool("toolwarden.redacted", redacted);
    }
    span.opt_str("toolwarden.policy", record.policy.as_deref());
}

/// A list written as its items joined by commas.
struct Joined<'a>(&'a [String]);

impl std::fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(item)?;
        }
        Ok(())
    }
}

/// A worker the call started (or tried to): which kind, when, and the failure code if it failed.
#[derive(Clone, Copy, Debug)]
pub struct WorkerStart {
    /// `local` (a sandboxed process), `cold` (a new pod), `warm` (a pod from the warm pool).
    pub kind: &'static str,
    pub started: SystemTime,
    pub ended: SystemTime,
    pub failed: Option<&'static str>,
}

tokio::task_local! {
    /// Where a runtime notes the worker start of the traced call it runs (see [`note_worker_start`]).
    static WORKER_START: Arc<Mutex<Option<WorkerStart>>>;
}

/// Runs `call` (a runtime's `call`) so that a worker start inside it can be noted; returns its outcome and
/// the start, if one happened.
pub async fn noting_worker_start<T>(call: impl Future<Output = T>) -> (T, Option<WorkerStart>) {
    let note = Arc::new(Mutex::new(None));
    let outcome = WORKER_START.scope(note.clone(), call).await;
    let started = *note.lock().unwrap_or_else(|e| e.into_inner());
    (outcome, started)
}

/// Called by the runtimes where they start a worker for a call (`began` is when the start began): a
/// no-op unless the call is traced.
pub fn note_worker_start(kind: &'static str, began: Instant, failed: Option<&'static str>) {
    let _ = WORKER_START.try_with(|note| {
        let ended = SystemTime::now();
        let started = ended.checked_sub(began.elapsed()).unwrap_or(ended);
        *note.lock().unwrap_or_else(|e| e.into_inner()) = Some(WorkerStart { kind, started, ended, failed });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const OTHER: &str = "00-11111111111111111111111111111111-2222222222222222-01";

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("traceparent", http::HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn meta(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        serde_json::json!({"traceparent": value}).as_object().unwrap().clone()
    }

    fn trace_id(parent: Option<Parent>) -> Option<String> {
        parent.map(|p| format!("{:032x}", p.trace_id))
    }

    #[test]
    fn the_meta_traceparent_wins_and_a_malformed_one_is_ignored() {
        assert_eq!(trace_id(caller_parent(Some(&headers(&[GOOD])), None)).unwrap(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace_id(caller_parent(Some(&headers(&[GOOD])), Some(&meta(OTHER.into())))).unwrap(), "11111111111111111111111111111111");
        // A malformed `_meta` value does not hide a valid header, and is never used in part.
        assert_eq!(trace_id(caller_parent(Some(&headers(&[GOOD])), Some(&meta("00-1-2-01".into())))).unwrap(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(caller_parent(None, Some(&meta(serde_json::json!(42)))), None);
        assert_eq!(caller_parent(Some(&headers(&["00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"])), None), None);
        assert_eq!(caller_parent(Some(&headers(&[GOOD, OTHER])), None), None, "a repeated header is ambiguous");
        assert_eq!(caller_parent(Some(&HeaderMap::new()), None), None);
    }

    #[tokio::test]
    async fn a_worker_start_is_noted_only_inside_a_traced_call() {
        note_worker_start("local", Instant::now(), None); // outside: nothing happens, nothing fails
        let ((), start) = noting_worker_start(async { note_worker_start("cold", Instant::now(), Some("image_pull")) }).await;
        let start = start.expect("noted");
        assert_eq!((start.kind, start.failed), ("cold", Some("image_pull")));
        assert!(start.started <= start.ended);
        let ((), none) = noting_worker_start(async {}).await;
        assert!(none.is_none());
    }
}
