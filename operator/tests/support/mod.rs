//! A scripted Kubernetes API server (tower-test), in the style of kube-rs/controller-rs fixtures: each
//! test lists the requests it expects, in order, and what the server answers; anything else fails.
//! `Fake` is the other kind: a small in-memory API server that answers whatever comes and counts
//! calls, for the benchmark and for loops whose order is not the point.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use toolwarden_core::resources::{McpTool, ToolPolicy};
use toolwarden_operator::context::{Context, Settings};
use toolwarden_operator::metrics::Metrics;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub struct Step {
    pub method: &'static str,
    /// The request's path and query must contain every one of these.
    pub path: Vec<String>,
    pub status: u16,
    pub reply: Reply,
}

pub enum Reply {
    Json(Value),
    /// The request's body, with a resourceVersion (what an apply or create returns).
    Echo,
    /// A `Status` error with this code and reason.
    Error(&'static str),
}

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
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

pub fn context(client: Client, settings: Settings) -> Arc<Context> {
    Arc::new(Context::new(client, settings, Arc::new(Metrics::default()), Some("test".into())))
}

pub fn status_error(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": format!("scripted {reason}")})
}

fn respond(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(body.into_bytes()))
        .unwrap()
}

async fn read(request: Request<Body>) -> Seen {
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.expect("request body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Seen { method, uri, body }
}

/// Serves `steps` in order and returns what it saw; panics (failing the test) on any other request.
pub async fn serve(mut handle: Handle, steps: Vec<Step>) -> Vec<Seen> {
    let mut seen = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("step {i}: no {} {:?} request came", step.method, step.path))
            .expect("service dropped");
        let s = read(request).await;
        assert_eq!(s.method, step.method, "step {i}: {}", s.uri);
        for part in &step.path {
            assert!(s.uri.contains(part.as_str()), "step {i}: {} {} lacks {part}", s.method, s.uri);
        }
        let text = match step.reply {
            Reply::Json(v) => v.to_string(),
            Reply::Echo => with_version(&s.body, "100").to_string(),
            Reply::Error(reason) => status_error(step.status, reason).to_string(),
        };
        seen.push(s);
        send.send_response(respond(step.status, text));
    }
    if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
    seen
}

pub fn with_version(object: &Value, version: &str) -> Value {
    let mut object = object.clone();
    if object.is_object() {
        object["metadata"]["resourceVersion"] = json!(version);
    }
    object
}

/// An in-memory API server: objects by path, apply = store the body, counts per method.
#[derive(Clone, Default)]
pub struct Fake {
    pub objects: Arc<Mutex<BTreeMap<String, Value>>>,
    pub calls: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Fake {
    pub fn put(&self, path: &str, object: Value) {
        self.objects.lock().unwrap().insert(path.to_owned(), object);
    }

    pub fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }

    /// Answers every request until the client is dropped.
    pub async fn serve(self, mut handle: Handle) {
        while let Some((request, send)) = handle.next_request().await {
            let s = read(request).await;
            let path = s.uri.split('?').next().unwrap_or_default().to_owned();
            let kind = if path.contains("/events") { "event" } else if path.ends_with("/status") { "status" } else { "object" };
            *self.calls.lock().unwrap().entry(format!("{} {kind}", s.method)).or_default() += 1;
            if s.uri.contains("watch=true") {
                // Hold the watch open for a while, then end it empty (the watcher simply re-watches).
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    send.send_response(respond(200, String::new()));
                });
                continue;
            }
            let mut objects = self.objects.lock().unwrap();
            let (status, body) = match s.method.as_str() {
                "GET" => match (objects.get(&path), collection(&path)) {
                    (Some(o), _) => (200, o.clone()),
                    (None, Some(c)) => {
                        let selector = label_selector(&s.uri);
                        let items: Vec<Value> = objects
                            .iter()
                            .filter(|(p, o)| c.holds(p) && selector.iter().all(|(k, v)| matches_label(o, k, v.as_deref())))
                            .map(|(_, o)| o.clone())
                            .collect();
                        (200, json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}))
                    }
                    (None, None) => (404, status_error(404, "NotFound")),
                },
                "PATCH" | "PUT" => match path.strip_suffix("/status") {
                    // A status write changes the object's status and returns the whole object.
                    Some(base) => match objects.get_mut(base) {
                        Some(object) => {
                            object["status"] = s.body["status"].clone();
                            (200, object.clone())
                        }
                        None => (404, status_error(404, "NotFound")),
                    },
                    None => {
                        let object = with_version(&s.body, "1");
                        objects.insert(path, object.clone());
                        (200, object)
                    }
                },
                "POST" => {
                    let object = with_version(&s.body, "1");
                    if let Some(name) = object["metadata"]["name"].as_str() {
                        objects.insert(format!("{path}/{name}"), object.clone());
                    }
                    (201, object)
                }
                "DELETE" => match objects.remove(&path) {
                    Some(_) => (200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
                    None => (404, status_error(404, "NotFound")),
                },
                _ => (405, status_error(405, "MethodNotAllowed")),
            };
            send.send_response(respond(status, body.to_string()));
        }
    }
}

