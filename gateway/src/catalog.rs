//! What `tools/list` shows a caller: the tools its policies let it see, in name order, with annotations
//! derived from the effect and an optional `confirm_token` argument on tools that need confirmation.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};
use toolwarden_core::config::ToolConfig;
use toolwarden_core::policy::{Engine, Subject, approval_mode_for, selects};
use toolwarden_core::resources::{ApprovalMode, Effect, PolicyDecision};

/// Name of the argument that carries a confirm token.
pub const CONFIRM_TOKEN_ARG: &str = "confirm_token";

/// Whether some allow policy that applies to `subject` asks for confirmation on `tool`.
pub fn needs_confirm(engine: &Engine, subject: &Subject, tool: &ToolConfig) -> bool {
    engine.config().policies.iter().any(|p| {
        p.decision == PolicyDecision::Allow
            && subject.matches(&p.subjects)
            && selects(&p.tools, tool)
            && approval_mode_for(p, tool) == ApprovalMode::Confirm
    })
}

/// MCP annotations for an effect. Hints only: enforcement never relies on what the client does with them.
pub fn annotations(tool: &ToolConfig) -> ToolAnnotations {
    let (read_only, destructive, idempotent, open_world) = match tool.effect {
        Effect::Read => (true, false, true, !tool.egress.is_empty()),
        Effect::Write => (false, false, false, !tool.egress.is_empty()),
        Effect::Destructive => (false, true, false, !tool.egress.is_empty()),
        Effect::External => (false, false, false, true),
    };
    ToolAnnotations::new().read_only(read_only).destructive(destructive).idempotent(idempotent).open_world(open_world)
}

fn input_schema(tool: &ToolConfig, confirm: bool) -> JsonObject {
    let mut schema = match &tool.input_schema {
        Value::Object(map) => map.clone(),
        _ => JsonObject::new(),
    };
    if confirm {
        let props = schema.entry("properties").or_insert_with(|| json!({}));
        if let Value::Object(props) = props {
            props.insert(
                CONFIRM_TOKEN_ARG.into(),
                json!({
                    "type": "string",
                    "description": "Leave out on the first call: the gateway answers with a preview and a confirm token. Repeat the identical call with that token to run it."
                }),
            );
        }
    }
    schema
}

pub fn to_mcp_tool(engine: &Engine, subject: &Subject, tool: &ToolConfig) -> Tool {
    let confirm = needs_confirm(engine, subject, tool);
    let mut description = tool.description.clone();
    if confirm {
        description.push_str(" (Needs confirmation: the first call returns a preview and a confirm_token.)");
    }
    let mut out = Tool::new(tool.name.clone(), description, Arc::new(input_schema(tool, confirm))).with_annotations(annotations(tool));
    if let Some(Value::Object(schema)) = &tool.output_schema {
        out = out.with_raw_output_schema(Arc::new(schema.clone()));
    }
    out
}

/// The caller's tool list, deterministic (name order).
pub fn list(engine: &Engine, subject: &Subject) -> Vec<Tool> {
    let mut tools: Vec<Tool> = engine.visible_tools(subject).map(|t| to_mcp_tool(engine, subject, t)).collect();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    tools
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_follow_the_effect() {
        let mut tool: ToolConfig = serde_json::from_value(json!({
            "name": "delete_note", "resource": "delete-note", "description": "d", "effect": "destructive",
            "inputSchema": {"type": "object"}, "runtime": {"exec": {"image": "i", "command": ["x"]}},
            "timeoutMs": 1000, "maxOutputBytes": 10, "outputTrust": "trusted"
        }))
        .unwrap();
        let a = serde_json::to_value(annotations(&tool)).unwrap();
        assert_eq!(a, json!({"readOnlyHint": false, "destructiveHint": true, "idempotentHint": false, "openWorldHint": false}));
        tool.effect = Effect::Read;
        let a = serde_json::to_value(annotations(&tool)).unwrap();
        assert_eq!(a["readOnlyHint"], true);
        tool.effect = Effect::External;
        assert_eq!(serde_json::to_value(annotations(&tool)).unwrap()["openWorldHint"], true);
    }
}
