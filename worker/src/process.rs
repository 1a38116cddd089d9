//! Starting tool processes: clean environment, the session's work dir, rlimits, death with the worker,
//! and a supervisor per call that takes down every process the call started when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, Command};

use crate::spec::{ToolSpec, parse_quantity};

/// rlimits applied to every process a call starts (and inherited by what it forks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildLimits {
    pub cpu_seconds: Option<u64>,
    pub file_bytes: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub processes: Option<u64>,
}

/// Default largest file a call may write when the tool sets no `tmpSize`.
pub const DEFAULT_FILE_BYTES: u64 = 1024 * 1024 * 1024;

impl ChildLimits {
    /// CPU: the timeout (a call cannot use more CPU than one core for its whole run, plus a second);
    /// file size: `tmpSize`; address space: `memory`; processes: the worker's `--max-processes`.
    pub fn for_spec(spec: &ToolSpec, max_processes: Option<u64>) -> ChildLimits {
        let bytes = |q: &Option<String>| q.as_deref().and_then(parse_quantity).map(|b| b.max(1.0) as u64);
        ChildLimits {
            cpu_seconds: Some(spec.timeout_ms.div_ceil(1000) + 1),
            file_bytes: Some(bytes(&spec.tmp_size).unwrap_or(DEFAULT_FILE_BYTES)),
            // Below 64 MiB of address space most runtimes cannot even start; keep that floor.
            memory_bytes: bytes(&spec.memory).map(|m| m.max(64 * 1024 * 1024)),
            processes: max_processes,
        }
    }

    /// Applies the limits to the calling process. Runs between fork and exec: async-signal-safe calls only.
    pub fn apply(&self) -> std::io::Result<()> {
        set(libc::RLIMIT_CORE, 0, 0)?;
        if let Some(cpu) = self.cpu_seconds {
            // Soft limit sends SIGXCPU, the hard limit a second later SIGKILL.
            set(libc::RLIMIT_CPU, cpu, cpu + 1)?;
        }
        if let Some(f) = self.file_bytes {
            set(libc::RLIMIT_FSIZE, f, f)?;
        }
        if let Some(m) = self.memory_bytes {
            set(libc::RLIMIT_AS, m, m)?;
        }
        if let Some(p) = self.processes {
            set(libc::RLIMIT_NPROC, p, p)?;
        }
        Ok(())
    }
}

/// The type of an rlimit resource number (glibc and musl differ).
#[cfg(target_env = "gnu")]
pub type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub type Resource = libc::c_int;

