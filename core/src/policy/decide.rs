//! `decide`: the one function every enforcement point calls.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::arguments::canonicalize;
use super::rules::{CallContext, Verdict};
use super::{Engine, check_argument_limits};
use crate::config::{DEFAULT_CONFIRM_TTL_MS, DEFAULT_HUMAN_TTL_MS, PolicyConfig, RateLimitConfig, ToolConfig};
use crate::resources::{ApprovalMode, Approvers, Effect, PolicyDecision, Subjects, TaintedSessions};

/// The authenticated caller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// User name; service accounts are `system:serviceaccount:<namespace>:<name>`.
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Subject {
    pub fn new(name: impl Into<String>, groups: &[&str]) -> Self {
        Subject { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    /// Whether a policy's `subjects` names this caller.
    pub fn matches(&self, subjects: &Subjects) -> bool {
        let any = |list: &[String]| list.iter().any(|s| s == "*");
        if any(&subjects.users) || any(&subjects.groups) || any(&subjects.service_accounts) {
            return true;
        }
        subjects.users.contains(&self.name)
            || subjects.groups.iter().any(|g| self.groups.contains(g))
            || self.name.strip_prefix("system:serviceaccount:").is_some_and(|sa| {
                subjects.service_accounts.iter().any(|want| want.replacen('/', ":", 1) == sa)
            })
    }
}

/// What `decide` needs to know about the session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    /// The session has read output from a tool whose output is untrusted.
    #[serde(default)]
    pub tainted: bool,
    /// MCP client name (`claude-code`).
    #[serde(default)]
    pub client: String,
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denial),
    NeedsApproval(ApprovalRequest),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowed {
    /// The allow policies whose rules all passed, by name.
    pub policies: Vec<String>,
    /// Limits the gateway must charge before running the call.
    pub rate_limits: Vec<RateLimit>,
    /// The arguments the rules checked, when they differ from the call's: declared path arguments in
    /// canonical form. The tool must receive these.
    pub arguments: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub policy: String,
    pub limit: RateLimitConfig,
}

/// A refusal: a sentence for the agent plus a machine-readable code, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub code: DenialCode,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub message: String,
}

/// Machine-readable refusal codes (also used by the gateway for refusals it makes itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialCode {
    UnknownTool,
    ToolDisabled,
    ArgumentsTooLarge,
    InvalidArguments,
    DeniedByPolicy,
    ArgumentRuleFailed,
    TaintedSession,
    RateLimited,
    ApprovalRequired,
    ApprovalDenied,
    ConfirmTokenInvalid,
}

impl DenialCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialCode::UnknownTool => "unknown_tool",
            DenialCode::ToolDisabled => "tool_disabled",
            DenialCode::ArgumentsTooLarge => "arguments_too_large",
            DenialCode::InvalidArguments => "invalid_arguments",
            DenialCode::DeniedByPolicy => "denied_by_policy",
            DenialCode::ArgumentRuleFailed => "argument_rule_failed",
            DenialCode::TaintedSession => "tainted_session",
            DenialCode::RateLimited => "rate_limited",
            DenialCode::ApprovalRequired => "approval_required",
            DenialCode::ApprovalDenied => "approval_denied",
            DenialCode::ConfirmTokenInvalid => "confirm_token_invalid",
        }
    }
}

impl std::fmt::Display for DenialCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The call may run once approved.
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalRequest {
    /// `Confirm` or `Human`.
    pub mode: ApprovalMode,
    /// The policy that asked for this approval.
    pub policy: String,
    pub ttl: Duration,
    /// Who may decide a human approval (union over the policies asking for it).
    pub approvers: Approvers,
    pub allow_self_approval: bool,
    /// Why approval is needed, for the agent and the approver.
    pub reason: String,
    pub rate_limits: Vec<RateLimit>,
    /// As [`Allowed::arguments`]: what the approved call must run with.
    pub arguments: Option<Value>,
}

impl Decision {
    /// The arguments to run the call with when they differ from those sent (declared paths made
    /// canonical); `None` for a refusal or when nothing changed.
    pub fn canonical_arguments(&self) -> Option<&Value> {
        match self {
            Decision::Allow(a) => a.arguments.as_ref(),
            Decision::NeedsApproval(a) => a.arguments.as_ref(),
            Decision::Deny(_) => None,
        }
    }

