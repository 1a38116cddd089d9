//! The audit log: one JSON line per decision (before acting) and per result, to stdout and optionally a
//! file. The record type and argument sanitising live in core (`toolwarden_core::audit`).
//!
//! The lines of one process form a hash chain (`toolwarden_core::audit::chain`): each line is sealed with
//! its chain id, seq and the previous line's hash under the same lock that queues it, so the chain follows
//! the order the lines are written in, whichever task writes them. Stdout and the file get the same bytes.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::metrics::gauge::Gauge;
use toolwarden_core::audit::chain::{ChainStart, ChainWriter};
use toolwarden_core::audit::{AuditEvent, AuditRecord};

#[path = "audit_file.rs"]
mod file;
use file::FileSink;

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
    /// The seq of the last line sealed (`toolwarden_audit_chain_seq`): Prometheus keeps each chain's
    /// progress outside the log.
    seq: Gauge,
    chain_id: String,
}

struct Sinks {
    file: Option<FileSink>,
    stdout: bool,
    /// Result lines not written yet, in order.
    pending: Vec<u8>,
    /// When the oldest of them was queued.
    oldest: Option<tokio::time::Instant>,
    chain: ChainWriter,
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
            && let Err(e) = file.write(&self.pending)
        {
            tracing::error!(error = %e, "cannot write the audit log file");
        }
        self.pending.clear();
        self.oldest = None;
    }
}

impl AuditLog {
    /// Appends to `path` when given (created with mode 0600: arguments may still be sensitive), and
    /// begins a new chain with its start record, naming `gateway` and this process. When the file's last
    /// line belongs to a chain, the start record names it (`continues`); a last line cut short by a
    /// crash is ended with a newline first, so that the new chain starts on a line of its own.
    pub fn open(path: Option<&Path>, stdout: bool, gateway: &str) -> anyhow::Result<AuditLog> {
        AuditLog::open_rotating(path, None, stdout, gateway)
    }

    /// [`AuditLog::open`], rotating the file when it reaches `max_file_bytes` (see `audit_file.rs`).
    /// Calls a previous process left open in the file (a decision line that let them run, no result
    /// line: it was killed) get an `interrupted` result line in the new chain.
    pub fn open_rotating(path: Option<&Path>, max_file_bytes: Option<u64>, stdout: bool, gateway: &str) -> anyhow::Result<AuditLog> {
        let (file, continues, left_open) = match path {
            Some(path) => {
                let (file, continues) = FileSink::open(path, max_file_bytes).with_context(|| format!("cannot open audit log {}", path.display()))?;
                let left_open = file::open_calls(&[file::rotated(path), path.to_owned()])
                    .with_context(|| format!("cannot read audit log {} for calls left open", path.display()))?;
                (Some(file), continues, left_open)
            }
            None => (None, None, Vec::new()),
        };
        let chain = ChainWriter::new(&crate::approvals::random_hex(8))?;
        let chain_id = chain.id().to_owned();
        let log = AuditLog {
            sinks: Mutex::new(Sinks { file, stdout, pending: Vec::new(), oldest: None, chain }),
            waiting: tokio::sync::Notify::new(),
            seq: Gauge::default(),
            chain_id,
        };
        let start = ChainStart { gateway: gateway.to_owned(), pid: std::process::id(), version: env!("CARGO_PKG_VERSION").to_owned(), continues };
        log.write(&AuditRecord::chain_start(timestamp(), start));
        tracing::info!(chain = %log.chain_id, "audit chain started");
        if !left_open.is_empty() {
            tracing::warn!(calls = left_open.len(), "a previous gateway process stopped with calls running; their result lines say interrupted");
        }
        for call in left_open {
            let message = format!(
                "the gateway process that ran this call (audit chain {}) stopped before it wrote the call's result line; whether the tool finished is unknown",
                call.chain
            );
            log.write(&interrupted(&call.decision, message));
        }
        Ok(log)
    }

    /// This process's chain id.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Registers `toolwarden_audit_chain_seq{chain}`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.sub_registry_with_label(("chain".into(), self.chain_id.clone().into())).register(
            "toolwarden_audit_chain_seq",
            "Sequence number of the last audit line this gateway process wrote, by audit chain",
            self.seq.clone(),
        );
    }

    /// Writes a decision line now, after any result lines still waiting: the call acts only after this.
    pub fn write(&self, record: &AuditRecord) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.push_line(record, &self.seq);
        sinks.write_pending();
    }

    /// Queues a result line: it is written with the next decision line, or within [`RESULT_DELAY`] by
    /// [`AuditLog::flush_waiting`], or by [`AuditLog::flush`].
    pub fn write_result(&self, record: &AuditRecord) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        let first = sinks.pending.is_empty();
        sinks.push_line(record, &self.seq);
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

impl Sinks {
    /// Serialises `record` straight into the pending buffer (it keeps its capacity between writes: no
    /// string per line) and seals it as the chain's next line.
    fn push_line(&mut self, record: &AuditRecord, seq: &Gauge) {
        let start = self.pending.len();
        match serde_json::to_writer(&mut self.pending, record) {
            Ok(()) => {
                self.chain.seal(&mut self.pending, start);
                if let Some((last, _)) = self.chain.head() {
                    seq.set(i64::try_from(last).unwrap_or(i64::MAX));
                }
            }
            Err(e) => {
                // Unreachable with serde_json's own values; never half a line, and no seq spent.
                self.pending.truncate(start);
                tracing::error!(error = %e, call_id = %record.call_id, "cannot serialise an audit record");
            }
        }
    }
}

