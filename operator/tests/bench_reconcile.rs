//! Benchmark (ignored by default; run with
//! `cargo test --release -p toolwarden-operator --test bench_reconcile -- --ignored --nocapture`):
//! reconcile 500 McpTools and 200 ToolPolicies in one namespace from scratch against an in-memory API
//! server — objects built, config compiled, API calls counted — then once more with nothing changed.

mod support;

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use support::*;
use toolwarden_core::compiler::compile_namespace;
use toolwarden_core::resources::{McpTool, ToolPolicy};
use toolwarden_operator::context::Settings;
use toolwarden_operator::namespace::reconcile::reconcile_namespace;
use toolwarden_operator::tool::build::build_network_policy;
use toolwarden_operator::tool::reconcile::reconcile_tool;

const TOOLS: usize = 500;
const POLICIES: usize = 200;

fn tools() -> Vec<McpTool> {
    (0..TOOLS)
        .map(|i| {
            let extra = match i % 3 {
                0 => json!({"credentials": [{"secretRef": {"name": format!("creds-{}", i % 10), "key": format!("token-{i}")}, "env": "TOKEN"}],
                            "egress": [{"cidr": "140.82.112.0/20", "ports": [443]}]}),
                1 => json!({"egress": [{"cidr": "0.0.0.0/0", "ports": [443, 80]}]}),
                _ => json!({}),
            };
            tool("bench", &format!("read-item-{i}"), 1, extra)
        })
        .collect()
}

fn policies() -> Vec<ToolPolicy> {
    (0..POLICIES)
        .map(|i| {
            let mut spec = json!({
                "subjects": {"groups": [format!("team-{i}")]},
                "tools": {"names": [format!("read_item_{}", i), format!("read_item_{}", i + 200)]},
                "decision": "allow"
            });
            if i % 2 == 0 {
                spec["arguments"] = json!([
                    {"argument": "path", "maxLength": 200},
                    {"expression": "!args.path.startsWith('/etc')", "message": "no system files"}
                ]);
            }
            policy("bench", &format!("team-{i}-reads"), spec)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn reconcile_500_tools_and_200_policies_from_scratch() {
    let tools = tools();
    let policies = policies();
    let fake = Fake::default();
    for s in 0..10 {
        let data: Vec<(String, String)> = (0..TOOLS).filter(|i| i % 10 == s).map(|i| (format!("token-{i}"), format!("value-{i}"))).collect();
        let refs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        fake.put(&format!("/api/v1/namespaces/bench/secrets/creds-{s}"), secret("bench", &format!("creds-{s}"), &refs));
    }
    for t in &tools {
        let path = format!("/apis/toolwarden.dev/v1alpha1/namespaces/bench/mcptools/{}", t.metadata.name.as_deref().unwrap());
        fake.put(&path, serde_json::to_value(t).unwrap());
    }
    for p in &policies {
        let path = format!("/apis/toolwarden.dev/v1alpha1/namespaces/bench/toolpolicies/{}", p.metadata.name.as_deref().unwrap());
        fake.put(&path, serde_json::to_value(p).unwrap());
    }

    // Pure parts alone.
    let started = Instant::now();
    let compiled = compile_namespace("bench", &tools.iter().collect::<Vec<_>>(), &policies.iter().collect::<Vec<_>>());
    let compile_time = started.elapsed();
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors.first());
    let config_bytes = compiled.config.to_json().len();
    let started = Instant::now();
    for t in &tools {
        build_network_policy(t, &Settings::default()).unwrap();
    }
    let build_time = started.elapsed();

    // From scratch: the namespace (config, baseline, 200 policy statuses), then every tool.
    let (client, handle) = client();
    let ctx = context(client, Settings::default());
    let server = tokio::spawn(fake.clone().serve(handle));
    let tool_arcs: Vec<Arc<McpTool>> = tools.iter().cloned().map(Arc::new).collect();
    let policy_arcs: Vec<Arc<ToolPolicy>> = policies.iter().cloned().map(Arc::new).collect();
    let started = Instant::now();
    let outcome = reconcile_namespace(&ctx, "bench", &tool_arcs, &policy_arcs).await.unwrap();
    let namespace_time = started.elapsed();
    let namespace_calls = fake.total_calls();
    let started = Instant::now();
    for t in &tools {
        reconcile_tool(t, &ctx).await.unwrap();
    }
    let tools_time = started.elapsed();
    let calls = fake.calls.lock().unwrap().clone();
    let total = fake.total_calls();

    // Steady state: the same objects carrying the status the operator wrote; nothing changed.
    let with_status: Vec<McpTool> = tools
        .iter()
        .map(|t| {
            let mut t = t.clone();
            let path = format!("/apis/toolwarden.dev/v1alpha1/namespaces/bench/mcptools/{}", t.metadata.name.as_deref().unwrap());
            let stored = fake.objects.lock().unwrap().get(&path).cloned().unwrap();
            t.status = Some(serde_json::from_value(stored["status"].clone()).unwrap());
            t
        })
        .collect();
    fake.calls.lock().unwrap().clear();
    let started = Instant::now();
    for t in &with_status {
        reconcile_tool(t, &ctx).await.unwrap();
    }
    let steady_time = started.elapsed();
    let steady_calls = fake.calls.lock().unwrap().clone();
    drop(ctx);
    server.abort();

    assert!(outcome.plan.is_some());
    assert_eq!(outcome.policy_status_writes, POLICIES);
    assert_eq!(calls.get("PATCH object").copied().unwrap_or(0), 1 + 1 + TOOLS + TOOLS.div_ceil(3), "ConfigMap, baseline, 500 NetworkPolicies, 167 Secrets");
    assert_eq!(calls.get("PATCH status").copied().unwrap_or(0), POLICIES + TOOLS);
    assert_eq!(steady_calls.get("PATCH status"), None, "an unchanged tool writes no status");

    println!("--- reconcile {TOOLS} McpTools + {POLICIES} ToolPolicies in one namespace ---");
    println!("compile_namespace (pure):           {:>8.1} ms   config.json {config_bytes} bytes", compile_time.as_secs_f64() * 1e3);
    println!("build {TOOLS} NetworkPolicies (pure):  {:>8.1} ms", build_time.as_secs_f64() * 1e3);
    println!("namespace reconcile from scratch:   {:>8.1} ms   {namespace_calls} API calls", namespace_time.as_secs_f64() * 1e3);
    println!("{TOOLS} tool reconciles from scratch:    {:>8.1} ms   {} API calls", tools_time.as_secs_f64() * 1e3, total - namespace_calls);
    println!("total from scratch:                 {:>8.1} ms   {total} API calls: {calls:?}", (namespace_time + tools_time).as_secs_f64() * 1e3);
    println!(
        "{TOOLS} tool reconciles, nothing changed: {:>8.1} ms   {} API calls: {steady_calls:?}",
        steady_time.as_secs_f64() * 1e3,
        steady_calls.values().sum::<usize>()
    );
}
