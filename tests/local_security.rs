//! Attacks on `toolwarden dev` and its local sandbox, end to end over MCP: a tool's credentials never
//! reach the model, a call's processes never outlive it, a tool sees only what it needs of the machine,
//! and an exec tool reaches only the destinations it declares. Each test asserts the refusal or
//! redaction the client sees, the audit line, and that nothing leaked or survived.

mod gateway_support;

use gateway_support::{DEV_TOKEN, Dev, call, text};
use serde_json::{Value, json};

/// A policy letting developers call `tools`.
fn allow(name: &str, tools: &[&str]) -> String {
    format!(
        "apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {{name: {name}}}
spec:
  subjects: {{groups: [developers]}}
  tools: {{names: [{}]}}
  decision: allow
",
        tools.join(", ")
    )
}

/// The result line of the last call of `tool`.
fn result_line(dev: &Dev, tool: &str) -> Value {
    dev.audit_lines()
        .into_iter()
        .rev()
        .find(|l| l["event"] == "result" && l["tool"] == tool)
        .unwrap_or_else(|| panic!("no result line for {tool}"))
}

/// Whether this machine can sandbox at all (user namespaces allowed); the tests say so when not.
fn sandboxed(result_text: &str) -> bool {
    if result_text.contains("refuses unprivileged user namespaces") {
        eprintln!("user namespaces refused here; only the refusal was checked: {result_text}");
        return false;
    }
    true
}

const LEAKY_TOOLS: &str = r#"apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {name: show-token-echo}
spec:
  description: Prints its own credential in several encodings, as a careless program would.
  effect: read
  outputTrust: trusted
  inputSchema: {type: object, additionalProperties: false}
  runtime:
    exec:
      image: python:3.12-slim
      command: [python3, -c, "import base64, os, sys; t = os.environ['API_TOKEN']; print('env', t, base64.b64encode(t.encode()).decode(), t.encode().hex()); print('file', open(os.environ['TOOLWARDEN_CREDENTIALS_DIR'] + '/token').read().strip()); sys.stderr.write('oops ' + t)"]
  credentials:
    - secretRef: {name: echo-secret, key: token}
      env: API_TOKEN
    - secretRef: {name: echo-secret, key: token}
      file: token
---
apiVersion: v1
kind: Secret
metadata: {name: echo-secret}
stringData: {token: e2e-Leak-Value-0123456789}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_printing_its_own_credential_returns_it_redacted_and_the_audit_line_says_so() {
    let dev = Dev::start(&[("leaky.yaml", LEAKY_TOOLS), ("leaky-policy.yaml", &allow("leaky", &["show-token-echo"]))]);
    let client = dev.client(DEV_TOKEN).await;
    let result = call(&client, "show_token_echo", json!({})).await;
    let shown = text(&result);
    if !sandboxed(&shown) {
        return;
    }
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(shown, "env [redacted] [redacted] [redacted]\nfile [redacted]\n", "{result:?}");
    let meta = result.meta.as_ref().unwrap();
    assert_eq!(meta.0.get("toolwarden.dev/redacted"), Some(&json!(true)));
    let line = result_line(&dev, "show_token_echo");
    assert_eq!(line["redacted"], true, "{line}");
    assert_eq!(line["status"], "ok", "{line}");
    let everything = format!("{result:?}{}", std::fs::read_to_string(&dev.audit).unwrap());
    for spelling in ["Leak-Value", "ZTJlLUxlYWst", "4c65616b2d56616c7565"] {
        assert!(!everything.contains(spelling), "{spelling} reached the client or the audit log");
    }
}

