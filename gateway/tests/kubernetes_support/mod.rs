//! A scripted Kubernetes API server (tower-test), in the style of kube-rs/controller-rs fixtures: each
//! test lists the requests it expects, in order, and what the server answers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::client::Body;
use kube::Client;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use toolwarden_core::config::ToolConfig;

/// An answer's body: whole, or a watch that stays open for more events ([`push`]).
pub type Answer = UnsyncBoxBody<Bytes, Infallible>;
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Answer>>;

/// The gateway's pod watch (`pod_watch`): all namespaces, this gateway's pods (`gw-0` in these tests).
pub const POD_WATCH: &str = "/api/v1/pods?";
const GATEWAY_PODS: &str = "labelSelector=toolwarden.dev%2Fgateway%3Dgw-0";

/// One expected request and the answer.
pub struct Step {
    pub method: &'static str,
    /// The request's path and query must contain every one of these.
    pub path: Vec<String>,
    pub status: u16,
    pub reply: Reply,
}

pub enum Reply {
    Json(Value),
    /// The request's object as created: a resourceVersion and uid added; a pod is remembered.
    Created,
    /// The last created pod with this status.
    Pod(Value),
    /// A watch of the last created pod: one event per status; it stays open for [`push`]ed events.
    PodEvents(Vec<(&'static str, Value)>),
    /// Not a request: more events of the last created pod on the open pod watch.
    Push(Vec<(&'static str, Value)>),
    /// A watch: newline-delimited events.
    Events(Vec<Value>),
    /// Never answer in time (the client gives up first).
    Hang(Duration),
}

/// What the server saw, for assertions after the story ran.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub body: Value,
}

pub fn step(method: &'static str, path: &[&str], status: u16, reply: Reply) -> Step {
    Step { method, path: path.iter().map(|p| p.to_string()).collect(), status, reply }
}

pub fn client() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Answer>>();
    (Client::new(service, "default"), handle)
}

/// The pod watch opening at a namespace's first start: its list (no pod yet), then the watch with
/// `events` of the pod just created.
pub fn pod_watch(events: Vec<(&'static str, Value)>) -> [Step; 2] {
    [
        step("GET", &[POD_WATCH, GATEWAY_PODS], 200, Reply::Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"}, "items": []}))),
        step("GET", &[POD_WATCH, GATEWAY_PODS, "watch=true"], 200, Reply::PodEvents(events)),
    ]
}

/// More events of the last created pod on the pod watch opened before.
pub fn push(events: Vec<(&'static str, Value)>) -> Step {
    step("PUSH", &[], 0, Reply::Push(events))
}

pub fn whole(text: String) -> Answer {
    Full::new(Bytes::from(text)).boxed_unsync()
}

fn lines(events: Vec<(&'static str, Value)>, pod: &Value) -> Vec<String> {
    events.into_iter().map(|(kind, status)| format!("{}\n", event(kind, with_status(pod, status)))).collect()
}

/// Serves `steps` in order and returns what it saw; panics (failing the test) on any other request.
pub async fn serve(mut handle: Handle, steps: Vec<Step>) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut last_pod = Value::Null;
    let mut open_watch: Option<mpsc::UnboundedSender<String>> = None;
    for (i, step) in steps.into_iter().enumerate() {
        if let Reply::Push(events) = step.reply {
            let watch = open_watch.as_ref().unwrap_or_else(|| panic!("step {i}: no pod watch open to push to"));
            for line in lines(events, &last_pod) {
                watch.send(line).expect("the pod watch was closed");
            }
            continue;
        }
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("step {i}: no {} {:?} request came", step.method, step.path))
            .expect("service dropped");
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let bytes = request.into_body().collect_bytes().await.expect("request body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(method, step.method, "step {i}: {uri}");
        for part in &step.path {
            assert!(uri.contains(part.as_str()), "step {i}: {method} {uri} lacks {part}");
        }
        seen.push(Seen { method, uri, body });
        let text = match step.reply {
            Reply::Push(_) => unreachable!(),
            Reply::Json(v) => v.to_string(),
            Reply::Created => {
                let object = created(&seen.last().unwrap().body);
                if object["kind"] == "Pod" {
                    last_pod = object.clone();
                }
                object.to_string()
            }
            Reply::Pod(status) => with_status(&last_pod, status).to_string(),
            Reply::PodEvents(events) => {
                let (tx, rx) = mpsc::unbounded_channel();
                for line in lines(events, &last_pod) {
                    tx.send(line).unwrap();
                }
                open_watch = Some(tx);
                let frames = tokio_stream_of(rx).map(|line| Ok::<_, Infallible>(Frame::data(Bytes::from(line))));
                let response = Response::builder()
                    .status(StatusCode::from_u16(step.status).unwrap())
                    .header("content-type", "application/json")
                    .body(StreamBody::new(frames).boxed_unsync())
                    .unwrap();
                send.send_response(response);
                continue;
            }
            Reply::Events(events) => events.iter().map(|e| format!("{e}\n")).collect(),
            Reply::Hang(d) => {
                tokio::time::sleep(d).await;
                continue;
            }
        };
        let response = Response::builder()
            .status(StatusCode::from_u16(step.status).unwrap())
            .header("content-type", "application/json")
            .body(whole(text))
            .unwrap();
        send.send_response(response);
    }
    // Nothing more may come: a stray request is a bug (an extra status write, a leaked pod call).
    if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
    seen
}

/// The receiver as a stream that stays open while the sender lives.
fn tokio_stream_of(mut rx: mpsc::UnboundedReceiver<String>) -> impl futures::Stream<Item = String> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub fn tool(warm_pool: u32) -> ToolConfig {
    serde_json::from_value(json!({
        "name": "search_issues",
        "resource": "search-issues",
        "description": "Searches issues.",
        "effect": "read",
        "inputSchema": {"type": "object"},
        "runtime": {"exec": {"image": "ghcr.io/acme/search:1", "command": ["search"]}},
        "credentials": [{"secretRef": {"name": "gh", "key": "token"}, "env": "GH_TOKEN"}],
        "timeoutMs": 30000,
        "maxOutputBytes": 65536,
        "outputTrust": "untrusted",
        "sandbox": {"warmPool": warm_pool}
    }))
    .unwrap()
}

pub fn mcp_session(namespace: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "toolwarden.dev/v1alpha1",
        "kind": "McpSession",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1"},
        "spec": {"subject": "alice"}
    })
}

/// The object the server "created": the request's object with a resourceVersion and uid.
pub fn created(object: &Value) -> Value {
    let mut object = object.clone();
    object["metadata"]["resourceVersion"] = json!("10");
    let uid = if object["kind"] == "Pod" { "pod-uid" } else { "session-uid" };
    object["metadata"]["uid"] = json!(uid);
    object
}

pub fn with_status(pod: &Value, status: Value) -> Value {
    let mut pod = pod.clone();
    pod["status"] = status;
    pod
}

pub fn ready(ip: &str) -> Value {
    json!({
        "phase": "Running",
        "podIP": ip,
        "conditions": [{"type": "Ready", "status": "True"}]
    })
}

pub fn waiting(reason: &str, message: &str) -> Value {
    json!({
        "phase": "Pending",
        "containerStatuses": [{
            "name": "worker", "image": "ghcr.io/acme/search:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}
        }]
    })
}

pub fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

pub fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message})
}
