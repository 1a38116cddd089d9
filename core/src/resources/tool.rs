//! `McpTool`: one narrow tool an agent may call.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;
use super::schema::free_form_object;

/// One narrow tool exposed to agents. The MCP tool name is `metadata.name` with `-` replaced by `_`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "toolwarden.dev",
    version = "v1alpha1",
    kind = "McpTool",
    plural = "mcptools",
    shortname = "mcpt",
    category = "toolwarden",
    namespaced,
    status = "McpToolStatus",
    doc = "One narrow tool exposed to AI agents over MCP: what it does, how it runs, what it may reach.",
    printcolumn = r#"{"name":"Effect","type":"string","jsonPath":".spec.effect"}"#,
    printcolumn = r#"{"name":"Runtime","type":"string","jsonPath":".status.runtime","priority":1}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.disabled) || !self.disabled || (has(self.disabledReason) && size(self.disabledReason) > 0)",
     "message": "a disabled tool needs a disabledReason: agents and operators see it when a call is refused"},
]))]
pub struct McpToolSpec {
    /// What the tool does, shown to the model. Say what it changes and what it cannot do.
    #[schemars(length(min = 1, max = 2048))]
    pub description: String,
    /// How much the tool can change: read, write, destructive (deletes or overwrites), external (talks to
    /// the outside world: sends mail, posts messages).
    pub effect: Effect,
    /// JSON Schema (2020-12) of the tool's arguments; must describe an object.
    #[schemars(schema_with = "free_form_object")]
    pub input_schema: serde_json::Value,
    /// Optional JSON Schema of the structured output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_free_form_object")]
    pub output_schema: Option<serde_json::Value>,
    /// How the tool runs: exactly one of exec, http, mcp.
    pub runtime: Runtime,
    /// How to dry-run the tool, used by approval flows to show what a call would do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
    /// Secret keys the tool may use. Only these reach the tool, through a scoped Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub credentials: Vec<Credential>,
    /// Network destinations the tool may reach. Empty means no network at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub egress: Vec<Egress>,
    #[serde(default)]
    pub limits: Limits,
    /// Whether the tool's output may carry instructions from outside (untrusted taints the session).
    /// Defaults to untrusted for read tools that fetch outside content (http runtime or any egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_trust: Option<OutputTrust>,
    /// Sandbox options for the tool's worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSpec>,
    /// The kill switch: refuse every call with `disabledReason`.
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
}

fn optional_free_form_object(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    free_form_object(generator)
}

/// How much a tool can change. Drives name checks, approval defaults and MCP tool annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Read,
    Write,
    Destructive,
    External,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Read => "read",
            Effect::Write => "write",
            Effect::Destructive => "destructive",
            Effect::External => "external",
        }
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exactly one way of running the tool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.exec) ? 1 : 0) + (has(self.http) ? 1 : 0) + (has(self.mcp) ? 1 : 0) == 1",
     "message": "runtime needs exactly one of exec, http or mcp"},
]))]
pub struct Runtime {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecRuntime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRuntime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpRuntime>,
}

impl Runtime {
    /// The runtime's kind, or `None` when not exactly one is set.
    pub fn kind(&self) -> Option<RuntimeKind> {
        match (&self.exec, &self.http, &self.mcp) {
            (Some(_), None, None) => Some(RuntimeKind::Exec),
            (None, Some(_), None) => Some(RuntimeKind::Http),
            (None, None, Some(_)) => Some(RuntimeKind::Mcp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Exec,
    Http,
    Mcp,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Exec => "exec",
            RuntimeKind::Http => "http",
            RuntimeKind::Mcp => "mcp",
        }
    }
}

/// Run a program. Each `args` entry is a literal or exactly `{{name}}` (`{{name?}}`: omitted when the
/// argument is absent): the argument's value becomes whole argv entries, never spliced into a string and
/// never seen by a shell. The full arguments also arrive as JSON on stdin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRuntime {
    /// Container image holding the program (ignored by the local sandbox, which uses the host's files).
    pub image: String,
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Static environment variables (credentials go in `credentials`, never here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Call an HTTP API. `url` may hold `{name}` path parameters, percent-encoded from the arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRuntime {
    #[serde(default)]
    pub method: HttpMethod,
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith('https://') || self.startsWith('http://')",
         "message": "url must start with https:// (or http://)"},
    ]))]
    pub url: String,
    /// Query parameter name → argument name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Arguments sent as the JSON body; `["*"]` sends every argument not used in the path or query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body: Vec<String>,
    /// Static request headers (credentials go in `credentials`, never here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub follow_redirects: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// Run an existing MCP server (stdio) inside the sandbox and expose exactly one of its tools.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpRuntime {
    pub image: String,
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The upstream tool's name.
    #[schemars(length(min = 1))]
    pub tool: String,
}

/// A dry run: the same program with other arguments (templates as in `runtime.exec.args`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Preview {
    /// A different program for the preview; defaults to the runtime's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub args: Vec<String>,
}

/// One Secret key the tool may use, and how it reaches the tool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.env) ? 1 : 0) + (has(self.file) ? 1 : 0) + (has(self.header) ? 1 : 0) == 1",
     "message": "a credential needs exactly one of env, file or header"},
]))]
pub struct Credential {
    pub secret_ref: SecretKeyRef,
    /// Environment variable name for the tool's process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z_][A-Z0-9_]*$"))]
    pub env: Option<String>,
    /// File name under the credentials directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub file: Option<String>,
    /// HTTP header (http runtime only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderInjection>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderInjection {
    /// Header name, such as `Authorization`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub name: String,
    /// Text before the secret value, such as `Bearer `.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// One allowed network destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Egress {
    /// IPv4 or IPv6 CIDR, such as `140.82.112.0/20`.
    pub cidr: String,
    /// TCP ports; empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// Per-call limits. Defaults: timeout 30s, maxOutputBytes 64 KiB.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.timeout) || (duration(self.timeout) >= duration('1s') && duration(self.timeout) <= duration('1h'))",
     "message": "limits.timeout must be between 1s and 1h"},
    {"rule": "!has(self.maxOutputBytes) || (self.maxOutputBytes >= 1 && self.maxOutputBytes <= 16777216)",
     "message": "limits.maxOutputBytes must be between 1 and 16777216 (16 MiB)"},
]))]
pub struct Limits {
    /// Such as `30s`, `2m`, `1h` (integers with ms, s, m or h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Kubernetes quantity, such as `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Kubernetes quantity, such as `256Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Size of the temp volume, such as `64Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_size: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputTrust {
    Trusted,
    Untrusted,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    /// RuntimeClass for the worker pods (gVisor, Kata…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// Pre-started worker pods kept ready for new sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 50))]
    pub warm_pool: Option<u32>,
}

/// What the operator observed and built for an McpTool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpToolStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The MCP tool name agents see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeKind>,
    /// Name of the generated NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<String>,
    /// Name of the generated scoped Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The MCP tool name for an McpTool's `metadata.name`.
pub fn tool_name_for(resource_name: &str) -> String {
    resource_name.replace('-', "_")
}
