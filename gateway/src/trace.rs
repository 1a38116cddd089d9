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
use toolwarden_telemetry::{KeyValue, Parent, Span, SpanId, SpanKind, Telemetry, Trace, parse_traceparent};
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
            trace.child(|| Span::new("authenticate", edge.received, edge.authenticated, Vec::new()).kind(SpanKind::Internal));
        }
        CallTrace { trace: Some(trace), started }
    }

    pub fn trace_id_hex(&self) -> String {
        self.trace.as_ref().map(Trace::trace_id_hex).unwrap_or_default()
    }

    fn add(&mut self, make: impl FnOnce() -> Span) {
        if let Some(trace) = self.trace.as_mut() {
            trace.child(make);
        }
    }

    /// `decide`: the policy engine's decision, from `start` to now.
    pub fn decided(&mut self, start: SystemTime, decision: &Decision, record: &AuditRecord) {
        self.add(|| {
            let mut attributes = vec![
                KeyValue::new("toolwarden.decision", decision.label()),
                KeyValue::new("toolwarden.arguments", record.arguments.to_string()),
            ];
            let (policy, rule, code) = match decision {
                Decision::Deny(d) => (d.policy.clone(), d.rule.clone(), Some(d.code.as_str().to_owned())),
                Decision::Allow(a) => (a.policies.first().cloned(), None, None),
                Decision::NeedsApproval(r) => (Some(r.policy.clone()), None, None),
            };
            attributes.extend(policy.map(|p| KeyValue::new("toolwarden.policy", p)));
            attributes.extend(rule.map(|r| KeyValue::new("toolwarden.rule", r)));
            attributes.extend(code.map(|c| KeyValue::new("toolwarden.code", c)));
            if !record.argument_provenance.is_empty() {
                attributes.push(KeyValue::new("toolwarden.argument_provenance", record.argument_provenance.join(",")));
            }
            Span::new("decide", start, SystemTime::now(), attributes)
        });
    }

    /// `rate_limit`: the subject's and session's limits were checked.
    pub fn rate_limited(&mut self, start: SystemTime, limited: Option<&str>) {
        self.add(|| {
            let mut attributes = vec![KeyValue::new("toolwarden.rate_limit", if limited.is_some() { "limited" } else { "ok" })];
            attributes.extend(limited.map(|policy| KeyValue::new("toolwarden.policy", policy.to_owned())));
            Span::new("rate_limit", start, SystemTime::now(), attributes)
        });
    }

    /// `approval`: the confirm or human approval step, with the state it left the call in.
    pub fn approval(&mut self, start: SystemTime, mode: &'static str, state: &str) {
        self.add(|| {
            let attributes = vec![KeyValue::new("toolwarden.approval.mode", mode), KeyValue::new("toolwarden.approval", state.to_owned())];
            Span::new("approval", start, SystemTime::now(), attributes)
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
        let mut call_start = start;
        if let Some(w) = started_worker {
            call_start = w.ended;
            self.add(|| {
                let mut attributes = vec![KeyValue::new("toolwarden.worker.start", w.kind), KeyValue::new("toolwarden.worker.runtime", runtime)];
                attributes.extend(w.failed.map(|code| KeyValue::new("error.type", code)));
                Span::new("worker.start", w.started, w.ended, attributes).error(w.failed.map(str::to_owned))
            });
        }
        self.add(|| {
            let mut attributes = vec![
                KeyValue::new("toolwarden.worker.runtime", runtime),
                KeyValue::new("toolwarden.tool.runtime", tool_runtime),
                KeyValue::new("toolwarden.worker.started", started_worker.is_some()),
            ];
            if preview {
                attributes.push(KeyValue::new("toolwarden.preview", true));
            }
            let error = match outcome {
                Ok(r) if r.is_error => r.error_code.clone().or(Some("error".into())),
                Ok(_) => None,
                Err(e) => Some(e.code.to_owned()),
            };
            if let Ok(r) = outcome {
                attributes.push(KeyValue::new("toolwarden.worker.duration_ms", r.duration_ms as i64));
                attributes.extend(r.http_status.map(|s| KeyValue::new("http.response.status_code", i64::from(s))));
            }
            attributes.extend(error.clone().map(|code| KeyValue::new("error.type", code)));
            let span = Span::new("worker.call", call_start.max(start), SystemTime::now(), attributes).kind(SpanKind::Client).error(error);
            match call_span {
                Some(id) => span.with_id(id),
                None => span,
            }
        });
    }

    /// `result`: the result line was written and counted (status, bytes, truncated, redacted).
    pub fn result(&mut self, start: SystemTime, record: &AuditRecord) {
        self.add(|| Span::new("result", start, SystemTime::now(), outcome_attributes(record)));
    }

    /// Ends the trace: the root span `tools/call {tool}` from the request's arrival to now. Takes the
    /// call's record, whose lines are written: its strings move into the span instead of being copied.
    pub fn finish(&mut self, record: AuditRecord) {
        let Some(trace) = self.trace.take() else { return };
        let started = self.started;
        trace.finish(move || {
            let failed = matches!(record.status.as_deref(), Some("error" | "timeout" | "worker_failed"));
            let error = failed.then(|| record.code.clone().unwrap_or_else(|| "error".into()));
            let name = format!("tools/call {}", record.tool);
            let mut attributes = Vec::with_capacity(16);
            attributes.extend([
                KeyValue::new("mcp.method.name", "tools/call"),
                KeyValue::new("gen_ai.operation.name", "execute_tool"),
                KeyValue::new("gen_ai.tool.name", record.tool),
                KeyValue::new("mcp.session.id", record.session_id),
                KeyValue::new("toolwarden.call_id", record.call_id),
                KeyValue::new("toolwarden.namespace", record.namespace),
                KeyValue::new("enduser.id", record.subject),
                KeyValue::new("toolwarden.client", record.client),
                KeyValue::new("toolwarden.decision", record.decision),
                KeyValue::new("toolwarden.approval", record.approval),
            ]);
            attributes.extend(record.status.map(|s| KeyValue::new("toolwarden.status", s)));
            attributes.extend(record.code.map(|c| KeyValue::new("toolwarden.code", c)));
            attributes.extend(outcome_figures(record.output_bytes, record.truncated, record.redacted));
            attributes.extend(record.policy.map(|p| KeyValue::new("toolwarden.policy", p)));
            Span::new(name, started, SystemTime::now(), attributes).kind(SpanKind::Server).error(error)
        });
    }
}

/// Status and output figures of a call, as its result line has them.
fn outcome_attributes(record: &AuditRecord) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(6);
    attributes.extend(record.status.clone().map(|s| KeyValue::new("toolwarden.status", s)));
    attributes.extend(record.code.clone().map(|c| KeyValue::new("toolwarden.code", c)));
    attributes.extend(outcome_figures(record.output_bytes, record.truncated, record.redacted));
    attributes.extend(record.policy.clone().map(|p| KeyValue::new("toolwarden.policy", p)));
    attributes
}

fn outcome_figures(output_bytes: Option<u64>, truncated: Option<bool>, redacted: Option<bool>) -> impl Iterator<Item = KeyValue> {
    let bytes = output_bytes.map(|b| KeyValue::new("toolwarden.output_bytes", b as i64));
    let truncated = truncated.map(|t| KeyValue::new("toolwarden.truncated", t));
    let redacted = redacted.map(|r| KeyValue::new("toolwarden.redacted", r));
    bytes.into_iter().chain(truncated).chain(redacted)
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
