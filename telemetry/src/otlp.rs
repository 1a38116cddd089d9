//! OTLP/HTTP with protobuf, written directly as spans are recorded.
//!
//! The SDK's exporter takes `SpanData` and converts every span to the generated protobuf types before
//! encoding them: an allocation per id, name, attribute key and string value, all freed again after
//! the send. Here a call's spans are written as protobuf while the call runs, each attribute straight
//! from the value it describes (borrowed, never copied into an owned attribute first), into one buffer
//! per trace; a finished trace's bytes join its batch, and the export thread only puts the envelope
//! (resource and scope, encoded once at start) around a batch and posts it
//! (docs/benchmarks.md#tracing-on-vs-off).
//!
//! Field numbers are those of `opentelemetry/proto/{collector/trace,trace,common,resource}/v1` (OTLP
//! 1.x); `otlp::tests` decodes the output with the generated types of `opentelemetry-proto`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::Value;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::Resource;

use crate::wire::{self, LEN, VARINT, field_len, fixed32, fixed64, string, tag, varint, varint_len};

/// Where a span sits in its trace and what it is, written before its attributes.
pub(crate) struct SpanHead<'a> {
    pub trace_id: TraceId,
    /// `SpanId::INVALID` for a root without a caller.
    pub parent: SpanId,
    pub remote_parent: bool,
    pub name: &'a str,
    /// Appended to `name` after a space: what the span acts on (`tools/call {tool}`).
    pub object: Option<&'a str>,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// Writes one span's attributes, and its kind, id and failure when they are not the defaults, as the
/// span is recorded. Values are borrowed: nothing is copied but into the trace's buffer.
pub struct SpanWriter<'b> {
    buf: &'b mut Vec<u8>,
    kind: SpanKind,
    id: Option<SpanId>,
    failed: bool,
}

impl SpanWriter<'_> {
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        let at = wire::open(self.buf, 9);
        string(self.buf, 1, key);
        // AnyValue { string_value = 1 }
        tag(self.buf, 2, LEN);
        varint(self.buf, field_len(value.len()) as u64);
        string(self.buf, 1, value);
        wire::close(self.buf, at);
        self
    }

    /// [`SpanWriter::str`] when there is a value; nothing when there is none.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(value) = value {
            self.str(key, value);
        }
        self
    }

    /// A string attribute written as `value` formats itself (JSON, joined lists), with no string between.
    pub fn display(&mut self, key: &str, value: &dyn std::fmt::Display) -> &mut Self {
        let at = wire::open(self.buf, 9);
        string(self.buf, 1, key);
        let any = wire::open(self.buf, 2);
        let text = wire::open(self.buf, 1);
        // Writing into a Vec cannot fail; a Display impl that fails leaves what it wrote.
        let _ = write!(wire::Text(self.buf), "{value}");
        wire::close(self.buf, text);
        wire::close(self.buf, any);
        wire::close(self.buf, at);
        self
    }

    /// A string attribute whose UTF-8 bytes `write` appends straight into the span (a serializer's
    /// output, say), with no string or formatter between. `write` must append valid UTF-8.
    pub fn written(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        let at = wire::open(self.buf, 9);
        string(self.buf, 1, key);
        let any = wire::open(self.buf, 2);
        let text = wire::open(self.buf, 1);
        write(self.buf);
        wire::close(self.buf, text);
        wire::close(self.buf, any);
        wire::close(self.buf, at);
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        // AnyValue { bool_value = 2 }
        self.scalar(key, 2, u64::from(value))
    }

    pub fn int(&mut self, key: &str, value: i64) -> &mut Self {
        // AnyValue { int_value = 3 }
        self.scalar(key, 3, value as u64)
    }

    fn scalar(&mut self, key: &str, any_field: u32, value: u64) -> &mut Self {
        let any_len = 1 + varint_len(value);
        tag(self.buf, 9, LEN);
        varint(self.buf, (field_len(key.len()) + field_len(any_len)) as u64);
        string(self.buf, 1, key);
        tag(self.buf, 2, LEN);
        varint(self.buf, any_len as u64);
        tag(self.buf, any_field, VARINT);
        varint(self.buf, value);
        self
    }

    /// The span's kind (`Internal` unless set).
    pub fn kind(&mut self, kind: SpanKind) -> &mut Self {
        self.kind = kind;
        self
    }

    /// The span's id, chosen in advance (`Trace::new_span_id`); a fresh one unless set.
    pub fn id(&mut self, id: SpanId) -> &mut Self {
        self.id = Some(id);
        self
    }

    /// Marks the span failed, with `description`; only the first call counts.
    pub fn error(&mut self, description: &str) -> &mut Self {
        if !self.failed {
            self.failed = true;
            // Status { message = 2; code = 3 (STATUS_CODE_ERROR = 2) }
            tag(self.buf, 15, LEN);
            varint(self.buf, (field_len(description.len()) + 2) as u64);
            string(self.buf, 2, description);
            tag(self.buf, 3, VARINT);
            varint(self.buf, 2);
        }
        self
    }
}

