//! The `local` runtime: one sandboxed worker process per (session, tool), started on the session's first
//! call of the tool (`toolwarden worker sandbox ... -- serve ...`, see `docs/worker-protocol.md`).
//!
//! Each worker gets a private 0700 directory under the state dir holding its unix socket and its file
//! credentials (0600); env credentials go into the child's otherwise empty environment. A random token per
//! worker authenticates the gateway; the worker only sees the token's hash. A worker that died, timed out,
//! or runs an older version of the tool is replaced on the next call. Ending a session (or shutting down)
//! sends SIGTERM to each worker's process group, SIGKILL after a grace period, and removes its directory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio_util::sync::CancellationToken;
use toolwarden_core::config::ToolConfig;
use toolwarden_worker::protocol::{CallRequest, CallResult, SPEC_ENV};

use super::worker_client::{WorkerClient, WorkerEndpoint};
use super::{RuntimeError, SessionInfo, WorkerRuntime};

pub mod spawn;

/// (namespace, Secret name) → key → value: the Secrets `toolwarden dev` found beside the manifests.
pub type LocalSecrets = Arc<std::sync::RwLock<BTreeMap<(String, String), BTreeMap<String, String>>>>;

/// How long a worker may take to answer its first health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection to a worker unused this long is closed ([`WorkerRuntime::trim_idle`]): a quiet session's
/// worker then holds no connection buffers in the gateway.
pub const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(30);
/// Time between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Added to a tool's timeout before the gateway gives up on the worker (which enforces the timeout itself).
pub const CALL_MARGIN: Duration = Duration::from_secs(5);
/// Exit code of `toolwarden worker sandbox` when the kernel refuses unprivileged user namespaces.
pub const SANDBOX_UNAVAILABLE_EXIT: i32 = 3;
const STDERR_LINES: usize = 20;
/// Read buffer of each of a worker's stdout and stderr pipes (tokio's default is 8 KiB).
const PIPE_BUFFER: usize = 512;
/// Unix socket paths are limited to 108 bytes.
const MAX_SOCKET_PATH: usize = 100;

pub struct LocalRuntimeConfig {
    /// The worker program and its leading arguments, such as `[/path/to/toolwarden, worker]`.
    pub worker_command: Vec<OsString>,
    /// Parent of the per-worker directories; created 0700, removed at shutdown once empty.
    pub state_dir: PathBuf,
    /// Run workers without namespaces (loudly logged); only where the kernel refuses them.
    pub unsafe_no_sandbox: bool,
    /// Bound read-only into every sandbox (tool programs referenced from the manifests live there).
    pub manifests_dir: Option<PathBuf>,
    pub secrets: LocalSecrets,
    pub metrics: crate::kubernetes::Metrics,
    pub max_concurrent_per_worker: u32,
}

pub struct LocalRuntime {
    config: LocalRuntimeConfig,
    sessions: Mutex<HashMap<String, Session>>,
    closed: AtomicBool,
    /// Worker starts under way at once: see [`concurrent_starts`].
    starts: tokio::sync::Semaphore,
}

/// How many workers start at once: twice the CPUs this process may use. Starting a sandbox is CPU work
/// (namespaces, mounts, the worker's exec); a thousand at once on two cores all crawl together, and
/// the calls to workers that are already up time out behind them. In turn, the first calls of a wave of
/// new sessions wait for their start like in a queue, and the start timeout counts from the moment a
/// start really begins.
fn concurrent_starts() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

