//! The worker client against a stand-in worker (`fixtures/fake_worker.py`) over a unix socket and TCP:
//! keep-alive reuse, recovery from a connection the worker closed, and each failure's code.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use toolwarden_gateway::runtime::worker_client::{WorkerClient, WorkerEndpoint};
use toolwarden_worker::protocol::CallRequest;

const TOKEN: &str = "worker-token-for-tests";

struct Fake {
    child: Child,
    _dir: tempfile::TempDir,
    endpoint: WorkerEndpoint,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"].iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| "python3".into())
}

fn start(tcp: bool, labels: Value) -> Fake {
    let dir = tempfile::Builder::new().prefix("twc").tempdir_in("/tmp").unwrap();
    let socket = dir.path().join("w.sock");
    let listen = if tcp { "127.0.0.1:0".to_owned() } else { format!("unix:{}", socket.display()) };
    let hash = format!("{:x}", Sha256::digest(TOKEN.as_bytes()));
    let mut child = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_worker.py"))
        .args(["sandbox", "--", "serve", "--listen", &listen, "--token-sha256", &hash, "--work-dir", "/tmp"])
        .env("TOOLWARDEN_TOOL_SPEC", json!({"name": "read_note", "labels": labels}).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let endpoint = if tcp {
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("listening on ").unwrap();
        format!("http://127.0.0.1:{port}").parse().unwrap()
    } else {
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        WorkerEndpoint::Unix(socket)
    };
    Fake { child, _dir: dir, endpoint }
}

fn request(arguments: Value) -> CallRequest {
    CallRequest::new("c-1", arguments, false)
}

async fn seen(client: &WorkerClient, arguments: Value) -> Value {
    let result = client.call(&request(arguments), Duration::from_secs(5)).await.unwrap();
    serde_json::from_str(&result.content).unwrap()
}

#[tokio::test]
async fn calls_reuse_one_connection_over_unix_and_tcp() {
    for tcp in [false, true] {
        let fake = start(tcp, json!({}));
        let client = WorkerClient::new(fake.endpoint.clone(), TOKEN.into());
        assert_eq!(client.health().await.unwrap().tool, "read_note");
        for _ in 0..20 {
            seen(&client, json!({"x": 1})).await;
        }
        let last = seen(&client, json!({"x": 2})).await;
        assert_eq!(last["arguments"], json!({"x": 2}));
        assert_eq!(last["connections"], 1, "tcp={tcp}: every call should reuse the first connection");
    }
}

#[tokio::test]
async fn connections_idle_longer_than_the_limit_are_closed_and_the_next_call_opens_one() {
    let fake = start(false, json!({}));
    let client = WorkerClient::new(fake.endpoint.clone(), TOKEN.into());
    seen(&client, json!({})).await;
    // A recent connection stays.
    client.close_idle_older_than(Duration::from_secs(60));
    assert_eq!(seen(&client, json!({})).await["connections"], 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.close_idle_older_than(Duration::from_millis(10));
    let next = seen(&client, json!({"after": "trim"})).await;
    assert_eq!(next["arguments"], json!({"after": "trim"}));
    assert_eq!(next["connections"], 2, "the trimmed connection was closed and a new one opened");
}

#[tokio::test]
async fn concurrent_calls_get_their_own_connections_and_keep_them() {
    let fake = start(false, json!({}));
    let client = WorkerClient::new(fake.endpoint.clone(), TOKEN.into());
    for _ in 0..3 {
        futures::future::join_all((0..4).map(|_| seen(&client, json!({"sleep": 0.05})))).await;
    }
    let connections = seen(&client, json!({})).await["connections"].as_i64().unwrap();
    assert!((4..=5).contains(&connections), "{connections} connections for 4 concurrent callers");
}

#[tokio::test]
async fn a_connection_the_worker_closed_is_replaced_without_failing_the_call() {
    let fake = start(false, json!({}));
    let client = WorkerClient::new(fake.endpoint.clone(), TOKEN.into());
    seen(&client, json!({"close": true})).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let next = seen(&client, json!({})).await;
    assert_eq!(next["connections"], 2);
}

#[tokio::test]
async fn failures_map_to_specific_codes() {
    let fake = start(false, json!({}));
    let wrong = WorkerClient::new(fake.endpoint.clone(), "not-the-token".into());
    assert_eq!(wrong.call(&request(json!({})), Duration::from_secs(5)).await.unwrap_err().code, "worker_unauthorized");
    let client = WorkerClient::new(fake.endpoint.clone(), TOKEN.into());
    for (status, code) in [(422, "invalid_arguments"), (429, "worker_busy"), (500, "worker_error")] {
        let e = client.call(&request(json!({"status": status})), Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.code, code, "{status}: {e:?}");
    }
    let e = client.call(&request(json!({"sleep": 2})), Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(e.code, "worker_timeout");
    assert!(e.message.contains("200 ms"), "{}", e.message);
    let huge = json!({"text": "x".repeat(5 * 1024 * 1024)});
    assert_eq!(client.call(&request(huge), Duration::from_secs(5)).await.unwrap_err().code, "request_too_large");
}

#[tokio::test]
async fn a_dead_or_missing_worker_is_worker_died() {
    let fake = start(false, json!({"fake": "die"}));
    let client = WorkerClient::new(fake.endpoint.clone(), TOKEN.into());
    assert_eq!(client.call(&request(json!({})), Duration::from_secs(5)).await.unwrap_err().code, "worker_died");
    let gone = WorkerClient::new(WorkerEndpoint::Unix("/nonexistent/worker.sock".into()), TOKEN.into());
    assert_eq!(gone.call(&request(json!({})), Duration::from_secs(5)).await.unwrap_err().code, "worker_died");
    assert_eq!(gone.health().await.unwrap_err().code, "worker_died");
}