/// The result line of a call that was started (`decision` let it run) and never ended normally.
pub fn interrupted(decision: &AuditRecord, message: String) -> AuditRecord {
    AuditRecord {
        timestamp: timestamp(),
        event: Some(AuditEvent::Result),
        status: Some(crate::call::INTERRUPTED.to_owned()),
        code: Some(crate::call::INTERRUPTED.to_owned()),
        message: Some(message),
        duration_ms: None,
        output_bytes: None,
        truncated: None,
        redacted: None,
        chain_start: None,
        ..decision.clone()
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
    use toolwarden_core::audit::verify::{Break, BreakKind, Summary, Verifier, VerifyOptions};

    fn record(call: &str, event: AuditEvent) -> AuditRecord {
        AuditRecord { call_id: call.into(), event: Some(event), ..AuditRecord::default() }
    }

    /// The lines after the chain's start record.
    fn lines(path: &Path) -> Vec<(String, Option<AuditEvent>)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap())
            .filter(|r| r.event != Some(AuditEvent::ChainStart))
            .map(|r| (r.call_id, r.event))
            .collect()
    }

    fn verify(path: &Path, options: VerifyOptions) -> Result<Summary, Break> {
        let mut verifier = Verifier::new(options);
        verifier.feed_text("audit.jsonl", &std::fs::read(path).unwrap());
        verifier.finish()
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
        let log = AuditLog::open(Some(&path), false, "test").unwrap();
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
        let log = std::sync::Arc::new(AuditLog::open(Some(&path), false, "test").unwrap());
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
        let log = AuditLog::open(Some(&path), false, "test").unwrap();
        let mut count = 0;
        while lines(&path).is_empty() {
            log.write_result(&AuditRecord { message: Some("x".repeat(1000)), ..record("c", AuditEvent::Result) });
            count += 1;
            assert!(count < 100, "a full buffer is written");
        }
        drop(log);
    }

    #[test]
    fn lines_written_from_many_threads_form_one_chain_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = std::sync::Arc::new(AuditLog::open(Some(&path), false, "gw-1").unwrap());
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let call = format!("t{t}-{i}");
                        log.write(&record(&call, AuditEvent::Decision));
                        log.write_result(&record(&call, AuditEvent::Result));
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        log.flush();
        assert_eq!(log.seq.get(), 3200, "the gauge holds the last seq written");
        let text = std::fs::read_to_string(&path).unwrap();
        let seqs: Vec<u64> = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (0..=3200).collect::<Vec<u64>>(), "seqs follow the file order");
        let summary = verify(&path, VerifyOptions::default()).unwrap();
        let [chain] = &summary.chains[..] else { panic!("{summary:?}") };
        assert_eq!((chain.id.as_str(), chain.lines), (log.chain_id(), 3201));
        let started = chain.started.as_ref().unwrap();
        assert_eq!((started.gateway.as_str(), started.pid), ("gw-1", std::process::id()));
    }

    #[test]
    fn a_reopened_file_continues_from_the_previous_chains_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let first = AuditLog::open(Some(&path), false, "test").unwrap();
        let first_id = first.chain_id().to_owned();
        first.write(&record("c1", AuditEvent::Decision));
        first.write(&record("c2", AuditEvent::Decision));
        drop(first);
        let second = AuditLog::open(Some(&path), false, "test").unwrap();
        assert_ne!(second.chain_id(), first_id, "a new process, a new chain");
        second.write(&record("c3", AuditEvent::Decision));
        drop(second);

        let summary = verify(&path, VerifyOptions::default()).unwrap();
        assert_eq!(summary.chains.len(), 2);
        assert_eq!(summary.chains[1].notes, [format!("continues chain {first_id} at seq 2: checked")]);

        // The first process's last line removed: the second chain's start record still names it.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let found = verify(&path, VerifyOptions::default()).unwrap_err();
        assert_eq!((found.kind, found.line, found.chain.clone()), (BreakKind::Removed, 2, Some(first_id)), "{found}");
    }

    #[test]
    fn a_line_cut_short_by_a_crash_stays_visible_and_the_next_chain_starts_on_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let first = AuditLog::open(Some(&path), false, "test").unwrap();
        let first_chain = first.chain_id().to_owned();
        first.write(&record("c1", AuditEvent::Decision));
        first.write(&record("c2", AuditEvent::Decision));
        drop(first);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 40]).unwrap();
        let second = AuditLog::open(Some(&path), false, "test").unwrap();
        second.write(&record("c3", AuditEvent::Decision));
        drop(second);

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        let start: AuditRecord = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(start.event, Some(AuditEvent::ChainStart));
        assert_eq!(start.chain_start.unwrap().continues, None, "nothing to link to");
        // c1's decision line is whole and has no result: the first process died with it running.
        let closed: AuditRecord = serde_json::from_str(lines[4]).unwrap();
        assert_eq!((closed.call_id.as_str(), closed.event, closed.status.as_deref()), ("c1", Some(AuditEvent::Result), Some("interrupted")));
        assert!(closed.message.unwrap().contains(&format!("audit chain {first_chain}")));
        let found = verify(&path, VerifyOptions::default()).unwrap_err();
        assert_eq!((found.kind, found.line), (BreakKind::Garbled, 3), "{found}");
        assert!(found.detail.contains("EOF while parsing"), "{found}");
    }
}
