//! The `exec` runtime through the real worker: argv, timeouts, output caps, errors.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Worker, exec_spec, live_processes_with, peak_rss_kib, wait_for};

#[test]
fn shell_metacharacters_arrive_as_one_literal_argv_entry() {
    let worker = Worker::serve(&exec_spec(&["/usr/bin/python3", "-c", "import json,sys; print(json.dumps(sys.argv[1:]))"], &["{{path}}"]), &[]);
    let result = worker.ran(json!({"path": "; rm -rf /"}));
    assert_eq!(result["isError"], false);
    assert_eq!(serde_json::from_str::<serde_json::Value>(result["content"].as_str().unwrap()).unwrap(), json!(["; rm -rf /"]));
}

#[test]
fn arguments_arrive_as_json_on_stdin() {
    let worker = Worker::serve(&exec_spec(&["/bin/cat"], &[]), &[]);
    let result = worker.ran(json!({"text": "héllo", "n": 3}));
    assert_eq!(serde_json::from_str::<serde_json::Value>(result["content"].as_str().unwrap()).unwrap(), json!({"text": "héllo", "n": 3}));
}

#[test]
fn a_call_past_its_timeout_is_killed_with_the_child_it_forked() {
    // A unique sleep duration marks this test's processes.
    let secs = 100_000 + std::process::id() % 100_000;
    let script = "/bin/sleep \"$1\" & /bin/sleep \"$1\"; echo never";
    let mut spec = exec_spec(&["/bin/sh", "-c", script, "sh"], &["{{secs}}"]);
    spec["timeoutMs"] = json!(1000);
    let worker = Worker::serve(&spec, &[]);
    let result = worker.ran(json!({"secs": secs}));
    assert_eq!(result["errorCode"], "timeout", "{result}");
    assert_eq!(result["isError"], true);
    std::thread::sleep(Duration::from_millis(300));
    let stray = live_processes_with(&format!("/bin/sleep {secs}"));
    assert!(stray.is_empty(), "processes left behind: {stray:?}");
    assert!(worker.healthy(), "the worker stays up after a timeout");
}

#[test]
fn a_call_whose_caller_hangs_up_is_stopped_with_the_child_it_forked() {
    // How the gateway cancels a call: it drops the connection. Nothing the call started may keep running.
    let secs = 200_000 + std::process::id() % 100_000;
    let script = "/bin/sleep \"$1\" & /bin/sleep \"$1\"; echo never";
    let worker = Worker::serve(&exec_spec(&["/bin/sh", "-c", script, "sh"], &["{{secs}}"]), &[]);
    let marker = format!("/bin/sleep {secs}");
    let connection = worker.start_call(json!({"secs": secs}));
    let started = wait_for(Duration::from_secs(10), || live_processes_with(&marker).len() == 2);
    assert!(started, "the call's two sleeps never ran: {:?}\n{}", live_processes_with(&marker), worker.log());
    drop(connection);
    let stopped = wait_for(Duration::from_secs(10), || live_processes_with(&marker).is_empty());
    assert!(stopped, "processes left behind after the caller hung up: {:?}", live_processes_with(&marker));
    assert!(worker.healthy(), "the worker stays up");
    assert_eq!(worker.ran(json!({"secs": "0"}))["isError"], false, "and serves the next call");
}

#[test]
fn ten_megabytes_of_output_are_capped_and_marked_truncated_with_bounded_worker_memory() {
    let mut spec = exec_spec(&["/usr/bin/python3", "-c", "import sys; sys.stdout.write('x' * (10 * 1024 * 1024))"], &[]);
    spec["maxOutputBytes"] = json!(65_536);
    let worker = Worker::serve(&spec, &[]);
    let before = peak_rss_kib(worker.pid());
    let result = worker.ran(json!({}));
    assert_eq!(result["isError"], false);
    assert_eq!(result["content"].as_str().unwrap().len(), 65_536);
    assert_eq!(result["truncated"], true);
    assert_eq!(result["outputBytes"], 10 * 1024 * 1024);
    assert_eq!(result["truncatedBytes"], 10 * 1024 * 1024 - 65_536);
    let after = peak_rss_kib(worker.pid());
    assert!(after - before < 4 * 1024, "worker peak RSS grew by {} KiB for 10 MiB of output", after - before);
}

#[test]
fn a_command_that_does_not_exist_is_a_spawn_failure_and_the_worker_stays_up() {
    let worker = Worker::serve(&exec_spec(&["/nonexistent/tool"], &[]), &[]);
    let result = worker.ran(json!({}));
    assert_eq!(result["errorCode"], "spawn_failed");
    assert!(result["content"].as_str().unwrap().contains("/nonexistent/tool"));
    assert!(worker.healthy());
    assert_eq!(worker.ran(json!({}))["errorCode"], "spawn_failed", "the next call gets the same answer");
}