    /// `allow`, `deny`, `confirm` or `human`.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(_) => "deny",
            Decision::NeedsApproval(a) if a.mode == ApprovalMode::Human => "human",
            Decision::NeedsApproval(_) => "confirm",
        }
    }
}

fn deny(code: DenialCode, policy: Option<&str>, rule: Option<&str>, message: String) -> Decision {
    Decision::Deny(Denial { code, policy: policy.map(str::to_string), rule: rule.map(str::to_string), message })
}

/// The message for a tool the caller may not see: the same as for a tool that does not exist.
pub(crate) fn unknown_tool(tool: &str) -> Decision {
    deny(DenialCode::UnknownTool, None, None, format!("unknown tool `{tool}`"))
}

/// The approval a policy asks for on `tool`, with the effect's default when it names none.
pub(crate) fn approval_mode(policy: &PolicyConfig, tool: &ToolConfig) -> ApprovalMode {
    match &policy.approval {
        Some(a) => a.mode,
        None => match tool.effect {
            Effect::Destructive => ApprovalMode::Human,
            Effect::External => ApprovalMode::Confirm,
            Effect::Read | Effect::Write => ApprovalMode::None,
        },
    }
}

/// How a policy treats tainted sessions on `tool`, with the effect's default.
pub(crate) fn tainted_handling(policy: &PolicyConfig, tool: &ToolConfig) -> TaintedSessions {
    policy.tainted_sessions.unwrap_or(match tool.effect {
        Effect::Read => TaintedSessions::Allow,
        _ => TaintedSessions::RequireApproval,
    })
}