struct Session {
    namespace: String,
    /// By tool name; the async lock makes concurrent first calls share one start.
    workers: HashMap<String, Slot>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Worker>>>>;

struct Worker {
    tool: ToolConfig,
    client: WorkerClient,
    /// Set by the watcher when the process has exited (and been reaped) and its directory is gone.
    exit: tokio::sync::watch::Receiver<Option<String>>,
    /// Dropping it (or sending) makes the watcher stop the process group: a worker whose start was
    /// abandoned (the call that started it was cut off) is cleaned up like one that was stopped.
    kill: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// A call saw it die, time out or refuse its token: the next call starts a fresh one.
    broken: AtomicBool,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Worker {
    fn usable(&self, tool: &ToolConfig) -> bool {
        !self.broken.load(Ordering::SeqCst) && self.exit.borrow().is_none() && self.tool == *tool
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// Stops the process group and waits until its watcher has removed the directory. Idempotent.
    async fn stop(&self) {
        if let Some(kill) = self.kill.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = kill.send(());
        }
        let mut exit = self.exit.clone();
        let _ = exit.wait_for(Option::is_some).await;
    }
}

impl LocalRuntime {
    pub fn new(config: LocalRuntimeConfig) -> anyhow::Result<Arc<LocalRuntime>> {
        if config.worker_command.is_empty() {
            anyhow::bail!("local runtime: the worker command is empty");
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .with_context(|| format!("local runtime: cannot create state dir {}", config.state_dir.display()))?;
        // An existing dir keeps its mode with create(): make sure no one else can read credentials.
        std::fs::set_permissions(&config.state_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("local runtime: cannot make state dir {} private", config.state_dir.display()))?;
        let probe = spawn::socket_path(&config.state_dir.join("w-0123456789abcdef"));
        if probe.as_os_str().len() > MAX_SOCKET_PATH {
            anyhow::bail!(
                "local runtime: state dir {} is too long for unix socket paths (keep it under {} bytes)",
                config.state_dir.display(),
                MAX_SOCKET_PATH - 40
            );
        }
        if config.unsafe_no_sandbox {
            tracing::warn!("local runtime: --unsafe-no-sandbox: tools run WITHOUT namespaces, with this user's rights and network");
        }
        Ok(Arc::new(LocalRuntime {
            config,
            sessions: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            starts: tokio::sync::Semaphore::new(concurrent_starts()),
        }))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This session's worker for `tool`, started (or replaced) if needed.
    async fn worker_for(&self, session_id: &str, tool: &ToolConfig) -> Result<Arc<Worker>, RuntimeError> {
        let (slot, namespace) = {
            let mut sessions = self.sessions();
            let session = sessions.get_mut(session_id).ok_or_else(|| {
                RuntimeError::new("unknown_session", format!("session {session_id} has ended or was never started"))
            })?;
            (session.workers.entry(tool.name.clone()).or_default().clone(), session.namespace.clone())
        };
        let mut slot = slot.lock().await;
        if let Some(worker) = slot.as_ref() {
            if worker.usable(tool) {
                return Ok(worker.clone());
            }
            let old = slot.take().expect("checked");
            tokio::spawn(async move { old.stop().await });
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(RuntimeError::new("shutting_down", "the gateway is shutting down"));
        }
        let started = Instant::now();
        let Ok(_turn) = self.starts.acquire().await else {
            return Err(RuntimeError::new("shutting_down", "the gateway is shutting down"));
        };
        match self.start(&namespace, tool).await {
            Ok(worker) => {
                self.config.metrics.worker_started("local", started.elapsed().as_secs_f64());
                crate::trace::note_worker_start("local", started, None);
                *slot = Some(worker.clone());
                Ok(worker)
            }
            Err(e) => {
                self.config.metrics.worker_failed("local", e.code);
                crate::trace::note_worker_start("local", started, Some(e.code));
                Err(e)
            }
        }
    }

    async fn start(&self, namespace: &str, tool: &ToolConfig) -> Result<Arc<Worker>, RuntimeError> {
        let fail = |code: &'static str, what: &str, e: &dyn std::fmt::Display| {
            RuntimeError::new(code, format!("tool {}: cannot start a local worker: {what}: {e}", tool.name))
        };
        let dir = self.config.state_dir.join(format!("w-{}", random_hex(8).map_err(|e| fail("worker_start_failed", "randomness", &e))?));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| fail("worker_start_failed", "worker directory", &e))?;
        let cleanup = |e: RuntimeError| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        let credentials_dir = dir.join("credentials");
        let credentials = {
            let secrets = self.config.secrets.read().unwrap_or_else(|e| e.into_inner());
            spawn::credentials(tool, namespace, &secrets, &credentials_dir).map_err(cleanup)?
        };
        write_credential_files(&credentials_dir, &credentials.files)
            .map_err(|e| cleanup(fail("worker_start_failed", "credential files", &e)))?;
        let token = random_hex(32).map_err(|e| cleanup(fail("worker_start_failed", "randomness", &e)))?;
        let token_sha256 = crate::auth::static_tokens::hex(&crate::auth::static_tokens::sha256(token.as_bytes()));
        let args = spawn::worker_args(&spawn::SandboxPlan {
            tool,
            state_dir: &self.config.state_dir,
            worker_dir: &dir,
            manifests_dir: self.config.manifests_dir.as_deref(),
            unsafe_no_sandbox: self.config.unsafe_no_sandbox,
            token_sha256: &token_sha256,
            max_concurrent: self.config.max_concurrent_per_worker,
            log_calls: tracing::enabled!(target: "toolwarden::worker", tracing::Level::DEBUG),
            exists: &|p: &Path| p.exists(),
        })
        .map_err(cleanup)?;

        let host_path = std::env::var("PATH").unwrap_or_default();
        let mut command = tokio::process::Command::new(&self.config.worker_command[0]);
        command
            .args(&self.config.worker_command[1..])
            .args(&args)
            .env_clear()
            .env("PATH", spawn::sandbox_path(&host_path))
            .env("HOME", "/tmp")
            .env("LANG", "C.UTF-8")
            .env(SPEC_ENV, spawn::tool_spec(tool, credentials.sources))
            .envs(credentials.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // Workers must not outlive a gateway that dies without shutting down (SIGKILL, a crash): the
        // kernel kills the sandbox when the gateway thread that started it goes (the sandbox's own
        // init dies with it in turn). The parent check closes the race with a gateway already gone.
        let gateway_pid = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
        // (prctl, getppid, _exit, sched_setscheduler).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != gateway_pid {
                    libc::_exit(1);
                }
                // Workers and their tools are batch work: a worker the gateway wakes (by sending it a
                // call) waits for a free CPU or the gateway's next pause instead of preempting it in
                // the middle of a request. A hint only; nothing depends on it.
                let _ = libc::sched_setscheduler(0, libc::SCHED_BATCH, &libc::sched_param { sched_priority: 0 });
                Ok(())
            });
        }
        if let Ok(filter) = std::env::var("TOOLWARDEN_WORKER_LOG") {
            command.env("RUST_LOG", filter);
        }
        let child = command.spawn().map_err(|e| {
            cleanup(fail("worker_start_failed", &format!("running {}", self.config.worker_command[0].to_string_lossy()), &e))
        })?;
        self.config.metrics.worker_pods_active.inc();
        let worker = Arc::new(watch_child(child, tool.clone(), dir.clone(), &token, self.config.metrics.clone()));

