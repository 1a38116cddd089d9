//! The Kubernetes runtime against a scripted API server: each test is one story of requests and answers.

mod kubernetes_support;

use std::time::Duration;

use kubernetes_support::{Reply, client, pod_watch, push, ready, serve, status_error, step, tool, waiting};
use serde_json::json;
use toolwarden_core::resources::{ClientInfo, McpSession};
use toolwarden_gateway::kubernetes::{KubernetesConfig, KubernetesRuntime, Metrics, SessionStart};

const SESSIONS: &str = "/apis/toolwarden.dev/v1alpha1/namespaces/team-a/mcpsessions";
const PODS: &str = "/api/v1/namespaces/team-a/pods";

fn config() -> KubernetesConfig {
    KubernetesConfig {
        gateway_id: "gw-0".into(),
        worker_image: "ghcr.io/toolwarden/worker:test".into(),
        start_timeout: Duration::from_secs(2),
        ..KubernetesConfig::default()
    }
}

fn start(id: &str) -> SessionStart {
    SessionStart {
        namespace: "team-a".into(),
        id: id.into(),
        subject: "alice".into(),
        groups: vec!["dev".into()],
        client: ClientInfo { name: "claude-code".into(), version: Some("2.0".into()) },
        protocol_version: Some("2025-11-25".into()),
    }
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn session_start_creates_mcp_session_and_first_call_creates_its_pod() {
    let (client, handle) = client();
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("POST", &[PODS], 201, Reply::Created),
        ]
        .into_iter()
        .chain(pod_watch(vec![("ADDED", json!({"phase": "Pending"})), ("MODIFIED", ready("10.1.2.3"))]))
        .chain([
            step("PATCH", &[SESSIONS, "/sess-1/status", "fieldManager=toolwarden-gateway", "force=true"], 200, Reply::Json(kubernetes_support::mcp_session("team-a", "sess-1", "session-uid"))),
        ])
        .collect(),
    ));
    let rt = KubernetesRuntime::new(client, config(), Metrics::default());
    assert_eq!(rt.start_session(start("sess-1")).await.unwrap(), "sess-1");
    let endpoint = rt.worker("sess-1", &tool(0)).await.unwrap();
    assert_eq!(endpoint.url, "http://10.1.2.3:8443");
    // A second call of the same tool reuses the pod: no request.
    assert_eq!(rt.worker("sess-1", &tool(0)).await.unwrap(), endpoint);
    rt.record_call("sess-1", false, Some("search_issues"));
    rt.record_call("sess-1", true, None);
    rt.flush().await;
    let seen = server.await.unwrap();

    let session = &seen[0].body;
    assert_eq!(session["spec"]["subject"], "alice");
    assert_eq!(session["spec"]["client"]["name"], "claude-code");
    assert_eq!(session["spec"]["protocolVersion"], "2025-11-25");
    assert_eq!(session["metadata"]["labels"]["toolwarden.dev/gateway"], "gw-0");
    assert!(session["metadata"]["ownerReferences"].is_null(), "sessions are owner-less");

    let pod = &seen[1].body;
    assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "session-uid");
    assert_eq!(pod["metadata"]["labels"]["toolwarden.dev/session"], "sess-1");
    assert_eq!(pod["metadata"]["labels"]["toolwarden.dev/tool"], "search-issues");
    let command = pod["spec"]["containers"][0]["command"].as_array().unwrap();
    assert!(command.contains(&json!(sha256(&endpoint.token))), "the pod gets the token's hash");
    assert!(!pod.to_string().contains(&endpoint.token), "and never the token");

    let status = &seen[4].body["status"];
    assert_eq!((status["calls"].as_u64(), status["denials"].as_u64()), (Some(1), Some(1)));
    assert_eq!(status["tainted"], true);
    assert_eq!(status["workers"][0]["pod"], json!(endpoint.pod));
    assert_eq!(status["workerCount"], 1);
}

