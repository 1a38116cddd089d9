//! The export queue against collectors that answer, refuse, or hang: traces are handed over without
//! waiting, and every span that does not reach a collector is counted as dropped, by reason.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use toolwarden_telemetry::config::Settings;
use toolwarden_telemetry::{SpanCounters, Telemetry, Trace};

fn settings(queue: usize, batch: usize) -> Settings {
    Settings {
        sampler: toolwarden_telemetry::Sampler::AlwaysOn,
        max_queue_size: queue,
        max_export_batch_size: batch,
        schedule_delay: Duration::from_millis(20),
        export_timeout: Duration::from_millis(1500),
    }
}

/// Records one trace of `children + 1` spans.
fn trace(telemetry: &Arc<Telemetry>, children: usize) {
    let mut trace = Trace::start(telemetry, None, "test");
    let now = SystemTime::now();
    for i in 0..children {
        trace.child("child", now, now, |span| {
            span.int("i", i as i64);
        });
    }
    trace.finish("root", None, now, now, |_| {});
}

fn dropped(counters: &SpanCounters, reason: &'static str) -> u64 {
    counters.dropped.get_or_create(&vec![("reason", reason)]).get()
}

fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bodies a collector received, one per export.
type Posts = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// A collector accepting every export (`200`, empty protobuf answer); keeps the request bodies.
fn accepting_collector() -> (String, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let posts = Posts::default();
    let count = posts.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    // One request per connection read in full: headers, then Content-Length bytes.
                    let Ok(n) = stream.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                        .unwrap_or(0);
                    if buffer.len() < end + 4 + length {
                        continue;
                    }
                    let request: Vec<u8> = buffer.drain(..end + 4 + length).collect();
                    count.lock().unwrap().push(request[end + 4..].to_vec());
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n");
                }
            });
        }
    });
    (url, posts)
}

#[test]
fn traces_reach_a_collector_that_answers_and_are_counted() {
    let (url, posts) = accepting_collector();
    let counters = SpanCounters::default();
    let telemetry = Telemetry::start("test", settings(100, 10), &counters, Some(&url)).unwrap();
    for _ in 0..5 {
        trace(&telemetry, 3);
    }
    assert!(telemetry.flush(Duration::from_secs(10)));
    assert_eq!(counters.exported.get(), 20);
    assert_eq!(dropped(&counters, "queue_full") + dropped(&counters, "export_failed"), 0);
    assert!(posts.lock().unwrap().len() >= 2, "batches of at most 10 spans");
}

/// The spans of each export, as (trace id, span name) pairs.
fn exports(posts: &Posts) -> Vec<Vec<(Vec<u8>, String)>> {
    use prost::Message as _;
    let posts = posts.lock().unwrap();
    posts
        .iter()
        .map(|body| {
            let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).map(|s| (s.trace_id.clone(), s.name.clone())).collect()
        })
        .collect()
}

#[test]
fn full_batches_go_at_once_whole_traces_at_most_the_batch_size_each() {
    let (url, posts) = accepting_collector();
    let counters = SpanCounters::default();
    // A schedule delay longer than the test: only full batches go before the flush.
    let settings = Settings { schedule_delay: Duration::from_secs(600), ..settings(100, 10) };
    let telemetry = Telemetry::start("test", settings, &counters, Some(&url)).unwrap();
    for _ in 0..5 {
        trace(&telemetry, 3);
    }
    // Two traces of 4 spans fill a batch as far as whole traces can (a third would make 12).
    eventually("the two full batches", || counters.exported.get() == 16);
    assert!(telemetry.flush(Duration::from_secs(10)));
    let exports = exports(&posts);
    let sizes: Vec<usize> = exports.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![8, 8, 4], "{exports:?}");
    for batch in &exports {
        for (trace_id, _) in batch {
            assert_eq!(batch.iter().filter(|(t, _)| t == trace_id).count(), 4, "a trace is never split: {batch:?}");
        }
        assert_eq!(batch.iter().filter(|(_, name)| name == "root").count() * 4, batch.len());
    }
}

#[test]
fn a_batch_that_does_not_fill_goes_after_the_schedule_delay() {
    let (url, posts) = accepting_collector();
    let counters = SpanCounters::default();
    let telemetry = Telemetry::start("test", settings(100, 100), &counters, Some(&url)).unwrap();
    trace(&telemetry, 2);
    eventually("the batch to go on the timer", || counters.exported.get() == 3);
    let exports = exports(&posts);
    let names: Vec<&str> = exports.iter().flatten().map(|(_, name)| name.as_str()).collect();
    assert_eq!((exports.len(), names), (1, vec!["child", "child", "root"]));
}


#[test]
fn spans_for_a_collector_that_is_down_are_dropped_and_counted() {
    let url = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1/traces", listener.local_addr().unwrap())
    };
    let counters = SpanCounters::default();
    let telemetry = Telemetry::start("test", settings(100, 100), &counters, Some(&url)).unwrap();
    trace(&telemetry, 2);
    trace(&telemetry, 2);
    telemetry.flush(Duration::from_secs(10));
    eventually("the failed export to be counted", || dropped(&counters, "export_failed") == 6);
    assert_eq!(counters.exported.get(), 0);
}

#[test]
fn a_collector_that_hangs_never_holds_up_a_trace_and_the_overflow_is_counted() {
    // Accepts connections and never answers: each export waits for its timeout.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let counters = SpanCounters::default();
    let telemetry = Telemetry::start("test", settings(8, 4), &counters, Some(&url)).unwrap();
    trace(&telemetry, 3);
    eventually("the first export to be under way", || !held.lock().unwrap().is_empty());
    // The queue holds 8 spans, 4 of them in the stuck export: 100 more traces of 4 spans cannot all wait.
    let started = Instant::now();
    for _ in 0..100 {
        trace(&telemetry, 3);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "handing traces over waited for the collector: {:?}", started.elapsed());
    let full = dropped(&counters, "queue_full");
    assert!(full >= 4 * 99, "at most one more trace fits while the export hangs; dropped {full}");
    eventually("the hung export to time out and be counted", || dropped(&counters, "export_failed") >= 4);
    assert_eq!(counters.exported.get(), 0);
}
