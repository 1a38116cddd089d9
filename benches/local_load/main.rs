//! The local runtime under load: `cargo bench --bench local_load` (release build).
//!
//! Load (the default): `toolwarden dev` serves one trivial tool (`benches/gateway_overhead_manifests`:
//! `cat` shows the arguments back) and `BENCH_SESSIONS` MCP sessions (default 1,000), spread over
//! `BENCH_SUBJECTS` subjects (default 20, so each stays within the default `--max-sessions-per-subject`
//! of 64), are opened at once; each session's first call starts its own sandboxed worker. Then every
//! session calls every `BENCH_CALL_INTERVAL_MS` (default 5,000: 200 calls/s in all) for `BENCH_SECONDS`
//! (default 300), and all of them end (`DELETE`). Reported: first-call (cold worker start) latency
//! p50/p99 under that load and the gateway's own worker start histogram, call latency, failures, the
//! gateway's CPU and memory (per idle session that has a worker, measured after the start wave with the
//! clients disconnected), the workers' memory, and that everything ended with nothing left behind: no
//! worker process, no per-worker directory, and after shutdown no state directory.
//!
//! Soak (`BENCH_SOAK_SECONDS=1800`): a steady call rate across sessions that keep opening and closing,
//! with the gateway's memory sampled throughout; see [`soak`].
//!
//! Without `--bench` (`cargo test --all-targets`) both run as a smoke test of a few seconds.

mod gateway;
mod procfs;
mod report;
mod soak;

use std::time::{Duration, Instant};

use gateway::{Gateway, Session};
use report::{Latencies, mib};

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The gateway's serving threads: 1 by default, as in the chart's one-CPU pod.
fn threads() -> u16 {
    env_or("BENCH_THREADS", 1u16).max(1)
}

struct LoadParams {
    sessions: usize,
    subjects: usize,
    seconds: u64,
    interval: Duration,
    /// Quiet time before each idle memory reading.
    idle: Duration,
}

/// A session's first call, which starts its worker: its latency.
async fn first_call(mut session: Session, index: usize) -> (Session, Result<Duration, String>) {
    let started = Instant::now();
    let result = match session.call(&format!("s{index}")).await {
        Ok(None) => Ok(started.elapsed()),
        Ok(Some(code)) => Err(format!("isError {code}")),
        Err(e) => Err(e),
    };
    (session, result)
}

/// Calls every `interval` until `until`; the latencies of the calls that ran, and the failures.
async fn keep_calling(mut session: Session, index: usize, interval: Duration, until: Instant) -> (Session, Vec<Duration>, Vec<String>) {
    // Spread the sessions over the interval, so the rate is steady rather than in waves.
    let offset = interval.mul_f64((index as f64 * 0.618_034) % 1.0);
    tokio::time::sleep(offset).await;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut latencies, mut failures) = (Vec::new(), Vec::new());
    loop {
        ticks.tick().await;
        if Instant::now() >= until {
            break;
        }
        let began = Instant::now();
        match session.call(&format!("s{index}")).await {
            Ok(None) => latencies.push(began.elapsed()),
            Ok(Some(code)) => failures.push(format!("isError {code}")),
            Err(e) => failures.push(e),
        }
    }
    (session, latencies, failures)
}

