//! Bad manifests: each problem is reported once, naming the file, the object and the field.

mod support;

use support::{compile_errors, policy, tool};

fn assert_error(yaml: &str, object: &str, field: &str, fragment: &str) {
    let errors = compile_errors(yaml);
    let found = errors.0.iter().find(|e| e.object == object && e.field.as_deref() == Some(field));
    let Some(error) = found else { panic!("no error on {object} {field}: {errors}") };
    assert!(error.message.contains(fragment), "{error}");
    let text = error.to_string();
    assert!(text.starts_with("inline.yaml (document "), "errors name the file and document: {text}");
}

#[test]
fn invalid_json_schema_is_refused() {
    let yaml = tool("get-a", "read", "").replace("count: {type: integer}", "count: {type: 12}");
    assert_error(&yaml, "McpTool default/get-a", "spec.inputSchema", "not a valid JSON Schema");
    let yaml = tool("get-a", "read", "").replace("type: object\n    properties", "type: string\n    properties");
    assert_error(&yaml, "McpTool default/get-a", "spec.inputSchema", "type: object");
}

#[test]
fn uncompilable_regex_and_cel_are_refused() {
    let base = tool("get-a", "read", "");
    let yaml = base.clone() + &policy("p", "  subjects: {users: [a]}\n  tools: {names: [get-a]}\n  decision: allow\n  arguments:\n    - {argument: path, pattern: \"([a-z\"}");
    assert_error(&yaml, "ToolPolicy default/p", "spec.arguments[0]", "does not compile");
    let yaml = base + &policy("p", "  subjects: {users: [a]}\n  tools: {names: [get-a]}\n  decision: allow\n  arguments:\n    - {expression: \"args.path ==\"}");
    assert_error(&yaml, "ToolPolicy default/p", "spec.arguments[0]", "does not compile");
}

#[test]
fn rules_naming_missing_arguments_are_refused() {
    let yaml = tool("get-a", "read", "")
        + &policy("p", "  subjects: {users: [a]}\n  tools: {names: [get-a]}\n  decision: allow\n  arguments:\n    - {argument: repo, equals: x}");
    assert_error(&yaml, "ToolPolicy default/p", "spec.arguments[0].argument", "no inputSchema has `repo`");
}

#[test]
fn duplicate_tool_names_are_refused() {
    let yaml = tool("get-a", "read", "") + &tool("get-a", "read", "");
    assert_error(&yaml, "McpTool default/get-a", "metadata.name", "already used");
}

#[test]
fn vague_and_misleading_names_are_refused() {
    assert_error(&tool("system-action", "write", ""), "McpTool default/system-action", "metadata.name", "catch-all");
    assert_error(&tool("update-branch", "destructive", ""), "McpTool default/update-branch", "metadata.name", "destructive verb");
    assert_error(&tool("weather", "read", ""), "McpTool default/weather", "metadata.name", "read verb");
}

#[test]
fn spliced_templates_and_host_parameters_are_refused() {
    let yaml = tool("get-a", "read", "").replace("command: [/bin/true]", "command: [/bin/true], args: [\"--path={{path}}\"]");
    assert_error(&yaml, "McpTool default/get-a", "spec.runtime.exec.args[0]", "splices");
    let yaml = tool("get-a", "read", "").replace("command: [/bin/true]", "command: [/bin/true], args: [\"{{nope}}\"]");
    assert_error(&yaml, "McpTool default/get-a", "spec.runtime.exec.args[0]", "does not define");
    let yaml = tool("get-a", "read", "").replace("{exec: {image: busybox, command: [/bin/true]}}", "{http: {url: \"https://{path}.example.com/x\"}}");
    assert_error(&yaml, "McpTool default/get-a", "spec.runtime.http.url", "in the host");
}

