//! The local runtime with the real worker (`toolwarden worker sandbox ... -- serve ...`): a tool runs in
//! its sandbox with its credentials, cannot see the runtime's state or users' homes, and is stopped
//! with its session. Where the kernel refuses user namespaces the runtime must say so
//! (`sandbox_unavailable`); that case is checked instead of the isolation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use toolwarden_core::config::ToolConfig;
use toolwarden_gateway::kubernetes::Metrics;
use toolwarden_gateway::runtime::local::{LocalRuntime, LocalRuntimeConfig, LocalSecrets};
use toolwarden_gateway::runtime::{CancellationToken, SessionInfo, WorkerRuntime};
use toolwarden_worker::protocol::CallRequest;

fn tool(name: &str, command: Value, extra: Value) -> ToolConfig {
    let mut base = json!({
        "name": name, "resource": name.replace('_', "-"), "description": "A test tool.", "effect": "read",
        "inputSchema": {"type": "object"}, "runtime": {"exec": {"image": "x", "command": command}},
        "timeoutMs": 10000, "maxOutputBytes": 65536, "outputTrust": "trusted"
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    serde_json::from_value(base).unwrap()
}

fn runtime(state: &Path, manifests: &Path) -> (Arc<LocalRuntime>, Metrics) {
    let secrets: LocalSecrets = Arc::new(std::sync::RwLock::new(BTreeMap::from([(
        ("default".to_owned(), "gh".to_owned()),
        BTreeMap::from([("token".to_owned(), "gh-s3cret".to_owned())]),
    )])));
    let metrics = Metrics::default();
    let runtime = LocalRuntime::new(LocalRuntimeConfig {
        worker_command: vec![env!("CARGO_BIN_EXE_toolwarden").into(), "worker".into()],
        state_dir: state.to_owned(),
        unsafe_no_sandbox: false,
        manifests_dir: Some(manifests.to_owned()),
        secrets,
        metrics: metrics.clone(),
        max_concurrent_per_worker: 4,
    })
    .unwrap();
    (runtime, metrics)
}

fn session(id: &str) -> SessionInfo {
    SessionInfo {
        namespace: "default".into(),
        id: id.into(),
        subject: "alice".into(),
        groups: vec![],
        client_name: "test".into(),
        client_version: "1".into(),
        protocol_version: None,
    }
}

fn request(arguments: Value) -> CallRequest {
    CallRequest::new("c-1", arguments, false)
}

#[tokio::test]
async fn a_sandboxed_worker_runs_the_tool_with_its_credentials_and_nothing_of_the_host() {
    let state_parent = tempfile::Builder::new().prefix("tws").tempdir_in("/tmp").unwrap();
    let state = state_parent.path().join("state");
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("marker.txt"), "from the manifests dir").unwrap();
    let (runtime, _metrics) = runtime(&state, manifests.path());
    runtime.start_session(session("s1")).await.unwrap();

    let echo = tool("echo_args", json!(["cat"]), json!({}));
    let result = match runtime.call("s1", &echo, request(json!({"path": "a.md"})), &CancellationToken::new()).await {
        Ok(result) => result,
        Err(e) if e.code == "sandbox_unavailable" => {
            // The runtime reported the kernel's refusal with the sandbox's own sentence.
            assert!(!e.message.is_empty());
            eprintln!("user namespaces refused here; checked the refusal only: {}", e.message);
            return;
        }
        Err(e) => panic!("{e:?}"),
    };
    assert!(!result.is_error, "{result:?}");
    let echoed: Value = serde_json::from_str(result.content.trim()).unwrap();
    assert_eq!(echoed, json!({"path": "a.md"}));

    // Another session's worker, whose directory this one must not see.
    runtime.start_session(session("s2")).await.unwrap();
    runtime.call("s2", &echo, request(json!({})), &CancellationToken::new()).await.unwrap();
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 2);
    // The credentials reach the program (compared inside it: its output would show them redacted).
    let script = format!(
        "[ \"$(cat \"$TOOLWARDEN_CREDENTIALS_DIR/token.txt\")\" = gh-s3cret ] && echo file-ok; \
         [ \"$CRED_GH\" = gh-s3cret ] && echo env-ok; echo \"shown=$CRED_GH\"; \
         cat {} 2>/dev/null || echo manifests-unseen; \
         echo \"state-entries=$(ls {} | wc -l)\"; \
         ls /root/* >/dev/null 2>&1 && echo root-visible || echo root-hidden; \
         echo \"gateway-env=${{CARGO_PKG_NAME:-none}}\"",
        manifests.path().join("marker.txt").display(),
        state.display()
    );
    let probe = tool(
        "probe_sandbox",
        json!(["sh", "-c", script]),
        json!({"credentials": [
            {"secretRef": {"name": "gh", "key": "token"}, "file": "token.txt"},
            {"secretRef": {"name": "gh", "key": "token"}, "env": "CRED_GH"}
        ]}),
    );
    let result = runtime.call("s1", &probe, request(json!({})), &CancellationToken::new()).await.unwrap();
    assert!(!result.is_error, "{result:?}");
    let out = result.content.clone();
    assert!(out.starts_with("file-ok\nenv-ok\nshown=[redacted]\n"), "{out}");
    assert!(result.redacted, "{out}");
    // Only its own directory is bound in: the other session's worker directory is not there.
    assert!(out.contains("state-entries=1"), "{out}");
    assert!(out.contains("root-hidden"), "{out}");
    // Nor the manifests directory (its Secrets are every tool's credentials).
    assert!(out.contains("manifests-unseen") && !out.contains("from the manifests dir"), "{out}");
    assert!(out.contains("gateway-env=none"), "{out}");

    runtime.end_session("s1", "deleted").await;
    runtime.end_session("s2", "deleted").await;
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "worker dirs left behind");
}

