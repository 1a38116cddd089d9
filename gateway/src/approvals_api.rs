//! `GET /approvals`, `POST /approvals/{id}/approve|deny`: human approvals over HTTP, Bearer-authenticated
//! like `/mcp`. Errors are `{"error": {"code", "message"}}` (docs/approvals.md).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::approvals::{Approval, DecideError, may_decide};
use crate::approvals_check::{SessionNow, approvable_now};
use crate::auth::Principal;
use crate::runtime::SharedApproval;
use crate::http::{App, unauthorized};

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

/// 403 for a browser origin the gateway does not accept, as on `/mcp` (see [`crate::origin`]).
fn refuse_origin(app: &App, headers: &HeaderMap) -> Option<Response> {
    crate::http::refuse_origin(&app.gateway, headers).map(|_| error(StatusCode::FORBIDDEN, "origin_not_allowed", crate::origin::REFUSAL))
}

pub async fn list(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_origin(&app, &headers) {
        return refused;
    }
    let principal = match app.gateway.auth.authenticate(&headers).await {
        Ok(p) => p,
        Err(e) => return unauthorized(&app.gateway, &headers, None, e),
    };
    let gateway = &app.gateway;
    let local = gateway.approvals.visible_to(&principal.subject, &principal.groups);
    let mut approvals: Vec<serde_json::Value> = local.iter().map(|a| json!(a.view())).collect();
    // Approvals other replicas hold (kubernetes runtime): listed from their McpSessions.
    match gateway.runtime.shared_approvals(&gateway.namespaces()).await {
        Ok(shared) => approvals.extend(
            shared
                .iter()
                .filter(|s| !local.iter().any(|a| a.id == s.approval.id))
                .filter(|s| s.subject == principal.subject || shared_may_decide(gateway, s, &principal).is_ok())
                .map(shared_view),
        ),
        Err(e) => tracing::warn!(error = %e, "listing approvals held by other gateway replicas"),
    }
    Json(json!({"approvals": approvals})).into_response()
}

/// The same view as a local approval, from what the McpSession shows.
fn shared_view(s: &SharedApproval) -> serde_json::Value {
    let a = &s.approval;
    json!({
        "id": a.id, "namespace": s.namespace, "tool": a.tool, "subject": s.subject, "sessionId": s.session,
        "arguments": a.arguments_preview, "reason": a.reason, "policy": a.policy, "createdAt": a.requested_at,
        "expiresAt": a.expires_at, "state": crate::approvals::state_str(a.state), "decidedBy": a.decided_by,
    })
}

/// Approvers of a shared approval come from the policy that asked for it, in this replica's config.
fn shared_may_decide(gateway: &crate::state::Gateway, s: &SharedApproval, principal: &Principal) -> Result<(), String> {
    let engine = gateway.engine(&s.namespace).ok_or_else(|| format!("namespace {} serves no tools here", s.namespace))?;
    let policy = engine
        .config()
        .policies
        .iter()
        .find(|p| p.name == s.approval.policy)
        .ok_or_else(|| format!("policy {} that asked for this approval no longer exists", s.approval.policy))?;
    let (approvers, allow_self) = match &policy.approval {
        Some(a) => (a.approvers.clone(), a.allow_self_approval),
        None => (Default::default(), false),
    };
    may_decide(&approvers, allow_self, &s.subject, &principal.subject, &principal.groups).map_err(str::to_owned)
}

