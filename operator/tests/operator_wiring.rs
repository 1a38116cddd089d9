//! The whole operator (Lease, watches, namespace queue, tool controller) against an in-memory API
//! server: from start to every tool Ready, then a clean shutdown that releases the Lease.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use toolwarden_operator::cli::run_until_shutdown;
use toolwarden_operator::context::Settings;
use toolwarden_operator::leader::LeaseConfig;
use toolwarden_operator::metrics::Metrics;

const TOOLS: &str = "/apis/toolwarden.dev/v1alpha1/namespaces/dev/mcptools";

fn ready(fake: &Fake, name: &str) -> bool {
    let objects = fake.objects.lock().unwrap();
    let Some(tool) = objects.get(&format!("{TOOLS}/{name}")) else { return false };
    tool["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn get(fake: &Fake, path: &str) -> Option<Value> {
    fake.objects.lock().unwrap().get(path).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_takes_the_lease_reconciles_everything_and_releases_the_lease_on_shutdown() {
    let fake = Fake::default();
    let tools = [
        tool("dev", "read-note", 1, json!({})),
        tool("dev", "read-issue", 1, json!({"credentials": [{"secretRef": {"name": "github", "key": "token"}, "env": "GH_TOKEN"}],
                                             "egress": [{"cidr": "0.0.0.0/0", "ports": [443]}]})),
        tool("dev", "list-notes", 1, json!({})),
    ];
    for t in &tools {
        fake.put(&format!("{TOOLS}/{}", t.metadata.name.as_deref().unwrap()), serde_json::to_value(t).unwrap());
    }
    let p = policy("dev", "readers", json!({"subjects": {"groups": ["developers"]}, "tools": {"names": ["*"]}, "decision": "allow"}));
    fake.put("/apis/toolwarden.dev/v1alpha1/namespaces/dev/toolpolicies/readers", serde_json::to_value(&p).unwrap());
    fake.put("/api/v1/namespaces/dev/secrets/github", secret("dev", "github", &[("token", "t0ken"), ("other", "x")]));
    // Left by a tool deleted while its owner reference was stripped: only the orphan sweep can take it.
    let orphan = "/apis/networking.k8s.io/v1/namespaces/dev/networkpolicies/toolwarden-tool-gone";
    fake.put(orphan, json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "toolwarden-tool-gone", "namespace": "dev",
                     "labels": {"app.kubernetes.io/managed-by": "toolwarden-operator", "toolwarden.dev/tool": "gone"}},
        "spec": {"podSelector": {}}}));

    let (client, handle) = client();
    let server = tokio::spawn(fake.clone().serve(handle));
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(run_until_shutdown(
        client,
        Settings::default(),
        LeaseConfig::new("toolwarden", "replica-a"),
        metrics.clone(),
        Some("replica-a".into()),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let started = Instant::now();
    while !["read-note", "read-issue", "list-notes"].iter().all(|n| ready(&fake, n)) {
        assert!(started.elapsed() < Duration::from_secs(30), "tools not Ready in time: {:?}", fake.calls.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metrics.leader.get(), 1);
    let cm = get(&fake, "/api/v1/namespaces/dev/configmaps/toolwarden-gateway-config").expect("gateway config written");
    let config = toolwarden_core::config::GatewayConfig::from_json(cm["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(config.tools.len(), 3);
    assert!(get(&fake, "/apis/networking.k8s.io/v1/namespaces/dev/networkpolicies/toolwarden-tool-read-issue").is_some());
    assert!(get(&fake, "/apis/networking.k8s.io/v1/namespaces/dev/networkpolicies/toolwarden-workers-baseline").is_some());
    let scoped = get(&fake, "/api/v1/namespaces/dev/secrets/toolwarden-tool-read-issue").expect("scoped Secret");
    assert_eq!(scoped["data"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["token"]);
    assert!(get(&fake, "/api/v1/namespaces/dev/secrets/github").is_some(), "a source Secret is never touched");
    let started = Instant::now();
    while get(&fake, orphan).is_some() {
        assert!(started.elapsed() < Duration::from_secs(10), "orphan not swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let policy = get(&fake, "/apis/toolwarden.dev/v1alpha1/namespaces/dev/toolpolicies/readers").unwrap();
    assert_eq!(policy["status"]["matchedTools"].as_array().unwrap().len(), 3);

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(15), operator).await.expect("operator stops").unwrap().unwrap();
    assert_eq!(metrics.leader.get(), 0);
    let lease = get(&fake, "/apis/coordination.k8s.io/v1/namespaces/toolwarden/leases/toolwarden-operator").expect("a Lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "released at shutdown: {lease}");
    server.abort();
}
