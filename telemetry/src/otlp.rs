//! OTLP/HTTP with protobuf, written directly from the recorded spans.
//!
//! The SDK's exporter takes `SpanData` and converts every span to the generated protobuf types before
//! encoding them: an allocation per id, name, attribute key and string value, all freed again after
//! the send. That was most of what tracing cost a call (docs/benchmarks.md#tracing-on-vs-off). Here
//! the export thread writes a batch's `ExportTraceServiceRequest` into one buffer, with the resource
//! and scope encoded once at start.
//!
//! Field numbers are those of `opentelemetry/proto/{collector/trace,trace,common,resource}/v1` (OTLP
//! 1.x); `otlp::tests` decodes the output with the generated types of `opentelemetry-proto`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;

use crate::trace::Span;

/// A finished span waiting for export: the [`Span`] the caller wrote and where it sits in its trace.
pub(crate) struct Finished {
    pub trace_id: TraceId,
    pub id: SpanId,
    /// `SpanId::INVALID` for a root without a caller.
    pub parent: SpanId,
    pub remote_parent: bool,
    pub span: Span,
}

/// Encodes batches for one resource and instrumentation scope.
pub(crate) struct Encoder {
    /// `Resource` and `InstrumentationScope` messages, encoded once.
    resource: Vec<u8>,
    resource_schema_url: String,
    scope: Vec<u8>,
    /// One span's encoding, reused from span to span.
    scratch: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new(resource: &Resource, scope_name: &str, scope_version: &str) -> Encoder {
        let mut encoded = Vec::new();
        for (key, value) in resource.iter() {
            key_value(&mut encoded, 1, key.as_str(), value);
        }
        let mut scope = Vec::new();
        string(&mut scope, 1, scope_name);
        string(&mut scope, 2, scope_version);
        Encoder {
            resource: encoded,
            resource_schema_url: resource.schema_url().unwrap_or_default().to_owned(),
            scope,
            scratch: Vec::new(),
        }
    }

    /// The body of one export: `ExportTraceServiceRequest { resource_spans: [ResourceSpans { resource,
    /// scope_spans: [ScopeSpans { scope, spans }], schema_url }] }`.
    pub(crate) fn encode(&mut self, batch: &[Finished]) -> Vec<u8> {
        let mut spans = Vec::with_capacity(batch.len() * 320);
        for finished in batch {
            self.scratch.clear();
            span(&mut self.scratch, finished);
            message(&mut spans, 2, &self.scratch);
        }
        let scope_spans_len = field_len(self.scope.len()) + spans.len();
        let schema_len = if self.resource_schema_url.is_empty() { 0 } else { field_len(self.resource_schema_url.len()) };
        let resource_spans_len = field_len(self.resource.len()) + field_len(scope_spans_len) + schema_len;
        let mut body = Vec::with_capacity(field_len(resource_spans_len));
        tag(&mut body, 1, LEN);
        varint(&mut body, resource_spans_len as u64);
        message(&mut body, 1, &self.resource);
        tag(&mut body, 2, LEN);
        varint(&mut body, scope_spans_len as u64);
        message(&mut body, 1, &self.scope);
        body.extend_from_slice(&spans);
        if !self.resource_schema_url.is_empty() {
            string(&mut body, 3, &self.resource_schema_url);
        }
        body
    }
}

/// `Span.flags`: the context's flags (sampled: only sampled spans are recorded) and whether the parent
/// is remote (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`, `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`).
fn flags(remote_parent: bool) -> u32 {
    0x01 | 0x100 | if remote_parent { 0x200 } else { 0 }
}

fn span(buf: &mut Vec<u8>, f: &Finished) {
    let s = &f.span;
    bytes(buf, 1, &f.trace_id.to_bytes());
    bytes(buf, 2, &f.id.to_bytes());
    if f.parent != SpanId::INVALID {
        bytes(buf, 4, &f.parent.to_bytes());
    }
    string(buf, 5, &s.name);
    let kind = match s.kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    tag(buf, 6, VARINT);
    varint(buf, kind);
    fixed64(buf, 7, nanos(s.start));
    fixed64(buf, 8, nanos(s.end.max(s.start)));
    for attribute in &s.attributes {
        attribute_field(buf, attribute);
    }
    if let Some(description) = &s.error {
        // Status { message = 2; code = 3 (STATUS_CODE_ERROR = 2) }
        tag(buf, 15, LEN);
        varint(buf, (field_len(description.len()) + 2) as u64);
        string(buf, 2, description);
        tag(buf, 3, VARINT);
        varint(buf, 2);
    }
    // flags = 16, fixed32
    tag(buf, 16, I32);
    buf.extend_from_slice(&flags(f.remote_parent).to_le_bytes());
}

fn attribute_field(buf: &mut Vec<u8>, attribute: &KeyValue) {
    key_value(buf, 9, attribute.key.as_str(), &attribute.value);
}

