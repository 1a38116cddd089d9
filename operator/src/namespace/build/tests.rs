use serde_json::json;
use toolwarden_core::compiler::compile_namespace;

use super::*;

fn tool(name: &str, generation: i64) -> McpTool {
    serde_json::from_value(json!({
        "apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpTool",
        "metadata": {"name": name, "namespace": "dev", "uid": format!("uid-{name}"), "generation": generation},
        "spec": {"description": "Reads a note.", "effect": "read",
                 "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
                 "runtime": {"exec": {"image": "x", "command": ["cat"], "args": ["{{path}}"]}}}
    }))
    .unwrap()
}

fn policy(name: &str, spec: serde_json::Value) -> ToolPolicy {
    serde_json::from_value(json!({
        "apiVersion": "toolwarden.dev/v1alpha1", "kind": "ToolPolicy",
        "metadata": {"name": name, "namespace": "dev", "generation": 1},
        "spec": spec
    }))
    .unwrap()
}

fn allow(names: &[&str]) -> serde_json::Value {
    json!({"subjects": {"groups": ["developers"]}, "tools": {"names": names}, "decision": "allow"})
}

fn compile(tools: &[McpTool], policies: &[ToolPolicy]) -> Compiled {
    compile_namespace("dev", &tools.iter().collect::<Vec<_>>(), &policies.iter().collect::<Vec<_>>())
}

#[test]
fn first_write_is_generation_one_with_the_hash_of_the_json() {
    let compiled = compile(&[tool("read-note", 1)], &[]);
    let ConfigPlan::Write { generation, json, hash } = plan_config(compiled.config, None, 0, 1 << 20) else { panic!() };
    assert_eq!(generation, 1);
    assert_eq!(hash, sha256_hex(&json));
    assert_eq!(GatewayConfig::from_json(&json).unwrap().generation, 1);
}

#[test]
fn unchanged_content_is_not_rewritten_and_a_change_bumps_the_generation() {
    let compiled = compile(&[tool("read-note", 1)], &[]);
    let ConfigPlan::Write { generation, hash, .. } = plan_config(compiled.config.clone(), None, 0, 1 << 20) else { panic!() };
    let existing = Existing { generation, hash };
    assert_eq!(plan_config(compiled.config, Some(&existing), 1, 1 << 20), ConfigPlan::Unchanged { generation: 1 });
    let changed = compile(&[tool("read-note", 1), tool("list-notes", 1)], &[]);
    assert!(matches!(plan_config(changed.config, Some(&existing), 1, 1 << 20), ConfigPlan::Write { generation: 2, .. }));
}

#[test]
fn generation_never_goes_back_after_the_config_map_was_deleted() {
    let compiled = compile(&[tool("read-note", 1)], &[]);
    assert!(matches!(plan_config(compiled.config, None, 7, 1 << 20), ConfigPlan::Write { generation: 8, .. }));
}

#[test]
fn oversized_config_is_not_written_and_every_tool_hears_why() {
    let tools = [tool("read-note", 1), tool("list-notes", 1)];
    let compiled = compile(&tools, &[]);
    let plan = plan_config(compiled.config.clone(), None, 0, 100);
    let ConfigPlan::TooLarge { bytes, limit: 100 } = plan else { panic!("{plan:?}") };
    assert!(bytes > 100);
    let verdicts = tool_verdicts("dev", &tools.iter().collect::<Vec<_>>(), &compiled, &plan);
    for verdict in verdicts.values() {
        assert_eq!(verdict.included_generation, None);
        assert!(verdict.config_problem.as_deref().unwrap().contains("over the 100-byte limit"));
    }
}

#[test]
fn verdict_names_the_generation_compiled_and_duplicate_names() {
    // `read-note` and `read_note` both become MCP tool `read_note`.
    let tools = [tool("read-note", 4), tool("read_note", 1)];
    let compiled = compile(&tools, &[]);
    let plan = plan_config(compiled.config.clone(), None, 0, 1 << 20);
    let verdicts = tool_verdicts("dev", &tools.iter().collect::<Vec<_>>(), &compiled, &plan);
    assert_eq!(verdicts["read-note"].included_generation, Some(4));
    let duplicate = &verdicts["read_note"];
    assert_eq!(duplicate.included_generation, None);
    assert!(duplicate.excluded.as_deref().unwrap().contains("already used by McpTool dev/read-note"), "{duplicate:?}");
}

