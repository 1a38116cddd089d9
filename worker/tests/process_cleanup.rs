//! Nothing a call starts outlives it — whatever the program does to its session or process group — and
//! a timeout is answered on time. Each attack runs unsandboxed (as in a pod) and in the local sandbox.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Worker, exec_spec, live_processes_with, wait_for};

/// Starts a daemon the usual way (fork, setsid, fork again: a new session and group, parent gone), which
/// keeps the call's stdout open; then does `mode` to its supervisor and to itself.
const ESCAPE: &str = "import os, signal, sys, time
marker, mode = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv('/bin/sleep', ['/bin/sleep', marker])
    os._exit(0)
os.wait()
if mode == 'kill-supervisor':
    os.kill(os.getppid(), signal.SIGKILL)
if mode == 'stop-supervisor':
    os.kill(os.getppid(), signal.SIGSTOP)
if mode in ('hang', 'stop-supervisor'):
    time.sleep(600)
print('leader done')";

fn spec(timeout_ms: u64) -> Value {
    let mut spec = exec_spec(&["/usr/bin/python3", "-c", ESCAPE], &["{{marker}}", "{{mode}}"]);
    spec["timeoutMs"] = json!(timeout_ms);
    spec
}

/// A sleep duration no other test uses, so its processes can be found by their command line.
fn new_marker() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{}", 400_000 + (std::process::id() % 1000) * 100 + NEXT.fetch_add(1, Ordering::SeqCst))
}

/// The worker unsandboxed, as a pod runs it (uid 65532 without capabilities, when the test runs as root
/// and can switch users), and in the local sandbox.
fn workers(timeout_ms: u64) -> Vec<(&'static str, Worker)> {
    let mut workers = vec![("unsandboxed", Worker::serve(&spec(timeout_ms), &[]))];
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 && std::process::Command::new("setpriv").arg("--version").output().is_ok() {
        workers.push(("as a pod: uid 65532, no capabilities", Worker::serve_as_pod(&spec(timeout_ms))));
    } else {
        eprintln!("not root or no setpriv: the pod-like case (uid 65532, no capabilities) is not run here");
    }
    workers.push(("sandboxed", Worker::sandboxed(&spec(timeout_ms), &[])));
    workers
}

fn assert_gone(marker: &str, how: &str) {
    let gone = wait_for(Duration::from_secs(3), || live_processes_with(&format!("/bin/sleep {marker}")).is_empty());
    assert!(gone, "{how}: the setsid daemon outlived its call: {:?}", live_processes_with(&format!("/bin/sleep {marker}")));
}

#[test]
fn a_setsid_daemon_is_gone_when_its_call_finishes() {
    for (how, worker) in workers(10_000) {
        let marker = new_marker();
        let started = Instant::now();
        let result = worker.ran(json!({"marker": marker, "mode": "finish"}));
        assert_eq!(result["content"], "leader done\n", "{how}: {result}");
        assert!(started.elapsed() < Duration::from_secs(5), "{how}: the answer waited for the daemon's pipe: {:?}", started.elapsed());
        assert_gone(&marker, how);
        assert!(worker.healthy());
    }
}

#[test]
fn a_timeout_is_answered_on_time_and_takes_the_setsid_daemon_with_it() {
    for (how, worker) in workers(2_000) {
        for mode in ["hang", "stop-supervisor"] {
            let marker = new_marker();
            let started = Instant::now();
            let result = worker.ran(json!({"marker": marker, "mode": mode}));
            let took = started.elapsed();
            assert_eq!(result["errorCode"], "timeout", "{how} {mode}: {result}");
            assert!(result["content"].as_str().unwrap().contains("with every process it started"), "{result}");
            // A generous bound (shared machine), yet far below the timeout plus two pipe drains.
            assert!(took < Duration::from_millis(2_000 + 2_500), "{how} {mode}: a 2 s timeout answered after {took:?}");
            assert_gone(&marker, &format!("{how} {mode}"));
        }
    }
}

#[test]
fn a_tool_that_kills_its_supervisor_loses_every_process_it_started() {
    for (how, worker) in workers(10_000) {
        let marker = new_marker();
        let result = worker.ran(json!({"marker": marker, "mode": "kill-supervisor"}));
        assert_eq!(result["isError"], true, "{how}: {result}");
        assert!(result["content"].as_str().unwrap().contains("lost its supervisor"), "{how}: {result}");
        assert_gone(&marker, how);
        assert_eq!(worker.ran(json!({"marker": new_marker(), "mode": "finish"}))["content"], "leader done\n", "{how}: the worker serves on");
    }
}

#[test]
fn a_cancelled_call_takes_its_setsid_daemon_with_it() {
    for (how, worker) in workers(60_000) {
        let marker = new_marker();
        let connection = worker.start_call(json!({"marker": marker, "mode": "hang"}));
        let running = wait_for(Duration::from_secs(10), || live_processes_with(&format!("/bin/sleep {marker}")).len() == 1);
        assert!(running, "{how}: the daemon never started\n{}", worker.log());
        drop(connection);
        assert_gone(&marker, how);
        assert!(worker.healthy());
    }
}

#[test]
fn stopping_the_worker_takes_every_call_and_daemon_with_it() {
    for (how, worker) in workers(60_000) {
        let marker = new_marker();
        let _connection = worker.start_call(json!({"marker": marker, "mode": "hang"}));
        let running = wait_for(Duration::from_secs(10), || live_processes_with(&format!("/bin/sleep {marker}")).len() == 1);
        assert!(running, "{how}: the daemon never started\n{}", worker.log());
        drop(worker);
        assert_gone(&marker, how);
    }
}
