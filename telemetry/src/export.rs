//! The bounded export queue: finished traces wait here for one thread of their own that sends them to the
//! collector in batches. A call never waits for it: handing over a trace is one counter check and one
//! channel send, and when the queue already holds its limit of spans the new ones are dropped and
//! counted (`toolwarden_trace_spans_dropped_total{reason="queue_full"}`). A collector that is down or
//! slow only makes this thread's exports fail or wait (each bounded by its timeout); their spans are
//! counted as dropped too (`reason="export_failed"`).

use std::sync::{Arc, Condvar, Mutex};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::Settings;
use crate::otlp::{Encoder, Finished, Sender};

/// Counts of spans exported and dropped; register them with [`SpanCounters::register`]. Cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct SpanCounters {
    pub exported: Counter,
    pub dropped: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl SpanCounters {
    /// Registers `toolwarden_trace_spans_exported_total` and `toolwarden_trace_spans_dropped_total{reason}`
    /// (both zero while tracing is off).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("toolwarden_trace_spans_exported", "Spans the OTLP collector accepted", self.exported.clone());
        registry.register(
            "toolwarden_trace_spans_dropped",
            "Spans given up by reason: queue_full (the export queue was at its limit), export_failed (the collector refused, failed or timed out)",
            self.dropped.clone(),
        );
        // Both reasons exist from the start, so a rate over them is defined before the first drop.
        for reason in [QUEUE_FULL, EXPORT_FAILED] {
            let _ = self.dropped.get_or_create(&vec![("reason", reason)]);
        }
    }

    fn drop_spans(&self, reason: &'static str, count: usize) {
        self.dropped.get_or_create(&vec![("reason", reason)]).inc_by(count as u64);
    }
}

const QUEUE_FULL: &str = "queue_full";
const EXPORT_FAILED: &str = "export_failed";
/// Failures are logged at most this often (with the count since the last line), not once per batch.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the calls and the export thread share.
struct Shared {
    state: Mutex<Waiting>,
    /// Told when the thread has something to do: a first span to time, a full batch, a flush, the end.
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    spans: Vec<Finished>,
    /// When the oldest waiting span arrived.
    since: Option<Instant>,
    /// Flushes asked for: each is answered once everything waiting before it was exported.
    flushes: Vec<mpsc::SyncSender<()>>,
    closed: bool,
}

pub(crate) struct ExportQueue {
    shared: Arc<Shared>,
    /// Spans handed over and not yet exported or dropped, the batch being sent included.
    queued: Arc<AtomicUsize>,
    limit: usize,
    batch_size: usize,
    counters: SpanCounters,
}

impl ExportQueue {
    /// Starts the export thread. `endpoint` names the collector in log lines.
    pub(crate) fn start(
        encoder: Encoder,
        sender: Sender,
        settings: &Settings,
        counters: SpanCounters,
        endpoint: String,
    ) -> std::io::Result<ExportQueue> {
        let shared = Arc::new(Shared { state: Mutex::default(), wake: Condvar::new() });
        let queued = Arc::new(AtomicUsize::new(0));
        let exporting = Exporting {
            encoder,
            sender,
            shared: shared.clone(),
            queued: queued.clone(),
            counters: counters.clone(),
            batch_size: settings.max_export_batch_size,
            delay: settings.schedule_delay,
            timeout: settings.export_timeout,
            endpoint,
            failures: Failures::default(),
        };
        std::thread::Builder::new().name("otlp-export".into()).spawn(move || exporting.run())?;
        Ok(ExportQueue { shared, queued, limit: settings.max_queue_size, batch_size: settings.max_export_batch_size, counters })
    }

