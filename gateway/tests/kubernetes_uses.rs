//! Recording the use of a confirm token or an approval on the McpSession before the call runs, against a
//! scripted API server: the write is conditional on the resourceVersion just read and on this gateway
//! still holding the session, and the status flusher never drops what was recorded.

mod kubernetes_support;

use std::time::Duration;

use kubernetes_support::{Reply, client, serve, status_error, step};
use serde_json::{Value, json};
use toolwarden_core::resources::{ApprovalState, PendingApproval, UsedConfirmToken};
use toolwarden_gateway::kubernetes::used::SessionUse;
use toolwarden_gateway::kubernetes::{KubernetesConfig, KubernetesRuntime, Metrics, SessionStart};

const SESSIONS: &str = "/apis/toolwarden.dev/v1alpha1/namespaces/team-a/mcpsessions";

fn runtime(client: kube::Client) -> std::sync::Arc<KubernetesRuntime> {
    let config = KubernetesConfig { gateway_id: "gw-0".into(), start_timeout: Duration::from_secs(2), ..KubernetesConfig::default() };
    KubernetesRuntime::new(client, config, Metrics::default())
}

fn start() -> SessionStart {
    SessionStart { namespace: "team-a".into(), id: "sess-1".into(), subject: "alice".into(), ..Default::default() }
}

/// The McpSession as the API server has it: held by `holder`, at `version`, with `status`.
fn session(holder: &str, version: &str, status: Value) -> Value {
    json!({
        "apiVersion": "toolwarden.dev/v1alpha1",
        "kind": "McpSession",
        "metadata": {
            "name": "sess-1", "namespace": "team-a", "uid": "session-uid", "resourceVersion": version,
            "labels": {"toolwarden.dev/gateway": holder},
            "annotations": {"toolwarden.dev/session-id": "sess-1"}
        },
        "spec": {"subject": "alice"},
        "status": status
    })
}

fn token(nonce: &str) -> SessionUse {
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(300);
    SessionUse::ConfirmToken(UsedConfirmToken { nonce: nonce.into(), expires_at: expires.to_string() })
}

fn nonces(status: &Value) -> Vec<String> {
    status["usedConfirmTokens"].as_array().into_iter().flatten().filter_map(|t| t["nonce"].as_str().map(str::to_owned)).collect()
}

#[tokio::test]
async fn a_use_is_written_conditionally_before_the_call_and_every_flush_keeps_it() {
    let (client, handle) = client();
    let recorded = json!({"phase": "Active", "calls": 4, "usedConfirmTokens": [{"nonce": "expired", "expiresAt": "2020-01-01T00:00:00Z"}]});
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("GET", &[&format!("{SESSIONS}/sess-1")], 200, Reply::Json(session("gw-0", "11", recorded.clone()))),
            step("PUT", &[&format!("{SESSIONS}/sess-1/status"), "fieldManager=toolwarden-gateway"], 200, Reply::Json(session("gw-0", "12", recorded))),
            step("PATCH", &[&format!("{SESSIONS}/sess-1/status"), "fieldManager=toolwarden-gateway", "force=true"], 200, Reply::Json(session("gw-0", "13", json!({})))),
        ],
    ));
    let rt = runtime(client);
    rt.start_session(start()).await.unwrap();
    rt.record_use("sess-1", &token("n-1")).await.expect("recorded");
    rt.record_call("sess-1", false, None);
    rt.flush().await;
    let seen = server.await.unwrap();

    let write = &seen[2].body;
    assert_eq!(write["metadata"]["resourceVersion"], "11", "conditional on the version read");
    assert_eq!(nonces(&write["status"]), ["n-1"], "added, and the expired record dropped");
    assert_eq!(write["status"]["calls"], 4, "the rest of the status as read");
    assert_eq!(nonces(&seen[3].body["status"]), ["n-1"], "the flusher's apply keeps the recorded use");
}