/// Decides an approval another replica holds, on its McpSession; that replica's watch picks it up.
async fn decide_shared(gateway: &crate::state::Gateway, id: &str, principal: &Principal, approve: bool, reason: Option<String>) -> Response {
    let shared = match gateway.runtime.shared_approvals(&gateway.namespaces()).await {
        Ok(list) => list.into_iter().find(|s| s.approval.id == id),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "approvals_unavailable", format!("cannot read shared approvals: {e}")),
    };
    let Some(shared) = shared else {
        return error(StatusCode::NOT_FOUND, "unknown_approval", format!("no approval {id} (it may have expired and been forgotten)"));
    };
    let verb = if approve { "approved" } else { "denied" };
    let refuse = |status: StatusCode, code: &str, message: String| {
        audit_decision(gateway, &shared_line(&shared), &principal.subject, "refused", Some(code), format!("{id} could not be {verb}: {message}"));
        error(status, code, message)
    };
    if let Err(why) = shared_may_decide(gateway, &shared, principal) {
        return refuse(StatusCode::FORBIDDEN, "not_an_approver", why);
    }
    // The session's taint is known to the replica that holds it, which checks the approval again when
    // the call runs; the config is the same everywhere, so a disabled tool is refused here already.
    if let Some(reason) = crate::running::unserved(&shared.approval.tool, gateway.engine(&shared.namespace).as_deref()).filter(|_| approve) {
        return refuse(StatusCode::CONFLICT, "approval_stale", format!("approval {id} can no longer be used: {reason}"));
    }
    match gateway.runtime.decide_shared_approval(&shared, approve, &principal.subject, reason).await {
        Ok(Some(decided)) => {
            tracing::info!(approval = %id, tool = %decided.tool, requester = %shared.subject, by = %principal.subject, approve, "shared approval decided");
            let shared = SharedApproval { approval: decided, ..shared };
            audit_decision(gateway, &shared_line(&shared), &principal.subject, verb, None, format!("approval {id} {verb} by {}", principal.subject));
            Json(json!({"approval": shared_view(&shared)})).into_response()
        }
        Ok(None) => refuse(StatusCode::CONFLICT, "already_decided", format!("approval {id} is no longer pending")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "approvals_unavailable", format!("deciding approval {id}: {e}")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The body, or why it could not be read (too large, the client left): answered in the API's error form.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

pub async fn approve(state: State<App>, path: Path<String>, headers: HeaderMap, body: Body) -> Response {
    decide(state, path, headers, body, true).await
}

pub async fn deny(state: State<App>, path: Path<String>, headers: HeaderMap, body: Body) -> Response {
    decide(state, path, headers, body, false).await
}

async fn decide(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap, body: Body, approve: bool) -> Response {
    if let Some(refused) = refuse_origin(&app, &headers) {
        return refused;
    }
    let gateway = &app.gateway;
    let principal = match gateway.auth.authenticate(&headers).await {
        Ok(p) => p,
        Err(e) => return unauthorized(gateway, &headers, None, e),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "bad_request" };
            return error(status, code, format!("the body could not be read: {}", rejection.body_text()));
        }
    };
    let body: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("the body must be JSON such as {{\"reason\": \"...\"}}: {e}")),
        }
    };
    let reason = body.reason.map(|r| r.chars().take(1000).collect::<String>());
    let body_reason = reason.clone();
    // The state an approval is judged against: its session's and its namespace's config, now.
    let snapshot = gateway.approvals.get(&id);
    let session = snapshot.as_ref().and_then(|a| gateway.sessions.get(&a.session_id)).map(|s| SessionNow { tainted: s.tainted() });
    let config = snapshot.as_ref().and_then(|a| gateway.engine(&a.namespace));
    let approvable = |a: &Approval| approvable_now(a, session, config.as_deref(), &principal.subject, &principal.groups);
    let verb = if approve { "approved" } else { "denied" };
    match gateway.approvals.decide(&id, &principal.subject, &principal.groups, approve, reason, approvable) {
        Ok(approval) => {
            tracing::info!(approval = %id, tool = %approval.tool, requester = %approval.subject, by = %principal.subject, "approval {verb}");
            audit_decision(gateway, &local_line(&approval), &principal.subject, verb, None, format!("approval {id} {verb} by {}", principal.subject));
            gateway.approvals_changed(&approval.session_id);
            Json(json!({"approval": approval.view()})).into_response()
        }
        Err(DecideError::Unknown) => decide_shared(gateway, &id, &principal, approve, body_reason).await,
        Err(refused) => {
            let (status, code, message) = match refused {
                DecideError::NotAnApprover(why) => (StatusCode::FORBIDDEN, "not_an_approver", why),
                DecideError::Stale(why) => (StatusCode::CONFLICT, "approval_stale", why),
                DecideError::AlreadyDecided(state) => (StatusCode::CONFLICT, "already_decided", format!("approval {id} is already {state}")),
                DecideError::Unknown => (StatusCode::NOT_FOUND, "unknown_approval", format!("no approval {id}")),
            };
            if let Some(approval) = &snapshot {
                tracing::warn!(approval = %id, by = %principal.subject, code, "refused to let an approval be {verb}");
                audit_decision(gateway, &local_line(approval), &principal.subject, "refused", Some(code), format!("{id} could not be {verb}: {message}"));
            }
            error(status, code, message)
        }
    }
}

