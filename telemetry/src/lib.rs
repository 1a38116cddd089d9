//! Toolwarden's OpenTelemetry traces (docs/tracing.md): off unless the standard `OTEL_*` variables name an
//! OTLP endpoint; then spans go to the collector over OTLP/HTTP (protobuf) from one export thread, through
//! a bounded queue that drops (and counts) what it cannot hold, so a collector that is down or slow never
//! delays or fails the work being traced.
//!
//! The gateway records one [`Trace`] per `tools/call`; the operator one per reconcile. A caller's W3C
//! `traceparent` is parsed strictly ([`parse_traceparent`]) and a malformed one is ignored.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::RandomIdGenerator;

pub mod config;
mod context;
mod export;
mod otlp;
mod trace;
mod wire;

pub use context::{Parent, format_traceparent, parse_traceparent};
pub use export::SpanCounters;
pub use opentelemetry::trace::{SpanId, SpanKind, TraceId};
pub use opentelemetry_sdk::trace::Sampler;
pub use otlp::SpanWriter;
pub use trace::Trace;

/// Why tracing could not be set up as configured. The process should not start: a variable that asks
/// for traces the gateway cannot send is a mistake to fix, not to run with silently.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tracing: {0}")]
    Config(#[from] config::ConfigError),
    #[error("tracing: the OTLP exporter: {0}")]
    Exporter(String),
    #[error("tracing: cannot start the export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Tracing, on. Held as `Option<Arc<Telemetry>>`: `None` is tracing off, which costs nothing.
pub struct Telemetry {
    queue: export::ExportQueue,
    sampler: Sampler,
    ids: RandomIdGenerator,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("sampler", &self.sampler).finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Tracing as the process environment configures it: `Ok(None)` when off. `service` is the default
    /// `service.name` (`OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` override it); dropped and exported
    /// spans are counted in `counters`.
    pub fn from_env(service: &'static str, counters: &SpanCounters) -> Result<Option<Arc<Telemetry>>, Error> {
        match config::settings(|name| std::env::var(name).ok())? {
            Some(settings) => Telemetry::start(service, settings, counters, None).map(Some),
            None => Ok(None),
        }
    }

    /// Tracing with these settings, to `endpoint` (the full URL spans are posted to) or, when `None`, to
    /// the endpoint the `OTEL_EXPORTER_OTLP_*` variables name.
    pub fn start(service: &'static str, settings: config::Settings, counters: &SpanCounters, endpoint: Option<&str>) -> Result<Arc<Telemetry>, Error> {
        let destination = config::destination(|name| std::env::var(name).ok(), endpoint)?;
        let shown = endpoint_for_logs(&destination.url);
        let sender = otlp::Sender { client: http_client()?, url: destination.url, headers: destination.headers, timeout: destination.timeout };
        let envelope = otlp::Envelope::new(&resource(service), service, env!("CARGO_PKG_VERSION"));
        let queue = export::ExportQueue::start(envelope, sender, &settings, counters.clone(), shown.clone())?;
        tracing::info!(endpoint = %shown, sampler = ?settings.sampler, "tracing on: spans are exported over OTLP/HTTP");
        Ok(Arc::new(Telemetry { queue, sampler: settings.sampler, ids: RandomIdGenerator::default() }))
    }

    /// Sends the spans still queued, waiting at most `limit` (shutdown); whether they all went.
    pub fn flush(&self, limit: Duration) -> bool {
        self.queue.flush(limit)
    }
}

/// `service.name` is `service` unless the environment names one.
fn resource(service: &'static str) -> Resource {
    let from_env = Resource::builder().build();
    let named = from_env.get(&opentelemetry::Key::from_static_str("service.name")).is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if named { from_env } else { Resource::builder().with_service_name(service).build() }
}

/// The collector's URL for log lines: scheme, host, port and path, never user info or a query.
fn endpoint_for_logs(url: &reqwest::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{}{port}{}", url.scheme(), url.host_str().unwrap_or(""), url.path().trim_end_matches('/'))
}

/// The exporter's HTTP client: rustls with ring and the platform's roots, set explicitly. The gateway's
/// Kubernetes client links ring too; a second provider (aws-lc-rs) would make rustls refuse to choose.
fn http_client() -> Result<reqwest::Client, Error> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Exporter(e.to_string()))?
        .with_platform_verifier()
        .map_err(|e| Error::Exporter(e.to_string()))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Exporter(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_name_the_collector_without_credentials() {
        let shown = |url: &str| endpoint_for_logs(&reqwest::Url::parse(url).unwrap());
        assert_eq!(shown("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!(shown("https://user:pw@c:4318/v1/traces?key=s#f"), "https://c:4318/v1/traces");
        assert_eq!(shown("http://localhost:4318/v1/traces"), "http://localhost:4318/v1/traces");
    }
}