#[tokio::test]
async fn status_writes_are_batched_and_counters_alone_wait_for_their_interval() {
    let (client, handle) = client();
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("PATCH", &[SESSIONS, "/busy/status"], 200, Reply::Json(kubernetes_support::mcp_session("team-a", "busy", "u"))),
            step("PATCH", &[SESSIONS, "/busy/status"], 200, Reply::Json(kubernetes_support::mcp_session("team-a", "busy", "u"))),
            // Ending the session comes next: a status write in between would fail this step.
            step("DELETE", &[SESSIONS, "/busy"], 200, Reply::Json(status_error(200, "", ""))),
        ],
    ));
    let rt = KubernetesRuntime::new(client, config(), Metrics::default());
    rt.start_session(start("busy")).await.unwrap();
    rt.flush().await; // a new session's status (phase Active): written at once
    for _ in 0..500 {
        rt.record_call("busy", false, None);
    }
    rt.flush().await; // only counters moved, within a minute of the last write: no write
    rt.record_call("busy", false, Some("get_page"));
    rt.flush().await; // the taint: written at once, with the counters
    rt.flush().await; // nothing changed: no write
    rt.record_call("busy", true, None);
    rt.flush().await; // counters again: they wait
    rt.end_session("busy", "closed").await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!((seen[1].body["status"]["phase"].as_str(), seen[1].body["status"]["calls"].as_u64()), (Some("Active"), Some(0)));
    assert_eq!((seen[2].body["status"]["calls"].as_u64(), seen[2].body["status"]["tainted"].as_bool()), (Some(501), Some(true)));

    // With the interval passed, counters alone are written.
    let (client, handle) = kubernetes_support::client();
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("PATCH", &[SESSIONS, "/busy/status"], 200, Reply::Json(kubernetes_support::mcp_session("team-a", "busy", "u"))),
        ],
    ));
    let rt = KubernetesRuntime::new(client, KubernetesConfig { counters_interval: Duration::ZERO, ..config() }, Metrics::default());
    rt.start_session(start("busy")).await.unwrap();
    for _ in 0..500 {
        rt.record_call("busy", false, None);
    }
    rt.flush().await;
    rt.flush().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[1].body["status"]["calls"], 500);
}

#[tokio::test]
async fn ending_a_session_deletes_its_mcp_session_and_the_garbage_collector_its_pods() {
    let (client, handle) = client();
    let [list, watch] = pod_watch(vec![("ADDED", ready("10.1.2.3"))]);
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("POST", &[PODS], 201, Reply::Created),
            list,
            watch,
            // One request: the pods are the McpSession's dependents (owner reference, asserted in the
            // first test), and the background propagation lets Kubernetes delete them.
            step("DELETE", &[SESSIONS, "/sess-2"], 200, Reply::Json(status_error(200, "", ""))),
        ],
    ));
    let metrics = Metrics::default();
    let rt = KubernetesRuntime::new(client, config(), metrics.clone());
    let mut ended = rt.subscribe_ended();
    rt.start_session(start("sess-2")).await.unwrap();
    rt.worker("sess-2", &tool(0)).await.unwrap();
    assert_eq!((metrics.sessions_active.get(), metrics.worker_pods_active.get()), (1, 1));
    rt.end_session("sess-2", "closed").await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen[4].body["propagationPolicy"], "Background");
    assert_eq!((metrics.sessions_active.get(), metrics.worker_pods_active.get()), (0, 0));
    assert_eq!(ended.recv().await.unwrap().reason, "closed");
    assert_eq!(rt.worker("sess-2", &tool(0)).await.unwrap_err().code(), "unknown_session");
}

#[tokio::test]
async fn deleting_the_mcp_session_ends_the_session_and_removes_its_pods() {
    let (client, handle) = client();
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("DELETE", &[PODS, "labelSelector=toolwarden.dev%2Fsession%3Dsess-3"], 200, Reply::Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}))),
        ],
    ));
    let rt = KubernetesRuntime::new(client, config(), Metrics::default());
    let mut ended = rt.subscribe_ended();
    rt.start_session(start("sess-3")).await.unwrap();
    let deleted: McpSession = serde_json::from_value(kubernetes_support::mcp_session("team-a", "sess-3", "session-uid")).unwrap();
    rt.observe(deleted, true).await;
    server.await.unwrap();
    let event = ended.recv().await.unwrap();
    assert_eq!((event.id.as_str(), event.reason), ("sess-3", "deleted"));
}