    /// Hands `spans` over for export, or drops (and counts) them when the queue is at its limit. The
    /// export thread is woken only for the first span of a batch (to time it) and for a full batch:
    /// waking it for every call would cost each call two context switches.
    pub(crate) fn push(&self, spans: Vec<Finished>) {
        let count = spans.len();
        if count == 0 {
            return;
        }
        let before = self.queued.fetch_add(count, Ordering::Relaxed);
        if before + count > self.limit {
            self.queued.fetch_sub(count, Ordering::Relaxed);
            self.counters.drop_spans(QUEUE_FULL, count);
            return;
        }
        let wake = {
            let mut waiting = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let first = waiting.spans.is_empty();
            if first {
                waiting.since = Some(Instant::now());
            }
            let full_before = waiting.spans.len() >= self.batch_size;
            waiting.spans.extend(spans);
            first || (!full_before && waiting.spans.len() >= self.batch_size)
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Exports what is queued, waiting at most `limit`; whether it finished in time.
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        let (done, finished) = mpsc::sync_channel(1);
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).flushes.push(done);
        self.shared.wake.notify_one();
        finished.recv_timeout(limit).is_ok()
    }
}

impl Drop for ExportQueue {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.shared.wake.notify_one();
    }
}

#[derive(Default)]
struct Failures {
    since_last_line: usize,
    last_line: Option<Instant>,
}

/// The export thread's state.
struct Exporting {
    encoder: Encoder,
    sender: Sender,
    shared: Arc<Shared>,
    queued: Arc<AtomicUsize>,
    counters: SpanCounters,
    batch_size: usize,
    delay: Duration,
    timeout: Duration,
    endpoint: String,
    failures: Failures,
}

impl Exporting {
    fn run(mut self) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => Some(runtime),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the trace export thread's runtime; spans are dropped");
                None
            }
        };
        loop {
            let (batch, flushes, closed) = self.next_batch();
            match &runtime {
                Some(runtime) => {
                    let mut batch = batch;
                    while !batch.is_empty() {
                        let rest = batch.split_off(batch.len().min(self.batch_size));
                        let this = std::mem::replace(&mut batch, rest);
                        self.export(runtime, this);
                    }
                }
                None => {
                    self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                    self.counters.drop_spans(EXPORT_FAILED, batch.len());
                }
            }
            for done in flushes {
                let _ = done.send(());
            }
            if closed {
                return;
            }
        }
    }

    /// Waits for work: a full batch, the oldest span's delay over, a flush or the end. Returns the spans
    /// to send now (one batch, or everything for a flush or the end) and the flushes to answer after.
    fn next_batch(&self) -> (Vec<Finished>, Vec<mpsc::SyncSender<()>>, bool) {
        let mut waiting = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !waiting.flushes.is_empty() || waiting.closed {
                waiting.since = None;
                let flushes = std::mem::take(&mut waiting.flushes);
                return (std::mem::take(&mut waiting.spans), flushes, waiting.closed);
            }
            let due = waiting.since.map(|since| since + self.delay);
            if waiting.spans.len() >= self.batch_size || due.is_some_and(|due| due <= Instant::now()) {
                let spans = &mut waiting.spans;
                let rest = spans.split_off(spans.len().min(self.batch_size));
                let batch = std::mem::replace(spans, rest);
                // What stays waits a full delay from now: it arrived after the batch began.
                waiting.since = (!waiting.spans.is_empty()).then(Instant::now);
                return (batch, Vec::new(), false);
            }
            waiting = match due {
                None => self.shared.wake.wait(waiting).unwrap_or_else(|e| e.into_inner()),
                Some(due) => {
                    let left = due.saturating_duration_since(Instant::now());
                    self.shared.wake.wait_timeout(waiting, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }

    fn export(&mut self, runtime: &tokio::runtime::Runtime, batch: Vec<Finished>) {
        let count = batch.len();
        let body = self.encoder.encode(&batch);
        drop(batch);
        let outcome = runtime.block_on(async { tokio::time::timeout(self.timeout, self.sender.send(body)).await });
        self.queued.fetch_sub(count, Ordering::Relaxed);
        let error = match outcome {
            Ok(Ok(())) => {
                self.counters.exported.inc_by(count as u64);
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.counters.drop_spans(EXPORT_FAILED, count);
        self.failures.since_last_line += count;
        if self.failures.last_line.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                endpoint = %self.endpoint,
                error = %error,
                dropped_spans = self.failures.since_last_line,
                "cannot export traces to the OTLP collector; their spans are dropped (counted in toolwarden_trace_spans_dropped_total), calls are not affected"
            );
            self.failures = Failures { since_last_line: 0, last_line: Some(Instant::now()) };
        }
    }
}