/// Lowers one rlimit (never raises a hard limit the worker itself is under).
pub fn set(resource: Resource, soft: u64, hard: u64) -> std::io::Result<()> {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(resource, &mut current) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hard = hard.min(current.rlim_max);
        let limit = libc::rlimit { rlim_cur: soft.min(hard), rlim_max: hard };
        if libc::setrlimit(resource, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How long a supervisor gets to kill and reap a call's processes before it is killed itself.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// The arguments that run this binary's subcommands (`[]` for `toolwarden-worker`, `[worker]` for
/// `toolwarden worker`), set once at start.
static SELF_ARGS: OnceLock<Vec<OsString>> = OnceLock::new();

pub fn set_self_args(args: Vec<OsString>) {
    let _ = SELF_ARGS.set(args);
}

/// How a supervised program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Exit(i32),
    Signal(i32),
    /// Stopped before it ended (timeout, cancellation), or its supervisor was stopped or killed (by the
    /// program itself: it runs as the same user).
    Stopped,
}

/// A tool program running under its own supervisor (`supervise`, see there): `child` is the supervisor,
/// whose stdin, stdout and stderr are the program's pipes.
pub struct Supervised {
    pub child: Option<Child>,
    pid: u32,
    status: Lines<BufReader<tokio::net::UnixStream>>,
    done: bool,
}

/// Starts `argv` under a supervisor: a clean environment (`PATH`, `HOME` and `TMPDIR` pointing at the
/// session dir, the egress proxy's variables in a proxied sandbox, then `env`: the tool's static env and
/// credentials), the session dir as working directory, the limits, and SIGKILL when the worker dies.
/// `Err` says why the program could not be started.
pub async fn spawn(argv: &[String], env: &BTreeMap<String, String>, work_dir: &Path, limits: ChildLimits) -> Result<Supervised, String> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("cannot start `{}`: {e}", argv[0]))?;
    let status_fd = theirs.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(SELF_ARGS.get().map(Vec::as_slice).unwrap_or_default());
    cmd.args(crate::supervise::args(status_fd, &limits, argv));
    cmd.env_clear();
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()));
    cmd.env("HOME", work_dir).env("TMPDIR", work_dir).env("LANG", "C.UTF-8");
    // In a local sandbox with `--network proxy`, the only way out is the egress proxy.
    if let Some(proxy) = std::env::var_os(crate::sandbox::proxy::ENV) {
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            cmd.env(name, &proxy);
        }
    }
    cmd.envs(env);
    cmd.current_dir(work_dir);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0
                || libc::fcntl(status_fd, libc::F_SETFD, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the supervisor of `{}` (the worker runs itself again through /proc/self/exe): {e}", argv[0]))?;
    let pid = child.id().unwrap_or(0);
    SUPERVISORS.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
    drop(theirs);
    let stream = ours.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(ours));
    let mut supervised = match stream {
        Ok(stream) => Supervised { child: Some(child), pid, status: BufReader::new(stream).lines(), done: false },
        Err(e) => {
            signal(pid, libc::SIGKILL);
            return Err(format!("cannot start `{}`: {e}", argv[0]));
        }
    };
    match supervised.status.next_line().await {
        Ok(Some(line)) if line.starts_with("started ") => Ok(supervised),
        Ok(Some(line)) => {
            supervised.finish().await;
            let why = line.strip_prefix("spawn_failed ").unwrap_or(&line).to_string();
            Err(format!("cannot start `{}`: {why}", argv[0]))
        }
        _ => {
            supervised.finish().await;
            Err(format!("cannot start `{}`: its supervisor ended before it did", argv[0]))
        }
    }
}

impl Supervised {
    /// Waits until the program ends; by then its supervisor has killed and reaped every process it left.
    pub async fn wait(&mut self) -> Ended {
        let ended = match self.status.next_line().await {
            Ok(Some(line)) => match line.split_once(' ') {
                Some(("exit", code)) => Ended::Exit(code.parse().unwrap_or(1)),
                Some(("signal", n)) => Ended::Signal(n.parse().unwrap_or(0)),
                _ => Ended::Stopped,
            },
            // The supervisor was killed (by the tool itself): its orphans came to this worker.
            _ => {
                ORPHANS_POSSIBLE.store(true, Ordering::SeqCst);
                Ended::Stopped
            }
        };
        self.finish().await;
        ended
    }

    /// Stops the program and everything it started, now.
    pub async fn stop(&mut self) {
        if self.done {
            return;
        }
        // SIGCONT first: a supervisor the tool stopped (SIGSTOP) must wake to act on SIGTERM.
        signal(self.pid, libc::SIGCONT);
        signal(self.pid, libc::SIGTERM);
        if !matches!(tokio::time::timeout(STOP_GRACE, self.status.next_line()).await, Ok(Ok(Some(_)))) {
            ORPHANS_POSSIBLE.store(true, Ordering::SeqCst);
            signal(self.pid, libc::SIGKILL);
        }
        self.finish().await;
    }

    /// Reaps the supervisor and takes down anything that escaped it (only possible if it was killed).
    async fn finish(&mut self) {
        if let Some(mut child) = self.child.take()
            && tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err()
        {
            let _ = child.kill().await;
        }
        SUPERVISORS.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.pid);
        self.done = true;
        if ORPHANS_POSSIBLE.load(Ordering::SeqCst) {
            sweep_orphans();
        }
    }
}

