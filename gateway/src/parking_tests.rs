//! Parked sessions ([`crate::parking`]): rmcp lets go of a quiet session and gets it back on its next
//! request, and the client sees the same session throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use futures::future::BoxFuture;
use http_body_util::BodyExt as _;
use rmcp::transport::streamable_http_server::session::SessionId;
use serde_json::{Value, json};

use crate::http::{App, mcp_entry, mcp_service};
use crate::runtime::{RuntimeError, SessionInfo, WorkerRuntime};
use crate::session_manager::GatewaySessionManager;
use crate::state::Gateway;

/// Counts session starts and ends: a parked session is neither ended nor started again.
#[derive(Default)]
struct Counting {
    starts: AtomicUsize,
    ends: AtomicUsize,
}

impl WorkerRuntime for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn start_session(&self, _: SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
    fn call<'a>(
        &'a self,
        _: &'a str,
        _: &'a toolwarden_core::config::ToolConfig,
        _: toolwarden_worker::protocol::CallRequest,
        _: &'a crate::runtime::CancellationToken,
    ) -> BoxFuture<'a, Result<toolwarden_worker::protocol::CallResult, RuntimeError>> {
        Box::pin(async { Err(RuntimeError::new("worker_start_failed", "no workers in this test")) })
    }
    fn start_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn end_session<'a>(&'a self, _: &'a str, _: &'static str) -> BoxFuture<'a, ()> {
        self.ends.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

struct Setup {
    gateway: Arc<Gateway>,
    app: App,
    manager: Arc<GatewaySessionManager>,
    runtime: Arc<Counting>,
}

async fn setup() -> Setup {
    let runtime = Arc::new(Counting::default());
    let gateway = Gateway::for_tests(runtime.clone()).await;
    gateway.apply_config(toolwarden_core::config::GatewayConfig { namespace: "default".into(), ..Default::default() }).unwrap();
    let (service, manager) = mcp_service(&gateway, tokio_util::sync::CancellationToken::new());
    Setup { app: App::new(gateway.clone(), service), gateway, manager, runtime }
}

fn request(method: &str, session: Option<&str>, body: Option<Value>) -> Request {
    let mut builder = Request::builder()
        .method(method)
        .uri("/mcp/default")
        .header(header::AUTHORIZATION, format!("Bearer {}", "t".repeat(32)))
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::HOST, "localhost")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(id) = session {
        builder = builder.header("mcp-session-id", id);
    }
    builder.body(body.map_or(Body::empty(), |b| Body::from(b.to_string()))).unwrap()
}

/// A session opened as a client opens one: `initialize`, then `notifications/initialized`.
async fn open(s: &Setup, capabilities: Value) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": capabilities, "clientInfo": {"name": "agent", "version": "7"}}});
    let response = mcp_entry(s.app.clone(), "default".into(), request("POST", None, Some(init))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers().get("mcp-session-id").expect("a session id").to_str().unwrap().to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = mcp_entry(s.app.clone(), "default".into(), request("POST", Some(&id), Some(initialized))).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // rmcp runs the handler's `on_initialized` after answering 202.
    let record = s.gateway.sessions.get(&id).expect("the gateway holds the session");
    for _ in 0..200 {
        if record.peer.lock().unwrap().is_some() {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("notifications/initialized was not handled within 2 s");
}

async fn list(s: &Setup, id: &str) -> (StatusCode, String) {
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let response = mcp_entry(s.app.clone(), "default".into(), request("POST", Some(id), Some(body))).await;
    let status = response.status();
    (status, String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

async fn rmcp_holds(s: &Setup, id: &str) -> bool {
    s.manager.inner.sessions.read().await.contains_key(&SessionId::from(id.to_owned()))
}

#[tokio::test]
async fn a_quiet_session_is_parked_and_its_next_request_continues_it() {
    let s = setup().await;
    let id = open(&s, json!({})).await;
    let record = s.gateway.sessions.get(&id).unwrap();
    record.taint.lock().unwrap().tainted_by = Some("fetch_page".into());
    let (status, before) = list(&s, &id).await;
    assert_eq!(status, StatusCode::OK, "{before}");

    s.manager.park_idle(&s.gateway, Duration::ZERO).await;
    assert!(record.rmcp.is_parked(), "a quiet session with nothing in rmcp is parked");
    assert!(!rmcp_holds(&s, &id).await, "rmcp let go of it");
    assert!(record.peer.lock().unwrap().is_none(), "and its peer (which kept rmcp's channels) is gone");
    assert!(s.gateway.sessions.get(&id).is_some(), "the gateway still holds the session");

    let (status, after) = list(&s, &id).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after, before, "the same answer as before it was parked");
    assert!(!record.rmcp.is_parked() && rmcp_holds(&s, &id).await, "rmcp holds it again");
    let now = s.gateway.sessions.get(&id).unwrap();
    assert!(Arc::ptr_eq(&now, &record) && now.tainted(), "the same record: its taint went on");
    assert!(record.peer.lock().unwrap().is_some(), "the restore's notifications/initialized set a new peer");
    assert_eq!((s.runtime.starts.load(Ordering::SeqCst), s.runtime.ends.load(Ordering::SeqCst)), (1, 0), "never ended nor started again");

    // Parked again, then ended by the client: it ends for good.
    s.manager.park_idle(&s.gateway, Duration::ZERO).await;
    assert!(record.rmcp.is_parked());
    let response = mcp_entry(s.app.clone(), "default".into(), request("DELETE", Some(&id), None)).await;
    assert!(response.status().is_success(), "{}", response.status());
    assert!(s.gateway.sessions.get(&id).is_none());
    assert_eq!(s.runtime.ends.load(Ordering::SeqCst), 1);
    assert_eq!(list(&s, &id).await.0, StatusCode::NOT_FOUND, "an ended session is not restored");
}

#[tokio::test]
async fn a_session_with_an_open_stream_or_recent_use_is_not_parked() {
    let s = setup().await;
    let listening = open(&s, json!({})).await;
    let quiet = open(&s, json!({})).await;
    let stream = mcp_entry(s.app.clone(), "default".into(), request("GET", Some(&listening), None)).await;
    assert_eq!(stream.status(), StatusCode::OK);

    s.manager.park_idle(&s.gateway, Duration::from_secs(3600)).await;
    assert!(!s.gateway.sessions.get(&quiet).unwrap().rmcp.is_parked(), "used within the hour");

    s.manager.park_idle(&s.gateway, Duration::ZERO).await;
    assert!(!s.gateway.sessions.get(&listening).unwrap().rmcp.is_parked(), "its client listens on GET");
    assert!(rmcp_holds(&s, &listening).await);
    assert!(s.gateway.sessions.get(&quiet).unwrap().rmcp.is_parked());

    drop(stream);
    s.manager.park_idle(&s.gateway, Duration::ZERO).await;
    assert!(s.gateway.sessions.get(&listening).unwrap().rmcp.is_parked(), "parked once the stream closed");
}

#[tokio::test]
async fn a_parked_sessions_client_capabilities_are_kept() {
    let s = setup().await;
    let id = open(&s, json!({"elicitation": {}})).await;
    let record = s.gateway.sessions.get(&id).unwrap();
    s.manager.park_idle(&s.gateway, Duration::ZERO).await;
    assert_eq!(record.rmcp.parked_client_elicits(), Some(true), "what decides whether its calls may ask the user");
    assert_eq!(list(&s, &id).await.0, StatusCode::OK);
    let peer = record.peer.lock().unwrap().clone().expect("restored peer");
    assert!(crate::elicit::supported(&peer), "the restored session's client still elicits");
}
