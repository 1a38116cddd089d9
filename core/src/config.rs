//! The gateway config: what the compiler produces per namespace, the operator writes into a ConfigMap,
//! and the gateway reads back. Plain data with every default resolved; [`crate::policy::Engine`] turns it
//! into compiled validators and rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::{
    ApprovalMode, Approvers, Credential, Effect, Egress, OutputTrust, PolicyDecision, Preview, RateLimitScope, Runtime,
    SandboxSpec, Subjects, TaintedSessions, ToolSelector,
};

/// Format version of [`GatewayConfig`]; bumped on incompatible changes.
pub const CONFIG_FORMAT: u32 = 1;
/// Key of the config inside the ConfigMap the operator writes.
pub const CONFIG_MAP_KEY: &str = "config.json";
/// Label that marks gateway config ConfigMaps.
pub const CONFIG_MAP_LABEL: &str = "toolwarden.dev/config";
/// Name of the gateway config ConfigMap the operator writes in each tenant namespace.
pub const CONFIG_MAP_NAME: &str = "toolwarden-gateway-config";
/// Annotations on that ConfigMap: the config generation and the SHA-256 of `config.json`.
pub const CONFIG_GENERATION_ANNOTATION: &str = "toolwarden.dev/generation";
pub const CONFIG_HASH_ANNOTATION: &str = "toolwarden.dev/content-hash";

pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * 1024;
pub const DEFAULT_CONFIRM_TTL_MS: u64 = 5 * 60 * 1000;
pub const DEFAULT_HUMAN_TTL_MS: u64 = 60 * 60 * 1000;

/// Everything the gateway needs to serve one namespace (`/mcp/{namespace}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    pub format: u32,
    pub namespace: String,
    /// Increases with every change the operator writes; 0 when compiled locally.
    #[serde(default)]
    pub generation: u64,
    /// Sorted by name.
    pub tools: Vec<ToolConfig>,
    /// Sorted by name.
    pub policies: Vec<PolicyConfig>,
}

/// One tool with every default resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolConfig {
    /// MCP tool name (`create_pull_request`).
    pub name: String,
    /// McpTool `metadata.name` (`create-pull-request`).
    pub resource: String,
    pub description: String,
    pub effect: Effect,
    pub input_schema: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
    pub runtime: Runtime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Egress>,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_size: Option<String>,
    pub output_trust: OutputTrust,
    #[serde(default)]
    pub sandbox: SandboxSpec,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One policy with its rules named and their refusal sentences written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    pub subjects: Subjects,
    pub tools: ToolSelector,
    pub decision: PolicyDecision,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Explicit approval; `None` means the default for the tool's effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// `None` means the default for the tool's effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tainted_sessions: Option<TaintedSessions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalConfig {
    pub mode: ApprovalMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default)]
    pub approvers: Approvers,
    #[serde(default)]
    pub allow_self_approval: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    pub calls: u32,
    pub interval_ms: u64,
    pub per: RateLimitScope,
}

/// One argument rule, ready to compile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    /// `title.maxLength`, or the name the author gave.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argument: Option<String>,
    pub check: RuleCheck,
    /// Refusal sentence.
    pub message: String,
}

/// The check of one rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleCheck {
    Equals(serde_json::Value),
    OneOf(Vec<serde_json::Value>),
    Prefix(String),
    Pattern(String),
    MaxLength(u64),
    Range { minimum: Option<f64>, maximum: Option<f64> },
    PathWithin(String),
    HostIn(Vec<String>),
    Expression(String),
}

impl RuleCheck {
    /// The check's field name in a ToolPolicy.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleCheck::Equals(_) => "equals",
            RuleCheck::OneOf(_) => "oneOf",
            RuleCheck::Prefix(_) => "prefix",
            RuleCheck::Pattern(_) => "pattern",
            RuleCheck::MaxLength(_) => "maxLength",
            RuleCheck::Range { minimum: Some(_), maximum: None } => "minimum",
            RuleCheck::Range { minimum: None, maximum: Some(_) } => "maximum",
            RuleCheck::Range { .. } => "range",
            RuleCheck::PathWithin(_) => "pathWithin",
            RuleCheck::HostIn(_) => "hostIn",
            RuleCheck::Expression(_) => "expression",
        }
    }
}

impl GatewayConfig {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config always serialises")
    }

    /// Reads a config back, refusing other format versions.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let config: GatewayConfig = serde_json::from_str(text).map_err(|e| format!("gateway config is not valid: {e}"))?;
        if config.format != CONFIG_FORMAT {
            return Err(format!(
                "gateway config has format {} but this gateway reads format {CONFIG_FORMAT}: upgrade the gateway and operator together",
                config.format
            ));
        }
        Ok(config)
    }
}