impl Drop for Supervised {
    /// An abandoned call (its future dropped: the gateway hung up or cancelled it) leaves nothing running.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        signal(self.pid, libc::SIGCONT);
        signal(self.pid, libc::SIGTERM);
        let pid = self.pid;
        let child = self.child.take();
        let settle = async move {
            if let Some(mut child) = child
                && tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err()
            {
                ORPHANS_POSSIBLE.store(true, Ordering::SeqCst);
                let _ = child.kill().await;
            }
            SUPERVISORS.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
            if ORPHANS_POSSIBLE.load(Ordering::SeqCst) {
                sweep_orphans();
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(settle);
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // 0 would mean "my own group": never signal the worker itself.
    if pid != 0 {
        // SAFETY: kill(2) of our own child; no memory is involved.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    }
}

/// The environment a tool's process gets from its credentials: `env` credentials by name, and
/// `TOOLWARDEN_CREDENTIALS_DIR` when `file` credentials exist (the directory holding them).
pub fn credential_env(spec: &ToolSpec) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (i, credential) in spec.credentials.iter().enumerate() {
        if let Some(name) = &credential.env {
            env.insert(name.clone(), crate::credentials::value(spec, i)?);
        }
        if credential.file.is_some()
            && let Some(crate::protocol::CredentialSource::Path(path)) = spec.credential_sources.get(i)
            && let Some(dir) = Path::new(path).parent()
        {
            env.insert("TOOLWARDEN_CREDENTIALS_DIR".into(), dir.display().to_string());
        }
    }
    Ok(env)
}

/// Supervisors of calls still running: the only children this worker should have.
static SUPERVISORS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
/// A supervisor died without finishing its work: orphans may have come to this worker. Cleared by a
/// sweep that finds none (so an ordinary call costs no look through /proc).
static ORPHANS_POSSIBLE: AtomicBool = AtomicBool::new(false);

/// Makes the worker the subreaper of everything it starts: if a tool kills its own supervisor, the
/// tool's processes come here instead of escaping to init, and [`sweep_orphans`] ends them.
pub fn become_subreaper() {
    // SAFETY: prctl only changes this process's flag.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Runs [`sweep_orphans`] whenever a child of the worker changes state.
pub fn spawn_orphan_sweeper() {
    if let Ok(mut children) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        tokio::spawn(async move {
            while children.recv().await.is_some() {
                if ORPHANS_POSSIBLE.load(Ordering::SeqCst) {
                    sweep_orphans();
                }
            }
        });
    }
}

/// SIGKILLs and reaps every child of this worker that is not a supervisor: processes orphaned when a
/// tool killed its supervisor.
pub fn sweep_orphans() {
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() } as u32;
    let known = SUPERVISORS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let orphans: Vec<u32> = children_of(me).unwrap_or_default().into_iter().filter(|p| !known.contains(p)).collect();
    for pid in &orphans {
        // SAFETY: kill and reap our own child (zombies are reaped now, live ones at their SIGCHLD).
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            libc::waitpid(*pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
    if orphans.is_empty() {
        ORPHANS_POSSIBLE.store(false, Ordering::SeqCst);
    }
}

/// Children of `parent` (zombies included), from `/proc`; `None` when `/proc` cannot be read.
pub fn children_of(parent: u32) -> Option<Vec<u32>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so split after the last `)`.
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    Some(children)
}

/// Worker shutdown: every supervisor is told to stop its call, given [`STOP_GRACE`], then killed; what
/// escaped is swept.
pub fn stop_all() {
    let supervisors: Vec<u32> = SUPERVISORS.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
    for pid in &supervisors {
        signal(*pid, libc::SIGCONT);
        signal(*pid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + STOP_GRACE;
    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| !r.starts_with('Z')))
    };
    while supervisors.iter().any(running) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for pid in supervisors.iter().filter(|p| running(p)) {
        signal(*pid, libc::SIGKILL);
    }
    sweep_orphans();
}
