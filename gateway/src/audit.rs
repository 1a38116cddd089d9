//! The audit log: one JSON line per decision (before acting) and per result, to stdout and optionally a
//! file. The record type and argument sanitising live in core (`toolwarden_core::audit`).

use std::fs::{File, OpenOptions};
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use toolwarden_core::audit::AuditRecord;

/// How long a result line may wait to share one write with the next decision line. Each write to a
/// pipe wakes its reader (the container runtime's log collector), so this halves the writes of a busy
/// gateway; decision lines are never delayed.
pub const RESULT_DELAY: Duration = Duration::from_millis(20);
/// Result lines waiting beyond this many bytes are written at once.
const MAX_PENDING: usize = 64 * 1024;

pub struct AuditLog {
    sinks: Mutex<Sinks>,
    /// Told when result lines start waiting, so [`AuditLog::flush_waiting`] writes them in time.
    waiting: tokio::sync::Notify,
}

struct Sinks {
    file: Option<File>,
    stdout: bool,
    /// Result lines not written yet, in order.
    pending: Vec<u8>,
    /// When the oldest of them was queued.
    oldest: Option<tokio::time::Instant>,
}

impl Sinks {
    /// Writes what is pending to every sink, one write each. A failing file write is logged, never fatal
    /// to the call: the stdout copy (collected by the cluster's log pipeline) still holds it.
    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&self.pending);
            let _ = out.flush();
        }
        if let Some(file) = &mut self.file
            && let Err(e) = file.write_all(&self.pending)
        {
            tracing::error!(error = %e, "cannot write the audit log file");
        }
        self.pending.clear();
        self.oldest = None;
    }
}

impl AuditLog {
    /// Appends to `path` when given (created with mode 0600: arguments may still be sensitive).
    pub fn open(path: Option<&Path>, stdout: bool) -> anyhow::Result<AuditLog> {
        let file = match path {
            Some(path) => {
                let mut options = OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                Some(options.open(path).with_context(|| format!("cannot open audit log {}", path.display()))?)
            }
            None => None,
        };
        Ok(AuditLog { sinks: Mutex::new(Sinks { file, stdout, pending: Vec::new(), oldest: None }), waiting: tokio::sync::Notify::new() })
    }

