//! Confirm tokens and human approvals across gateway replicas: two (or three) gateways share one session
//! record, as replicas share a session's McpSession. The record here is a model of the McpSession: one
//! holder at a time, a status each holder flushes, and uses written only by the holder (the kubernetes
//! runtime's conditional write, tested against a scripted API server in gateway/tests/kubernetes_runtime.rs).
//! A replica is "killed" by no longer using it; the next takes the session over through `failover`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rmcp::model::{CallToolResponse, CallToolResult};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use toolwarden_core::config::ToolConfig;
use toolwarden_core::resources::{ApprovalState, McpSession, McpSessionSpec, McpSessionStatus, PendingApproval};
use toolwarden_worker::protocol::{CallRequest, CallResult};

use crate::auth::Principal;
use crate::failover::{Route, take_over};
use crate::runtime::{RuntimeError, SessionHome, SessionInfo, SessionUse, SharedApproval, WorkerRuntime};
use crate::sessions::{Caller, NewSession, SessionRecord};
use crate::state::Gateway;

/// What every replica sees: the session's McpSession, and what ran in its workers.
#[derive(Default)]
struct Cluster {
    holder: Mutex<String>,
    status: Mutex<McpSessionStatus>,
    runs: Mutex<Vec<String>>,
    /// The API server refuses writes of uses (it is down, or the write keeps conflicting).
    refuse_writes: AtomicBool,
}

/// One replica's runtime: its memory of the session's status, flushed to the record while it holds it.
struct Replica {
    id: &'static str,
    cluster: Arc<Cluster>,
    memory: Mutex<HashMap<String, McpSessionStatus>>,
}

impl Replica {
    fn holds(&self) -> bool {
        *self.cluster.holder.lock().unwrap() == self.id
    }

    /// The status flusher: this replica's memory becomes the record (while it holds the session).
    fn flush(&self) {
        if self.holds()
            && let Some(status) = self.memory.lock().unwrap().get("sess-1")
        {
            *self.cluster.status.lock().unwrap() = status.clone();
        }
    }
}

impl WorkerRuntime for Replica {
    fn name(&self) -> &'static str {
        "replica"
    }
    fn start_session(&self, info: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
        *self.cluster.holder.lock().unwrap() = self.id.to_owned();
        self.memory.lock().unwrap().insert(info.id, McpSessionStatus::default());
        Box::pin(async { Ok(()) })
    }
    fn call<'a>(&'a self, _: &'a str, tool: &'a ToolConfig, request: CallRequest, _: &'a CancellationToken) -> BoxFuture<'a, Result<CallResult, RuntimeError>> {
        self.cluster.runs.lock().unwrap().push(format!("{} on {}: {}", tool.name, self.id, request.arguments));
        Box::pin(async { Ok(CallResult { content: "done".into(), ..Default::default() }) })
    }
    fn start_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn end_session<'a>(&'a self, _: &'a str, _: &'static str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn set_pending_approvals(&self, session_id: &str, mut approvals: Vec<PendingApproval>) {
        if let Some(status) = self.memory.lock().unwrap().get_mut(session_id) {
            crate::kubernetes::session_store::merge_remote_decisions(&mut approvals, &status.pending_approvals);
            status.pending_approvals = approvals;
        }
    }
    fn record_use<'a>(&'a self, session_id: &'a str, used: &'a SessionUse) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            if self.cluster.refuse_writes.load(Ordering::SeqCst) {
                return Err(RuntimeError { transient: true, ..RuntimeError::new("api_error", "Kubernetes API: the API server is unavailable") });
            }
            if !self.holds() {
                return Err(RuntimeError::new("session_moved", "session sess-1 moved to another gateway replica"));
            }
            let now = jiff::Timestamp::now();
            used.apply(&mut self.cluster.status.lock().unwrap(), now).map_err(crate::runtime::kubernetes::runtime_error)?;
            if let Some(status) = self.memory.lock().unwrap().get_mut(session_id) {
                used.apply(status, now).map_err(crate::runtime::kubernetes::runtime_error)?;
            }
            Ok(())
        })
    }
    fn remote_decisions(&self, _: &str) -> Vec<PendingApproval> {
        // The McpSession watch folds decisions made elsewhere into the holder's view.
        self.cluster.status.lock().unwrap().pending_approvals.iter().filter(|a| a.state != ApprovalState::Pending).cloned().collect()
    }
    fn shared_approvals<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<Vec<SharedApproval>, RuntimeError>> {
        let status = self.cluster.status.lock().unwrap().clone();
        let shared = status
            .pending_approvals
            .into_iter()
            .filter(|a| a.state == ApprovalState::Pending)
            .map(|approval| SharedApproval { namespace: "default".into(), session: "sess-1".into(), subject: "developer".into(), approval })
            .collect();
        Box::pin(async { Ok(shared) })
    }
    fn decide_shared_approval<'a>(
        &'a self,
        shared: &'a SharedApproval,
        approve: bool,
        decided_by: &'a str,
        reason: Option<String>,
    ) -> BoxFuture<'a, Result<Option<PendingApproval>, RuntimeError>> {
        let mut status = self.cluster.status.lock().unwrap();
        let decided = status.pending_approvals.iter_mut().find(|a| a.id == shared.approval.id && a.state == ApprovalState::Pending).map(|a| {
            a.state = if approve { ApprovalState::Approved } else { ApprovalState::Denied };
            a.decided_by = Some(decided_by.to_owned());
            a.reason = reason;
            a.clone()
        });
        Box::pin(async { Ok(decided) })
    }
    fn gateway_id(&self) -> Option<&str> {
        Some(self.id)
    }
    fn locate_session<'a>(&'a self, _: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<SessionHome>, RuntimeError>> {
        Box::pin(async move { Ok((id == "sess-1").then(|| self.home())) })
    }
    fn take_over<'a>(&'a self, _: &'a SessionHome, id: &'a str) -> BoxFuture<'a, Result<McpSessionStatus, RuntimeError>> {
        *self.cluster.holder.lock().unwrap() = self.id.to_owned();
        let status = self.cluster.status.lock().unwrap().clone();
        self.memory.lock().unwrap().insert(id.to_owned(), status.clone());
        Box::pin(async { Ok(status) })
    }
}