/// Appends one span to `buf` as a `ScopeSpans.spans` field: `head`, then what `write` adds, then its id
/// (`fresh_id` unless `write` chose one), kind and flags.
pub(crate) fn span(buf: &mut Vec<u8>, head: &SpanHead<'_>, fresh_id: impl FnOnce() -> SpanId, write: impl FnOnce(&mut SpanWriter<'_>)) {
    let at = wire::open(buf, 2);
    wire::bytes(buf, 1, &head.trace_id.to_bytes());
    if head.parent != SpanId::INVALID {
        wire::bytes(buf, 4, &head.parent.to_bytes());
    }
    match head.object {
        None => string(buf, 5, head.name),
        Some(object) => {
            tag(buf, 5, LEN);
            varint(buf, (head.name.len() + 1 + object.len()) as u64);
            buf.extend_from_slice(head.name.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(object.as_bytes());
        }
    }
    fixed64(buf, 7, nanos(head.start));
    fixed64(buf, 8, nanos(head.end.max(head.start)));
    let mut writer = SpanWriter { buf, kind: SpanKind::Internal, id: None, failed: false };
    write(&mut writer);
    let SpanWriter { buf, kind, id, .. } = writer;
    wire::bytes(buf, 2, &id.unwrap_or_else(fresh_id).to_bytes());
    let kind = match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    tag(buf, 6, VARINT);
    varint(buf, kind);
    fixed32(buf, 16, flags(head.remote_parent));
    wire::close(buf, at);
}

/// `Span.flags`: the context's flags (sampled: only sampled spans are recorded) and whether the parent
/// is remote (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`, `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`).
fn flags(remote_parent: bool) -> u32 {
    0x01 | 0x100 | if remote_parent { 0x200 } else { 0 }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The envelope of every export, for one resource and instrumentation scope: `ExportTraceServiceRequest {
/// resource_spans: [ResourceSpans { resource, scope_spans: [ScopeSpans { scope, spans }], schema_url }] }`.
pub(crate) struct Envelope {
    /// `Resource` and `InstrumentationScope` messages, encoded once.
    resource: Vec<u8>,
    schema_url: String,
    scope: Vec<u8>,
}

impl Envelope {
    pub(crate) fn new(resource: &Resource, scope_name: &str, scope_version: &str) -> Envelope {
        let mut encoded = Vec::new();
        for (key, value) in resource.iter() {
            resource_attribute(&mut encoded, key.as_str(), value);
        }
        let mut scope = Vec::new();
        string(&mut scope, 1, scope_name);
        string(&mut scope, 2, scope_version);
        Envelope { resource: encoded, schema_url: resource.schema_url().unwrap_or_default().to_owned(), scope }
    }

    /// Bytes a batch keeps free before its spans, where [`Envelope::wrap`] writes the envelope's start.
    pub(crate) fn headroom(&self) -> usize {
        1 + 10 + field_len(self.resource.len()) + 1 + 10 + field_len(self.scope.len())
    }

    /// Makes `batch` (`headroom` bytes, then spans written by [`span`]) an export's body: returns where
    /// the body starts in it.
    pub(crate) fn wrap(&self, batch: &mut Vec<u8>) -> usize {
        let headroom = self.headroom();
        let spans_len = batch.len() - headroom;
        let scope_spans_len = field_len(self.scope.len()) + spans_len;
        let schema_len = if self.schema_url.is_empty() { 0 } else { field_len(self.schema_url.len()) };
        let resource_spans_len = field_len(self.resource.len()) + field_len(scope_spans_len) + schema_len;
        if !self.schema_url.is_empty() {
            string(batch, 3, &self.schema_url);
        }
        let mut head = Vec::with_capacity(headroom);
        tag(&mut head, 1, LEN);
        varint(&mut head, resource_spans_len as u64);
        wire::bytes(&mut head, 1, &self.resource);
        tag(&mut head, 2, LEN);
        varint(&mut head, scope_spans_len as u64);
        wire::bytes(&mut head, 1, &self.scope);
        let start = headroom - head.len();
        batch[start..headroom].copy_from_slice(&head);
        start
    }
}

/// A resource attribute, `KeyValue { key = 1; value = 2 (AnyValue) }` as `Resource.attributes` (1).
fn resource_attribute(buf: &mut Vec<u8>, key: &str, value: &Value) {
    let at = wire::open(buf, 1);
    string(buf, 1, key);
    let any = wire::open(buf, 2);
    match value {
        Value::Bool(b) => {
            tag(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            tag(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => fixed64(buf, 4, f.to_bits()),
        // Arrays are sent as their text; no resource of Toolwarden's has one.
        other => string(buf, 1, &other.as_str()),
    }
    wire::close(buf, any);
    wire::close(buf, at);
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
    pub(crate) async fn send(&self, body: bytes::Bytes) -> Result<(), String> {
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

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;

    fn head<'a>(name: &'a str, object: Option<&'a str>, parent: SpanId, remote: bool, start: SystemTime, end: SystemTime) -> SpanHead<'a> {
        SpanHead { trace_id: TraceId::from(TRACE), parent, remote_parent: remote, name, object, start, end }
    }

    fn decode(envelope: &Envelope, mut batch: Vec<u8>) -> ExportTraceServiceRequest {
        let start = envelope.wrap(&mut batch);
        ExportTraceServiceRequest::decode(&batch[start..]).unwrap()
    }

    #[test]
    fn batches_decode_as_otlp_with_every_field() {
        let resource = Resource::builder_empty().with_service_name("svc").build();
        let envelope = Envelope::new(&resource, "scope", "1.2.3");
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let end = start + Duration::from_micros(1500);
        let long = "x".repeat(300);
        let json = serde_json::json!({"text": "hello", "n": [1, 2]});
        let mut batch = vec![0; envelope.headroom()];
        span(&mut batch, &head("tools/call", Some("t"), SpanId::from(7), true, start, end), || SpanId::from(0x00f0_67aa_0ba9_02b7), |s| {
            s.str("s", &long).bool("b", true).int("i", -5).int("big", 1 << 40).opt_str("none", None).opt_str("some", Some("v"));
            s.display("json", &json).kind(SpanKind::Server).error("worker_failed").error("second");
            s.written("written", |buf| serde_json::to_writer(buf, &json).unwrap());
        });
        span(&mut batch, &head("decide", None, SpanId::INVALID, false, start, start), || unreachable!("the id was chosen"), |s| {
            s.id(SpanId::from(9));
        });
        let request = decode(&envelope, batch);

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
        assert_eq!((status.code, status.message.as_str()), (2, "worker_failed"), "the first error counts");
        let values: Vec<_> = root.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref().unwrap().value.clone().unwrap())).collect();
        assert_eq!(values, vec![
            ("s", any_value::Value::StringValue(long)),
            ("b", any_value::Value::BoolValue(true)),
            ("i", any_value::Value::IntValue(-5)),
            ("big", any_value::Value::IntValue(1 << 40)),
            ("some", any_value::Value::StringValue("v".into())),
            ("json", any_value::Value::StringValue(json.to_string())),
            ("written", any_value::Value::StringValue(json.to_string())),
        ]);
        assert_eq!(child.span_id, hex_bytes("0000000000000009"));
        assert!(child.parent_span_id.is_empty() && child.attributes.is_empty() && child.status.is_none());
        assert_eq!((child.name.as_str(), child.kind, child.flags), ("decide", 1, 0x101));
    }

    #[test]
    fn an_empty_batch_and_a_large_one_decode() {
        let resource = Resource::builder_empty().with_service_name("svc").with_schema_url([], "https://opentelemetry.io/schemas/1.0.0").build();
        let envelope = Envelope::new(&resource, "scope", "1");
        let request = decode(&envelope, vec![0; envelope.headroom()]);
        assert!(request.resource_spans[0].scope_spans[0].spans.is_empty());
        assert_eq!(request.resource_spans[0].schema_url, "https://opentelemetry.io/schemas/1.0.0");

        // Long enough that every envelope length takes three bytes.
        let mut batch = vec![0; envelope.headroom()];
        let now = SystemTime::now();
        for i in 0..1000 {
            span(&mut batch, &head("s", None, SpanId::INVALID, false, now, now), || SpanId::from(i + 1), |s| {
                s.int("i", i as i64);
            });
        }
        let request = decode(&envelope, batch);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 1000);
        assert_eq!(spans[999].span_id, 1000u64.to_be_bytes());
        assert_eq!(request.resource_spans[0].schema_url, "https://opentelemetry.io/schemas/1.0.0");
    }

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }
}
