//! The McpTool reconcile against a scripted API server: each test is one story, with every request the
//! operator makes, in order.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use toolwarden_core::resources::McpTool;
use toolwarden_operator::context::{Context, Settings};
use toolwarden_operator::namespace::build::ToolVerdict;
use toolwarden_operator::tool::reconcile::{error_policy, reconcile, reconcile_tool};

const SECRET_GET: &str = "/api/v1/namespaces/dev/secrets/github";
const NP_APPLY: &str = "/apis/networking.k8s.io/v1/namespaces/dev/networkpolicies/toolwarden-tool-read-issue?";
const SECRET_APPLY: &str = "/api/v1/namespaces/dev/secrets/toolwarden-tool-read-issue?";
const STATUS: &str = "/apis/toolwarden.dev/v1alpha1/namespaces/dev/mcptools/read-issue/status?";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/dev/events";

fn github_tool(generation: i64) -> McpTool {
    tool(
        "dev",
        "read-issue",
        generation,
        json!({
            "credentials": [{"secretRef": {"name": "github", "key": "token"}, "env": "GH_TOKEN"}],
            "egress": [{"cidr": "140.82.112.0/20", "ports": [443]}]
        }),
    )
}

/// What the API server answers to a status write: the whole object.
fn tool_json(generation: i64) -> Value {
    serde_json::to_value(github_tool(generation)).unwrap()
}

fn included(ctx: &Context, generation: i64) {
    ctx.verdicts.write().unwrap().insert(
        ("dev".into(), "read-issue".into()),
        ToolVerdict { included_generation: Some(generation), excluded: None, config_problem: None },
    );
}

/// Runs one reconcile of `tool` against `steps`; returns the result and the requests seen.
async fn story(
    tool: McpTool,
    settings: Settings,
    setup: impl FnOnce(&Context),
    steps: Vec<Step>,
) -> (Result<kube::runtime::controller::Action, toolwarden_operator::Error>, Vec<Seen>, Arc<Context>) {
    let (client, handle) = client();
    let ctx = context(client, settings);
    setup(&ctx);
    let server = tokio::spawn(serve(handle, steps));
    let result = reconcile_tool(&tool, &ctx).await;
    let seen = server.await.expect("scripted server");
    (result, seen, ctx)
}

fn applied_status(seen: &[Seen]) -> Value {
    seen.iter().find(|s| s.uri.contains("/status?")).expect("a status write")["body"].clone()["status"].clone()
}

impl std::ops::Index<&str> for Seen {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        assert_eq!(key, "body");
        &self.body
    }
}

#[tokio::test]
async fn new_tool_gets_its_network_policy_scoped_secret_and_ready_status() {
    let steps = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("token", "ghp_s3cret"), ("admin", "root")]))),
        step("PATCH", &[NP_APPLY, "fieldManager=toolwarden-operator", "force=true"], 200, Reply::Echo),
        step("PATCH", &[SECRET_APPLY, "fieldManager=toolwarden-operator"], 200, Reply::Echo),
        step("PATCH", &[STATUS, "fieldManager=toolwarden-operator"], 200, Reply::Json(tool_json(1))),
        step("POST", &[EVENTS], 201, Reply::Echo),
    ];
    let (result, seen, _) = story(github_tool(1), Settings::default(), |ctx| included(ctx, 1), steps).await;
    assert!(result.is_ok(), "{result:?}");

    let np = &seen[1].body;
    assert_eq!(np["kind"], "NetworkPolicy");
    assert_eq!(np["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"], "140.82.112.0/20");
    assert_eq!(np["spec"]["egress"][1]["ports"], json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]));
    assert_eq!(np["metadata"]["ownerReferences"][0]["uid"], "uid-read-issue");

    let secret = &seen[2].body;
    assert_eq!(secret["data"], json!({"token": "Z2hwX3MzY3JldA=="}), "only the referenced key is copied");
    assert_eq!(secret["metadata"]["labels"]["toolwarden.dev/tool"], "read-issue");

    let status = applied_status(&seen);
    assert_eq!(condition(&status, "Accepted")["status"], "True");
    assert_eq!(condition(&status, "CredentialsReady")["reason"], "Copied");
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["networkPolicy"], "toolwarden-tool-read-issue");
    assert_eq!(status["secret"], "toolwarden-tool-read-issue");
    assert!(!seen[3].body.to_string().contains("ghp_s3cret"), "no secret value in status");

    let event = &seen[4].body;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Normal"), Some("Ready")));
    assert_eq!(event["regarding"]["name"], "read-issue");
}

