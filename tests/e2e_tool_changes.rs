//! e2e faults on a real cluster that come from the platform team's own hands while calls run: a tool
//! switched off with `spec.disabled`, and the Secret a tool's credential comes from deleted. Each time the
//! client hears exactly what happened, the audit log has the call's result line, the McpTool's status
//! says why, no secret value shows anywhere, and nothing of ours is left once the sessions end.

mod e2e_support;

use std::time::Duration;

use e2e_support::{AGENT_TOKEN, HelmRelease, TestNamespace, enabled, items, json_of, kubectl, kubectl_ok, kubectl_stdin, result_code, tool_image, wait_for};
use serde_json::{Value, json};

/// The credential's value: it must never show in a log, a status, an event or a tool result.
const TOKEN_VALUE: &str = "e2e-token-0123456789";

const MANIFESTS: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: check-later}
spec:
  description: Waits the given number of seconds.
  effect: read
  inputSchema: {type: object, properties: {secs: {type: integer}}, required: [secs], additionalProperties: false}
  runtime:
    exec: {image: "TOOL_IMAGE", command: [sh, -c, 'sleep "$1"; echo woke', sh], args: ["{{secs}}"]}
  outputTrust: trusted
  limits: {timeout: 10m}
---
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: read-token}
spec:
  description: Waits the given number of seconds, then says how long its token is.
  effect: read
  inputSchema: {type: object, properties: {secs: {type: integer}}, required: [secs], additionalProperties: false}
  runtime:
    exec: {image: "TOOL_IMAGE", command: [sh, -c, 'sleep "$1"; echo "a token of ${#LAB_TOKEN} characters"', sh], args: ["{{secs}}"]}
  outputTrust: trusted
  limits: {timeout: 10m}
  credentials:
  - {secretRef: {name: lab-credentials, key: token}, env: LAB_TOKEN}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: e2e-may-wait}
spec:
  subjects: {users: [e2e]}
  tools: {names: [check-later, read-token]}
  decision: allow
"#;

fn source_secret() -> String {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lab-credentials"}, "stringData": {"token": TOKEN_VALUE}}).to_string()
}

fn call(url: &str, session: &str, tool: &str, secs: u64) -> tokio::task::JoinHandle<Result<String, reqwest::Error>> {
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {"secs": secs}}});
    let request = e2e_support::mcp_request(url, Some(session), &call);
    tokio::spawn(async move { request.send().await?.text().await })
}

async fn answer(url: &str, session: &str, tool: &str, secs: u64) -> String {
    tokio::time::timeout(Duration::from_secs(150), call(url, session, tool, secs)).await.expect("answered in time").unwrap().expect("a response")
}

fn worker_pods(tenant: &str, tool: &str) -> Vec<Value> {
    items(&json_of(&["get", "pods", "-n", tenant, "-l", &format!("app.kubernetes.io/component=worker,toolwarden.dev/tool={tool}"), "-o", "json"]))
}

