//! The local runtime against a stand-in worker (`fixtures/fake_worker.py`) speaking the worker protocol
//! over its unix socket: what the runtime gives each worker, reuse, replacement, and cleanup.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use toolwarden_core::config::ToolConfig;
use toolwarden_gateway::kubernetes::Metrics;
use toolwarden_gateway::runtime::local::{LocalRuntime, LocalRuntimeConfig, LocalSecrets};
use toolwarden_gateway::runtime::{CancellationToken, SessionInfo, WorkerRuntime};
use toolwarden_worker::protocol::CallRequest;

fn python() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"].iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| "python3".into())
}

fn fake_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_worker.py")
}

fn tool(name: &str, extra: Value) -> ToolConfig {
    let mut base = json!({
        "name": name, "resource": name.replace('_', "-"), "description": "A test tool.", "effect": "read",
        "inputSchema": {"type": "object"}, "runtime": {"exec": {"image": "x", "command": ["cat"]}},
        "timeoutMs": 10000, "maxOutputBytes": 65536, "outputTrust": "trusted"
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    serde_json::from_value(base).unwrap()
}

struct Fixture {
    runtime: Arc<LocalRuntime>,
    metrics: Metrics,
    state: tempfile::TempDir,
    _manifests: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let state = tempfile::Builder::new().prefix("twl").tempdir_in("/tmp").unwrap();
    let manifests = tempfile::tempdir().unwrap();
    let secrets: LocalSecrets = Arc::new(std::sync::RwLock::new(BTreeMap::from([(
        ("default".to_owned(), "gh".to_owned()),
        BTreeMap::from([("token".to_owned(), "gh-s3cret".to_owned())]),
    )])));
    let metrics = Metrics::default();
    let runtime = LocalRuntime::new(LocalRuntimeConfig {
        worker_command: vec![python().into(), fake_worker().into()],
        state_dir: state.path().join("state"),
        unsafe_no_sandbox: false,
        manifests_dir: Some(manifests.path().to_owned()),
        secrets,
        metrics: metrics.clone(),
        max_concurrent_per_worker: 8,
    })
    .unwrap();
    Fixture { runtime, metrics, state, _manifests: manifests }
}

fn session(id: &str) -> SessionInfo {
    SessionInfo {
        namespace: "default".into(),
        id: id.into(),
        subject: "alice".into(),
        groups: vec![],
        client_name: "test".into(),
        client_version: "1".into(),
        protocol_version: None,
    }
}

fn request(arguments: Value) -> CallRequest {
    CallRequest::new("c-1", arguments, false)
}

/// What the fake worker reported about itself.
async fn call(f: &Fixture, session: &str, tool: &ToolConfig, arguments: Value) -> Value {
    let result = f.runtime.call(session, tool, request(arguments), &CancellationToken::new()).await.unwrap();
    serde_json::from_str(&result.content).unwrap()
}

fn metrics_text(metrics: &Metrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

fn alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

fn worker_dirs(f: &Fixture) -> Vec<PathBuf> {
    std::fs::read_dir(f.state.path().join("state")).unwrap().map(|e| e.unwrap().path()).collect()
}

#[tokio::test]
async fn first_call_starts_a_private_worker_with_its_credentials_and_nothing_else() {
    let f = fixture();
    f.runtime.start_session(session("s1")).await.unwrap();
    let t = tool(
        "read_note",
        json!({"credentials": [
            {"secretRef": {"name": "gh", "key": "token"}, "env": "CRED_GH"},
            {"secretRef": {"name": "gh", "key": "token"}, "file": "gh-token"}
        ]}),
    );
    let seen = call(&f, "s1", &t, json!({"path": "a.md"})).await;
    assert_eq!(seen["arguments"], json!({"path": "a.md"}));
    assert_eq!(seen["envValues"], json!({"CRED_GH": "gh-s3cret"}));
    let env: Vec<&str> = seen["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(!env.iter().any(|k| k.starts_with("CARGO") || *k == "USER"), "the gateway's environment leaked: {env:?}");
    let files = seen["credentialFiles"].as_object().unwrap();
    assert_eq!(files.len(), 1);
    let (path, file) = files.iter().next().unwrap();
    assert_eq!((file["mode"].as_str().unwrap(), file["value"].as_str().unwrap()), ("0o600", "gh-s3cret"));

    let dirs = worker_dirs(&f);
    assert_eq!(dirs.len(), 1);
    assert!(path.starts_with(dirs[0].to_str().unwrap()));
    assert_eq!(std::fs::metadata(&dirs[0]).unwrap().permissions().mode() & 0o777, 0o700);
    let argv = seen["argv"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect::<Vec<_>>().join(" ");
    assert!(argv.starts_with("sandbox --network none "), "{argv}");
    assert!(argv.contains(&format!("--rw-bind {}", dirs[0].display())), "{argv}");
    // Nothing of the host is bound but the worker dir: not the manifests dir, not the state dir.
    assert!(!argv.contains("--hide") && !argv.contains("--ro-bind"), "{argv}");
    assert!(argv.contains(&format!("-- serve --listen unix:{}/worker.sock --token-sha256 ", dirs[0].display())), "{argv}");

    // Batch scheduling: waking the worker with a call does not preempt the gateway.
    // SAFETY: sched_getscheduler(2) reads the policy of a process by pid.
    assert_eq!(unsafe { libc::sched_getscheduler(seen["pid"].as_i64().unwrap() as i32) }, libc::SCHED_BATCH);

    // The next call reuses the worker and its connection.
    let again = call(&f, "s1", &t, json!({})).await;
    assert_eq!(again["pid"], seen["pid"]);
    assert_eq!(again["connections"], 1);
    assert!(metrics_text(&f.metrics).contains("toolwarden_worker_start_duration_seconds_count{runtime=\"local\"} 1"));
    f.runtime.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_call_ends_at_once_and_its_worker_serves_the_next_call() {
    let f = fixture();
    f.runtime.start_session(session("s1")).await.unwrap();
    let t = tool("read_note", json!({}));
    let first = call(&f, "s1", &t, json!({})).await;
    let cancel = CancellationToken::new();
    let slow = f.runtime.call("s1", &t, request(json!({"sleep": 60})), &cancel);
    let client = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        cancel.cancel();
    };
    let (ended, ()) = tokio::join!(tokio::time::timeout(std::time::Duration::from_secs(20), slow), client);
    let err = ended.expect("a cancelled call ends without waiting for the tool").unwrap_err();
    assert_eq!(err.code, "cancelled", "{err}");
    // Cancelling is not a failure of the worker: it is kept, not replaced.
    assert_eq!(call(&f, "s1", &t, json!({})).await["pid"], first["pid"]);
    f.runtime.shutdown().await;
}

#[tokio::test]
async fn concurrent_first_calls_of_one_tool_share_one_worker() {
    let f = fixture();
    f.runtime.start_session(session("s1")).await.unwrap();
    let t = tool("read_note", json!({}));
    let calls = (0..8).map(|_| call(&f, "s1", &t, json!({"sleep": 0.05})));
    let pids: std::collections::BTreeSet<i64> =
        futures::future::join_all(calls).await.iter().map(|seen| seen["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_eq!(worker_dirs(&f).len(), 1);
    // Another session, or another tool, gets its own worker.
    f.runtime.start_session(session("s2")).await.unwrap();
    let other_session = call(&f, "s2", &t, json!({})).await["pid"].as_i64().unwrap();
    let other_tool = call(&f, "s1", &tool("list_notes", json!({})), json!({})).await["pid"].as_i64().unwrap();
    assert!(!pids.contains(&other_session) && !pids.contains(&other_tool) && other_session != other_tool);
    f.runtime.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_dies_mid_call_fails_that_call_and_the_next_call_starts_a_new_one() {
    let f = fixture();
    f.runtime.start_session(session("s1")).await.unwrap();
    let dying = tool("read_note", json!({"labels": {"fake": "die"}}));
    let err = f.runtime.call("s1", &dying, request(json!({})), &CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.code, "worker_died", "{err:?}");
    // The same tool, now healthy (a manifest edit): a fresh worker answers.
    let healthy = tool("read_note", json!({}));
    let seen = call(&f, "s1", &healthy, json!({})).await;
    assert!(alive(seen["pid"].as_i64().unwrap()));
    f.runtime.shutdown().await;
}

#[tokio::test]
async fn a_changed_tool_gets_a_new_worker_and_the_old_one_is_stopped() {
    let f = fixture();
    f.runtime.start_session(session("s1")).await.unwrap();
    let first = call(&f, "s1", &tool("read_note", json!({})), json!({})).await["pid"].as_i64().unwrap();
    let second = call(&f, "s1", &tool("read_note", json!({"timeoutMs": 5000})), json!({})).await["pid"].as_i64().unwrap();
    assert_ne!(first, second);
    for _ in 0..100 {
        if !alive(first) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!alive(first), "the replaced worker {first} still runs");
    f.runtime.shutdown().await;
}

#[tokio::test]
async fn a_sandbox_refused_by_the_kernel_is_sandbox_unavailable_with_its_sentence() {
    let f = fixture();
    f.runtime.start_session(session("s1")).await.unwrap();
    let err = f.runtime.call("s1", &tool("read_note", json!({"labels": {"fake": "exit3"}})), request(json!({})), &CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.code, "sandbox_unavailable");
    assert!(err.message.contains("user namespaces are not available"), "{}", err.message);
    assert!(metrics_text(&f.metrics).contains(r#"toolwarden_worker_start_failures_total{runtime="local",reason="sandbox_unavailable"} 1"#));
    assert!(worker_dirs(&f).is_empty(), "the failed worker's directory was left behind");
    f.runtime.shutdown().await;
}

#[tokio::test]
async fn a_missing_secret_is_refused_before_anything_starts() {
    let f = fixture();
    f.runtime.start_session(session("s1")).await.unwrap();
    let t = tool("read_note", json!({"credentials": [{"secretRef": {"name": "gh", "key": "nope"}, "env": "CRED_X"}]}));
    let err = f.runtime.call("s1", &t, request(json!({})), &CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.code, "missing_credential");
    assert!(err.message.contains("Secret default/gh has no key nope"), "{}", err.message);
    assert!(worker_dirs(&f).is_empty());
}

#[tokio::test]
async fn ending_a_session_stops_its_workers_and_removes_their_dirs_idempotently() {
    let f = fixture();
    f.runtime.start_session(session("s1")).await.unwrap();
    let pid = call(&f, "s1", &tool("read_note", json!({})), json!({})).await["pid"].as_i64().unwrap();
    assert!(alive(pid));
    f.runtime.end_session("s1", "deleted").await;
    f.runtime.end_session("s1", "deleted").await;
    assert!(!alive(pid), "worker {pid} survived the end of its session");
    assert!(worker_dirs(&f).is_empty());
    let err = f.runtime.call("s1", &tool("read_note", json!({})), request(json!({})), &CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.code, "unknown_session");
    assert!(metrics_text(&f.metrics).contains("toolwarden_worker_pods_active 0"));
}

#[tokio::test]
async fn shutdown_stops_every_worker_and_refuses_new_calls() {
    let f = fixture();
    let mut pids = Vec::new();
    for s in ["s1", "s2"] {
        f.runtime.start_session(session(s)).await.unwrap();
        pids.push(call(&f, s, &tool("read_note", json!({})), json!({})).await["pid"].as_i64().unwrap());
    }
    f.runtime.shutdown().await;
    assert!(pids.iter().all(|p| !alive(*p)), "{pids:?}");
    assert!(!f.state.path().join("state").exists(), "the state directory is removed with its workers' directories");
    let err = f.runtime.start_session(session("s3")).await.unwrap_err();
    assert_eq!(err.code, "shutting_down");
}

#[tokio::test]
async fn a_start_cut_off_half_way_leaves_no_directory_and_no_count_behind() {
    let f = fixture();
    f.runtime.start_session(session("s1")).await.unwrap();
    let never_ready = tool("read_note", json!({"labels": {"fake": "slowstart"}}));
    // The gateway's own bound on a call drops it while its worker is still starting.
    let never = CancellationToken::new();
    let call = f.runtime.call("s1", &never_ready, request(json!({})), &never);
    assert!(tokio::time::timeout(std::time::Duration::from_millis(500), call).await.is_err(), "the worker never becomes ready");
    assert_eq!(worker_dirs(&f).len(), 1, "its directory was made");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let gauge = metrics_text(&f.metrics).lines().find(|l| l.starts_with("toolwarden_worker_pods_active ")).map(str::to_owned);
        if worker_dirs(&f).is_empty() && gauge.as_deref() == Some("toolwarden_worker_pods_active 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {:?}, {gauge:?}", worker_dirs(&f));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
