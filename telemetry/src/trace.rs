//! One trace, recorded as it happens and handed to the export queue in one piece when it ends.
//!
//! Spans are kept as the caller wrote them, with the times the caller measured, not through the SDK's
//! tracer: a call knows each step's start and end anyway, a span id can be chosen before its span ends
//! (the `traceparent` a worker passes on names the span of the call in the worker while it runs), and a
//! whole trace costs one hand-over to the export thread instead of one per span. The export thread
//! encodes them for OTLP (see `otlp`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{IdGenerator as _, SamplingDecision, ShouldSample as _};

use crate::Telemetry;
use crate::context::{Parent, format_traceparent};
use crate::otlp::Finished;

/// A finished span of a [`Trace`].
pub struct Span {
    /// The id chosen in advance with [`Trace::new_span_id`], or `None` for a fresh one.
    pub id: Option<SpanId>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// `Some(description)` marks the span failed.
    pub error: Option<String>,
}

impl Span {
    pub fn new(name: impl Into<Cow<'static, str>>, start: SystemTime, end: SystemTime, attributes: Vec<KeyValue>) -> Span {
        Span { id: None, name: name.into(), kind: SpanKind::Internal, start, end, attributes, error: None }
    }

    pub fn with_id(mut self, id: SpanId) -> Span {
        self.id = Some(id);
        self
    }

    pub fn kind(mut self, kind: SpanKind) -> Span {
        self.kind = kind;
        self
    }

    pub fn error(mut self, description: Option<String>) -> Span {
        self.error = description;
        self
    }
}

/// A trace being recorded: its root span's id is fixed at the start, its children are added as they
/// finish, and [`Trace::finish`] adds the root and hands everything to the export queue.
pub struct Trace {
    telemetry: Arc<Telemetry>,
    trace_id: TraceId,
    root: SpanId,
    /// The caller's span, when a valid `traceparent` named one.
    parent: Option<SpanId>,
    sampled: bool,
    spans: Vec<Finished>,
}

impl Trace {
    /// Starts a trace under `parent` (the caller's, when it sent a valid one: same trace id), or a new one.
    /// The sampler (`OTEL_TRACES_SAMPLER`) decides once, for the whole trace.
    pub fn start(telemetry: &Arc<Telemetry>, parent: Option<Parent>, root_name: &str) -> Trace {
        let trace_id = parent.map_or_else(|| telemetry.ids.new_trace_id(), |p| p.trace_id);
        let parent_context = parent.map(|p| {
            let flags = if p.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            Context::new().with_remote_span_context(SpanContext::new(p.trace_id, p.span_id, flags, true, TraceState::NONE))
        });
        let decision = telemetry.sampler.should_sample(parent_context.as_ref(), trace_id, root_name, &SpanKind::Server, &[], &[]);
        Trace {
            telemetry: telemetry.clone(),
            trace_id,
            root: telemetry.ids.new_span_id(),
            parent: parent.map(|p| p.span_id),
            sampled: decision.decision == SamplingDecision::RecordAndSample,
            // A call's trace has at most eight spans.
            spans: Vec::with_capacity(8),
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The trace id as 32 lower-case hex digits (audit lines, results' `_meta`).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// Whether this trace's spans are kept (exported); when not, adding spans costs nothing.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// An id for a span that will be added later (to name it as a parent before it ends).
    pub fn new_span_id(&self) -> SpanId {
        self.telemetry.ids.new_span_id()
    }

    /// The `traceparent` that makes `span` of this trace the parent of whatever receives it.
    pub fn traceparent(&self, span: SpanId) -> String {
        format_traceparent(self.trace_id, span, self.sampled)
    }

    /// Adds a finished child of the root; `make` runs only when the trace is sampled.
    pub fn child(&mut self, make: impl FnOnce() -> Span) {
        if self.sampled {
            let span = make();
            let data = self.data(span, self.root, false);
            self.spans.push(data);
        }
    }

    /// Adds the root span and hands the trace to the export queue (or drops it, counted, when full).
    pub fn finish(mut self, make: impl FnOnce() -> Span) {
        if !self.sampled {
            return;
        }
        let root = make().with_id(self.root);
        let (parent, remote) = match self.parent {
            Some(parent) => (parent, true),
            None => (SpanId::INVALID, false),
        };
        let data = self.data(root, parent, remote);
        self.spans.push(data);
        self.telemetry.queue.push(std::mem::take(&mut self.spans));
    }

    fn data(&self, span: Span, parent: SpanId, remote: bool) -> Finished {
        let id = span.id.unwrap_or_else(|| self.telemetry.ids.new_span_id());
        Finished { trace_id: self.trace_id, id, parent, remote_parent: remote, span }
    }
}
