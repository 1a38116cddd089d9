//! Benchmarks on the real cluster (reported, never asserted; run with scripts/bench-cluster.sh, which
//! brings up the cluster of scripts/cluster.sh with the shipped images):
//!
//! - cold worker start: a session's first call of a tool, from the call to its answer, which includes
//!   creating the worker pod, the node starting it and the call through it (p50/p99 over 50 sessions);
//! - warm-pool bind: the same with a ready warm pod bound instead (p50/p99);
//! - API requests the gateway made per session (from the API server's audit log);
//! - the operator reconciling 500 McpTools and 200 ToolPolicies from scratch: time until every tool is
//!   Ready and the gateway config holds all of them, and the operator's API requests;
//! - load (`load_benchmark`, its own run): 200 concurrent sessions, each with its own worker pod, calling
//!   once a second for five minutes (`BENCH_LOAD_SECONDS`), then all ending: pod start and call latency
//!   p50/p99, API requests per session, gateway and operator CPU and memory (their pods' cgroups), and
//!   the time until nothing of theirs is left.
//!
//! The measured system is what users run: the chart with the release images, in the cluster; this
//! driver only makes requests and reads clocks.

mod e2e_support;
mod gateway_support;

use std::time::{Duration, Instant};

use e2e_support::{AGENT_TOKEN, HelmRelease, TestNamespace, items, json_of, kubectl_ok, kubectl_stdin, tool_image};
use gateway_support::{Client, text};
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

const COLD_SESSIONS: usize = 50;
const WARM_SESSIONS: usize = 30;
const TOOLS: usize = 500;
const POLICIES: usize = 200;

async fn connect(url: &str) -> Client {
    let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(AGENT_TOKEN));
    rmcp::ServiceExt::serve(ClientConfig::new(ClientCapabilities::default(), Implementation::new("bench", "1.0")), transport)
        .await
        .expect("the MCP client connects through the gateway Service")
}

/// One session's first call of `tool`: its latency.
async fn first_call(url: &str, tool: &str) -> Duration {
    let client = connect(url).await;
    let mut params = CallToolRequestParams::new(tool.to_owned());
    params.arguments = json!({"text": "bench"}).as_object().cloned();
    let started = Instant::now();
    let result = client.call_tool(params).await.expect("tools/call");
    let took = started.elapsed();
    assert_eq!(result.is_error, Some(false), "{}", text(&result));
    client.cancel().await.expect("the session ends");
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "bench: {what}: n={} p50={} ms p99={} ms min={} ms max={} ms",
        samples.len(),
        percentile(&samples, 50.0).as_millis(),
        percentile(&samples, 99.0).as_millis(),
        samples[0].as_millis(),
        samples[samples.len() - 1].as_millis()
    );
}

/// Requests `user` made since `since` (RFC 3339, compared as text: the audit log uses one format),
/// from the API server's audit log (scripts/cluster.sh writes it).
fn api_requests(user: &str, since: &str) -> usize {
    api_requests_by_kind(user, since).iter().map(|(_, n)| n).sum()
}

/// [`api_requests`] by verb and resource (`create pods`, `patch mcpsessions/status`…), most first. A
/// request counts once: a watch has two audit events (response started, complete) under one audit id.
fn api_requests_by_kind(user: &str, since: &str) -> Vec<(String, usize)> {
    let path = std::env::var("TOOLWARDEN_E2E_AUDIT_LOG").expect("TOOLWARDEN_E2E_AUDIT_LOG (scripts/bench-cluster.sh sets it)");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut seen = std::collections::HashSet::new();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for event in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if event["user"]["username"] != user || !event["requestReceivedTimestamp"].as_str().is_some_and(|t| t >= since) {
            continue;
        }
        if !seen.insert(event["auditID"].as_str().unwrap_or_default().to_owned()) {
            continue;
        }
        let object = &event["objectRef"];
        let resource = match object["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", object["resource"].as_str().unwrap_or("?")),
            None => object["resource"].as_str().unwrap_or("?").to_owned(),
        };
        *counts.entry(format!("{} {resource}", event["verb"].as_str().unwrap_or("?"))).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1));
    counts
}