#[test]
fn limits_cidrs_and_runtime_count_are_checked() {
    assert_error(&tool("get-a", "read", "  limits: {timeout: 2h}"), "McpTool default/get-a", "spec.limits.timeout", "between 1s and 1h");
    assert_error(&tool("get-a", "read", "  limits: {maxOutputBytes: 0}"), "McpTool default/get-a", "spec.limits.maxOutputBytes", "between");
    assert_error(&tool("get-a", "read", "  egress: [{cidr: 10.0.0.0/33}]"), "McpTool default/get-a", "spec.egress[0].cidr", "not a CIDR");
    let yaml = tool("get-a", "read", "").replace("{exec: {image: busybox, command: [/bin/true]}}", "{}");
    assert_error(&yaml, "McpTool default/get-a", "spec.runtime", "exactly one");
    assert_error(&tool("get-a", "read", "  disabled: true"), "McpTool default/get-a", "spec.disabledReason", "needs a reason");
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = tool("system-action", "write", "") + &tool("get-b", "read", "  limits: {timeout: 2h}");
    assert_eq!(compile_errors(&yaml).0.len(), 2);
}

#[test]
fn a_deny_policy_that_does_not_compile_refuses_everything() {
    use toolwarden_core::compiler::compile_namespace;
    use toolwarden_core::manifest::load_str;
    use toolwarden_core::policy::{Decision, Engine, Session, Subject, decide};

    // An allow for everyone, and a deny whose pattern does not compile: dropping the deny would let
    // `published/...` through; it must refuse every call instead (its error is on its status).
    let yaml = tool("get-a", "read", "")
        + &policy("everyone", "  subjects: {users: [\"*\"]}\n  tools: {names: [\"*\"]}\n  decision: allow\n")
        + &policy("no-published", "  subjects: {groups: [devs]}\n  tools: {names: [get-a]}\n  decision: deny\n  arguments:\n    - {argument: path, pattern: \"(published\"}");
    let manifests = load_str(&yaml, std::path::Path::new("inline.yaml")).unwrap();
    let tools: Vec<_> = manifests.tools.iter().map(|t| &t.object).collect();
    let policies: Vec<_> = manifests.policies.iter().map(|p| &p.object).collect();
    let compiled = compile_namespace("default", &tools, &policies);
    assert!(compiled.errors.iter().any(|e| e.object == "ToolPolicy default/no-published"), "{:?}", compiled.errors);
    let engine = Engine::new(compiled.config).unwrap();
    for caller in [Subject::new("ann", &["devs"]), Subject::new("bob", &[])] {
        let Decision::Deny(denial) = decide(&engine, &caller, &Session::default(), "get_a", &serde_json::json!({"path": "drafts/x"})) else {
            panic!("{} was not refused while a deny policy is broken", caller.name)
        };
        // A tool denied outright is not shown at all (the design's "simply unknown").
        assert_eq!(denial.code, toolwarden_core::policy::DenialCode::UnknownTool, "{denial:?}");
    }

    // A broken allow is only left out: the other allow still serves.
    let yaml = tool("get-a", "read", "")
        + &policy("everyone", "  subjects: {users: [\"*\"]}\n  tools: {names: [\"*\"]}\n  decision: allow\n")
        + &policy("broken-allow", "  subjects: {groups: [devs]}\n  tools: {names: [get-a]}\n  decision: allow\n  arguments:\n    - {argument: path, pattern: \"(x\"}");
    let manifests = load_str(&yaml, std::path::Path::new("inline.yaml")).unwrap();
    let tools: Vec<_> = manifests.tools.iter().map(|t| &t.object).collect();
    let policies: Vec<_> = manifests.policies.iter().map(|p| &p.object).collect();
    let engine = Engine::new(compile_namespace("default", &tools, &policies).config).unwrap();
    let decision = decide(&engine, &Subject::new("ann", &["devs"]), &Session::default(), "get_a", &serde_json::json!({"path": "x"}));
    assert!(matches!(decision, Decision::Allow(_)), "{decision:?}");
}
