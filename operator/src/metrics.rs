//! Prometheus metrics, and the small HTTP server for `/metrics`, `/healthz` and `/readyz`.
//! Names are fixed: the Helm chart's alerts use them (see docs/operator.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn duration_histogram() -> Histogram {
    // 1 ms … ~33 s: a tool reconcile is a few API calls; a namespace of 500 tools compiles in ~100 ms.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<Labels, Counter>,
    pub reconcile_errors: Family<Labels, Counter>,
    pub reconcile_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub config_generation: Family<Labels, Gauge>,
    pub leader: Gauge,
    pub sessions_expired: Counter,
    /// Unix seconds of the last successful Lease read or write (for `/readyz`).
    pub last_lease_contact: AtomicI64,
    /// Set once the leader-election loop ends unexpectedly (for `/healthz`).
    pub broken: AtomicBool,
    /// Spans exported and dropped (docs/tracing.md); zero while tracing is off.
    pub spans: toolwarden_telemetry::SpanCounters,
    /// Tracing of reconciles; `None` when off.
    pub telemetry: Option<std::sync::Arc<toolwarden_telemetry::Telemetry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            config_generation: Family::default(),
            leader: Gauge::default(),
            sessions_expired: Counter::default(),
            last_lease_contact: AtomicI64::new(0),
            broken: AtomicBool::new(false),
            spans: Default::default(),
            telemetry: None,
        }
    }
}

impl Metrics {
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        registry.register("toolwarden_reconcile", "Reconciles by controller and result (success, error)", self.reconciles.clone());
        registry.register(
            "toolwarden_reconcile_errors",
            "Failed reconciles by controller and error kind",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "toolwarden_reconcile_duration_seconds",
            "Time of one reconcile, by controller",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "toolwarden_config_written_generation",
            "Generation of the gateway config last written, by namespace",
            self.config_generation.clone(),
        );
        registry.register("toolwarden_operator_leader", "1 on the replica holding the leader Lease", self.leader.clone());
        registry.register(
            "toolwarden_sessions_expired",
            "McpSessions the operator expired because the gateway stopped updating them",
            self.sessions_expired.clone(),
        );
        self.spans.register(&mut registry);
        registry
    }

    /// The trace of one reconcile of `object` by `controller` that took `elapsed` (when tracing is on):
    /// one span `reconcile {controller}` with the object, the result and the error's kind and sentence
    /// (names and API errors, never Secret data: the operator reads Secrets' keys, not their values into errors).
    pub fn trace_reconcile(&self, controller: &'static str, object: &str, elapsed: std::time::Duration, error: Option<&crate::error::Error>) {
        let Some(telemetry) = &self.telemetry else { return };
        let end = std::time::SystemTime::now();
        let start = end.checked_sub(elapsed).unwrap_or(end);
        toolwarden_telemetry::Trace::start(telemetry, None, "reconcile").finish("reconcile", Some(controller), start, end, |span| {
            span.str("toolwarden.controller", controller).str("toolwarden.object", object);
            span.str("toolwarden.reconcile.result", if error.is_some() { "error" } else { "success" });
            if let Some(e) = error {
                span.str("error.type", e.metric_label()).error(&e.to_string());
            }
        });
    }

    /// Counts one reconcile of `controller` and its duration; `error` is the error's `metric_label`.
    pub fn reconciled(&self, controller: &'static str, seconds: f64, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles.get_or_create(&vec![("controller", controller.to_owned()), ("result", result.to_owned())]).inc();
        self.reconcile_duration.get_or_create(&vec![("controller", controller.to_owned())]).observe(seconds);
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&vec![("controller", controller.to_owned()), ("error", error.to_owned())])
                .inc();
        }
    }

    pub fn config_written(&self, namespace: &str, generation: u64) {
        self.config_generation.get_or_create(&vec![("namespace", namespace.to_owned())]).set(generation as i64);
    }

    pub fn config_removed(&self, namespace: &str) {
        self.config_generation.remove(&vec![("namespace", namespace.to_owned())]);
    }

    pub fn lease_contact(&self) {
        self.last_lease_contact.store(jiff::Timestamp::now().as_second(), Ordering::Relaxed);
    }

    /// Ready while the Lease loop reached the API server within `window` (leader or not: a standby
    /// replica that can talk to the API server is ready to take over).
    pub fn is_ready(&self, window: Duration) -> bool {
        let last = self.last_lease_contact.load(Ordering::Relaxed);
        last > 0 && jiff::Timestamp::now().as_second() - last <= window.as_secs() as i64
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    ready_window: Duration,
}

