//! The gateway's own bound on a call, with a runtime whose worker takes its time (paused clock).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use toolwarden_core::config::ToolConfig;
use toolwarden_worker::protocol::{CallRequest, CallResult};

use crate::auth::Principal;
use crate::runtime::{RuntimeError, SessionInfo, WorkerRuntime};
use crate::sessions::{Caller, NewSession};
use crate::state::Gateway;

/// Answers every call after `delay` (`None`: never), and allows `start` for a worker to start.
struct SlowRuntime {
    delay: Option<Duration>,
    start: Duration,
}

impl WorkerRuntime for SlowRuntime {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn start_session(&self, _: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    fn call<'a>(&'a self, _: &'a str, _: &'a ToolConfig, _: CallRequest, _: &'a CancellationToken) -> BoxFuture<'a, Result<CallResult, RuntimeError>> {
        Box::pin(async move {
            match self.delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
            Ok(CallResult { content: "done".into(), ..Default::default() })
        })
    }
    fn start_timeout(&self) -> Duration {
        self.start
    }
    fn end_session<'a>(&'a self, _: &'a str, _: &'static str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A tool with a 5 s timeout.
fn tool() -> ToolConfig {
    serde_json::from_value(json!({
        "name": "show_text", "resource": "show-text", "description": "Shows its arguments.", "effect": "read",
        "inputSchema": {"type": "object"}, "runtime": {"exec": {"image": "busybox:1", "command": ["cat"]}}, "credentials": [],
        "timeoutMs": 5000, "maxOutputBytes": 65536, "memory": "64Mi", "tmpSize": "16Mi", "outputTrust": "trusted",
        "sandbox": {}
    }))
    .expect("fixture tool")
}

async fn dispatch_on(runtime: SlowRuntime) -> Result<CallResult, RuntimeError> {
    let gw = Gateway::for_tests(Arc::new(runtime)).await;
    gw.apply_config(toolwarden_core::config::GatewayConfig { namespace: "default".into(), tools: vec![tool()], ..Default::default() }).unwrap();
    let caller = Caller {
        namespace: "default".into(),
        principal: Principal { subject: "developer".into(), groups: vec![], credential_id: "c".into() },
    };
    let new = NewSession { id: "s1".into(), caller, client_name: "t".into(), client_version: "1".into(), protocol_version: None, stateless: false };
    let session = gw.start_session(new).await;
    let request = CallRequest::new("c-1", json!({}), false);
    super::dispatch(&gw, &session, &tool(), request, &CancellationToken::new(), None).await
}

#[tokio::test(start_paused = true)]
async fn a_first_call_may_wait_for_its_worker_to_start_longer_than_the_tool_timeout() {
    // 5 s tool timeout, 60 s allowed for the start (a pod pulling its image): 40 s is within bounds.
    let result = dispatch_on(SlowRuntime { delay: Some(Duration::from_secs(40)), start: Duration::from_secs(60) }).await;
    assert_eq!(result.expect("the call waits for its worker").content, "done");
}

#[tokio::test(start_paused = true)]
async fn a_runtime_that_never_answers_is_cut_off_after_start_timeout_tool_timeout_and_grace() {
    let started = tokio::time::Instant::now();
    let error = dispatch_on(SlowRuntime { delay: None, start: Duration::from_secs(60) }).await.unwrap_err();
    assert_eq!(error.code, "worker_timeout");
    assert_eq!(started.elapsed().as_secs(), 75, "60 s start + 5 s tool timeout + 10 s grace");
    assert!(error.message.contains("did not answer within 75s"), "{}", error.message);
}

/// A worker that runs each call until it is cancelled, and says when a call started and when its
/// exchange was dropped (the worker then stops the call's processes).
#[derive(Default)]
struct HangingRuntime {
    started: tokio::sync::Notify,
    calls: std::sync::atomic::AtomicUsize,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a dropped exchange.
struct DropCount(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl WorkerRuntime for HangingRuntime {
    fn name(&self) -> &'static str {
        "hanging"
    }
    fn start_session(&self, _: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    fn call<'a>(&'a self, _: &'a str, _: &'a ToolConfig, _: CallRequest, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<CallResult, RuntimeError>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let guard = DropCount(self.dropped.clone());
        Box::pin(crate::runtime::unless_cancelled(cancel, async move {
            let _guard = guard;
            self.started.notify_one();
            std::future::pending::<Result<CallResult, RuntimeError>>().await
        }))
    }
    fn start_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
    fn end_session<'a>(&'a self, _: &'a str, _: &'static str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The `default` namespace's config from manifests.
pub(super) fn config(yaml: &str) -> toolwarden_core::config::GatewayConfig {
    let manifests = toolwarden_core::manifest::load_str(yaml, std::path::Path::new("test.yaml")).expect("fixture manifests");
    let (mut configs, _) = toolwarden_core::compiler::compile_manifests(&manifests).expect("fixture manifests compile");
    configs.remove("default").expect("the default namespace")
}

const SLOW_SYNC: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: sync-notes}
spec:
  description: Copies the notes to the archive (slowly).
  effect: write
  inputSchema: {type: object, properties: {}, additionalProperties: false}
  runtime: {exec: {image: busybox:1, command: [sleep, "600"]}}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: developers-sync}
spec:
  subjects: {users: [developer]}
  tools: {names: [sync-notes]}
  decision: allow
"#;

fn disabled(yaml: &str, reason: &str) -> String {
    yaml.replacen("  effect: write\n", &format!("  effect: write\n  disabled: true\n  disabledReason: {reason}\n"), 1)
}

async fn session(gw: &Gateway) -> Arc<crate::sessions::SessionRecord> {
    let caller = Caller { namespace: "default".into(), principal: Principal { subject: "developer".into(), groups: vec![], credential_id: "c".into() } };
    gw.start_session(NewSession { id: "s1".into(), caller, client_name: "t".into(), client_version: "1".into(), protocol_version: None, stateless: false }).await
}

fn audit_lines(path: &std::path::Path, gw: &Gateway) -> Vec<serde_json::Value> {
    gw.audit.flush();
    let lines = std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>();
    // The chain's start record first, then the calls' lines.
    assert_eq!(lines.first().map(|l| l["event"].clone()), Some("chain_start".into()));
    lines.into_iter().skip(1).collect()
}

fn result_text(response: rmcp::model::CallToolResponse) -> (Option<bool>, Option<String>, String) {
    let result = match response {
        rmcp::model::CallToolResponse::Complete(result) => result,
        other => panic!("a complete result was expected: {other:?}"),
    };
    let code = result.meta.as_ref().and_then(|m| m.0.get("toolwarden.dev/code")).and_then(|c| c.as_str()).map(str::to_owned);
    let text = result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<String>();
    (result.is_error, code, text)
}

#[tokio::test]
async fn disabling_a_tool_stops_its_running_calls_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let runtime = Arc::new(HangingRuntime::default());
    let gw = Gateway::for_tests_with_audit(runtime.clone(), Some(&audit)).await;
    gw.apply_config(config(SLOW_SYNC)).unwrap();
    let session = session(&gw).await;
    let started = runtime.started.notified();
    let call = tokio::spawn({
        let (gw, session) = (gw.clone(), session.clone());
        async move { super::call_tool(&gw, &session, "sync_notes", None, crate::elicit::Asking::No, &CancellationToken::new(), None).await }
    });
    started.await;
    assert_eq!(gw.running.len(), 1);

    gw.apply_config(config(&disabled(SLOW_SYNC, "archive writes are frozen (INC-9)"))).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), call).await.expect("the call ends when its tool is disabled").unwrap();
    let (is_error, code, text) = result_text(answer);
    assert_eq!((is_error, code.as_deref()), (Some(true), Some("tool_disabled")));
    assert_eq!(text, "sync_notes is disabled: archive writes are frozen (INC-9); the call was stopped while it ran (its worker stopped it)");
    assert_eq!(runtime.dropped.load(std::sync::atomic::Ordering::SeqCst), 1, "the exchange with the worker was dropped: it stops the call");
    assert!(gw.running.is_empty());

    let lines = audit_lines(&audit, &gw);
    let result = lines.iter().find(|l| l["event"] == "result").expect("a result line");
    assert_eq!((result["status"].as_str(), result["code"].as_str()), (Some("disabled"), Some("tool_disabled")), "{result}");
    assert!(result["message"].as_str().unwrap().contains("archive writes are frozen (INC-9)"), "{result}");
    let metrics = crate::metrics::render(&gw.registry);
    let counted = r#"toolwarden_tool_calls_total{namespace="default",tool="sync_notes",decision="allow",status="disabled"} 1"#;
    assert!(metrics.contains(counted), "{counted} missing from:\n{metrics}");
    assert!(!metrics.contains("toolwarden_worker_calls_failed_total{"), "no worker failure:\n{metrics}");
}