        match self.wait_ready(&worker).await {
            Ok(()) => Ok(worker),
            Err(e) => {
                worker.stop().await;
                Err(e)
            }
        }
    }

    /// Polls `/healthz` until the worker answers, it exits, or [`START_TIMEOUT`] passes.
    async fn wait_ready(&self, worker: &Worker) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pause = Duration::from_millis(2);
        let mut exit = worker.exit.clone();
        loop {
            let exited = exit.borrow().clone();
            if let Some(status) = exited {
                // Let the stderr reader catch up so the message carries the sandbox's sentence.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let tail = worker.stderr_tail();
                if status == format!("exit status: {SANDBOX_UNAVAILABLE_EXIT}") {
                    let sentence = if tail.is_empty() { "the kernel refuses unprivileged user namespaces".to_owned() } else { tail };
                    return Err(RuntimeError::new("sandbox_unavailable", sentence));
                }
                return Err(RuntimeError::new(
                    "worker_start_failed",
                    format!("tool {}: the worker exited ({status}) before it was ready: {tail}", worker.tool.name),
                ));
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::new(
                    "start_timeout",
                    format!("tool {}: the worker was not ready within {} s: {}", worker.tool.name, START_TIMEOUT.as_secs(), worker.stderr_tail()),
                ));
            }
            if let WorkerEndpoint::Unix(socket) = worker.client.endpoint()
                && socket.exists()
            {
                match worker.client.health().await {
                    Ok(health) if health.tool == worker.tool.name => return Ok(()),
                    Ok(health) => {
                        return Err(RuntimeError::new(
                            "worker_protocol",
                            format!("the worker serves tool {:?}, not {}", health.tool, worker.tool.name),
                        ));
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = exit.changed() => {}
            }
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn run_call(&self, session_id: &str, tool: &ToolConfig, request: CallRequest, cancel: &CancellationToken) -> Result<CallResult, RuntimeError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(RuntimeError::new("shutting_down", "the gateway is shutting down"));
        }
        let worker = self.worker_for(session_id, tool).await?;
        let timeout = Duration::from_millis(tool.timeout_ms) + CALL_MARGIN;
        match super::unless_cancelled(cancel, worker.client.call(&request, timeout)).await {
            Ok(result) => Ok(result),
            Err(mut e) => {
                if matches!(e.code, "worker_died" | "worker_timeout" | "worker_unauthorized" | "worker_unreachable") {
                    worker.broken.store(true, Ordering::SeqCst);
                    worker.client.close_idle();
                    let mut exit = worker.exit.clone();
                    if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(200), exit.wait_for(Option::is_some)).await {
                        e.message = format!("tool {}: the worker stopped ({}) during the call; the next call starts a new one", tool.name, status.as_deref().unwrap_or("?"));
                    }
                    tracing::warn!(tool = %tool.name, session = %session_id, code = e.code, stderr = %worker.stderr_tail(), "{}", e.message);
                }
                Err(e)
            }
        }
    }

    async fn stop_slots(&self, slots: Vec<Slot>) {
        let stops = slots.into_iter().map(|slot| async move {
            let worker = slot.lock().await.take();
            if let Some(worker) = worker {
                worker.stop().await;
            }
        });
        futures::future::join_all(stops).await;
    }
}

