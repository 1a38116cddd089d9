//! What the gateway adds to a tool call: `cargo bench --bench gateway_overhead` (release build).
//!
//! Two ways to run the same trivial tool (`benches/gateway_overhead_manifests`: `cat` shows the arguments
//! back) in the same sandboxed workers:
//! - direct: the local runtime in this process calls its worker over the worker protocol (keep-alive
//!   unix socket), as the gateway does after its checks;
//! - gateway: `toolwarden dev` serves the tool and a bare keep-alive HTTP/1.1 client sends MCP
//!   `tools/call` requests (one MCP session per client, so each client has its own worker in both modes).
//!
//! Each mode runs with 1 client and with 32 concurrent clients, `BENCH_CALLS` timed calls each (default
//! 10,000) after a warm-up. The two modes' timed calls alternate in blocks (ABBA), so both see the same
//! moments of a shared machine. Reported: median, p90, p99 latency of both and their difference,
//! throughput, CPU time per call (scheduler nanoseconds from /proc, workers excluded) of the gateway
//! process and of this process in direct mode, and their difference (what the gateway adds), and the
//! gateway's memory (RSS) at idle and per idle MCP session. Targets (issue 4) are printed next to the
//! figures.
//!
//! The gateway runs with `BENCH_THREADS` threads (default 1, as in the chart's one-CPU pod), and so does
//! this process, so both modes pay the same scheduler costs. The audit log goes to stdout (read by this
//! process); `BENCH_AUDIT_FILE=1` also appends it to a file.
//!
//! `BENCH_OTLP_ENDPOINT=http://127.0.0.1:4318` (a collector that answers, such as `scripts/jaeger.sh run`)
//! measures tracing instead: two gateways, one with tracing off and one exporting to that collector, the
//! same alternating blocks, and the gateway CPU per call that tracing adds (docs/tracing.md). With
//! `BENCH_TRACING_CONTROL=1` as well, the second gateway has tracing off too: the "added" figures are
//! then what the instrument reads between two identical gateways (its bias and noise on this machine).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use toolwarden_core::config::ToolConfig;
use toolwarden_gateway::kubernetes::Metrics;
use toolwarden_gateway::runtime::local::{LocalRuntime, LocalRuntimeConfig};
use toolwarden_gateway::runtime::{CancellationToken, SessionInfo, WorkerRuntime};
use toolwarden_worker::protocol::CallRequest;

const TOKEN: &str = "bench-developer-token-0123456789";
const WARMUP: usize = 200;
const IDLE_SESSIONS: usize = 500;

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/gateway_overhead_manifests")
}

/// Threads of the gateway, and of this process when it calls workers directly (same shape, fair
/// comparison). Default 1: the chart's gateway pod is limited to one CPU, so that is what it runs.
fn threads() -> u16 {
    std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()).filter(|t| *t > 0).unwrap_or(1)
}

/// Alternating blocks per mode (see [`compare`]): `BENCH_ROUNDS`, else `default`.
fn rounds(default: usize) -> usize {
    std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|r| *r > 0).unwrap_or(default)
}

/// Rounds of the gateway-vs-direct cases, and of tracing off vs on (whose difference is a few µs in
/// some hundred, so it takes more, shorter rounds to see past the machine's drift).
const ROUNDS: usize = 10;
const TRACING_ROUNDS: usize = 20;

