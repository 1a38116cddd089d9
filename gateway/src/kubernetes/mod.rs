//! The `kubernetes` worker runtime: one sandboxed worker pod per (session, tool), `McpSession` objects
//! that operators see with `kubectl get mcpsessions`, warm pools, and recovery after a gateway restart.
//!
//! `pod` builds objects (pure); `pods` and `session_store` do the API calls; `runtime` ties them to the
//! gateway's sessions; `warm_pool` and `restart` are the two background duties.

use std::time::Duration;

pub mod failover;
pub mod metrics;
pub mod pod;
pub mod pod_watch;
pub mod pods;
pub mod restart;
pub mod runtime;
pub mod session_store;
pub mod start_queue;
mod status_writes;
pub mod used;
pub mod warm_pool;

pub use metrics::Metrics;
pub use runtime::{KubernetesRuntime, SessionEnded, SessionStart, WorkerEndpoint};

/// Settings of the Kubernetes runtime (`toolwarden gateway --runtime kubernetes`).
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// Image holding the static worker binary, copied into each tool's image by an init container.
    pub worker_image: String,
    /// Stable name of this gateway; sessions and pods are labelled with it so a restarted gateway finds
    /// (and cleans up) what it left behind. Give each replica its own (the pod name in a StatefulSet).
    pub gateway_id: String,
    /// How long a session's worker start may take: its turn in the start queue, then the pod becoming
    /// ready.
    pub start_timeout: Duration,
    /// Worker pods this gateway starts at once (`start_queue`); more starts wait their turn.
    pub max_pod_starts: usize,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// How often changed McpSession statuses are written (at most one write per session per interval).
    pub status_interval: Duration,
    /// A status change of only counters and last activity waits until this long after the session's
    /// last write (docs/sessions-kubernetes.md): it bounds what a busy session costs the API server.
    pub counters_interval: Duration,
    /// How often idle and expired sessions are looked for, and warm pools topped up.
    pub sweep_interval: Duration,
    /// Whether sessions found after a restart are kept for their clients to come back to
    /// (their pods are always removed: the tokens died with the old process).
    pub resume_sessions: bool,
    /// `host:port` other replicas reach this gateway at (the pod IP and MCP port); written on the
    /// McpSessions it holds so they can forward a session's requests here. `None`: not forwarded to.
    pub advertise_address: Option<String>,
    /// The namespace of the gateway's own pods: a replica that does not connect to a session's holder
    /// at once looks there whether the holder's pod is gone. `None`: it waits out the connect timeout.
    pub pod_namespace: Option<String>,
}

/// `ghcr.io/toolwarden/worker:<this version>`.
pub fn default_worker_image() -> String {
    format!("ghcr.io/toolwarden/worker:{}", env!("CARGO_PKG_VERSION"))
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            worker_image: default_worker_image(),
            gateway_id: "toolwarden-gateway".to_owned(),
            start_timeout: Duration::from_secs(60),
            max_pod_starts: 16,
            idle_timeout: Duration::from_secs(30 * 60),
            max_lifetime: Duration::from_secs(8 * 60 * 60),
            status_interval: Duration::from_secs(1),
            counters_interval: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(5),
            resume_sessions: true,
            advertise_address: None,
            pod_namespace: None,
        }
    }
}

/// What went wrong, specific enough for the caller's error result; `code` doubles as the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidTool(#[from] pod::PodBuildError),
    #[error("worker pod {pod} could not pull image {image}: {message}")]
    ImagePull { pod: String, image: String, message: String },
    #[error("worker pod {pod} did not become ready within {seconds}s: {detail}")]
    StartTimeout { pod: String, seconds: u64, detail: String },
    #[error("no worker pod was started within {seconds}s: when it asked, {under_way} starts were under way and {ahead} more waiting ahead of it on this gateway replica, which starts at most {limit} at once (--max-pod-starts {limit}); the node is slow to start pods, retry later")]
    StartQueueTimeout { seconds: u64, limit: usize, under_way: usize, ahead: usize },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("worker pod {pod} cannot start: Secret {secret} or one of its keys is missing in namespace {namespace} ({message})")]
    MissingSecret { pod: String, secret: String, namespace: String, message: String },
    #[error("worker pod {pod} cannot start: {message}")]
    ContainerConfig { pod: String, message: String },
    #[error("namespace {namespace} is out of quota for worker pods: {message}")]
    QuotaExceeded { namespace: String, message: String },
    #[error("the gateway may not {action} in namespace {namespace}: {message}")]
    Forbidden { action: &'static str, namespace: String, message: String },
    #[error("worker pod {pod} stopped ({reason}): {message}")]
    PodFailed { pod: String, reason: String, message: String },
    #[error("worker pod {pod} was deleted")]
    PodGone { pod: String },
    #[error("session {session} has ended")]
    SessionEnded { session: String },
    #[error("no session {session} on this gateway")]
    UnknownSession { session: String },
    #[error("session {session} moved to another gateway replica while this one claimed it")]
    Moved { session: String },
    #[error("McpSession {session} already exists: another gateway replica started this session first")]
    SessionExists { session: String },
    #[error("this session has used {limit} confirm tokens that have not expired yet, the most its McpSession records: wait for the oldest to expire")]
    TooManyUsedTokens { limit: usize },
    #[error("the operating system gave no random bytes for a worker token: {0}")]
    NoEntropy(String),
    #[error("Kubernetes API: {context}: {source}")]
    Api {
        context: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Machine-readable code for callers, audit records and the `reason` metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidTool(_) => "invalid_tool",
            Error::ImagePull { .. } => "image_pull",
            Error::StartTimeout { .. } | Error::StartQueueTimeout { .. } => "start_timeout",
            Error::ShuttingDown => "shutting_down",
            Error::MissingSecret { .. } => "missing_secret",
            Error::ContainerConfig { .. } => "container_config",
            Error::QuotaExceeded { .. } => "quota_exceeded",
            Error::Forbidden { .. } => "forbidden",
            Error::PodFailed { .. } => "pod_failed",
            Error::PodGone { .. } => "pod_deleted",
            Error::SessionEnded { .. } => "session_ended",
            Error::UnknownSession { .. } => "unknown_session",
            Error::Moved { .. } => "session_moved",
            Error::SessionExists { .. } => SESSION_EXISTS,
            Error::Api { .. } => "api_error",
            Error::NoEntropy(_) => "no_entropy",
            Error::TooManyUsedTokens { .. } => "too_many_used_tokens",
        }
    }

    /// Whether the same call may succeed if simply retried later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::StartTimeout { .. } | Error::StartQueueTimeout { .. } | Error::QuotaExceeded { .. } | Error::Api { .. } | Error::PodGone { .. })
    }

    pub(crate) fn api(context: impl Into<String>, source: kube::Error) -> Self {
        Error::Api { context: context.into(), source }
    }
}

/// The code of a session start whose McpSession another replica created first (a stateless session's
/// name is derived from its id, so two replicas may start it at once).
pub const SESSION_EXISTS: &str = "session_exists";

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The HTTP status of an API error, if it was one.
pub(crate) fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// Random bytes as hex: worker tokens and name suffixes.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::NoEntropy(e.to_string()))?;
    Ok(hex(&buf))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_hex(text: &str) -> String {
    hex(&<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
}