/// Decides one call. Pure: the same inputs always give the same decision.
///
/// Order: tool visible → not disabled → arguments bounded → schema valid → declared paths canonical →
/// no deny policy applies →
/// some allow policy's rules all pass → tainted-session handling → approval. When several allow
/// policies pass, the strictest approval and tainted-session handling among them apply.
pub fn decide(engine: &Engine, subject: &Subject, session: &Session, tool_name: &str, args: &Value) -> Decision {
    let Some(&index) = engine.by_name.get(tool_name) else {
        return unknown_tool(tool_name);
    };
    if !engine.visible(index, subject) {
        return unknown_tool(tool_name);
    }
    let tool = &engine.config.tools[index];
    if tool.disabled {
        let reason = tool.disabled_reason.as_deref().unwrap_or("disabled by an administrator");
        return deny(DenialCode::ToolDisabled, None, None, format!("{tool_name} is disabled: {reason}"));
    }
    if let Err(e) = check_argument_limits(args, engine.limits) {
        return deny(DenialCode::ArgumentsTooLarge, None, None, format!("{tool_name}: {e}"));
    }
    let compiled = &engine.tools[index];
    if !args.is_object() {
        return deny(DenialCode::InvalidArguments, None, None, format!("{tool_name}: arguments must be a JSON object"));
    }
    // `is_valid` first: it allocates nothing, and almost every call is valid.
    if !compiled.validator.is_valid(args)
        && let Some(error) = compiled.validator.iter_errors(args).next()
    {
        let at = error.instance_path().to_string();
        let place = if at.is_empty() { "arguments".to_string() } else { format!("argument `{at}`") };
        return deny(DenialCode::InvalidArguments, None, None, format!("{tool_name}: {place}: {error}"));
    }
    let canonical = match canonicalize(&compiled.paths, args) {
        Ok(canonical) => canonical,
        Err(bad) => {
            let message = format!("{tool_name}: argument `{}` {}", bad.at, bad.refusal);
            return deny(DenialCode::InvalidArguments, None, None, message);
        }
    };
    let args = canonical.as_ref().unwrap_or(args);
    let ctx = CallContext {
        subject: &subject.name,
        groups: &subject.groups,
        session_id: &session.id,
        tainted: session.tainted,
        client: &session.client,
        paths: &compiled.paths,
    };

    let mut passing = Vec::new();
    let mut first_failure: Option<(usize, usize, Option<String>)> = None;
    for &p in &compiled.policies {
        let policy = &engine.config.policies[p];
        if !subject.matches(&policy.subjects) {
            continue;
        }
        let rules = &engine.policies[p];
        match policy.decision {
            PolicyDecision::Deny => {
                if rules.iter().all(|r| r.matches(args, &ctx)) {
                    let message = policy
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("{tool_name} is denied by policy {} for this call", policy.name));
                    let rule = rules.first().map(|r| r.name.as_str());
                    return deny(DenialCode::DeniedByPolicy, Some(&policy.name), rule, message);
                }
            }
            PolicyDecision::Allow => match rules.iter().enumerate().find_map(|(i, r)| match r.evaluate(args, &ctx) {
                Verdict::Pass => None,
                Verdict::Fail => Some((i, None)),
                Verdict::Unreadable(why) => Some((i, Some(why))),
            }) {
                None => passing.push(p),
                Some((r, why)) => {
                    first_failure.get_or_insert((p, r, why));
                }
            },
        }
    }
    if passing.is_empty() {
        return match first_failure {
            Some((p, r, why)) => {
                let policy = &engine.config.policies[p];
                let rule = &engine.policies[p][r];
                let message = match why {
                    Some(why) => format!("{}: {why}", rule.message),
                    None => rule.message.clone(),
                };
                deny(DenialCode::ArgumentRuleFailed, Some(&policy.name), Some(&rule.name), message)
            }
            // Visible means an allow policy applies, so this is unreachable; fail closed regardless.
            None => unknown_tool(tool_name),
        };
    }

    let policies: Vec<&PolicyConfig> = passing.iter().map(|&p| &engine.config.policies[p]).collect();
    let rate_limits: Vec<RateLimit> = policies
        .iter()
        .filter_map(|p| p.rate_limit.clone().map(|limit| RateLimit { policy: p.name.clone(), limit }))
        .collect();

    let mut mode = ApprovalMode::None;
    let mut asking = policies[0];
    for policy in &policies {
        let m = approval_mode(policy, tool);
        if m > mode {
            mode = m;
            asking = policy;
        }
    }
    // Only calls that need an approval have a reason, so it is written at the end.
    let mut reason = None;
    if session.tainted {
        let strictest = policies.iter().map(|p| (tainted_handling(p, tool), *p)).max_by_key(|(t, _)| *t);
        if let Some((handling, policy)) = strictest {
            match handling {
                TaintedSessions::Allow => {}
                TaintedSessions::Deny => {
                    return deny(
                        DenialCode::TaintedSession,
                        Some(&policy.name),
                        Some("taintedSessions"),
                        format!(
                            "{tool_name} cannot run in this session: it has read untrusted output, and policy {} denies {} tools in such sessions",
                            policy.name, tool.effect
                        ),
                    );
                }
                // The agent itself may be acting on injected instructions, so its own confirmation is
                // worth nothing here: a human decides.
                TaintedSessions::RequireApproval => {
                    if mode < ApprovalMode::Human {
                        mode = ApprovalMode::Human;
                        asking = policy;
                        reason = Some(format!(
                            "{tool_name} needs human approval: this session has read untrusted output (policy {})",
                            policy.name
                        ));
                    }
                }
            }
        }
    }
    if mode == ApprovalMode::None {
        return Decision::Allow(Allowed { policies: policies.iter().map(|p| p.name.clone()).collect(), rate_limits, arguments: canonical });
    }

    let mut approvers = Approvers::default();
    let mut allow_self_approval = false;
    let mut ttl_ms = None;
    for policy in policies.iter().filter(|p| approval_mode(p, tool) == mode || p.name == asking.name) {
        if let Some(a) = &policy.approval {
            approvers.users.extend(a.approvers.users.iter().cloned());
            approvers.groups.extend(a.approvers.groups.iter().cloned());
            allow_self_approval |= a.allow_self_approval && !session.tainted;
            ttl_ms = ttl_ms.or(a.ttl_ms);
        }
    }
    approvers.users.sort();
    approvers.users.dedup();
    approvers.groups.sort();
    approvers.groups.dedup();
    let default_ttl = if mode == ApprovalMode::Human { DEFAULT_HUMAN_TTL_MS } else { DEFAULT_CONFIRM_TTL_MS };
    Decision::NeedsApproval(ApprovalRequest {
        mode,
        policy: asking.name.clone(),
        ttl: Duration::from_millis(ttl_ms.unwrap_or(default_ttl)),
        approvers,
        allow_self_approval,
        reason: reason.unwrap_or_else(|| format!("{tool_name} ({} tool) needs {} approval under policy {}", tool.effect, mode.as_str(), asking.name)),
        rate_limits,
        arguments: canonical,
    })
}
