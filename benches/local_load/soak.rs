//! Soak: a steady call rate for a long time, across sessions that keep opening and closing, with the
//! gateway's memory sampled throughout. A leak per call, per session start or end, per connection or per
//! worker start shows as a slope.
//!
//! `BENCH_SOAK_CLIENTS` clients (default 50) each open a session of one of `BENCH_SUBJECTS` subjects
//! (default 10) on a new connection, make `BENCH_SOAK_SESSION_CALLS` calls (default 20; each session's
//! first call starts its worker, every tenth call is refused by the policy's argument rule), end it
//! (`DELETE`) and start over; together they call `BENCH_SOAK_RATE` times a second (default 50). Every
//! `BENCH_SOAK_SAMPLE_SECONDS` (default 10) the gateway's RSS and anonymous memory, its sessions and
//! workers are sampled. The slope (least squares, KiB per minute) is of the samples after
//! `BENCH_SOAK_WARMUP_SECONDS` (default 300).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::gateway::{self, Session};
use crate::report::slope;
use crate::{env_or, procfs};

pub struct Params {
    seconds: u64,
    clients: usize,
    subjects: usize,
    rate: f64,
    session_calls: u64,
    sample: Duration,
    warmup: Duration,
}

impl Params {
    pub fn from_env(seconds: u64) -> Params {
        Params {
            seconds,
            clients: env_or("BENCH_SOAK_CLIENTS", 50usize).max(1),
            subjects: env_or("BENCH_SUBJECTS", 10usize).max(1),
            rate: env_or("BENCH_SOAK_RATE", 50.0f64).max(0.1),
            session_calls: env_or("BENCH_SOAK_SESSION_CALLS", 20u64).max(1),
            sample: Duration::from_secs(env_or("BENCH_SOAK_SAMPLE_SECONDS", 10u64).max(1)),
            warmup: Duration::from_secs(env_or("BENCH_SOAK_WARMUP_SECONDS", 300u64)),
        }
    }

    pub fn smoke() -> Params {
        Params { seconds: 6, clients: 4, subjects: 2, rate: 20.0, session_calls: 5, sample: Duration::from_secs(1), warmup: Duration::from_secs(2) }
    }
}

#[derive(Default)]
struct Counts {
    calls_ok: AtomicU64,
    calls_refused: AtomicU64,
    failures: AtomicU64,
    sessions: AtomicU64,
}

struct Sample {
    at: Duration,
    memory: procfs::Memory,
    sessions: f64,
    workers: f64,
}

