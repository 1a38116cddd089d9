//! e2e: the CRDs on a real API server. They are accepted (the API server compiles and prices every CEL
//! rule, which no client-side check does), every admission rule is enforced by the API server with its
//! own message, the examples pass, and `kubectl get` shows the printer columns and short names.
//!
//! Each rule in crds/ must have a refusal case below: a rule added without one fails
//! `every_admission_rule_is_tested`, which needs no cluster.

mod e2e_support;

use std::collections::BTreeSet;

use e2e_support::{TestNamespace, enabled, install_crds, kubectl, kubectl_ok, kubectl_stdin};
use serde_json::Value;

const TOOL: &str = r#"apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: NAME}
spec:
  description: An e2e tool.
  effect: EFFECT
  inputSchema: {type: object}
  runtime: {exec: {image: toolwarden.local/lab-tools:1, command: [/bin/true]}}
"#;

fn tool(name: &str, effect: &str) -> String {
    TOOL.replace("NAME", name).replace("EFFECT", effect)
}

/// A valid tool with `extra` appended to its spec (two-space indented YAML lines).
fn tool_with(extra: &str) -> String {
    format!("{}{extra}", tool("write-e2e-note", "write"))
}

fn policy(spec: &str) -> String {
    format!("apiVersion: toolwarden.dev/v1alpha1\nkind: ToolPolicy\nmetadata: {{name: e2e-policy}}\nspec:\n{spec}")
}

/// `(rule message, an object that breaks only that rule)`.
fn refusal_cases() -> Vec<(&'static str, String)> {
    vec![
        ("an McpTool name is the MCP tool name: at most 64 characters", tool(&format!("get-{}", "a".repeat(61)), "read")),
        ("catch-all names (execute, run, do-*, *-action, *-admin, *-execute…) do not say what the tool does", tool("execute", "write")),
        ("a destructive tool's name must say so", tool("archive-branch", "destructive")),
        ("a read tool's name must start with a read verb", tool("branch-report", "read")),
        ("a tool whose name says delete/remove/destroy… must have effect destructive", tool("delete-branch", "write")),
        ("a disabled tool needs a disabledReason", tool_with("  disabled: true\n")),
        (
            "a credential needs exactly one of env, file or header",
            tool_with("  credentials:\n  - secretRef: {name: s, key: k}\n    env: TOKEN\n    file: token\n"),
        ),
        ("limits.timeout must be between 1s and 1h", tool_with("  limits: {timeout: 2h}\n")),
        ("limits.maxOutputBytes must be between 1 and 16777216 (16 MiB)", tool_with("  limits: {maxOutputBytes: 0}\n")),
        (
            "runtime needs exactly one of exec, http or mcp",
            tool("write-e2e-note", "write").replace(
                "runtime: {exec: {image: toolwarden.local/lab-tools:1, command: [/bin/true]}}",
                "runtime: {exec: {image: i, command: [x]}, http: {method: GET, url: \"https://example.test/\"}}",
            ),
        ),
        (
            "url must start with https:// (or http://)",
            tool("write-e2e-note", "write").replace(
                "runtime: {exec: {image: toolwarden.local/lab-tools:1, command: [/bin/true]}}",
                "runtime: {http: {method: GET, url: \"ftp://example.test/\"}}",
            ),
        ),
        (
            "a rule needs exactly one of equals, oneOf, prefix, pattern, maxLength, minimum/maximum, pathWithin, hostIn or expression",
            policy("  subjects: {users: [a]}\n  tools: {names: [\"*\"]}\n  decision: allow\n  arguments:\n  - {argument: path, prefix: a/, maxLength: 3}\n"),
        ),
        (
            "a rule other than expression needs `argument`",
            policy("  subjects: {users: [a]}\n  tools: {names: [\"*\"]}\n  decision: allow\n  arguments:\n  - {prefix: a/}\n"),
        ),
        (
            "subjects needs at least one user, group or serviceAccount",
            policy("  subjects: {users: []}\n  tools: {names: [\"*\"]}\n  decision: allow\n"),
        ),
        (
            "tools needs names, a selector or effects",
            policy("  subjects: {users: [a]}\n  tools: {names: []}\n  decision: allow\n"),
        ),
    ]
}

/// Every `x-kubernetes-validations` message in `schema`, recursively.
fn rule_messages(schema: &Value, out: &mut BTreeSet<String>) {
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        out.extend(rules.iter().filter_map(|r| r["message"].as_str()).map(str::to_owned));
    }
    if let Some(properties) = schema["properties"].as_object() {
        properties.values().for_each(|p| rule_messages(p, out));
    }
    rule_messages_of(&schema["items"], out);
}

