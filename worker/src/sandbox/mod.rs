//! `toolwarden-worker sandbox [options] -- serve ...`: the local sandbox (no bubblewrap needed).
//!
//! Three processes: this one (stays in the host's namespaces, the gateway's child: forwards SIGTERM,
//! exits with serve's status); an init, PID 1 of new user, mount, PID, IPC, UTS (and network)
//! namespaces, which builds a fresh root (`root.rs`) and reaps; and `serve`, exec'd under no_new_privs,
//! rlimits and a seccomp filter. When init exits, the kernel kills everything left in the sandbox.

mod mounts;
pub mod proxy;
mod root;
pub mod seccomp;

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::args::Args;
use mounts::Failure;

/// Exit code when the kernel refuses unprivileged user namespaces.
pub const EXIT_NAMESPACES_REFUSED: u8 = 3;
/// The user a sandbox runs as when the gateway runs as root: tools never run as root.
pub const NOBODY: u32 = 65534;

const DEFAULT_TMPFS_BYTES: u64 = 256 * 1024 * 1024;
const DEFAULT_MAX_PROCESSES: u64 = 256;
/// Size of the root tmpfs (it holds only mount points, links, `passwd` and `group`).
const ROOT_TMPFS_BYTES: u64 = 1024 * 1024;

#[derive(Debug)]
pub struct Options {
    /// A network namespace of its own (only `lo`): `--network none` and `proxy`.
    pub isolate_network: bool,
    /// `--network proxy`: reaches the tool's declared egress through the sandbox's proxy (`proxy.rs`).
    pub egress_proxy: bool,
    pub tmpfs_bytes: u64,
    pub max_processes: u64,
    pub memory_bytes: Option<u64>,
    /// Host paths (directories or files) shown read-only, and read-write, at their own paths.
    pub ro_bind: Vec<PathBuf>,
    pub rw_bind: Vec<PathBuf>,
    pub unsafe_no_sandbox: bool,
    /// The `serve ...` arguments.
    pub serve: Vec<OsString>,
}

fn parse(rest: Vec<OsString>) -> Result<Options, String> {
    let mut a = Args::new(rest)?;
    let (isolate_network, egress_proxy) = match a.optional("--network")?.as_deref() {
        None | Some("none") => (true, false),
        Some("proxy") => (true, true),
        Some("host") => (false, false),
        Some(other) => return Err(format!("--network must be none, proxy or host, not `{other}`")),
    };
    let tmpfs_bytes = a.number("--tmpfs-size")?.unwrap_or(DEFAULT_TMPFS_BYTES);
    let max_processes = a.number("--max-processes")?.unwrap_or(DEFAULT_MAX_PROCESSES);
    let memory_bytes = a.number("--memory-bytes")?;
    let ro_bind: Vec<PathBuf> = a.all("--ro-bind")?.iter().map(|d| mounts::absolute(d)).collect::<Result<_, _>>()?;
    let rw_bind: Vec<PathBuf> = a.all("--rw-bind")?.iter().map(|d| mounts::absolute(d)).collect::<Result<_, _>>()?;
    let unsafe_no_sandbox = a.switch("--unsafe-no-sandbox");
    let serve = std::mem::take(&mut a.rest);
    a.finish()?;
    if serve.first().is_none_or(|s| s != "serve") {
        return Err("the sandbox runs `serve`: end the options with `-- serve --listen ...`".into());
    }
    if max_processes < 4 {
        return Err("--max-processes must be at least 4 (the sandbox itself needs some)".into());
    }
    if let Some(bad) = ro_bind.iter().chain(&rw_bind).find(|p: &&PathBuf| p.parent().is_none() || p.starts_with("/proc")) {
        return Err(format!("{}: the sandbox cannot bind that path", bad.display()));
    }
    Ok(Options { isolate_network, egress_proxy, tmpfs_bytes, max_processes, memory_bytes, ro_bind, rw_bind, unsafe_no_sandbox, serve })
}

/// The sentence for a kernel that refuses unprivileged user namespaces.
pub fn refused_message(detail: &str) -> String {
    format!(
        "toolwarden-worker sandbox: this kernel refuses unprivileged user namespaces ({detail}), so tool calls cannot be \
         sandboxed. Allow them: `sysctl -w kernel.unprivileged_userns_clone=1` (Debian kernels), raise \
         `sysctl -w user.max_user_namespaces=15000` if it is 0, or on Ubuntu 23.10+ `sysctl -w \
         kernel.apparmor_restrict_unprivileged_userns=0` (or an AppArmor profile granting `userns` to this binary). \
         Or run tools without any sandbox with --unsafe-no-sandbox (they then have all of your user's rights)."
    )
}