/// A `KeyValue { key = 1; value = 2 (AnyValue) }` as field `field`.
fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    // AnyValue: string_value = 1, bool_value = 2, int_value = 3, double_value = 4. Arrays are sent as
    // their text; no span of Toolwarden's has one.
    let text = match value {
        Value::Bool(_) | Value::I64(_) | Value::F64(_) => None,
        other => Some(other.as_str()),
    };
    let any_len = match (value, &text) {
        (_, Some(text)) => field_len(text.len()),
        (Value::I64(i), None) => 1 + varint_len(*i as u64),
        (Value::F64(_), None) => 9,
        _ => 2,
    };
    tag(buf, field, LEN);
    varint(buf, (field_len(key.len()) + field_len(any_len)) as u64);
    string(buf, 1, key);
    tag(buf, 2, LEN);
    varint(buf, any_len as u64);
    match (value, text) {
        (_, Some(text)) => string(buf, 1, &text),
        (Value::I64(i), None) => {
            tag(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        (Value::F64(f), None) => fixed64(buf, 4, f.to_bits()),
        (value, None) => {
            tag(buf, 2, VARINT);
            buf.push(u8::from(matches!(value, Value::Bool(true))));
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

fn tag(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(buf, u64::from(field << 3 | wire_type));
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes a length-delimited field of a small field number (< 16, a one-byte tag) takes.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

fn string(buf: &mut Vec<u8>, field: u32, text: &str) {
    bytes(buf, field, text.as_bytes());
}

fn message(buf: &mut Vec<u8>, field: u32, encoded: &[u8]) {
    bytes(buf, field, encoded);
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    tag(buf, field, I64);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// What a failed export attempt was, for the retry decision and the log line.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No answer: the connection failed (retried).
    Network(String),
    /// The collector answered with this status (429, 502, 503 and 504 are retried).
    Status(u16),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Network(e) => write!(f, "HTTP export failed: {e}"),
            SendError::Status(code) => write!(f, "HTTP export failed with status code: {code}"),
        }
    }
}

impl SendError {
    fn retryable(&self) -> bool {
        matches!(self, SendError::Network(_) | SendError::Status(429 | 502 | 503 | 504))
    }
}

/// Where and how batches are posted.
pub(crate) struct Sender {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    pub headers: reqwest::header::HeaderMap,
    /// One export's deadline, retries included (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
}

/// Retries after a failure that may pass, as the SDK's exporter does: at most three, backing off from
/// 100 ms, all within the export's deadline.
const RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl Sender {
    pub(crate) async fn send(&self, body: Vec<u8>) -> Result<(), String> {
        let body = bytes::Bytes::from(body);
        let attempts = async {
            let mut backoff = FIRST_BACKOFF;
            let mut attempt = 0;
            loop {
                match self.post(body.clone()).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.retryable() && attempt < RETRIES => {
                        attempt += 1;
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {} ms (OTLP timeout)", self.timeout.as_millis())),
        }
    }

    async fn post(&self, body: bytes::Bytes) -> Result<(), SendError> {
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Network(without_url(e)))?;
        let status = response.status();
        // Read the answer to the end, so the connection is kept for the next batch.
        let _ = response.bytes().await;
        if status.is_success() { Ok(()) } else { Err(SendError::Status(status.as_u16())) }
    }
}

/// A reqwest error's sentence without its URL (which could hold credentials).
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "network error"
    };
    match std::error::Error::source(&e) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message as _;

    fn finished(span: Span, parent: SpanId, remote: bool) -> Finished {
        Finished { trace_id: TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736), id: SpanId::from(0x00f0_67aa_0ba9_02b7), parent, remote_parent: remote, span }
    }

    #[test]
    fn batches_decode_as_otlp_with_every_field() {
        let resource = Resource::builder_empty().with_service_name("svc").build();
        let mut encoder = Encoder::new(&resource, "scope", "1.2.3");
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let end = start + Duration::from_micros(1500);
        let long = "x".repeat(300);
        let root = Span::new("tools/call t", start, end, vec![
            KeyValue::new("s", long.clone()),
            KeyValue::new("b", true),
            KeyValue::new("i", -5i64),
            KeyValue::new("big", 1i64 << 40),
            KeyValue::new("f", 0.5),
        ])
        .kind(SpanKind::Server)
        .error(Some("worker_failed".into()));
        let child = Span::new("decide", start, start, Vec::new());
        let body = encoder.encode(&[finished(root, SpanId::from(7), true), finished(child, SpanId::INVALID, false)]);
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();

        let resource_spans = &request.resource_spans[0];
        let service = &resource_spans.resource.as_ref().unwrap().attributes[0];
        assert_eq!((service.key.as_str(), service.value.as_ref().unwrap().value.clone()), ("service.name", Some(any_value::Value::StringValue("svc".into()))));
        let scope_spans = &resource_spans.scope_spans[0];
        let scope = scope_spans.scope.as_ref().unwrap();
        assert_eq!((scope.name.as_str(), scope.version.as_str()), ("scope", "1.2.3"));
        let [root, child] = &scope_spans.spans[..] else { panic!("two spans: {:?}", scope_spans.spans) };
        assert_eq!(root.trace_id, hex_bytes("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(root.span_id, hex_bytes("00f067aa0ba902b7"));
        assert_eq!(root.parent_span_id, hex_bytes("0000000000000007"));
        assert_eq!((root.name.as_str(), root.kind), ("tools/call t", 2));
        assert_eq!((root.start_time_unix_nano, root.end_time_unix_nano), (1_700_000_000_123_456_789, 1_700_000_000_124_956_789));
        assert_eq!(root.flags, 0x301);
        let status = root.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "worker_failed"));
        let values: Vec<_> = root.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref().unwrap().value.clone().unwrap())).collect();
        assert_eq!(values, vec![
            ("s", any_value::Value::StringValue(long)),
            ("b", any_value::Value::BoolValue(true)),
            ("i", any_value::Value::IntValue(-5)),
            ("big", any_value::Value::IntValue(1 << 40)),
            ("f", any_value::Value::DoubleValue(0.5)),
        ]);
        assert!(child.parent_span_id.is_empty() && child.attributes.is_empty() && child.status.is_none());
        assert_eq!((child.kind, child.flags), (1, 0x101));
    }

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
        }
    }
}