/// One client: sessions one after another, each `session_calls` calls at the client's pace.
async fn client(addr: String, index: usize, p: Arc<Params>, counts: Arc<Counts>, until: Instant) {
    let period = Duration::from_secs_f64(p.clients as f64 / p.rate);
    tokio::time::sleep(period.mul_f64((index as f64 * 0.618_034) % 1.0)).await;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while Instant::now() < until {
        let mut session = match Session::open(&addr, gateway::token(index % p.subjects)).await {
            Ok(s) => s,
            Err(e) => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: a session did not open: {e}");
                ticks.tick().await;
                continue;
            }
        };
        counts.sessions.fetch_add(1, Ordering::Relaxed);
        for _ in 0..p.session_calls {
            ticks.tick().await;
            if Instant::now() >= until {
                break;
            }
            n += 1;
            // The policy allows at most 100 characters: every tenth call is refused, so the refusal
            // path is soaked too.
            let text = if n % 10 == 0 { "x".repeat(150) } else { format!("c{index}-{n}") };
            match session.call(&text).await {
                Ok(None) => counts.calls_ok.fetch_add(1, Ordering::Relaxed),
                Ok(Some(code)) if code == "argument_rule_failed" => counts.calls_refused.fetch_add(1, Ordering::Relaxed),
                Ok(Some(code)) => {
                    eprintln!("soak: a call failed: {code}");
                    counts.failures.fetch_add(1, Ordering::Relaxed)
                }
                Err(e) => {
                    eprintln!("soak: a call failed: {e}");
                    counts.failures.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        if let Err(e) = session.end().await {
            counts.failures.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: a session did not end: {e}");
        }
    }
}

pub async fn run(tmp: &Path, p: Params) {
    println!(
        "soak: {} s, {} clients of {} subjects, {} calls/s in all, {} calls per session then DELETE and a new session (on a new connection); gateway {} thread(s); samples every {} s; load average {}",
        p.seconds,
        p.clients,
        p.subjects,
        p.rate,
        p.session_calls,
        crate::threads(),
        p.sample.as_secs(),
        procfs::load_average()
    );
    let mut gw = gateway::start(tmp, p.subjects, crate::threads(), &[]);
    let pid = gw.pid();
    let p = Arc::new(p);
    let counts = Arc::new(Counts::default());
    let began = Instant::now();
    let until = began + Duration::from_secs(p.seconds);
    let cpu_before = procfs::cpu_time(pid);
    let clients: Vec<_> = (0..p.clients).map(|i| tokio::spawn(client(gw.addr.clone(), i, p.clone(), counts.clone(), until))).collect();

    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(p.sample);
    println!("  {:>7} {:>9} {:>9} {:>8} {:>7} {:>9} {:>8}", "t s", "RSS KiB", "anon KiB", "sessions", "workers", "calls", "failures");
    while Instant::now() < until {
        ticks.tick().await;
        let text = gw.metrics_text().await;
        let sample = Sample {
            at: began.elapsed(),
            memory: procfs::memory(pid),
            sessions: gateway::metric_sum(&text, "toolwarden_sessions_active"),
            workers: gateway::metric_sum(&text, "toolwarden_worker_pods_active"),
        };
        println!(
            "  {:>7.0} {:>9} {:>9} {:>8} {:>7} {:>9} {:>8}",
            sample.at.as_secs_f64(),
            sample.memory.rss / 1024,
            sample.memory.anon / 1024,
            sample.sessions,
            sample.workers,
            counts.calls_ok.load(Ordering::Relaxed) + counts.calls_refused.load(Ordering::Relaxed),
            counts.failures.load(Ordering::Relaxed)
        );
        samples.push(sample);
    }
    for c in clients {
        let _ = c.await;
    }
    let ran = began.elapsed();
    let cpu = procfs::cpu_time(pid).saturating_sub(cpu_before);
    // Every session ended: the gauges must come back to zero.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut sessions, mut workers) = (f64::NAN, f64::NAN);
    while Instant::now() < deadline {
        (sessions, workers) = (gw.metric("toolwarden_sessions_active").await, gw.metric("toolwarden_worker_pods_active").await);
        if sessions == 0.0 && workers == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end_memory = procfs::memory(pid);
    let left_processes = procfs::descendants(pid).len();
    let (decisions, results, not_ok) = (
        gw.audit.decisions.load(Ordering::Relaxed),
        gw.audit.results.load(Ordering::Relaxed),
        gw.audit.results_not_ok.load(Ordering::Relaxed),
    );
    let exit = gw.stop();

    let (ok, refused, failed) = (counts.calls_ok.load(Ordering::Relaxed), counts.calls_refused.load(Ordering::Relaxed), counts.failures.load(Ordering::Relaxed));
    println!("\nsoak: {} s, {} sessions opened and ended, {ok} calls ran, {refused} refused by the policy, {failed} failures", ran.as_secs(), counts.sessions.load(Ordering::Relaxed));
    println!(
        "  {:.1} calls/s; gateway CPU {:.3} cores on average; load average at the end {}",
        (ok + refused) as f64 / ran.as_secs_f64(),
        cpu.as_secs_f64() / ran.as_secs_f64(),
        procfs::load_average()
    );
    println!("  audit: {decisions} decision lines, {results} result lines ({not_ok} not ok)");
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= p.warmup).collect();
    if steady.len() < 2 {
        println!("  too few samples after the {} s warm-up for a slope", p.warmup.as_secs());
    } else {
        let kib = |b: u64| b as f64 / 1024.0;
        for (what, value) in [("RSS", (|m: &procfs::Memory| m.rss) as fn(&procfs::Memory) -> u64), ("anonymous", |m| m.anon)] {
            let points: Vec<(f64, f64)> = steady.iter().map(|s| (s.at.as_secs_f64() / 60.0, kib(value(&s.memory)))).collect();
            let values: Vec<f64> = points.iter().map(|p| p.1).collect();
            let max = values.iter().copied().fold(f64::MIN, f64::max);
            let min = values.iter().copied().fold(f64::MAX, f64::min);
            let k = slope(&points);
            println!(
                "  gateway {what} after the {} s warm-up ({} samples): first {:.0} KiB, last {:.0} KiB, min {:.0}, max {:.0}; slope {k:+.2} KiB/min ({:+.0} KiB per hour)",
                p.warmup.as_secs(),
                points.len(),
                values[0],
                values[values.len() - 1],
                min,
                max,
                k * 60.0
            );
        }
        let sessions: Vec<f64> = steady.iter().map(|s| s.sessions).collect();
        let workers: Vec<f64> = steady.iter().map(|s| s.workers).collect();
        let range = |v: &[f64]| (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(f64::MIN, f64::max));
        println!("  sessions open {:?}, workers {:?} (min, max over the samples)", range(&sessions), range(&workers));
    }
    println!(
        "  after the clients stopped: sessions {sessions}, workers {workers}, processes under the gateway {left_processes}; RSS {:.1} MB, peak {:.1} MB; exit on SIGTERM: {}",
        end_memory.rss as f64 / 1e6,
        end_memory.peak as f64 / 1e6,
        exit.map_or("killed after 60 s".to_owned(), |s| s.to_string())
    );
}
