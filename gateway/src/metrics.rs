//! The gateway's Prometheus metrics (names in docs/metrics.md; the Helm chart's alerts use them).
//! One [`Registry`] holds these and the runtimes' [`crate::kubernetes::Metrics`], each family once.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn call_histogram() -> Histogram {
    // 1 ms … ~65 s: a cached read is milliseconds, a slow upstream can take the whole timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Cloning shares the underlying metrics.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub tool_calls: Family<Labels, Counter>,
    pub call_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub denials: Family<Labels, Counter>,
    pub approvals_pending: Family<Labels, Gauge>,
    pub approval_oldest_pending: Family<Labels, Gauge<f64, AtomicU64>>,
    pub timeouts: Family<Labels, Counter>,
    pub truncated: Family<Labels, Counter>,
    pub config_generation: Family<Labels, Gauge>,
    pub config_load_failures: Family<Labels, Counter>,
    pub config_last_load: Family<Labels, Gauge<f64, AtomicU64>>,
    pub worker_calls_failed: Family<Labels, Counter>,
    pub sessions_refused: Family<Labels, Counter>,
    pub http_refused: Family<Labels, Counter>,
    pub connections_closed: Family<Labels, Counter>,
    /// Requests sent on to the replica holding their session, and sessions taken over from a lost one.
    pub sessions_forwarded: Family<Labels, Counter>,
    pub sessions_taken_over: Family<Labels, Counter>,
    /// Shared with the worker runtimes (sessions, worker starts, warm pools).
    pub runtime: crate::kubernetes::Metrics,
    /// Spans exported and dropped (docs/tracing.md); zero while tracing is off.
    pub spans: toolwarden_telemetry::SpanCounters,
}

fn ns(namespace: &str) -> Labels {
    vec![("namespace", namespace.to_owned())]
}

fn ns_tool(namespace: &str, tool: &str) -> Labels {
    vec![("namespace", namespace.to_owned()), ("tool", tool.to_owned())]
}

impl GatewayMetrics {
    /// Builds the metrics and the registry that exposes them (and `runtime`'s).
    pub fn new(runtime: crate::kubernetes::Metrics) -> (GatewayMetrics, Registry) {
        let metrics = GatewayMetrics {
            tool_calls: Family::default(),
            call_duration: Family::new_with_constructor(call_histogram),
            denials: Family::default(),
            approvals_pending: Family::default(),
            approval_oldest_pending: Family::default(),
            timeouts: Family::default(),
            truncated: Family::default(),
            config_generation: Family::default(),
            config_load_failures: Family::default(),
            config_last_load: Family::default(),
            worker_calls_failed: Family::default(),
            sessions_refused: Family::default(),
            http_refused: Family::default(),
            connections_closed: Family::default(),
            sessions_forwarded: Family::default(),
            sessions_taken_over: Family::default(),
            runtime,
            spans: toolwarden_telemetry::SpanCounters::default(),
        };
        let mut registry = Registry::default();
        let m = &metrics;
        // Counters get their `_total` suffix from prometheus-client.
        registry.register("toolwarden_tool_calls", "Tool calls by namespace, tool, decision and status", m.tool_calls.clone());
        registry.register(
            "toolwarden_tool_call_duration_seconds",
            "Time from the decision to the worker's answer, for calls that ran",
            m.call_duration.clone(),
        );
        registry.register("toolwarden_denials", "Refused calls by namespace, tool and refusal code", m.denials.clone());
        registry.register("toolwarden_approvals_pending", "Human approvals waiting for a decision", m.approvals_pending.clone());
        registry.register(
            "toolwarden_approval_oldest_pending_seconds",
            "Age of the oldest pending human approval (0 when none)",
            m.approval_oldest_pending.clone(),
        );
        registry.register("toolwarden_tool_timeouts", "Calls the worker stopped at the tool's timeout", m.timeouts.clone());
        registry.register("toolwarden_tool_output_truncated", "Calls whose output was cut at maxOutputBytes", m.truncated.clone());
        registry.register("toolwarden_config_generation", "Generation of the config this gateway applies", m.config_generation.clone());
        registry.register(
            "toolwarden_config_load_failures",
            "Config loads refused (the last good config stays in force)",
            m.config_load_failures.clone(),
        );
        registry.register(
            "toolwarden_config_last_load_timestamp_seconds",
            "Unix time of the last config applied",
            m.config_last_load.clone(),
        );
        registry.register(
            "toolwarden_worker_calls_failed",
            "Calls that failed in the worker runtime (start failures, worker died, timeouts), by reason",
            m.worker_calls_failed.clone(),
        );
        registry.register(
            "toolwarden_sessions_refused",
            "New sessions refused, by namespace and reason (subject_limit: the subject has too many open)",
            m.sessions_refused.clone(),
        );
        registry.register(
            "toolwarden_http_requests_refused",
            "Requests refused at the HTTP edge before authentication, by reason (origin: a browser Origin not allowed)",
            m.http_refused.clone(),
        );
        registry.register(
            "toolwarden_http_connections_closed",
            "Connections the gateway closed on its own, by reason (write_stalled: the client accepted no data of its answer for the write stall timeout)",
            m.connections_closed.clone(),
        );
        registry.register(
            "toolwarden_session_requests_forwarded",
            "Requests this replica sent on to the gateway replica holding their session",
            m.sessions_forwarded.clone(),
        );
        registry.register(
            "toolwarden_sessions_taken_over",
            "Sessions this replica continued because the replica holding them was gone (or it restarted)",
            m.sessions_taken_over.clone(),
        );
        metrics.runtime.register(&mut registry);
        metrics.spans.register(&mut registry);
        (metrics, registry)
    }