/// A tool whose program starts a daemon (fork, setsid, fork) holding its stdout, then hangs.
fn escaping_tool(marker: &str) -> String {
    format!(
        r#"apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {{name: check-escape}}
spec:
  description: Starts a daemon in a new session, then hangs past its timeout.
  effect: read
  outputTrust: trusted
  inputSchema: {{type: object, additionalProperties: false}}
  runtime:
    exec:
      image: python:3.12-slim
      command: [python3, -c, "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv('/bin/sleep', ['/bin/sleep', '{marker}'])\n    os._exit(0)\nos.wait()\ntime.sleep(600)"]
  limits: {{timeout: 2s}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_daemon_does_not_outlive_its_timed_out_call_and_the_timeout_is_answered_on_time() {
    let marker = format!("{}", 700_000 + std::process::id() % 100_000);
    let dev = Dev::start(&[("escape.yaml", &escaping_tool(&marker)), ("escape-policy.yaml", &allow("escape", &["check-escape"]))]);
    let client = dev.client(DEV_TOKEN).await;
    let started = std::time::Instant::now();
    let result = call(&client, "check_escape", json!({})).await;
    let took = started.elapsed();
    let shown = text(&result);
    if !sandboxed(&shown) {
        return;
    }
    assert_eq!(gateway_support::code(&result).as_deref(), Some("timeout"), "{result:?}");
    assert!(shown.contains("with every process it started"), "{shown}");
    assert!(took < std::time::Duration::from_millis(2_000 + 2_500), "a 2 s timeout answered after {took:?}");
    let line = result_line(&dev, "check_escape");
    assert_eq!((line["status"].as_str(), line["code"].as_str()), (Some("timeout"), Some("timeout")), "{line}");
    let pattern = format!("/bin/sleep {marker}");
    let mut left = gateway_support::live_processes_with(&pattern);
    for _ in 0..60 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = gateway_support::live_processes_with(&pattern);
    }
    assert!(left.is_empty(), "the daemon outlived its call: {left:?}");
}

const PEEK: &str = r#"import ctypes, errno, os
here = os.path.dirname(os.path.abspath(__file__))
def attempt(what, path):
    try:
        open(path).read()
        print(what, 'READ')
    except OSError:
        print(what, 'unreachable')
attempt('secrets', os.path.join(here, 'secrets.yaml'))
attempt('tools', os.path.join(here, 'tools.yaml'))
os.symlink(os.path.join(here, 'secrets.yaml'), 'secrets-link')
attempt('secrets-link', 'secrets-link')
os.symlink('/etc/passwd', 'passwd-link')
users = {line.split(':')[0] for line in open('passwd-link').read().splitlines()}
print('passwd', 'tool' in users and users <= {'tool', 'nobody'})
print('checkout', os.path.exists(os.environ.get('CHECKOUT', '/nonexistent')))
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.syscall(425, 8, ctypes.create_string_buffer(120))
print('io_uring_setup', 'ok' if rc >= 0 else errno.errorcode[ctypes.get_errno()])
"#;

fn peek_tool(checkout: &str) -> String {
    format!(
        r#"apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {{name: inspect-sandbox}}
spec:
  description: Looks around its sandbox for what it should not see.
  effect: read
  outputTrust: trusted
  inputSchema: {{type: object, additionalProperties: false}}
  runtime:
    exec:
      image: python:3.12-slim
      command: [python3, ./peek.py]
      env: {{CHECKOUT: "{checkout}"}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_sees_its_program_but_not_the_manifests_secrets_the_hosts_etc_or_the_checkout() {
    let checkout = env!("CARGO_MANIFEST_DIR");
    let dev = Dev::start(&[
        ("peek.py", PEEK),
        ("peek.yaml", &peek_tool(checkout)),
        ("peek-policy.yaml", &allow("peek", &["inspect-sandbox"])),
    ]);
    let client = dev.client(DEV_TOKEN).await;
    let result = call(&client, "inspect_sandbox", json!({})).await;
    let shown = text(&result);
    if !sandboxed(&shown) {
        return;
    }
    assert_ne!(result.is_error, Some(true), "the program beside the manifests runs: {result:?}");
    assert_eq!(
        shown,
        "secrets unreachable\ntools unreachable\nsecrets-link unreachable\npasswd True\ncheckout False\nio_uring_setup EPERM\n",
        "{result:?}"
    );
    assert!(!shown.contains("replace-with-a-fine-grained-token"));
    assert_eq!(result_line(&dev, "inspect_sandbox")["status"], "ok");
}

/// A listener on the host's 127.0.0.1 answering `hello`, counting its connections.
fn host_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let _ = write!(&stream, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
        }
    });
    (port, hits)
}

fn egress_tool(allowed: u16, other: u16) -> String {
    format!(
        r#"apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {{name: fetch-egress-probe}}
spec:
  description: Tries its declared destination, then the rest of the host.
  effect: read
  outputTrust: trusted
  inputSchema: {{type: object, additionalProperties: false}}
  runtime:
    exec:
      image: python:3.12-slim
      command: [python3, -c, "import socket, urllib.error, urllib.request\ndef direct(p):\n    try:\n        socket.create_connection(('127.0.0.1', p), timeout=2)\n        return 'connected'\n    except OSError:\n        return 'unreachable'\nprint('direct', direct({allowed}), direct({other}))\nprint('declared', urllib.request.urlopen('http://127.0.0.1:{allowed}/', timeout=5).read().decode())\ntry:\n    urllib.request.urlopen('http://127.0.0.1:{other}/', timeout=5)\n    print('other reached')\nexcept urllib.error.HTTPError as e:\n    print('other', e.code)"]
  egress:
    - cidr: 127.0.0.1/32
      ports: [{allowed}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_tool_with_one_narrow_egress_rule_reaches_only_that_destination() {
    let (allowed, allowed_hits) = host_server();
    let (other, other_hits) = host_server();
    let dev = Dev::start(&[
        ("egress.yaml", &egress_tool(allowed, other)),
        ("egress-policy.yaml", &allow("egress", &["fetch-egress-probe"])),
    ]);
    let client = dev.client(DEV_TOKEN).await;
    let result = call(&client, "fetch_egress_probe", json!({})).await;
    let shown = text(&result);
    if !sandboxed(&shown) {
        return;
    }
    assert_eq!(shown, "direct unreachable unreachable\ndeclared hello\nother 403\n", "{result:?}");
    assert_eq!(other_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the undeclared port was reached");
    assert_eq!(allowed_hits.load(std::sync::atomic::Ordering::SeqCst), 1, "only the proxied request reached the declared one");
    assert_eq!(result_line(&dev, "fetch_egress_probe")["status"], "ok");
}
