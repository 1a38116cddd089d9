//! The `mcp` runtime against the example stdio server (examples/programs/text_mcp_server.py).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Worker, programs_dir, wait_for};

fn mcp_spec(server_args: &[&str]) -> Value {
    let server = programs_dir().join("text_mcp_server.py");
    let mut args = vec![server.to_str().unwrap().to_string()];
    args.extend(server_args.iter().map(|s| s.to_string()));
    json!({
        "name": "count_words", "resource": "count-words", "description": "t", "effect": "read",
        "inputSchema": {"type": "object"}, "outputSchema": {"type": "object"},
        "runtime": {"mcp": {"image": "unused", "command": ["/usr/bin/python3"], "args": args, "tool": "count_words"}},
        "timeoutMs": 10_000, "maxOutputBytes": 65_536, "outputTrust": "trusted",
    })
}

#[test]
fn a_call_is_forwarded_to_the_upstream_tool() {
    let worker = Worker::serve(&mcp_spec(&[]), &[]);
    let result = worker.ran(json!({"text": "one two three", "unit": "words"}));
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["content"], "3 words");
    assert_eq!(result["structured"], json!({"count": 3, "unit": "words"}));
    let lines = worker.ran(json!({"text": "a\nb", "unit": "lines"}));
    assert_eq!(lines["structured"]["count"], 2, "the same server answers the next call");
}

#[test]
fn an_upstream_error_result_is_an_error() {
    let worker = Worker::serve(&mcp_spec(&[]), &[]);
    let result = worker.ran(json!({"text": "x", "unit": "paragraphs"}));
    assert_eq!(result["isError"], true);
    assert_eq!(result["errorCode"], "upstream_error");
    assert!(result["content"].as_str().unwrap().contains("paragraphs"));
}

#[test]
fn a_server_crash_is_reported_then_the_server_is_restarted() {
    let worker = Worker::serve(&mcp_spec(&["--crash-on", "boom"]), &[]);
    assert_eq!(worker.ran(json!({"text": "before"}))["content"], "1 words");
    let crashed = worker.ran(json!({"text": "this goes boom"}));
    assert_eq!(crashed["isError"], true);
    assert_eq!(crashed["errorCode"], "upstream_crashed", "{crashed}");
    assert!(crashed["content"].as_str().unwrap().contains("crashing on request"), "stderr tail included: {crashed}");
    let after = worker.ran(json!({"text": "fresh server here"}));
    assert_eq!(after["isError"], false, "{after}");
    assert_eq!(after["content"], "3 words");
}

#[test]
fn garbage_from_the_server_is_a_protocol_error_then_the_server_is_restarted() {
    let worker = Worker::serve(&mcp_spec(&["--garbage-on", "junk"]), &[]);
    let garbage = worker.ran(json!({"text": "junk please"}));
    assert_eq!(garbage["errorCode"], "upstream_protocol", "{garbage}");
    assert_eq!(worker.ran(json!({"text": "ok now"}))["content"], "2 words");
}

#[test]
fn a_call_abandoned_by_its_caller_is_cancelled_upstream_and_the_next_call_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("messages.jsonl");
    let worker = Worker::serve(&mcp_spec(&["--slow-on", "slowly", "--record", record.to_str().unwrap()]), &[]);
    let messages = || -> Vec<Value> {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    let connection = worker.start_call(json!({"text": "count this slowly"}));
    let sent = wait_for(Duration::from_secs(15), || messages().iter().any(|m| m["params"]["arguments"]["text"] == "count this slowly"));
    assert!(sent, "the slow call never reached the server: {:?}", messages());
    let slow_id = messages().iter().find(|m| m["method"] == "tools/call").unwrap()["id"].clone();
    // The gateway cancels a call by hanging up.
    drop(connection);
    // The server reads the notice once the slow request is done (it serves one message at a time).
    let told = wait_for(Duration::from_secs(15), || messages().iter().any(|m| m["method"] == "notifications/cancelled" && m["params"]["requestId"] == slow_id));
    assert!(told, "the server was not told of the cancellation: {:?}", messages());
    let next = worker.ran(json!({"text": "one two"}));
    assert_eq!(next["content"], "2 words", "the next call gets its own answer, not the abandoned one: {next}");
}

#[test]
fn a_server_that_cannot_start_is_a_spawn_failure() {
    let mut spec = mcp_spec(&[]);
    spec["runtime"]["mcp"]["command"] = json!(["/nonexistent/mcp-server"]);
    let worker = Worker::serve(&spec, &[]);
    assert_eq!(worker.ran(json!({"text": "x"}))["errorCode"], "spawn_failed");
    assert!(worker.healthy());
}

#[test]
fn the_mcp_runtime_works_inside_the_sandbox() {
    let worker = Worker::sandboxed(&mcp_spec(&[]), &[]);
    assert_eq!(worker.ran(json!({"text": "sandboxed words"}))["content"], "2 words");
}

#[test]
fn a_traced_call_reaches_the_upstream_with_its_traceparent_in_meta() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("messages.jsonl");
    let worker = Worker::serve(&mcp_spec(&["--record", record.to_str().unwrap()]), &[]);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer = worker.call_with(&json!({"callId": "c", "arguments": {"text": "traced words"}, "traceparent": traceparent}));
    assert_eq!(answer.body["content"], "2 words", "{:?}", answer.body);
    worker.ran(json!({"text": "untraced"}));
    let answer = worker.call_with(&json!({"callId": "c", "arguments": {"text": "bad"}, "traceparent": "00-1-2-01"}));
    assert_eq!(answer.status, 200);
    let calls: Vec<Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0]["params"]["_meta"], json!({"traceparent": traceparent}));
    assert!(calls[1]["params"].get("_meta").is_none(), "untraced calls carry no _meta: {}", calls[1]);
    assert!(calls[2]["params"].get("_meta").is_none(), "a malformed traceparent is not passed on: {}", calls[2]);
}
