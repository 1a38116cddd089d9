//! The status of an McpTool, computed from what the reconcile found (pure), and the Events that its
//! condition transitions deserve.

use kube::ResourceExt;
use toolwarden_core::resources::{Condition, ConditionStatus, McpTool, McpToolStatus, set_condition, tool_name_for};

use super::secret::CredentialProblem;
use crate::namespace::build::ToolVerdict;
use crate::objects::tool_object_name;

pub const ACCEPTED: &str = "Accepted";
pub const CREDENTIALS_READY: &str = "CredentialsReady";
pub const READY: &str = "Ready";

/// What one reconcile of a tool found.
#[derive(Clone, Debug)]
pub struct ToolFacts {
    /// The tool's own problems (`field: message`), from the core compiler and the NetworkPolicy builder.
    pub invalid: Vec<String>,
    /// Number of keys copied, or why they could not be.
    pub credentials: Result<usize, Vec<CredentialProblem>>,
    /// The namespace reconciler's verdict (`None`: it has not looked at this namespace yet).
    pub verdict: Option<ToolVerdict>,
    pub network_policy: Option<String>,
    pub secret: Option<String>,
}

impl Default for ToolFacts {
    fn default() -> Self {
        ToolFacts { invalid: Vec::new(), credentials: Ok(0), verdict: None, network_policy: None, secret: None }
    }
}

fn join(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join("; ")
}

/// The three conditions of the tool, keeping transition times of conditions that did not change.
pub fn build_tool_status(tool: &McpTool, facts: &ToolFacts, now: &str) -> McpToolStatus {
    let generation = tool.metadata.generation;
    let resource = tool.name_any();
    let old = tool.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone();
    let mut set = |mut c: Condition| {
        c.observed_generation = generation;
        set_condition(&mut conditions, c, now);
    };

    let excluded = facts.verdict.as_ref().and_then(|v| v.excluded.clone());
    let accepted = if !facts.invalid.is_empty() {
        set(Condition::new(ACCEPTED, false, "Invalid", join(facts.invalid.iter().cloned())));
        false
    } else if let Some(why) = excluded {
        set(Condition::new(ACCEPTED, false, "NameConflict", why));
        false
    } else {
        set(Condition::new(ACCEPTED, true, "Valid", "the tool is valid"));
        true
    };

    let credentials_ok = match &facts.credentials {
        Ok(0) => {
            set(Condition::new(CREDENTIALS_READY, true, "NoCredentials", "the tool uses no credentials"));
            true
        }
        Ok(n) if facts.secret.is_some() => {
            let secret = tool_object_name(&resource);
            set(Condition::new(CREDENTIALS_READY, true, "Copied", format!("{n} key(s) copied into Secret {secret}")));
            true
        }
        Ok(n) => {
            let message = format!("{n} key(s) found; they are copied once the tool is accepted");
            set(Condition::new(CREDENTIALS_READY, true, "Found", message));
            true
        }
        Err(problems) => {
            let reason = problems.first().map_or("CredentialsInvalid", CredentialProblem::reason);
            set(Condition::new(CREDENTIALS_READY, false, reason, join(problems.iter().map(ToString::to_string))));
            false
        }
    };

    let verdict = facts.verdict.as_ref();
    let ready = if !accepted {
        Condition::new(READY, false, "NotAccepted", "the tool is not accepted: see the Accepted condition")
    } else if !credentials_ok {
        Condition::new(READY, false, "CredentialsNotReady", "the tool's credentials are not ready: see CredentialsReady")
    } else if let Some(problem) = verdict.and_then(|v| v.config_problem.clone()) {
        Condition::new(READY, false, "ConfigTooLarge", problem)
    } else if verdict.is_none_or(|v| v.included_generation != generation) {
        Condition::new(READY, false, "ConfigPending", "waiting for the gateway config to include this version of the tool")
    } else if tool.spec.disabled {
        let reason = tool.spec.disabled_reason.clone().unwrap_or_default();
        Condition::new(READY, false, "Disabled", format!("the tool is disabled: {reason}"))
    } else {
        Condition::new(READY, true, "Ready", "in the gateway config, with its NetworkPolicy and credentials in place")
    };
    set(ready);

    McpToolStatus {
        conditions,
        observed_generation: generation,
        tool_name: Some(tool_name_for(&resource)),
        runtime: tool.spec.runtime.kind(),
        network_policy: facts.network_policy.clone(),
        secret: facts.secret.clone(),
    }
}

