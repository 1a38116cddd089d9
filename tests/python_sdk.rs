//! An independent MCP client against the real gateway: `toolwarden dev` serves `tests/py/manifests` and
//! `tests/py/mcp_client.py` drives it with the official Python `mcp` SDK (v2 API) from `.tools/venv`,
//! once with the initialize handshake (2025-11-25, `Mcp-Session-Id`) and once with what the SDK
//! negotiates by itself (2026-07-28, stateless). It lists tools, makes an allowed and a refused call, and
//! checks the 401 paths.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "python-sdk-test-token-0123456789";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.tools/venv/bin/python` with the `mcp` SDK, or a failure saying how to get it.
fn python() -> PathBuf {
    let python = repo().join(".tools/venv/bin/python");
    let ok = python.exists()
        && Command::new(&python).args(["-c", "import mcp, httpx2"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(
        ok,
        "{} with the MCP Python SDK is missing: run scripts/install-tools.sh (it creates .tools/venv with mcp)",
        python.display()
    );
    python
}

struct Dev {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev(manifests: &Path) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_toolwarden"))
        .args(["dev", "--listen", "127.0.0.1:0", "--manifests"])
        .arg(manifests)
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .env("TOOLWARDEN_DEV_TOKEN", TOKEN)
        // Killed on drop: the state directory it leaves goes with `dir`.
        .env("TMPDIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("toolwarden dev starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).expect("toolwarden dev printed `listening on http://ADDR`");
    Dev { child, url: format!("{base}/mcp/default"), _dir: dir }
}

fn run_client(python: &Path, url: &str, mode: &str) {
    let output = Command::new(python)
        .arg(repo().join("tests/py/mcp_client.py"))
        .env("MCP_URL", url)
        .env("MCP_TOKEN", TOKEN)
        .env("MCP_MODE", mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client ({mode}) failed:\n{stdout}\n{stderr}");
    // Every check ran (a script that stopped early would print fewer lines).
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 12, "{stdout}");
    println!("{stdout}");
}

#[test]
fn python_sdk_lists_calls_is_refused_and_needs_a_token() {
    let python = python();
    let dev = start_dev(&repo().join("tests/py/manifests"));
    run_client(&python, &dev.url, "legacy");
    run_client(&python, &dev.url, "auto");
}