impl Replica {
    fn home(&self) -> SessionHome {
        let spec = McpSessionSpec {
            subject: "developer".into(),
            groups: vec![],
            client: toolwarden_core::resources::ClientInfo { name: "agent".into(), version: Some("1".into()) },
            protocol_version: Some("2025-06-18".into()),
            gateway: None,
            started_at: None,
            idle_timeout_seconds: None,
            max_lifetime_seconds: None,
        };
        let mut session = McpSession::new("sess-1", spec);
        session.metadata.namespace = Some("default".into());
        session.status = Some(self.cluster.status.lock().unwrap().clone());
        SessionHome { session, holder: self.cluster.holder.lock().unwrap().clone(), address: None }
    }
}

const CONFIG: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: delete-note}
spec:
  description: Deletes a note.
  effect: destructive
  inputSchema: {type: object, properties: {path: {type: string}}}
  runtime: {exec: {image: busybox:1, command: [rm]}}
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: send-note}
spec:
  description: Sends a note to the team.
  effect: external
  inputSchema: {type: object, properties: {text: {type: string}}}
  runtime: {exec: {image: busybox:1, command: [cat]}}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: delete-with-alice}
spec:
  subjects: {users: [developer]}
  tools: {names: [delete-note]}
  decision: allow
  approval: {mode: human, approvers: {users: [alice, s]}}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: send-confirmed}
spec:
  subjects: {users: [developer]}
  tools: {names: [send-note]}
  decision: allow
  approval: {mode: confirm}
"#;

const RELEASE_KEY: &[u8] = b"the-release-key-shared-by-every-replica";

/// A replica of the release (or of another release, with another key).
async fn replica(id: &'static str, cluster: &Arc<Cluster>, key: &[u8]) -> (Arc<Gateway>, Arc<Replica>) {
    let runtime = Arc::new(Replica { id, cluster: cluster.clone(), memory: Mutex::default() });
    let gateway = Gateway::for_tests(runtime.clone()).await;
    let gateway = Arc::new(Arc::into_inner(gateway).expect("not shared yet").with_confirm_key(key.to_vec()));
    let manifests = toolwarden_core::manifest::load_str(CONFIG, std::path::Path::new("replicas.yaml")).unwrap();
    let (mut configs, _) = toolwarden_core::compiler::compile_manifests(&manifests).unwrap();
    gateway.apply_config(configs.remove("default").unwrap()).unwrap();
    (gateway, runtime)
}

fn new_session() -> NewSession {
    let principal = Principal { subject: "developer".into(), groups: vec![], credential_id: "c".into() };
    NewSession {
        id: "sess-1".into(),
        caller: Caller { namespace: "default".into(), principal },
        client_name: "agent".into(),
        client_version: "1".into(),
        protocol_version: Some("2025-06-18".into()),
        stateless: false,
    }
}

