//! Whether a human approval still holds, judged against the session's and the config's state *now*
//! rather than when the call was parked. Between the request and the decision, and between the decision
//! and the agent's retry, the session may have read untrusted output, the tool may have been disabled,
//! and the policy may have changed. Pure functions: the callers fetch the state and act on the answer.

use toolwarden_core::policy::{ApprovalRequest, Engine};

use crate::approvals::{Approval, DecideError, may_decide};

/// What a decision needs to know about the approval's session, read when deciding.
#[derive(Clone, Copy, Debug)]
pub struct SessionNow {
    pub tainted: bool,
}

/// Whether `decider` (with `groups`) may approve `approval` now: its session is still open (`session`
/// is `None` once it ended), `config` still serves its tool and still has the policy that asked for it,
/// and self-approval is allowed by that policy now and never in a tainted session. Denying needs none
/// of this.
pub fn approvable_now(
    approval: &Approval,
    session: Option<SessionNow>,
    config: Option<&Engine>,
    decider: &str,
    groups: &[String],
) -> Result<(), DecideError> {
    let id = &approval.id;
    let Some(session) = session else {
        return Err(DecideError::Stale(format!("approval {id} can no longer be used: the session that asked for it has ended")));
    };
    if let Some(reason) = crate::running::unserved(&approval.tool, config) {
        return Err(DecideError::Stale(format!("approval {id} can no longer be used: {reason}")));
    }
    let policy = config.and_then(|engine| engine.config().policies.iter().find(|p| p.name == approval.policy));
    let Some(policy) = policy else {
        return Err(DecideError::Stale(format!(
            "approval {id} can no longer be used: policy {} that asked for it no longer exists",
            approval.policy
        )));
    };
    let policy_allows_self = policy.approval.as_ref().is_some_and(|a| a.allow_self_approval);
    let allow_self = approval.allow_self_approval && policy_allows_self && !session.tainted;
    if decider == approval.subject && !allow_self && approval.allow_self_approval {
        let why = if session.tainted {
            "you requested this call, and its session has read untrusted output since: self-approval is never allowed in such a session; another approver must decide"
        } else {
            "you requested this call, and policy no longer allows self-approval: another approver must decide"
        };
        return Err(DecideError::NotAnApprover(why.to_owned()));
    }
    may_decide(&approval.approvers, allow_self, &approval.subject, decider, groups).map_err(|why| DecideError::NotAnApprover(why.to_owned()))
}

/// Whether an approved `approval` still lets its call run under `fresh`, the decision made for the
/// retry with the session's current state and config: its approver must be one `fresh` accepts (listed
/// by the current policies; the requester only while self-approval is allowed, never in a tainted
/// session). `Err` says why it no longer counts.
pub fn still_counts(approval: &Approval, fresh: &ApprovalRequest, tainted: bool) -> Result<(), String> {
    let by = approval.decided_by.as_deref().unwrap_or_default();
    if by == approval.subject && !fresh.allow_self_approval {
        return Err(if tainted {
            format!("{by} approved their own call, and this session has read untrusted output since: self-approval does not count in such a session")
        } else {
            format!("{by} approved their own call, and the policy no longer allows self-approval")
        });
    }
    let listed = match &approval.decided_groups {
        Some(groups) => may_decide(&fresh.approvers, fresh.allow_self_approval, &approval.subject, by, groups).is_ok(),
        // Decided on another replica, which checked the approver against the same approvers; their groups
        // are not known here, so only an unchanged list of approvers or one naming them keeps it.
        None => fresh.approvers == approval.approvers || fresh.approvers.users.iter().any(|u| u == by || u == "*"),
    };
    if listed { Ok(()) } else { Err(format!("{by} is not an approver for this call under the current policy")) }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use toolwarden_core::resources::{ApprovalMode, ApprovalState, Approvers};

    fn approval(self_ok: bool) -> Approval {
        Approval {
            id: "ap-1".into(),
            namespace: "default".into(),
            tool: "delete_greeting".into(),
            subject: "dev".into(),
            session_id: "s1".into(),
            arguments: serde_json::json!({}),
            arguments_hash: "h".into(),
            reason: "r".into(),
            policy: "p".into(),
            approvers: Approvers { users: vec!["alice".into(), "dev".into()], groups: vec!["leads".into()] },
            allow_self_approval: self_ok,
            created_at: SystemTime::now(),
            expires_at: SystemTime::now() + Duration::from_secs(60),
            state: ApprovalState::Approved,
            decided_by: None,
            decided_groups: None,
            decision_reason: None,
            call_id: "c-1".into(),
            denial_reported: false,
        }
    }

    fn decided(mut a: Approval, by: &str, groups: Option<&[&str]>) -> Approval {
        a.decided_by = Some(by.into());
        a.decided_groups = groups.map(|g| g.iter().map(|s| s.to_string()).collect());
        a
    }

    fn fresh(users: &[&str], groups: &[&str], self_ok: bool) -> ApprovalRequest {
        ApprovalRequest {
            mode: ApprovalMode::Human,
            policy: "p".into(),
            ttl: Duration::from_secs(60),
            approvers: Approvers { users: users.iter().map(|s| s.to_string()).collect(), groups: groups.iter().map(|s| s.to_string()).collect() },
            allow_self_approval: self_ok,
            reason: "r".into(),
            rate_limits: vec![],
            arguments: None,
        }
    }

    #[test]
    fn a_self_approval_stops_counting_once_the_session_is_tainted() {
        let own = decided(approval(true), "dev", Some(&[]));
        assert_eq!(still_counts(&own, &fresh(&["alice", "dev"], &["leads"], true), false), Ok(()));
        // Core never allows self-approval in a tainted session: the retry's decision says so.
        let why = still_counts(&own, &fresh(&["alice", "dev"], &["leads"], false), true).unwrap_err();
        assert!(why.contains("has read untrusted output since"), "{why}");
        let why = still_counts(&own, &fresh(&["alice", "dev"], &["leads"], false), false).unwrap_err();
        assert!(why.contains("no longer allows self-approval"), "{why}");
        // Another approver's decision still counts in a tainted session: that is what the policy asks for.
        let by_alice = decided(approval(true), "alice", Some(&[]));
        assert_eq!(still_counts(&by_alice, &fresh(&["alice", "dev"], &["leads"], false), true), Ok(()));
    }

    #[test]
    fn an_approver_the_current_policy_no_longer_lists_does_not_count() {
        let by_carol = decided(approval(false), "carol", Some(&["leads"]));
        assert_eq!(still_counts(&by_carol, &fresh(&["alice"], &["leads"], false), false), Ok(()));
        let why = still_counts(&by_carol, &fresh(&["alice"], &["ops"], false), false).unwrap_err();
        assert!(why.contains("carol is not an approver"), "{why}");
        // Decided on another replica (groups unknown): kept while the approvers are unchanged.
        let remote = decided(approval(false), "carol", None);
        assert_eq!(still_counts(&remote, &fresh(&["alice", "dev"], &["leads"], false), false), Ok(()));
        assert!(still_counts(&remote, &fresh(&["alice"], &["leads"], false), false).is_err());
        assert_eq!(still_counts(&remote, &fresh(&["carol"], &[], false), false), Ok(()));
    }

    fn engine(yaml: &str) -> Engine {
        let manifests = toolwarden_core::manifest::load_str(yaml, std::path::Path::new("t.yaml")).unwrap();
        let (mut configs, _) = toolwarden_core::compiler::compile_manifests(&manifests).unwrap();
        Engine::new(configs.remove("default").unwrap()).unwrap()
    }

    const CONFIG: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: delete-greeting}
