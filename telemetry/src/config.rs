//! Whether tracing is on, and how, from the standard OpenTelemetry variables. A pure function of a
//! variable lookup, so every rule is tested without touching the process environment.
//!
//! Tracing is off unless an OTLP endpoint is named (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) or `OTEL_TRACES_EXPORTER=otlp` asks for the default one; the
//! standard switches `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` turn it off. Where spans
//! go and with which headers and deadline is [`destination`].

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
    /// Spans per export, at most (a trace is never split: one with more spans goes alone).
    pub max_export_batch_size: usize,
    /// The interval between two exports of what has gathered (a full batch goes at once).
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

/// Where spans are posted, as the OTLP exporter variables say (`…_TRACES_…` wins over the general one).
pub struct Destination {
    pub url: reqwest::Url,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`); they may hold credentials: never logged.
    pub headers: reqwest::header::HeaderMap,
    /// One export's deadline, retries included.
    pub timeout: Duration,
}

/// The destination from the variables; `endpoint`, when given, is the full URL and wins over them.
pub fn destination(var: impl Fn(&str) -> Option<String>, endpoint: Option<&str>) -> Result<Destination, ConfigError> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let (variable, url) = match (endpoint, var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        (Some(url), _, _) => ("endpoint", url.to_owned()),
        (None, Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.trim().to_owned()),
        (None, None, Some(base)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{}/v1/traces", base.trim().trim_end_matches('/'))),
        (None, None, None) => ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318/v1/traces".to_owned()),
    };
    let url = reqwest::Url::parse(&url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| invalid(variable, &url, "expected an http:// or https:// URL of the collector"))?;
    for variable in ["OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"] {
        if let Some(compression) = var(variable) {
            if compression.trim() != "none" {
                return Err(invalid(variable, &compression, "Toolwarden sends OTLP uncompressed: `none` only"));
            }
            break;
        }
    }
    let headers = match ["OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"].into_iter().find_map(|v| Some((v, var(v)?))) {
        Some((variable, list)) => headers(&list).ok_or_else(|| invalid(variable, "(not shown)", "expected key=value pairs separated by commas, values percent-encoded"))?,
        None => reqwest::header::HeaderMap::new(),
    };
    let timeout = match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
        Some(_) => millis(&var, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 10_000)?,
        None => millis(&var, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?,
    };
    Ok(Destination { url, headers, timeout })
}

/// `key=value,key2=value2` with percent-encoded values (the W3C baggage format the variables use).
fn headers(list: &str) -> Option<reqwest::header::HeaderMap> {
    let mut map = reqwest::header::HeaderMap::new();
    for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair.split_once('=')?;
        let name = reqwest::header::HeaderName::from_bytes(key.trim().as_bytes()).ok()?;
        let value = reqwest::header::HeaderValue::from_bytes(&percent_decode(value.trim())?).ok()?;
        map.append(name, value);
    }
    Some(map)
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
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

    fn destination_of(pairs: &[(&str, &str)]) -> Result<Destination, ConfigError> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        destination(move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()), None)
    }

    #[test]
    fn the_destination_follows_the_exporter_variables() {
        let d = destination_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).unwrap();
        assert_eq!((d.url.as_str(), d.timeout), ("http://c:4318/v1/traces", Duration::from_secs(10)));
        let d = destination_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t/custom")]).unwrap();
        assert_eq!(d.url.as_str(), "https://t/custom");
        assert_eq!(destination_of(&[]).unwrap().url.as_str(), "http://localhost:4318/v1/traces");
        let d = destination_of(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret, x-tenant=a"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]).unwrap();
        assert_eq!((d.headers["authorization"].as_bytes(), d.headers["x-tenant"].as_bytes()), (&b"Bearer s3cret"[..], &b"a"[..]));
        assert_eq!(d.timeout, Duration::from_millis(2500));
        let d = destination_of(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=1"), ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2")]).unwrap();
        assert!(d.headers.get("a").is_none() && d.headers["b"] == "2");
        let endpoints = |name: &str| name.contains("ENDPOINT").then(|| "http://ignored:1".to_owned());
        let explicit = destination(endpoints, Some("http://127.0.0.1:9/v1/traces")).unwrap();
        assert_eq!(explicit.url.as_str(), "http://127.0.0.1:9/v1/traces");
    }

    #[test]
    fn unusable_destinations_are_refused_without_showing_headers() {
        let refused = |pairs: &[(&str, &str)]| destination_of(pairs).err().expect("refused");
        assert_eq!(refused(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]).variable, "OTEL_EXPORTER_OTLP_ENDPOINT");
        assert_eq!(refused(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]).variable, "OTEL_EXPORTER_OTLP_COMPRESSION");
        let bad = refused(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization:Bearer s3cret")]);
        assert!(bad.variable == "OTEL_EXPORTER_OTLP_HEADERS" && !bad.to_string().contains("s3cret"), "{bad}");
        assert_eq!(refused(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).variable, "OTEL_EXPORTER_OTLP_TIMEOUT");
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