fn calls() -> usize {
    std::env::var("BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// The tool as `toolwarden dev` compiles it from the bench manifests.
fn tool() -> ToolConfig {
    let loaded = toolwarden_gateway::config_dev::load(&manifests()).expect("bench manifests compile");
    loaded.configs.iter().flat_map(|c| c.tools.iter()).find(|t| t.name == "show_text").expect("show_text").clone()
}

/// One mode's timed calls, gathered over the rounds.
#[derive(Default)]
struct Stats {
    latencies: Vec<Duration>,
    /// Time the blocks took, end to end.
    wall: Duration,
    /// CPU time of the measured process during the blocks.
    cpu: Duration,
    /// Each block's CPU time per call, in the order they ran.
    block_cpu: Vec<f64>,
}

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() / self.latencies.len() as f64
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One client's next call, boxed so that both modes go through the same code.
type Call = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A way to make calls: one `Call` per client, and the process whose CPU time they cost.
struct Mode {
    make: Box<dyn Fn(usize) -> Call>,
    pid: u32,
    stats: Stats,
}

/// Runs `clients` concurrent loops of `per_client` calls each and returns their latencies and the
/// block's wall time.
async fn block(mode: &Mode, clients: usize, per_client: usize) -> (Vec<Duration>, Duration) {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut call = (mode.make)(c);
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let start = Instant::now();
                call().await;
                latencies.push(start.elapsed());
            }
            latencies
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    (latencies, start.elapsed())
}

/// Warms both modes up, then runs their timed calls in alternating blocks (ABBA order), so that both
/// see the same machine: on a shared VM the cost of the same call drifts from minute to minute, and two
/// runs one after the other would compare two moments of the machine as much as the two modes.
async fn compare(direct: &mut Mode, gateway: &mut Mode, clients: usize, total: usize, rounds: usize) {
    for mode in [&*direct, &*gateway] {
        block(mode, clients, WARMUP).await;
    }
    let per_client = total.div_ceil(clients * rounds);
    for round in 0..rounds {
        let order = if round % 2 == 0 { [&mut *direct, &mut *gateway] } else { [&mut *gateway, &mut *direct] };
        for mode in order {
            let cpu_before = cpu_time(mode.pid);
            let (latencies, wall) = block(mode, clients, per_client).await;
            let cpu = cpu_time(mode.pid).saturating_sub(cpu_before);
            mode.stats.cpu += cpu;
            mode.stats.block_cpu.push(cpu.as_secs_f64() / latencies.len() as f64);
            mode.stats.latencies.extend(latencies);
            mode.stats.wall += wall;
        }
    }
    for mode in [direct, gateway] {
        mode.stats.latencies.sort();
    }
}

fn session(id: String) -> SessionInfo {
    SessionInfo {
        namespace: "default".into(),
        id,
        subject: "developer".into(),
        groups: vec!["developers".into()],
        client_name: "bench".into(),
        client_version: "1".into(),
        protocol_version: None,
    }
}

/// Direct: the local runtime in this process calls its worker over the worker protocol; no MCP, no
/// policy. The bench process's CPU is what calling the worker costs the caller.
fn direct_runtime(clients: usize, state: &Path) -> Arc<LocalRuntime> {
    LocalRuntime::new(LocalRuntimeConfig {
        worker_command: vec![env!("CARGO_BIN_EXE_toolwarden").into(), "worker".into()],
        state_dir: state.join(format!("direct-{clients}")),
        unsafe_no_sandbox: std::env::var_os("BENCH_UNSAFE_NO_SANDBOX").is_some(),
        manifests_dir: Some(manifests()),
        secrets: Default::default(),
        metrics: Metrics::default(),
        max_concurrent_per_worker: 16,
    })
    .expect("local runtime")
}

async fn direct_mode(runtime: &Arc<LocalRuntime>, clients: usize) -> Mode {
    for c in 0..clients {
        runtime.start_session(session(format!("s{c}"))).await.expect("session");
    }
    let runtime = runtime.clone();
    let tool = Arc::new(tool());
    let make = move |c: usize| -> Call {
        let runtime = runtime.clone();
        let tool = tool.clone();
        let id = format!("s{c}");
        // A caller that never cancels: one token for all its calls.
        let never = CancellationToken::new();
        Box::new(move || {
            let runtime = runtime.clone();
            let tool = tool.clone();
            let id = id.clone();
            let never = never.clone();
            Box::pin(async move {
                let request = CallRequest::new("c", json!({"text": "hello"}), false);
                let result = runtime.call(&id, &tool, request, &never).await.expect("direct call");
                assert!(!result.is_error && result.content.contains("hello"), "{result:?}");
            })
        })
    };
    Mode { make: Box::new(make), pid: std::process::id(), stats: Stats::default() }
}

struct Gateway {
    child: Child,
    addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the child we started, by its pid: SIGTERM, so it stops its workers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(dir: &Path) -> Gateway {
    start_gateway_with(dir, &[])
}

/// [`start_gateway`] with environment variables (`OTEL_*`).
fn start_gateway_with(dir: &Path, env: &[(&str, &str)]) -> Gateway {
    let mut args: Vec<String> = vec!["dev".into(), "--listen".into(), "127.0.0.1:0".into(), "--worker-threads".into(), threads().to_string()];
    // The idle-memory case opens IDLE_SESSIONS sessions of one subject.
    args.extend(["--max-sessions-per-subject".into(), (IDLE_SESSIONS + 100).to_string()]);
    // A mode's connections wait while the other mode runs its block (the direct warm-up of 32 clients
    // can pass the default 30 s on a loaded machine): the gateway must not close them as idle.
    args.extend(["--header-read-timeout".into(), "1h".into()]);
    args.push("--manifests".into());
    args.push(manifests().display().to_string());
    if std::env::var_os("BENCH_AUDIT_FILE").is_some() {
        args.extend(["--audit-log".into(), dir.join("audit.jsonl").display().to_string()]);
    }
    if std::env::var_os("BENCH_UNSAFE_NO_SANDBOX").is_some() {
        args.push("--unsafe-no-sandbox".into());
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_toolwarden"))
        .args(&args)
        .env("TOOLWARDEN_DEV_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("toolwarden dev starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading: the audit lines go to stdout too, and a full pipe would stall the gateway.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("toolwarden dev prints its address");
    Gateway { child, addr }
}

/// CPU time of a process so far: the sum over its threads of the scheduler's nanosecond count
/// (`/proc/PID/task/*/schedstat`), precise enough to be read around each block, where utime+stime
/// (10 ms ticks) would not be.
fn cpu_time(pid: u32) -> Duration {
    let mut nanos = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc task").flatten() {
        // A thread may exit between listing and reading; it no longer counts either way.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            nanos += stat.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(nanos)
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// One keep-alive HTTP/1.1 connection speaking MCP (2025-11-25, with a session).
struct McpConnection {
    sender: SendRequest<Full<Bytes>>,
    session: Option<String>,
    next_id: u64,
}

impl McpConnection {
    async fn open(addr: &str) -> McpConnection {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        let mut c = McpConnection { sender, session: None, next_id: 1 };
        let init = json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}});
        let (session, _) = c.post("initialize", init, true).await;
        c.session = session;
        c.notify("notifications/initialized").await;
        c
    }

    async fn post(&mut self, method: &str, params: Value, expect_reply: bool) -> (Option<String>, Value) {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        let response = self.send(body).await;
        let session = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        assert!(status.is_success(), "{method}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        let reply = if expect_reply { parse_reply(&bytes) } else { Value::Null };
        (session, reply)
    }

    async fn notify(&mut self, method: &str) {
        let body = json!({"jsonrpc": "2.0", "method": method}).to_string();
        let response = self.send(body).await;
        let _ = response.into_body().collect().await;
    }

    async fn send(&mut self, body: String) -> hyper::Response<hyper::body::Incoming> {
        let mut request = http::Request::post("/mcp/default")
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        self.sender.ready().await.expect("connection ready");
        self.sender.send_request(request.body(Full::new(Bytes::from(body))).unwrap()).await.expect("request")
    }

    async fn call(&mut self) {
        let (_, reply) = self.post("tools/call", json!({"name": "show_text", "arguments": {"text": "hello"}}), true).await;
        let result = &reply["result"];
        assert!(result["isError"] != json!(true) && result.to_string().contains("hello"), "{reply}");
    }
}

/// The JSON-RPC reply in a JSON or SSE body.
fn parse_reply(bytes: &[u8]) -> Value {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC reply in {text}"))
}

async fn gateway_mode(gateway: &Gateway, clients: usize) -> Mode {
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(Arc::new(tokio::sync::Mutex::new(McpConnection::open(&gateway.addr).await)));
    }
    let make = move |c: usize| -> Call {
        let conn = connections[c].clone();
        Box::new(move || {
            let conn = conn.clone();
            Box::pin(async move { conn.lock().await.call().await })
        })
    };
    Mode { make: Box::new(make), pid: gateway.child.id(), stats: Stats::default() }
}

fn report(name: &str, direct: &Stats, gateway: &Stats) {
    println!("\n{name}: {} timed calls per mode", gateway.latencies.len());
    println!("  {:<10} {:>10} {:>10} {:>10} {:>12}", "", "p50 µs", "p90 µs", "p99 µs", "calls/s");
    for (label, s) in [("direct", direct), ("gateway", gateway)] {
        println!(
            "  {label:<10} {:>10.0} {:>10.0} {:>10.0} {:>12.0}",
            micros(s.pct(0.5)),
            micros(s.pct(0.9)),
            micros(s.pct(0.99)),
            s.throughput()
        );
    }
    println!(
        "  {:<10} {:>10.0} {:>10.0} {:>10.0} {:>11.0}%",
        "added",
        micros(gateway.pct(0.5)) - micros(direct.pct(0.5)),
        micros(gateway.pct(0.9)) - micros(direct.pct(0.9)),
        micros(gateway.pct(0.99)) - micros(direct.pct(0.99)),
        100.0 * gateway.throughput() / direct.throughput()
    );
}

async fn idle_memory(dir: &Path) -> (u64, f64) {
    let gateway = start_gateway(dir);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_bytes(gateway.child.id());
    // Sessions whose clients went quiet: initialized, then the connection closed (the session stays
    // until it is deleted or idles out).
    for _ in 0..IDLE_SESSIONS {
        drop(McpConnection::open(&gateway.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_sessions = rss_bytes(gateway.child.id());
    (idle, (with_sessions.saturating_sub(idle)) as f64 / IDLE_SESSIONS as f64)
}

/// The system's load average (1, 5 and 15 minutes), as `/proc/loadavg` has it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "unknown".into())
}

/// The median of `values` (which it sorts).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// Tracing off against tracing on (exporting to `endpoint`): two gateways, the same calls in alternating
/// blocks; prints the gateway CPU per call each way and the difference, over all blocks and as the
/// median of the differences between the two blocks of each round (which ran back to back, so a
/// moment of load elsewhere on the machine weighs on one round, not on the whole figure).
async fn tracing_overhead(dir: &Path, endpoint: &str, total: usize) {
    let control = std::env::var_os("BENCH_TRACING_CONTROL").is_some();
    let off = start_gateway(dir);
    let on = if control { start_gateway(dir) } else { start_gateway_with(dir, &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]) };
    if control {
        println!("tracing CONTROL: off vs off (two identical untraced gateways), {total} timed calls per case in {} rounds", rounds(TRACING_ROUNDS));
    } else {
        println!("tracing: off vs on (OTLP/HTTP to {endpoint}), {total} timed calls per case in {} rounds", rounds(TRACING_ROUNDS));
    }
    println!("load average at start: {}", load_average());
    let mut added = Vec::new();
    for clients in [1, 32] {
        let mut untraced = gateway_mode(&off, clients).await;
        let mut traced = gateway_mode(&on, clients).await;
        compare(&mut untraced, &mut traced, clients, total, rounds(TRACING_ROUNDS)).await;
        let (cpu_off, cpu_on) = (untraced.stats.cpu_per_call() * 1e6, traced.stats.cpu_per_call() * 1e6);
        let mut per_round: Vec<f64> = traced.stats.block_cpu.iter().zip(&untraced.stats.block_cpu).map(|(on, off)| (on - off) * 1e6).collect();
        let shown: Vec<String> = per_round.iter().map(|d| format!("{d:+.1}")).collect();
        let median_added = median(&mut per_round);
        println!(
            "  {clients:>2} client(s): CPU per call off {cpu_off:.1} µs, on {cpu_on:.1} µs, added {:.1} µs (median of rounds {median_added:.1} µs); p50 off {:.0} µs, on {:.0} µs",
            cpu_on - cpu_off,
            micros(untraced.stats.pct(0.5)),
            micros(traced.stats.pct(0.5))
        );
        println!("      added per round, µs: {}", shown.join(" "));
        added.push((cpu_on - cpu_off, median_added));
    }
    println!("load average at end: {}", load_average());
    let verdict = if control {
        "a control run: these are the instrument's bias and noise, not tracing"
    } else if added.iter().all(|(all, median)| *all <= 10.0 && *median <= 10.0) {
        "met"
    } else {
        "MISSED"
    };
    println!(
        "\ntarget: tracing adds at most 10 µs of gateway CPU per call: {:.1} / {:.1} µs over all blocks, {:.1} / {:.1} µs median of rounds (1 / 32 clients), {verdict}",
        added[0].0, added[1].0, added[0].1, added[1].1
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored. Without it
    // (`cargo test --all-targets`) this is a smoke run: a few calls prove the bench still works.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let total = if smoke { 20 } else { calls() };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads().into()).enable_all().build().unwrap();
    runtime.block_on(async move {
        let dir = tempfile::Builder::new().prefix("twb").tempdir_in("/tmp").unwrap();
        if let Ok(endpoint) = std::env::var("BENCH_OTLP_ENDPOINT") {
            return tracing_overhead(dir.path(), &endpoint, total).await;
        }
        println!("gateway_overhead: {total} timed calls per case, tool `cat` in the local sandbox, {} thread(s)", threads());

        let (idle, per_session) = idle_memory(dir.path()).await;

        let gateway = start_gateway(dir.path());
        let mut results = Vec::new();
        for clients in [1, 32] {
            let runtime = direct_runtime(clients, dir.path());
            let mut direct = direct_mode(&runtime, clients).await;
            let mut through = gateway_mode(&gateway, clients).await;
            compare(&mut direct, &mut through, clients, total, rounds(ROUNDS)).await;
            runtime.shutdown().await;
            results.push((direct.stats, through.stats));
        }
        drop(gateway);
        let [(direct_1, gateway_1), (direct_32, gateway_32)] = <[_; 2]>::try_from(results).ok().expect("two cases");
        let (cpu_1, cpu_32) = (gateway_1.cpu_per_call(), gateway_32.cpu_per_call());
        let (direct_cpu_1, direct_cpu_32) = (direct_1.cpu_per_call(), direct_32.cpu_per_call());

        report("1 client", &direct_1, &gateway_1);
        report("32 clients", &direct_32, &gateway_32);
        let added_p99 = micros(gateway_1.pct(0.99)) - micros(direct_1.pct(0.99));
        let share = gateway_32.throughput() / direct_32.throughput();
        println!("\nCPU per call, 1 client / 32 clients:");
        println!("  gateway process     {:>6.0} µs {:>6.0} µs", cpu_1 * 1e6, cpu_32 * 1e6);
        println!("  direct caller       {:>6.0} µs {:>6.0} µs", direct_cpu_1 * 1e6, direct_cpu_32 * 1e6);
        let (added_cpu, added_cpu_32) = (cpu_1 - direct_cpu_1, cpu_32 - direct_cpu_32);
        println!("  added by gateway    {:>6.1} µs {:>6.1} µs", added_cpu * 1e6, added_cpu_32 * 1e6);
        println!("gateway RSS: {:.1} MB idle, {:.1} KiB per idle session ({IDLE_SESSIONS} sessions)", idle as f64 / 1e6, per_session / 1024.0);
        println!("\ntargets:");
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!("  added p99 at 1 client < 300 µs: {added_p99:.0} µs, {}", verdict(added_p99 < 300.0));
        println!("  added gateway CPU per call < 100 µs: {:.1} µs, {}", added_cpu * 1e6, verdict(added_cpu < 100e-6));
        println!("  throughput at 32 clients >= 50% of direct: {:.0}%, {}", share * 100.0, verdict(share >= 0.5));
        println!("  idle RSS < 20 MB: {:.1} MB, {}", idle as f64 / 1e6, verdict(idle < 20_000_000));
        println!("  per idle session < 64 KiB: {:.1} KiB, {}", per_session / 1024.0, verdict(per_session < 65536.0));
    });
}
