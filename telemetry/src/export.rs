//! The bounded export queue: finished traces, already written as OTLP protobuf, join a batch here, and
//! one thread of its own sends the batches to the collector. A call never waits for it: handing over a
//! trace is one counter check, a short lock and a copy of its bytes, and when the queue already holds its
//! limit of spans the trace is dropped and counted (`toolwarden_trace_spans_dropped_total{reason=
//! "queue_full"}`). The export thread is woken only when a batch is full, for a flush and at the end;
//! otherwise it sends what has gathered every `OTEL_BSP_SCHEDULE_DELAY`, the interval between two
//! exports. A collector that is down or slow only makes this thread's exports fail or wait (each bounded
//! by its timeout); their spans are counted as dropped too (`reason="export_failed"`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::Settings;
use crate::otlp::{Envelope, Sender};

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
    /// Told when the thread has something to do before its next tick: a full batch, a flush, the end.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Spans to send in one export: the envelope's headroom, then whole traces' spans.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    spans: usize,
}

#[derive(Default)]
struct Waiting {
    /// Batches at their size limit, oldest first.
    full: VecDeque<Batch>,
    /// The batch being filled.
    open: Batch,
    /// A sent batch's buffer, kept for a next batch (no allocation and no growing per batch).
    spare: Option<Vec<u8>>,
    /// Flushes asked for: each is answered once everything waiting before it was exported.
    flushes: Vec<mpsc::SyncSender<()>>,
    closed: bool,
}

impl Waiting {
    fn seal(&mut self) {
        let batch = std::mem::take(&mut self.open);
        self.full.push_back(batch);
    }

    /// Everything waiting, oldest first.
    fn take_all(&mut self) -> Vec<Batch> {
        let mut batches: Vec<Batch> = self.full.drain(..).collect();
        if self.open.spans > 0 {
            batches.push(std::mem::take(&mut self.open));
        }
        batches
    }
}

pub(crate) struct ExportQueue {
    shared: Arc<Shared>,
    /// Spans handed over and not yet exported or dropped, the batch being sent included.
    queued: Arc<AtomicUsize>,
    limit: usize,
    batch_size: usize,
    /// Bytes a batch keeps free for the envelope ([`Envelope::headroom`]).
    headroom: usize,
    counters: SpanCounters,
}

impl ExportQueue {
    /// Starts the export thread. `endpoint` names the collector in log lines.
    pub(crate) fn start(
        envelope: Envelope,
        sender: Sender,
        settings: &Settings,
        counters: SpanCounters,
        endpoint: String,
    ) -> std::io::Result<ExportQueue> {
        let shared = Arc::new(Shared { state: Mutex::default(), wake: Condvar::new() });
        let queued = Arc::new(AtomicUsize::new(0));
        let headroom = envelope.headroom();
        let exporting = Exporting {
            envelope,
            sender,
            shared: shared.clone(),
            queued: queued.clone(),
            counters: counters.clone(),
            delay: settings.schedule_delay,
            timeout: settings.export_timeout,
            endpoint,
            failures: Failures::default(),
        };
        std::thread::Builder::new().name("otlp-export".into()).spawn(move || exporting.run())?;
        Ok(ExportQueue { shared, queued, limit: settings.max_queue_size, batch_size: settings.max_export_batch_size, headroom, counters })
    }

    /// Hands over a finished trace (`spans` spans, `encoded` as `ScopeSpans.spans` fields), or drops (and
    /// counts) it when the queue is at its limit. A trace is never split between batches: a batch holds
    /// at most `batch_size` spans unless one trace alone has more. The export thread is woken only when
    /// a batch is full: waking it for every call would cost each call two context switches.
    pub(crate) fn push(&self, encoded: &[u8], spans: usize) {
        if spans == 0 {
            return;
        }
        let before = self.queued.fetch_add(spans, Ordering::Relaxed);
        if before + spans > self.limit {
            self.queued.fetch_sub(spans, Ordering::Relaxed);
            self.counters.drop_spans(QUEUE_FULL, spans);
            return;
        }
        let sealed = {
            let mut waiting = self.shared.lock();
            let waiting = &mut *waiting;
            let mut sealed = false;
            if waiting.open.spans > 0 && waiting.open.spans + spans > self.batch_size {
                waiting.seal();
                sealed = true;
            }
            if waiting.open.spans == 0 {
                let mut body = waiting.spare.take().unwrap_or_default();
                body.clear();
                body.resize(self.headroom, 0);
                waiting.open.body = body;
            }
            waiting.open.body.extend_from_slice(encoded);
            waiting.open.spans += spans;
            if waiting.open.spans >= self.batch_size {
                waiting.seal();
                sealed = true;
            }
            sealed
        };
        if sealed {
            self.shared.wake.notify_one();
        }
    }