    pub fn call(&self, namespace: &str, tool: &str, decision: &str, status: &str) {
        let labels = vec![
            ("namespace", namespace.to_owned()),
            ("tool", tool.to_owned()),
            ("decision", decision.to_owned()),
            ("status", status.to_owned()),
        ];
        self.tool_calls.get_or_create(&labels).inc();
    }

    pub fn denial(&self, namespace: &str, tool: &str, reason: &str) {
        let labels = vec![("namespace", namespace.to_owned()), ("tool", tool.to_owned()), ("reason", reason.to_owned())];
        self.denials.get_or_create(&labels).inc();
    }

    pub fn duration(&self, namespace: &str, tool: &str, seconds: f64) {
        self.call_duration.get_or_create(&ns_tool(namespace, tool)).observe(seconds);
    }

    pub fn timeout(&self, namespace: &str, tool: &str) {
        self.timeouts.get_or_create(&ns_tool(namespace, tool)).inc();
    }

    pub fn truncation(&self, namespace: &str, tool: &str) {
        self.truncated.get_or_create(&ns_tool(namespace, tool)).inc();
    }

    pub fn session_refused(&self, namespace: &str, reason: &str) {
        self.sessions_refused.get_or_create(&vec![("namespace", namespace.to_owned()), ("reason", reason.to_owned())]).inc();
    }

    pub fn session_forwarded(&self, namespace: &str) {
        self.sessions_forwarded.get_or_create(&ns(namespace)).inc();
    }

    pub fn session_taken_over(&self, namespace: &str) {
        self.sessions_taken_over.get_or_create(&ns(namespace)).inc();
    }

    pub fn http_refused(&self, reason: &str) {
        self.http_refused.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    pub fn connection_closed(&self, reason: &str) {
        self.connections_closed.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    pub fn worker_failed(&self, namespace: &str, tool: &str, reason: &str) {
        let labels = vec![("namespace", namespace.to_owned()), ("tool", tool.to_owned()), ("reason", reason.to_owned())];
        self.worker_calls_failed.get_or_create(&labels).inc();
    }

    pub fn config_applied(&self, namespace: &str, generation: u64, unix_seconds: f64) {
        self.config_generation.get_or_create(&ns(namespace)).set(generation as i64);
        self.config_last_load.get_or_create(&ns(namespace)).set(unix_seconds);
    }

    pub fn config_failed(&self, namespace: &str) {
        self.config_load_failures.get_or_create(&ns(namespace)).inc();
    }

    pub fn approvals(&self, namespace: &str, pending: usize, oldest_seconds: f64) {
        self.approvals_pending.get_or_create(&ns(namespace)).set(pending as i64);
        self.approval_oldest_pending.get_or_create(&ns(namespace)).set(oldest_seconds);
    }
}

/// The registry as Prometheus text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_family_is_exposed_once() {
        let (metrics, registry) = GatewayMetrics::new(crate::kubernetes::Metrics::default());
        metrics.call("default", "read_note", "allow", "ok");
        metrics.denial("default", "read_note", "rate_limited");
        metrics.duration("default", "read_note", 0.01);
        metrics.timeout("default", "read_note");
        metrics.truncation("default", "read_note");
        metrics.worker_failed("default", "read_note", "worker_died");
        metrics.config_applied("default", 3, 1.0);
        metrics.config_failed("default");
        metrics.approvals("default", 1, 2.0);
        let text = render(&registry);
        for line in [
            "toolwarden_tool_calls_total{namespace=\"default\",tool=\"read_note\",decision=\"allow\",status=\"ok\"} 1",
            "toolwarden_denials_total{namespace=\"default\",tool=\"read_note\",reason=\"rate_limited\"} 1",
            "toolwarden_tool_call_duration_seconds_count{namespace=\"default\",tool=\"read_note\"} 1",
            "toolwarden_tool_timeouts_total{namespace=\"default\",tool=\"read_note\"} 1",
            "toolwarden_tool_output_truncated_total{namespace=\"default\",tool=\"read_note\"} 1",
            "toolwarden_worker_calls_failed_total{namespace=\"default\",tool=\"read_note\",reason=\"worker_died\"} 1",
            "toolwarden_config_generation{namespace=\"default\"} 3",
            "toolwarden_config_load_failures_total{namespace=\"default\"} 1",
            "toolwarden_config_last_load_timestamp_seconds{namespace=\"default\"} 1",
            "toolwarden_approvals_pending{namespace=\"default\"} 1",
            "toolwarden_approval_oldest_pending_seconds{namespace=\"default\"} 2",
            "toolwarden_sessions_active 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        let helps = text.lines().filter(|l| l.starts_with("# HELP toolwarden_sessions_active ")).count();
        assert_eq!(helps, 1);
    }
}
