//! `toolwarden dev` sends its traces to a real Jaeger (all-in-one v1.75.0, built from the Go module proxy
//! by `scripts/jaeger.sh build`), and the test reads them back from Jaeger's query API: the spans of a
//! call, their attributes, the caller's trace continued, and the tool's `traceparent` naming the gateway's
//! span. The Jaeger binary is `$TOOLWARDEN_JAEGER` (`eval "$(scripts/jaeger.sh env)"`), or the cached build
//! in `.tools/jaeger/bin`. Without either the test says so and passes, unless `TOOLWARDEN_E2E_REQUIRED`
//! is set (CI), where a missing Jaeger fails it.

mod gateway_support;
mod tracing_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_support::{DEV_TOKEN, Dev, http, ok};
use rmcp::model::{CallToolRequestParams, MetaObject, RequestMetaObject};
use serde_json::Value;
use tracing_support::{CALLER_SPAN, CALLER_TRACE, PageServer, SECRET_ARGUMENT, arguments, caller_traceparent, free_port, manifests};

fn jaeger_binary() -> Option<PathBuf> {
    let from_env = std::env::var_os("TOOLWARDEN_JAEGER").map(PathBuf::from);
    if let Some(path) = &from_env {
        assert!(path.is_file(), "TOOLWARDEN_JAEGER names {}, which is not a file", path.display());
    }
    let cached = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/jaeger/bin/jaeger");
    let found = from_env.or(Some(cached)).filter(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("TOOLWARDEN_E2E_REQUIRED").is_none(),
            "TOOLWARDEN_E2E_REQUIRED is set but there is no Jaeger: run `eval \"$(scripts/jaeger.sh env)\"` first"
        );
        eprintln!("no Jaeger binary at $TOOLWARDEN_JAEGER or .tools/jaeger/bin/jaeger: run `scripts/jaeger.sh build`; not checked");
    }
    found
}

/// A running Jaeger on two free 127.0.0.1 ports, killed on drop.
struct Jaeger {
    child: Child,
    otlp: String,
    query: String,
    _logs: tempfile::NamedTempFile,
}

