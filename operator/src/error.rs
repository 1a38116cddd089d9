//! The operator's one error type. Each variant names what failed with enough context to act on
//! ("McpTool default/x: apply NetworkPolicy toolwarden-tool-x: ..."); `metric_label` counts them by kind.
//! Problems with an object's *content* (a missing Secret key, an invalid CIDR) are not errors: they end
//! in status conditions, because retrying does not fix them.

use crate::objects::{is_conflict, is_not_found};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed (timeout, 5xx, 403, ...): retried with backoff.
    #[error("{object}: {action}: {source}")]
    Api {
        object: String,
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The object changed under us (409): retried promptly.
    #[error("{object}: {action}: conflict, the object changed meanwhile; retrying")]
    Conflict {
        object: String,
        action: String,
        #[source]
        source: kube::Error,
    },
    /// A reconcile took longer than its deadline (a hanging API server).
    #[error("{object}: reconcile did not finish within {seconds}s")]
    Timeout { object: String, seconds: u64 },
}

impl Error {
    /// Wraps an API error with the object and the action that failed.
    pub fn api(object: impl Into<String>, action: impl Into<String>, source: kube::Error) -> Self {
        let (object, action) = (object.into(), action.into());
        if is_conflict(&source) {
            Error::Conflict { object, action, source }
        } else {
            Error::Api { object, action, source }
        }
    }

    /// The `error` label of `toolwarden_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { source, .. } if is_not_found(source) => "not_found",
            Error::Api { source: kube::Error::Api(status), .. } if status.code == 403 => "forbidden",
            Error::Api { source: kube::Error::Api(_), .. } => "api_error",
            Error::Api { .. } => "api_unreachable",
            Error::Conflict { .. } => "conflict",
            Error::Timeout { .. } => "timeout",
        }
    }

    /// Conflicts are retried at once (with a little jitter from the queue), everything else backs off.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
