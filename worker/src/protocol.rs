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