/// What an approval's audit line says about it, wherever it is held.
struct ApprovalLine {
    /// The call that asked (unknown for an approval another replica holds).
    call_id: String,
    session_id: String,
    namespace: String,
    tool: String,
    policy: String,
    arguments: serde_json::Value,
    state: &'static str,
}

fn local_line(a: &Approval) -> ApprovalLine {
    ApprovalLine {
        call_id: a.call_id.clone(),
        session_id: a.session_id.clone(),
        namespace: a.namespace.clone(),
        tool: a.tool.clone(),
        policy: a.policy.clone(),
        arguments: a.arguments.clone(),
        state: crate::approvals::state_str(a.state),
    }
}

fn shared_line(s: &SharedApproval) -> ApprovalLine {
    let preview = s.approval.arguments_preview.as_deref();
    ApprovalLine {
        call_id: String::new(),
        session_id: s.session.clone(),
        namespace: s.namespace.clone(),
        tool: s.approval.tool.clone(),
        policy: s.approval.policy.clone(),
        arguments: preview.and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default(),
        state: crate::approvals::state_str(s.approval.state),
    }
}

/// The audit line of an approver's decision (or its refusal): the approval's call, session and tool, who
/// decided and the outcome; the line's `subject` is the approver, `call_id` the call that asked.
fn audit_decision(gateway: &crate::state::Gateway, approval: &ApprovalLine, decider: &str, status: &str, code: Option<&str>, message: String) {
    let record = toolwarden_core::audit::AuditRecord {
        timestamp: crate::audit::timestamp(),
        event: Some(toolwarden_core::audit::AuditEvent::Approval),
        call_id: approval.call_id.clone(),
        session_id: approval.session_id.clone(),
        subject: decider.to_owned(),
        namespace: approval.namespace.clone(),
        tool: approval.tool.clone(),
        arguments: approval.arguments.clone(),
        policy: Some(approval.policy.clone()),
        decision: "human".to_owned(),
        code: code.map(str::to_owned),
        approval: approval.state.to_owned(),
        status: Some(status.to_owned()),
        message: Some(message),
        ..Default::default()
    };
    gateway.audit.write(&record);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::future::BoxFuture;
    use toolwarden_core::resources::{ApprovalState, PendingApproval};

    use super::*;
    use crate::runtime::{RuntimeError, SessionInfo, WorkerRuntime};

    /// Holds one approval "on another replica" and records the decisions written to it.
    struct OtherReplica {
        approval: SharedApproval,
        decided: Mutex<Vec<(bool, String)>>,
    }

    impl WorkerRuntime for OtherReplica {
        fn name(&self) -> &'static str {
            "other"
        }
        fn start_session(&self, _: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
            Box::pin(async { Ok(()) })
        }
        fn call<'a>(
            &'a self,
            _: &'a str,
            _: &'a toolwarden_core::config::ToolConfig,
            _: toolwarden_worker::protocol::CallRequest,
            _: &'a tokio_util::sync::CancellationToken,
        ) -> BoxFuture<'a, Result<toolwarden_worker::protocol::CallResult, RuntimeError>> {
            Box::pin(async { Err(RuntimeError::new("worker_start_failed", "no workers here")) })
        }
        fn start_timeout(&self) -> std::time::Duration {
            std::time::Duration::from_secs(1)
        }
        fn end_session<'a>(&'a self, _: &'a str, _: &'static str) -> BoxFuture<'a, ()> {
            Box::pin(async {})
        }
        fn shutdown(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn shared_approvals<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<Vec<SharedApproval>, RuntimeError>> {
            Box::pin(async { Ok(vec![self.approval.clone()]) })
        }
        fn decide_shared_approval<'a>(
            &'a self,
            _: &'a SharedApproval,
            approve: bool,
            decided_by: &'a str,
            _: Option<String>,
        ) -> BoxFuture<'a, Result<Option<PendingApproval>, RuntimeError>> {
            self.decided.lock().unwrap().push((approve, decided_by.to_owned()));
            let state = if approve { ApprovalState::Approved } else { ApprovalState::Denied };
            let decided = PendingApproval { state, decided_by: Some(decided_by.to_owned()), ..self.approval.approval.clone() };
            Box::pin(async move { Ok(Some(decided)) })
        }
    }

    const CONFIG: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: delete-greeting}
