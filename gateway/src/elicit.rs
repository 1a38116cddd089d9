//! Asking the user through MCP elicitation whether a call may run: used for human approvals that the
//! policy lets the requester give itself (`allowSelfApproval`), when the client declared elicitation
//! support and keeps a session (2026-07-28 forbids server-to-client requests; those clients get the
//! ordinary pending approval).

use std::time::Duration;

use rmcp::RoleServer;
use rmcp::model::{ElicitRequestParams, ElicitationAction, ElicitationSchema};
use rmcp::service::Peer;
use serde_json::Value;

/// How long the user has to answer before the call falls back to a pending approval.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether the client behind `peer` can be asked.
pub fn supported(peer: &Peer<RoleServer>) -> bool {
    peer.peer_info().is_some_and(|info| info.capabilities.elicitation.is_some())
}

/// Whether a call in this namespace may ask its user: some policy lets requesters approve themselves.
pub fn policies_allow_asking(engine: &toolwarden_core::policy::Engine) -> bool {
    engine.config().policies.iter().any(|p| p.approval.as_ref().is_some_and(|a| a.allow_self_approval))
}

/// `Some(true)` approved, `Some(false)` declined or cancelled, `None` no usable answer.
pub async fn ask_user(peer: &Peer<RoleServer>, tool: &str, arguments: &Value, reason: &str) -> Option<bool> {
    let schema: ElicitationSchema = ElicitationSchema::builder().required_bool("approve").build().ok()?;
    let message = format!("{reason}.\nRun {tool} with {arguments}?\nSet approve to true to run it once.");
    let params = ElicitRequestParams::FormElicitationParams { meta: None, message, requested_schema: schema };
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, peer.create_elicitation(params)).await.ok()?.ok()?;
    match answer.action {
        ElicitationAction::Accept => Some(answer.content.as_ref().and_then(|c| c.get("approve")).and_then(Value::as_bool) == Some(true)),
        // Decline, cancel, or an action this gateway does not know: not approved.
        _ => Some(false),
    }
}
