//! The human approval step of a call: find or park its approval, ask the user where the policy and the
//! client allow it, and let the call run only on an approval that still holds under the session's and
//! the config's current state (see [`crate::approvals_check`]).

use rmcp::model::CallToolResponse;
use serde_json::{Value, json};
use toolwarden_core::config::ToolConfig;
use toolwarden_core::policy::{ApprovalRequest, Decision, DenialCode};
use toolwarden_core::resources::ApprovalMode;

use super::{Call, decide_now, pending_refusal};
use crate::approvals::{HumanRequest, HumanStatus};
use crate::approvals_check::{SessionNow, approvable_now, still_counts};
use crate::elicit::{Answer, Asking};
use crate::refusal::Refusal;

/// The code of a call whose approval no longer counts.
pub const APPROVAL_INVALIDATED: &str = "approval_invalidated";

/// Runs the human approval step of `call`. `None`: approved, run it; `Some`: the answer to give instead
/// (pending, denied, no longer valid, or a question for the user).
#[allow(clippy::too_many_arguments)]
pub(super) async fn approval(
    call: &mut Call<'_>,
    tool: &ToolConfig,
    args: &Value,
    hash: &str,
    mut request: ApprovalRequest,
    asking: Asking<'_>,
    label: &str,
    given_confirm_token: bool,
) -> Option<CallToolResponse> {
    let (gw, session) = (call.gw, call.session);
    // Another replica may have decided this session's approval on its McpSession.
    gw.approvals.merge_remote(&session.id, &gw.runtime.remote_decisions(&session.id));
    let arguments = call.record.arguments.clone();
    let call_id = call.record.call_id.clone();
    // An approved approval is used only if it still holds under `current`, the decision for this retry.
    let ask = |current: &ApprovalRequest| {
        let request = HumanRequest {
            namespace: &session.namespace,
            tool: &tool.name,
            subject: &session.subject,
            session_id: &session.id,
            arguments: arguments.clone(),
            arguments_hash: hash,
            request: current,
            call_id: &call_id,
        };
        gw.approvals.human(request, |approval| still_counts(approval, current, session.tainted()))
    };
    let mut status = ask(&request);
    if let (HumanStatus::Created { id, expires_at } | HumanStatus::Pending { id, expires_at }, true) = (&status, request.allow_self_approval) {
        match Box::pin(crate::elicit::ask(&asking, id, &tool.name, &call.record.arguments, &request.reason)).await {
            Answer::Decided(approve) => {
                // The user may take minutes to answer: the session and the config are read again, both
                // for the user's decision and for the call's.
                let why = if approve { "approved by the user when asked" } else { "declined by the user when asked" };
                let now = Some(SessionNow { tainted: session.tainted() });
                let config = gw.engine(&session.namespace);
                let approvable = |a: &crate::approvals::Approval| approvable_now(a, now, config.as_deref(), &session.subject, &session.groups);
                if gw.approvals.decide(id, &session.subject, &session.groups, approve, Some(why.to_owned()), approvable).is_ok() {
                    match decide_now(config.as_deref(), session, &tool.name, args) {
                        Decision::NeedsApproval(fresh) if fresh.mode == ApprovalMode::Human => {
                            request = fresh;
                            status = ask(&request);
                        }
                        Decision::Deny(denial) => {
                            let refusal = Refusal::from_denial(&denial);
                            return Some(call.refuse(refusal, label, "refused", Some(tool)).into());
                        }
                        _ => {
                            let message = format!(
                                "{} did not run: the policy decision for it changed while its user was asked; repeat the call",
                                tool.name
                            );
                            return Some(call.refuse(Refusal::new(APPROVAL_INVALIDATED, message), label, "refused", Some(tool)).into());
                        }
                    }
                }
            }
            Answer::Ask(question) => {
                // Audited and counted as the pending approval it is; the client asks its user.
                gw.approvals_changed(&session.id);
                let _ = call.refuse(pending_refusal(&request, id, *expires_at), label, "pending", Some(tool));
                return Some(CallToolResponse::InputRequired(question));
            }
            Answer::None => {}
        }
    }
    let refusal = match status {
        HumanStatus::Approved { id, decided_by } => {
            if let Err(refusal) = super::used::approval(gw, session, &tool.name, &id).await {
                return Some(call.refuse(refusal, label, "refused", Some(tool)).into());
            }
            call.record.approval = "approved".to_owned();
            call.record.message = Some(format!("approval {id} by {decided_by}"));
            gw.approvals_changed(&session.id);
            return None;
        }
        HumanStatus::Created { id, expires_at } | HumanStatus::Pending { id, expires_at } => {
            gw.approvals_changed(&session.id);
            let mut refusal = pending_refusal(&request, &id, expires_at);
            if given_confirm_token {
                // A confirm token from before the session changed (it read untrusted output since).
                refusal.message.push_str(" The confirm_token given does not count: this call now needs a human approver.");
            }
            return Some(call.refuse(refusal, label, "pending", Some(tool)).into());
        }
        HumanStatus::TooMany => {
            let message = format!(
                "{} needs human approval, but this session already has {} approvals waiting: wait for them to be decided",
                tool.name,
                crate::approvals::MAX_PENDING_PER_SESSION
            );
            Refusal::new(DenialCode::ApprovalRequired.as_str(), message).policy(request.policy.clone())
        }
        HumanStatus::Denied { id, decided_by, reason } => {
            call.record.approval = "denied".to_owned();
            let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
            let message = format!("{} was not approved: {decided_by} denied approval {id}{why}", tool.name);
            Refusal::new(DenialCode::ApprovalDenied.as_str(), message).detail("approvalId", json!(id))
        }
        HumanStatus::Invalidated { id, decided_by, why } => {
            call.record.approval = "invalidated".to_owned();
            gw.approvals_changed(&session.id);
            let message = format!(
                "{} did not run: approval {id} (by {decided_by}) no longer counts: {why}. Repeat this identical call to ask for a new approval.",
                tool.name
            );
            Refusal::new(APPROVAL_INVALIDATED, message).policy(request.policy.clone()).detail("approvalId", json!(id))
        }
    };
    Some(call.refuse(refusal, label, "refused", Some(tool)).into())
}