    /// Writes a decision line now, after any result lines still waiting: the call acts only after this.
    pub fn write(&self, record: &AuditRecord) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        push_line(&mut sinks.pending, record);
        sinks.write_pending();
    }

    /// Queues a result line: it is written with the next decision line, or within [`RESULT_DELAY`] by
    /// [`AuditLog::flush_waiting`], or by [`AuditLog::flush`].
    pub fn write_result(&self, record: &AuditRecord) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        let first = sinks.pending.is_empty();
        push_line(&mut sinks.pending, record);
        if sinks.pending.len() > MAX_PENDING {
            sinks.write_pending();
        } else if first {
            sinks.oldest = Some(tokio::time::Instant::now());
            self.waiting.notify_one();
        }
    }

    /// Writes every waiting line now (shutdown, tests).
    pub fn flush(&self) {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner()).write_pending();
    }

    /// Runs until dropped: writes result lines that waited [`RESULT_DELAY`] without a decision line to
    /// carry them. Lines a decision line carried meanwhile restart the wait from the next waiting line,
    /// so a busy gateway makes no extra writes for it. Idle gateways do not wake for it.
    pub async fn flush_waiting(&self) {
        loop {
            self.waiting.notified().await;
            loop {
                let oldest = self.sinks.lock().unwrap_or_else(|e| e.into_inner()).oldest;
                let Some(due) = oldest.map(|queued| queued + RESULT_DELAY) else { break };
                if due <= tokio::time::Instant::now() {
                    self.flush();
                    break;
                }
                tokio::time::sleep_until(due).await;
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Serialises `record` straight into the buffer (it keeps its capacity between writes): no string per line.
fn push_line(buffer: &mut Vec<u8>, record: &AuditRecord) {
    let start = buffer.len();
    match serde_json::to_writer(&mut *buffer, record) {
        Ok(()) => buffer.push(b'\n'),
        Err(e) => {
            // Unreachable with serde_json's own values; never half a line.
            buffer.truncate(start);
            tracing::error!(error = %e, call_id = %record.call_id, "cannot serialise an audit record");
        }
    }
}

/// Now, in RFC 3339 with milliseconds, UTC.
pub fn timestamp() -> String {
    thread_local! {
        /// The last second formatted, and its text up to the fraction: every audit line needs a
        /// timestamp, and only the milliseconds change from one call to the next.
        static SECOND: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    SECOND.with_borrow_mut(|cache| format_millis(jiff::Timestamp::now(), cache))
}

/// `time` as `format!("{time:.3}")` writes it, reusing `cache` (a second and its text without the
/// fraction) when `time` falls in the same second.
fn format_millis(time: jiff::Timestamp, cache: &mut (i64, String)) -> String {
    let millis = time.as_millisecond();
    let (second, fraction) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    if cache.0 != second || cache.1.is_empty() {
        let Ok(whole) = jiff::Timestamp::from_second(second) else { return format!("{time:.3}") };
        let mut text = format!("{whole:.0}");
        text.pop(); // the `Z`
        *cache = (second, text);
    }
    let mut out = String::with_capacity(cache.1.len() + 5);
    out.push_str(&cache.1);
    let _ = write!(out, ".{fraction:03}Z");
    out
}

pub fn rfc3339(time: std::time::SystemTime) -> String {
    match jiff::Timestamp::try_from(time) {
        Ok(t) => format!("{t:.3}"),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toolwarden_core::audit::AuditEvent;

    fn record(call: &str, event: AuditEvent) -> AuditRecord {
        AuditRecord { call_id: call.into(), event: Some(event), ..AuditRecord::default() }
    }

    fn lines(path: &Path) -> Vec<(String, Option<AuditEvent>)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap())
            .map(|r| (r.call_id, r.event))
            .collect()
    }

    #[test]
    fn timestamps_match_rfc3339_with_milliseconds_whatever_the_cache_holds() {
        let mut cache = (i64::MIN, String::new());
        for millis in [1_764_000_000_000_i64, 1_764_000_000_001, 1_764_000_000_999, 1_764_000_001_000, 1_764_000_000_500, 0, -1, 86_399_999] {
            let time = jiff::Timestamp::from_millisecond(millis).unwrap();
            assert_eq!(format_millis(time, &mut cache), format!("{time:.3}"), "{millis} ms");
        }
        assert_eq!(timestamp().len(), "2026-11-25T13:29:50.123Z".len());
    }

    #[test]
    fn decisions_are_written_at_once_and_results_ride_along_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(Some(&path), false).unwrap();
        log.write(&record("c1", AuditEvent::Decision));
        assert_eq!(lines(&path), [("c1".into(), Some(AuditEvent::Decision))], "a decision is on disk before the call acts");
        log.write_result(&record("c1", AuditEvent::Result));
        assert_eq!(lines(&path).len(), 1, "the result waits for company");
        log.write(&record("c2", AuditEvent::Decision));
        let expected = [("c1", AuditEvent::Decision), ("c1", AuditEvent::Result), ("c2", AuditEvent::Decision)];
        assert_eq!(lines(&path), expected.map(|(c, e)| (c.to_owned(), Some(e))));
        log.write_result(&record("c2", AuditEvent::Result));
        drop(log);
        assert_eq!(lines(&path).len(), 4, "nothing is lost when the log closes");
    }

    /// A log writing to a file in a new directory (kept alive by the first value), with its flusher running.
    fn log_with_flusher() -> (tempfile::TempDir, std::path::PathBuf, std::sync::Arc<AuditLog>, tokio::task::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = std::sync::Arc::new(AuditLog::open(Some(&path), false).unwrap());
        let flusher = tokio::spawn({
            let log = log.clone();
            async move { log.flush_waiting().await }
        });
        (dir, path, log, flusher)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_result_is_written_within_the_delay() {
        let (_dir, path, log, flusher) = log_with_flusher();
        log.write(&record("c1", AuditEvent::Decision));
        log.write_result(&record("c1", AuditEvent::Result));
        tokio::time::sleep(RESULT_DELAY / 2).await;
        assert_eq!(lines(&path).len(), 1);
        tokio::time::sleep(RESULT_DELAY).await;
        assert_eq!(lines(&path).len(), 2, "written by the flusher");
        flusher.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn results_that_a_decision_carried_do_not_make_the_flusher_write_early() {
        let (_dir, path, log, flusher) = log_with_flusher();
        log.write(&record("c1", AuditEvent::Decision));
        log.write_result(&record("c1", AuditEvent::Result));
        tokio::time::sleep(RESULT_DELAY * 3 / 4).await;
        // A busy gateway: the next call's decision carries c1's result, and c2's result waits.
        log.write(&record("c2", AuditEvent::Decision));
        log.write_result(&record("c2", AuditEvent::Result));
        tokio::time::sleep(RESULT_DELAY / 2).await;
        assert_eq!(lines(&path).len(), 3, "c2's result has waited less than the delay: it still waits");
        tokio::time::sleep(RESULT_DELAY).await;
        assert_eq!(lines(&path).len(), 4, "and is written once it has waited the delay");
        flusher.abort();
    }

    #[test]
    fn many_waiting_results_are_written_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(Some(&path), false).unwrap();
        let mut count = 0;
        while lines(&path).is_empty() {
            log.write_result(&AuditRecord { message: Some("x".repeat(1000)), ..record("c", AuditEvent::Result) });
            count += 1;
            assert!(count < 100, "a full buffer is written");
        }
        drop(log);
    }
}
