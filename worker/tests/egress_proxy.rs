//! `sandbox --network proxy`: an exec tool that declares egress reaches its declared destinations through
//! the sandbox's proxy, and nothing else — not the host's loopback, not another port of it.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use support::{Worker, exec_spec};

/// An HTTP server on the host's 127.0.0.1 answering `hello from NAME`, counting connections.
fn server(name: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let body = format!("hello from {name}");
            let _ = write!(&stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (port, accepted)
}

const PROBE: &str = "import os, socket, sys, urllib.error, urllib.request
allowed, other = int(sys.argv[1]), int(sys.argv[2])
def direct(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=2)
        return 'connected'
    except OSError:
        return 'unreachable'
def connect(port):
    s = socket.create_connection(('127.0.0.1', 3128), timeout=5)
    s.sendall(b'CONNECT 127.0.0.1:%d HTTP/1.1\\r\\n\\r\\n' % port)
    return s.recv(200).split(b'\\r\\n')[0].decode()
print('direct', direct(allowed), direct(other))
print('proxy', os.environ['HTTPS_PROXY'] == os.environ['HTTP_PROXY'] == 'http://127.0.0.1:3128')
print('get', urllib.request.urlopen('http://127.0.0.1:%d/x' % allowed, timeout=5).read().decode())
try:
    urllib.request.urlopen('http://127.0.0.1:%d/x' % other, timeout=5)
    print('get-other reached')
except urllib.error.HTTPError as e:
    print('get-other', e.code, e.read().decode().strip())
print('connect', connect(allowed), '|', connect(other))";

#[test]
fn an_exec_tool_with_narrow_egress_reaches_only_its_destination_through_the_proxy() {
    let (allowed, allowed_hits) = server("allowed");
    let (other, other_hits) = server("other");
    let mut spec = exec_spec(&["/usr/bin/python3", "-c", PROBE], &["{{allowed}}", "{{other}}"]);
    spec["egress"] = json!([{"cidr": "127.0.0.1/32", "ports": [allowed]}]);
    let worker = Worker::sandboxed(&spec, &["--network", "proxy"]);
    let result = worker.ran(json!({"allowed": allowed, "other": other}));
    let content = result["content"].as_str().unwrap_or_default();
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 5, "{result}");
    assert_eq!(lines[0], "direct unreachable unreachable", "no route to the host's loopback: {content}");
    assert_eq!(lines[1], "proxy True");
    assert_eq!(lines[2], "get hello from allowed");
    assert!(lines[3].starts_with(&format!("get-other 403 toolwarden egress proxy: 127.0.0.1:{other} (127.0.0.1:{other}) is not a destination this tool declares (egress: 127.0.0.1/32 ports [{allowed}])")), "{content}");
    assert_eq!(lines[4], "connect HTTP/1.1 200 Connection established | HTTP/1.1 403 Forbidden");
    assert_eq!(other_hits.load(Ordering::SeqCst), 0, "nothing reached the undeclared port");
    assert!(allowed_hits.load(Ordering::SeqCst) >= 2);
}

#[test]
fn a_tool_without_the_proxy_flag_has_no_proxy_and_no_network() {
    let (port, hits) = server("host");
    let code = "import os, socket, sys
try:
    socket.create_connection(('127.0.0.1', 3128), timeout=2)
    print('proxy reachable')
except OSError:
    print('no proxy', os.environ.get('HTTPS_PROXY'))
try:
    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)
    print('host reachable')
except OSError:
    print('no host')";
    let worker = Worker::sandboxed(&exec_spec(&["/usr/bin/python3", "-c", code], &["{{port}}"]), &[]);
    assert_eq!(worker.ran(json!({"port": port}))["content"], "no proxy None\nno host\n");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[test]
fn the_workers_own_http_client_goes_through_the_proxy_in_a_proxied_sandbox() {
    let (allowed, _) = server("allowed");
    let (other, other_hits) = server("other");
    let spec = |port: u16| {
        json!({
            "name": "get_page", "resource": "get-page", "description": "t", "effect": "read", "inputSchema": {"type": "object"},
            "runtime": {"http": {"method": "GET", "url": format!("http://127.0.0.1:{port}/page")}},
            "egress": [{"cidr": "127.0.0.1/32", "ports": [allowed]}],
            "timeoutMs": 10_000, "maxOutputBytes": 65_536, "outputTrust": "trusted",
        })
    };
    let worker = Worker::sandboxed(&spec(allowed), &["--network", "proxy"]);
    let result = worker.ran(json!({}));
    assert_eq!(result["content"], "hello from allowed", "{result}");
    let refused = Worker::sandboxed(&spec(other), &["--network", "proxy"]).ran(json!({}));
    assert_eq!(refused["errorCode"], "egress_denied", "{refused}");
    assert!(refused["content"].as_str().unwrap().contains("is not a destination this tool declares"), "{refused}");
    assert_eq!(other_hits.load(Ordering::SeqCst), 0);
}

#[test]
fn a_broad_cidr_does_not_open_the_hosts_loopback() {
    let (port, hits) = server("host");
    let code = "import socket, sys
s = socket.create_connection(('127.0.0.1', 3128), timeout=5)
s.sendall(b'CONNECT 127.0.0.1:%d HTTP/1.1\\r\\n\\r\\n' % int(sys.argv[1]))
print(s.recv(300).decode().split('\\r\\n')[0])";
    let mut spec = exec_spec(&["/usr/bin/python3", "-c", code], &["{{port}}"]);
    spec["egress"] = json!([{"cidr": "0.0.0.0/0", "ports": [port]}]);
    let worker = Worker::sandboxed(&spec, &["--network", "proxy"]);
    assert_eq!(worker.ran(json!({"port": port}))["content"], "HTTP/1.1 403 Forbidden\n");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}
