//! The local sandbox (`toolwarden-worker sandbox -- serve`), exercised with real tool programs.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Worker, exec_spec};

/// A sandboxed worker whose tool runs the Python code it is given.
fn python_sandbox(extra: &[&str]) -> Worker {
    let mut spec = exec_spec(&["/usr/bin/python3", "-c"], &["{{code}}"]);
    spec["timeoutMs"] = json!(10_000);
    Worker::sandboxed(&spec, extra)
}

fn run(worker: &Worker, code: &str) -> Value {
    worker.ran(json!({"code": code}))
}

/// A listener on the host's 127.0.0.1 that counts the connections it accepts.
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, accepted)
}

const CONNECT: &str = "import socket, sys
try:
    socket.create_connection(('127.0.0.1', int(sys.argv[1]) if len(sys.argv) > 1 else PORT), timeout=2)
    print('connected')
except OSError as e:
    print('refused', e)";

#[test]
fn a_tcp_port_listening_on_the_hosts_loopback_is_unreachable() {
    let (port, accepted) = counting_listener();
    let worker = python_sandbox(&[]);
    let result = run(&worker, &CONNECT.replace("PORT", &port.to_string()));
    assert!(result["content"].as_str().unwrap().starts_with("refused"), "{result}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection reached the host");

    // The same program with --network host does connect: the refusal above is the sandbox's doing.
    let open = python_sandbox(&["--network", "host"]);
    assert_eq!(run(&open, &CONNECT.replace("PORT", &port.to_string()))["content"], "connected\n");
}

#[test]
fn writing_outside_the_work_dir_fails() {
    let outside = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox-write-probe");
    let worker = python_sandbox(&[]);
    let code = format!(
        "import os
open('inside.txt', 'w').write('ok')
for path in [{outside:?}, '/etc/toolwarden-probe', '/usr/toolwarden-probe']:
    try:
        open(path, 'w').write('escaped')
        print('wrote', path)
    except OSError as e:
        print('refused', path, e.errno)
print('inside', open('inside.txt').read())"
    );
    let content = run(&worker, &code)["content"].as_str().unwrap().to_string();
    assert!(!content.contains("wrote"), "{content}");
    assert_eq!(content.matches("refused").count(), 3, "{content}");
    assert!(content.contains("inside ok"), "the work dir is writable: {content}");
    assert!(!outside.exists());
}

#[test]
fn two_sessions_cannot_see_each_others_files() {
    let first = python_sandbox(&[]);
    let second = python_sandbox(&[]);
    let path = run(&first, "import os; open('secret.txt', 'w').write('first session'); print(os.path.abspath('secret.txt'))");
    let path = path["content"].as_str().unwrap().trim().to_string();
    let code = format!(
        "import os
print(os.path.exists({path:?}), sorted(os.listdir('/tmp')))"
    );
    let seen = run(&second, &code)["content"].as_str().unwrap().to_string();
    assert!(seen.starts_with("False"), "the second session sees the first one's file: {seen}");
    let first_dir = std::path::Path::new(&path).parent().unwrap().file_name().unwrap().to_string_lossy().to_string();
    assert!(!seen.contains(&first_dir), "{seen}");
    // And the host does not see it either: it lived in the first sandbox's private tmpfs.
    assert!(!std::path::Path::new(&path).exists());
}

#[test]
fn a_fork_bomb_is_contained_by_the_process_limit() {
    let worker = python_sandbox(&["--max-processes", "32"]);
    let code = "import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print('forks', n, 'then', e.errno)";
    let content = run(&worker, code)["content"].as_str().unwrap().to_string();
    let forks: usize = content.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
    assert!(forks < 32, "{content}");
    assert!(content.ends_with(&format!("then {}\n", libc::EAGAIN)), "{content}");
    assert!(worker.healthy(), "the worker survives the bomb");
    assert_eq!(run(&worker, "print('next call')")["content"], "next call\n", "and serves the next call");
}

#[test]
fn ptrace_mount_new_namespaces_and_io_uring_are_refused() {
    let worker = python_sandbox(&[]);
    let code = "import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(rc):
    return 'ok' if rc == 0 else os.strerror(ctypes.get_errno())
print('ptrace', errno_of(libc.ptrace(0, 0, None, None)))
print('mount', errno_of(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)))
print('unshare', errno_of(libc.unshare(0x10000000)))
print('bpf', errno_of(libc.syscall(321, 0, None, 0)))
params = ctypes.create_string_buffer(120)
print('io_uring_setup', errno_of(libc.syscall(425, 8, params)))
print('io_uring_enter', errno_of(libc.syscall(426, 0, 0, 0, 0, None, 0)))
print('io_uring_register', errno_of(libc.syscall(427, 0, 0, None, 0)))";
    let content = run(&worker, code)["content"].as_str().unwrap().to_string();
    for call in ["ptrace", "mount", "unshare", "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(content.contains(&format!("{call} Operation not permitted")), "{call}: {content}");
    }
}