pub fn main(rest: Vec<OsString>, prefix: Vec<OsString>) -> ExitCode {
    let options = match parse(rest) {
        Ok(o) => o,
        Err(m) => return crate::usage_error(&m),
    };
    if options.unsafe_no_sandbox {
        eprintln!(
            "toolwarden-worker: WARNING: --unsafe-no-sandbox: tool calls run WITHOUT a sandbox, with this user's files, \
             network and processes in reach. Use only for development on a machine that cannot sandbox."
        );
        return crate::main_with_args(options.serve);
    }
    match run(&options, prefix) {
        Ok(code) => code,
        Err(failure) if failure.refused => {
            eprintln!("{}", refused_message(&failure.message));
            ExitCode::from(EXIT_NAMESPACES_REFUSED)
        }
        Err(failure) => {
            eprintln!("toolwarden-worker sandbox: {}", failure.message);
            ExitCode::FAILURE
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Failure> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors, owned below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Failure { refused: false, message: format!("pipe: {}", std::io::Error::last_os_error()) });
    }
    // SAFETY: fresh descriptors from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Ids inside the sandbox, and the host ids they map to.
#[derive(Clone, Copy)]
struct Ids {
    uid: u32,
    gid: u32,
}

fn ids() -> Ids {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // Run as root, a sandbox would count as root for RLIMIT_NPROC (unlimited) and own root's files.
    if uid == 0 { Ids { uid: NOBODY, gid: NOBODY } } else { Ids { uid, gid } }
}

fn run(options: &Options, prefix: Vec<OsString>) -> Result<ExitCode, Failure> {
    let ids = ids();
    let exe = std::fs::File::open("/proc/self/exe")
        .map_err(|e| Failure { refused: false, message: format!("cannot open its own executable: {e}") })?;
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    if root {
        // No supplementary root groups inside, and the bound read-write directories belong to the sandbox user.
        // SAFETY: setgroups with an empty list.
        unsafe { libc::setgroups(0, std::ptr::null()) };
        for dir in &options.rw_bind {
            chown_tree(dir, ids);
        }
    }
    let (status_read, status_write) = pipe()?;
    let (go_read, go_write) = pipe()?;
    // The proxy's listener comes back from the init over this pair (see proxy.rs).
    let proxy = if options.egress_proxy { Some((egress()?, socket_pair()?)) } else { None };
    let (proxy_egress, proxy_ours, proxy_theirs) = match proxy {
        Some((egress, (ours, theirs))) => (egress, Some(ours), Some(theirs)),
        None => (Vec::new(), None, None),
    };
    let mut flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if options.isolate_network {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: clone without a new stack behaves like fork; this process is single-threaded (the worker's
    // entry point runs before any thread starts), so the child may run Rust code until it execs.
    let pid = unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        let refused = matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSPC | libc::EUSERS | libc::EINVAL));
        return Err(Failure { refused, message: format!("clone: {e}") });
    }
    if pid == 0 {
        drop(status_read);
        drop(go_write);
        drop(proxy_ours);
        init(options, ids, exe, prefix, go_read, status_write, proxy_theirs);
    }
    drop(proxy_theirs);
    let pid = pid as libc::pid_t;
    drop(status_write);
    drop(go_read);
    if let Err(e) = write_maps(pid, ids, root) {
        // SAFETY: kill/waitpid on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(Failure { refused: true, message: format!("writing the user namespace's id maps: {e}") });
    }
    let mut go = std::fs::File::from(go_write);
    let _ = go.write_all(b"g");
    drop(go);
    if let Some(ours) = proxy_ours
        && let Ok(Some(listener)) = proxy::recv_fd(&ours)
    {
        // The proxy's threads must not take the signals this thread forwards.
        with_signals_blocked(|| proxy::serve(listener, proxy_egress));
    }
    // The init reports a failed setup on the status pipe; a clean EOF means serve was exec'd.
    let mut report = Vec::new();
    let _ = std::fs::File::from(status_read).read_to_end(&mut report);
    catch_signals();
    let code = wait_for(pid);
    if let Some((&kind, message)) = report.split_first() {
        return Err(Failure { refused: kind == b'R', message: String::from_utf8_lossy(message).into_owned() });
    }
    Ok(ExitCode::from(code))
}

/// The tool's declared egress, from the spec serve will read.
fn egress() -> Result<Vec<crate::spec::Egress>, Failure> {
    let json = std::env::var(crate::protocol::SPEC_ENV)
        .map_err(|_| Failure { refused: false, message: format!("--network proxy needs the tool spec in {}", crate::protocol::SPEC_ENV) })?;
    crate::spec::ToolSpec::parse(&json).map(|s| s.egress).map_err(|message| Failure { refused: false, message })
}

