//! The gateway stopping while calls run: every call that was started gets a result line saying how it
//! ended. A SIGTERM past the grace period stops the calls still running and answers them `interrupted`;
//! a gateway killed outright leaves them open, and the next process on the same audit log closes them.

mod gateway_support;

use std::time::Duration;

use gateway_support::{DEV_TOKEN, Dev, live_processes_with, mcp_post_in_session, open_session};
use serde_json::{Value, json};

/// A tool that waits `secs` seconds.
const WAIT: &str = r#"
apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: check-after}
spec:
  description: Waits the given number of seconds.
  effect: read
  inputSchema: {type: object, properties: {secs: {type: integer}}, required: [secs], additionalProperties: false}
  runtime:
    exec:
      image: busybox:1.36
      command: [/bin/sh, -c, 'sleep "$1"; echo woke', sh]
      args: ["{{secs}}"]
  limits: {timeout: 10m}
---
apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: developers-check-after}
spec:
  subjects: {groups: [developers]}
  tools: {names: [check-after]}
  decision: allow
"#;

/// A number of seconds no other test sleeps, so its `sleep` process can be found.
fn unique_secs(salt: u32) -> u32 {
    400_000 + std::process::id() % 100_000 * 10 + salt
}

fn lines_of(dev: &Dev, secs: u32) -> Vec<Value> {
    dev.audit_lines().into_iter().filter(|l| l["arguments"]["secs"] == json!(secs)).collect()
}

/// Starts a `check_after` call in a session and returns the pending response once its process runs.
async fn start_waiting_call(dev: &Dev, secs: u32) -> tokio::task::JoinHandle<Result<String, reqwest::Error>> {
    let session = open_session(dev, DEV_TOKEN).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    mcp_post_in_session(dev, Some(DEV_TOKEN), &session).json(&initialized).send().await.unwrap();
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "check_after", "arguments": {"secs": secs}}});
    let request = mcp_post_in_session(dev, Some(DEV_TOKEN), &session).json(&call);
    let answer = tokio::spawn(async move { request.send().await?.text().await });
    let marker = format!("sleep {secs}");
    dev.eventually("the call's process runs", async || live_processes_with(&marker).len() == 1).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outliving_the_shutdown_grace_is_stopped_answered_and_audited_as_interrupted() {
    let mut dev = Dev::start_with_args(&[("wait.yaml", WAIT)], &["--shutdown-grace", "1s"]);
    let secs = unique_secs(1);
    let answer = start_waiting_call(&dev, secs).await;

    let status = dev.terminate();
    assert!(status.success(), "exit status {status}");
    let body = tokio::time::timeout(Duration::from_secs(10), answer).await.expect("answered").unwrap().expect("the response arrives");
    assert!(body.contains(r#""toolwarden.dev/code":"interrupted""#), "the client hears why: {body}");
    assert!(body.contains("the gateway is shutting down"), "{body}");
    assert!(live_processes_with(&format!("sleep {secs}")).is_empty(), "the worker stopped the call's process");

    let lines = lines_of(&dev, secs);
    let events: Vec<_> = lines.iter().map(|l| (l["event"].as_str().unwrap_or_default(), l["status"].as_str())).collect();
    assert_eq!(events, [("decision", None), ("result", Some("interrupted"))], "{lines:#?}");
    assert_eq!(lines[0]["call_id"], lines[1]["call_id"]);
    assert_eq!(lines[1]["code"], "interrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_killed_gateway_left_open_are_closed_as_interrupted_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut first = Dev::start_with_args_logging_to(&[("wait.yaml", WAIT)], &[], &audit);
    let secs = unique_secs(2);
    let answer = start_waiting_call(&first, secs).await;
    // A finished call before the kill: it has its result line and is left alone.
    let done = first.client(DEV_TOKEN).await;
    gateway_support::ok(&gateway_support::call(&done, "count_words", json!({"text": "a b", "unit": "words"})).await);
    // Its result line may wait 20 ms to share a write (audit::RESULT_DELAY); a kill within that loses it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.kill();
    assert!(answer.await.unwrap().is_err(), "the client's connection broke");
    let marker = format!("sleep {secs}");
    first.eventually("the killed gateway's worker and its call died with it", async || live_processes_with(&marker).is_empty()).await;
    let open = lines_of(&first, secs);
    assert_eq!(open.len(), 1, "only the decision line: {open:#?}");
    drop(first);

    let second = Dev::start_with_args_logging_to(&[("wait.yaml", WAIT)], &[], &audit);
    let lines = lines_of(&second, secs);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let closed = &lines[1];
    assert_eq!((closed["event"].as_str(), closed["status"].as_str()), (Some("result"), Some("interrupted")));
    assert_eq!(closed["call_id"], open[0]["call_id"]);
    assert_eq!((closed["session_id"].as_str(), closed["subject"].as_str()), (open[0]["session_id"].as_str(), Some("developer")));
    let message = closed["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("audit chain {}", open[0]["chain"].as_str().unwrap())), "{message}");
    let interrupted = second.audit_lines().into_iter().filter(|l| l["status"] == "interrupted").count();
    assert_eq!(interrupted, 1, "the finished call is not touched");

    // The file still verifies: the new chain links to the killed one's last line.
    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_toolwarden")).args(["audit", "verify"]).arg(&audit).output().unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_client_went_away_runs_on_and_still_gets_its_result_line() {
    // MCP over HTTP: a disconnection is not a cancellation (the client sends notifications/cancelled
    // for that), so the call finishes and is recorded as it ended.
    let dev = Dev::start(&[("wait.yaml", WAIT)]);
    let session = open_session(&dev, DEV_TOKEN).await;
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "check_after", "arguments": {"secs": 3}}});
    let request = mcp_post_in_session(&dev, Some(DEV_TOKEN), &session).json(&call);
    let answer = tokio::spawn(async move { request.send().await?.text().await });
    dev.eventually("the call's decision line", async || lines_of(&dev, 3).len() == 1).await;
    answer.abort(); // the client's connection closes with the call running
    tokio::time::sleep(Duration::from_secs(4)).await;
    dev.eventually("the call has its result line", async || lines_of(&dev, 3).len() == 2).await;
    let lines = lines_of(&dev, 3);
    assert_eq!((lines[1]["event"].as_str(), lines[1]["status"].as_str()), (Some("result"), Some("ok")), "{lines:#?}");
}