/// Waits until a worker pod of `tool` runs, then gives the call a moment to reach it.
fn wait_for_running_worker(tenant: &str, tool: &str) {
    wait_for("the call's worker pod runs", Duration::from_secs(120), || {
        worker_pods(tenant, tool).iter().any(|p| p["status"]["phase"] == "Running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
}

fn condition(tenant: &str, tool: &str, kind: &str) -> Value {
    let tool = json_of(&["get", "mcptool", tool, "-n", tenant, "-o", "json"]);
    let conditions = tool["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.into_iter().find(|c| c["type"] == kind).unwrap_or(Value::Null)
}

/// The gateway's audit lines (one replica) that belong to tool calls.
fn gateway_audit_lines(release: &HelmRelease) -> Vec<Value> {
    let (_, log) = kubectl(&["logs", "-n", &release.namespace.0, &format!("deployment/{}-gateway", release.fullname), "-c", "gateway"]);
    e2e_support::audit_lines(&log)
}

/// The result line of the last call of `tool` in `session` whose result matches `status`.
fn result_line(release: &HelmRelease, session: &str, tool: &str, status: &str) -> Value {
    wait_for(&format!("a {status} result line of {tool}"), Duration::from_secs(30), || {
        gateway_audit_lines(release).into_iter().rev().find(|l| {
            l["event"] == "result" && l["session_id"] == session && l["tool"] == tool && l["status"] == status
        })
    })
}

async fn end_session(url: &str, session: &str) {
    let ended = reqwest::Client::new().delete(url).bearer_auth(AGENT_TOKEN).header("Mcp-Session-Id", session).send().await.unwrap();
    assert!(ended.status().is_success(), "DELETE ends the session: {}", ended.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_disabled_or_its_secret_deleted_while_calls_run_ends_them_as_documented() {
    if !enabled("a_tool_disabled_or_its_secret_deleted_while_calls_run_ends_them_as_documented") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let release = HelmRelease::install(&["gateway.replicas=1"]);
    let tenant_namespace = TestNamespace::create("tw-e2e-changes");
    let tenant = tenant_namespace.0.clone();
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant, "-f", "-"], &source_secret());
    assert!(ok, "{out}");
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant, "-f", "-"], &MANIFESTS.replace("TOOL_IMAGE", &tool_image()));
    assert!(ok, "{out}");
    kubectl_ok(&["wait", "-n", &tenant, "--for=condition=Ready", "mcptool/check-later", "mcptool/read-token", "--timeout=60s"]);
    let url = release.mcp_url(&tenant);

    // 1. The kill switch while a call runs: the worker stops the call, the client hears the reason, the
    // audit log says `disabled`, and later calls are refused before anything runs.
    let session = e2e_support::open_raw_session(&url, &["check_later", "read_token"]).await;
    let running = call(&url, &session, "check_later", 600);
    wait_for_running_worker(&tenant, "check-later");
    let switch_off = r#"{"spec": {"disabled": true, "disabledReason": "frozen by the e2e test"}}"#;
    kubectl_ok(&["patch", "mcptool", "check-later", "-n", &tenant, "--type", "merge", "-p", switch_off]);
    let body = tokio::time::timeout(Duration::from_secs(60), running).await.expect("the running call is stopped").unwrap().expect("a response");
    assert_eq!(result_code(&body).as_deref(), Some("tool_disabled"), "{body}");
    assert!(body.contains("check_later is disabled: frozen by the e2e test") && body.contains("stopped while it ran"), "{body}");
    let result = result_line(&release, &session, "check_later", "disabled");
    assert_eq!(result["code"], "tool_disabled", "{result}");
    // The operator writes the condition after the config it compiled, which already stopped the call.
    wait_for("the McpTool says it is disabled", Duration::from_secs(30), || {
        let ready = condition(&tenant, "check-later", "Ready");
        (ready["status"] == "False" && ready["reason"] == "Disabled").then_some(())
    });
    let refused = answer(&url, &session, "check_later", 1).await;
    assert_eq!(result_code(&refused).as_deref(), Some("tool_disabled"), "a later call is refused: {refused}");
    assert!(refused.contains("frozen by the e2e test") && !refused.contains("woke"), "{refused}");
    println!("e2e_tool_changes: the running call was stopped: {}", result["message"]);
    // Switched back on, the same session calls it again.
    kubectl_ok(&["patch", "mcptool", "check-later", "-n", &tenant, "--type", "merge", "-p", r#"{"spec": {"disabled": false}}"#]);
    kubectl_ok(&["wait", "-n", &tenant, "--for=condition=Ready", "mcptool/check-later", "--timeout=60s"]);
    // Ready means the ConfigMap holds it; the gateway applies a new config within about a second.
    let mut back = answer(&url, &session, "check_later", 1).await;
    for _ in 0..30 {
        if result_code(&back).as_deref() != Some("tool_disabled") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        back = answer(&url, &session, "check_later", 1).await;
    }
    assert!(back.contains("woke") && result_code(&back).is_none(), "the re-enabled tool answers: {back}");

    // 2. The Secret behind a credential is deleted while a call that uses it runs. The operator removes
    // its scoped copy at once; the running worker keeps the value it started with, so the call and the
    // session's later calls in that worker succeed; a worker that would start now cannot, and says so.
    let holder = e2e_support::open_raw_session(&url, &["read_token"]).await;
    let running = call(&url, &holder, "read_token", 20);
    wait_for_running_worker(&tenant, "read-token");
    kubectl_ok(&["delete", "secret", "lab-credentials", "-n", &tenant]);
    wait_for("the operator removes the scoped copy", Duration::from_secs(30), || {
        let (exists, _) = kubectl(&["get", "secret", "toolwarden-tool-read-token", "-n", &tenant]);
        (!exists).then_some(())
    });
    assert!(!running.is_finished(), "the Secret went while the call ran");
    let credentials = condition(&tenant, "read-token", "CredentialsReady");
    assert_eq!((credentials["status"].as_str(), credentials["reason"].as_str()), (Some("False"), Some("SecretNotFound")), "{credentials}");
    assert!(credentials["message"].as_str().unwrap_or_default().contains("lab-credentials"), "the status names the Secret: {credentials}");
    let body = tokio::time::timeout(Duration::from_secs(60), running).await.expect("answered").unwrap().expect("a response");
    assert!(body.contains("a token of 20 characters") && result_code(&body).is_none(), "the running call completes: {body}");
    let again = answer(&url, &holder, "read_token", 0).await;
    assert!(again.contains("a token of 20 characters"), "the running worker keeps its value: {again}");

    let newcomer = e2e_support::open_raw_session(&url, &["read_token"]).await;
    let refused = answer(&url, &newcomer, "read_token", 0).await;
    assert_eq!(result_code(&refused).as_deref(), Some("missing_secret"), "{refused}");
    assert!(refused.contains("toolwarden-tool-read-token"), "the refusal names the Secret: {refused}");
    let failed = result_line(&release, &newcomer, "read_token", "worker_failed");
    assert_eq!(failed["code"], "missing_secret", "{failed}");
    wait_for("the failed worker pod is deleted", Duration::from_secs(60), || (worker_pods(&tenant, "read-token").len() == 1).then_some(()));

    // The Secret comes back: the operator copies it again and a new worker starts with it.
    let (ok, out) = kubectl_stdin(&["apply", "-n", &tenant, "-f", "-"], &source_secret());
    assert!(ok, "{out}");
    kubectl_ok(&["wait", "-n", &tenant, "--for=condition=Ready", "mcptool/read-token", "--timeout=60s"]);
    let recovered = answer(&url, &newcomer, "read_token", 0).await;
    assert!(recovered.contains("a token of 20 characters"), "a new worker starts once the Secret is back: {recovered}");

    // No value anywhere a platform team looks: the gateway's and operator's logs, statuses, events.
    let (_, operator_log) = kubectl(&["logs", "-n", &release.namespace.0, &format!("deployment/{}-operator", release.fullname)]);
    let (_, gateway_log) = kubectl(&["logs", "-n", &release.namespace.0, &format!("deployment/{}-gateway", release.fullname), "-c", "gateway"]);
    let (_, events) = kubectl(&["get", "events", "-n", &tenant, "-o", "json"]);
    let statuses = json_of(&["get", "mcptools,mcpsessions", "-n", &tenant, "-o", "json"]).to_string();
    for (place, text) in [("operator log", &operator_log), ("gateway log", &gateway_log), ("events", &events), ("statuses", &statuses)] {
        assert!(!text.contains(TOKEN_VALUE), "the credential's value shows in the {place}");
    }

    // Every session ends with nothing of ours left in the tenant namespace but the tools' own objects.
    for s in [&session, &holder, &newcomer] {
        end_session(&url, s).await;
    }
    wait_for("no worker pod or McpSession left", Duration::from_secs(90), || {
        let pods = items(&json_of(&["get", "pods", "-n", &tenant, "-l", "app.kubernetes.io/component=worker", "-o", "json"]));
        let sessions = items(&json_of(&["get", "mcpsessions", "-n", &tenant, "-o", "json"]));
        (pods.is_empty() && sessions.is_empty()).then_some(())
    });
}
