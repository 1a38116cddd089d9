//! `explain`: for one call, every policy considered and why it matched or not.

use std::fmt;

use serde_json::Value;

use super::arguments::canonicalize;
use super::rules::CallContext;
use super::selector::tool_selected;
use super::{Decision, Engine, Session, Subject, decide};
use crate::resources::PolicyDecision;

/// One policy's part in a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyTrace {
    pub policy: String,
    pub decision: PolicyDecision,
    pub selects_tool: bool,
    pub matches_subject: bool,
    /// `(rule, passed, message)` for every rule, when the policy applies.
    pub rules: Vec<(String, bool, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub tool: String,
    pub traces: Vec<PolicyTrace>,
    pub decision: Decision,
}

pub fn explain(engine: &Engine, subject: &Subject, session: &Session, tool_name: &str, args: &Value) -> Explanation {
    let decision = decide(engine, subject, session, tool_name, args);
    // The rules read what `decide` gave them: declared paths in canonical form.
    let paths = engine.by_name.get(tool_name).map(|&i| engine.tools[i].paths.as_slice()).unwrap_or_default();
    let canonical = canonicalize(paths, args).ok().flatten();
    let args = canonical.as_ref().unwrap_or(args);
    let ctx = CallContext {
        subject: &subject.name,
        groups: &subject.groups,
        session_id: &session.id,
        tainted: session.tainted,
        client: &session.client,
        paths,
    };
    let tool = engine.tool(tool_name);
    let traces = engine
        .config
        .policies
        .iter()
        .enumerate()
        .map(|(i, policy)| {
            let selects_tool = tool.is_some_and(|t| tool_selected(&policy.tools, t));
            let matches_subject = subject.matches(&policy.subjects);
            let rules = if selects_tool && matches_subject {
                engine.policies[i]
                    .iter()
                    .map(|r| {
                        let hit = match policy.decision {
                            PolicyDecision::Allow => r.passes(args, &ctx),
                            PolicyDecision::Deny => r.matches(args, &ctx),
                        };
                        (r.name.clone(), hit, r.message.clone())
                    })
                    .collect()
            } else {
                Vec::new()
            };
            PolicyTrace { policy: policy.name.clone(), decision: policy.decision, selects_tool, matches_subject, rules }
        })
        .collect();
    Explanation { tool: tool_name.to_string(), traces, decision }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "call of {}:", self.tool)?;
        for t in &self.traces {
            let verdict = match (t.selects_tool, t.matches_subject) {
                (false, _) => "does not select this tool".to_string(),
                (true, false) => "selects the tool but not this subject".to_string(),
                (true, true) if t.rules.is_empty() => "applies (no argument rules)".to_string(),
                (true, true) => {
                    let hits = t.rules.iter().filter(|r| r.1).count();
                    let verb = if t.decision == PolicyDecision::Deny { "match" } else { "pass" };
                    format!("applies; {hits} of {} rules {verb}", t.rules.len())
                }
            };
            let kind = match t.decision {
                PolicyDecision::Allow => "allow",
                PolicyDecision::Deny => "deny",
            };
            writeln!(f, "  {} ({kind}): {verdict}", t.policy)?;
            for (rule, passed, message) in &t.rules {
                // For a deny policy a rule "passes" when it selects the call for the deny.
                let mark = match (t.decision, *passed) {
                    (PolicyDecision::Allow, true) => "pass",
                    (PolicyDecision::Allow, false) => "FAIL",
                    (PolicyDecision::Deny, true) => "matches",
                    (PolicyDecision::Deny, false) => "does not match",
                };
                let failed = t.decision == PolicyDecision::Allow && !passed;
                writeln!(f, "    - {rule}: {mark}{}", if failed { format!(" ({message})") } else { String::new() })?;
            }
        }
        match &self.decision {
            Decision::Allow(a) => writeln!(f, "decision: allow (policies: {})", a.policies.join(", ")),
            Decision::Deny(d) => writeln!(
                f,
                "decision: deny [{}]{}{}: {}",
                d.code,
                d.policy.as_ref().map(|p| format!(" policy {p}")).unwrap_or_default(),
                d.rule.as_ref().map(|r| format!(" rule {r}")).unwrap_or_default(),
                d.message
            ),
            Decision::NeedsApproval(a) => writeln!(f, "decision: {} approval: {}", a.mode.as_str(), a.reason),
        }
    }
}
