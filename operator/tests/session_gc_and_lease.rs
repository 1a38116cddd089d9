//! McpSession garbage collection and the leader Lease, against a scripted API server.

mod support;

use serde_json::{Value, json};
use support::*;
use toolwarden_operator::context::Settings;
use toolwarden_operator::leader::{LeaseConfig, release, try_acquire_or_renew};
use toolwarden_operator::session_gc::collect;

const SESSIONS: &str = "/apis/toolwarden.dev/v1alpha1/mcpsessions?";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/toolwarden/leases/toolwarden-operator";

fn session(name: &str, started: &str, last: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpSession",
        "metadata": {"name": name, "namespace": "dev", "uid": format!("uid-{name}"), "resourceVersion": "5",
                     "labels": {"toolwarden.dev/gateway": "gw-0"}},
        "spec": {"subject": "alice", "startedAt": started, "idleTimeoutSeconds": 900, "maxLifetimeSeconds": 28800},
        "status": {"phase": phase, "lastActivity": last}
    })
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpSessionList", "metadata": {"resourceVersion": "9"}, "items": items})
}

#[tokio::test]
async fn stale_session_is_marked_expired_then_deleted_and_live_ones_are_kept() {
    let now = jiff::Timestamp::now().to_string();
    let stale = session("stale", "2020-01-01T00:00:00Z", "2020-01-01T00:10:00Z", "Active");
    let steps = vec![
        step("GET", &[SESSIONS, "limit=500"], 200, Reply::Json(list(vec![stale.clone(), session("live", &now, &now, "Active")]))),
        step("PATCH", &["/apis/toolwarden.dev/v1alpha1/namespaces/dev/mcpsessions/stale/status", "fieldManager=toolwarden-operator"], 200, Reply::Json(stale)),
        step("DELETE", &["/apis/toolwarden.dev/v1alpha1/namespaces/dev/mcpsessions/stale"], 200, Reply::Json(json!({"kind": "Status", "status": "Success"}))),
    ];
    let (client, handle) = client();
    let ctx = context(client, Settings::default());
    let server = tokio::spawn(serve(handle, steps));
    let outcome = collect(&ctx).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!((outcome.expired, outcome.deleted, outcome.failed), (1, 0, 0));
    assert_eq!(seen[1].body["status"]["phase"], "Expired");
    assert!(seen[1].body["status"]["endedReason"].as_str().unwrap().contains("max lifetime"));
    assert_eq!(ctx.metrics.sessions_expired.get(), 1);
    assert_eq!(seen[2].body["propagationPolicy"], "Background", "pods go with the session through owner references");
}

#[tokio::test]
async fn one_failing_session_does_not_stop_the_others() {
    let a = session("a", "2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "Expired");
    let b = session("b", "2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "Expired");
    let steps = vec![
        step("GET", &[SESSIONS], 200, Reply::Json(list(vec![a, b]))),
        step("DELETE", &["/mcpsessions/a"], 500, Reply::Error("InternalError")),
        step("DELETE", &["/mcpsessions/b"], 404, Reply::Error("NotFound")),
    ];
    let (client, handle) = client();
    let ctx = context(client, Settings::default());
    let server = tokio::spawn(serve(handle, steps));
    let outcome = collect(&ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!((outcome.deleted, outcome.failed), (1, 1));
}

fn lease(holder: &str, renewed: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "toolwarden-operator", "namespace": "toolwarden", "resourceVersion": "17"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed}
    })
}

async fn lease_round(steps: Vec<Step>) -> (bool, Vec<Seen>) {
    let (client, handle) = client();
    let api = kube::Api::namespaced(client, "toolwarden");
    let server = tokio::spawn(serve(handle, steps));
    let leader = try_acquire_or_renew(&api, &LeaseConfig::new("toolwarden", "op-a")).await.unwrap();
    (leader, server.await.unwrap())
}

#[tokio::test]
async fn first_replica_creates_the_lease_and_leads() {
    let (leader, seen) = lease_round(vec![
        step("GET", &[LEASE], 404, Reply::Error("NotFound")),
        step("POST", &["/apis/coordination.k8s.io/v1/namespaces/toolwarden/leases"], 201, Reply::Echo),
    ])
    .await;
    assert!(leader);
    assert_eq!(seen[1].body["spec"]["holderIdentity"], "op-a");
}

#[tokio::test]
async fn a_fresh_lease_of_another_replica_is_left_alone() {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let (leader, _) = lease_round(vec![step("GET", &[LEASE], 200, Reply::Json(lease("op-b", &now)))]).await;
    assert!(!leader);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (leader, seen) = lease_round(vec![
        step("GET", &[LEASE], 200, Reply::Json(lease("op-b", "2020-01-01T00:00:00.000000Z"))),
        step("PUT", &[LEASE], 200, Reply::Echo),
    ])
    .await;
    assert!(leader);
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "17");
    assert_eq!(seen[1].body["spec"]["holderIdentity"], "op-a");
    assert_eq!(seen[1].body["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn losing_the_take_over_race_means_not_leading() {
    let (leader, _) = lease_round(vec![
        step("GET", &[LEASE], 200, Reply::Json(lease("op-b", "2020-01-01T00:00:00.000000Z"))),
        step("PUT", &[LEASE], 409, Reply::Error("Conflict")),
    ])
    .await;
    assert!(!leader);
}

#[tokio::test]
async fn shutdown_releases_a_held_lease() {
    let (client, handle) = client();
    let api = kube::Api::namespaced(client, "toolwarden");
    let server = tokio::spawn(serve(handle, vec![
        step("GET", &[LEASE], 200, Reply::Json(lease("op-a", "2026-01-01T00:00:00.000000Z"))),
        step("PUT", &[LEASE], 200, Reply::Echo),
    ]));
    release(&api, &LeaseConfig::new("toolwarden", "op-a")).await.unwrap();
    let seen = server.await.unwrap();
    assert!(seen[1].body["spec"].get("holderIdentity").is_none_or(Value::is_null));
}
