//! The tool spec the worker serves: a minimal mirror of core's `ToolConfig` (plus `credentialSources`),
//! read from `TOOLWARDEN_TOOL_SPEC`. Unknown fields are ignored so core can grow without breaking workers
//! already copied into images.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::protocol::CredentialSource;

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    pub name: String,
    #[serde(default)]
    pub output_schema: Option<serde_json::Value>,
    pub runtime: Runtime,
    #[serde(default)]
    pub preview: Option<Preview>,
    #[serde(default)]
    pub credentials: Vec<Credential>,
    #[serde(default)]
    pub credential_sources: Vec<CredentialSource>,
    #[serde(default)]
    pub egress: Vec<Egress>,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub tmp_size: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Runtime {
    #[serde(default)]
    pub exec: Option<ExecRuntime>,
    #[serde(default)]
    pub http: Option<HttpRuntime>,
    #[serde(default)]
    pub mcp: Option<McpRuntime>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ExecRuntime {
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRuntime {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub follow_redirects: bool,
}

fn default_method() -> String {
    "GET".into()
}

#[derive(Clone, Debug, Deserialize)]
pub struct McpRuntime {
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub tool: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Preview {
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Credential {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub header: Option<HeaderInjection>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HeaderInjection {
    pub name: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Egress {
    pub cidr: String,
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// Which runtime a spec uses, checked once at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Http,
    Mcp,
}

impl ToolSpec {
    /// Parses and checks the spec; the error says what to fix.
    pub fn parse(json: &str) -> Result<ToolSpec, String> {
        let spec: ToolSpec =
            serde_json::from_str(json).map_err(|e| format!("{}: not a valid tool spec: {e}", crate::protocol::SPEC_ENV))?;
        spec.kind()?;
        if !spec.credential_sources.is_empty() && spec.credential_sources.len() != spec.credentials.len() {
            return Err(format!(
                "tool {}: {} credentialSources for {} credentials; they must be aligned",
                spec.name,
                spec.credential_sources.len(),
                spec.credentials.len()
            ));
        }
        if spec.credential_sources.len() < spec.credentials.len() {
            return Err(format!("tool {}: credentials[{}] has no credentialSources entry", spec.name, spec.credential_sources.len()));
        }
        if spec.timeout_ms == 0 || spec.max_output_bytes == 0 {
            return Err(format!("tool {}: timeoutMs and maxOutputBytes must be positive", spec.name));
        }
        for (i, e) in spec.egress.iter().enumerate() {
            crate::egress::Cidr::parse(&e.cidr).map_err(|m| format!("tool {}: egress[{i}]: {m}", spec.name))?;
        }
        let command = match (&spec.runtime.exec, &spec.runtime.mcp) {
            (Some(e), _) => Some(&e.command),
            (_, Some(m)) => Some(&m.command),
            _ => None,
        };
        if command.is_some_and(|c| c.is_empty()) {
            return Err(format!("tool {}: runtime command is empty", spec.name));
        }
        Ok(spec)
    }

    pub fn kind(&self) -> Result<Kind, String> {
        match (&self.runtime.exec, &self.runtime.http, &self.runtime.mcp) {
            (Some(_), None, None) => Ok(Kind::Exec),
            (None, Some(_), None) => Ok(Kind::Http),
            (None, None, Some(_)) => Ok(Kind::Mcp),
            _ => Err(format!("tool {}: runtime needs exactly one of exec, http or mcp", self.name)),
        }
    }
}

/// Parses a Kubernetes quantity (`128Mi`, `1G`, `500m`, `2`) into a number of base units (bytes or
/// cores); `None` when it does not parse.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_binary_and_decimal_suffixes() {
        assert_eq!(parse_quantity("128Mi"), Some(128.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("250m"), Some(0.25));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("lots"), None);
    }

    #[test]
    fn spec_ignores_unknown_fields_and_checks_credential_sources() {
        let ok = r#"{"name":"t","resource":"t","effect":"read","inputSchema":{},"runtime":{"exec":{"image":"x","command":["/bin/true"]}},
                     "timeoutMs":1000,"maxOutputBytes":10,"outputTrust":"trusted"}"#;
        assert_eq!(ToolSpec::parse(ok).unwrap().kind().unwrap(), Kind::Exec);
        let missing = r#"{"name":"t","runtime":{"exec":{"command":["/bin/true"]}},"timeoutMs":1000,"maxOutputBytes":10,
                          "credentials":[{"secretRef":{"name":"s","key":"k"},"env":"TOKEN"}]}"#;
        assert!(ToolSpec::parse(missing).unwrap_err().contains("credentials[0]"));
        let two = r#"{"name":"t","runtime":{"exec":{"command":["a"]},"mcp":{"command":["b"],"tool":"x"}},"timeoutMs":1,"maxOutputBytes":1}"#;
        assert!(ToolSpec::parse(two).unwrap_err().contains("exactly one"));
    }
}
