//! A call's confirm token or approval is recorded as used before the call runs, where every gateway
//! replica sees it (`WorkerRuntime::record_use`): a replica that takes the session over, after its
//! holder ran the call or died running it, refuses the same token or approval. When the record cannot be
//! written nothing runs, the use is taken back, and the agent gets a transient refusal to retry.

use serde_json::json;
use toolwarden_core::approval::VerifiedToken;
use toolwarden_core::resources::UsedConfirmToken;

use crate::audit::rfc3339;
use crate::refusal::Refusal;
use crate::runtime::SessionUse;
use crate::sessions::SessionRecord;
use crate::state::Gateway;

/// The code of a call refused because the use of its confirmation or approval could not be recorded.
pub const USE_NOT_RECORDED: &str = "approval_not_recorded";

fn not_recorded(message: String) -> Refusal {
    Refusal::new(USE_NOT_RECORDED, message).detail("transient", json!(true))
}

/// Records the use of a verified confirm token; on failure the token counts again.
pub(super) async fn confirm_token(gw: &Gateway, session: &SessionRecord, tool: &str, token: &VerifiedToken) -> Result<(), Refusal> {
    let expires = std::time::UNIX_EPOCH + std::time::Duration::from_millis(token.expires_ms);
    let used = SessionUse::ConfirmToken(UsedConfirmToken { nonce: token.nonce.clone(), expires_at: rfc3339(expires) });
    gw.runtime.record_use(&session.id, &used).await.map_err(|e| {
        gw.approvals.release_confirm(&token.nonce);
        tracing::warn!(session = %session.id, tool, error = %e, "the use of a confirm token could not be recorded; the call did not run");
        not_recorded(format!(
            "{tool} did not run: the use of its confirm token could not be recorded on the session ({e}); the token still counts: repeat the identical call with it"
        ))
    })
}

/// Records the use of approved `id`; on failure it is approved again.
pub(super) async fn approval(gw: &Gateway, session: &SessionRecord, tool: &str, id: &str) -> Result<(), Refusal> {
    let Some(approval) = gw.approvals.get(id) else {
        return Err(not_recorded(format!("{tool} did not run: approval {id} expired just now: repeat the identical call to ask anew")));
    };
    let used = SessionUse::Approval(approval.pending_approval());
    gw.runtime.record_use(&session.id, &used).await.map_err(|e| {
        gw.approvals.unuse(id);
        tracing::warn!(session = %session.id, tool, approval = id, error = %e, "the use of an approval could not be recorded; the call did not run");
        not_recorded(format!(
            "{tool} did not run: the use of approval {id} could not be recorded on the session ({e}); it is still approved: repeat the identical call"
        ))
        .detail("approvalId", json!(id))
    })
}
