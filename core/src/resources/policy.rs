//! `ToolPolicy`: who may call which tools, with which arguments, under which approval.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::any_value;
use super::{Condition, Effect};

/// Who may call which tools with which arguments. Deny wins; no matching allow means no access.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "toolwarden.dev",
    version = "v1alpha1",
    kind = "ToolPolicy",
    plural = "toolpolicies",
    shortname = "tpol",
    category = "toolwarden",
    namespaced,
    status = "ToolPolicyStatus",
    doc = "Who may call which McpTools, with which arguments, under which approval and rate limit.",
    printcolumn = r#"{"name":"Decision","type":"string","jsonPath":".spec.decision"}"#,
    printcolumn = r#"{"name":"Tools","type":"string","jsonPath":".status.toolsSummary"}"#,
    printcolumn = r#"{"name":"Subjects","type":"string","jsonPath":".status.subjectsSummary"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub subjects: Subjects,
    pub tools: ToolSelector,
    pub decision: PolicyDecision,
    /// Business rules on the arguments. In an allow policy every rule must pass; in a deny policy they
    /// narrow the calls the deny applies to (it applies when every rule matches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub arguments: Vec<ArgumentRule>,
    /// Approval before the call runs. Default by effect: destructive → human, external → confirm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// What to do in a session that has read untrusted output. Default: allow for read tools,
    /// requireApproval for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tainted_sessions: Option<TaintedSessions>,
    /// Refusal sentence of a deny policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Callers a policy applies to. `"*"` in any list means any authenticated caller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "size(self.users) + size(self.groups) + size(self.serviceAccounts) > 0",
     "message": "subjects needs at least one user, group or serviceAccount (\"*\" for any authenticated caller)"},
]))]
pub struct Subjects {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// `namespace/name`.
    #[serde(default)]
    pub service_accounts: Vec<String>,
}

/// Tools a policy applies to. Every criterion given must match; at least one is required.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "size(self.names) > 0 || has(self.selector) || size(self.effects) > 0",
     "message": "tools needs names, a selector or effects (names: [\"*\"] for every tool)"},
]))]
pub struct ToolSelector {
    /// MCP tool names (`create_pull_request`) or resource names; `"*"` for every tool.
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default)]
    pub effects: Vec<Effect>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyDecision {
    Allow,
    Deny,
}

/// One business rule on the arguments: `argument` plus exactly one check, or an `expression`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    // `equals` and `oneOf` hold any JSON values (no schema type), which CEL cannot see: the API server
    // refuses two of the other checks here, and the compiler (the operator's Accepted condition) refuses
    // a rule with no check, or with `equals`/`oneOf` and another one.
    {"rule": "(has(self.prefix) ? 1 : 0) + (has(self.pattern) ? 1 : 0) + (has(self.maxLength) ? 1 : 0) + ((has(self.minimum) || has(self.maximum)) ? 1 : 0) + (has(self.pathWithin) ? 1 : 0) + (has(self.hostIn) ? 1 : 0) + (has(self.expression) ? 1 : 0) <= 1",
     "message": "a rule needs exactly one of equals, oneOf, prefix, pattern, maxLength, minimum/maximum, pathWithin, hostIn or expression"},
    {"rule": "has(self.expression) || has(self.argument)",
     "message": "a rule other than expression needs `argument`"},
]))]
pub struct ArgumentRule {
    /// Rule name used in refusals and audit records; defaults to `<argument>.<check>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Argument path: a top-level argument name, or `a.b` for nested objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argument: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub equals: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value_list")]
    pub one_of: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Characters of a string, or items of an array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    /// Base directory a path argument must stay within (after `..`, percent-decoding and joining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_within: Option<String>,
    /// Allowed URL hosts (`api.github.com`, `*.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_in: Option<Vec<String>>,
    /// CEL over `args`, `subject` (`name`, `groups`) and `session` (`id`, `tainted`, `client`);
    /// must be true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Refusal sentence; a specific default is generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn any_value_list(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = any_value(generator);
    schemars::json_schema!({ "type": "array", "items": item })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    None,
    Confirm,
    Human,
}

impl ApprovalMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalMode::None => "none",
            ApprovalMode::Confirm => "confirm",
            ApprovalMode::Human => "human",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalSpec {
    pub mode: ApprovalMode,
    /// How long a confirm token or a pending approval stays valid, such as `10m`. Default 5m (confirm),
    /// 1h (human).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub ttl: Option<String>,
    /// Who may decide a human approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
    /// Let the calling user approve through MCP elicitation when the client supports it.
    #[serde(default)]
    pub allow_self_approval: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approvers {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    #[schemars(range(min = 1))]
    pub calls: u32,
    /// Such as `1m`.
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: String,
    #[serde(default)]
    pub per: RateLimitScope,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    #[default]
    Subject,
    Session,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TaintedSessions {
    Allow,
    RequireApproval,
    Deny,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolPolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// MCP names of the tools the policy currently matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_tools: Vec<String>,
    /// Short text for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects_summary: Option<String>,
    /// Problems that do not stop the policy from working (such as names of tools that do not exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
