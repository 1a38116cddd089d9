//! The three runtimes behind `POST /v1/call`.

pub mod exec;
pub mod http;
pub mod mcp;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::process::ChildLimits;
use crate::protocol::{CallRequest, CallResult};
use crate::redact::Redactor;
use crate::spec::{Kind, ToolSpec};

/// Why a call did not run (anything that ran, even failing, is a [`CallResult`]).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// 422: the arguments do not fit the tool's templates.
    #[error("{0}")]
    InvalidArguments(String),
    /// 400: the request asks for something this tool does not have (a preview it does not define).
    #[error("{0}")]
    BadRequest(String),
    /// 500: the worker could not do its own part (reading a credential, a bug).
    #[error("{0}")]
    Internal(String),
}

/// Everything a call needs: the spec, the session's private directory, the child limits, and the
/// runtime's long-lived state (the MCP upstream, the TLS configuration).
pub struct Tool {
    pub spec: ToolSpec,
    pub kind: Kind,
    pub session_dir: PathBuf,
    pub limits: ChildLimits,
    mcp: mcp::Upstream,
    http: http::Client,
}

impl Tool {
    pub fn new(spec: ToolSpec, session_dir: PathBuf, max_processes: Option<u64>) -> Result<Tool, String> {
        let kind = spec.kind()?;
        for i in 0..spec.credentials.len() {
            if crate::credentials::value(&spec, i).is_ok_and(|v| v.len() < crate::redact::MIN_SECRET_BYTES) {
                eprintln!(
                    "toolwarden-worker: tool {}: credentials[{i}] is shorter than {} bytes: it cannot be told apart from \
                     ordinary text, so its value is not redacted from results",
                    spec.name,
                    crate::redact::MIN_SECRET_BYTES
                );
            }
        }
        let limits = ChildLimits::for_spec(&spec, max_processes);
        Ok(Tool { spec, kind, session_dir, limits, mcp: mcp::Upstream::default(), http: http::Client::new() })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.spec.timeout_ms)
    }

    pub fn cap(&self) -> usize {
        usize::try_from(self.spec.max_output_bytes).unwrap_or(usize::MAX)
    }

    pub async fn call(&self, request: &CallRequest) -> Result<CallResult, CallError> {
        let started = Instant::now();
        let redactor = self.redactor()?;
        let mut result = match self.kind {
            _ if request.preview => exec::preview(self, request, &redactor).await?,
            Kind::Exec => exec::call(self, request, &redactor).await?,
            Kind::Http => http::call(self, &self.http, request, &redactor).await?,
            Kind::Mcp => mcp::call(self, &self.mcp, request, &redactor).await?,
        };
        result.duration_ms = started.elapsed().as_millis() as u64;
        Ok(result)
    }

    /// Every credential value of the tool, read now (as the runtimes read them for this call).
    fn redactor(&self) -> Result<Redactor, CallError> {
        let values = (0..self.spec.credentials.len())
            .map(|i| crate::credentials::value(&self.spec, i))
            .collect::<Result<Vec<String>, String>>()
            .map_err(CallError::Internal)?;
        Ok(Redactor::new(&values))
    }

    /// Stops long-lived children (the MCP upstream) when the worker exits.
    pub async fn shutdown(&self) {
        self.mcp.stop().await;
    }

    /// Structured output: only when the tool declares an output schema and the text is a JSON object.
    pub fn structured(&self, text: &str) -> Option<serde_json::Value> {
        self.spec.output_schema.as_ref()?;
        serde_json::from_str::<serde_json::Value>(text.trim()).ok().filter(|v| v.is_object())
    }
}

/// A failed result that ran nothing or was stopped: `code` is the machine-readable reason.
pub fn failure(code: &str, message: impl Into<String>) -> CallResult {
    CallResult { content: message.into(), is_error: true, error_code: Some(code.into()), ..CallResult::default() }
}

/// "10s", "1.5s", "250ms": how a timeout reads in a message.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else if ms > 1000 { format!("{:.1}s", ms as f64 / 1000.0) } else { format!("{ms}ms") }
}
