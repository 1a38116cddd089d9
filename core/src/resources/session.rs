//! `McpSession`: one agent session, written by the gateway.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// One agent session. Deleting it ends the session and (through owner references) its worker pods.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "toolwarden.dev",
    version = "v1alpha1",
    kind = "McpSession",
    plural = "mcpsessions",
    shortname = "mcps",
    category = "toolwarden",
    namespaced,
    status = "McpSessionStatus",
    doc = "One agent session on the Toolwarden gateway, with its worker pods, counters and pending approvals.",
    printcolumn = r#"{"name":"Subject","type":"string","jsonPath":".spec.subject"}"#,
    printcolumn = r#"{"name":"Client","type":"string","jsonPath":".spec.client.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Workers","type":"integer","jsonPath":".status.workerCount","priority":1}"#,
    printcolumn = r#"{"name":"Calls","type":"integer","jsonPath":".status.calls"}"#,
    printcolumn = r#"{"name":"Denied","type":"integer","jsonPath":".status.denials"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pendingApprovalCount"}"#,
    printcolumn = r#"{"name":"Tainted","type":"boolean","jsonPath":".status.tainted"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpSessionSpec {
    /// The authenticated caller.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default)]
    pub client: ClientInfo,
    /// MCP protocol version the client negotiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// Gateway pod that owns the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SessionPhase {
    #[default]
    Active,
    Ending,
    Ended,
    Expired,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpSessionStatus {
    #[serde(default)]
    pub phase: SessionPhase,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerRef>,
    #[serde(default)]
    pub worker_count: u32,
    #[serde(default)]
    pub calls: u64,
    #[serde(default)]
    pub denials: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_approvals: Vec<PendingApproval>,
    #[serde(default)]
    pub pending_approval_count: u32,
    /// Confirm tokens of this session already used, until they expire: any gateway replica that holds
    /// the session refuses them again (docs/approvals.md, "Several gateway replicas"). Only the nonce:
    /// no token can be made from it without the release's key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_confirm_tokens: Vec<UsedConfirmToken>,
    #[serde(default)]
    pub tainted: bool,
    /// The tool whose untrusted output tainted the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tainted_by: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRef {
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ApprovalState {
    #[default]
    Pending,
    Approved,
    Denied,
    Expired,
    Used,
}

/// A call parked until a listed approver decides it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingApproval {
    pub id: String,
    pub tool: String,
    /// SHA-256 of the canonical arguments: the retry must carry the same arguments.
    pub arguments_hash: String,
    /// Sanitized arguments for the approver to read (secrets and long values redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_preview: Option<String>,
    pub policy: String,
    pub requested_at: String,
    pub expires_at: String,
    #[serde(default)]
    pub state: ApprovalState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The call that asked for it (its audit lines carry this id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

/// A used confirm token: its nonce, and when the token expires (after which the record goes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsedConfirmToken {
    pub nonce: String,
    /// RFC 3339.
    pub expires_at: String,
}