/// Spawns the task that owns the child: it reaps it, and on request stops its process group.
fn watch_child(mut child: tokio::process::Child, tool: ToolConfig, dir: PathBuf, token: &str, metrics: crate::kubernetes::Metrics) -> Worker {
    let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_LINES)));
    for pipe in [child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>), child.stdout.take().map(|p| Box::new(p) as _)]
        .into_iter()
        .flatten()
    {
        let lines = stderr.clone();
        let name = tool.name.clone();
        tokio::spawn(async move {
            // A small buffer: the pipes are quiet (a worker writes a line only when something fails)
            // and each idle worker holds two of them for its whole life; a longer line is still read
            // whole, in more pieces.
            let mut reader = BufReader::with_capacity(PIPE_BUFFER, pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                tracing::debug!(target: "toolwarden::worker", tool = %name, "{line}");
                let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                if lines.len() == STDERR_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
    }
    let (exit_tx, exit_rx) = tokio::sync::watch::channel(None);
    let (kill_tx, mut kill_rx) = tokio::sync::oneshot::channel::<()>();
    let pid = child.id();
    let worker_dir = dir.clone();
    let endpoint = WorkerEndpoint::Unix(spawn::socket_path(&dir));
    tokio::spawn(async move {
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = &mut kill_rx => None,
        };
        let status = match exited {
            Some(status) => status,
            None => {
                // The child is not reaped yet, so its pid (= process group id) cannot have been reused.
                signal_group(pid, libc::SIGTERM);
                match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        signal_group(pid, libc::SIGKILL);
                        child.wait().await
                    }
                }
            }
        };
        let text = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        // Kill what the worker may have left in its group.
        signal_group(pid, libc::SIGKILL);
        // The cleanup is here, where every worker ends, rather than in `stop`: a start abandoned half
        // way (its call cut off by the gateway's own bound) never calls `stop`, and before this it left
        // its directory and its count in `toolwarden_worker_pods_active` behind.
        metrics.worker_pods_active.dec();
        if let Err(e) = std::fs::remove_dir_all(&worker_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %worker_dir.display(), "worker directory not removed: {e}");
        }
        let _ = exit_tx.send(Some(text));
    });
    Worker {
        client: WorkerClient::new(endpoint, token.to_owned()),
        tool,
        exit: exit_rx,
        kill: Mutex::new(Some(kill_tx)),
        broken: AtomicBool::new(false),
        stderr,
    }
}

