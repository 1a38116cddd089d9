//! Tracing in `toolwarden dev` without a working collector (docs/tracing.md): off by default, adding and
//! passing on nothing; on, a collector that is down or hangs never fails or delays a call, and the spans
//! it did not take are counted; a malformed `traceparent` is ignored, never trusted in part.
//! tests/tracing_jaeger.rs checks the spans themselves in a real Jaeger.

mod gateway_support;
mod tracing_support;

use std::time::{Duration, Instant};

use gateway_support::{DEV_TOKEN, Dev, http, in_session, mcp_post_via, open_session_via};
use serde_json::{Value, json};
use tracing_support::{CALLER_TRACE, PageServer, arguments, caller_traceparent, free_port, manifests, metric};

/// `tools/call` of `fetch_traced_page` over raw HTTP in `session`, with extra `headers` and `_meta`;
/// returns the JSON-RPC result.
async fn raw_call(dev: &Dev, client: &reqwest::Client, session: &str, headers: &[(&str, &str)], meta: Option<Value>) -> Value {
    let mut params = json!({"name": "fetch_traced_page", "arguments": arguments("one")});
    if let Some(meta) = meta {
        params["_meta"] = meta;
    }
    let mut request = in_session(mcp_post_via(client, dev, Some(DEV_TOKEN)), session);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params});
    let response = request.json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let reply: Value = serde_json::from_str(&text)
        .ok()
        .or_else(|| text.lines().filter_map(|l| l.strip_prefix("data:")).find_map(|d| serde_json::from_str(d.trim()).ok()))
        .unwrap_or_else(|| panic!("no JSON-RPC reply in {text}"));
    let result = reply["result"].clone();
    assert_ne!(result["isError"], true, "{reply}");
    assert_eq!(result["content"][0]["text"], "traced page", "{reply}");
    result
}

fn trace_id_of(result: &Value) -> Option<String> {
    result["_meta"]["toolwarden.dev/traceId"].as_str().map(str::to_owned)
}

