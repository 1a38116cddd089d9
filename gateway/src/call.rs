//! One `tools/call`, end to end: decide → rate limits → audit the decision → approvals → worker →
//! audit the result → metrics → taint. Every refusal is a tool result with `isError: true`, a sentence
//! and a machine-readable code (see [`crate::refusal`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock as Content, JsonObject};
use serde_json::{Value, json};
use toolwarden_core::approval::TokenBinding;
use toolwarden_core::audit::{AuditEvent, AuditRecord, sanitize_arguments};
use toolwarden_core::canonical::arguments_hash;
use toolwarden_core::config::ToolConfig;
use toolwarden_core::policy::{ApprovalRequest, Decision, DenialCode, RateLimit, Session, Subject, decide};
use toolwarden_core::resources::{ApprovalMode, OutputTrust};
use tokio_util::sync::CancellationToken;
use toolwarden_worker::protocol::{CallRequest, CallResult};

use crate::approvals::random_hex;
use crate::audit::{rfc3339, timestamp};
use crate::catalog::CONFIRM_TOKEN_ARG;
use crate::elicit::Asking;
use crate::refusal::Refusal;
use crate::running::Stop;
use crate::runtime::{CANCELLED, RuntimeError};
use crate::sessions::SessionRecord;
use crate::state::Gateway;
use crate::trace::{CallTrace, TRACE_ID_META_KEY};

/// Extra time past the runtime's own bounds (worker start, tool timeout) before the gateway gives up on
/// a call: a last resort against a runtime that fails to bound them.
const WORKER_GRACE: Duration = Duration::from_secs(10);

struct Call<'a> {
    gw: &'a Gateway,
    session: &'a SessionRecord,
    /// The tool's name as the metrics label: `_unknown` for names not in the config (bounded cardinality).
    tool_label: String,
    record: AuditRecord,
    /// The decision line is already written (a confirm preview writes its own).
    audited: bool,
    /// The call's trace, when tracing is on; its root span is written when the call is dropped.
    trace: Option<CallTrace>,
    /// When the approval step began and its mode, until its span is written.
    approval_started: Option<(SystemTime, &'static str)>,
    /// A run's (or preview's) decision line is written and its result line is not yet: dropped in this
    /// state, the call writes an `interrupted` result line, so every started call has one.
    awaiting_result: bool,
}

impl Call<'_> {
    /// Writes the approval step's span, once, when the step is over (the call runs or was answered).
    fn end_approval(&mut self) {
        if let (Some((start, mode)), Some(trace)) = (self.approval_started.take(), self.trace.as_mut()) {
            trace.approval(start, mode, &self.record.approval);
        }
    }
}

impl Drop for Call<'_> {
    /// The call is over, however it ended (answered, refused, or dropped when its client went away).
    fn drop(&mut self) {
        if self.awaiting_result {
            // The task running the call was dropped: its client went away, or the gateway stopped.
            let message = "the call's request ended before its worker answered (the client went away or the gateway stopped); whether the tool finished is unknown";
            self.gw.audit.write(&crate::audit::interrupted(&self.record, message.to_owned()));
            self.gw.metrics.call(&self.session.namespace, &self.tool_label, &self.record.decision.clone(), INTERRUPTED);
        }
        if self.trace.is_some() {
            self.end_approval();
            if let Some(trace) = self.trace.as_mut() {
                trace.finish(&self.record);
            }
        }
    }
}

impl Call<'_> {
    fn refuse(&mut self, refusal: Refusal, decision: &str, status: &str, tool: Option<&ToolConfig>) -> CallToolResult {
        let ns = &self.session.namespace;
        self.record.code = Some(refusal.code.clone());
        self.record.policy = self.record.policy.take().or(refusal.policy.clone());
        self.record.rule = self.record.rule.take().or(refusal.rule.clone());
        self.record.status = Some(status.to_owned());
        self.record.message = Some(refusal.audit_message().to_owned());
        if !self.audited {
            self.gw.audit.write(&self.record);
        }
        self.gw.metrics.call(ns, &self.tool_label, decision, status);
        if status == "refused" {
            self.gw.metrics.denial(ns, &self.tool_label, &refusal.code);
        }
        self.gw.runtime.record_call(&self.session.id, status == "refused", None);
        refusal.into_result(tool.is_some_and(|t| t.output_schema.is_some()))
    }
}