#[tokio::test]
async fn unchanged_tool_reapplies_idempotently_and_writes_no_status() {
    // First reconcile to learn the status the operator writes; then the same tool carrying it.
    let first = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("token", "v1")]))),
        step("PATCH", &[NP_APPLY], 200, Reply::Echo),
        step("PATCH", &[SECRET_APPLY], 200, Reply::Echo),
        step("PATCH", &[STATUS], 200, Reply::Json(tool_json(1))),
        step("POST", &[EVENTS], 201, Reply::Echo),
    ];
    let (_, seen, _) = story(github_tool(1), Settings::default(), |ctx| included(ctx, 1), first).await;
    let mut tool = github_tool(1);
    tool.status = Some(serde_json::from_value(applied_status(&seen)).unwrap());

    let again = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("token", "v1")]))),
        step("PATCH", &[NP_APPLY], 200, Reply::Echo),
        step("PATCH", &[SECRET_APPLY], 200, Reply::Echo),
    ];
    let (result, _, _) = story(tool, Settings::default(), |ctx| included(ctx, 1), again).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn updated_tool_gets_the_new_egress_and_a_new_observed_generation() {
    let mut tool = github_tool(2);
    tool.spec.egress[0].cidr = "0.0.0.0/0".into();
    let steps = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("token", "v1")]))),
        step("PATCH", &[NP_APPLY], 200, Reply::Echo),
        step("PATCH", &[SECRET_APPLY], 200, Reply::Echo),
        step("PATCH", &[STATUS], 200, Reply::Json(tool_json(1))),
        step("POST", &[EVENTS], 201, Reply::Echo),
    ];
    let (result, seen, _) = story(tool, Settings::default(), |ctx| included(ctx, 2), steps).await;
    assert!(result.is_ok(), "{result:?}");
    let block = &seen[1].body["spec"]["egress"][0]["to"][0]["ipBlock"];
    assert_eq!(block["cidr"], "0.0.0.0/0");
    assert!(block["except"].as_array().unwrap().contains(&json!("169.254.0.0/16")));
    assert_eq!(applied_status(&seen)["observedGeneration"], 2);
}

#[tokio::test]
async fn changed_source_secret_value_is_copied_again() {
    let steps = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("token", "rotated")]))),
        step("PATCH", &[NP_APPLY], 200, Reply::Echo),
        step("PATCH", &[SECRET_APPLY], 200, Reply::Echo),
        step("PATCH", &[STATUS], 200, Reply::Json(tool_json(1))),
        step("POST", &[EVENTS], 201, Reply::Echo),
    ];
    let (_, seen, _) = story(github_tool(1), Settings::default(), |ctx| included(ctx, 1), steps).await;
    assert_eq!(seen[2].body["data"]["token"], "cm90YXRlZA==");
}

#[tokio::test]
async fn missing_key_sets_credentials_ready_false_and_removes_the_old_copy() {
    let mut tool = github_tool(1);
    tool.status = Some(serde_json::from_value(json!({"secret": "toolwarden-tool-read-issue", "networkPolicy": "toolwarden-tool-read-issue"})).unwrap());
    let steps = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("other", "ghp_s3cret")]))),
        step("PATCH", &[NP_APPLY], 200, Reply::Echo),
        step("DELETE", &["/api/v1/namespaces/dev/secrets/toolwarden-tool-read-issue"], 200, Reply::Json(json!({"kind": "Status", "status": "Success"}))),
        step("PATCH", &[STATUS], 200, Reply::Json(tool_json(1))),
        step("POST", &[EVENTS], 201, Reply::Echo),
    ];
    let (result, seen, _) = story(tool, Settings::default(), |ctx| included(ctx, 1), steps).await;
    assert!(result.is_ok(), "a content problem is a status, not an error: {result:?}");
    let status = applied_status(&seen);
    let credentials = condition(&status, "CredentialsReady");
    assert_eq!((credentials["status"].as_str(), credentials["reason"].as_str()), (Some("False"), Some("KeyNotFound")));
    assert_eq!(credentials["message"], "credentials[0]: Secret github has no key token");
    assert_eq!(condition(&status, "Ready")["reason"], "CredentialsNotReady");
    assert!(status.get("secret").is_none());
    let event = &seen[4].body;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("KeyNotFound")));
    assert!(!seen.iter().any(|s| s.method != "GET" && s.body.to_string().contains("ghp_s3cret")));
}

#[tokio::test]
async fn missing_secret_is_reported_and_nothing_is_copied() {
    let steps = vec![
        step("GET", &[SECRET_GET], 404, Reply::Error("NotFound")),
        step("PATCH", &[NP_APPLY], 200, Reply::Echo),
        step("PATCH", &[STATUS], 200, Reply::Json(tool_json(1))),
        step("POST", &[EVENTS], 201, Reply::Echo),
    ];
    let (result, seen, _) = story(github_tool(1), Settings::default(), |ctx| included(ctx, 1), steps).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(condition(&applied_status(&seen), "CredentialsReady")["reason"], "SecretNotFound");
}

