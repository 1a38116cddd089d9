//! `toolwarden-worker supervise`: the per-call supervisor. `serve` never starts a tool program itself: it
//! starts this (its own binary again) with the tool's environment, work dir and stdio, and this starts
//! the program. It is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so every process the call starts —
//! whatever it does to its session or process group, however often it forks — stays its descendant.
//! When the program exits, or `serve` sends SIGTERM (timeout, cancellation, shutdown), it SIGKILLs every
//! descendant and reaps them, then reports and exits. Needs no privilege: it works in a pod as uid 65532
//! with no capabilities just as in the local sandbox.
//!
//! Reports go to `--status-fd`, one line each: `started PID`, `spawn_failed MESSAGE`, then `exit CODE`,
//! `signal N` (how the program ended) or `stopped` (stopped before it ended).

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitCode;

use crate::args::Args;
use crate::process::ChildLimits;

struct Options {
    status_fd: i32,
    limits: ChildLimits,
    argv: Vec<OsString>,
}

fn parse(rest: Vec<OsString>) -> Result<Options, String> {
    let mut a = Args::new(rest)?;
    let status_fd = a.number("--status-fd")?.ok_or("--status-fd is required")?;
    let limits = ChildLimits {
        cpu_seconds: a.number("--cpu-seconds")?,
        file_bytes: a.number("--file-bytes")?,
        memory_bytes: a.number("--memory-bytes")?,
        processes: a.number("--processes")?,
    };
    let argv = std::mem::take(&mut a.rest);
    a.finish()?;
    if argv.is_empty() {
        return Err("supervise needs the program after `--`".into());
    }
    let status_fd = i32::try_from(status_fd).map_err(|_| "--status-fd is not a descriptor".to_string())?;
    Ok(Options { status_fd, limits, argv })
}

/// The arguments `serve` gives this subcommand.
pub fn args(status_fd: i32, limits: &ChildLimits, argv: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec!["supervise".into(), "--status-fd".into(), status_fd.to_string().into()];
    let numbers = [
        ("--cpu-seconds", limits.cpu_seconds),
        ("--file-bytes", limits.file_bytes),
        ("--memory-bytes", limits.memory_bytes),
        ("--processes", limits.processes),
    ];
    for (flag, value) in numbers {
        if let Some(v) = value {
            out.extend([flag.into(), v.to_string().into()]);
        }
    }
    out.push("--".into());
    out.extend(argv.iter().map(OsString::from));
    out
}

/// Signals that end the supervision (SIGTERM from serve) or report a child (SIGCHLD). Blocked, and taken
/// with `sigwaitinfo`, so none can arrive between a check and a wait.
fn watched() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

pub fn main(rest: Vec<OsString>) -> ExitCode {
    let options = match parse(rest) {
        Ok(o) => o,
        Err(m) => return crate::usage_error(&m),
    };
    // SAFETY: the descriptor was handed to us for exactly this; nothing else owns it. Close-on-exec: the
    // program must not hold it (it could write a forged report, or keep it open past our death).
    let mut status = unsafe {
        libc::fcntl(options.status_fd, libc::F_SETFD, libc::FD_CLOEXEC);
        std::fs::File::from_raw_fd(options.status_fd)
    };
    let set = watched();
    // SAFETY: prctl and sigprocmask change only this process's state. Not dumpable, like serve: the tool
    // (the same user) cannot read its memory or descriptors through /proc.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let limits = options.limits;
    let mut command = std::process::Command::new(&options.argv[0]);
    command.args(&options.argv[1..]).process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec (prctl, sigprocmask, setrlimit).
    unsafe {
        command.pre_exec(move || {
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limits.apply()
        });
    }
    let leader = match command.spawn() {
        Ok(child) => child.id() as libc::pid_t,
        Err(e) => {
            let _ = writeln!(status, "spawn_failed {e}");
            return ExitCode::SUCCESS;
        }
    };
    let _ = writeln!(status, "started {leader}");
    release_stdio();
    let ended = supervise(leader, &set);
    kill_descendants(leader);
    let line = match ended {
        Some(s) if s.code().is_some() => format!("exit {}", s.code().unwrap_or(0)),
        Some(s) => format!("signal {}", s.signal().unwrap_or(0)),
        None => "stopped".to_string(),
    };
    let _ = writeln!(status, "{line}");
    ExitCode::SUCCESS
}

/// The program's pipes stay with the program: once every process of the call is gone, serve sees them close.
fn release_stdio() {
    // SAFETY: open/dup2/close on descriptors 0-2 of this process.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        for fd in 0..3 {
            if null >= 0 {
                libc::dup2(null, fd);
            } else {
                libc::close(fd);
            }
        }
        if null > 2 {
            libc::close(null);
        }
    }
}

/// Reaps children until the leader ends (its status) or a stop signal arrives (`None`).
fn supervise(leader: libc::pid_t, set: &libc::sigset_t) -> Option<std::process::ExitStatus> {
    loop {
        // Reap whatever has ended, the leader included.
        loop {
            let mut wstatus = 0;
            // SAFETY: waitpid for any child of this process.
            let pid = unsafe { libc::waitpid(-1, &mut wstatus, libc::WNOHANG) };
            if pid == leader {
                return Some(std::process::ExitStatus::from_raw(wstatus));
            }
            if pid <= 0 {
                break;
            }
        }
        // SAFETY: sigwaitinfo on signals this process has blocked.
        let signal = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if matches!(signal, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
            return None;
        }
    }
}

/// SIGKILLs and reaps every descendant. Orphans of the ones killed are reparented here (the subreaper)
/// before their parent's death is reported, so each round sees them; it repeats until none is left.
/// Without a readable `/proc` only the leader's process group can be found and killed.
fn kill_descendants(leader: libc::pid_t) {
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() } as u32;
    loop {
        // Most calls leave nothing behind: no child at all needs no look through /proc.
        // SAFETY: waitpid for any child without blocking.
        match unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } {
            0 => {}
            rc if rc > 0 => continue,
            _ => return,
        }
        let Some(children) = crate::process::children_of(me) else {
            // SAFETY: kill(2) of the leader's group, then reaping what has ended without waiting.
            unsafe {
                libc::kill(-leader, libc::SIGKILL);
                while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            }
            return;
        };
        for pid in children {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        // SAFETY: waitpid for any child; blocks until one ends (all were just killed), ECHILD when none is left.
        let rc = unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_through_the_parser() {
        let limits = ChildLimits { cpu_seconds: Some(5), file_bytes: None, memory_bytes: Some(1 << 26), processes: Some(32) };
        let argv = vec!["/bin/echo".to_string(), "--not-ours".to_string()];
        let parsed = parse(args(7, &limits, &argv).into_iter().skip(1).collect()).ok().unwrap();
        assert_eq!((parsed.status_fd, parsed.limits), (7, limits));
        assert_eq!(parsed.argv, vec![OsString::from("/bin/echo"), OsString::from("--not-ours")]);
        assert!(parse(vec!["--status-fd".into(), "3".into()]).err().unwrap().contains("program"));
    }
}