/// A call id unique across calls and gateway processes: a random prefix drawn once per process and a
/// counter (call ids are labels, not secrets; approval ids and confirm tokens stay fully random).
fn next_call_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let prefix = PREFIX.get_or_init(|| random_hex(4));
    format!("c-{prefix}{:08x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Runs one call for `session`; `trace` is its trace when tracing is on, and its id is then in the
/// result's `_meta` (`toolwarden.dev/traceId`) as well as in the call's audit lines.
pub async fn call_tool(
    gw: &Gateway,
    session: &Arc<SessionRecord>,
    name: &str,
    arguments: Option<JsonObject>,
    asking: Asking<'_>,
    cancel: &CancellationToken,
    trace: Option<CallTrace>,
) -> CallToolResponse {
    let Some(trace) = trace else {
        return answer(gw, session, name, arguments, asking, cancel, None).await;
    };
    let trace_id = trace.trace_id_hex();
    let mut response = answer(gw, session, name, arguments, asking, cancel, Some(trace)).await;
    if let CallToolResponse::Complete(result) = &mut response {
        result.meta.get_or_insert_with(Default::default).0.insert(TRACE_ID_META_KEY.into(), json!(trace_id));
    }
    response
}

/// The rare paths (confirm previews, asking the user) are boxed, which keeps this future, and every
/// copy of it, a fraction of their size.
/// `asking` is how its user can be asked to approve it, when a policy allows that (see [`crate::elicit`]);
/// only then can the answer be `input_required` rather than a complete result.
async fn answer(
    gw: &Gateway,
    session: &Arc<SessionRecord>,
    name: &str,
    arguments: Option<JsonObject>,
    asking: Asking<'_>,
    cancel: &CancellationToken,
    trace: Option<CallTrace>,
) -> CallToolResponse {
    let _in_flight = gw.call_started();
    let decide_start = trace.as_ref().map(|_| SystemTime::now());
    session.touch();
    gw.runtime.touch(&session.id);
    let mut args = Value::Object(arguments.unwrap_or_default());
    let engine = gw.engine(&session.namespace);
    let tool: Option<&ToolConfig> = engine.as_deref().and_then(|e| e.tool(name));
    // The gateway's own argument, unless the tool's schema declares one of the same name.
    let declares_token = tool.is_some_and(|t| t.input_schema["properties"].get(CONFIRM_TOKEN_ARG).is_some());
    let confirm_token = match (declares_token, args.as_object_mut()) {
        (false, Some(map)) => map.remove(CONFIRM_TOKEN_ARG).map(|v| v.as_str().map(str::to_owned).unwrap_or_default()),
        _ => None,
    };
    let decision = decide_now(engine.as_deref(), session, name, &args);
    // Declared path arguments run in the canonical form the rules checked (and the approval binds).
    if let Some(canonical) = decision.canonical_arguments() {
        args = canonical.clone();
    }
    let provenance = session.taint.lock().unwrap_or_else(|e| e.into_inner()).untrusted.repeated_in(&args);
    static NO_SCHEMA: Value = Value::Null;
    let schema = tool.map(|t| &t.input_schema).unwrap_or(&NO_SCHEMA);
    let known = tool.is_some() && !matches!(&decision, Decision::Deny(d) if d.code == DenialCode::UnknownTool);
    let mut call = Call {
        gw,
        session,
        tool_label: if known { name.to_owned() } else { "_unknown".to_owned() },
        record: AuditRecord {
            timestamp: timestamp(),
            event: Some(AuditEvent::Decision),
            call_id: next_call_id(),
            session_id: session.id.clone(),
            subject: session.subject.clone(),
            client: session.client_name.clone(),
            namespace: session.namespace.clone(),
            tool: name.to_owned(),
            arguments: sanitize_arguments(&args, schema),
            argument_provenance: provenance,
            decision: decision.label().to_owned(),
            approval: "none".to_owned(),
            trace_id: trace.as_ref().map(CallTrace::trace_id_hex),
            ..AuditRecord::default()
        },
        audited: false,
        trace,
        approval_started: None,
        awaiting_result: false,
    };
    if let (Some(start), Some(trace)) = (decide_start, call.trace.as_mut()) {
        trace.decided(start, &decision, &call.record);
    }
    let label = decision.label();
    let (tool, limits, approval) = match decision {
        Decision::Deny(denial) => {
            let refusal = Refusal::from_denial(&denial);
            return call.refuse(refusal, label, "refused", tool).into();
        }
        Decision::Allow(allowed) => {
            call.record.policy = allowed.policies.first().cloned();
            (tool.expect("allowed tools exist"), allowed.rate_limits, None)
        }
        Decision::NeedsApproval(request) => {
            call.record.policy = Some(request.policy.clone());
            (tool.expect("tools needing approval exist"), request.rate_limits.clone(), Some(request))
        }
    };
    let limits_start = call.trace.as_ref().filter(|_| !limits.is_empty()).map(|_| SystemTime::now());
    let limited = check_limits(gw, session, tool, &limits);
    if let (Some(start), Some(trace)) = (limits_start, call.trace.as_mut()) {
        trace.rate_limited(start, limited.as_ref().err().map(|l| l.policy.as_str()));
    }
    if let Err(limited) = limited {
        let refusal = Refusal::new(DenialCode::RateLimited.as_str(), limited.message).policy(limited.policy);
        return call.refuse(refusal, label, "refused", Some(tool)).into();
    }

    if let Some(request) = approval {
        if call.trace.is_some() {
            call.approval_started = Some((SystemTime::now(), request.mode.as_str()));
        }
        let hash = arguments_hash(&args);
        call.record.approval = "pending".to_owned();
        match request.mode {
            ApprovalMode::Confirm => {
                let binding = TokenBinding { session: &session.id, tool: &tool.name, arguments_hash: &hash };
                match confirm_token {
                    Some(token) => match gw.approvals.use_confirm(&token, binding) {
                        Ok(verified) => {
                            if let Err(refusal) = used::confirm_token(gw, session, &tool.name, &verified).await {
                                return call.refuse(refusal, label, "refused", Some(tool)).into();
                            }
                            call.record.approval = "confirmed".to_owned();
                        }
                        Err(e) => {
                            let refusal = Refusal::new(DenialCode::ConfirmTokenInvalid.as_str(), format!("{}: {e}", tool.name))
                                .detail("reason", json!(e.code()));
                            return call.refuse(refusal, label, "refused", Some(tool)).into();
                        }
                    },
                    None => return Box::pin(confirm_preview(call, tool, args, binding, request.ttl, &request.reason, cancel)).await.into(),
                }
            }
            ApprovalMode::Human => {
                let given_token = confirm_token.is_some();
                if let Some(answer) = Box::pin(human::approval(&mut call, tool, &args, &hash, request, asking, label, given_token)).await {
                    return answer;
                }
            }
            ApprovalMode::None => call.record.approval = "none".to_owned(),
        }
        call.end_approval();
    }
    run(call, tool, args, label, cancel).await.into()
}

/// The policy engine's decision on this call, with the session's state as it is now.
fn decide_now(engine: Option<&toolwarden_core::policy::Engine>, session: &SessionRecord, name: &str, args: &Value) -> Decision {
    let subject = Subject { name: session.subject.clone(), groups: session.groups.clone() };
    match engine {
        Some(engine) => decide(engine, &subject, &Session { id: session.id.clone(), tainted: session.tainted(), client: session.client_name.clone() }, name, args),
        None => Decision::Deny(toolwarden_core::policy::Denial {
            code: DenialCode::UnknownTool,
            policy: None,
            rule: None,
            message: format!("unknown tool `{name}`"),
        }),
    }
}

fn pending_refusal(request: &ApprovalRequest, id: &str, expires_at: SystemTime) -> Refusal {
    let message = format!(
        "{}. Approval {id} is pending until {}: an approver runs `toolwarden approvals approve {id}`, then repeat this identical call to run it once.",
        request.reason,
        rfc3339(expires_at)
    );
    Refusal::new(DenialCode::ApprovalRequired.as_str(), message)
        .policy(request.policy.clone())
        .detail("approvalId", json!(id))
        .detail("expiresAt", json!(rfc3339(expires_at)))
}

fn check_limits(gw: &Gateway, session: &SessionRecord, tool: &ToolConfig, limits: &[RateLimit]) -> Result<(), crate::ratelimit::Limited> {
    if limits.is_empty() {
        return Ok(());
    }
    gw.limits.check(&session.namespace, &tool.name, &session.subject, &session.id, limits)
}

/// The code of a call the kill switch stopped, or refused just before it would have run.
const TOOL_DISABLED: &str = "tool_disabled";
/// The code, audit status and metric label of a call the gateway stopped before it ended (shutdown).
pub const INTERRUPTED: &str = "interrupted";

/// Sends the call to the session's worker. The bound leaves room for the worker's start (a first call
/// waits for it) as well as the tool's timeout: cut short, a start would fail with the wrong sentence and
/// leave its half-started worker (or pod) behind.
///
/// The call is registered as running, so that a config disabling its tool stops it (`TOOL_DISABLED`).
/// The current config is read again once registered: a config applied since the call was decided (an
/// approval waited, a preview ran) is seen either here or by the kill switch.
///
/// A traced call sends the worker the `traceparent` of its `worker.call` span (passed on to http tools
/// and MCP upstreams), and gets `worker.start` and `worker.call` spans.
async fn dispatch(
    gw: &Gateway,
    session: &SessionRecord,
    tool: &ToolConfig,
    mut request: CallRequest,
    cancel: &CancellationToken,
    trace: Option<&mut CallTrace>,
) -> Result<CallResult, RuntimeError> {
    let running = gw.running.start(&session.namespace, &tool.name, cancel);
    if let Some(reason) = crate::running::unserved(&tool.name, gw.engine(&session.namespace).as_deref()) {
        return Err(RuntimeError::new(TOOL_DISABLED, format!("{reason}; nothing ran")));
    }
    let limit = gw.runtime.start_timeout() + Duration::from_millis(tool.timeout_ms) + WORKER_GRACE;
    let Some(trace) = trace else {
        let answer = tokio::time::timeout(limit, gw.runtime.call(&session.id, tool, request, &running.cancel)).await;
        return worker_outcome(answer, &running, tool, limit);
    };
    let start = SystemTime::now();
    let call_span = trace.worker_call_context().map(|(id, traceparent)| {
        request.traceparent = Some(traceparent);
        id
    });
    let preview = request.preview;
    let exchange = tokio::time::timeout(limit, gw.runtime.call(&session.id, tool, request, &running.cancel));
    let (answer, started_worker) = crate::trace::noting_worker_start(exchange).await;
    let outcome = worker_outcome(answer, &running, tool, limit);
    let tool_runtime = tool.runtime.kind().map_or("unknown", |k| k.as_str());
    trace.worker(start, started_worker, call_span, gw.runtime.name(), tool_runtime, preview, &outcome);
    outcome
}

/// The outcome of a call's exchange with its worker, bounded by `limit`.
fn worker_outcome(
    answer: Result<Result<CallResult, RuntimeError>, tokio::time::error::Elapsed>,
    running: &crate::running::Registration<'_>,
    tool: &ToolConfig,
    limit: Duration,
) -> Result<CallResult, RuntimeError> {
    match answer {
        Ok(Err(e)) if e.code == CANCELLED && running.stopped().is_some() => match running.stopped() {
            Some(Stop::Unserved(reason)) => {
                Err(RuntimeError::new(TOOL_DISABLED, format!("{reason}; the call was stopped while it ran (its worker stopped it)")))
            }
            _ => Err(RuntimeError {
                transient: true,
                ..RuntimeError::new(
                    INTERRUPTED,
                    "the gateway is shutting down and the call outlived its grace period; its worker stopped it, so it may have done part of its work",
                )
            }),
        },
        Ok(result) => result,
        Err(_) => Err(RuntimeError::new(
            "worker_timeout",
            format!("{}: the worker did not answer within {}s", tool.name, limit.as_secs()),
        )),
    }
}

/// Turns the call's record into its result line, writes and counts it; returns the status label.
fn account(call: &mut Call<'_>, tool: &ToolConfig, outcome: &Result<CallResult, RuntimeError>, started: Instant, decision: &str) -> &'static str {
    let gw = call.gw;
    let ns = &call.session.namespace;
    // The decision line is written; the record becomes the result line (no copy of the arguments).
    let result = &mut call.record;
    result.timestamp = timestamp();
    result.event = Some(AuditEvent::Result);
    result.duration_ms = Some(started.elapsed().as_millis() as u64);
    result.worker = Some(gw.runtime.name().to_owned());
    let status = match outcome {
        Ok(r) => {
            result.output_bytes = Some(r.output_bytes);
            result.truncated = Some(r.truncated);
            result.redacted = Some(r.redacted);
            if r.truncated {
                gw.metrics.truncation(ns, &tool.name);
            }
            match (r.is_error, r.error_code.as_deref()) {
                (false, _) => "ok",
                (true, Some("timeout")) => {
                    gw.metrics.timeout(ns, &tool.name);
                    result.code = Some("timeout".into());
                    "timeout"
                }
                (true, code) => {
                    result.code = code.map(str::to_owned);
                    "error"
                }
            }
        }
        Err(e) => {
            result.code = Some(e.code.to_owned());
            result.message = Some(e.message.clone());
            if e.code == CANCELLED {
                // The client's choice, not a failure of the worker.
                "cancelled"
            } else if e.code == TOOL_DISABLED {
                // The kill switch: an operator's choice, not a failure either.
                "disabled"
            } else if e.code == INTERRUPTED {
                INTERRUPTED
            } else {
                gw.metrics.worker_failed(ns, &tool.name, e.code);
                if e.code == "worker_timeout" {
                    gw.metrics.timeout(ns, &tool.name);
                }
                "worker_failed"
            }
        }
    };
    result.status = Some(status.to_owned());
    gw.audit.write_result(result);
    call.awaiting_result = false;
    gw.metrics.duration(ns, &tool.name, started.elapsed().as_secs_f64());
    let label = match status {
        "ok" | "cancelled" | "disabled" | INTERRUPTED => status,
        _ => "error",
    };
    gw.metrics.call(ns, &tool.name, decision, label);
    status
}

/// Marks the session tainted when the tool's output is untrusted; returns the tool that tainted it.
fn taint(session: &SessionRecord, tool: &ToolConfig, output: &CallResult) -> Option<String> {
    if tool.output_trust != OutputTrust::Untrusted {
        return None;
    }
    let mut taint = session.taint.lock().unwrap_or_else(|e| e.into_inner());
    taint.tainted_by.get_or_insert_with(|| tool.name.clone());
    taint.untrusted.add(&output.content);
    Some(tool.name.clone())
}

async fn run(mut call: Call<'_>, tool: &ToolConfig, args: Value, decision: &str, cancel: &CancellationToken) -> CallToolResult {
    let gw = call.gw;
    let session = call.session;
    gw.audit.write(&call.record);
    call.awaiting_result = true;
    let started = Instant::now();
    let request = CallRequest::new(call.record.call_id.clone(), args, false);
    let outcome = dispatch(gw, session, tool, request, cancel, call.trace.as_mut()).await;
    let result_start = call.trace.as_ref().map(|_| SystemTime::now());
    let status = account(&mut call, tool, &outcome, started, decision);
    let result = match outcome {
        Ok(output) => {
            let tainted_by = taint(session, tool, &output);
            gw.runtime.record_call(&session.id, false, tainted_by.as_deref());
            tool_result(&call.record.call_id, tool, output, session.tainted())
        }
        Err(e) if e.code == CANCELLED => {
            gw.runtime.record_call(&session.id, false, None);
            // Sent to no one (a cancelled request gets no response), but a complete result all the same.
            let message = format!("{} was cancelled by the client before it finished; its worker stopped it", tool.name);
            Refusal::new(CANCELLED, message).into_result(tool.output_schema.is_some())
        }
        Err(e) if e.code == TOOL_DISABLED => {
            gw.runtime.record_call(&session.id, true, None);
            Refusal::new(TOOL_DISABLED, e.message).into_result(tool.output_schema.is_some())
        }
        Err(e) if e.code == INTERRUPTED => {
            gw.runtime.record_call(&session.id, false, None);
            let refusal = Refusal::new(INTERRUPTED, format!("{} was interrupted: {e}", tool.name)).detail("transient", json!(true));
            refusal.into_result(tool.output_schema.is_some())
        }
        Err(e) => {
            gw.runtime.record_call(&session.id, false, None);
            let refusal = Refusal::new(e.code, format!("{} failed in its worker: {e}", tool.name))
                .detail("transient", json!(e.transient))
                .detail("status", json!(status));
            refusal.into_result(tool.output_schema.is_some())
        }
    };
    if let (Some(start), Some(trace)) = (result_start, call.trace.as_mut()) {
        trace.result(start, &call.record);
    }
    result
}

fn tool_result(call_id: &str, tool: &ToolConfig, output: CallResult, tainted: bool) -> CallToolResult {
    let mut content = output.content;
    if output.truncated {
        content.push_str(&format!("\n[output truncated: {} more bytes were cut at the tool's limit]", output.truncated_bytes));
    }
    let mut result = if output.is_error { CallToolResult::error(vec![Content::text(content)]) } else { CallToolResult::success(vec![Content::text(content)]) };
    if tool.output_schema.is_some() && !output.is_error {
        result.structured_content = output.structured;
    }
    let mut meta = serde_json::Map::new();
    meta.insert("toolwarden.dev/callId".into(), json!(call_id));
    if let Some(code) = output.error_code.filter(|_| output.is_error) {
        meta.insert("toolwarden.dev/code".into(), json!(code));
    }
    if output.truncated {
        meta.insert("toolwarden.dev/truncated".into(), json!(true));
    }
    if output.redacted {
        meta.insert("toolwarden.dev/redacted".into(), json!(true));
    }
    if tainted {
        meta.insert("toolwarden.dev/sessionTainted".into(), json!(true));
    }
    result.meta = Some(rmcp::model::MetaObject(meta));
    result
}

/// First call of a tool needing confirmation: run its preview (when it has one) and hand out a token.
async fn confirm_preview(
    mut call: Call<'_>,
    tool: &ToolConfig,
    args: Value,
    binding: TokenBinding<'_>,
    ttl: Duration,
    reason: &str,
    cancel: &CancellationToken,
) -> CallToolResult {
    let gw = call.gw;
    let (token, expires_at) = gw.approvals.issue_confirm(binding, ttl);
    let preview = if tool.preview.is_some() {
        call.record.status = Some("preview".to_owned());
        gw.audit.write(&call.record);
        call.audited = true;
        call.awaiting_result = true;
        call.record.status = None;
        let started = Instant::now();
        let request = CallRequest::new(call.record.call_id.clone(), args.clone(), true);
        let outcome = dispatch(gw, call.session, tool, request, cancel, call.trace.as_mut()).await;
        let mut result = call.record.clone();
        result.timestamp = timestamp();
        result.event = Some(AuditEvent::Result);
        result.status = Some(if matches!(&outcome, Ok(r) if !r.is_error) { "preview_ok" } else { "preview_failed" }.to_owned());
        result.duration_ms = Some(started.elapsed().as_millis() as u64);
        result.worker = Some(gw.runtime.name().to_owned());
        result.redacted = outcome.as_ref().ok().map(|r| r.redacted);
        gw.audit.write_result(&result);
        call.awaiting_result = false;
        match outcome {
            Ok(r) if !r.is_error => r.content,
            Ok(r) => format!("(the preview failed: {})", r.content.trim()),
            Err(e) => format!("(no preview: {e})"),
        }
    } else {
        format!("(this tool has no preview) {} with arguments {}", tool.name, call.record.arguments)
    };
    let message = format!(
        "{reason}. Nothing ran yet. Preview:\n{}\nTo run it, repeat the identical call with the argument confirm_token = \"{token}\" (single use, valid until {}).",
        preview.trim_end(),
        rfc3339(expires_at)
    );
    // The token never reaches the audit log: it is as good as the confirmation itself.
    let refusal = Refusal::new("confirmation_required", message)
        .audit(format!("{reason}; preview shown and a confirm token issued"))
        .detail("confirmToken", json!(token))
        .detail("expiresAt", json!(rfc3339(expires_at)))
        .detail("preview", json!(preview));
    call.refuse(refusal, "confirm", "pending", Some(tool))
}

#[path = "call_human.rs"]
mod human;

#[path = "call_used.rs"]
mod used;

#[cfg(test)]
#[path = "call_tests.rs"]
mod tests;