#[tokio::test]
async fn a_call_reaching_its_worker_after_the_tool_was_disabled_does_not_run() {
    let runtime = Arc::new(HangingRuntime::default());
    let gw = Gateway::for_tests(runtime.clone()).await;
    gw.apply_config(config(SLOW_SYNC)).unwrap();
    let session = session(&gw).await;
    let tool = gw.engine("default").unwrap().tool("sync_notes").unwrap().clone();
    // Decided under the old config (the call held `tool`), dispatched after the new one applied.
    gw.apply_config(config(&disabled(SLOW_SYNC, "archive writes are frozen (INC-9)"))).unwrap();
    let request = CallRequest::new("c-1", json!({}), false);
    let error = super::dispatch(&gw, &session, &tool, request, &CancellationToken::new(), None).await.unwrap_err();
    assert_eq!((error.code, error.message.as_str()), ("tool_disabled", "sync_notes is disabled: archive writes are frozen (INC-9); nothing ran"));
    assert_eq!(runtime.calls.load(std::sync::atomic::Ordering::SeqCst), 0, "the worker never saw the call");
    gw.remove_config("default");
    let request = CallRequest::new("c-2", json!({}), false);
    let error = super::dispatch(&gw, &session, &tool, request, &CancellationToken::new(), None).await.unwrap_err();
    assert_eq!(error.message, "sync_notes was removed from the configuration; nothing ran");
}
