//! Refusals as MCP tool results: `isError: true`, one specific sentence for the agent, and a
//! machine-readable code in `structuredContent.code` and `_meta["toolwarden.dev/code"]`.

use rmcp::model::{CallToolResult, ContentBlock as Content, MetaObject};
use serde_json::{Map, Value, json};
use toolwarden_core::policy::Denial;

#[derive(Clone, Debug)]
pub struct Refusal {
    pub code: String,
    pub message: String,
    pub policy: Option<String>,
    pub rule: Option<String>,
    details: Map<String, Value>,
    audit: Option<String>,
}

impl Refusal {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal { code: code.into(), message: message.into(), policy: None, rule: None, details: Map::new(), audit: None }
    }

    pub fn from_denial(denial: &Denial) -> Refusal {
        let mut r = Refusal::new(denial.code.as_str(), denial.message.clone());
        r.policy = denial.policy.clone();
        r.rule = denial.rule.clone();
        r
    }

    pub fn policy(mut self, policy: impl Into<String>) -> Refusal {
        self.policy = Some(policy.into());
        self
    }

    pub fn detail(mut self, key: &str, value: Value) -> Refusal {
        self.details.insert(key.to_owned(), value);
        self
    }

    /// What the audit log records instead of the message (when the message holds a token).
    pub fn audit(mut self, message: String) -> Refusal {
        self.audit = Some(message);
        self
    }

    pub fn audit_message(&self) -> &str {
        self.audit.as_deref().unwrap_or(&self.message)
    }

    /// The result. A tool with an output schema gets the code in `_meta` only, so its
    /// `structuredContent` never contradicts the schema.
    pub fn into_result(self, has_output_schema: bool) -> CallToolResult {
        let mut body = Map::new();
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        if let Some(policy) = &self.policy {
            body.insert("policy".into(), json!(policy));
        }
        if let Some(rule) = &self.rule {
            body.insert("rule".into(), json!(rule));
        }
        body.extend(self.details);
        let mut meta = Map::new();
        meta.insert("toolwarden.dev/code".into(), json!(self.code));
        let mut result = CallToolResult::error(vec![Content::text(self.message)]);
        if !has_output_schema {
            result.structured_content = Some(Value::Object(body));
        }
        result.meta = Some(MetaObject(meta));
        result
    }
}
