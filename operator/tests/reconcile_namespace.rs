//! The namespace reconcile (gateway config, baseline NetworkPolicy, ToolPolicy status, tool verdicts)
//! against a scripted API server.

mod support;

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};
use support::*;
use toolwarden_core::config::{CONFIG_GENERATION_ANNOTATION, CONFIG_HASH_ANNOTATION, GatewayConfig};
use toolwarden_core::resources::{McpTool, ToolPolicy};
use toolwarden_operator::context::{Context, Settings};
use toolwarden_operator::namespace::build::{ConfigPlan, sha256_hex};
use toolwarden_operator::namespace::reconcile::{NamespaceOutcome, reconcile_namespace};

const CM: &str = "/api/v1/namespaces/dev/configmaps/toolwarden-gateway-config";
const BASELINE: &str = "/apis/networking.k8s.io/v1/namespaces/dev/networkpolicies/toolwarden-workers-baseline";
const POLICY_STATUS: &str = "/apis/toolwarden.dev/v1alpha1/namespaces/dev/toolpolicies/readers/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/dev/events";

fn read_note(generation: i64, disabled: bool) -> McpTool {
    let extra = if disabled { json!({"disabled": true, "disabledReason": "under maintenance"}) } else { json!({}) };
    tool("dev", "read-note", generation, extra)
}

fn readers() -> ToolPolicy {
    policy("dev", "readers", json!({"subjects": {"groups": ["developers"]}, "tools": {"names": ["read_note"]}, "decision": "allow"}))
}

fn policy_json(p: &ToolPolicy) -> Value {
    serde_json::to_value(p).unwrap()
}

async fn story(
    settings: Settings,
    setup: impl FnOnce(&Context),
    tools: Vec<McpTool>,
    policies: Vec<ToolPolicy>,
    steps: Vec<Step>,
) -> (Result<NamespaceOutcome, toolwarden_operator::Error>, Vec<Seen>, Arc<Context>) {
    let (client, handle) = client();
    let ctx = context(client, settings);
    setup(&ctx);
    let server = tokio::spawn(serve(handle, steps));
    let tools: Vec<Arc<McpTool>> = tools.into_iter().map(Arc::new).collect();
    let policies: Vec<Arc<ToolPolicy>> = policies.into_iter().map(Arc::new).collect();
    let result = reconcile_namespace(&ctx, "dev", &tools, &policies).await;
    (result, server.await.expect("scripted server"), ctx)
}

fn config_of(config_map: &Value) -> GatewayConfig {
    GatewayConfig::from_json(config_map["data"]["config.json"].as_str().unwrap()).unwrap()
}

fn baseline_known(ctx: &Context) {
    ctx.baselines.lock().unwrap().insert("dev".into());
}

/// The first story: a fresh namespace. Returns the ConfigMap written and the policy status.
async fn first_write() -> (Value, Value, Arc<Context>) {
    let steps = vec![
        step("GET", &[CM], 404, Reply::Error("NotFound")),
        step("PATCH", &[CM, "fieldManager=toolwarden-operator", "force=true"], 200, Reply::Echo),
        step("PATCH", &[BASELINE, "fieldManager=toolwarden-operator"], 200, Reply::Echo),
        step("PATCH", &[POLICY_STATUS], 200, Reply::Json(policy_json(&readers()))),
    ];
    let (result, seen, ctx) = story(Settings::default(), |_| {}, vec![read_note(1, false)], vec![readers()], steps).await;
    let outcome = result.unwrap();
    assert!(matches!(outcome.plan, Some(ConfigPlan::Write { generation: 1, .. })), "{outcome:?}");
    (seen[1].body.clone(), seen[3].body["status"].clone(), ctx)
}

#[tokio::test]
async fn first_config_is_written_with_generation_hash_and_label() {
    let (config_map, policy_status, ctx) = first_write().await;
    let annotations = &config_map["metadata"]["annotations"];
    assert_eq!(annotations[CONFIG_GENERATION_ANNOTATION], "1");
    let json = config_map["data"]["config.json"].as_str().unwrap();
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], sha256_hex(json));
    assert_eq!(config_map["metadata"]["labels"]["toolwarden.dev/config"], "gateway");
    assert!(config_map["metadata"].get("resourceVersion").is_none(), "a create is unconditional");
    let config = config_of(&config_map);
    assert_eq!((config.generation, config.namespace.as_str()), (1, "dev"));
    assert_eq!(config.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["read_note"]);
    assert_eq!(config.policies[0].name, "readers");

    assert_eq!(policy_status["matchedTools"], json!(["read_note"]));
    assert_eq!(condition(&policy_status, "Accepted")["status"], "True");
    assert_eq!(condition(&policy_status, "Ready")["reason"], "InConfig");
    assert_eq!(ctx.verdict("dev", "read-note").unwrap().included_generation, Some(1));
    let generation = ctx.metrics.config_generation.get_or_create(&vec![("namespace", "dev".to_owned())]).get();
    assert_eq!(generation, 1);
}