    /// Exports what is queued, waiting at most `limit`; whether it finished in time.
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        let (done, finished) = mpsc::sync_channel(1);
        self.shared.lock().flushes.push(done);
        self.shared.wake.notify_one();
        finished.recv_timeout(limit).is_ok()
    }
}

impl Drop for ExportQueue {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// An export's body: gives its buffer back to the queue when the HTTP client is done with it.
struct Recycled {
    body: Vec<u8>,
    shared: Arc<Shared>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let mut waiting = self.shared.lock();
        if waiting.spare.is_none() {
            waiting.spare = Some(std::mem::take(&mut self.body));
        }
    }
}

#[derive(Default)]
struct Failures {
    since_last_line: usize,
    last_line: Option<Instant>,
}

/// The export thread's state.
struct Exporting {
    envelope: Envelope,
    sender: Sender,
    shared: Arc<Shared>,
    queued: Arc<AtomicUsize>,
    counters: SpanCounters,
    /// The interval between two exports of what has gathered (`OTEL_BSP_SCHEDULE_DELAY`).
    delay: Duration,
    /// Longest one export may take (`OTEL_BSP_EXPORT_TIMEOUT`).
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
        let mut tick = Instant::now() + self.delay;
        loop {
            let (batches, flushes, closed) = self.next(&mut tick);
            for batch in batches {
                match &runtime {
                    Some(runtime) => self.export(runtime, batch),
                    None => {
                        self.queued.fetch_sub(batch.spans, Ordering::Relaxed);
                        self.counters.drop_spans(EXPORT_FAILED, batch.spans);
                    }
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

    /// Waits for work: a full batch, the next tick (then the batch being filled goes, if it has spans),
    /// a flush or the end. Returns the batches to send now (everything, for a flush or the end) and the
    /// flushes to answer after.
    fn next(&self, tick: &mut Instant) -> (Vec<Batch>, Vec<mpsc::SyncSender<()>>, bool) {
        let mut waiting = self.shared.lock();
        loop {
            if !waiting.flushes.is_empty() || waiting.closed {
                let flushes = std::mem::take(&mut waiting.flushes);
                return (waiting.take_all(), flushes, waiting.closed);
            }
            if let Some(batch) = waiting.full.pop_front() {
                return (vec![batch], Vec::new(), false);
            }
            let now = Instant::now();
            if now >= *tick {
                *tick = now + self.delay;
                if waiting.open.spans > 0 {
                    return (vec![std::mem::take(&mut waiting.open)], Vec::new(), false);
                }
            }
            let left = tick.saturating_duration_since(now);
            waiting = self.shared.wake.wait_timeout(waiting, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn export(&mut self, runtime: &tokio::runtime::Runtime, batch: Batch) {
        let Batch { mut body, spans } = batch;
        let start = self.envelope.wrap(&mut body);
        let body = bytes::Bytes::from_owner(Recycled { body, shared: self.shared.clone() }).slice(start..);
        let outcome = runtime.block_on(async { tokio::time::timeout(self.timeout, self.sender.send(body)).await });
        self.queued.fetch_sub(spans, Ordering::Relaxed);
        let error = match outcome {
            Ok(Ok(())) => {
                self.counters.exported.inc_by(spans as u64);
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.counters.drop_spans(EXPORT_FAILED, spans);
        self.failures.since_last_line += spans;
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