#[tokio::test]
async fn a_conflict_is_retried_on_fresh_data_and_a_session_claimed_away_refuses_the_use() {
    let (client, handle) = client();
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("GET", &[&format!("{SESSIONS}/sess-1")], 200, Reply::Json(session("gw-0", "11", json!({})))),
            step("PUT", &[&format!("{SESSIONS}/sess-1/status")], 409, Reply::Json(status_error(409, "Conflict", "the object has been modified"))),
            // Read again: another replica claimed the session meanwhile.
            step("GET", &[&format!("{SESSIONS}/sess-1")], 200, Reply::Json(session("gw-1", "12", json!({})))),
            step("PATCH", &[&format!("{SESSIONS}/sess-1/status")], 200, Reply::Json(session("gw-1", "13", json!({})))),
        ],
    ));
    let rt = runtime(client);
    rt.start_session(start()).await.unwrap();
    let refused = rt.record_use("sess-1", &token("n-1")).await.unwrap_err();
    assert_eq!(refused.code(), "session_moved", "{refused}");
    rt.flush().await;
    let seen = server.await.unwrap();
    assert!(nonces(&seen[4].body["status"]).is_empty(), "a use not recorded is taken back: {}", seen[4].body);
}

#[tokio::test]
async fn an_api_server_failure_refuses_the_use_as_transient() {
    let (client, handle) = client();
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("GET", &[&format!("{SESSIONS}/sess-1")], 503, Reply::Json(status_error(503, "ServiceUnavailable", "etcd is down"))),
        ],
    ));
    let rt = runtime(client);
    rt.start_session(start()).await.unwrap();
    let refused = rt.record_use("sess-1", &token("n-1")).await.unwrap_err();
    assert_eq!(refused.code(), "api_error");
    assert!(refused.is_transient());
    assert!(refused.to_string().contains("recording a use on McpSession team-a/sess-1"), "{refused}");
    server.await.unwrap();
    assert_eq!(rt.record_use("gone", &token("n-2")).await.unwrap_err().code(), "unknown_session");
}

#[tokio::test]
async fn a_used_approval_is_recorded_as_used_on_the_mcp_session() {
    let (client, handle) = client();
    let approved = json!({"id": "ap-1", "tool": "delete_note", "argumentsHash": "h", "policy": "p",
        "requestedAt": "2026-12-07T12:00:00Z", "expiresAt": "2099-01-01T00:00:00Z", "state": "approved", "decidedBy": "bob"});
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("GET", &[&format!("{SESSIONS}/sess-1")], 200, Reply::Json(session("gw-0", "11", json!({"pendingApprovals": [approved.clone()]})))),
            step("PUT", &[&format!("{SESSIONS}/sess-1/status")], 200, Reply::Json(session("gw-0", "12", json!({})))),
        ],
    ));
    let rt = runtime(client);
    rt.start_session(start()).await.unwrap();
    let mut approval: PendingApproval = serde_json::from_value(approved).unwrap();
    approval.state = ApprovalState::Used;
    rt.record_use("sess-1", &SessionUse::Approval(approval)).await.unwrap();
    let seen = server.await.unwrap();
    let written = &seen[2].body["status"]["pendingApprovals"];
    assert_eq!((written[0]["id"].as_str(), written[0]["state"].as_str()), (Some("ap-1"), Some("used")), "{written}");
    assert_eq!(seen[2].body["metadata"]["resourceVersion"], "11");
}

#[tokio::test]
async fn a_decision_made_on_another_replica_is_not_undone_by_the_holders_next_approvals() {
    let (client, handle) = client();
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("PATCH", &[&format!("{SESSIONS}/sess-1/status")], 200, Reply::Json(session("gw-0", "13", json!({})))),
        ],
    ));
    let rt = runtime(client);
    rt.start_session(start()).await.unwrap();
    let pending = |id: &str| PendingApproval { id: id.into(), tool: "delete_note".into(), ..Default::default() };
    rt.set_pending_approvals("sess-1", vec![pending("ap-1")]);
    // Another replica approved ap-1 on the McpSession; the holder's watch sees it.
    let decided = json!({"pendingApprovals": [{"id": "ap-1", "tool": "delete_note", "argumentsHash": "", "policy": "",
        "requestedAt": "", "expiresAt": "", "state": "approved", "decidedBy": "bob"}]});
    rt.observe(serde_json::from_value(session("gw-0", "12", decided)).unwrap(), false).await;
    // The agent parks another call before retrying: the holder's list still says ap-1 is pending.
    rt.set_pending_approvals("sess-1", vec![pending("ap-1"), pending("ap-2")]);
    rt.flush().await;
    let seen = server.await.unwrap();
    let written = &seen[1].body["status"]["pendingApprovals"];
    assert_eq!((written[0]["id"].as_str(), written[0]["state"].as_str(), written[0]["decidedBy"].as_str()), (Some("ap-1"), Some("approved"), Some("bob")), "{written}");
    assert_eq!(written[1]["state"], "pending");
    assert_eq!(seen[1].body["status"]["pendingApprovalCount"], 1);
}