#[test]
fn hidden_directories_are_empty_and_the_tool_runs_as_an_unprivileged_user() {
    let worker = python_sandbox(&[]);
    let content = run(&worker, "import os; print(os.path.exists('/root'), os.getuid() != 0, os.getpid() < 10)")["content"].clone();
    assert_eq!(content, "False True True\n", "no /root, no root user, own PID namespace");
}

#[test]
fn the_sandbox_exits_with_code_3_and_names_the_setting_when_user_namespaces_are_refused() {
    // Inside a user namespace whose max_user_namespaces is 0, the sandbox cannot make its own.
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec {} sandbox -- serve --listen unix:/tmp/never.sock \
         --token-sha256 {} --work-dir /tmp",
        support::BIN,
        support::token_hash()
    );
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c", &script])
        .env("TOOLWARDEN_TOOL_SPEC", exec_spec(&["/bin/true"], &[]).to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("user.max_user_namespaces") && stderr.contains("--unsafe-no-sandbox"), "{stderr}");
}

#[test]
fn unsafe_no_sandbox_warns_loudly_and_serves() {
    let mut cmd = std::process::Command::new(support::BIN);
    cmd.args(["sandbox", "--unsafe-no-sandbox", "--", "serve", "--listen", "127.0.0.1:0", "--token-sha256"])
        .arg(support::token_hash())
        .args(["--work-dir", "/tmp"])
        .env("TOOLWARDEN_TOOL_SPEC", exec_spec(&["/bin/true"], &[]).to_string())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(stderr.contains("WARNING") && stderr.contains("WITHOUT a sandbox"), "{stderr}");
    assert!(stderr.contains("serving tool"), "{stderr}");
}

#[test]
fn sigterm_stops_the_sandbox_and_everything_in_it() {
    let secs = 200_000 + std::process::id() % 100_000;
    let mut spec = exec_spec(&["/bin/sh", "-c", "/bin/sleep \"$1\"", "sh"], &["{{secs}}"]);
    spec["timeoutMs"] = json!(60_000);
    let worker = Arc::new(Worker::sandboxed(&spec, &[]));
    let pending = {
        let worker = worker.clone();
        std::thread::spawn(move || worker.call(json!({"secs": secs})).status)
    };
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(support::live_processes_with(&format!("/bin/sleep {secs}")).len(), 1, "the call is running");
    // SAFETY: signalling the sandbox process the test started.
    unsafe { libc::kill(worker.pid() as i32, libc::SIGTERM) };
    let _ = pending.join();
    std::thread::sleep(Duration::from_millis(300));
    assert!(support::live_processes_with(&format!("/bin/sleep {secs}")).is_empty(), "nothing outlives the sandbox");
}

#[test]
fn file_credentials_in_the_bound_worker_dir_reach_the_sandboxed_tool() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let file = credentials.join("api-key");
    std::fs::write(&file, "k3y").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut spec = exec_spec(&["/bin/sh", "-c", "cat \"$TOOLWARDEN_CREDENTIALS_DIR/api-key\""], &[]);
    spec["credentials"] = json!([{"secretRef": {"name": "s", "key": "k"}, "file": "api-key"}]);
    spec["credentialSources"] = json!([{"path": file.to_str().unwrap()}]);
    let worker = Worker::sandboxed_in(dir, &spec, &[]);
    let result = worker.ran(json!({}));
    assert_eq!(result["content"], "k3y", "{result}");
}

#[test]
fn a_bound_dir_is_reachable_while_its_siblings_are_not() {
    // As the gateway does: this worker's own dir inside its state dir is bound, the other workers' are not.
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let other = state.path().join("other-session");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("secret"), "not yours").unwrap();
    let mine = tempfile::tempdir_in(state.path()).unwrap();
    let state_arg = state.path().to_str().unwrap().to_string();
    let mut spec = exec_spec(&["/usr/bin/python3", "-c"], &["{{code}}"]);
    spec["timeoutMs"] = json!(10_000);
    let worker = Worker::sandboxed_in(mine, &spec, &[]);
    let code = format!(
        "import os
print(os.path.exists({:?}), len(os.listdir({state_arg:?})))",
        other.join("secret").to_str().unwrap()
    );
    assert_eq!(run(&worker, &code)["content"], "False 1\n", "only the bound worker dir is left in the hidden dir");
}

#[test]
fn an_unprivileged_user_gets_the_same_sandbox() {
    // The other tests run as whoever runs them (root on CI: the sandbox user is then 65534); this one
    // starts the sandbox as an ordinary user, the laptop case. Only root can switch users, so others skip it.
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 || std::process::Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to start the sandbox as another user");
        return;
    }
    let (port, accepted) = counting_listener();
    let mut spec = exec_spec(&["/usr/bin/python3", "-c"], &["{{code}}"]);
    spec["timeoutMs"] = json!(10_000);
    let worker = Worker::sandboxed_as(54_321, &spec, &["--max-processes", "32"]);
    let code = "import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print(os.getuid(), os.path.exists('/root'), libc.ptrace(0, 0, None, None), libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))
n = 0
try:
    while True:
        if os.fork() == 0:
            import time; time.sleep(60); os._exit(0)
        n += 1