#[tokio::test]
async fn a_session_another_replica_claimed_is_forgotten_without_deleting_anything() {
    let (client, handle) = client();
    let server = tokio::spawn(serve(handle, vec![step("POST", &[SESSIONS], 201, Reply::Created)]));
    let metrics = Metrics::default();
    let rt = KubernetesRuntime::new(client, config(), metrics.clone());
    let mut ended = rt.subscribe_ended();
    rt.start_session(start("sess-4")).await.unwrap();
    server.await.unwrap();
    // The label watch reports the claimed object as gone, with the new holder's label.
    let mut claimed: McpSession = serde_json::from_value(kubernetes_support::mcp_session("team-a", "sess-4", "session-uid")).unwrap();
    claimed.metadata.labels = Some([("toolwarden.dev/gateway".to_owned(), "another-replica".to_owned())].into());
    rt.observe(claimed, true).await;
    let event = ended.recv().await.unwrap();
    assert_eq!((event.id.as_str(), event.reason), ("sess-4", "moved"), "forgotten, not ended: no pod or McpSession deleted");
    assert_eq!(metrics.sessions_active.get(), 0);
}

async fn failed_start(answers: Vec<kubernetes_support::Step>) -> (toolwarden_gateway::kubernetes::Error, Vec<kubernetes_support::Seen>, Metrics) {
    let (client, handle) = client();
    let mut steps = vec![step("POST", &[SESSIONS], 201, Reply::Created)];
    steps.extend(answers);
    let server = tokio::spawn(serve(handle, steps));
    let metrics = Metrics::default();
    let rt = KubernetesRuntime::new(client, config(), metrics.clone());
    rt.start_session(start("sess-f")).await.unwrap();
    let error = rt.worker("sess-f", &tool(0)).await.unwrap_err();
    (error, server.await.unwrap(), metrics)
}

fn delete_pod() -> kubernetes_support::Step {
    step("DELETE", &[PODS, "/tw-search-issues-"], 200, Reply::Pod(json!({"phase": "Pending"})))
}

#[tokio::test]
async fn image_pull_failure_is_a_specific_error_and_the_pod_is_deleted() {
    let [list, watch] = pod_watch(vec![("ADDED", waiting("ErrImagePull", "manifest unknown"))]);
    let (error, seen, metrics) = failed_start(vec![step("POST", &[PODS], 201, Reply::Created), list, watch, delete_pod()]).await;
    assert_eq!(error.code(), "image_pull");
    assert!(error.to_string().contains("ghcr.io/acme/search:1"), "{error}");
    assert!(seen[4].uri.contains(&seen[1].body["metadata"]["name"].as_str().unwrap().to_owned()));
    let failures = metrics.worker_start_failures.get_or_create(&vec![("runtime", "kubernetes".into()), ("reason", "image_pull".into())]).get();
    assert_eq!(failures, 1);
    assert_eq!(metrics.worker_pods_active.get(), 0);
}

#[tokio::test]
async fn missing_scoped_secret_names_the_secret_and_the_pod_is_deleted() {
    let [list, watch] = pod_watch(vec![(
        "ADDED",
        waiting("CreateContainerConfigError", "secret \"toolwarden-tool-search-issues\" not found"),
    )]);
    let (error, _, _) = failed_start(vec![step("POST", &[PODS], 201, Reply::Created), list, watch, delete_pod()]).await;
    assert_eq!(error.code(), "missing_secret");
    assert!(error.to_string().contains("Secret toolwarden-tool-search-issues"), "{error}");
}

#[tokio::test]
async fn quota_exceeded_is_a_specific_error_and_leaves_no_pod() {
    let (error, _, metrics) = failed_start(vec![step(
        "POST",
        &[PODS],
        403,
        Reply::Json(status_error(403, "Forbidden", "pods \"x\" is forbidden: exceeded quota: compute, requested: cpu=50m")),
    )])
    .await;
    assert_eq!(error.code(), "quota_exceeded");
    assert!(error.is_transient());
    let failures = metrics.worker_start_failures.get_or_create(&vec![("runtime", "kubernetes".into()), ("reason", "quota_exceeded".into())]).get();
    assert_eq!(failures, 1);
}

#[tokio::test]
async fn pod_stuck_pending_times_out_and_is_deleted() {
    // The watch stays open and says nothing of the pod.
    let [list, watch] = pod_watch(vec![]);
    let (error, _, _) = failed_start(vec![step("POST", &[PODS], 201, Reply::Created), list, watch, delete_pod()]).await;
    assert_eq!(error.code(), "start_timeout");
}

