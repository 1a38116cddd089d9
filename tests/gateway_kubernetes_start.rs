//! `toolwarden gateway --runtime kubernetes` whose API server cannot be reached at start: it must not
//! exit (in a pod, that is a crash loop), but serve `/healthz`, answer `/readyz` with 503, and say in its
//! log what it waits for, retrying with backoff. (Recovery once the API server is back is covered on the
//! real cluster.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn an_unreachable_api_server_at_start_leaves_the_gateway_up_and_unready() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the API server's port: every request is refused at connect.
    let api_port = free_port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{api_port}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "tokens:\n  - {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, subject: a}\n").unwrap();
    let port = free_port();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_toolwarden"))
        .args(["gateway", "--runtime", "kubernetes", "--listen", &format!("127.0.0.1:{port}"), "--gateway-id", "g1"])
        .arg("--tokens")
        .arg(&tokens)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("toolwarden gateway starts");
    let stderr = gateway.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(gateway.try_wait().unwrap().is_none(), "the gateway exited instead of waiting for the API server");
        assert!(Instant::now() < deadline, "the gateway never served /healthz");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two retries later it is still up, still unready, and has said why twice.
    let mut said = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while said < 2 {
        assert!(Instant::now() < deadline, "the gateway did not log its retries");
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(1))
            && line.contains("cannot start the kubernetes runtime")
        {
            assert!(line.contains("check that the API server is reachable"), "{line}");
            said += 1;
        }
    }
    assert!(gateway.try_wait().unwrap().is_none(), "the gateway exited");
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the runtime cannot start");
    let _ = gateway.kill();
    let _ = gateway.wait();
}

#[test]
fn a_confirm_key_file_too_short_or_missing_stops_the_gateway_at_start_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("confirm-key");
    std::fs::write(&short, "not-32-bytes\n").unwrap();
    for (file, expected) in [
        (short.clone(), "the key is 12 bytes long; at least 32 are needed"),
        (dir.path().join("absent"), "cannot read it"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_toolwarden"))
            .args(["gateway", "--runtime", "kubernetes", "--listen", "127.0.0.1:0", "--confirm-key-file"])
            .arg(&file)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("toolwarden gateway runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the gateway started with {}", file.display());
        assert!(stderr.contains("--confirm-key-file") && stderr.contains(expected), "{stderr}");
    }
}