#[tokio::test]
async fn unchanged_namespace_costs_one_read_and_no_write() {
    let (config_map, policy_status, _) = first_write().await;
    let mut policy = readers();
    policy.status = Some(serde_json::from_value(policy_status).unwrap());
    let steps = vec![step("GET", &[CM], 200, Reply::Json(with_version(&config_map, "41")))];
    let (result, _, _) = story(Settings::default(), baseline_known, vec![read_note(1, false)], vec![policy], steps).await;
    assert_eq!(result.unwrap().plan, Some(ConfigPlan::Unchanged { generation: 1 }));
}

#[tokio::test]
async fn disabling_a_tool_writes_the_next_generation_conditionally_and_retriggers_the_tool() {
    let (config_map, policy_status, _) = first_write().await;
    let mut policy = readers();
    policy.status = Some(serde_json::from_value(policy_status).unwrap());
    let steps = vec![
        step("GET", &[CM], 200, Reply::Json(with_version(&config_map, "41"))),
        step("PATCH", &[CM], 200, Reply::Echo),
    ];
    let (client, handle) = client();
    let ctx = context(client, Settings::default());
    baseline_known(&ctx);
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    *ctx.tool_trigger.lock().unwrap() = Some(tx);
    let server = tokio::spawn(serve(handle, steps));
    let outcome = reconcile_namespace(&ctx, "dev", &[Arc::new(read_note(2, true))], &[Arc::new(policy)]).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(outcome.tools_triggered, 1);
    let written = &seen[1].body;
    assert_eq!(written["metadata"]["resourceVersion"], "41", "the write is conditional on what was read");
    assert_eq!(written["metadata"]["annotations"][CONFIG_GENERATION_ANNOTATION], "2");
    let config = config_of(written);
    assert_eq!(config.generation, 2);
    assert!(config.tools[0].disabled);
    assert_eq!(config.tools[0].disabled_reason.as_deref(), Some("under maintenance"));
    let triggered = rx.next().await.unwrap();
    assert_eq!((triggered.name.as_str(), triggered.namespace.as_deref()), ("read-note", Some("dev")));
    assert_eq!(ctx.verdict("dev", "read-note").unwrap().included_generation, Some(2));
}

#[tokio::test]
async fn conflict_rereads_the_config_map_and_writes_the_generation_after_the_winner() {
    let (config_map, _, _) = first_write().await;
    let mut winner = with_version(&config_map, "42");
    winner["metadata"]["annotations"][CONFIG_GENERATION_ANNOTATION] = json!("2");
    winner["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] = json!("written-by-someone-else");
    let steps = vec![
        step("GET", &[CM], 200, Reply::Json(with_version(&config_map, "41"))),
        step("PATCH", &[CM], 409, Reply::Error("Conflict")),
        step("GET", &[CM], 200, Reply::Json(winner)),
        step("PATCH", &[CM], 200, Reply::Echo),
    ];
    let (result, seen, _) = story(Settings::default(), baseline_known, vec![read_note(1, false), tool("dev", "list-notes", 1, json!({}))], vec![], steps).await;
    assert!(matches!(result.unwrap().plan, Some(ConfigPlan::Write { generation: 3, .. })));
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "41");
    assert_eq!(seen[3].body["metadata"]["resourceVersion"], "42");
    assert_eq!(config_of(&seen[3].body).generation, 3);
}

#[tokio::test]
async fn persistent_conflicts_end_in_a_retryable_error() {
    let steps = vec![
        step("GET", &[CM], 404, Reply::Error("NotFound")),
        step("PATCH", &[CM], 409, Reply::Error("Conflict")),
        step("GET", &[CM], 404, Reply::Error("NotFound")),
        step("PATCH", &[CM], 409, Reply::Error("Conflict")),
        step("GET", &[CM], 404, Reply::Error("NotFound")),
        step("PATCH", &[CM], 409, Reply::Error("Conflict")),
    ];
    let (result, _, _) = story(Settings::default(), baseline_known, vec![read_note(1, false)], vec![], steps).await;
    let error = result.unwrap_err();
    assert!(error.is_conflict(), "{error}");
    assert!(error.to_string().starts_with("ConfigMap dev/toolwarden-gateway-config: write"), "{error}");
}