/// The trace id in a `traceparent` value.
fn trace_in(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

async fn metrics(dev: &Dev) -> String {
    http().get(dev.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

async fn open(dev: &Dev) -> (reqwest::Client, String) {
    let client = http();
    let session = open_session_via(&client, dev, DEV_TOKEN).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = in_session(mcp_post_via(&client, dev, Some(DEV_TOKEN)), &session).json(&initialized).send().await.unwrap();
    assert!(response.status().is_success());
    (client, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_is_off_by_default_and_then_adds_and_passes_on_nothing() {
    let pages = PageServer::start();
    let extra = manifests(pages.port);
    let dev = Dev::start(&extra.iter().map(|(n, t)| (*n, t.as_str())).collect::<Vec<_>>());
    let (client, session) = open(&dev).await;
    let traceparent = caller_traceparent();
    let result = raw_call(&dev, &client, &session, &[("traceparent", &traceparent)], Some(json!({"traceparent": traceparent}))).await;
    assert_eq!(trace_id_of(&result), None, "{result}");
    assert_eq!(pages.traceparents(), [None], "nothing is passed on to the tool");
    let lines = dev.audit_lines();
    assert!(lines.len() >= 2 && lines.iter().all(|l| l.get("trace_id").is_none()), "{lines:?}");
    let text = metrics(&dev).await;
    assert!(text.contains("toolwarden_trace_spans_dropped_total{reason=\"export_failed\"} 0"), "the series exist at zero: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_never_fails_a_call_and_its_dropped_spans_are_counted() {
    let pages = PageServer::start();
    let extra = manifests(pages.port);
    let down = format!("http://127.0.0.1:{}", free_port());
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", down.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "300")];
    let dev = Dev::start_with_env(&extra.iter().map(|(n, t)| (*n, t.as_str())).collect::<Vec<_>>(), &[], &env);
    let (client, session) = open(&dev).await;

    let traceparent = caller_traceparent();
    let with_header = raw_call(&dev, &client, &session, &[("traceparent", &traceparent)], None).await;
    assert_eq!(trace_id_of(&with_header).as_deref(), Some(CALLER_TRACE), "the caller's trace goes on: {with_header}");
    let own = raw_call(&dev, &client, &session, &[], None).await;
    let own_trace = trace_id_of(&own).expect("an untraced caller's call gets a trace of its own");
    assert!(own_trace.len() == 32 && own_trace != CALLER_TRACE, "{own_trace}");

    // The tool received the call's trace context: the caller's trace, the gateway's span.
    let sent = pages.traceparents();
    let sent: Vec<&str> = sent.iter().map(|t| t.as_deref().expect("every traced call sends a traceparent")).collect();
    assert_eq!(trace_in(sent[0]), CALLER_TRACE);
    assert!(!sent[0].contains(tracing_support::CALLER_SPAN), "the parent named is the gateway's span, not the caller's: {}", sent[0]);
    assert_eq!(trace_in(sent[1]), own_trace);

    let lines = dev.audit_lines();
    for (line, trace) in lines.iter().filter(|l| l["tool"] == "fetch_traced_page").zip([CALLER_TRACE, CALLER_TRACE, &own_trace, &own_trace]) {
        assert_eq!(line["trace_id"], trace, "decision and result lines carry the trace id: {line}");
    }

    // Each call's spans (root, authenticate, decide, rate_limit, worker.start or not, worker.call, result)
    // are given up when the export fails, and counted.
    dev.eventually("the failed exports to be counted", async || {
        metric(&metrics(&dev).await, "toolwarden_trace_spans_dropped_total{reason=\"export_failed\"}") >= 12.0
    })
    .await;
    let text = metrics(&dev).await;
    assert_eq!(metric(&text, "toolwarden_trace_spans_exported_total"), 0.0, "{text}");
    assert!(dev.stderr.lock().unwrap().iter().any(|l| l.contains("cannot export traces to the OTLP collector")), "the failure is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_hangs_never_delays_a_call_and_the_queue_overflow_is_counted() {
    // Accepts connections and never answers: an export waits for its whole timeout (20 s here).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = format!("http://{}", listener.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let pages = PageServer::start();
    let extra = manifests(pages.port);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", hung.as_str()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "20000"),
        ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "12"),
    ];
    let dev = Dev::start_with_env(&extra.iter().map(|(n, t)| (*n, t.as_str())).collect::<Vec<_>>(), &[], &env);
    let (client, session) = open(&dev).await;
    raw_call(&dev, &client, &session, &[], None).await;
    dev.eventually("the first export to hang", async || !held.lock().unwrap().is_empty()).await;
    for _ in 0..6 {
        let started = Instant::now();
        let result = raw_call(&dev, &client, &session, &[], None).await;
        assert!(trace_id_of(&result).is_some());
        // Generous: a call that waited for the collector would take the export's 20 s.
        assert!(started.elapsed() < Duration::from_secs(10), "a call waited for the collector: {:?}", started.elapsed());
    }
    let text = metrics(&dev).await;
    assert!(metric(&text, "toolwarden_trace_spans_dropped_total{reason=\"queue_full\"}") >= 6.0 * 5.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_is_ignored_and_the_call_gets_a_trace_of_its_own() {
    let pages = PageServer::start();
    let extra = manifests(pages.port);
    let down = format!("http://127.0.0.1:{}", free_port());
    let dev = Dev::start_with_env(&extra.iter().map(|(n, t)| (*n, t.as_str())).collect::<Vec<_>>(), &[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", down.as_str())]);
    let (client, session) = open(&dev).await;
    let malformed = [
        format!("00-{}-{}-01", CALLER_TRACE.to_uppercase(), tracing_support::CALLER_SPAN),
        format!("00-{}-{}-01", &CALLER_TRACE[..16], tracing_support::CALLER_SPAN),
        format!("00-{CALLER_TRACE}-0000000000000000-01"),
        format!("ff-{CALLER_TRACE}-{}-01", tracing_support::CALLER_SPAN),
        format!("00-{CALLER_TRACE}-{}-01-extra", tracing_support::CALLER_SPAN),
    ];
    for bad in &malformed {
        let by_header = raw_call(&dev, &client, &session, &[("traceparent", bad)], None).await;
        let by_meta = raw_call(&dev, &client, &session, &[], Some(json!({"traceparent": bad}))).await;
        for result in [by_header, by_meta] {
            let trace = trace_id_of(&result).expect("traced all the same");
            assert_ne!(trace.to_lowercase(), CALLER_TRACE, "{bad} was trusted");
            assert!(!trace.contains(&CALLER_TRACE[..16]), "{bad} was trusted in part");
        }
    }
    // A malformed `_meta` value does not hide a valid header.
    let valid = caller_traceparent();
    let result = raw_call(&dev, &client, &session, &[("traceparent", &valid)], Some(json!({"traceparent": malformed[0]}))).await;
    assert_eq!(trace_id_of(&result).as_deref(), Some(CALLER_TRACE));
    let sent = pages.traceparents();
    assert_eq!(sent.len(), malformed.len() * 2 + 1);
    assert!(sent[..malformed.len() * 2].iter().all(|t| t.as_deref().is_some_and(|t| trace_in(t) != CALLER_TRACE)), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_tracing_setting_stops_the_gateway_with_the_variable_named() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_toolwarden"))
        .args(["dev", "--listen", "127.0.0.1:0", "--manifests"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("TMPDIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\"") && stderr.contains("http/protobuf"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_rmcp_routes_is_traced_the_same_way() {
    let pages = PageServer::start();
    let extra = manifests(pages.port);
    let down = format!("http://127.0.0.1:{}", free_port());
    let dev = Dev::start_with_env(&extra.iter().map(|(n, t)| (*n, t.as_str())).collect::<Vec<_>>(), &[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", down.as_str())]);
    let (client, session) = open(&dev).await;
    // A `_meta` key the direct path does not serve hands the request to rmcp's handler.
    let meta = json!({"traceparent": caller_traceparent(), "example.com/note": "via rmcp"});
    let result = raw_call(&dev, &client, &session, &[], Some(meta)).await;
    assert_eq!(trace_id_of(&result).as_deref(), Some(CALLER_TRACE), "{result}");
    // The header is honoured on this path too.
    let header = raw_call(&dev, &client, &session, &[("traceparent", &caller_traceparent())], Some(json!({"example.com/note": "x"}))).await;
    assert_eq!(trace_id_of(&header).as_deref(), Some(CALLER_TRACE), "{header}");
    let sent = pages.traceparents();
    assert!(sent.iter().all(|t| t.as_deref().is_some_and(|t| trace_in(t) == CALLER_TRACE)), "{sent:?}");
    let lines = dev.audit_lines();
    assert!(lines.iter().filter(|l| l["tool"] == "fetch_traced_page").all(|l| l["trace_id"] == CALLER_TRACE), "{lines:?}");
}
