//! Worker runtimes: where a session's tool calls run. `local` starts sandboxed worker processes on this
//! machine; `kubernetes` (see `crate::kubernetes`) starts worker pods. The gateway only sees this trait.

use std::time::Duration;

use futures::future::BoxFuture;
pub use tokio_util::sync::CancellationToken;
use toolwarden_core::config::ToolConfig;
use toolwarden_core::resources::PendingApproval;
use toolwarden_worker::protocol::{CallRequest, CallResult};

pub mod kubernetes;
pub mod local;
pub mod worker_client;

/// Who a session belongs to, given to the runtime when the session starts.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub namespace: String,
    /// The gateway's session id (the `Mcp-Session-Id`, or the derived id of a stateless client).
    pub id: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub client_name: String,
    pub client_version: String,
    pub protocol_version: Option<String>,
}

/// A runtime failure, specific enough to show the caller; `code` is also the metric and audit label.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    /// `worker_start_failed`, `worker_died`, `worker_busy`, `worker_timeout`, `sandbox_unavailable`,
    /// `image_pull`, `start_timeout`, `quota_exceeded`, ... (kubernetes codes come from `kubernetes::Error::code`).
    pub code: &'static str,
    pub message: String,
    /// Whether retrying the same call later may succeed.
    pub transient: bool,
}

impl RuntimeError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        RuntimeError { code, message: message.into(), transient: false }
    }
}

/// The code of a call the client cancelled (`notifications/cancelled`) before its worker answered.
pub const CANCELLED: &str = "cancelled";

/// Runs a call's exchange with its worker unless `cancel` fires first. Dropping the exchange closes its
/// connection, and the worker then stops the call with every process it started. Runtimes use it for
/// the exchange only: a worker being started is left to finish starting, so nothing is left half made.
pub async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    exchange: impl std::future::Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    tokio::select! {
        biased;
        outcome = exchange => outcome,
        () = cancel.cancelled() => Err(RuntimeError::new(CANCELLED, "the client cancelled the call; its worker stopped it")),
    }
}