#[tokio::test]
async fn workers_of_a_session_are_gone_after_it_ends() {
    let state_parent = tempfile::Builder::new().prefix("tws").tempdir_in("/tmp").unwrap();
    let state: PathBuf = state_parent.path().join("state");
    let manifests = tempfile::tempdir().unwrap();
    let (runtime, metrics) = runtime(&state, manifests.path());
    runtime.start_session(session("s1")).await.unwrap();
    let pid_tool = tool("print_pid", json!(["sh", "-c", "echo $PPID"]), json!({}));
    match runtime.call("s1", &pid_tool, request(json!({})), &CancellationToken::new()).await {
        Ok(r) => assert!(!r.is_error, "{r:?}"),
        Err(e) if e.code == "sandbox_unavailable" => return,
        Err(e) => panic!("{e:?}"),
    }
    assert_eq!(metrics.worker_pods_active.get(), 1);
    runtime.end_session("s1", "deleted").await;
    assert_eq!(metrics.worker_pods_active.get(), 0);
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    // No process is left running from the worker binary with this state dir on its command line.
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&state.display().to_string()))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A `toolwarden dev` killed with SIGKILL (no shutdown) must not leave its sandboxed workers behind.
#[tokio::test]
async fn workers_die_with_a_gateway_that_is_killed() {
    use std::io::BufRead as _;
    /// Kills the gateway on every path, a failing assertion included.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // The killed gateway cannot remove its state directory: it goes with this one.
    let tmp = tempfile::Builder::new().prefix("twk").tempdir_in("/tmp").unwrap();
    let mut dev = std::process::Command::new(env!("CARGO_BIN_EXE_toolwarden"))
        .args(["dev", "--listen", "127.0.0.1:0", "--manifests"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/manifests"))
        .env("TOOLWARDEN_DEV_TOKEN", "sandbox-test-token-0123456789")
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = format!("/toolwarden-{}/", dev.id());
    let stdout = std::io::BufReader::new(dev.stdout.take().unwrap());
    let mut dev = Guard(dev);
    let base = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on ").map(|a| a.trim().to_owned()))
        .expect("dev prints its address");
    let url = format!("{base}/mcp/default");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let post = |body: Value, session: Option<String>| {
        let mut request = http
            .post(&url)
            .bearer_auth("sandbox-test-token-0123456789")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body);
        if let Some(s) = session {
            request = request.header("mcp-session-id", s);
        }
        request.send()
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let response = post(init, None).await.unwrap();
    let session = response.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
    let _ = response.text().await;
    post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), session.clone()).await.unwrap();
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "show_text", "arguments": {"text": "hello"}}});
    let text = post(call, session).await.unwrap().text().await.unwrap();
    if !text.contains("hello") {
        // No sandbox here (user namespaces refused): the refusal must say so; no worker to check.
        assert!(text.contains("sandbox"), "{text}");
        return;
    }

    let workers = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(&state))
            .count()
    };
    assert!(workers() > 0, "the call ran, so a worker runs");
    dev.0.kill().unwrap();
    dev.0.wait().unwrap();
    for _ in 0..100 {
        if workers() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{} worker processes outlived the killed gateway", workers());
}