/// The holder is lost; the session's next request reaches `gateway`, which takes it over.
async fn continue_on(gateway: &Arc<Gateway>, runtime: &Replica) -> Arc<SessionRecord> {
    assert!(matches!(take_over(gateway, "sess-1", runtime.home()).await, Route::Restore));
    let carried = gateway.failover.restored("sess-1");
    gateway.resume_session(new_session(), carried).await
}

async fn call(gateway: &Gateway, session: &Arc<SessionRecord>, tool: &str, arguments: Value) -> CallToolResult {
    let arguments = arguments.as_object().cloned();
    let response = crate::call::call_tool(gateway, session, tool, arguments, crate::elicit::Asking::No, &CancellationToken::new(), None).await;
    let CallToolResponse::Complete(result) = response else { panic!("a complete result") };
    result
}

fn code(result: &CallToolResult) -> String {
    result.structured_content.as_ref().and_then(|s| s["code"].as_str()).unwrap_or("ok").to_owned()
}

fn field(result: &CallToolResult, key: &str) -> String {
    result.structured_content.as_ref().and_then(|s| s[key].as_str()).unwrap_or_default().to_owned()
}

fn runs(cluster: &Cluster) -> Vec<String> {
    cluster.runs.lock().unwrap().clone()
}

#[tokio::test]
async fn a_confirm_token_used_before_a_failover_is_refused_on_the_replica_that_takes_over() {
    let cluster = Arc::new(Cluster::default());
    let (a, a_runtime) = replica("gw-a", &cluster, RELEASE_KEY).await;
    let (b, b_runtime) = replica("gw-b", &cluster, RELEASE_KEY).await;
    let on_a = a.start_session(new_session()).await;
    let args = json!({"text": "release is out"});
    let preview = call(&a, &on_a, "send_note", args.clone()).await;
    assert_eq!(code(&preview), "confirmation_required");
    let token = field(&preview, "confirmToken");
    let confirmed = json!({"text": "release is out", "confirm_token": token});
    // Used on A, which dies before its status flusher runs: the use was written before the call ran.
    assert_eq!(code(&call(&a, &on_a, "send_note", confirmed.clone()).await), "ok");
    assert_eq!(runs(&cluster).len(), 1);
    assert_eq!(cluster.status.lock().unwrap().used_confirm_tokens.len(), 1, "recorded on the McpSession");

    // The client's retry (it saw a 502) reaches B, which continues the session.
    let on_b = continue_on(&b, &b_runtime).await;
    let replay = call(&b, &on_b, "send_note", confirmed).await;
    assert_eq!(code(&replay), "confirm_token_invalid");
    assert_eq!(field(&replay, "reason"), "reused");
    assert!(field(&replay, "message").contains("already used"), "{replay:?}");
    assert_eq!(runs(&cluster).len(), 1, "the call did not run twice");
    drop(a_runtime);
}