/// `/metrics` (OpenMetrics text), `/healthz` (the process works), `/readyz` (it reaches the API server).
pub fn router(metrics: Arc<Metrics>, ready_window: Duration) -> Router {
    let registry = Arc::new(metrics.registry());
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { metrics, registry, ready_window })
}

async fn serve_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut body = String::new();
    match encode(&mut body, &state.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], format!("encoding metrics: {e}")),
    }
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.metrics.broken.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "leader election stopped\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.metrics.is_ready(state.ready_window) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the Lease has not been reached recently\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_is_one_span_when_tracing_is_on_and_nothing_when_off() {
        let off = Metrics::default();
        off.trace_reconcile("mcptool", "McpTool default/t", std::time::Duration::from_millis(3), None);
        // On, to a collector that is down: the span is recorded, handed over, and counted when dropped.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut on = Metrics::default();
        let settings = toolwarden_telemetry::config::Settings {
            sampler: toolwarden_telemetry::Sampler::AlwaysOn,
            max_queue_size: 16,
            max_export_batch_size: 16,
            schedule_delay: std::time::Duration::from_millis(10),
            export_timeout: std::time::Duration::from_millis(500),
        };
        let endpoint = format!("http://127.0.0.1:{port}/v1/traces");
        on.telemetry = Some(toolwarden_telemetry::Telemetry::start("test", settings, &on.spans, Some(&endpoint)).unwrap());
        let error = crate::error::Error::Timeout { object: "McpTool default/t".into(), seconds: 30 };
        on.trace_reconcile("mcptool", "McpTool default/t", std::time::Duration::from_millis(3), Some(&error));
        on.trace_reconcile("namespace", "namespace/default", std::time::Duration::from_millis(3), None);
        on.telemetry.as_ref().unwrap().flush(std::time::Duration::from_secs(5));
        let dropped = |m: &Metrics| m.spans.dropped.get_or_create(&vec![("reason", "export_failed")]).get();
        assert_eq!(dropped(&on), 2, "one span per reconcile");
        assert_eq!(dropped(&off) + off.spans.exported.get(), 0);
    }

    #[test]
    fn metric_names_match_what_the_chart_alerts_on() {
        let metrics = Arc::new(Metrics::default());
        metrics.reconciled("mcptool", 0.01, None);
        metrics.reconciled("mcptool", 0.02, Some("conflict"));
        metrics.config_written("default", 7);
        metrics.leader.set(1);
        metrics.sessions_expired.inc();
        let mut text = String::new();
        encode(&mut text, &metrics.registry()).unwrap();
        for expected in [
            r#"toolwarden_reconcile_total{controller="mcptool",result="success"} 1"#,
            r#"toolwarden_reconcile_total{controller="mcptool",result="error"} 1"#,
            r#"toolwarden_reconcile_errors_total{controller="mcptool",error="conflict"} 1"#,
            r#"toolwarden_reconcile_duration_seconds_count{controller="mcptool"} 2"#,
            r#"toolwarden_config_written_generation{namespace="default"} 7"#,
            "toolwarden_operator_leader 1",
            "toolwarden_sessions_expired_total 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn not_ready_until_the_lease_was_reached() {
        let metrics = Metrics::default();
        assert!(!metrics.is_ready(Duration::from_secs(30)));
        metrics.lease_contact();
        assert!(metrics.is_ready(Duration::from_secs(30)));
    }
}
