//! Prometheus metrics of the Kubernetes runtime.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn start_histogram() -> Histogram {
    // 10 ms … ~80 s: a warm bind is milliseconds, a cold pull can take a minute.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// Cloning shares the underlying metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub session_start: Histogram,
    pub worker_start: Family<Labels, Histogram, fn() -> Histogram>,
    pub worker_start_failures: Family<Labels, Counter>,
    pub warm_pool_hits: Counter,
    pub warm_pool_misses: Counter,
    pub sessions_active: Gauge,
    pub worker_pods_active: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            session_start: start_histogram(),
            worker_start: Family::new_with_constructor(start_histogram),
            worker_start_failures: Family::default(),
            warm_pool_hits: Counter::default(),
            warm_pool_misses: Counter::default(),
            sessions_active: Gauge::default(),
            worker_pods_active: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under its full `toolwarden_` name (give an unprefixed registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "toolwarden_session_start_duration_seconds",
            "Time to create a session's McpSession",
            self.session_start.clone(),
        );
        registry.register(
            "toolwarden_worker_start_duration_seconds",
            "Time from asking for a worker to its being ready, by runtime (kubernetes, kubernetes-warm)",
            self.worker_start.clone(),
        );
        registry.register(
            "toolwarden_worker_start_failures",
            "Workers that failed to start, by runtime and reason",
            self.worker_start_failures.clone(),
        );
        registry.register("toolwarden_warm_pool_hits", "Workers taken from a warm pool", self.warm_pool_hits.clone());
        registry.register(
            "toolwarden_warm_pool_misses",
            "Workers started cold because the tool's warm pool was empty or off",
            self.warm_pool_misses.clone(),
        );
        registry.register("toolwarden_sessions_active", "Sessions this gateway holds", self.sessions_active.clone());
        registry.register(
            "toolwarden_worker_pods_active",
            "Worker pods this gateway holds, bound and warm",
            self.worker_pods_active.clone(),
        );
    }

    pub fn worker_started(&self, runtime: &'static str, seconds: f64) {
        self.worker_start.get_or_create(&vec![("runtime", runtime.to_owned())]).observe(seconds);
    }

    pub fn worker_failed(&self, runtime: &'static str, reason: &'static str) {
        self.worker_start_failures
            .get_or_create(&vec![("runtime", runtime.to_owned()), ("reason", reason.to_owned())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_under_their_documented_names() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.worker_failed("kubernetes", "image_pull");
        metrics.warm_pool_hits.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "toolwarden_session_start_duration_seconds_bucket",
            "toolwarden_worker_start_failures_total{runtime=\"kubernetes\",reason=\"image_pull\"} 1",
            "toolwarden_warm_pool_hits_total 1",
            "toolwarden_warm_pool_misses_total 0",
            "toolwarden_sessions_active 0",
            "toolwarden_worker_pods_active 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