#[test]
fn config_map_carries_label_annotations_and_json() {
    let cm = build_config_map("dev", 3, "{}".into(), "abc".into(), Some("42".into()));
    let labels = cm.metadata.labels.unwrap();
    assert_eq!(labels[CONFIG_MAP_LABEL], "gateway");
    let annotations = cm.metadata.annotations.unwrap();
    assert_eq!(annotations[CONFIG_GENERATION_ANNOTATION], "3");
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], "abc");
    assert_eq!(cm.data.unwrap()[CONFIG_MAP_KEY], "{}");
    assert_eq!(cm.metadata.name.as_deref(), Some(CONFIG_MAP_NAME));
    assert_eq!(cm.metadata.resource_version.as_deref(), Some("42"));
    assert_eq!(existing(&build_config_map("dev", 3, "{}".into(), "abc".into(), None)), Some(Existing { generation: 3, hash: "abc".into() }));
}

#[test]
fn policy_status_lists_matched_tools_and_warns_about_missing_ones() {
    let tools = [tool("read-note", 1)];
    let p = policy("readers", allow(&["read_note", "ghost_tool"]));
    let compiled = compile(&tools, std::slice::from_ref(&p));
    let status = build_policy_status(&p, &compiled, None, "t");
    assert_eq!(status.matched_tools, vec!["read_note"]);
    assert_eq!(status.tools_summary.as_deref(), Some("read_note"));
    assert_eq!(status.subjects_summary.as_deref(), Some("groups: developers"));
    let accepted = &status.conditions[0];
    assert_eq!((accepted.reason.as_str(), accepted.is_true()), ("ValidWithWarnings", true));
    assert!(status.warnings[0].contains("ghost_tool"), "{:?}", status.warnings);
    assert_eq!(status.conditions[1].reason, "InConfig");
}

#[test]
fn policy_whose_expression_does_not_compile_is_not_accepted() {
    let mut spec = allow(&["read_note"]);
    spec["arguments"] = json!([{"expression": "args.path.startsWith("}]);
    let p = policy("broken", spec);
    let compiled = compile(&[tool("read-note", 1)], std::slice::from_ref(&p));
    let status = build_policy_status(&p, &compiled, None, "t");
    let accepted = &status.conditions[0];
    assert_eq!((accepted.reason.as_str(), accepted.is_true()), ("Invalid", false));
    assert!(accepted.message.starts_with("spec.arguments[0]"), "{}", accepted.message);
    assert_eq!(status.conditions[1].reason, "NotAccepted");
    assert!(status.matched_tools.is_empty());
}

#[test]
fn policy_hears_about_a_config_too_large() {
    let p = policy("readers", allow(&["read_note"]));
    let compiled = compile(&[tool("read-note", 1)], std::slice::from_ref(&p));
    let status = build_policy_status(&p, &compiled, Some("too large"), "t");
    assert_eq!(status.conditions[1].reason, "ConfigTooLarge");
}

#[test]
fn unchanged_policy_status_is_identical() {
    let mut p = policy("readers", allow(&["read_note"]));
    let compiled = compile(&[tool("read-note", 1)], std::slice::from_ref(&p));
    p.status = Some(build_policy_status(&p, &compiled, None, "t1"));
    assert_eq!(build_policy_status(&p, &compiled, None, "t2"), p.status.clone().unwrap());
}

#[test]
fn orphan_sweep_takes_unowned_leftovers_and_unused_secrets_only() {
    let with_credentials: McpTool = {
        let mut t = tool("read-note", 1);
        t.spec.credentials = serde_json::from_value(json!([{"secretRef": {"name": "s", "key": "k"}, "env": "K"}])).unwrap();
        t
    };
    let plain = tool("list-notes", 1);
    let o = |name: &str, tool: &str, owned: bool, secret: bool| Labelled { name: name.into(), tool: tool.into(), owned_by_tool: owned, is_secret: secret };
    let objects = [
        o("np-gone-unowned", "gone", false, false),
        o("np-gone-owned", "gone", true, false),
        o("secret-of-plain", "list-notes", true, true),
        o("secret-in-use", "read-note", true, true),
        o("np-of-plain", "list-notes", true, false),
    ];
    assert_eq!(orphans(&objects, &[&with_credentials, &plain]), vec!["np-gone-unowned", "secret-of-plain"]);
}