impl Jaeger {
    fn start(binary: &PathBuf) -> Jaeger {
        let (otlp, query) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let logs = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(binary)
            .arg("--config")
            .arg(format!("file:{}/tests/jaeger/config.yaml", env!("CARGO_MANIFEST_DIR")))
            .env("TW_JAEGER_OTLP_HTTP", &otlp)
            .env("TW_JAEGER_QUERY", &query)
            .stdout(Stdio::null())
            .stderr(logs.reopen().unwrap())
            .spawn()
            .expect("jaeger starts");
        Jaeger { child, otlp, query, _logs: logs }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self._logs.path()).unwrap_or_default()
    }

    /// Waits until both the query API and the OTLP receiver answer.
    async fn ready(&mut self) {
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let query = client.get(format!("http://{}/api/services", self.query)).send().await.is_ok_and(|r| r.status().is_success());
            let otlp = client.post(format!("http://{}/v1/traces", self.otlp)).header("content-type", "application/x-protobuf").send().await.is_ok();
            if query && otlp {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("jaeger exited with {status}: {}", self.logs());
            }
            assert!(Instant::now() < deadline, "jaeger did not start: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The trace `id` once it has at least `spans` spans (Jaeger stores them as batches arrive).
    async fn trace(&self, id: &str, spans: usize) -> Value {
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let response = client.get(format!("http://{}/api/traces/{id}", self.query)).send().await.unwrap();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let trace = &body["data"][0];
            if trace["spans"].as_array().is_some_and(|s| s.len() >= spans) {
                return trace.clone();
            }
            assert!(Instant::now() < deadline, "trace {id} never had {spans} spans in Jaeger: {body}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The span of `trace` named `name` (exactly one).
fn span<'a>(trace: &'a Value, name: &str) -> &'a Value {
    let spans: Vec<&Value> = trace["spans"].as_array().unwrap().iter().filter(|s| s["operationName"] == name).collect();
    assert_eq!(spans.len(), 1, "one {name} span in {trace}");
    spans[0]
}

fn tag<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["tags"].as_array().unwrap().iter().find(|t| t["key"] == key).map(|t| &t["value"]).unwrap_or(&Value::Null)
}

fn parent_of(span: &Value) -> Option<(String, String)> {
    let reference = span["references"].as_array()?.iter().find(|r| r["refType"] == "CHILD_OF")?;
    Some((reference["traceID"].as_str()?.to_owned(), reference["spanID"].as_str()?.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_traced_into_jaeger_under_the_callers_trace_and_the_tool_gets_its_traceparent() {
    let Some(binary) = jaeger_binary() else { return };
    let mut jaeger = Jaeger::start(&binary);
    jaeger.ready().await;
    let pages = PageServer::start();
    let extra = manifests(pages.port);
    let endpoint = format!("http://{}", jaeger.otlp);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100"), ("OTEL_SERVICE_NAME", "toolwarden-test")];
    let dev = Dev::start_with_env(&extra.iter().map(|(n, t)| (*n, t.as_str())).collect::<Vec<_>>(), &[], &env);

    // An MCP client that carries its trace context in `_meta`, as MCP clients do (SEP-414).
    let client = dev.client(DEV_TOKEN).await;
    let mut meta = MetaObject::new();
    meta.set_traceparent(caller_traceparent());
    let serde_json::Value::Object(args) = arguments("intro") else { unreachable!() };
    let mut params = CallToolRequestParams::new("fetch_traced_page").with_arguments(args);
    params.meta = Some(RequestMetaObject(meta));
    let result = client.call_tool(params).await.expect("tools/call answers");
    assert_eq!(ok(&result), "traced page");
    let meta = result.meta.as_ref().expect("_meta");
    assert_eq!(meta.0["toolwarden.dev/traceId"], CALLER_TRACE, "{meta:?}");

    let trace = jaeger.trace(CALLER_TRACE, 7).await;
    let root = span(&trace, "tools/call fetch_traced_page");
    assert_eq!(parent_of(root), Some((CALLER_TRACE.to_owned(), CALLER_SPAN.to_owned())), "the root continues the caller's span");
    assert_eq!(tag(root, "gen_ai.tool.name"), "fetch_traced_page");
    assert_eq!(tag(root, "mcp.method.name"), "tools/call");
    assert_eq!(tag(root, "enduser.id"), "developer");
    assert_eq!(tag(root, "toolwarden.namespace"), "default");
    assert_eq!(tag(root, "toolwarden.status"), "ok");
    assert_eq!(tag(root, "span.kind"), "server");
    let root_id = root["spanID"].as_str().unwrap();
    for name in ["authenticate", "decide", "rate_limit", "worker.start", "worker.call", "result"] {
        assert_eq!(parent_of(span(&trace, name)).map(|p| p.1).as_deref(), Some(root_id), "{name} is a child of the root");
    }
    let decide = span(&trace, "decide");
    assert_eq!(tag(decide, "toolwarden.decision"), "allow");
    assert_eq!(tag(decide, "toolwarden.policy"), "traced-pages");
    let shown: Value = serde_json::from_str(tag(decide, "toolwarden.arguments").as_str().unwrap()).unwrap();
    assert_eq!(shown["page"], "intro");
    assert_eq!(shown["api_token"], "[redacted]", "sanitised as in the audit log");
    assert!(shown["note"].as_str().unwrap().contains("more characters redacted"), "{shown}");
    assert_eq!(tag(span(&trace, "rate_limit"), "toolwarden.rate_limit"), "ok");
    assert_eq!(tag(span(&trace, "worker.start"), "toolwarden.worker.start"), "local", "the session's first call started its worker");
    let call = span(&trace, "worker.call");
    assert_eq!(tag(call, "toolwarden.tool.runtime"), "http");
    assert_eq!(tag(call, "http.response.status_code"), 200);
    let result_span = span(&trace, "result");
    assert_eq!(tag(result_span, "toolwarden.status"), "ok");
    assert_eq!(tag(result_span, "toolwarden.output_bytes"), 11);
    assert_eq!(tag(result_span, "toolwarden.truncated"), false);
    assert_eq!(tag(result_span, "toolwarden.redacted"), false);
    let service = &trace["processes"][root["processID"].as_str().unwrap()]["serviceName"];
    assert_eq!(service, "toolwarden-test", "OTEL_SERVICE_NAME names the service");

    // The tool received the caller's trace with the gateway's `worker.call` span as its parent.
    let sent = pages.traceparents();
    assert_eq!(sent, [Some(format!("00-{CALLER_TRACE}-{}-01", call["spanID"].as_str().unwrap()))]);

    // Nothing secret, and no argument beyond what the audit log shows, anywhere in the trace.
    let text = trace.to_string();
    assert!(!text.contains(SECRET_ARGUMENT), "the secret argument reached Jaeger");
    assert!(!text.contains("TAIL-OF-A-LONG-NOTE"), "the long argument reached Jaeger whole");
    assert!(!text.contains(DEV_TOKEN), "the bearer token reached Jaeger");

    // The audit lines of the call carry the same trace id.
    let lines: Vec<Value> = dev.audit_lines().into_iter().filter(|l| l["tool"] == "fetch_traced_page").collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l["trace_id"] == CALLER_TRACE), "{lines:?}");
    assert_eq!(tag(root, "toolwarden.call_id"), &lines[0]["call_id"]);

    // A second call without trace context: a trace of its own, no parent, and no worker start.
    let Value::Object(args) = arguments("next") else { unreachable!() };
    let second = client.call_tool(CallToolRequestParams::new("fetch_traced_page").with_arguments(args)).await.unwrap();
    let id = second.meta.as_ref().unwrap().0["toolwarden.dev/traceId"].as_str().unwrap().to_owned();
    assert_ne!(id, CALLER_TRACE);
    let own = jaeger.trace(&id, 6).await;
    let root = span(&own, "tools/call fetch_traced_page");
    assert_eq!(parent_of(root), None, "{root}");
    assert_eq!(tag(span(&own, "worker.call"), "toolwarden.worker.started"), false);
    assert!(own["spans"].as_array().unwrap().iter().all(|s| s["operationName"] != "worker.start"));
    let metrics = http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(tracing_support::metric(&metrics, "toolwarden_trace_spans_exported_total") >= 13.0, "{metrics}");
}