/// An Event worth publishing for a condition transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionEvent {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Events for conditions whose status or reason changed: a Warning when something broke (not accepted,
/// credentials missing, config too large), a Normal event when the tool became ready or was disabled.
/// Derived `Ready=False` states (pending, not accepted) raise no second event.
pub fn transition_events(old: &[Condition], new: &[Condition]) -> Vec<TransitionEvent> {
    let mut events = Vec::new();
    for c in new {
        let unchanged = old.iter().any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason);
        if unchanged {
            continue;
        }
        let false_ = c.status == ConditionStatus::False;
        let event = match (c.type_.as_str(), false_, c.reason.as_str()) {
            (ACCEPTED | CREDENTIALS_READY, true, _) | (READY, true, "ConfigTooLarge") => Some(true),
            (READY, false, "Ready") | (READY, true, "Disabled") => Some(false),
            _ => None,
        };
        if let Some(warning) = event {
            events.push(TransitionEvent { warning, reason: c.reason.clone(), note: c.message.clone() });
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(disabled: bool) -> McpTool {
        serde_json::from_value(json!({
            "apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpTool",
            "metadata": {"name": "read-note", "namespace": "dev", "uid": "u1", "generation": 2},
            "spec": {"description": "Reads a note.", "effect": "read", "inputSchema": {"type": "object"},
                     "runtime": {"exec": {"image": "x", "command": ["cat"]}},
                     "disabled": disabled, "disabledReason": if disabled { json!("broken upstream") } else { json!(null) }}
        }))
        .unwrap()
    }

    fn included(generation: i64) -> Option<ToolVerdict> {
        Some(ToolVerdict { included_generation: Some(generation), excluded: None, config_problem: None })
    }

    fn condition<'a>(status: &'a McpToolStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn valid_tool_in_the_written_config_is_ready() {
        let facts = ToolFacts { credentials: Ok(1), verdict: included(2), secret: Some("toolwarden-tool-read-note".into()), ..Default::default() };
        let status = build_tool_status(&tool(false), &facts, "t1");
        assert!(condition(&status, ACCEPTED).is_true());
        assert_eq!(condition(&status, CREDENTIALS_READY).reason, "Copied");
        assert_eq!(condition(&status, READY).reason, "Ready");
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(condition(&status, READY).observed_generation, Some(2));
        assert_eq!(status.tool_name.as_deref(), Some("read_note"));
    }

    #[test]
    fn older_config_means_pending() {
        let facts = ToolFacts { credentials: Ok(0), verdict: included(1), ..Default::default() };
        assert_eq!(condition(&build_tool_status(&tool(false), &facts, "t"), READY).reason, "ConfigPending");
        let facts = ToolFacts { credentials: Ok(0), verdict: None, ..Default::default() };
        assert_eq!(condition(&build_tool_status(&tool(false), &facts, "t"), READY).reason, "ConfigPending");
    }

    #[test]
    fn invalid_tool_is_not_accepted_and_not_ready() {
        let facts = ToolFacts { invalid: vec!["spec.egress[0].cidr: bad".into()], credentials: Ok(0), verdict: included(2), ..Default::default() };
        let status = build_tool_status(&tool(false), &facts, "t");
        assert_eq!(condition(&status, ACCEPTED).reason, "Invalid");
        assert_eq!(condition(&status, ACCEPTED).message, "spec.egress[0].cidr: bad");
        assert_eq!(condition(&status, READY).reason, "NotAccepted");
    }

    #[test]
    fn missing_key_makes_credentials_and_ready_false() {
        let problem = CredentialProblem::KeyNotFound { index: 0, secret: "gh".into(), key: "token".into() };
        let facts = ToolFacts { credentials: Err(vec![problem]), verdict: included(2), ..Default::default() };
        let status = build_tool_status(&tool(false), &facts, "t");
        let c = condition(&status, CREDENTIALS_READY);
        assert_eq!((c.status, c.reason.as_str()), (ConditionStatus::False, "KeyNotFound"));
        assert_eq!(c.message, "credentials[0]: Secret gh has no key token");
        assert_eq!(condition(&status, READY).reason, "CredentialsNotReady");
    }

    #[test]
    fn too_large_config_and_name_conflict_come_from_the_namespace_verdict() {
        let verdict = ToolVerdict { included_generation: None, excluded: None, config_problem: Some("config is 1000000 bytes".into()) };
        let facts = ToolFacts { credentials: Ok(0), verdict: Some(verdict), ..Default::default() };
        assert_eq!(condition(&build_tool_status(&tool(false), &facts, "t"), READY).reason, "ConfigTooLarge");
        let verdict = ToolVerdict { included_generation: None, excluded: Some("name used twice".into()), config_problem: None };
        let facts = ToolFacts { credentials: Ok(0), verdict: Some(verdict), ..Default::default() };
        assert_eq!(condition(&build_tool_status(&tool(false), &facts, "t"), ACCEPTED).reason, "NameConflict");
    }

    #[test]
    fn disabled_tool_says_why() {
        let facts = ToolFacts { credentials: Ok(0), verdict: included(2), ..Default::default() };
        let c = build_tool_status(&tool(true), &facts, "t").conditions.into_iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((c.reason.as_str(), c.message.as_str()), ("Disabled", "the tool is disabled: broken upstream"));
    }

    #[test]
    fn transition_time_moves_only_when_a_condition_flips() {
        let mut t = tool(false);
        let pending = ToolFacts { credentials: Ok(0), verdict: None, ..Default::default() };
        t.status = Some(build_tool_status(&t, &pending, "t1"));
        let again = build_tool_status(&t, &pending, "t2");
        assert_eq!(again, t.status.clone().unwrap(), "nothing changed, so the status is identical (no write)");
        let ready = ToolFacts { credentials: Ok(0), verdict: included(2), ..Default::default() };
        let status = build_tool_status(&t, &ready, "t3");
        assert_eq!(condition(&status, READY).last_transition_time.as_deref(), Some("t3"));
        assert_eq!(condition(&status, ACCEPTED).last_transition_time.as_deref(), Some("t1"));
    }

    #[test]
    fn events_mark_breakage_and_readiness_once() {
        let t = tool(false);
        let problem = CredentialProblem::SecretNotFound { index: 0, secret: "gh".into() };
        let broken = build_tool_status(&t, &ToolFacts { credentials: Err(vec![problem]), verdict: included(2), ..Default::default() }, "t1");
        let events = transition_events(&[], &broken.conditions);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning);
        assert_eq!(events[0].reason, "SecretNotFound");
        assert!(transition_events(&broken.conditions, &broken.conditions).is_empty());
        let fixed = build_tool_status(&t, &ToolFacts { credentials: Ok(1), verdict: included(2), ..Default::default() }, "t2");
        let events = transition_events(&broken.conditions, &fixed.conditions);
        assert_eq!(events, vec![TransitionEvent { warning: false, reason: "Ready".into(), note: condition(&fixed, READY).message.clone() }]);
    }
}
