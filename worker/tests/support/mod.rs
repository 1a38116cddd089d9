//! Starts the real `toolwarden-worker` binary and talks HTTP/1.1 to it (TCP or Unix socket).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod procs;
#[allow(unused_imports)] // not every test binary looks for processes
pub use procs::live_processes_with;

pub const TOKEN: &str = "test-worker-token";
pub const BIN: &str = env!("CARGO_BIN_EXE_toolwarden-worker");

pub fn token_hash() -> String {
    use sha2::Digest;
    sha2::Sha256::digest(TOKEN.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A tool spec as the gateway sends it (fields the worker ignores included, as core serializes them).
pub fn exec_spec(command: &[&str], args: &[&str]) -> Value {
    json!({
        "name": "test_tool", "resource": "test-tool", "description": "test", "effect": "read",
        "inputSchema": {"type": "object"},
        "runtime": {"exec": {"image": "unused", "command": command, "args": args}},
        "timeoutMs": 10_000, "maxOutputBytes": 65_536, "outputTrust": "trusted",
    })
}

pub enum Addr {
    Tcp(String),
    Unix(PathBuf),
}

pub struct Worker {
    pub child: Child,
    pub addr: Addr,
    pub stderr: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Worker {
    /// `serve` on 127.0.0.1 (random port), unsandboxed.
    pub fn serve(spec: &Value, extra: &[&str]) -> Worker {
        Worker::serve_with_env(spec, extra, &[])
    }

    pub fn serve_with_env(spec: &Value, extra: &[&str], env: &[(&str, &str)]) -> Worker {
        let work = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--token-sha256", &token_hash(), "--work-dir"]).arg(work.path()).args(extra);
        Worker::start(cmd, spec, None, Some(work))
    }

    /// `serve` unsandboxed as a worker pod runs it: uid/gid 65532, no capabilities at all, no_new_privs
    /// (`setpriv`; the caller must be root).
    pub fn serve_as_pod(spec: &Value) -> Worker {
        let work = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(work.path(), Some(65532), Some(65532)).unwrap();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65532", "--regid=65532", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", BIN]);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--token-sha256", &token_hash(), "--work-dir"]).arg(work.path());
        Worker::start(cmd, spec, None, Some(work))
    }

    /// `sandbox ... -- serve` on a Unix socket in a directory bound read-write into the sandbox.
    pub fn sandboxed(spec: &Value, sandbox_args: &[&str]) -> Worker {
        Worker::sandboxed_in(tempfile::tempdir().unwrap(), spec, sandbox_args)
    }

    /// As [`Worker::sandboxed`], with `dir` (which may hold credential files) as the bound socket dir.
    pub fn sandboxed_in(dir: tempfile::TempDir, spec: &Value, sandbox_args: &[&str]) -> Worker {
        Worker::sandboxed_with(Command::new(BIN), dir, spec, sandbox_args)
    }

    /// As [`Worker::sandboxed`], started by an unprivileged user (`setpriv`; the caller must be root).
    pub fn sandboxed_as(uid: u32, spec: &Value, sandbox_args: &[&str]) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
        let mut cmd = Command::new("setpriv");
        cmd.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), BIN.into()]);
        Worker::sandboxed_with(cmd, dir, spec, sandbox_args)
    }

    fn sandboxed_with(mut cmd: Command, dir: tempfile::TempDir, spec: &Value, sandbox_args: &[&str]) -> Worker {
        let socket = dir.path().join("worker.sock");
        // The example programs are bound in read-only wherever the checkout lies (even under /tmp), as
        // the gateway's local runtime binds a tool's program directory.
        cmd.arg("sandbox").arg("--ro-bind").arg(programs_dir());
        cmd.arg("--rw-bind").arg(dir.path()).args(sandbox_args);
        cmd.args(["--", "serve", "--listen"]).arg(format!("unix:{}", socket.display()));
        cmd.args(["--token-sha256", &token_hash(), "--work-dir", "/tmp"]);
        Worker::start(cmd, spec, Some(socket), Some(dir))
    }

    fn start(mut cmd: Command, spec: &Value, socket: Option<PathBuf>, dir: Option<tempfile::TempDir>) -> Worker {
        cmd.env("TOOLWARDEN_TOOL_SPEC", spec.to_string()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the worker starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap());
        let log = stderr.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while lines.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(addr) = line.trim().rsplit_once(" on ").map(|(_, a)| a.to_string()) {
                    let _ = tx.send(addr);
                }
                log.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let announced = rx.recv_timeout(Duration::from_secs(20));
        let addr = match (socket, announced) {
            (Some(path), Ok(_)) => Addr::Unix(path),
            (None, Ok(addr)) => Addr::Tcp(addr),
            (_, Err(_)) => {
                let _ = child.kill();
                panic!("the worker did not start: {}", stderr.lock().unwrap());
            }
        };
        Worker { child, addr, stderr, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends a raw request and returns (status, body).
    pub fn raw(&self, request: &[u8]) -> Answer {
        let mut response = Vec::new();
        match &self.addr {
            Addr::Tcp(addr) => {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let _ = s.write_all(request);
                let _ = s.read_to_end(&mut response);
            }
            Addr::Unix(path) => {
                let mut s = UnixStream::connect(path).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let _ = s.write_all(request);
                let _ = s.read_to_end(&mut response);
            }
        }
        let text = String::from_utf8_lossy(&response).to_string();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Answer { status, body: serde_json::from_str(body).unwrap_or(Value::String(body.to_string())) }
    }

    /// Sends a call and leaves its connection open, unread: dropping the stream hangs up mid-call.
    pub fn start_call(&self, arguments: Value) -> Box<dyn Write> {
        let body = json!({"callId": "hung-up", "arguments": arguments}).to_string();
        let request = format!(
            "POST /v1/call HTTP/1.1\r\nHost: worker\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream: Box<dyn Write> = match &self.addr {
            Addr::Tcp(addr) => Box::new(std::net::TcpStream::connect(addr).unwrap()),
            Addr::Unix(path) => Box::new(UnixStream::connect(path).unwrap()),
        };
        stream.write_all(request.as_bytes()).unwrap();
        stream
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    pub fn call_with(&self, request: &Value) -> Answer {
        let auth = format!("Bearer {TOKEN}");
        self.request("POST", "/v1/call", &[("Authorization", &auth), ("Content-Type", "application/json")], request.to_string().as_bytes())
    }

    pub fn call(&self, arguments: Value) -> Answer {
        self.call_with(&json!({"callId": "test-call", "arguments": arguments}))
    }

    /// A call that must have run: returns the CallResult.
    pub fn ran(&self, arguments: Value) -> Value {
        let answer = self.call(arguments);
        assert_eq!(answer.status, 200, "{:?}\n{}", answer.body, self.log());
        answer.body
    }

    pub fn healthy(&self) -> bool {
        self.request("GET", "/healthz", &[], b"").status == 200
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 20 ms for up to `limit`; whether it held.
pub fn wait_for(limit: Duration, check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

pub fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/programs").canonicalize().unwrap()
}