#[test]
fn a_non_zero_exit_is_an_error_with_the_tail_of_stderr() {
    let script = "import sys; sys.stderr.write('noise\\n' * 5000 + 'the real reason'); sys.exit(4)";
    let worker = Worker::serve(&exec_spec(&["/usr/bin/python3", "-c", script], &[]), &[]);
    let result = worker.ran(json!({}));
    assert_eq!(result["errorCode"], "exit_status");
    assert_eq!(result["exitCode"], 4);
    let content = result["content"].as_str().unwrap();
    assert!(content.ends_with("the real reason"), "{content}");
    assert!(content.len() < 10_000, "stderr is cut to its tail");
}

#[test]
fn an_object_where_an_argv_entry_is_needed_is_invalid_arguments() {
    let worker = Worker::serve(&exec_spec(&["/bin/echo"], &["{{path}}"]), &[]);
    let answer = worker.call(json!({"path": {"nested": true}}));
    assert_eq!(answer.status, 422);
    assert_eq!(answer.body["error"]["code"], "invalid_arguments");
    let missing = worker.call(json!({}));
    assert_eq!(missing.status, 422);
    assert!(missing.body["error"]["message"].as_str().unwrap().contains("path"));
}

#[test]
fn json_stdout_becomes_structured_content_when_the_tool_has_an_output_schema() {
    let mut spec = exec_spec(&["/bin/echo", "{\"count\": 3}"], &[]);
    spec["outputSchema"] = json!({"type": "object"});
    let worker = Worker::serve(&spec, &[]);
    assert_eq!(worker.ran(json!({}))["structured"], json!({"count": 3}));
    let plain = Worker::serve(&exec_spec(&["/bin/echo", "{\"count\": 3}"], &[]), &[]);
    assert!(plain.ran(json!({})).get("structured").is_none());
}

#[test]
fn preview_runs_the_preview_argv() {
    let mut spec = exec_spec(&["/bin/echo"], &["delete", "{{path}}"]);
    spec["preview"] = json!({"args": ["would delete", "{{path}}"]});
    let worker = Worker::serve(&spec, &[]);
    let preview = worker.call_with(&json!({"callId": "p", "arguments": {"path": "a.md"}, "preview": true}));
    assert_eq!(preview.body["content"], "would delete a.md\n");
    assert_eq!(worker.ran(json!({"path": "a.md"}))["content"], "delete a.md\n");
}

#[test]
fn env_credentials_reach_the_program_and_nothing_else_of_the_workers_environment() {
    let mut spec = exec_spec(&["/bin/sh", "-c", "[ \"$API_TOKEN\" = s3cr3t ] && echo reached; /usr/bin/env"], &[]);
    spec["credentials"] = json!([{"secretRef": {"name": "s", "key": "k"}, "env": "API_TOKEN"}]);
    spec["credentialSources"] = json!([{"env": "WORKER_SECRET_SOURCE"}]);
    let worker = Worker::serve_with_env(&spec, &[], &[("WORKER_SECRET_SOURCE", "s3cr3t")]);
    let content = worker.ran(json!({}))["content"].as_str().unwrap().to_string();
    // The program has the value; the result shows it redacted.
    assert!(content.starts_with("reached\n") && content.contains("API_TOKEN=[redacted]"), "{content}");
    assert!(!content.contains("WORKER_SECRET_SOURCE"), "the worker's own environment does not leak: {content}");
    assert!(!content.contains("TOOLWARDEN_TOOL_SPEC"), "{content}");
    assert!(!worker.log().contains("s3cr3t"), "secrets stay out of the worker's log");
}

#[test]
fn files_larger_than_tmp_size_and_memory_beyond_the_limit_are_refused() {
    let script = "import sys
try:
    open('big', 'wb').write(b'x' * (3 * 1024 * 1024))
    print('wrote')
except OSError as e:
    print('file refused', e.errno)
try:
    block = bytearray(400 * 1024 * 1024)
    print('allocated')
except MemoryError:
    print('memory refused')";
    let mut spec = exec_spec(&["/usr/bin/python3", "-c", script], &[]);
    spec["tmpSize"] = json!("1Mi");
    spec["memory"] = json!("128Mi");
    let worker = Worker::serve(&spec, &[]);
    let result = worker.ran(json!({}));
    // Python ignores SIGXFSZ, so the write fails with EFBIG (27) instead of killing it.
    assert_eq!(result["content"], "file refused 27\nmemory refused\n", "{result}");
}
