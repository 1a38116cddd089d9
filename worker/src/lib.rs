//! The sandboxed executor: `serve` (the HTTP server running one tool's calls), `sandbox` (the local
//! namespace sandbox wrapping `serve`) and `install` (copying the binary, for init containers).
//! See `docs/worker.md` and `docs/worker-protocol.md`.

pub mod credentials;
pub mod egress;
pub mod output;
pub mod process;
pub mod protocol;
pub mod quiet_unix;
pub mod redact;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod spec;
pub mod supervise;
pub mod template;

mod args;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use args::Args;

const USAGE: &str = "usage:
  toolwarden-worker serve --listen HOST:PORT|unix:/path --token-sha256 HEX --work-dir DIR [--max-concurrent N] [--max-processes N]
                          [--no-call-log]
  toolwarden-worker sandbox [--network none|proxy|host] [--tmpfs-size BYTES] [--max-processes N] [--memory-bytes N]
                            [--ro-bind PATH]... [--rw-bind PATH]... [--unsafe-no-sandbox] -- serve ...
  toolwarden-worker install DEST
  toolwarden-worker supervise --status-fd N [--cpu-seconds S] [--file-bytes N] [--memory-bytes N] [--processes N] -- PROGRAM ...
                              (started by serve for each call; not for direct use)
The tool spec is read from the environment variable TOOLWARDEN_TOOL_SPEC.";

/// Default for `--max-concurrent`.
pub const DEFAULT_MAX_CONCURRENT: usize = 4;

/// Entry point shared by the `toolwarden-worker` binary and `toolwarden worker ...`; `args` excludes the
/// program name. Must run before any thread is started (the sandbox forks and changes namespaces).
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let command = args.first().and_then(|a| a.to_str()).unwrap_or("").to_string();
    let rest = args.get(1..).unwrap_or_default().to_vec();
    let prefix = reexec_prefix(&args);
    process::set_self_args(prefix.get(1..).unwrap_or_default().to_vec());
    match command.as_str() {
        "serve" => serve_main(rest),
        "supervise" => supervise::main(rest),
        "sandbox" => sandbox::main(rest, prefix),
        "install" => install_main(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        "" => usage_error("missing subcommand"),
        other => usage_error(&format!("unknown subcommand `{other}`")),
    }
}

pub(crate) fn usage_error(message: &str) -> ExitCode {
    eprintln!("toolwarden-worker: {message}\n{USAGE}");
    ExitCode::from(2)
}

/// The arguments before ours in this process's argv (`toolwarden-worker`, or `toolwarden worker`), so the
/// sandbox can start `serve` the way it was itself started.
fn reexec_prefix(ours: &[OsString]) -> Vec<OsString> {
    let full: Vec<OsString> = std::env::args_os().collect();
    if full.len() > ours.len() && full.ends_with(ours) {
        full[..full.len() - ours.len()].to_vec()
    } else {
        full.into_iter().take(1).collect()
    }
}

struct ServeOptions {
    listen: server::Listen,
    token_sha256: [u8; 32],
    work_dir: PathBuf,
    max_concurrent: usize,
    max_processes: Option<u64>,
    /// Write a line to stderr for every call that ends (failures are always written).
    log_calls: bool,
}

fn parse_serve(rest: Vec<OsString>) -> Result<ServeOptions, String> {
    let mut a = Args::new(rest)?;
    let listen = a.required("--listen")?;
    let token = a.required("--token-sha256")?;
    let work_dir = PathBuf::from(a.required("--work-dir")?);
    let max_concurrent = a.number("--max-concurrent")?.map_or(DEFAULT_MAX_CONCURRENT, |n| n as usize);
    let max_processes = a.number("--max-processes")?;
    let log_calls = !a.switch("--no-call-log");
    a.finish()?;
    if max_concurrent == 0 {
        return Err("--max-concurrent must be at least 1".into());
    }
    Ok(ServeOptions { listen: server::Listen::parse(&listen), token_sha256: parse_hash(&token)?, work_dir, max_concurrent, max_processes, log_calls })
}