#[tokio::test]
async fn colliding_keys_are_refused_without_reading_any_secret() {
    let tool = tool(
        "dev",
        "read-issue",
        1,
        json!({"credentials": [
            {"secretRef": {"name": "github", "key": "token"}, "env": "GH_TOKEN"},
            {"secretRef": {"name": "gitlab", "key": "token"}, "env": "GL_TOKEN"}
        ]}),
    );
    let steps = vec![step("PATCH", &[NP_APPLY], 200, Reply::Echo), step("PATCH", &[STATUS], 200, Reply::Json(tool_json(1))), step("POST", &[EVENTS], 201, Reply::Echo)];
    let (_, seen, _) = story(tool, Settings::default(), |ctx| included(ctx, 1), steps).await;
    assert_eq!(condition(&applied_status(&seen), "CredentialsReady")["reason"], "KeyCollision");
}

#[tokio::test]
async fn invalid_tool_gets_no_objects_and_says_why() {
    let mut tool = github_tool(1);
    tool.spec.egress[0].cidr = "140.82.112.0/40".into();
    tool.status = Some(serde_json::from_value(json!({"networkPolicy": "toolwarden-tool-read-issue"})).unwrap());
    let steps = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("token", "v1")]))),
        step("DELETE", &["/apis/networking.k8s.io/v1/namespaces/dev/networkpolicies/toolwarden-tool-read-issue"], 404, Reply::Error("NotFound")),
        step("PATCH", &[STATUS], 200, Reply::Json(tool_json(1))),
        step("POST", &[EVENTS], 201, Reply::Echo),
    ];
    let (result, seen, _) = story(tool, Settings::default(), |_| {}, steps).await;
    assert!(result.is_ok(), "{result:?}");
    let status = applied_status(&seen);
    let accepted = condition(&status, "Accepted");
    assert_eq!(accepted["reason"], "Invalid");
    assert!(accepted["message"].as_str().unwrap().contains("spec.egress[0].cidr"), "{accepted}");
    assert_eq!(condition(&status, "Ready")["reason"], "NotAccepted");
    assert_eq!(seen[3].body["reason"], "Invalid");
}

#[tokio::test]
async fn tool_deleted_mid_reconcile_ends_quietly() {
    let steps = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("token", "v1")]))),
        step("PATCH", &[NP_APPLY], 200, Reply::Echo),
        step("PATCH", &[SECRET_APPLY], 200, Reply::Echo),
        step("PATCH", &[STATUS], 404, Reply::Error("NotFound")),
    ];
    let (result, _, _) = story(github_tool(1), Settings::default(), |ctx| included(ctx, 1), steps).await;
    assert_eq!(result.unwrap(), kube::runtime::controller::Action::await_change());
}

#[tokio::test]
async fn tool_being_deleted_is_left_to_garbage_collection() {
    let mut tool = github_tool(1);
    tool.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-01-01T00:00:00Z".parse().unwrap()));
    let (result, seen, _) = story(tool, Settings::default(), |_| {}, vec![]).await;
    assert!(result.is_ok());
    assert!(seen.is_empty());
}

#[tokio::test]
async fn api_failure_is_an_error_with_context_and_backs_off() {
    let (client, handle) = client();
    let ctx = context(client, Settings::default());
    let steps = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("token", "v1")]))),
        step("PATCH", &[NP_APPLY], 500, Reply::Error("InternalError")),
    ];
    let server = tokio::spawn(serve(handle, steps));
    let tool = Arc::new(github_tool(1));
    let error = reconcile(tool.clone(), ctx.clone()).await.unwrap_err();
    server.await.unwrap();
    assert_eq!(error.metric_label(), "api_error");
    let text = error.to_string();
    assert!(text.starts_with("McpTool dev/read-issue: apply NetworkPolicy toolwarden-tool-read-issue:"), "{text}");
    assert_eq!(error_policy(tool.clone(), &error, ctx.clone()), kube::runtime::controller::Action::requeue(Duration::from_secs(2)));
    let reconciles = ctx.metrics.reconcile_errors.get_or_create(&vec![("controller", "mcptool".to_owned()), ("error", "api_error".to_owned())]).get();
    assert_eq!(reconciles, 1);
}

#[tokio::test]
async fn conflict_is_retried_promptly() {
    let (client, handle) = client();
    let ctx = context(client, Settings::default());
    let steps = vec![
        step("GET", &[SECRET_GET], 200, Reply::Json(secret("dev", "github", &[("token", "v1")]))),
        step("PATCH", &[NP_APPLY], 409, Reply::Error("Conflict")),
    ];
    let server = tokio::spawn(serve(handle, steps));
    let tool = Arc::new(github_tool(1));
    let error = reconcile_tool(&tool, &ctx).await.unwrap_err();
    server.await.unwrap();
    assert_eq!(error.metric_label(), "conflict");
    assert_eq!(error_policy(tool, &error, ctx), kube::runtime::controller::Action::requeue(Duration::from_millis(200)));
}