/// Where calls run. Implementations start a worker per (session, tool) on first use and stop a session's
/// workers when it ends. `end_session` may be called more than once for the same session.
pub trait WorkerRuntime: Send + Sync + 'static {
    /// `"local"` or `"kubernetes"`: the `runtime` metric label.
    fn name(&self) -> &'static str;
    /// A session began (the kubernetes runtime writes its McpSession here).
    fn start_session(&self, session: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Runs one call on this session's worker for `tool`, starting the worker if needed. Implementations
    /// bound both steps themselves: the start by [`WorkerRuntime::start_timeout`], the call by the tool's
    /// timeout plus a margin; each with its own error code (`start_timeout`, `worker_timeout`). When
    /// `cancel` fires during the exchange with the worker, the call is stopped and ends with
    /// [`CANCELLED`] (see [`unless_cancelled`]).
    fn call<'a>(
        &'a self,
        session_id: &'a str,
        tool: &'a ToolConfig,
        request: CallRequest,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CallResult, RuntimeError>>;
    /// Longest a worker may take to start; a tool's first call in a session may wait that long first.
    fn start_timeout(&self) -> Duration;
    /// Ends a session and stops its workers. Idempotent.
    fn end_session<'a>(&'a self, session_id: &'a str, reason: &'static str) -> BoxFuture<'a, ()>;
    /// Stops every worker (gateway shutdown).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    /// Frees what quiet workers hold in the gateway (connections unused for a while). The gateway
    /// calls it every few seconds; a no-op where there is nothing to free.
    fn trim_idle(&self) {}

    // Session bookkeeping the kubernetes runtime mirrors onto the McpSession; no-ops elsewhere.

    /// One decided call: `denied` when refused; `tainted_by` names the untrusted tool whose output was read.
    fn record_call(&self, _session_id: &str, _denied: bool, _tainted_by: Option<&str>) {}
    /// The session was used (resets its idle timer).
    fn touch(&self, _session_id: &str) {}
    /// The session's pending human approvals, kept on the McpSession so any gateway replica can decide them.
    fn set_pending_approvals(&self, _session_id: &str, _approvals: Vec<PendingApproval>) {}
    /// Records, where every gateway replica sees it, that a confirm token or an approval of the session
    /// is used, before its call runs: a replica that takes the session over refuses it again. `Err`: not
    /// recorded, and the call must not run. With one gateway (the local runtime) its memory is the
    /// record: nothing to write.
    fn record_use<'a>(&'a self, _session_id: &'a str, _used: &'a SessionUse) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    /// Sessions the runtime ended on its own (`kubectl delete mcpsession`, idle, max lifetime); the
    /// gateway drops them and refuses their id afterwards. `None` when the runtime never does.
    fn subscribe_ended(&self) -> Option<tokio::sync::broadcast::Receiver<EndedSession>> {
        None
    }
    /// Approvals of `session_id` that someone decided elsewhere (another gateway replica, through the
    /// McpSession); the gateway folds them into its own before deciding a retried call.
    fn remote_decisions(&self, _session_id: &str) -> Vec<PendingApproval> {
        Vec::new()
    }
    /// Pending approvals held by any replica's sessions in `namespaces` (read from the McpSessions).
    fn shared_approvals<'a>(&'a self, _namespaces: &'a [String]) -> BoxFuture<'a, Result<Vec<SharedApproval>, RuntimeError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Decides a shared approval on its McpSession; `None` when it was no longer pending.
    fn decide_shared_approval<'a>(
        &'a self,
        _approval: &'a SharedApproval,
        _approve: bool,
        _decided_by: &'a str,
        _reason: Option<String>,
    ) -> BoxFuture<'a, Result<Option<PendingApproval>, RuntimeError>> {
        Box::pin(async { Ok(None) })
    }
    /// A namespace's tools changed (warm pools follow them; workers of changed tools are replaced).
    fn tools_changed<'a>(&'a self, _namespace: &'a str, _tools: &'a [ToolConfig]) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    // Sessions across gateway replicas (kubernetes only; see `crate::failover`).

    /// This gateway's id, when sessions may live on other replicas.
    fn gateway_id(&self) -> Option<&str> {
        None
    }
    /// `host:port` other replicas forward this gateway's sessions' requests to.
    fn advertise_address(&self) -> Option<&str> {
        None
    }
    /// Where the session `id` of `namespace` lives, when this gateway does not hold it in memory.
    fn locate_session<'a>(&'a self, _namespace: &'a str, _id: &'a str) -> BoxFuture<'a, Result<Option<SessionHome>, RuntimeError>> {
        Box::pin(async { Ok(None) })
    }
    /// Continues a located session here; returns the status it recorded (counters, taint, approvals).
    fn take_over<'a>(&'a self, _home: &'a SessionHome, _id: &'a str) -> BoxFuture<'a, Result<McpSessionStatus, RuntimeError>> {
        Box::pin(async { Err(RuntimeError::new("session_moved", "this gateway keeps its sessions in memory only")) })
    }
    /// Whether the replica that listened at `address` is known to be gone (its pod deleted).
    fn holder_gone<'a>(&'a self, _address: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
}

pub use crate::kubernetes::failover::SessionHome;
pub use crate::kubernetes::used::SessionUse;
use toolwarden_core::resources::McpSessionStatus;

/// A session the runtime ended by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndedSession {
    pub namespace: String,
    pub id: String,
    /// `deleted`, `idle`, `expired`, `shutdown`, `moved` (another replica continues it).
    pub reason: &'static str,
}

/// A pending approval as the McpSession of whichever replica holds the session shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedApproval {
    pub namespace: String,
    /// McpSession name.
    pub session: String,
    /// Who asked for the call (the session's subject).
    pub subject: String,
    pub approval: PendingApproval,
}

/// A runtime for tests whose sessions make no calls: sessions start and end, a call fails to start.
#[cfg(test)]
pub(crate) struct NoWorkers;

#[cfg(test)]
impl WorkerRuntime for NoWorkers {
    fn name(&self) -> &'static str {
        "none"
    }
    fn start_session(&self, _: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    fn call<'a>(&'a self, _: &'a str, _: &'a ToolConfig, _: CallRequest, _: &'a CancellationToken) -> BoxFuture<'a, Result<CallResult, RuntimeError>> {
        Box::pin(async { Err(RuntimeError::new("worker_start_failed", "no workers in this test")) })
    }
    fn start_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn end_session<'a>(&'a self, _: &'a str, _: &'static str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