fn socket_pair() -> Result<(OwnedFd, OwnedFd), Failure> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the array with two new descriptors, owned below.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(Failure { refused: false, message: format!("socketpair: {}", std::io::Error::last_os_error()) });
    }
    // SAFETY: fresh descriptors from socketpair.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Runs `f` (which starts threads) with SIGTERM, SIGINT and SIGHUP blocked, so the threads inherit the mask.
fn with_signals_blocked(f: impl FnOnce()) {
    // SAFETY: sigset operations on our own set; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        f();
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Hands a read-write directory and what it holds (the worker's socket dir, its credential files) to the
/// sandbox user, without following symbolic links.
fn chown_tree(path: &std::path::Path, ids: Ids) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: lchown(2) with a valid path.
    unsafe { libc::lchown(c.as_ptr(), ids.uid, ids.gid) };
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            chown_tree(&entry.path(), ids);
        }
    }
}

fn write_maps(pid: libc::pid_t, ids: Ids, root: bool) -> std::io::Result<()> {
    // SAFETY: getuid/getgid cannot fail.
    let (host_uid, host_gid) = if root { (NOBODY, NOBODY) } else { unsafe { (libc::getuid(), libc::getgid()) } };
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("{} {host_uid} 1\n", ids.uid))?;
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("{} {host_gid} 1\n", ids.gid))?;
    Ok(())
}

/// The signal to pass on (0: none yet).
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember(signal: libc::c_int) {
    PENDING.store(signal, Ordering::SeqCst);
}

/// Catches SIGTERM, SIGINT and SIGHUP (without SA_RESTART, so a blocked waitpid returns) for forwarding.
fn catch_signals() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler (one atomic store).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = remember as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Waits for `pid`, passing on caught signals; returns its exit code (128 + signal when killed).
fn wait_for(pid: libc::pid_t) -> u8 {
    loop {
        let signal = PENDING.swap(0, Ordering::SeqCst);
        if signal != 0 {
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid, signal) };
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return exit_code(status);
        }
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 1;
        }
    }
}

fn exit_code(status: libc::c_int) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        128u8.saturating_add(libc::WTERMSIG(status) as u8)
    } else {
        1
    }
}

/// PID 1 of the sandbox: builds it, starts serve, reaps everything, exits with serve's status.
fn init(options: &Options, ids: Ids, exe: std::fs::File, prefix: Vec<OsString>, go: OwnedFd, status: OwnedFd, proxy: Option<OwnedFd>) -> ! {
    let mut byte = [0u8; 1];
    if std::fs::File::from(go).read(&mut byte).unwrap_or(0) != 1 {
        // The outer process could not map our ids; it has already reported why.
        // SAFETY: leaving the child without running destructors shared with the parent.
        unsafe { libc::_exit(1) };
    }
    let mut status = std::fs::File::from(status);
    if let Err(failure) = build(options, ids).and_then(|()| proxy.map_or(Ok(()), |via| open_proxy(&via))) {
        let kind = if failure.refused { b'R' } else { b'F' };
        let _ = status.write_all(&[kind]);
        let _ = status.write_all(failure.message.as_bytes());
        // SAFETY: as above.
        unsafe { libc::_exit(if failure.refused { EXIT_NAMESPACES_REFUSED as i32 } else { 1 }) };
    }
    // The sandbox dies with the process that started it. Set only now: changing the user (in `build`)
    // clears the parent-death signal.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only changes this process's flag.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    if parent_gone(&status) {
        // SAFETY: as above.
        unsafe { libc::_exit(1) };
    }
    let programs = match seccomp::programs() {
        Ok(p) => p,
        Err(m) => {
            let _ = status.write_all(format!("F{m}").as_bytes());
            // SAFETY: as above.
            unsafe { libc::_exit(1) };
        }
    };
    let mut argv: Vec<CString> = prefix.iter().chain(options.serve.iter()).map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    if argv.is_empty() {
        argv.push(c"toolwarden-worker".into());
    }
    // SAFETY: fork in a single-threaded process.
    let serve = unsafe { libc::fork() };
    if serve == 0 {
        if let Err(m) = seccomp::install(&programs) {
            let _ = status.write_all(format!("F{m}").as_bytes());
            // SAFETY: as above.
            unsafe { libc::_exit(1) };
        }
        let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        pointers.push(std::ptr::null());
        let mut env: Vec<CString> =
            std::env::vars_os().map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).unwrap_or_default()).collect();
        if options.egress_proxy {
            env.push(CString::new(format!("{}={}", proxy::ENV, proxy::url())).unwrap_or_default());
        }
        let mut env_pointers: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_pointers.push(std::ptr::null());
        // SAFETY: fexecve with NUL-terminated arrays of valid C strings; returns only on failure.
        unsafe { libc::fexecve(exe.as_raw_fd(), pointers.as_ptr(), env_pointers.as_ptr()) };
        let _ = status.write_all(format!("Fcannot start serve: {}", std::io::Error::last_os_error()).as_bytes());
        // SAFETY: as above.
        unsafe { libc::_exit(1) };
    }
    drop(status);
    drop(exe);
    catch_signals();
    // Reap every process that ends up here; leave when serve does.
    loop {
        let signal = PENDING.swap(0, Ordering::SeqCst);
        if signal != 0 {
            // SAFETY: signals serve.
            unsafe { libc::kill(serve, signal) };
        }
        let mut wstatus = 0;
        // SAFETY: waitpid for any child of this init.
        let rc = unsafe { libc::waitpid(-1, &mut wstatus, 0) };
        if rc == serve || (rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)) {
            // SAFETY: as above.
            unsafe { libc::_exit(exit_code(wstatus) as i32) };
        }
    }
}