#[tokio::test]
async fn a_start_that_gets_no_turn_in_time_fails_start_timeout_without_creating_a_pod() {
    let (client, handle) = client();
    let [list, watch] = pod_watch(vec![]);
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("POST", &[SESSIONS], 201, Reply::Created),
            // Only one of the two sessions creates a pod; it never becomes ready.
            step("POST", &[PODS], 201, Reply::Created),
            list,
            watch,
            delete_pod(),
        ],
    ));
    let metrics = Metrics::default();
    let config = KubernetesConfig { max_pod_starts: 1, start_timeout: Duration::from_secs(1), ..config() };
    let rt = KubernetesRuntime::new(client, config, metrics.clone());
    rt.start_session(start("sess-a")).await.unwrap();
    rt.start_session(start("sess-b")).await.unwrap();
    let tool = tool(0);
    let (a, b) = tokio::join!(rt.worker("sess-a", &tool), rt.worker("sess-b", &tool));
    let errors = [a.unwrap_err(), b.unwrap_err()];
    assert!(errors.iter().all(|e| e.code() == "start_timeout" && e.is_transient()), "{errors:?}");
    let queued: Vec<String> = errors.iter().map(ToString::to_string).filter(|e| e.contains("--max-pod-starts 1")).collect();
    assert_eq!(queued.len(), 1, "one start waited for the other's turn: {errors:?}");
    assert!(queued[0].contains("within 1s") && queued[0].contains("1 starts were under way and 0 more waiting"), "{}", queued[0]);
    let seen = server.await.unwrap();
    assert_eq!(seen.iter().filter(|s| s.method == "POST" && s.uri.starts_with(PODS)).count(), 1, "the queued start created no pod");
    let failures = metrics.worker_start_failures.get_or_create(&vec![("runtime", "kubernetes".into()), ("reason", "start_timeout".into())]).get();
    assert_eq!(failures, 2);
}

#[tokio::test]
async fn api_server_refusing_is_an_api_error() {
    let (error, _, _) = failed_start(vec![step("POST", &[PODS], 500, Reply::Json(status_error(500, "InternalError", "etcd timeout")))]).await;
    assert_eq!(error.code(), "api_error");
}

#[tokio::test]
async fn pod_killed_mid_call_is_explained_and_the_next_call_gets_a_new_pod() {
    let (client, handle) = client();
    let [list, watch] = pod_watch(vec![("ADDED", ready("10.1.2.3"))]);
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("POST", &[PODS], 201, Reply::Created),
            list,
            watch,
            step("GET", &[PODS, "/tw-search-issues-"], 200, Reply::Pod(json!({
                "phase": "Failed",
                "containerStatuses": [{"name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]
            }))),
            step("DELETE", &[PODS, "/tw-search-issues-"], 200, Reply::Pod(json!({"phase": "Failed"}))),
            // The second pod's start opens no watch: the one open shows it.
            step("POST", &[PODS], 201, Reply::Created),
            push(vec![("ADDED", ready("10.1.2.4"))]),
        ],
    ));
    let rt = KubernetesRuntime::new(client, config(), Metrics::default());
    rt.start_session(start("sess-k")).await.unwrap();
    let first = rt.worker("sess-k", &tool(0)).await.unwrap();
    let error = rt.call_failed("sess-k", &tool(0), &first).await;
    assert_eq!(error.code(), "pod_failed");
    assert!(error.to_string().contains("OOMKilled"), "{error}");
    let second = rt.worker("sess-k", &tool(0)).await.unwrap();
    assert_eq!(second.url, "http://10.1.2.4:8443");
    assert_ne!(second.token, first.token);
    server.await.unwrap();
}