except OSError:
    print('forks', n < 32)";
    assert_eq!(run(&worker, code)["content"], "54321 False -1 -1\nforks True\n");
    assert!(run(&worker, &CONNECT.replace("PORT", &port.to_string()))["content"].as_str().unwrap().starts_with("refused"));
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn a_tool_cannot_read_the_workers_environment_or_memory() {
    let worker = python_sandbox(&[]);
    // The tool's parent is its call's supervisor; the worker (serve) is the supervisor's parent.
    let code = "import os
supervisor = os.getppid()
serve = int(open('/proc/%d/stat' % supervisor).read().rsplit(') ', 1)[1].split()[1])
for pid in [supervisor, serve]:
    for name in ['environ', 'mem', 'fd/0']:
        try:
            open('/proc/%d/%s' % (pid, name), 'rb').read(1)
            print(name, 'read')
        except OSError as e:
            print(name, 'refused')";
    assert_eq!(run(&worker, code)["content"], "environ refused\nmem refused\nfd/0 refused\n".repeat(2));
}

#[test]
fn a_sandbox_whose_starter_is_killed_takes_everything_with_it() {
    // SIGKILL gives no chance to forward anything: the init's parent-death signal must do it.
    let secs = 300_000 + std::process::id() % 100_000;
    let mut spec = exec_spec(&["/bin/sh", "-c", "/bin/sleep \"$1\"", "sh"], &["{{secs}}"]);
    spec["timeoutMs"] = json!(60_000);
    let worker = Arc::new(Worker::sandboxed(&spec, &[]));
    let support::Addr::Unix(socket) = &worker.addr else { unreachable!("sandboxed workers listen on a socket") };
    let socket = socket.display().to_string();
    let pending = {
        let worker = worker.clone();
        std::thread::spawn(move || worker.call(json!({"secs": secs})).status)
    };
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(support::live_processes_with(&format!("/bin/sleep {secs}")).len(), 1, "the call is running");
    assert!(support::live_processes_with(&socket).len() >= 2, "the sandbox, its init and serve run");
    // SAFETY: killing the sandbox process the test started.
    unsafe { libc::kill(worker.pid() as i32, libc::SIGKILL) };
    let _ = pending.join();
    let mut left = Vec::new();
    for _ in 0..50 {
        left = [support::live_processes_with(&format!("/bin/sleep {secs}")), support::live_processes_with(&socket)].concat();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(left.is_empty(), "processes outlived the killed sandbox: {left:?}");
}

#[test]
fn the_sandbox_shows_only_system_dirs_its_work_dir_and_its_binds_and_a_symlink_cannot_leave_it() {
    let worker = python_sandbox(&[]);
    let checkout = env!("CARGO_MANIFEST_DIR");
    let code = format!(
        "import os
print(sorted(os.listdir('/')))
print(sorted(os.listdir('/etc')))
os.symlink('/etc/passwd', 'passwd-link')
print(open('passwd-link').read().strip().replace(chr(10), '|'))
os.symlink({checkout:?}, 'checkout-link')
print(os.path.exists({checkout:?}), os.path.exists('checkout-link'), os.path.exists('/etc/shadow'), os.path.exists('/home'))"
    );
    let content = run(&worker, &code)["content"].as_str().unwrap().to_string();
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 4, "{content}");
    // The top level: the system dirs (or links to them), /etc, /dev, /proc, /tmp, and the first
    // component of the bound paths (the example programs, the worker's socket dir).
    let bound: Vec<String> = [support::programs_dir(), std::env::temp_dir()]
        .iter()
        .filter_map(|p| p.components().nth(1).map(|c| c.as_os_str().to_string_lossy().into_owned()))
        .collect();
    let allowed = ["bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"];
    for entry in lines[0].trim_matches(['[', ']']).split(", ").map(|e| e.trim_matches('\'')) {
        assert!(allowed.contains(&entry) || bound.iter().any(|b| b == entry), "/{entry} is visible: {}", lines[0]);
    }
    for entry in lines[1].trim_matches(['[', ']']).split(", ").map(|e| e.trim_matches('\'')) {
        let known = ["passwd", "group", "ssl", "pki"].contains(&entry)
            || entry.starts_with("python3")
            || ["ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone", "resolv.conf", "hosts",
                "nsswitch.conf", "host.conf", "gai.conf", "services", "protocols", "mime.types"]
                .contains(&entry);
        assert!(known, "/etc/{entry} is visible: {}", lines[1]);
    }
    // The link leads to the sandbox's own passwd, which names only its user, not the host's.
    assert!(lines[2].starts_with("tool:x:"), "{content}");
    let host = std::fs::read_to_string("/etc/passwd").unwrap();
    assert_ne!(lines[2], host.trim().replace('\n', "|"));
    for user in host.lines().filter_map(|l| l.split(':').next()).filter(|u| !["nobody", "tool"].contains(u)) {
        assert!(!lines[2].split('|').any(|l| l.starts_with(&format!("{user}:"))), "host user {user} visible: {}", lines[2]);
    }
    assert_eq!(lines[3], "False False False False", "the checkout, /etc/shadow and /home are not there: {content}");
}
