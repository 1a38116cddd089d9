//! Starting tool processes: clean environment, the session's work dir, their own process group, rlimits,
//! and death with the worker.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

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

/// A command for a tool program: argv as given (no shell), a clean environment (`PATH`, `HOME` and
/// `TMPDIR` pointing at the session dir, the tool's static `env`, then `extra_env`), the session dir as
/// working directory, a new process group, the limits, and SIGKILL when the worker dies.
pub fn command(argv: &[String], env: &BTreeMap<String, String>, work_dir: &Path, limits: ChildLimits) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env_clear();
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()));
    cmd.env("HOME", work_dir).env("TMPDIR", work_dir).env("LANG", "C.UTF-8");
    cmd.envs(env);
    cmd.current_dir(work_dir);
    cmd.process_group(0);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, getrlimit, setrlimit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limits.apply()
        });
    }
    cmd
}

/// SIGKILLs the whole process group led by `child` (the call and everything it forked).
pub fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        kill_group_id(pid);
    }
}

pub fn kill_group_id(pid: u32) {
    // 0 would mean "my own group": never signal the worker itself.
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
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

/// Process groups of calls still running, so a stopping worker can take them all down.
static GROUPS: std::sync::Mutex<std::collections::BTreeSet<u32>> = std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Keeps a call's process group in the registry while it runs, and takes the group down when it goes:
/// a call whose future is dropped (the gateway hung up or cancelled it) leaves nothing running.
pub struct GroupGuard(u32);

impl GroupGuard {
    pub fn new(pid: u32) -> GroupGuard {
        GROUPS.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
        GroupGuard(pid)
    }

    /// Kills the group now (the call is over) and forgets it.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // Still registered means the group may still run: only this guard removes it.
        if GROUPS.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0) {
            kill_group_id(self.0);
        }
    }
}

/// SIGKILLs every registered process group (worker shutdown).
pub fn kill_all_groups() {
    for pid in GROUPS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        kill_group_id(*pid);
    }
}
