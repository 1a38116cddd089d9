//! A gateway restarting finds what its previous run left behind: live sessions are kept for their clients
//! (without pods), stale ones are ended, and no worker pod survives.

mod kubernetes_support;

use kubernetes_support::{Reply, client, serve, step};
use serde_json::json;
use toolwarden_gateway::kubernetes::restart::recover;
use toolwarden_gateway::kubernetes::session_store::SessionStore;
use toolwarden_gateway::kubernetes::{KubernetesConfig, KubernetesRuntime, Metrics};

fn session(name: &str, started: &str, last: &str, phase: &str) -> serde_json::Value {
    json!({
        "apiVersion": "toolwarden.dev/v1alpha1",
        "kind": "McpSession",
        "metadata": {
            "name": name, "namespace": "team-a", "uid": format!("uid-{name}"), "resourceVersion": "3",
            "labels": {"toolwarden.dev/gateway": "gw-0"},
            "annotations": {"toolwarden.dev/session-id": name}
        },
        "spec": {"subject": "alice", "startedAt": started},
        "status": {"phase": phase, "lastActivity": last, "calls": 7, "workerCount": 1,
                   "workers": [{"tool": "search-issues", "pod": format!("tw-search-issues-{name}"), "ready": true}]}
    })
}

fn pod(namespace: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}})
}

#[tokio::test]
async fn restart_resumes_live_sessions_ends_stale_ones_and_deletes_every_pod() {
    let now = jiff::Timestamp::now();
    let recent = (now - jiff::SignedDuration::from_secs(60)).to_string();
    let old = (now - jiff::SignedDuration::from_secs(48 * 3600)).to_string();
    let (client, handle) = client();
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("GET", &["/apis/toolwarden.dev/v1alpha1/mcpsessions?", "labelSelector=toolwarden.dev%2Fgateway%3Dgw-0"], 200, Reply::Json(json!({
                "apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpSessionList", "metadata": {"resourceVersion": "9"},
                "items": [session("live", &recent, &recent, "Active"), session("stale", &old, &old, "Active"), session("gone", &recent, &recent, "Ended")]
            }))),
            step("PATCH", &["/namespaces/team-a/mcpsessions/live/status", "fieldManager=toolwarden-gateway"], 200, Reply::Json(session("live", &recent, &recent, "Active"))),
            step("DELETE", &["/namespaces/team-a/mcpsessions/stale"], 200, Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))),
            step("DELETE", &["/namespaces/team-a/mcpsessions/gone"], 404, Reply::Json(kubernetes_support::status_error(404, "NotFound", "gone"))),
            step("GET", &["/api/v1/pods?", "labelSelector=toolwarden.dev%2Fgateway%3Dgw-0%2Capp.kubernetes.io%2Fcomponent%3Dworker"], 200, Reply::Json(json!({
                "apiVersion": "v1", "kind": "PodList", "metadata": {},
                "items": [pod("team-a", "tw-search-issues-live"), pod("team-b", "tw-fetch-warm1")]
            }))),
            step("DELETE", &["/api/v1/namespaces/team-a/pods/tw-search-issues-live"], 200, Reply::Json(pod("team-a", "tw-search-issues-live"))),
            step("DELETE", &["/api/v1/namespaces/team-b/pods/tw-fetch-warm1"], 404, Reply::Json(kubernetes_support::status_error(404, "NotFound", "gone"))),
        ],
    ));
    let config = KubernetesConfig { gateway_id: "gw-0".into(), ..KubernetesConfig::default() };
    let report = recover(&client, &SessionStore::new(client.clone()), &config).await.unwrap();
    let seen = server.await.unwrap();

    assert_eq!(report.resumed.len(), 1);
    assert_eq!(report.resumed[0].metadata.name.as_deref(), Some("live"));
    assert_eq!(report.ended, ["team-a/stale", "team-a/gone"]);
    assert_eq!(report.pods_deleted, 2);
    let status = &seen[1].body["status"];
    assert_eq!(status["calls"], 7, "counters survive the restart");
    assert!(status["workers"].is_null() && status["workerCount"] == 0, "the dead pods are no longer listed: {status}");

    // The resumed session is held again: the client's next start reuses it without a new McpSession.
    let (client, handle) = kubernetes_support::client();
    let server = tokio::spawn(serve(handle, vec![]));
    let rt = KubernetesRuntime::new(client, config, Metrics::default());
    rt.adopt_resumed(&report);
    let name = rt
        .start_session(toolwarden_gateway::kubernetes::SessionStart { id: "live".into(), namespace: "team-a".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(name, "live");
    server.await.unwrap();
}