#[tokio::test]
async fn oversized_config_is_not_written_and_reported_on_every_object() {
    let settings = Settings { config_max_bytes: 300, ..Settings::default() };
    let steps = vec![
        step("GET", &[CM], 404, Reply::Error("NotFound")),
        step("PATCH", &[BASELINE], 200, Reply::Echo),
        step("PATCH", &[POLICY_STATUS], 200, Reply::Json(policy_json(&readers()))),
        step("POST", &[EVENTS], 201, Reply::Echo),
    ];
    let (result, seen, ctx) = story(settings, |_| {}, vec![read_note(1, false)], vec![readers()], steps).await;
    assert!(matches!(result.unwrap().plan, Some(ConfigPlan::TooLarge { limit: 300, .. })));
    assert!(!seen.iter().any(|s| s.method == "PATCH" && s.uri.contains("configmaps")), "never written, never truncated");
    let ready = condition(&seen[2].body["status"], "Ready").clone();
    assert_eq!(ready["reason"], "ConfigTooLarge");
    assert!(ready["message"].as_str().unwrap().contains("over the 300-byte limit"));
    assert_eq!((seen[3].body["type"].as_str(), seen[3].body["reason"].as_str()), (Some("Warning"), Some("ConfigTooLarge")));
    assert!(ctx.verdict("dev", "read-note").unwrap().config_problem.is_some());
}

#[tokio::test]
async fn policy_whose_cel_does_not_compile_is_refused_on_its_status_and_left_out() {
    let mut spec = json!({"subjects": {"users": ["*"]}, "tools": {"names": ["read_note"]}, "decision": "allow"});
    spec["arguments"] = json!([{"expression": "args.path.startsWith(", "message": "x"}]);
    let broken = policy("dev", "readers", spec);
    let steps = vec![
        step("GET", &[CM], 404, Reply::Error("NotFound")),
        step("PATCH", &[CM], 200, Reply::Echo),
        step("PATCH", &[BASELINE], 200, Reply::Echo),
        step("PATCH", &[POLICY_STATUS], 200, Reply::Json(policy_json(&broken))),
        step("POST", &[EVENTS], 201, Reply::Echo),
    ];
    let (result, seen, _) = story(Settings::default(), |_| {}, vec![read_note(1, false)], vec![broken.clone()], steps).await;
    assert!(result.is_ok());
    assert!(config_of(&seen[1].body).policies.is_empty());
    let accepted = condition(&seen[3].body["status"], "Accepted").clone();
    assert_eq!((accepted["status"].as_str(), accepted["reason"].as_str()), (Some("False"), Some("Invalid")));
    assert!(accepted["message"].as_str().unwrap().starts_with("spec.arguments[0]"), "{accepted}");
    assert_eq!(seen[4].body["reason"], "Invalid");
}

#[tokio::test]
async fn policy_deleted_mid_reconcile_does_not_fail_the_namespace() {
    let steps = vec![
        step("GET", &[CM], 404, Reply::Error("NotFound")),
        step("PATCH", &[CM], 200, Reply::Echo),
        step("PATCH", &[POLICY_STATUS], 404, Reply::Error("NotFound")),
    ];
    let (result, _, _) = story(Settings::default(), baseline_known, vec![read_note(1, false)], vec![readers()], steps).await;
    assert_eq!(result.unwrap().policy_status_writes, 0);
}

#[tokio::test]
async fn namespace_without_tools_or_policies_loses_its_config_and_baseline() {
    let steps = vec![
        step("DELETE", &[CM], 200, Reply::Json(json!({"kind": "Status", "status": "Success"}))),
        step("DELETE", &[BASELINE], 404, Reply::Error("NotFound")),
    ];
    let (result, _, ctx) = story(
        Settings::default(),
        |ctx| {
            ctx.verdicts.write().unwrap().insert(("dev".into(), "gone".into()), Default::default());
        },
        vec![],
        vec![],
        steps,
    )
    .await;
    assert_eq!(result.unwrap().plan, None);
    assert!(ctx.verdict("dev", "gone").is_none());
}

#[tokio::test]
async fn tool_being_deleted_leaves_the_config_at_once() {
    let (config_map, _, _) = first_write().await;
    let mut deleting = read_note(1, false);
    deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-01-01T00:00:00Z".parse().unwrap()));
    let other = tool("dev", "list-notes", 1, json!({}));
    let steps = vec![step("GET", &[CM], 200, Reply::Json(with_version(&config_map, "41"))), step("PATCH", &[CM], 200, Reply::Echo)];
    let (_, seen, _) = story(Settings::default(), baseline_known, vec![deleting, other], vec![], steps).await;
    let names: Vec<String> = config_of(&seen[1].body).tools.into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["list_notes"]);
}