/// Now, as the audit log writes times (the API server runs on this machine's clock).
fn now_rfc3339() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"]).output().expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const TENANT_TOOLS: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-echo}
spec:
  description: Returns its text.
  effect: read
  inputSchema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
  runtime: {exec: {image: "TOOL_IMAGE", command: [echo], args: ["{{text}}"]}}
  outputTrust: trusted
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-warm-echo}
spec:
  description: Returns its text, from a warm pool.
  effect: read
  inputSchema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
  runtime: {exec: {image: "TOOL_IMAGE", command: [echo], args: ["{{text}}"]}}
  outputTrust: trusted
  sandbox: {warmPool: 2}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: bench-may-echo}
spec:
  subjects: {users: [e2e]}
  tools: {names: ["*"]}
  decision: allow
"#;

/// The one gateway replica's metrics, through its metrics Service.
async fn gateway_metrics(release: &HelmRelease) -> String {
    let ip = kubectl_ok(&["get", "service", &format!("{}-gateway-metrics", release.fullname), "-n", &release.namespace.0, "-o", "jsonpath={.spec.clusterIP}:{.spec.ports[0].port}"]);
    reqwest::get(format!("http://{ip}/metrics")).await.expect("gateway metrics").text().await.unwrap()
}

/// The one gateway replica's count of warm-pool hits.
async fn warm_pool_hits(release: &HelmRelease) -> f64 {
    gateway_metrics(release)
        .await
        .lines()
        .filter(|l| l.starts_with("toolwarden_warm_pool_hits_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The gateway's own worker start times for `runtime` (`kubernetes-warm`: taking and binding a warm pod;
/// `kubernetes`: a new pod, its turn in the start queue included), from its histogram: the count and the
/// upper bounds of the buckets holding the 50th and 99th percentiles.
async fn worker_start_histogram(release: &HelmRelease, runtime: &str) -> (u64, f64, f64) {
    let body = gateway_metrics(release).await;
    let prefix = "toolwarden_worker_start_duration_seconds_bucket{";
    let label = format!("runtime=\"{runtime}\"");
    let mut buckets: Vec<(f64, u64)> = body
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse::<f64>().ok()? as u64))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last().map_or(0, |b| b.1);
    let bound = |q: f64| buckets.iter().find(|(_, n)| *n as f64 >= q * count as f64).map_or(f64::NAN, |b| b.0);
    (count, bound(0.5), bound(0.99))
}

fn ready_warm_pods(tenant: &str) -> Vec<String> {
    items(&json_of(&["get", "pods", "-n", tenant, "-l", "toolwarden.dev/pool=unbound,toolwarden.dev/tool=get-warm-echo", "-o", "json"]))
        .into_iter()
        .filter(e2e_support::is_ready)
        .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn sessions_bench(release: &HelmRelease) {
    let tenant = TestNamespace::create("tw-bench-sessions");
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant.0, "-f", "-"], &TENANT_TOOLS.replace("TOOL_IMAGE", &tool_image()));
    assert!(ok, "{out}");
    kubectl_ok(&["wait", "-n", &tenant.0, "--for=condition=Ready", "mcptool/get-echo", "mcptool/get-warm-echo", "--timeout=60s"]);
    let url = release.mcp_url(&tenant.0);
    // The gateway lists the tools once its config arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    while connect(&url).await.list_all_tools().await.map(|t| t.len()).unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "the gateway did not serve the bench tools");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let gateway_user = format!("system:serviceaccount:{}:{}-gateway", release.namespace.0, release.fullname);
    let since = now_rfc3339();
    let mut cold = Vec::new();
    for _ in 0..COLD_SESSIONS {
        cold.push(first_call(&url, "get_echo").await);
    }
    // Let the last sessions' pod deletions and status writes land before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requests = api_requests(&gateway_user, &since);
    let slowest = (0..cold.len()).max_by_key(|&i| cold[i]).unwrap_or(0);
    println!("bench: cold worker start: the first {} ms (it opens the gateway's pod watch); the slowest was number {} of {}", cold[0].as_millis(), slowest + 1, cold.len());
    summary("cold worker start (first call of a session, call to answer)", cold);
    println!("bench: gateway API requests per session (start, pod, status, end): {:.1}", requests as f64 / COLD_SESSIONS as f64);

    let mut warm = Vec::new();
    let mut missed = 0;
    while warm.len() < WARM_SESSIONS {
        let deadline = Instant::now() + Duration::from_secs(120);
        while ready_warm_pods(&tenant.0).is_empty() {
            assert!(Instant::now() < deadline, "no warm pod became ready within 120 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let hits = warm_pool_hits(release).await;
        let took = first_call(&url, "get_warm_echo").await;
        // Only calls the pool served count: the gateway may not have seen the pod's readiness yet.
        if warm_pool_hits(release).await > hits { warm.push(took) } else { missed += 1 }
        assert!(missed < WARM_SESSIONS, "the warm pool missed {missed} times");
    }
    summary("warm-pool bind (first call of a session, call to answer)", warm);
    println!("bench: warm-pool misses while measuring: {missed}");
}

fn operator_manifests() -> String {
    let image = tool_image();
    let mut out = String::new();
    for i in 0..TOOLS {
        let extra = match i % 3 {
            0 => "  egress: [{cidr: 140.82.112.0/20, ports: [443]}]\n".to_owned(),
            1 => format!("  credentials: [{{secretRef: {{name: bench-creds, key: token}}, env: TOKEN}}]\n  limits: {{timeout: {}s}}\n", 5 + i % 20),
            _ => String::new(),
        };
        out.push_str(&format!(
            "---\napiVersion: toolwarden.dev/v1alpha1\nkind: McpTool\nmetadata: {{name: get-item-{i}, labels: {{team: t{}}}}}\nspec:\n  description: Reads item {i}.\n  effect: read\n  inputSchema: {{type: object}}\n  runtime: {{exec: {{image: \"{image}\", command: [cat]}}}}\n{extra}",
            i % 10
        ));
    }
    for i in 0..POLICIES {
        let tools = match i % 2 {
            0 => format!("{{names: [get-item-{i}, get-item-{}]}}", i + 200),
            _ => format!("{{selector: {{matchLabels: {{team: t{}}}}}}}", i % 10),
        };
        out.push_str(&format!(
            "---\napiVersion: toolwarden.dev/v1alpha1\nkind: ToolPolicy\nmetadata: {{name: policy-{i}}}\nspec:\n  subjects: {{groups: [group-{}]}}\n  tools: {tools}\n  decision: allow\n",
            i % 20
        ));
    }
    out.push_str("---\napiVersion: v1\nkind: Secret\nmetadata: {name: bench-creds}\nstringData: {token: not-a-secret}\n");
    out
}

fn operator_bench(release: &HelmRelease) {
    let tenant = TestNamespace::create("tw-bench-operator");
    let operator_user = format!("system:serviceaccount:{}:{}-operator", release.namespace.0, release.fullname);
    let file = std::env::temp_dir().join(format!("tw-bench-operator-{}.yaml", tenant.0));
    std::fs::write(&file, operator_manifests()).unwrap();
    let since = now_rfc3339();
    let started = Instant::now();
    kubectl_ok(&["apply", "--server-side", "-n", &tenant.0, "-f", &file.display().to_string()]);
    let applied = started.elapsed();
    let _ = std::fs::remove_file(&file);
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let tools = items(&json_of(&["get", "mcptools", "-n", &tenant.0, "-o", "json"]));
        let ready = tools
            .iter()
            .filter(|t| e2e_support::is_ready(t))
            .count();
        let config = json_of(&["get", "configmap", "toolwarden-gateway-config", "-n", &tenant.0, "-o", "json", "--ignore-not-found"]);
        let in_config = config["data"]["config.json"]
            .as_str()
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
            .map(|c| (c["tools"].as_array().map_or(0, Vec::len), c["policies"].as_array().map_or(0, Vec::len)))
            .unwrap_or((0, 0));
        if ready == TOOLS && in_config == (TOOLS, POLICIES) {
            break;
        }
        assert!(Instant::now() < deadline, "after 15 min: {ready} of {TOOLS} tools Ready, config holds {in_config:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let requests = api_requests(&operator_user, &since);
    println!(
        "bench: operator, {TOOLS} McpTools + {POLICIES} ToolPolicies from scratch: {} ms until all Ready and in the gateway config (kubectl apply took {} ms); {requests} operator API requests ({:.1} per tool)",
        took.as_millis(),
        applied.as_millis(),
        requests as f64 / TOOLS as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark on the real cluster: scripts/bench-cluster.sh"]
async fn cluster_benchmarks() {
    assert!(std::env::var_os("KUBECONFIG").is_some(), "KUBECONFIG must point at the cluster (scripts/bench-cluster.sh)");
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One gateway replica, so its metrics are the whole gateway's.
    let release = HelmRelease::install(&["gateway.replicas=1"]);
    sessions_bench(&release).await;
    tokio::task::block_in_place(|| operator_bench(&release));
}

/// Concurrent sessions of the load benchmark (`BENCH_LOAD_SESSIONS`, default 200).
fn load_sessions() -> usize {
    std::env::var("BENCH_LOAD_SESSIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

const LOAD_TOOL: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: get-echo}
spec:
  description: Returns its text.
  effect: read
  inputSchema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
  runtime: {exec: {image: "TOOL_IMAGE", command: [echo], args: ["{{text}}"]}}
  outputTrust: trusted
  # Small requests, so that 200 workers fit the one node's two CPUs.
  limits: {cpu: 5m, memory: 32Mi}
  sandbox: {warmPool: WARM_POOL}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: bench-may-echo}
spec:
  subjects: {users: [e2e]}
  tools: {names: [get-echo]}
  decision: allow
"#;

/// CPU seconds used so far and peak memory bytes of a pod, from its cgroup (v1, cgroupfs driver).
fn pod_usage(namespace: &str, pod: &str) -> (f64, u64) {
    let uid = kubectl_ok(&["get", "pod", "-n", namespace, pod, "-o", "jsonpath={.metadata.uid}"]);
    let find = |controller: &str| {
        ["burstable", "besteffort", ""]
            .iter()
            .map(|qos| std::path::Path::new("/sys/fs/cgroup").join(controller).join("kubepods").join(qos).join(format!("pod{uid}")))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {controller} cgroup for pod {pod}"))
    };
    let read = |path: std::path::PathBuf| std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().parse::<u64>().unwrap_or(0);
    let cpu = read(find("cpuacct").join("cpuacct.usage")) as f64 / 1e9;
    let memory = read(find("memory").join("memory.max_usage_in_bytes"));
    (cpu, memory)
}

fn component_pods(release: &HelmRelease, component: &str) -> Vec<String> {
    let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/component={component}", release.name);
    items(&json_of(&["get", "pods", "-n", &release.namespace.0, "-l", &selector, "-o", "json"]))
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// The gateway's worker start timeout in the load benchmark (`BENCH_LOAD_START_TIMEOUT`, seconds,
/// default 180): long enough that no start under the load is cut off, so its p99 is the real one (cold
/// starts under the 200-session wave took up to 71 s, past the chart's default of 60 s).
fn load_start_timeout() -> u64 {
    std::env::var("BENCH_LOAD_START_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(180)
}

/// One `get_echo` call in `session` over raw HTTP: `Ok` when answered without error, else why (the
/// result's `toolwarden.dev/code`, the HTTP status, or the transport error). The client waits for a
/// worker start to time out before it does.
async fn echo_call(url: &str, session: &str, text: &str) -> Result<(), String> {
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_echo", "arguments": {"text": text}}});
    let patience = Duration::from_secs(load_start_timeout() + 30);
    let response = e2e_support::mcp_request(url, Some(session), &call).timeout(patience).send().await.map_err(|e| if e.is_timeout() { "client_timeout".to_owned() } else { "transport".to_owned() })?;
    let status = response.status();
    let body = response.text().await.map_err(|_| "body".to_owned())?;
    if !status.is_success() {
        return Err(format!("http_{}", status.as_u16()));
    }
    if body.contains(text) && !body.contains(r#""isError":true"#) {
        return Ok(());
    }
    Err(e2e_support::result_code(&body).unwrap_or_else(|| "error".to_owned()))
}

/// What a load session's first call took: its session id, latency and how it ended.
type FirstCall = (String, Duration, Result<(), String>);

/// One session of the load: its first call (which binds a warm pod or starts one), reported on
/// `first_calls`, then a call a second until `until`; then it ends (DELETE).
async fn load_session(url: String, index: usize, until: Instant, first_calls: tokio::sync::mpsc::UnboundedSender<FirstCall>) -> (Vec<Duration>, Vec<String>) {
    let session = e2e_support::open_raw_session(&url, &["get_echo"]).await;
    let text = format!("s{index}");
    let started = Instant::now();
    let first = echo_call(&url, &session, &text).await;
    let _ = first_calls.send((session.clone(), started.elapsed(), first.clone()));
    // The driver reads first calls until every session dropped its sender.
    drop(first_calls);
    let (mut calls, mut failed) = (Vec::new(), first.err().into_iter().collect::<Vec<_>>());
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let began = Instant::now();
        match echo_call(&url, &session, &text).await {
            Ok(()) => calls.push(began.elapsed()),
            Err(why) => failed.push(why),
        }
    }
    let _ = reqwest::Client::new().delete(&url).bearer_auth(AGENT_TOKEN).header("Mcp-Session-Id", &session).send().await;
    (calls, failed)
}

/// Splits first calls by what served them: a pod bound from the warm pool (the gateway's bind patch
/// shows in its managed fields) or one started for the session.
fn warm_and_cold(tenant: &str, first: &[FirstCall]) -> (Vec<Duration>, Vec<Duration>, usize) {
    let sessions = items(&json_of(&["get", "mcpsessions", "-n", tenant, "-o", "json"]));
    // kubectl leaves managed fields out unless asked.
    let pods = items(&json_of(&["get", "pods", "-n", tenant, "-l", "app.kubernetes.io/component=worker", "-o", "json", "--show-managed-fields"]));
    let bound_from_pool = |pod: &str| {
        pods.iter().filter(|p| p["metadata"]["name"] == pod).any(|p| {
            let fields = p["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
            fields.iter().any(|f| f["manager"] == "toolwarden-gateway" && f["operation"] == "Update")
        })
    };
    let (mut warm, mut cold, mut unknown) = (Vec::new(), Vec::new(), 0);
    for (id, took, _) in first.iter().filter(|(_, _, ended)| ended.is_ok()) {
        let pod = sessions
            .iter()
            .find(|s| s["metadata"]["annotations"]["toolwarden.dev/session-id"] == id.as_str())
            .and_then(|s| s["status"]["workers"][0]["pod"].as_str().map(str::to_owned));
        match pod {
            Some(pod) if bound_from_pool(&pod) => warm.push(*took),
            Some(_) => cold.push(*took),
            None => unknown += 1,
        }
    }
    (warm, cold, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark on the real cluster: scripts/bench-cluster.sh load_benchmark"]
async fn load_benchmark() {
    assert!(std::env::var_os("KUBECONFIG").is_some(), "KUBECONFIG must point at the cluster (scripts/bench-cluster.sh)");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seconds: u64 = std::env::var("BENCH_LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let load_sessions = load_sessions();
    // `BENCH_LOAD_WARM_POOL` (default 50, the most a tool may ask for): ready pods the first calls bind.
    let warm_pool: u32 = std::env::var("BENCH_LOAD_WARM_POOL").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let start_timeout = format!("gateway.workerStartTimeout={}s", load_start_timeout());
    let release = HelmRelease::install(&["gateway.replicas=1", "gateway.maxSessionsPerSubject=1000", &start_timeout]);
    println!("bench: load: {load_sessions} sessions, worker start timeout {} s", load_start_timeout());
    let tenant = TestNamespace::create("tw-bench-load");
    let tool = LOAD_TOOL.replace("TOOL_IMAGE", &tool_image()).replace("WARM_POOL", &warm_pool.to_string());
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant.0, "-f", "-"], &tool);
    assert!(ok, "{out}");
    kubectl_ok(&["wait", "-n", &tenant.0, "--for=condition=Ready", "mcptool/get-echo", "--timeout=60s"]);
    let url = release.mcp_url(&tenant.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while connect(&url).await.list_all_tools().await.map(|t| t.len()).unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "the gateway did not serve the bench tool");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pool_filled = Instant::now();
    loop {
        let ready = items(&json_of(&["get", "pods", "-n", &tenant.0, "-l", "toolwarden.dev/pool=unbound", "-o", "json"]))
            .iter()
            .filter(|p| e2e_support::is_ready(p))
            .count();
        if ready >= warm_pool as usize {
            break;
        }
        assert!(pool_filled.elapsed() < Duration::from_secs(600), "the warm pool did not fill within 10 minutes ({ready} ready)");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("bench: load: a warm pool of {warm_pool} pods ready {} s after the tool", pool_filled.elapsed().as_secs());
    let (gateway, operator) = (component_pods(&release, "gateway"), component_pods(&release, "operator"));
    let usage = || {
        let sum = |pods: &[String]| pods.iter().map(|p| pod_usage(&release.namespace.0, p)).fold((0.0, 0), |a, u| (a.0 + u.0, a.1.max(u.1)));
        (sum(&gateway), sum(&operator))
    };
    let gateway_user = format!("system:serviceaccount:{}:{}-gateway", release.namespace.0, release.fullname);
    let since = now_rfc3339();
    let before = usage();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
    let sessions: Vec<_> = (0..load_sessions).map(|i| tokio::spawn(load_session(url.clone(), i, until, first_tx.clone()))).collect();
    drop(first_tx);
    let mut first = Vec::new();
    while let Some(call) = first_rx.recv().await {
        first.push(call);
    }
    // Every first call is done and the sessions are still open: their McpSessions name their pods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (warm, cold, unknown) = warm_and_cold(&tenant.0, &first);
    let histograms = [worker_start_histogram(&release, "kubernetes-warm").await, worker_start_histogram(&release, "kubernetes").await];
    let first_failed = first.iter().filter(|(_, _, ended)| ended.is_err()).count();
    let (mut calls, mut why_failed) = (Vec::new(), std::collections::BTreeMap::<String, usize>::new());
    for session in sessions {
        let (each, errors) = session.await.expect("a load session");
        calls.extend(each);
        for why in errors {
            *why_failed.entry(why).or_default() += 1;
        }
    }
    let failed: usize = why_failed.values().sum();
    let ran = started.elapsed();
    let ended = Instant::now();
    let cleared = loop {
        // The warm pool's unbound pods stay while the tool asks for them; every session's pod goes.
        let pods = items(&json_of(&["get", "pods", "-n", &tenant.0, "-l", "app.kubernetes.io/component=worker,toolwarden.dev/pool!=unbound", "-o", "json"]));
        let left = items(&json_of(&["get", "mcpsessions", "-n", &tenant.0, "-o", "json"]));
        if pods.is_empty() && left.is_empty() {
            break ended.elapsed();
        }
        assert!(ended.elapsed() < Duration::from_secs(600), "{} worker pods and {} McpSessions left 10 min after the sessions ended", pods.len(), left.len());
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = usage();
    let by_kind = api_requests_by_kind(&gateway_user, &since);
    let requests: usize = by_kind.iter().map(|(_, n)| n).sum();
    let total_calls = calls.len();
    println!("bench: load: first calls of {load_sessions} sessions opened at once: {} bound a warm pod, {} started one, {first_failed} failed, {unknown} not classified", warm.len(), cold.len());
    if !warm.is_empty() {
        summary("load: first call, warm-pool bind (call to answer)", warm);
    }
    if !cold.is_empty() {
        summary("load: first call, cold worker start (call to answer)", cold);
    }
    for ((n, p50, p99), what) in histograms.into_iter().zip(["warm-pool bind", "cold pod start (queue included)"]) {
        println!("bench: load: gateway's {what} time (its histogram, bucket upper bounds): n={n} p50 <= {:.0} ms p99 <= {:.0} ms", p50 * 1e3, p99 * 1e3);
    }
    summary(&format!("load: calls on running workers, {load_sessions} sessions calling once a second"), calls);
    println!("bench: load: {total_calls} calls in {} s, {failed} failed: {why_failed:?}", ran.as_secs());
    println!("bench: load: gateway API requests per session: {:.1}", requests as f64 / load_sessions as f64);
    for (kind, n) in by_kind {
        println!("bench: load:   {kind}: {:.1} per session", n as f64 / load_sessions as f64);
    }
    let cpu = |a: f64, b: f64| (b - a) / ran.as_secs_f64();
    println!("bench: load: gateway CPU {:.2} cores on average, peak memory {} MiB", cpu((before.0).0, (after.0).0), (after.0).1 >> 20);
    println!("bench: load: operator CPU {:.3} cores on average, peak memory {} MiB", cpu((before.1).0, (after.1).0), (after.1).1 >> 20);
    println!("bench: load: every worker pod and McpSession gone {} s after the sessions ended", cleared.as_secs());
}

const FAILOVERS: usize = 20;

/// Ready warm pods of replica `gateway` waiting for a session in `tenant` (a lost replica's own stay
/// until another replica deletes them, and must not count).
fn ready_unbound_pods(tenant: &str, gateway: &str) -> usize {
    let selector = format!("toolwarden.dev/pool=unbound,toolwarden.dev/gateway={gateway}");
    items(&json_of(&["get", "pods", "-n", tenant, "-l", &selector, "-o", "json"]))
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| e2e_support::is_ready(p))
        .count()
}

/// The names (gateway ids) of two Ready gateway replicas of `release`.
fn two_ready_gateways(release: &HelmRelease) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/component=gateway", release.name);
        let pods = items(&json_of(&["get", "pods", "-n", &release.namespace.0, "-l", &selector, "-o", "json"]));
        let ready: Vec<String> = pods
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| e2e_support::is_ready(p))
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        if ready.len() == 2 {
            return ready;
        }
        assert!(Instant::now() < deadline, "two gateway replicas were not Ready within 180 s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One call in `session`, retried while it fails (as a client does when its replica disappears);
/// returns when it was answered.
async fn call_until_answered(url: &str, session: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_echo", "arguments": {"text": "bench"}}});
    loop {
        if let Ok(response) = e2e_support::mcp_request(url, Some(session), &call).send().await
            && response.status().is_success()
            && let Ok(body) = response.text().await
            && body.contains("bench")
            && !body.contains(r#""isError":true"#)
        {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "no answer within 60 s of the failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark on the real cluster: scripts/bench-cluster.sh failover_benchmark"]
async fn failover_benchmark() {
    assert!(std::env::var_os("KUBECONFIG").is_some(), "KUBECONFIG must point at the cluster (scripts/bench-cluster.sh)");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let release = HelmRelease::install(&["gateway.replicas=2", "gateway.service.sessionAffinity=None"]);
    let tenant = TestNamespace::create("tw-bench-failover");
    // `BENCH_FAILOVER_WARM_POOL` (default 0): with a warm pool, the survivor binds a ready pod for the
    // session's next call instead of starting one.
    let warm_pool = std::env::var("BENCH_FAILOVER_WARM_POOL").unwrap_or_else(|_| "0".into());
    let tool = LOAD_TOOL.replace("TOOL_IMAGE", &tool_image()).replace("WARM_POOL", &warm_pool);
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant.0, "-f", "-"], &tool);
    assert!(ok, "{out}");
    kubectl_ok(&["wait", "-n", &tenant.0, "--for=condition=Ready", "mcptool/get-echo", "--timeout=60s"]);
    let url = release.mcp_url(&tenant.0);
    let mut took = Vec::new();
    let pool_size: usize = warm_pool.parse().unwrap_or(0);
    for round in 0..FAILOVERS {
        let gateways = two_ready_gateways(&release);
        // Steady state: both replicas' warm pools are full (a replacement replica fills its own first).
        let filled = Instant::now();
        while gateways.iter().any(|g| ready_unbound_pods(&tenant.0, g) < pool_size) {
            assert!(filled.elapsed() < Duration::from_secs(180), "the warm pools did not fill within 180 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let session_id = e2e_support::open_raw_session(&url, &["get_echo"]).await;
        call_until_answered(&url, &session_id).await;
        let session = items(&json_of(&["get", "mcpsessions", "-n", &tenant.0, "-o", "json"]))
            .into_iter()
            .find(|s| s["metadata"]["annotations"]["toolwarden.dev/session-id"] == session_id.as_str())
            .expect("the session's McpSession");
        let holder = session["metadata"]["labels"]["toolwarden.dev/gateway"].as_str().unwrap_or_default().to_owned();
        // Lost for real: the pod object goes (nothing restarts it) and its process is killed at once.
        kubectl_ok(&["delete", "pod", "-n", &release.namespace.0, &holder, "--grace-period=0", "--force"]);
        let pgrep = std::process::Command::new("pgrep").args(["-f", &format!("gateway-id {holder}( |$)")]).output().expect("pgrep");
        for pid in String::from_utf8_lossy(&pgrep.stdout).split_whitespace() {
            let _ = std::process::Command::new("kill").args(["-KILL", pid]).status();
        }
        let killed = Instant::now();
        let answered = call_until_answered(&url, &session_id).await;
        took.push(answered - killed);
        println!("bench: failover {round}: {} ms", (answered - killed).as_millis());
        let _ = reqwest::Client::new().delete(&url).bearer_auth(AGENT_TOKEN).header("Mcp-Session-Id", &session_id).send().await;
    }
    summary(&format!("failover: a session's next call after its replica was killed ({FAILOVERS} kills)"), took);
}