fn parse_hash(hex: &str) -> Result<[u8; 32], String> {
    let bad = || "--token-sha256 must be 64 hex digits (the SHA-256 of the worker token)".to_string();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn serve_main(rest: Vec<OsString>) -> ExitCode {
    let options = match parse_serve(rest) {
        Ok(o) => o,
        Err(m) => return usage_error(&m),
    };
    let spec_json = match std::env::var(protocol::SPEC_ENV) {
        Ok(s) => s,
        Err(_) => {
            eprintln!("toolwarden-worker: the tool spec is missing: set {} to the tool's JSON", protocol::SPEC_ENV);
            return ExitCode::from(2);
        }
    };
    let spec = match spec::ToolSpec::parse(&spec_json) {
        Ok(s) => s,
        Err(m) => {
            eprintln!("toolwarden-worker: {m}");
            return ExitCode::from(2);
        }
    };
    let session_dir = match make_session_dir(&options.work_dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("toolwarden-worker: cannot create a session directory under {}: {e}", options.work_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let code = run_server(options, spec, &session_dir);
    remove_tree(&session_dir);
    code
}

fn run_server(options: ServeOptions, spec: spec::ToolSpec, session_dir: &Path) -> ExitCode {
    let tool = match runtime::Tool::new(spec, session_dir.to_path_buf(), options.max_processes) {
        Ok(t) => t,
        Err(m) => {
            eprintln!("toolwarden-worker: {m}");
            return ExitCode::from(2);
        }
    };
    // Tools run as the worker's user: without this they could read the worker's memory and environment
    // (credential sources, the spec) through /proc/<pid>/{mem,environ}. Children are dumpable again after exec.
    // SAFETY: prctl(PR_SET_DUMPABLE) only changes this process's flag.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    // glibc reserves 64 MiB of address space per thread arena; under the sandbox's RLIMIT_AS a few blocking
    // threads (DNS lookups) would exhaust it. One arena is plenty for a single-threaded server.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("toolwarden-worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Whatever a tool does to escape its supervisor ends up here, and is swept.
    process::become_subreaper();
    let state = Arc::new(server::State::new(tool, options.token_sha256, options.max_concurrent).log_calls(options.log_calls));
    let served = runtime.block_on(async {
        process::spawn_orphan_sweeper();
        let served = server::serve(state.clone(), &options.listen).await;
        state.tool.shutdown().await;
        served
    });
    process::stop_all();
    drop(runtime);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("toolwarden-worker: cannot listen on {:?}: {e}", options.listen);
            ExitCode::FAILURE
        }
    }
}

/// A fresh private (0700) directory for this worker's calls.
fn make_session_dir(work_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100u32 {
        let dir = work_dir.join(format!("toolwarden-session-{}-{:08x}", std::process::id(), nanos.wrapping_add(attempt)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free directory name"))
}

/// Removes the session directory, first making directories a tool locked (chmod 0) writable again.
fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() {
        return;
    }
    fn unlock(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                unlock(&entry.path());
            }
        }
    }
    unlock(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("toolwarden-worker: cannot remove the session directory {}: {e}", dir.display());
    }
}

fn install_main(rest: Vec<OsString>) -> ExitCode {
    let [dest] = rest.as_slice() else {
        return usage_error("install takes exactly one argument, the destination path");
    };
    match install(Path::new(dest)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("toolwarden-worker: install {}: {e}", Path::new(dest).display());
            ExitCode::FAILURE
        }
    }
}

/// Copies this executable to `dest` (mode 0755), through a temporary file so `dest` is never half-written.
fn install(dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe()?;
    let tmp = dest.with_extension("installing");
    std::fs::copy(&exe, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_must_be_64_hex_digits() {
        assert_eq!(parse_hash(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        assert!(parse_hash("abc").is_err());
        assert!(parse_hash(&"zz".repeat(32)).is_err());
    }
}
