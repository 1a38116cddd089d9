//! The worker's HTTP edge: authentication, concurrency, request size and shape.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{TOKEN, Worker, exec_spec};

/// A tool that leaves a file behind when it runs, so a test can tell whether it ran.
fn marking_tool(dir: &std::path::Path) -> serde_json::Value {
    let mark = dir.join("ran");
    exec_spec(&["/usr/bin/touch", mark.to_str().unwrap()], &[])
}

#[test]
fn a_missing_or_wrong_token_gets_401_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::serve(&marking_tool(dir.path()), &[]);
    let body = json!({"callId": "c", "arguments": {}}).to_string();
    let missing = worker.request("POST", "/v1/call", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body["error"]["code"], "unauthorized");
    let wrong = worker.request(
        "POST",
        "/v1/call",
        &[("Authorization", &format!("Bearer {TOKEN}x")), ("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(wrong.status, 401);
    let hash_as_token = worker.request(
        "POST",
        "/v1/call",
        &[("Authorization", &format!("Bearer {}", support::token_hash())), ("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(hash_as_token.status, 401, "knowing the hash is not knowing the token");
    assert!(!dir.path().join("ran").exists(), "nothing ran on a 401");
    assert_eq!(worker.ran(json!({}))["isError"], false);
    assert!(dir.path().join("ran").exists(), "the right token runs the tool");
}

#[test]
fn calls_beyond_max_concurrent_are_refused_as_busy() {
    let mut spec = exec_spec(&["/bin/sleep", "2"], &[]);
    spec["timeoutMs"] = json!(10_000);
    let worker = std::sync::Arc::new(Worker::serve(&spec, &["--max-concurrent", "1"]));
    let slow = {
        let worker = worker.clone();
        std::thread::spawn(move || worker.ran(json!({})))
    };
    std::thread::sleep(Duration::from_millis(500));
    let busy = worker.call(json!({}));
    assert_eq!(busy.status, 429);
    assert_eq!(busy.body["error"]["code"], "busy");
    assert_eq!(slow.join().unwrap()["isError"], false);
    assert_eq!(worker.call(json!({})).status, 200, "a free slot serves again");
}

#[test]
fn an_oversized_body_gets_413() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::serve(&marking_tool(dir.path()), &[]);
    let big = json!({"callId": "c", "arguments": {"text": "x".repeat(5 * 1024 * 1024)}});
    let answer = worker.call_with(&big);
    assert_eq!(answer.status, 413);
    assert_eq!(answer.body["error"]["code"], "too_large");
    assert!(!dir.path().join("ran").exists());
    assert!(worker.healthy());
}

#[test]
fn malformed_json_and_unknown_fields_get_400() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::serve(&marking_tool(dir.path()), &[]);
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let malformed = worker.request("POST", "/v1/call", &headers, b"{\"callId\": ");
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.body["error"]["code"], "bad_request");
    let unknown = worker.call_with(&json!({"callId": "c", "arguments": {}, "command": "rm -rf /"}));
    assert_eq!(unknown.status, 400);
    let not_object = worker.call_with(&json!({"callId": "c", "arguments": [1, 2]}));
    assert_eq!(not_object.status, 400);
    let wrong_type = worker.request("POST", "/v1/call", &[("Authorization", auth.as_str()), ("Content-Type", "text/plain")], b"{}");
    assert_eq!(wrong_type.status, 400);
    assert!(!dir.path().join("ran").exists());
    assert!(worker.healthy(), "the worker stays up");
}

#[test]
fn health_needs_no_token_and_other_paths_are_404() {
    let worker = Worker::serve(&exec_spec(&["/bin/true"], &[]), &[]);
    let health = worker.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
    assert_eq!(health.body, json!({"status": "ok", "tool": "test_tool", "inFlight": 0}));
    assert_eq!(worker.request("GET", "/v1/other", &[], b"").body["error"]["code"], "not_found");
}

#[test]
fn a_bad_spec_or_token_hash_stops_the_worker_at_start_with_the_reason() {
    let out = std::process::Command::new(support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--token-sha256", "abc", "--work-dir", "/tmp"])
        .env("TOOLWARDEN_TOOL_SPEC", exec_spec(&["/bin/true"], &[]).to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-sha256"));
    let out = std::process::Command::new(support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--token-sha256", &support::token_hash(), "--work-dir", "/tmp"])
        .env("TOOLWARDEN_TOOL_SPEC", "{\"name\": 1}")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOOLWARDEN_TOOL_SPEC"));
}

#[test]
fn the_session_directory_is_private_and_removed_when_the_worker_stops() {
    let worker = Worker::serve(&exec_spec(&["/bin/pwd"], &[]), &[]);
    let dir = std::path::PathBuf::from(worker.ran(json!({}))["content"].as_str().unwrap().trim());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    drop(worker);
    assert!(!dir.exists(), "{} is removed", dir.display());
}

#[test]
fn install_copies_the_binary_executable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("toolwarden-worker");
    let out = std::process::Command::new(support::BIN).arg("install").arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o755);
    assert!(std::process::Command::new(&dest).arg("help").output().unwrap().status.success(), "the copy runs");
    let missing = std::process::Command::new(support::BIN).arg("install").output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn each_finished_call_is_logged_unless_the_call_log_is_off() {
    let spec = exec_spec(&["/bin/cat"], &[]);
    let logging = Worker::serve(&spec, &[]);
    assert_eq!(logging.ran(json!({"text": "hi"}))["isError"], false);
    assert!(support::wait_for(Duration::from_secs(5), || logging.log().contains("done in")), "{}", logging.log());

    let quiet = Worker::serve(&spec, &["--no-call-log"]);
    assert_eq!(quiet.ran(json!({"text": "hi"}))["isError"], false);
    // The worker writes a call's line before its answer: by now it would be in the pipe.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!quiet.log().contains("done in"), "no line per call: {}", quiet.log());
}
