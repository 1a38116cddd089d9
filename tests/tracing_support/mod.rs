//! Shared by the tracing tests: an http tool served by `toolwarden dev` whose destination is a local
//! server recording the headers it receives, and the values the tests look for in traces.
#![allow(dead_code)]

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// A caller's trace context: `00-{CALLER_TRACE}-{CALLER_SPAN}-01`.
pub const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// An argument the audit log redacts (its name says token): it must reach the tool and no span.
pub const SECRET_ARGUMENT: &str = "s3cr3t-argument-value-9f8e7d";

pub fn caller_traceparent() -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
}

/// A long argument value: the audit log (and so every span) keeps its first 64 characters only.
pub fn long_note() -> String {
    format!("{}{}", "n".repeat(64), "TAIL-OF-A-LONG-NOTE-".repeat(20))
}

/// A server on the host's 127.0.0.1 that answers `traced page` and records each request's headers.
pub struct PageServer {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Vec<String>>>>,
}

impl PageServer {
    pub fn start() -> PageServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_owned());
                }
                seen.lock().unwrap().push(head);
                let _ = write!(&stream, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\ntraced page");
            }
        });
        PageServer { port, requests }
    }

    /// The `traceparent` header values of the requests so far, in order (`None`: the request had none).
    pub fn traceparents(&self) -> Vec<Option<String>> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .map(|head| head.iter().find_map(|l| l.strip_prefix("traceparent: ").or_else(|| l.strip_prefix("Traceparent: ")).map(str::to_owned)))
            .collect()
    }
}

/// The http tool `fetch_traced_page` (to the server on `port`) and a policy letting developers call it
/// (with a rate limit, so calls have a `rate_limit` span).
pub fn manifests(port: u16) -> [(&'static str, String); 2] {
    let tool = format!(
        r#"apiVersion: toolwarden.dev/v1alpha1
kind: McpTool
metadata: {{name: fetch-traced-page}}
spec:
  description: Fetches one page from the local test server.
  effect: read
  outputTrust: trusted
  inputSchema:
    type: object
    properties:
      page: {{type: string}}
      api_token: {{type: string}}
      note: {{type: string}}
    required: [page]
    additionalProperties: false
  runtime:
    http:
      method: GET
      url: http://127.0.0.1:{port}/pages/{{page}}
      query: {{token: api_token}}
  egress:
    - cidr: 127.0.0.1/32
      ports: [{port}]
"#
    );
    let policy = r#"apiVersion: toolwarden.dev/v1alpha1
kind: ToolPolicy
metadata: {name: traced-pages}
spec:
  subjects: {groups: [developers]}
  tools: {names: [fetch-traced-page]}
  decision: allow
  rateLimit: {calls: 100, interval: 1m, per: session}
"#;
    [("traced-tool.yaml", tool), ("traced-policy.yaml", policy.to_owned())]
}

/// The arguments of a call: a page, the secret and the long note.
pub fn arguments(page: &str) -> Value {
    json!({"page": page, "api_token": SECRET_ARGUMENT, "note": long_note()})
}

/// A free TCP port on 127.0.0.1 (nothing listens on it when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A value of `/metrics` by its full series text (`name{labels}`), or 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}