pub fn tool(namespace: &str, name: &str, generation: i64, extra: Value) -> McpTool {
    let mut spec = json!({
        "description": "Reads one note from the workspace.",
        "effect": "read",
        "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        "runtime": {"exec": {"image": "python:3.12-slim", "command": ["python3", "notes.py"], "args": ["read", "{{path}}"]}}
    });
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "toolwarden.dev/v1alpha1", "kind": "McpTool",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "generation": generation, "resourceVersion": "7"},
        "spec": spec
    }))
    .unwrap()
}

pub fn policy(namespace: &str, name: &str, spec: Value) -> ToolPolicy {
    serde_json::from_value(json!({
        "apiVersion": "toolwarden.dev/v1alpha1", "kind": "ToolPolicy",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "generation": 1, "resourceVersion": "7"},
        "spec": spec
    }))
    .unwrap()
}

pub fn secret(namespace: &str, name: &str, data: &[(&str, &str)]) -> Value {
    use base64::Engine;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(base64::engine::general_purpose::STANDARD.encode(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace, "resourceVersion": "3"}, "data": data})
}

pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap_or_else(|| panic!("no {type_} in {status}"))
}

/// A collection path (`/apis/g/v/r`, `/api/v1/namespaces/ns/r`, ...).
pub struct Collection {
    prefix: Vec<String>,
    namespace: Option<String>,
    resource: String,
}

fn split(path: &str) -> (Vec<String>, Vec<String>) {
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let prefix = if segs.first().map(String::as_str) == Some("api") { 2 } else { 3 };
    let prefix = prefix.min(segs.len());
    (segs[..prefix].to_vec(), segs[prefix..].to_vec())
}

pub fn collection(path: &str) -> Option<Collection> {
    let (prefix, rest) = split(path);
    match rest.as_slice() {
        [r] => Some(Collection { prefix, namespace: None, resource: r.clone() }),
        [n, ns, r] if n == "namespaces" => Some(Collection { prefix, namespace: Some(ns.clone()), resource: r.clone() }),
        _ => None,
    }
}

impl Collection {
    fn holds(&self, path: &str) -> bool {
        let (prefix, rest) = split(path);
        if prefix != self.prefix {
            return false;
        }
        match rest.as_slice() {
            [n, ns, r, _] if n == "namespaces" => *r == self.resource && self.namespace.as_ref().is_none_or(|x| x == ns),
            [r, _] => *r == self.resource && self.namespace.is_none(),
            _ => false,
        }
    }
}

/// `labelSelector` of a request: `k=v` and `k` (exists) terms.
fn label_selector(uri: &str) -> Vec<(String, Option<String>)> {
    let Some(query) = uri.split_once('?').map(|(_, q)| q) else { return Vec::new() };
    let Some(raw) = query.split('&').find_map(|p| p.strip_prefix("labelSelector=")) else { return Vec::new() };
    let decoded = raw.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/").replace("%3d", "=").replace("%2c", ",").replace("%2f", "/");
    decoded
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (t.to_owned(), None),
        })
        .collect()
}

fn matches_label(object: &Value, key: &str, value: Option<&str>) -> bool {
    match (object["metadata"]["labels"].get(key).and_then(Value::as_str), value) {
        (Some(actual), Some(wanted)) => actual == wanted,
        (Some(_), None) => true,
        (None, _) => false,
    }
}