spec:
  description: Deletes the greeting.
  effect: destructive
  inputSchema: {type: object}
  runtime: {exec: {image: busybox:1, command: [cat]}}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: p}
spec:
  subjects: {users: [dev]}
  tools: {names: [delete-greeting]}
  decision: allow
  approval: {mode: human, approvers: {users: [alice, dev], groups: [leads]}, allowSelfApproval: true}
"#;

    #[test]
    fn approving_needs_an_open_session_a_served_tool_and_the_policy() {
        let pending = approval(true);
        let config = engine(CONFIG);
        let clean = Some(SessionNow { tainted: false });
        assert_eq!(approvable_now(&pending, clean, Some(&config), "dev", &[]), Ok(()), "self-approval in a clean session");
        assert_eq!(approvable_now(&pending, clean, Some(&config), "carol", &["leads".into()]), Ok(()));
        let stale = |e: Result<(), DecideError>| match e {
            Err(DecideError::Stale(why)) => why,
            other => panic!("stale expected, got {other:?}"),
        };
        assert!(stale(approvable_now(&pending, None, Some(&config), "alice", &[])).contains("the session that asked for it has ended"));
        let disabled = engine(&CONFIG.replace("  effect: destructive\n", "  effect: destructive\n  disabled: true\n  disabledReason: frozen\n"));
        assert!(stale(approvable_now(&pending, clean, Some(&disabled), "alice", &[])).contains("delete_greeting is disabled: frozen"));
        assert!(stale(approvable_now(&pending, clean, None, "alice", &[])).contains("removed from the configuration"));
        let renamed = engine(&CONFIG.replace("metadata: {name: p}", "metadata: {name: q}"));
        assert!(stale(approvable_now(&pending, clean, Some(&renamed), "alice", &[])).contains("policy p that asked for it no longer exists"));
    }

    #[test]
    fn the_requester_cannot_approve_once_the_session_is_tainted_or_the_policy_withdrew_self_approval() {
        let pending = approval(true);
        let config = engine(CONFIG);
        let tainted = Some(SessionNow { tainted: true });
        let Err(DecideError::NotAnApprover(why)) = approvable_now(&pending, tainted, Some(&config), "dev", &[]) else { panic!() };
        assert!(why.contains("has read untrusted output since"), "{why}");
        assert_eq!(approvable_now(&pending, tainted, Some(&config), "alice", &[]), Ok(()), "another approver still may");
        let withdrawn = engine(&CONFIG.replace(", allowSelfApproval: true", ""));
        let Err(DecideError::NotAnApprover(why)) = approvable_now(&pending, Some(SessionNow { tainted: false }), Some(&withdrawn), "dev", &[]) else { panic!() };
        assert!(why.contains("no longer allows self-approval"), "{why}");
    }
}