fn rule_messages_of(schema: &Value, out: &mut BTreeSet<String>) {
    if schema.is_object() {
        rule_messages(schema, out);
    }
}

#[test]
fn every_admission_rule_is_tested() {
    let mut messages = BTreeSet::new();
    for crd in toolwarden_core::crdgen::crds() {
        let schema = serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap();
        rule_messages(&schema, &mut messages);
    }
    let cases = refusal_cases();
    for message in &messages {
        assert!(
            cases.iter().any(|(start, _)| message.starts_with(start)),
            "the admission rule \"{message}\" has no refusal case in tests/e2e_admission.rs"
        );
    }
    assert_eq!(cases.len(), messages.len(), "one case per rule");
}

#[test]
fn the_api_server_enforces_every_admission_rule_with_its_message() {
    if !enabled("the_api_server_enforces_every_admission_rule_with_its_message") {
        return;
    }
    install_crds();
    let ns = TestNamespace::create("tw-e2e-admission");
    for (message, object) in refusal_cases() {
        let (ok, out) = kubectl_stdin(&["apply", "-n", &ns.0, "-f", "-"], &object);
        assert!(!ok, "the API server accepted an object breaking \"{message}\":\n{object}");
        assert!(out.contains(message), "refused, but not with the rule's message \"{message}\":\n{out}");
        // Only this rule: the refusal names no other rule's message.
        for (other, _) in refusal_cases().iter().filter(|(m, _)| *m != message) {
            assert!(!out.contains(other), "\"{message}\"'s case also broke \"{other}\":\n{out}");
        }
    }
    // The bases the cases broke are valid: the API server accepts them.
    let valid = format!("{}---\n{}", tool("write-e2e-note", "write"), policy("  subjects: {users: [a]}\n  tools: {names: [\"*\"]}\n  decision: allow\n"));
    let (ok, out) = kubectl_stdin(&["apply", "-n", &ns.0, "-f", "-"], &valid);
    assert!(ok, "the valid tool and policy were refused:\n{out}");
}

#[test]
fn examples_are_accepted_and_kubectl_shows_them() {
    if !enabled("examples_are_accepted_and_kubectl_shows_them") {
        return;
    }
    install_crds();
    let ns = TestNamespace::create("tw-e2e-examples");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    for file in ["secrets.yaml", "tools.yaml", "policies.yaml"] {
        kubectl_ok(&["apply", "-n", &ns.0, "-f", &format!("{examples}/{file}")]);
    }
    // `kubectl get toolwarden`: both kinds, through the category.
    let all = kubectl_ok(&["get", "toolwarden", "-n", &ns.0]);
    assert!(all.contains("mcptool.toolwarden.dev/read-note"), "{all}");
    assert!(all.contains("toolpolicy.toolwarden.dev/developers-read-notes"), "{all}");
    // Short names and printer columns.
    let header = |out: &str| out.lines().next().unwrap_or_default().split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let tools = kubectl_ok(&["get", "mcpt", "-n", &ns.0]);
    assert_eq!(header(&tools), ["NAME", "EFFECT", "DISABLED", "READY", "AGE"], "{tools}");
    assert!(tools.lines().any(|l| l.split_whitespace().take(3).eq(["purge-cache", "destructive", "true"])), "{tools}");
    let wide = kubectl_ok(&["get", "mcpt", "-n", &ns.0, "-o", "wide"]);
    assert_eq!(header(&wide), ["NAME", "EFFECT", "RUNTIME", "DISABLED", "READY", "REASON", "AGE"], "{wide}");
    let policies = kubectl_ok(&["get", "tpol", "-n", &ns.0]);
    assert_eq!(header(&policies), ["NAME", "DECISION", "TOOLS", "SUBJECTS", "ACCEPTED", "AGE"], "{policies}");
    assert!(policies.lines().any(|l| l.split_whitespace().take(2).eq(["protect-release-notes", "deny"])), "{policies}");
    let sessions = kubectl_ok(&["get", "mcps", "-n", &ns.0]);
    assert!(sessions.contains("No resources found"), "{sessions}");
    let (ok, out) = kubectl(&["explain", "mcptools.spec.egress"]);
    assert!(ok && out.contains("cidr"), "kubectl explain reads the schema: {out}");
}
