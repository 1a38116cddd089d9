//! Benchmark (not a timed test): the gateway-side cost of starting a session, of starting a worker pod,
//! and of binding a warm pod, against an in-process API server that answers at once with canned bodies.
//! What it measures is the gateway's own work (building objects, serialising, the client stack,
//! parsing answers) plus one in-process round trip; a real API server adds its latency on top.
//!
//! Run: `cargo test --release -p toolwarden-gateway --test kubernetes_bench -- --ignored --nocapture`

mod kubernetes_support;

use std::time::{Duration, Instant};

use http::Response;
use kubernetes_support::{Handle, client, tool, whole};
use serde_json::json;
use toolwarden_gateway::kubernetes::pod::{Binding, WorkerPodParams, build_worker_pod};
use toolwarden_gateway::kubernetes::{KubernetesConfig, KubernetesRuntime, Metrics, SessionStart};

const N: usize = 2000;

/// Answers every request by kind, with bodies serialised once up front.
async fn auto_server(mut handle: Handle) {
    let session = json!({
        "apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpSession",
        "metadata": {"name": "s", "namespace": "bench", "uid": "session-uid", "resourceVersion": "1"},
        "spec": {"subject": "alice"}
    })
    .to_string();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "tw-bench", "namespace": "bench", "uid": "pod-uid", "resourceVersion": "2"},
        "status": {"phase": "Running", "podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]}
    })
    .to_string();
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}).to_string();
    while let Some((request, send)) = handle.next_request().await {
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let _ = request.into_body().collect_bytes().await;
        let body = match (method.as_str(), path.contains("/mcpsessions")) {
            ("DELETE", _) => status.clone(),
            (_, true) => session.clone(),
            (_, false) => pod.clone(),
        };
        send.send_response(Response::builder().status(200).body(whole(body)).unwrap());
    }
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{what:<44} n={:<5} median {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs  mean {:>7.1} µs",
        samples.len(),
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.9).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
}

fn start(i: usize) -> SessionStart {
    SessionStart { namespace: "bench".into(), id: format!("bench-{i}"), subject: "alice".into(), ..Default::default() }
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn bench_pod_builder() {
    let t = tool(0);
    let mut samples = Vec::with_capacity(N);
    for i in 0..N {
        let began = Instant::now();
        let pod = build_worker_pod(&WorkerPodParams {
            tool: &t,
            namespace: "bench",
            pod_name: format!("tw-search-issues-{i}"),
            worker_image: "ghcr.io/toolwarden/worker:bench",
            token_sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            gateway_id: "gw-0",
            binding: Binding::Session { name: "s".into(), uid: "u".into() },
            active_deadline_seconds: 3600,
        })
        .unwrap();
        std::hint::black_box(serde_json::to_vec(&pod).unwrap());
        samples.push(began.elapsed());
    }
    report("build + serialise a worker pod (pure)", samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn bench_session_start_cold_worker_and_warm_bind() {
    let (client, handle) = client();
    tokio::spawn(auto_server(handle));
    let config = KubernetesConfig { gateway_id: "gw-0".into(), ..KubernetesConfig::default() };
    let rt = KubernetesRuntime::new(client, config, Metrics::default());

    let mut session_starts = Vec::with_capacity(N);
    let mut cold = Vec::with_capacity(N);
    for i in 0..N {
        let began = Instant::now();
        rt.start_session(start(i)).await.unwrap();
        session_starts.push(began.elapsed());
        let began = Instant::now();
        let endpoint = rt.worker(&format!("bench-{i}"), &tool(0)).await.unwrap();
        assert!(!endpoint.warm);
        cold.push(began.elapsed());
    }
    report("session start (McpSession create)", session_starts);
    report("cold worker start (pod create, ready at once)", cold);

    let mut ends = Vec::with_capacity(N);
    for i in 0..N {
        let began = Instant::now();
        rt.end_session(&format!("bench-{i}"), "closed").await.unwrap();
        ends.push(began.elapsed());
    }
    report("session end (delete pods + McpSession)", ends);

    // Fill a pool of N, then bind one per new session.
    let warm_tool = tool(N as u32);
    rt.set_tools("bench", std::slice::from_ref(&warm_tool)).await;
    rt.clone().sweep().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.warm_ready() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rt.warm_ready(), N);
    let mut binds = Vec::with_capacity(N);
    for i in N..2 * N {
        rt.start_session(start(i)).await.unwrap();
        let began = Instant::now();
        let endpoint = rt.worker(&format!("bench-{i}"), &warm_tool).await.unwrap();
        assert!(endpoint.warm);
        binds.push(began.elapsed());
    }
    report("warm pod bind (one PATCH)", binds);
}