async fn load(tmp: &std::path::Path, p: LoadParams) {
    println!(
        "local_load: {} sessions of {} subjects, each with its own sandboxed worker; a call every {} ms per session for {} s; gateway {} thread(s); load average {}",
        p.sessions,
        p.subjects,
        p.interval.as_millis(),
        p.seconds,
        threads(),
        procfs::load_average()
    );
    let mut gw = gateway::start(tmp, p.subjects, threads(), &[]);
    let pid = gw.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = procfs::memory(pid);

    // Every session opened at once (no worker yet), then left idle with its client disconnected.
    let opens: Vec<_> = (0..p.sessions).map(|i| tokio::spawn(Session::open_at(gw.addr.clone(), gateway::token(i % p.subjects)))).collect();
    let (mut opened, mut start_failures) = (Vec::new(), Vec::new());
    for (i, open) in opens.into_iter().enumerate() {
        match open.await.expect("open task") {
            Ok(mut session) => {
                session.disconnect();
                opened.push((i, session));
            }
            Err(e) => start_failures.push(e),
        }
    }
    // Quiet as long as the sessions with workers are below, so both readings are of idle (parked) sessions.
    tokio::time::sleep(p.idle).await;
    let without_workers = procfs::memory(pid);

    // The start wave: every session's first call at once, each starting its session's worker.
    let cpu_before = procfs::cpu_time(pid);
    let wave_began = Instant::now();
    let starts: Vec<_> = opened.into_iter().map(|(i, s)| tokio::spawn(async move { (i, first_call(s, i).await) })).collect();
    let (mut sessions, mut first_calls) = (Vec::new(), Vec::new());
    for start in starts {
        let (i, (session, result)) = start.await.expect("start task");
        match result {
            Ok(took) => first_calls.push(took),
            Err(e) => start_failures.push(e),
        }
        sessions.push((i, session));
    }
    let wave = wave_began.elapsed();
    let wave_cpu = procfs::cpu_time(pid).saturating_sub(cpu_before);
    let workers = procfs::descendants(pid);
    let worker_pss = procfs::pss_total(&workers);
    let active_workers = gw.metric("toolwarden_worker_pods_active").await;
    let start_histogram = gw.metrics_text().await;

    // Idle: every client disconnected, every session open with its worker, for `BENCH_IDLE_SECONDS`
    // (default 70: longer than the 30 s after which the gateway closes a quiet worker's connection, and
    // than the 60 s after which it parks a quiet session, plus its 5 s reaper tick).
    for (_, session) in sessions.iter_mut() {
        session.disconnect();
    }
    tokio::time::sleep(p.idle).await;
    let with_sessions = procfs::memory(pid);
    let gateway_fds = procfs::open_fds(pid);

    // Calls on the running workers.
    let cpu_before = procfs::cpu_time(pid);
    let calls_began = Instant::now();
    let until = calls_began + Duration::from_secs(p.seconds);
    let callers: Vec<_> = sessions.into_iter().map(|(i, s)| tokio::spawn(keep_calling(s, i, p.interval, until))).collect();
    let (mut sessions, mut calls, mut call_failures) = (Vec::new(), Latencies::default(), Vec::new());
    for caller in callers {
        let (session, latencies, failures) = caller.await.expect("caller task");
        sessions.push(session);
        calls.extend(latencies);
        call_failures.extend(failures);
    }
    let calls_took = calls_began.elapsed();
    let calls_cpu = procfs::cpu_time(pid).saturating_sub(cpu_before);
    let after_calls = procfs::memory(pid);
    let calls_load = procfs::load_average();

    // The end: every session DELETEd; then nothing of theirs may be left.
    let ended_at = Instant::now();
    let ends: Vec<_> = sessions.into_iter().map(|s| tokio::spawn(s.end())).collect();
    let mut end_failures = Vec::new();
    for end in ends {
        if let Err(e) = end.await.expect("end task") {
            end_failures.push(e);
        }
    }
    let cleared = loop {
        let left = procfs::still_alive(&workers).len();
        let dirs = worker_dirs(&gw);
        let (sessions_active, workers_active) = (gw.metric("toolwarden_sessions_active").await, gw.metric("toolwarden_worker_pods_active").await);
        if left == 0 && dirs == 0 && sessions_active == 0.0 && workers_active == 0.0 {
            break Some(ended_at.elapsed());
        }
        if ended_at.elapsed() > Duration::from_secs(120) {
            println!("after 120 s: {left} worker processes, {dirs} worker directories, sessions_active {sessions_active}, worker_pods_active {workers_active}");
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after_end = procfs::memory(pid);
    let audit = (gw.audit.decisions.load(std::sync::atomic::Ordering::Relaxed), gw.audit.results.load(std::sync::atomic::Ordering::Relaxed));
    let state_dir = gw.state_dir();
    let exit = gw.stop();
    let state_dir_left = state_dir.exists();
    let leftovers: Vec<_> = std::fs::read_dir(tmp).map(|d| d.flatten().map(|e| e.file_name()).filter(|n| n != "tokens.yaml").collect()).unwrap_or_default();

    println!("\nstart wave: {} sessions opened at once, each one's first call starting its worker, in {:.1} s", p.sessions, wave.as_secs_f64());
    Latencies(first_calls).print("first call of a session (cold worker start), call to answer");
    report::print_histogram(&start_histogram, "toolwarden_worker_start_duration_seconds", "gateway's worker start time (spawn to ready)");
    println!("  failed: {}{}", start_failures.len(), report::examples(&start_failures));
    println!("  gateway CPU: {:.2} cores on average during the wave", wave_cpu.as_secs_f64() / wave.as_secs_f64());
    println!(
        "  workers running: {active_workers} (gauge); {} processes under the gateway, {} MiB together (PSS)",
        workers.len(),
        mib(worker_pss)
    );
    println!("\ncalls on running workers: every {} ms per session for {} s", p.interval.as_millis(), calls_took.as_secs());
    calls.print("call latency");
    println!("  {} calls, {:.0} calls/s, failed: {}{}", calls.0.len(), calls.0.len() as f64 / calls_took.as_secs_f64(), call_failures.len(), report::examples(&call_failures));
    println!(
        "  gateway CPU: {:.3} cores on average, {:.0} µs per call; load average at the end {calls_load}",
        calls_cpu.as_secs_f64() / calls_took.as_secs_f64(),
        calls_cpu.as_secs_f64() * 1e6 / calls.0.len().max(1) as f64
    );
    let n = p.sessions as f64;
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n / 1024.0;
    let per_session = per(idle.rss, with_sessions.rss);
    println!("\ngateway memory (RSS; anonymous memory, the gateway's own allocations, in brackets):");
    println!("  idle, before any session: {:.1} MB ({:.1} MB)", idle.rss as f64 / 1e6, idle.anon as f64 / 1e6);
    println!(
        "  {} idle sessions without a worker, clients disconnected, after {} s quiet: {:.1} MB, {:.1} KiB per session ({:.1} KiB)",
        p.sessions,
        p.idle.as_secs(),
        without_workers.rss as f64 / 1e6,
        per(idle.rss, without_workers.rss),
        per(idle.anon, without_workers.anon)
    );
    println!(
        "  the same sessions with a worker each (after the wave, clients disconnected): {:.1} MB, {:.1} KiB per session ({:.1} KiB), of which the worker {:.1} KiB ({:.1} KiB); {gateway_fds} open fds",
        with_sessions.rss as f64 / 1e6,
        per_session,
        per(idle.anon, with_sessions.anon),
        per(without_workers.rss, with_sessions.rss),
        per(without_workers.anon, with_sessions.anon)
    );
    println!("  after the calls: RSS {:.1} MB; after every session ended: {:.1} MB; peak (VmHWM) {:.1} MB", after_calls.rss as f64 / 1e6, after_end.rss as f64 / 1e6, after_end.peak as f64 / 1e6);
    println!("\nend: every session DELETEd ({} failed{})", end_failures.len(), report::examples(&end_failures));
    match cleared {
        Some(t) => println!("  no worker process, no worker directory, sessions and workers gauges at 0: {:.1} s after the DELETEs", t.as_secs_f64()),
        None => println!("  NOT cleared within 120 s"),
    }
    println!("  audit: {} decision lines, {} result lines", audit.0, audit.1);
    println!(
        "  gateway exit on SIGTERM: {}; state directory removed: {}; anything else left in its TMPDIR: {:?}; worker processes alive: {}",
        exit.map_or("killed after 60 s".to_owned(), |s| s.to_string()),
        !state_dir_left,
        leftovers,
        procfs::still_alive(&workers).len()
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("\ntarget: at most 64 KiB of gateway memory per idle session at {} sessions: {per_session:.1} KiB, {}", p.sessions, verdict(per_session <= 64.0));
}

/// Per-worker directories (`w-*`) in the gateway's state directory.
fn worker_dirs(gw: &Gateway) -> usize {
    std::fs::read_dir(gw.state_dir()).map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("w-")).count()).unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --all-targets`) this is a smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(env_or("BENCH_CLIENT_THREADS", 2)).enable_all().build().unwrap();
    runtime.block_on(async move {
        let tmp = tempfile::Builder::new().prefix("twl").tempdir_in("/tmp").unwrap();
        if let Some(seconds) = std::env::var("BENCH_SOAK_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()) {
            return soak::run(tmp.path(), soak::Params::from_env(seconds)).await;
        }
        let params = if smoke {
            LoadParams { sessions: 10, subjects: 2, seconds: 2, interval: Duration::from_millis(500), idle: Duration::from_secs(1) }
        } else {
            LoadParams {
                sessions: env_or("BENCH_SESSIONS", 1000),
                subjects: env_or("BENCH_SUBJECTS", 20usize).max(1),
                seconds: env_or("BENCH_SECONDS", 300),
                interval: Duration::from_millis(env_or("BENCH_CALL_INTERVAL_MS", 5000)),
                idle: Duration::from_secs(env_or("BENCH_IDLE_SECONDS", 70)),
            }
        };
        load(tmp.path(), params).await;
        if smoke {
            soak::run(tmp.path(), soak::Params::smoke()).await;
        }
    });
}