spec:
  description: Deletes the greeting.
  effect: destructive
  inputSchema: {type: object}
  runtime: {exec: {image: busybox:1, command: [cat]}}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: p}
spec:
  subjects: {users: [developer]}
  tools: {names: [delete-greeting]}
  decision: allow
  approval: {mode: human, approvers: {users: [s]}}
"#;

    fn config(yaml: &str) -> toolwarden_core::config::GatewayConfig {
        let manifests = toolwarden_core::manifest::load_str(yaml, std::path::Path::new("t.yaml")).unwrap();
        let (mut configs, _) = toolwarden_core::compiler::compile_manifests(&manifests).unwrap();
        configs.remove("default").unwrap()
    }

    async fn approve_on(yaml: &str, audit: &std::path::Path) -> (Arc<OtherReplica>, Response) {
        let approval = PendingApproval {
            id: "ap-remote".into(),
            tool: "delete_greeting".into(),
            arguments_hash: "h".into(),
            arguments_preview: Some(r#"{"name":"old"}"#.into()),
            policy: "p".into(),
            state: ApprovalState::Pending,
            ..Default::default()
        };
        let shared = SharedApproval { namespace: "default".into(), session: "s-remote".into(), subject: "developer".into(), approval };
        let runtime = Arc::new(OtherReplica { approval: shared, decided: Mutex::default() });
        let gateway = crate::state::Gateway::for_tests_with_audit(runtime.clone(), Some(audit)).await;
        gateway.apply_config(config(yaml)).unwrap();
        let (service, _) = crate::http::mcp_service(&gateway, tokio_util::sync::CancellationToken::new());
        let app = App::new(gateway, service);
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::AUTHORIZATION, format!("Bearer {}", "t".repeat(32)).parse().unwrap());
        let response = approve(State(app.clone()), Path("ap-remote".into()), headers, Ok(Bytes::new())).await;
        app.gateway.audit.flush();
        (runtime, response)
    }

    /// The audit lines after the chain's start record.
    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        let lines = std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>();
        lines.into_iter().filter(|l| l["event"] != "chain_start").collect()
    }

    #[tokio::test]
    async fn an_approval_held_by_another_replica_is_decided_there_and_audited_here() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let (runtime, response) = approve_on(CONFIG, &audit).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(*runtime.decided.lock().unwrap(), [(true, "s".to_owned())]);
        let line = &lines(&audit)[0];
        assert_eq!((line["event"].as_str(), line["status"].as_str(), line["subject"].as_str()), (Some("approval"), Some("approved"), Some("s")), "{line}");
        assert_eq!((line["session_id"].as_str(), line["arguments"]["name"].as_str()), (Some("s-remote"), Some("old")), "{line}");
    }

    #[tokio::test]
    async fn an_approval_held_by_another_replica_cannot_be_given_for_a_disabled_tool() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let disabled = CONFIG.replace("  effect: destructive\n", "  effect: destructive\n  disabled: true\n  disabledReason: frozen\n");
        let (runtime, response) = approve_on(&disabled, &audit).await;
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert!(runtime.decided.lock().unwrap().is_empty(), "nothing was written to the McpSession");
        let line = &lines(&audit)[0];
        assert_eq!((line["status"].as_str(), line["code"].as_str()), (Some("refused"), Some("approval_stale")), "{line}");
        assert!(line["message"].as_str().unwrap().contains("delete_greeting is disabled: frozen"), "{line}");
    }
}
