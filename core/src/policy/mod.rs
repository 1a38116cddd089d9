//! The policy engine: a compiled [`GatewayConfig`] and the pure [`decide`] over it.

pub mod arguments;
mod decide;
mod explain;
pub mod input_schema;
mod limits;
pub mod path;
pub mod rules;
mod selector;
pub mod url;

use std::collections::HashMap;

pub use decide::{Allowed, ApprovalRequest, Decision, Denial, DenialCode, RateLimit, Session, Subject, decide};
pub use explain::{Explanation, PolicyTrace, explain};
pub use input_schema::{PathArgument, compile_schema, read_schema};
pub use limits::{ArgumentLimits, check_argument_limits};
pub use rules::CompiledRule;

use crate::config::{GatewayConfig, ToolConfig};
use crate::resources::PolicyDecision;
use selector::tool_selected;

/// A gateway config with schemas, rules and the tool → policy index compiled. Build once per config
/// change; [`decide`] only reads it.
pub struct Engine {
    config: GatewayConfig,
    tools: Vec<EngineTool>,
    by_name: HashMap<String, usize>,
    policies: Vec<Vec<CompiledRule>>,
    pub limits: ArgumentLimits,
}

struct EngineTool {
    validator: jsonschema::Validator,
    /// Arguments the schema declares paths (`x-toolwarden-path`).
    paths: Vec<PathArgument>,
    /// Indices of the policies selecting this tool, in policy-name order.
    policies: Vec<usize>,
}

impl Engine {
    /// Compiles `config`; every problem is returned, each naming the tool or policy.
    pub fn new(config: GatewayConfig) -> Result<Engine, Vec<String>> {
        let mut errors = Vec::new();
        let mut policies = Vec::with_capacity(config.policies.len());
        for policy in &config.policies {
            let mut compiled = Vec::with_capacity(policy.rules.len());
            for rule in &policy.rules {
                match CompiledRule::compile(rule) {
                    Ok(r) => compiled.push(r),
                    Err(e) => errors.push(format!("ToolPolicy {}: rule {}: {e}", policy.name, rule.name)),
                }
            }
            policies.push(compiled);
        }
        let mut tools = Vec::with_capacity(config.tools.len());
        let mut by_name = HashMap::with_capacity(config.tools.len());
        for (index, tool) in config.tools.iter().enumerate() {
            if by_name.insert(tool.name.clone(), index).is_some() {
                errors.push(format!("McpTool {}: tool name `{}` is used twice", tool.resource, tool.name));
            }
            let facts = read_schema(&tool.input_schema);
            if !facts.errors.is_empty() {
                errors.extend(facts.errors.iter().map(|e| format!("McpTool {}: inputSchema: {e}", tool.resource)));
                continue;
            }
            match compile_schema(&tool.input_schema) {
                Ok(validator) => {
                    let selecting = config
                        .policies
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| tool_selected(&p.tools, tool))
                        .map(|(i, _)| i)
                        .collect();
                    tools.push(EngineTool { validator, paths: facts.paths, policies: selecting });
                }
                Err(e) => errors.push(format!("McpTool {}: inputSchema: {e}", tool.resource)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Engine { config, tools, by_name, policies, limits: ArgumentLimits::default() })
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    pub fn tool(&self, name: &str) -> Option<&ToolConfig> {
        self.by_name.get(name).map(|&i| &self.config.tools[i])
    }

    /// Tools `subject` may see, in name order (disabled tools are left out: they cannot be called).
    pub fn visible_tools<'a>(&'a self, subject: &'a Subject) -> impl Iterator<Item = &'a ToolConfig> + 'a {
        self.config
            .tools
            .iter()
            .enumerate()
            .filter(move |(i, tool)| !tool.disabled && self.visible(*i, subject))
            .map(|(_, tool)| tool)
    }

    /// Visible: some allow policy applies to the subject and no unconditional deny does.
    fn visible(&self, tool: usize, subject: &Subject) -> bool {
        let mut allowed = false;
        for &p in &self.tools[tool].policies {
            let policy = &self.config.policies[p];
            if !subject.matches(&policy.subjects) {
                continue;
            }
            match policy.decision {
                PolicyDecision::Deny if policy.rules.is_empty() => return false,
                PolicyDecision::Deny => {}
                PolicyDecision::Allow => allowed = true,
            }
        }
        allowed
    }
}

/// Whether a policy's `tools` selector picks `tool`.
pub fn selects(selector: &crate::resources::ToolSelector, tool: &ToolConfig) -> bool {
    tool_selected(selector, tool)
}

/// The approval mode a policy asks for on `tool` (explicit, or the effect's default).
pub fn approval_mode_for(policy: &crate::config::PolicyConfig, tool: &ToolConfig) -> crate::resources::ApprovalMode {
    decide::approval_mode(policy, tool)
}

// The gateway shares one engine across request tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
};