/// Whether the sandbox process died before the parent-death signal was set: it holds the read end of the
/// status pipe until serve runs, so a write end without readers means it is gone. (`getppid` cannot tell:
/// the parent is outside this PID namespace.)
fn parent_gone(status: &std::fs::File) -> bool {
    let mut poll = libc::pollfd { fd: status.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll(2) on one descriptor we own, without waiting.
    unsafe { libc::poll(&mut poll, 1, 0) > 0 && poll.revents & libc::POLLERR != 0 }
}

/// Opens the proxy's listener on the sandbox's loopback and sends it to the sandbox process.
fn open_proxy(via: &OwnedFd) -> Result<(), Failure> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", proxy::PORT))
        .map_err(|e| Failure { refused: false, message: format!("the egress proxy's listener: {e}") })?;
    proxy::send_fd(via, &listener).map_err(|e| Failure { refused: false, message: format!("handing over the egress proxy: {e}") })
}

/// The filesystem, network, hostname and limits.
fn build(options: &Options, ids: Ids) -> Result<(), Failure> {
    mounts::make_private()?;
    // Take every tree the sandbox shows before anything changes (bound ones may lie under /tmp).
    let taken = root::take(options)?;
    // From here on the process acts as the sandbox user (inside ids), keeping its namespace capabilities.
    // SAFETY: setresgid/setresuid to ids mapped in this namespace.
    unsafe {
        if libc::setresgid(ids.gid, ids.gid, ids.gid) != 0 || libc::setresuid(ids.uid, ids.uid, ids.uid) != 0 {
            return Err(Failure { refused: false, message: format!("switching to the sandbox user: {}", std::io::Error::last_os_error()) });
        }
    }
    root::enter(taken, options, ids)?;
    if options.isolate_network {
        mounts::loopback_up()?;
    }
    // SAFETY: sethostname with a valid buffer; chdir to "/".
    unsafe {
        let name = b"toolwarden-sandbox";
        libc::sethostname(name.as_ptr().cast(), name.len());
        libc::chdir(c"/".as_ptr());
    }
    let limit = |resource, value: u64, what: &str| {
        crate::process::set(resource, value, value).map_err(|e| Failure { refused: false, message: format!("{what} limit: {e}") })
    };
    limit(libc::RLIMIT_NPROC, options.max_processes, "process")?;
    limit(libc::RLIMIT_FSIZE, options.tmpfs_bytes, "file size")?;
    limit(libc::RLIMIT_CORE, 0, "core file")?;
    if let Some(memory) = options.memory_bytes {
        limit(libc::RLIMIT_AS, memory, "memory")?;
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS): no setuid binary or file capability can raise privileges.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Failure { refused: false, message: format!("no_new_privs: {}", std::io::Error::last_os_error()) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_need_serve_after_the_separator() {
        assert!(parse(os(&["--network", "none"])).unwrap_err().contains("-- serve"));
        assert!(parse(os(&["--network", "wifi", "--", "serve"])).unwrap_err().contains("wifi"));
        let o = parse(os(&["--network", "host", "--", "serve", "--listen", "x"])).unwrap();
        assert!(!o.isolate_network);
        assert!(parse(os(&["--ro-bind", "/", "--", "serve"])).unwrap_err().contains("cannot bind"));
        assert_eq!(o.serve, os(&["serve", "--listen", "x"]));
        assert!(parse(os(&["--ro-bind", "/does/not/exist", "--", "serve"])).unwrap_err().contains("/does/not/exist"));
    }

    #[test]
    fn the_refusal_names_the_settings_and_the_opt_out() {
        let m = refused_message("clone: Operation not permitted");
        assert!(m.contains("kernel.unprivileged_userns_clone") && m.contains("user.max_user_namespaces"));
        assert!(m.contains("kernel.apparmor_restrict_unprivileged_userns") && m.contains("--unsafe-no-sandbox"));
    }
}