fn signal_group(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

fn write_credential_files(dir: &Path, files: &[(String, String)]) -> std::io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    // A gateway running as root gets its sandboxes run as `nobody` (the worker's rule): hand the
    // credentials to that user, still unreadable to anyone else.
    // SAFETY: geteuid cannot fail.
    let owner = (unsafe { libc::geteuid() } == 0).then_some(toolwarden_worker::sandbox::NOBODY);
    if let Some(uid) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
    }
    for (name, value) in files {
        use std::io::Write as _;
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        file.write_all(value.as_bytes())?;
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(crate::auth::static_tokens::hex(&buf))
}

impl WorkerRuntime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start_session(&self, session: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::SeqCst) {
                return Err(RuntimeError::new("shutting_down", "the gateway is shutting down"));
            }
            let started = Instant::now();
            let mut sessions = self.sessions();
            if !sessions.contains_key(&session.id) {
                sessions.insert(session.id.clone(), Session { namespace: session.namespace, workers: HashMap::new() });
                self.config.metrics.sessions_active.inc();
                // Nothing to create locally (workers start on first call), but the histogram is shared.
                self.config.metrics.session_start.observe(started.elapsed().as_secs_f64());
            }
            Ok(())
        })
    }

    fn call<'a>(
        &'a self,
        session_id: &'a str,
        tool: &'a ToolConfig,
        request: CallRequest,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CallResult, RuntimeError>> {
        Box::pin(self.run_call(session_id, tool, request, cancel))
    }

    fn end_session<'a>(&'a self, session_id: &'a str, reason: &'static str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(session) = self.sessions().remove(session_id) else { return };
            self.config.metrics.sessions_active.dec();
            tracing::debug!(session = %session_id, reason, workers = session.workers.len(), "local session ended");
            self.stop_slots(session.workers.into_values().collect()).await;
        })
    }

    fn start_timeout(&self) -> Duration {
        START_TIMEOUT
    }

    fn trim_idle(&self) {
        let slots: Vec<Slot> = self.sessions().values().flat_map(|s| s.workers.values().cloned()).collect();
        for slot in slots {
            // A slot that is locked is starting or replacing its worker: busy, not idle.
            if let Ok(worker) = slot.try_lock()
                && let Some(worker) = worker.as_ref()
            {
                worker.client.close_idle_older_than(IDLE_CONNECTION_TTL);
            }
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closed.store(true, Ordering::SeqCst);
            let sessions: Vec<Session> = self.sessions().drain().map(|(_, s)| s).collect();
            for _ in &sessions {
                self.config.metrics.sessions_active.dec();
            }
            self.stop_slots(sessions.into_iter().flat_map(|s| s.workers.into_values()).collect()).await;
            // Only an empty directory goes: one with something left in it is kept for a look.
            if let Err(e) = std::fs::remove_dir(&self.config.state_dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %self.config.state_dir.display(), "state directory not removed: {e}");
            }
        })
    }
}
