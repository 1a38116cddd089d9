//! One trace, written as it happens and handed to the export queue in one piece when it ends.
//!
//! Spans are recorded as the caller measured them, not through the SDK's tracer: a call knows each
//! step's start and end anyway, a span id can be chosen before its span ends (the `traceparent` a worker
//! passes on names the span of the call in the worker while it runs), and a whole trace costs one
//! hand-over to the export thread instead of one per span. Each span is written as OTLP protobuf when
//! it is added (see `otlp`), its attributes borrowed from the caller, so a trace is one buffer.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator as _, Sampler, SamplingDecision, ShouldSample as _};

use crate::Telemetry;
use crate::context::{Parent, format_traceparent};
use crate::otlp::{self, SpanHead, SpanWriter};

/// A call's trace takes about this many bytes (five to eight spans); more grows the buffer.
const TRACE_CAPACITY: usize = 2048;

/// A trace being recorded: its root span's id is fixed at the start, its children are written as they
/// finish, and [`Trace::finish`] writes the root and hands the trace to the export queue.
pub struct Trace {
    telemetry: Arc<Telemetry>,
    trace_id: TraceId,
    root: SpanId,
    /// The caller's span, when a valid `traceparent` named one.
    parent: Option<SpanId>,
    sampled: bool,
    /// The spans written so far, as `ScopeSpans.spans` fields.
    encoded: Vec<u8>,
    spans: usize,
}

/// Whether a trace is kept. The samplers whose answer needs no computation (always on or off, a parent's
/// flag) answer here; the others are asked through the SDK, with the parent as a remote span context.
fn sample(sampler: &Sampler, parent: Option<Parent>, trace_id: TraceId, root_name: &str) -> bool {
    match (sampler, parent) {
        (Sampler::AlwaysOn, _) => true,
        (Sampler::AlwaysOff, _) => false,
        // ParentBased as `config::sampler` builds it: a remote parent's flag decides (without building a
        // context); without one, its root sampler does, through the SDK.
        (Sampler::ParentBased(_), Some(parent)) => parent.sampled,
        (other, parent) => {
            let parent_context = parent.map(|p| {
                let flags = if p.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
                Context::new().with_remote_span_context(SpanContext::new(p.trace_id, p.span_id, flags, true, TraceState::NONE))
            });
            let decision = other.should_sample(parent_context.as_ref(), trace_id, root_name, &SpanKind::Server, &[], &[]);
            decision.decision == SamplingDecision::RecordAndSample
        }
    }
}

impl Trace {
    /// Starts a trace under `parent` (the caller's, when it sent a valid one: same trace id), or a new one.
    /// The sampler (`OTEL_TRACES_SAMPLER`) decides once, for the whole trace.
    pub fn start(telemetry: &Arc<Telemetry>, parent: Option<Parent>, root_name: &str) -> Trace {
        let trace_id = parent.map_or_else(|| telemetry.ids.new_trace_id(), |p| p.trace_id);
        let sampled = sample(&telemetry.sampler, parent, trace_id, root_name);
        Trace {
            telemetry: telemetry.clone(),
            trace_id,
            root: telemetry.ids.new_span_id(),
            parent: parent.map(|p| p.span_id),
            sampled,
            encoded: if sampled { Vec::with_capacity(TRACE_CAPACITY) } else { Vec::new() },
            spans: 0,
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

    /// Adds a finished child of the root, `name` from `start` to `end`; `write` adds its attributes (and
    /// kind, id, failure) and runs only when the trace is sampled.
    pub fn child(&mut self, name: &str, start: SystemTime, end: SystemTime, write: impl FnOnce(&mut SpanWriter<'_>)) {
        if self.sampled {
            let head = SpanHead { trace_id: self.trace_id, parent: self.root, remote_parent: false, name, object: None, start, end };
            self.write(&head, write);
        }
    }

    /// Adds the root span, `{name} {object}` (or `name` alone) from `start` to `end`, and hands the trace
    /// to the export queue (which drops it, counted, when full).
    pub fn finish(mut self, name: &str, object: Option<&str>, start: SystemTime, end: SystemTime, write: impl FnOnce(&mut SpanWriter<'_>)) {
        if !self.sampled {
            return;
        }
        let (parent, remote_parent) = match self.parent {
            Some(parent) => (parent, true),
            None => (SpanId::INVALID, false),
        };
        let head = SpanHead { trace_id: self.trace_id, parent, remote_parent, name, object, start, end };
        let root = self.root;
        self.write(&head, |span| {
            span.id(root);
            write(span);
        });
        self.telemetry.queue.push(&self.encoded, self.spans);
    }

    fn write(&mut self, head: &SpanHead<'_>, write: impl FnOnce(&mut SpanWriter<'_>)) {
        let ids = &self.telemetry.ids;
        otlp::span(&mut self.encoded, head, || ids.new_span_id(), write);
        self.spans += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK's own answer, for comparison.
    fn sdk(sampler: &Sampler, parent: Option<Parent>, trace_id: TraceId) -> bool {
        let parent_context = parent.map(|p| {
            let flags = if p.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            Context::new().with_remote_span_context(SpanContext::new(p.trace_id, p.span_id, flags, true, TraceState::NONE))
        });
        sampler.should_sample(parent_context.as_ref(), trace_id, "tools/call", &SpanKind::Server, &[], &[]).decision
            == SamplingDecision::RecordAndSample
    }

    #[test]
    fn the_short_cuts_decide_as_the_sdk_does_for_every_sampler_the_config_builds() {
        let samplers = [
            Sampler::AlwaysOn,
            Sampler::AlwaysOff,
            Sampler::TraceIdRatioBased(0.5),
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5))),
        ];
        let parents = [
            None,
            Some(Parent { trace_id: TraceId::from(7), span_id: SpanId::from(9), sampled: true }),
            Some(Parent { trace_id: TraceId::from(7), span_id: SpanId::from(9), sampled: false }),
        ];
        // Trace ids on both sides of a ratio of one half.
        let ids = [TraceId::from(1), TraceId::from(u128::MAX), TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)];
        for sampler in &samplers {
            for parent in parents {
                for id in ids {
                    let id = parent.map_or(id, |p| p.trace_id);
                    assert_eq!(sample(sampler, parent, id, "tools/call"), sdk(sampler, parent, id), "{sampler:?} {parent:?} {id:?}");
                }
            }
        }
    }
}
