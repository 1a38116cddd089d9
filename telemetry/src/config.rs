//! Whether tracing is on, and how, from the standard OpenTelemetry variables. A pure function of a
//! variable lookup, so every rule is tested without touching the process environment.
//!
//! Tracing is off unless an OTLP endpoint is named (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) or `OTEL_TRACES_EXPORTER=otlp` asks for the default one; the
//! standard switches `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` turn it off. The endpoint,
//! headers, timeout and compression are read by the OTLP exporter itself (`opentelemetry-otlp`).

use std::time::Duration;

use opentelemetry_sdk::trace::Sampler;

/// A variable set to a value Toolwarden cannot use. Never carries a header value (they hold credentials).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{variable}={value:?}: {expected}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub expected: String,
}

fn invalid(variable: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError { variable, value: value.to_owned(), expected: expected.into() }
}

/// How spans are sampled and queued for export.
#[derive(Debug)]
pub struct Settings {
    pub sampler: Sampler,
    /// Spans waiting for export, at most; past it new spans are dropped (and counted).
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    /// Longest a span waits before its batch is sent.
    pub schedule_delay: Duration,
    /// Longest one export may take before its spans are given up (and counted as dropped).
    pub export_timeout: Duration,
}

/// `Ok(None)`: tracing is off. `Ok(Some(_))`: on, with these settings.
pub fn settings(var: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, ConfigError> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if let Some(v) = var("OTEL_SDK_DISABLED")
        && v.trim().eq_ignore_ascii_case("true")
    {
        return Ok(None);
    }
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let on = match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None => endpoint.is_some(),
        Some("otlp") => true,
        Some("none") => false,
        Some(other) => return Err(invalid("OTEL_TRACES_EXPORTER", other, "Toolwarden exports traces with `otlp` only (or `none` for no traces)")),
    };
    if !on {
        return Ok(None);
    }
    for variable in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(protocol) = var(variable) {
            if protocol.trim() != "http/protobuf" {
                return Err(invalid(
                    variable,
                    &protocol,
                    "Toolwarden sends OTLP over HTTP with protobuf only: set `http/protobuf` and point the endpoint at the collector's OTLP/HTTP port (usually 4318)",
                ));
            }
            break;
        }
    }
    let max_queue_size = count(&var, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
    let max_export_batch_size = count(&var, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.min(max_queue_size);
    Ok(Some(Settings {
        sampler: sampler(&var)?,
        max_queue_size,
        max_export_batch_size,
        schedule_delay: millis(&var, "OTEL_BSP_SCHEDULE_DELAY", 5000)?,
        export_timeout: millis(&var, "OTEL_BSP_EXPORT_TIMEOUT", 30_000)?,
    }))
}

fn count(var: &impl Fn(&str) -> Option<String>, name: &'static str, default: usize) -> Result<usize, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| invalid(name, &v, "expected a whole number above zero")),
    }
}

fn millis(var: &impl Fn(&str) -> Option<String>, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(Duration::from_millis(default)),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Duration::from_millis)
            .ok_or_else(|| invalid(name, &v, "expected milliseconds, a whole number above zero")),
    }
}

const SAMPLERS: &str = "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio";

fn sampler(var: &impl Fn(&str) -> Option<String>) -> Result<Sampler, ConfigError> {
    let ratio = || {
        let arg = var("OTEL_TRACES_SAMPLER_ARG");
        match arg.as_deref().map(str::trim) {
            None => Ok(1.0),
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| invalid("OTEL_TRACES_SAMPLER_ARG", text, "expected a ratio from 0 to 1")),
        }
    };
    let Some(name) = var("OTEL_TRACES_SAMPLER") else {
        return Ok(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    };
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?))),
        other => return Err(invalid("OTEL_TRACES_SAMPLER", other, format!("expected one of {SAMPLERS}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Option<Settings>, ConfigError> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        settings(move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_or_the_otlp_exporter_is_named() {
        assert!(with(&[]).unwrap().is_none());
        assert!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).unwrap().is_none(), "blank is unset");
        assert!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]).unwrap().is_some());
        assert!(with(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]).unwrap().is_some());
        assert!(with(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap().is_some());
        assert!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_TRACES_EXPORTER", "none")]).unwrap().is_none());
        assert!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "TRUE")]).unwrap().is_none());
        assert!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "false")]).unwrap().is_some());
    }

    #[test]
    fn the_defaults_are_the_specifications() {
        let s = with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).unwrap().unwrap();
        assert_eq!((s.max_queue_size, s.max_export_batch_size), (2048, 512));
        assert_eq!((s.schedule_delay, s.export_timeout), (Duration::from_secs(5), Duration::from_secs(30)));
        assert_eq!(format!("{:?}", s.sampler), format!("{:?}", Sampler::ParentBased(Box::new(Sampler::AlwaysOn))));
        let small = with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_BSP_MAX_QUEUE_SIZE", "8")]).unwrap().unwrap();
        assert_eq!(small.max_export_batch_size, 8, "a batch never exceeds the queue");
    }

    #[test]
    fn values_toolwarden_cannot_use_are_refused_by_name() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let refused = |extra: (&str, &str)| with(&[on, extra]).unwrap_err();
        assert_eq!(refused(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")).variable, "OTEL_EXPORTER_OTLP_PROTOCOL");
        assert!(refused(("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")).to_string().contains("4318"));
        assert!(with(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap().is_some());
        assert_eq!(refused(("OTEL_TRACES_EXPORTER", "zipkin")).variable, "OTEL_TRACES_EXPORTER");
        assert_eq!(refused(("OTEL_BSP_MAX_QUEUE_SIZE", "0")).variable, "OTEL_BSP_MAX_QUEUE_SIZE");
        assert_eq!(refused(("OTEL_BSP_SCHEDULE_DELAY", "5s")).to_string(), "OTEL_BSP_SCHEDULE_DELAY=\"5s\": expected milliseconds, a whole number above zero");
        assert!(refused(("OTEL_TRACES_SAMPLER", "sometimes")).expected.contains("parentbased_always_on"));
        let ratio = with(&[on, ("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")]).unwrap_err();
        assert_eq!(ratio.variable, "OTEL_TRACES_SAMPLER_ARG");
        let half = with(&[on, ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.5")]).unwrap().unwrap();
        assert!(matches!(half.sampler, Sampler::ParentBased(_)));
    }
}