#[tokio::test]
async fn warm_pool_pod_is_bound_to_the_session_on_first_use() {
    let (client, handle) = client();
    let [list, watch] = pod_watch(vec![("ADDED", ready("10.9.9.9"))]);
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("POST", &[PODS], 201, Reply::Created),
            list,
            watch,
            step("POST", &[SESSIONS], 201, Reply::Created),
            step("PATCH", &[PODS, "/tw-search-issues-", "fieldManager=toolwarden-gateway"], 200, Reply::Pod(ready("10.9.9.9"))),
        ],
    ));
    let metrics = Metrics::default();
    let rt = KubernetesRuntime::new(client, config(), metrics.clone());
    rt.set_tools("team-a", &[tool(1)]).await;
    rt.clone().sweep().await;
    for _ in 0..100 {
        if rt.warm_ready() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rt.warm_ready(), 1);
    rt.start_session(start("sess-w")).await.unwrap();
    let endpoint = rt.worker("sess-w", &tool(1)).await.unwrap();
    assert!(endpoint.warm);
    assert_eq!(endpoint.url, "http://10.9.9.9:8443");
    assert_eq!((metrics.warm_pool_hits.get(), metrics.warm_pool_misses.get()), (1, 0));
    let seen = server.await.unwrap();
    let warm = &seen[0].body;
    assert_eq!(warm["metadata"]["labels"]["toolwarden.dev/pool"], "unbound");
    assert!(warm["metadata"]["ownerReferences"].is_null());
    let command = warm["spec"]["containers"][0]["command"].as_array().unwrap();
    assert!(command.contains(&json!(sha256(&endpoint.token))), "the bound pod answers to the token the pool kept");
    let bind = &seen[4].body;
    assert_eq!(bind["metadata"]["labels"]["toolwarden.dev/session"], "sess-w");
    assert_eq!(bind["metadata"]["labels"]["toolwarden.dev/pool"], serde_json::Value::Null);
    assert_eq!(bind["metadata"]["ownerReferences"][0]["uid"], "session-uid");
}

#[tokio::test]
async fn empty_warm_pool_counts_a_miss_and_starts_a_pod() {
    let (client, handle) = client();
    let [list, watch] = pod_watch(vec![("ADDED", ready("10.1.1.1"))]);
    let server = tokio::spawn(serve(
        handle,
        vec![step("POST", &[SESSIONS], 201, Reply::Created), step("POST", &[PODS], 201, Reply::Created), list, watch],
    ));
    let metrics = Metrics::default();
    let rt = KubernetesRuntime::new(client, config(), metrics.clone());
    rt.start_session(start("sess-m")).await.unwrap();
    assert!(!rt.worker("sess-m", &tool(2)).await.unwrap().warm);
    assert_eq!((metrics.warm_pool_hits.get(), metrics.warm_pool_misses.get()), (0, 1));
    server.await.unwrap();
}

fn warm_pod(name: &str, address: Option<&str>) -> serde_json::Value {
    let annotations = address.map(|a| json!({"toolwarden.dev/gateway-address": a})).unwrap_or(json!({}));
    json!({"metadata": {"name": name, "namespace": "team-a", "labels": {"toolwarden.dev/pool": "unbound"}, "annotations": annotations}})
}

fn pod_list(items: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": items})
}

#[tokio::test]
async fn warm_pods_of_a_gateway_replica_that_is_gone_are_deleted_and_no_other() {
    let (client, handle) = client();
    let gateway_pods = "/api/v1/namespaces/tw-system/pods";
    let live_gateway = json!({"metadata": {"name": "gw-1", "namespace": "tw-system"}, "status": {"phase": "Running", "podIP": "10.0.0.7"}});
    let server = tokio::spawn(serve(
        handle,
        vec![
            step("GET", &[PODS, "labelSelector=toolwarden.dev%2Fpool%3Dunbound"], 200, Reply::Json(pod_list(vec![
                warm_pod("mine", Some("10.0.0.5:8080")),
                warm_pod("of-a-live-replica", Some("10.0.0.7:8080")),
                warm_pod("of-a-gone-replica", Some("10.0.0.9:8080")),
                warm_pod("of-a-gone-replica-2", Some("10.0.0.9:8080")),
                warm_pod("no-address", None),
            ]))),
            // Addresses in order: the live replica's pod still serves at its IP; nothing serves at the other.
            step("GET", &[gateway_pods, "fieldSelector=status.podIP%3D10.0.0.7"], 200, Reply::Json(pod_list(vec![live_gateway]))),
            step("GET", &[gateway_pods, "fieldSelector=status.podIP%3D10.0.0.9"], 200, Reply::Json(pod_list(vec![]))),
            step("DELETE", &[PODS, "/of-a-gone-replica?"], 200, Reply::Json(warm_pod("of-a-gone-replica", None))),
            step("DELETE", &[PODS, "/of-a-gone-replica-2?"], 200, Reply::Json(warm_pod("of-a-gone-replica-2", None))),
        ],
    ));
    let deleted = toolwarden_gateway::kubernetes::warm_pool::delete_orphans(&client, "team-a", "10.0.0.5:8080", "tw-system").await.unwrap();
    assert_eq!(deleted, 2);
    let seen = server.await.unwrap();
    assert_eq!(seen.iter().filter(|s| s.method == "DELETE").count(), 2, "only the gone replica's pods: {seen:?}");
}
