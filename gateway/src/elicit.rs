//! Asking the user whether a call may run: used for human approvals that the policy lets the requester
//! give itself (`allowSelfApproval`), when the client declared elicitation support.
//! - Clients with a session (2025-06-18, 2025-11-25) get an elicitation request on the call's stream.
//! - 2026-07-28 clients (stateless; the protocol forbids server-to-client requests) get an
//!   `input_required` result holding the same question; their retry of the call carries the answer, and
//!   `requestState` names the pending approval it answers.
//!
//! Other clients get the ordinary pending approval.

use std::time::Duration;

use rmcp::RoleServer;
use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ElicitResult, ElicitationAction, ElicitationSchema, InputRequest, InputRequiredResult, InputResponses,
};
use rmcp::service::Peer;
use serde_json::Value;

/// How long the user has to answer before the call falls back to a pending approval.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The key of the question in `inputRequests` / `inputResponses`.
const INPUT_KEY: &str = "approve";

/// How the user behind a call can be asked.
pub enum Asking<'a> {
    /// Not at all.
    No,
    /// With an elicitation request on the session's stream.
    Elicit(&'a Peer<RoleServer>),
    /// With an `input_required` result; `responses` and `state` are what this (retried) call carries.
    InputRequired { responses: Option<InputResponses>, state: Option<String> },
}

/// What asking gave.
pub enum Answer {
    /// The user approved (`true`) or declined (`false`) the pending approval.
    Decided(bool),
    /// Answer the call with this question; the client retries with the answer.
    Ask(InputRequiredResult),
    /// No usable answer: the approval stays pending.
    None,
}

/// Whether the client behind `peer` can be asked.
pub fn supported(peer: &Peer<RoleServer>) -> bool {
    peer.peer_info().is_some_and(|info| info.capabilities.elicitation.is_some())
}

/// Whether a call in this namespace may ask its user: some policy lets requesters approve themselves.
pub fn policies_allow_asking(engine: &toolwarden_core::policy::Engine) -> bool {
    engine.config().policies.iter().any(|p| p.approval.as_ref().is_some_and(|a| a.allow_self_approval))
}

/// Asks the user about pending approval `approval_id` of this call.
pub async fn ask(asking: &Asking<'_>, approval_id: &str, tool: &str, arguments: &Value, reason: &str) -> Answer {
    match asking {
        Asking::No => Answer::None,
        Asking::Elicit(peer) => match ask_user(peer, tool, arguments, reason).await {
            Some(approve) => Answer::Decided(approve),
            None => Answer::None,
        },
        Asking::InputRequired { responses, state } => {
            // An answer counts only for the approval it was asked about; anything else asks again.
            let answer = responses.as_ref().and_then(|r| r.get(INPUT_KEY)).filter(|_| state.as_deref() == Some(approval_id));
            match answer.map(|a| serde_json::from_value::<ElicitResult>(a.clone())) {
                Some(Ok(result)) => Answer::Decided(approved(&result)),
                Some(Err(_)) | None => match question(tool, arguments, reason) {
                    Some(params) => {
                        let requests = [(INPUT_KEY.to_owned(), InputRequest::Elicitation(ElicitRequest::new(params)))].into();
                        Answer::Ask(InputRequiredResult::new(Some(requests), Some(approval_id.to_owned())))
                    }
                    None => Answer::None,
                },
            }
        }
    }
}

fn question(tool: &str, arguments: &Value, reason: &str) -> Option<ElicitRequestParams> {
    let schema: ElicitationSchema = ElicitationSchema::builder().required_bool("approve").build().ok()?;
    let message = format!("{reason}.\nRun {tool} with {arguments}?\nSet approve to true to run it once.");
    Some(ElicitRequestParams::FormElicitationParams { meta: None, message, requested_schema: schema })
}

/// Accepted with `approve: true`; declining, cancelling or an action this gateway does not know is not.
fn approved(answer: &ElicitResult) -> bool {
    matches!(answer.action, ElicitationAction::Accept) && answer.content.as_ref().and_then(|c| c.get("approve")).and_then(Value::as_bool) == Some(true)
}

/// `Some(true)` approved, `Some(false)` declined or cancelled, `None` no usable answer.
async fn ask_user(peer: &Peer<RoleServer>, tool: &str, arguments: &Value, reason: &str) -> Option<bool> {
    let params = question(tool, arguments, reason)?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, peer.create_elicitation(params)).await.ok()?.ok()?;
    Some(approved(&answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(responses: Value, state: &str) -> Asking<'static> {
        Asking::InputRequired { responses: serde_json::from_value(responses).ok(), state: Some(state.to_owned()) }
    }

    #[tokio::test]
    async fn input_required_asks_first_then_reads_the_answer_for_the_same_approval() {
        let first = Asking::InputRequired { responses: None, state: None };
        let Answer::Ask(question) = ask(&first, "a-1", "delete_note", &json!({"name": "x"}), "destructive").await else { panic!("a question") };
        assert_eq!(question.request_state.as_deref(), Some("a-1"));
        let wire = serde_json::to_value(&question).unwrap();
        assert_eq!(wire["resultType"], "input_required");
        assert_eq!(wire["inputRequests"]["approve"]["method"], "elicitation/create", "{wire}");
        assert!(wire["inputRequests"]["approve"]["params"]["message"].as_str().unwrap().contains("delete_note"), "{wire}");

        let yes = json!({"approve": {"action": "accept", "content": {"approve": true}}});
        assert!(matches!(ask(&input(yes.clone(), "a-1"), "a-1", "t", &json!({}), "r").await, Answer::Decided(true)));
        for no in [json!({"approve": {"action": "accept", "content": {"approve": false}}}), json!({"approve": {"action": "decline"}})] {
            assert!(matches!(ask(&input(no, "a-1"), "a-1", "t", &json!({}), "r").await, Answer::Decided(false)));
        }
        // An answer about another approval, or a malformed one, is not an answer: ask again.
        assert!(matches!(ask(&input(yes, "a-0"), "a-1", "t", &json!({}), "r").await, Answer::Ask(_)));
        assert!(matches!(ask(&input(json!({"approve": 3}), "a-1"), "a-1", "t", &json!({}), "r").await, Answer::Ask(_)));
        assert!(matches!(ask(&Asking::No, "a-1", "t", &json!({}), "r").await, Answer::None));
    }
}
