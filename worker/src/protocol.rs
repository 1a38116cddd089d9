//! The wire protocol between the gateway and a worker (`docs/worker-protocol.md`). Plain serde types so
//! the gateway can use them without pulling in the worker's runtimes.

use serde::{Deserialize, Serialize};

/// Environment variable holding the [`WorkerToolSpec`] JSON (in a pod and in the local sandbox).
pub const SPEC_ENV: &str = "TOOLWARDEN_TOOL_SPEC";
/// Path of the call endpoint.
pub const CALL_PATH: &str = "/v1/call";
/// Path of the health endpoint (no authentication: the kubelet probes it).
pub const HEALTH_PATH: &str = "/healthz";
/// Largest request body the worker reads.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Where the worker finds the value of the tool's n-th credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum CredentialSource {
    /// Already in the worker's environment under this name (passed on to exec/mcp children).
    Env(String),
    /// A file (mounted Secret key); read at call time, never logged.
    Path(String),
}

/// `POST /v1/call` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallRequest {
    /// The gateway's call id, echoed in logs.
    pub call_id: String,
    /// The tool's arguments, already validated by the gateway.
    pub arguments: serde_json::Value,
    /// Run the tool's preview (dry-run) variant instead of the real call.
    #[serde(default)]
    pub preview: bool,
    /// W3C `traceparent` of the gateway's span for this call, when the call is traced: the `http` runtime
    /// sends it as a header, the `mcp` runtime as `params._meta.traceparent`. Absent when tracing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl CallRequest {
    /// A request without a trace.
    pub fn new(call_id: impl Into<String>, arguments: serde_json::Value, preview: bool) -> CallRequest {
        CallRequest { call_id: call_id.into(), arguments, preview, traceparent: None }
    }

    /// The request's `traceparent` when it has the W3C version-00 shape (55 characters, lower-case hex,
    /// non-zero ids); anything else is not passed on, so it can never reach a header or an upstream as
    /// something else.
    pub fn valid_traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref().filter(|t| is_traceparent(t))
    }
}

/// Whether `value` is a version-00 W3C `traceparent`: `00-` 32 hex `-` 16 hex `-` 2 hex, lower case, with
/// neither id all zeros.
pub fn is_traceparent(value: &str) -> bool {
    let b = value.as_bytes();
    let hex = |range: std::ops::Range<usize>| b[range].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    let nonzero = |range: std::ops::Range<usize>| b[range].iter().any(|c| *c != b'0');
    b.len() == 55
        && b.starts_with(b"00-")
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
        && nonzero(3..35)
        && nonzero(36..52)
}

/// `200 OK` body of `POST /v1/call`: the call ran (it may still have failed as a tool, see `is_error`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallResult {
    /// Text output (stdout, HTTP body, upstream text content), cut at the tool's output cap.
    pub content: String,
    /// Structured output when the tool has an output schema and the output parsed as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<serde_json::Value>,
    /// The tool failed (exit code ≠ 0, HTTP status ≥ 400, upstream isError, timeout...).
    #[serde(default)]
    pub is_error: bool,
    /// Machine-readable reason when `is_error`: `exit_status`, `timeout`, `http_status`, `upstream_error`,
    /// `egress_denied`, `connect_failed`, `spawn_failed`, `upstream_crashed`, `upstream_protocol`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Output bytes the tool produced (before truncation).
    pub output_bytes: u64,
    /// Whether `content` was cut at the cap, and by how many bytes.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub truncated_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The HTTP status of an `http` tool's final response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    pub duration_ms: u64,
    /// A credential of the tool was found in the output (or an error message) and replaced by
    /// `[redacted]` before the result left the worker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

/// Body of every non-200 answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// `unauthorized` (401), `bad_request` (400), `too_large` (413), `busy` (429), `not_found` (404),
    /// `invalid_arguments` (422: arguments do not fit a template), `internal` (500).
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody { error: ErrorDetail { code: code.into(), message: message.into() } }
    }
}

/// `GET /healthz` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: String,
    /// `name` of the tool this worker serves.
    pub tool: String,
    pub in_flight: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_version_00_traceparent_is_passed_on() {
        assert!(is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        for bad in [
            "",
            "00-1-2-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
            "00-4bf92f3577b34da6a3ce929d0e0e4736+00f067aa0ba902b7-01",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
        let request = CallRequest { traceparent: Some("00-1-2-01".into()), ..CallRequest::new("c", serde_json::json!({}), false) };
        assert_eq!(request.valid_traceparent(), None);
    }

    #[test]
    fn an_untraced_request_is_written_as_before() {
        let json = serde_json::to_string(&CallRequest::new("c-1", serde_json::json!({}), false)).unwrap();
        assert_eq!(json, r#"{"callId":"c-1","arguments":{},"preview":false}"#);
    }
}
