//! What the bench reads about processes from `/proc`: CPU time, memory, the gateway's descendants.

use std::collections::HashMap;
use std::time::Duration;

/// CPU time of a process so far: the sum over its threads of the scheduler's nanosecond count.
pub fn cpu_time(pid: u32) -> Duration {
    let mut nanos = 0u64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    for task in tasks.flatten() {
        // A thread may exit between listing and reading; it no longer counts either way.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            nanos += stat.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(nanos)
}

/// Memory of a process from `/proc/PID/status`, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Resident set (VmRSS): anonymous memory plus the mapped pages of the executable.
    pub rss: u64,
    /// Anonymous resident memory (RssAnon): the heap, stacks, what the process allocated itself.
    pub anon: u64,
    /// Peak resident set (VmHWM).
    pub peak: u64,
}

pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    Memory { rss: field("VmRSS:"), anon: field("RssAnon:"), peak: field("VmHWM:") }
}

/// A process, by pid and start time (clock ticks since boot): a pid reused later is another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Process {
    pub pid: u32,
    pub start: u64,
}

/// (ppid, start time) of a process, from `/proc/PID/stat` (the fields after the command's `)`).
fn parent_and_start(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state(3) ppid(4) ... starttime(22), numbered from 1 in proc(5).
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Every living process with its parent.
fn all_processes() -> Vec<(Process, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| parent_and_start(pid).map(|(ppid, start)| (Process { pid, start }, ppid)))
        .collect()
}

/// Every descendant of `root` (its workers, their sandboxes and the tools in them).
pub fn descendants(root: u32) -> Vec<Process> {
    let mut children: HashMap<u32, Vec<Process>> = HashMap::new();
    for (process, ppid) in all_processes() {
        children.entry(ppid).or_default().push(process);
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            found.push(*child);
            queue.push(child.pid);
        }
    }
    found
}

/// The ones of `processes` still alive (same pid, same start time).
pub fn still_alive(processes: &[Process]) -> Vec<Process> {
    processes.iter().filter(|p| parent_and_start(p.pid).is_some_and(|(_, start)| start == p.start)).copied().collect()
}

/// Proportional set size of the processes together (shared pages split between their users), bytes.
pub fn pss_total(processes: &[Process]) -> u64 {
    processes
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)).ok())
        .filter_map(|text| text.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok()))
        .sum::<u64>()
        * 1024
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` writes them.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