#[tokio::test]
async fn a_confirm_token_issued_before_a_failover_runs_once_on_the_replica_that_takes_over() {
    let cluster = Arc::new(Cluster::default());
    let (a, _a_runtime) = replica("gw-a", &cluster, RELEASE_KEY).await;
    let (b, b_runtime) = replica("gw-b", &cluster, RELEASE_KEY).await;
    let on_a = a.start_session(new_session()).await;
    let preview = call(&a, &on_a, "send_note", json!({"text": "hello"})).await;
    let confirmed = json!({"text": "hello", "confirm_token": field(&preview, "confirmToken")});

    let on_b = continue_on(&b, &b_runtime).await;
    assert_eq!(code(&call(&b, &on_b, "send_note", confirmed.clone()).await), "ok", "another replica's token is valid here");
    let again = call(&b, &on_b, "send_note", confirmed).await;
    assert_eq!((code(&again).as_str(), field(&again, "reason").as_str()), ("confirm_token_invalid", "reused"));
    assert_eq!(runs(&cluster), [r#"send_note on gw-b: {"text":"hello"}"#]);

    // A replica of another release (another key) accepts none of this release's tokens.
    let other_cluster = Arc::new(Cluster::default());
    let (stranger, _) = replica("gw-x", &other_cluster, b"another-release-has-another-key-entirely").await;
    let on_stranger = stranger.start_session(new_session()).await;
    let preview = call(&b, &on_b, "send_note", json!({"text": "second"})).await;
    let foreign = call(&stranger, &on_stranger, "send_note", json!({"text": "second", "confirm_token": field(&preview, "confirmToken")})).await;
    assert_eq!((code(&foreign).as_str(), field(&foreign, "reason").as_str()), ("confirm_token_invalid", "bad_signature"));
    assert!(runs(&other_cluster).is_empty());
}

#[tokio::test]
async fn a_use_that_cannot_be_recorded_refuses_the_call_and_nothing_runs() {
    let cluster = Arc::new(Cluster::default());
    let (a, a_runtime) = replica("gw-a", &cluster, RELEASE_KEY).await;
    let on_a = a.start_session(new_session()).await;
    let preview = call(&a, &on_a, "send_note", json!({"text": "hi"})).await;
    let confirmed = json!({"text": "hi", "confirm_token": field(&preview, "confirmToken")});
    let parked = call(&a, &on_a, "delete_note", json!({"path": "a.md"})).await;
    let id = field(&parked, "approvalId");
    a.approvals.decide(&id, "alice", &[], true, None, |_| Ok(())).unwrap();

    cluster.refuse_writes.store(true, Ordering::SeqCst);
    let refused = call(&a, &on_a, "send_note", confirmed.clone()).await;
    assert_eq!(code(&refused), "approval_not_recorded");
    assert_eq!(refused.structured_content.as_ref().unwrap()["transient"], true);
    assert!(field(&refused, "message").contains("the token still counts"), "{refused:?}");
    let refused = call(&a, &on_a, "delete_note", json!({"path": "a.md"})).await;
    assert_eq!(code(&refused), "approval_not_recorded");
    assert!(field(&refused, "message").contains(&format!("approval {id} could not be recorded")), "{refused:?}");
    assert!(runs(&cluster).is_empty(), "nothing ran");
    a_runtime.flush();
    assert!(cluster.status.lock().unwrap().used_confirm_tokens.is_empty(), "nothing recorded as used");

    // Once the record can be written, the same token and the same approval run their call, once.
    cluster.refuse_writes.store(false, Ordering::SeqCst);
    assert_eq!(code(&call(&a, &on_a, "send_note", confirmed).await), "ok");
    assert_eq!(code(&call(&a, &on_a, "delete_note", json!({"path": "a.md"})).await), "ok");
    assert_eq!(code(&call(&a, &on_a, "delete_note", json!({"path": "a.md"})).await), "approval_required", "used: asks anew");
    assert_eq!(runs(&cluster).len(), 2);
}

#[tokio::test]
async fn approvals_carry_over_to_the_replica_that_takes_the_session_over() {
    let cluster = Arc::new(Cluster::default());
    let (a, a_runtime) = replica("gw-a", &cluster, RELEASE_KEY).await;
    let (b, b_runtime) = replica("gw-b", &cluster, RELEASE_KEY).await;
    let on_a = a.start_session(new_session()).await;
    let ask = |path: &str| json!({"path": path});
    let mut ids = HashMap::new();
    for path in ["approved-on-a.md", "approved-later.md", "denied.md", "pending.md"] {
        let parked = call(&a, &on_a, "delete_note", ask(path)).await;
        assert_eq!(code(&parked), "approval_required");
        ids.insert(path, field(&parked, "approvalId"));
    }
    a.approvals.decide(&ids["approved-on-a.md"], "alice", &[], true, None, |_| Ok(())).unwrap();
    a.approvals.decide(&ids["denied.md"], "alice", &[], false, Some("keep it".into()), |_| Ok(())).unwrap();
    a.approvals_changed("sess-1");
    a_runtime.flush();
    // A is lost. An approver decides the other one through B, which does not hold the session yet: on
    // the McpSession.
    let shared = b.runtime.shared_approvals(&[]).await.unwrap();
    let later = shared.iter().find(|s| s.approval.id == ids["approved-later.md"]).expect("listed on B");
    b.runtime.decide_shared_approval(later, true, "alice", None).await.unwrap().expect("decided");

    let on_b = continue_on(&b, &b_runtime).await;
    for path in ["approved-on-a.md", "approved-later.md"] {
        assert_eq!(code(&call(&b, &on_b, "delete_note", ask(path)).await), "ok", "{path} runs on B");
        let again = call(&b, &on_b, "delete_note", ask(path)).await;
        assert_eq!(code(&again), "approval_required", "{path}: a second identical call asks anew");
        assert_ne!(field(&again, "approvalId"), ids[path]);
    }
    let denied = call(&b, &on_b, "delete_note", ask("denied.md")).await;
    assert_eq!(code(&denied), "approval_denied");
    assert!(field(&denied, "message").contains("alice denied approval") && field(&denied, "message").contains("keep it"), "{denied:?}");
    assert_eq!(code(&call(&b, &on_b, "delete_note", ask("denied.md")).await), "approval_required", "reported once");
    let pending = call(&b, &on_b, "delete_note", ask("pending.md")).await;
    assert_eq!((code(&pending), field(&pending, "approvalId")), ("approval_required".to_owned(), ids["pending.md"].clone()), "still the same one");
    // Still decidable, on B now, by the approver the policy names.
    let decided = b.approvals.decide(&ids["pending.md"], "mallory", &[], true, None, |_| Ok(()));
    assert!(b.approvals.get(&ids["pending.md"]).is_some_and(|a| a.may_decide("alice", &[]).is_ok()), "its approvers came with it");
    assert!(matches!(decided, Err(crate::approvals::DecideError::NotAnApprover(_))));
    assert_eq!(runs(&cluster), [
        r#"delete_note on gw-b: {"path":"approved-on-a.md"}"#,
        r#"delete_note on gw-b: {"path":"approved-later.md"}"#,
    ]);

    // B is lost too, before flushing: C refuses to use the approvals B used (recorded before each run).
    let (c, c_runtime) = replica("gw-c", &cluster, RELEASE_KEY).await;
    let on_c = continue_on(&c, &c_runtime).await;
    for path in ["approved-on-a.md", "approved-later.md"] {
        assert_eq!(code(&call(&c, &on_c, "delete_note", ask(path)).await), "approval_required", "{path} is not used twice");
    }
    assert_eq!(runs(&cluster).len(), 2);
}

/// `POST /approvals/{id}/approve` on `gateway`, as the approver `s` (the tests' static token).
async fn approve_over_http(gateway: &Arc<Gateway>, id: &str) -> axum::http::StatusCode {
    let (service, _) = crate::http::mcp_service(gateway, CancellationToken::new());
    let app = crate::http::App::new(gateway.clone(), service);
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(axum::http::header::AUTHORIZATION, format!("Bearer {}", "t".repeat(32)).parse().unwrap());
    let response = crate::approvals_api::approve(axum::extract::State(app), axum::extract::Path(id.to_owned()), headers, Ok(Default::default())).await;
    response.status()
}

#[tokio::test]
async fn an_approval_decided_on_the_replica_that_lost_the_session_reaches_the_new_holder() {
    let cluster = Arc::new(Cluster::default());
    let (a, a_runtime) = replica("gw-a", &cluster, RELEASE_KEY).await;
    let (b, b_runtime) = replica("gw-b", &cluster, RELEASE_KEY).await;
    let on_a = a.start_session(new_session()).await;
    let id = field(&call(&a, &on_a, "delete_note", json!({"path": "x.md"})).await, "approvalId");
    a_runtime.flush();
    // A was only unreachable: B continued the session, and A's McpSession watch tells it so.
    let on_b = continue_on(&b, &b_runtime).await;
    a.end_session("sess-1", "moved").await;
    assert!(a.approvals.get(&id).is_none(), "A no longer keeps a copy that a decision could be lost in");
    // An approver's request reaches A: decided on the McpSession, where B finds it.
    assert_eq!(approve_over_http(&a, &id).await, axum::http::StatusCode::OK);
    assert_eq!(code(&call(&b, &on_b, "delete_note", json!({"path": "x.md"})).await), "ok");
    assert_eq!(runs(&cluster), [r#"delete_note on gw-b: {"path":"x.md"}"#]);
}

#[tokio::test]
async fn a_replica_that_lost_the_session_cannot_use_its_tokens_or_approvals() {
    let cluster = Arc::new(Cluster::default());
    let (a, a_runtime) = replica("gw-a", &cluster, RELEASE_KEY).await;
    let (b, b_runtime) = replica("gw-b", &cluster, RELEASE_KEY).await;
    let on_a = a.start_session(new_session()).await;
    let preview = call(&a, &on_a, "send_note", json!({"text": "x"})).await;
    let confirmed = json!({"text": "x", "confirm_token": field(&preview, "confirmToken")});
    // A was only unreachable: B took the session over, and A has not noticed yet.
    let _on_b = continue_on(&b, &b_runtime).await;
    let late = call(&a, &on_a, "send_note", confirmed.clone()).await;
    assert_eq!(code(&late), "approval_not_recorded");
    assert!(runs(&cluster).is_empty());
    // The token was not used: the holder runs it, once.
    assert_eq!(code(&call(&b, &_on_b, "send_note", confirmed).await), "ok");
    assert_eq!(runs(&cluster).len(), 1);
    drop(a_runtime);
}
