//! Finding a test's processes by a marker in their command line (shared with the root package's tests).

/// Processes (not zombies) whose command line contains `marker`.
pub fn live_processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, s)| s.chars().next().unwrap_or('?')).unwrap_or('?');
        if String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(marker) && state != 'Z' && state != 'X' {
            found.push(pid);
        }
    }
    found
}
