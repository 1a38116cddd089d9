//! The bounded export queue: finished traces wait here for one thread of their own that sends them to the
//! collector in batches. A call never waits for it: handing over a trace is one counter check and one
//! channel send, and when the queue already holds its limit of spans the new ones are dropped and
//! counted (`toolwarden_trace_spans_dropped_total{reason="queue_full"}`). A collector that is down or
//! slow only makes this thread's exports fail or wait (each bounded by its timeout); their spans are
//! counted as dropped too (`reason="export_failed"`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::Settings;

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

enum Message {
    Spans(Vec<SpanData>),
    /// Export everything queued, then answer.
    Flush(mpsc::SyncSender<()>),
}

pub(crate) struct ExportQueue {
    sender: mpsc::Sender<Message>,
    /// Spans handed over and not yet exported or dropped, the batch being sent included.
    queued: Arc<AtomicUsize>,
    limit: usize,
    counters: SpanCounters,
}

impl ExportQueue {
    /// Starts the export thread. `endpoint` names the collector in log lines.
    pub(crate) fn start(
        exporter: opentelemetry_otlp::SpanExporter,
        settings: &Settings,
        counters: SpanCounters,
        endpoint: String,
    ) -> std::io::Result<ExportQueue> {
        let (sender, receiver) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let exporting = Exporting {
            exporter,
            queued: queued.clone(),
            counters: counters.clone(),
            batch_size: settings.max_export_batch_size,
            delay: settings.schedule_delay,
            timeout: settings.export_timeout,
            endpoint,
            failures: Failures::default(),
        };
        std::thread::Builder::new().name("otlp-export".into()).spawn(move || exporting.run(receiver))?;
        Ok(ExportQueue { sender, queued, limit: settings.max_queue_size, counters })
    }

    /// Hands `spans` over for export, or drops (and counts) them when the queue is at its limit.
    pub(crate) fn push(&self, spans: Vec<SpanData>) {
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
        if self.sender.send(Message::Spans(spans)).is_err() {
            self.queued.fetch_sub(count, Ordering::Relaxed);
            self.counters.drop_spans(EXPORT_FAILED, count);
        }
    }

    /// Exports what is queued, waiting at most `limit`; whether it finished in time.
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        let (done, finished) = mpsc::sync_channel(1);
        self.sender.send(Message::Flush(done)).is_ok() && finished.recv_timeout(limit).is_ok()
    }
}

#[derive(Default)]
struct Failures {
    since_last_line: usize,
    last_line: Option<Instant>,
}

/// The export thread's state.
struct Exporting {
    exporter: opentelemetry_otlp::SpanExporter,
    queued: Arc<AtomicUsize>,
    counters: SpanCounters,
    batch_size: usize,
    delay: Duration,
    timeout: Duration,
    endpoint: String,
    failures: Failures,
}

impl Exporting {
    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the trace export thread's runtime; spans are dropped");
                for message in receiver {
                    if let Message::Spans(spans) = message {
                        self.queued.fetch_sub(spans.len(), Ordering::Relaxed);
                        self.counters.drop_spans(EXPORT_FAILED, spans.len());
                    }
                }
                return;
            }
        };
        let mut batch: Vec<SpanData> = Vec::new();
        // When the oldest span of `batch` must be on its way.
        let mut due: Option<Instant> = None;
        loop {
            let message = match due {
                None => receiver.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(due) => receiver.recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            match message {
                Ok(Message::Spans(spans)) => {
                    due.get_or_insert_with(|| Instant::now() + self.delay);
                    batch.extend(spans);
                    while batch.len() >= self.batch_size {
                        let rest = batch.split_off(self.batch_size);
                        self.export(&runtime, std::mem::replace(&mut batch, rest));
                    }
                    if batch.is_empty() {
                        due = None;
                    }
                }
                Ok(Message::Flush(done)) => {
                    self.export_all(&runtime, &mut batch);
                    due = None;
                    let _ = done.send(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.export_all(&runtime, &mut batch);
                    due = None;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.export_all(&runtime, &mut batch);
                    return;
                }
            }
        }
    }

    fn export_all(&mut self, runtime: &tokio::runtime::Runtime, batch: &mut Vec<SpanData>) {
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(self.batch_size));
            self.export(runtime, std::mem::replace(batch, rest));
        }
    }

    fn export(&mut self, runtime: &tokio::runtime::Runtime, batch: Vec<SpanData>) {
        let count = batch.len();
        let outcome = runtime.block_on(async { tokio::time::timeout(self.timeout, self.exporter.export(batch)).await });
        self.queued.fetch_sub(count, Ordering::Relaxed);
        let error = match outcome {
            Ok(Ok(())) => {
                self.counters.exported.inc_by(count as u64);
                return;
            }
            Ok(Err(e)) => e.to_string(),
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
