//! Sessions across gateway replicas, at the edge (docs/sessions-kubernetes.md, "Replicas"). A request
//! with an `Mcp-Session-Id` this replica does not hold goes to the replica that does (its McpSession
//! names it and its address); when that replica cannot be reached, this one takes the session over and
//! rmcp restores it through [`McpSessionStore`], so the client's next request simply continues.
//!
//! Only the kubernetes runtime records where sessions live; with the local runtime every route is
//! [`Route::Unknown`] and nothing here runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rmcp::model::InitializeRequestParams;
use rmcp::transport::streamable_http_server::session::store::{SessionState, SessionStore, SessionStoreError};
use toolwarden_core::resources::McpSessionStatus;

use crate::runtime::SessionHome;
use crate::state::Gateway;

/// Set on a request one replica forwards to another; a replica never forwards such a request again.
pub const FORWARDED_BY: &str = "toolwarden-forwarded-by";

/// How long a forwarding replica waits to connect to the holder before it takes the session over. A
/// live replica on the cluster network accepts in well under this; a dead one's address refuses or
/// never answers.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(750);

/// Most session homes remembered (each costs about a McpSession object); past it the cache starts over.
const MAX_REMEMBERED: usize = 20_000;

/// Where a request for a session this replica does not hold goes.
pub enum Route {
    /// No such session, or not this caller's: rmcp answers 404 as for any unknown id.
    Unknown,
    /// Held by another replica, at this address.
    Forward(String, Box<SessionHome>),
    /// Taken over here (or held here before a restart): rmcp restores it.
    Restore,
    /// Another replica forwarded it here, but this one does not hold it: it is moving; retry.
    Moving,
    /// The API server could not say where it lives.
    Unavailable(String),
}

/// What this replica remembers about other replicas' sessions, and the sessions it is restoring.
#[derive(Default)]
pub struct Failover {
    /// Session id → where it lived when last looked up (saves an API read per forwarded request).
    homes: Mutex<HashMap<String, SessionHome>>,
    /// Session id → what it carried, between its takeover and rmcp's replay of its `initialize`.
    restoring: Mutex<HashMap<String, (SessionHome, McpSessionStatus)>>,
}

impl Failover {
    fn remember(&self, id: &str, home: &SessionHome) {
        let mut homes = self.homes.lock().unwrap_or_else(|e| e.into_inner());
        if homes.len() >= MAX_REMEMBERED {
            homes.clear();
        }
        homes.insert(id.to_owned(), home.clone());
    }

    /// Forgets where a session lived (its holder was unreachable, or answered that it ended it).
    pub fn forget(&self, id: &str) {
        self.homes.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    fn remembered(&self, id: &str) -> Option<SessionHome> {
        self.homes.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// The restore rmcp is about to replay for `id`, if this replica took it over.
    fn restoring(&self, id: &str) -> Option<SessionHome> {
        self.restoring.lock().unwrap_or_else(|e| e.into_inner()).get(id).map(|(home, _)| home.clone())
    }

    /// What the session carried, once: rmcp replays the `initialize` of a restored session.
    pub fn restored(&self, id: &str) -> Option<McpSessionStatus> {
        self.restoring.lock().unwrap_or_else(|e| e.into_inner()).remove(id).map(|(_, status)| status)
    }
}

/// Where the request for session `id` goes, for `subject` in `namespace`. `forwarded`: another replica
/// sent it here.
pub async fn route(gw: &Gateway, namespace: &str, id: &str, subject: &str, forwarded: bool) -> Route {
    let Some(gateway_id) = gw.runtime.gateway_id() else { return Route::Unknown };
    let home = match gw.failover.remembered(id) {
        Some(home) if !home.held_by(gateway_id) => home,
        _ => match gw.runtime.locate_session(namespace, id).await {
            Ok(Some(home)) => home,
            Ok(None) => return Route::Unknown,
            Err(e) => return Route::Unavailable(e.message),
        },
    };
    let namespace_matches = home.session.metadata.namespace.as_deref() == Some(namespace);
    if !namespace_matches || home.subject() != subject || !home.active() {
        return Route::Unknown;
    }
    if !home.held_by(gateway_id) {
        // An address that is this replica's own now belonged to a holder that is gone (pod IPs are reused).
        let elsewhere = home.address.clone().filter(|a| Some(a.as_str()) != gw.runtime.advertise_address());
        match elsewhere {
            Some(address) if !forwarded => {
                gw.failover.remember(id, &home);
                return Route::Forward(address, Box::new(home));
            }
            // Sent here by a replica that read an older holder: a third replica holds it now.
            Some(_) => return Route::Moving,
            None => {}
        }
    }
    take_over(gw, id, home).await
}

/// Claims the session for this replica (unless it holds it already) and readies rmcp's restore. The
/// claim is conditional on the resourceVersion read, which the holder's status writes move on: when it
/// loses, the McpSession is read again and claimed again if the same (lost) replica still holds it, or
/// the request goes to the replica that claimed it first.
pub async fn take_over(gw: &Gateway, id: &str, home: SessionHome) -> Route {
    gw.failover.forget(id);
    let lost = home.holder.clone();
    let mut home = home;
    for _ in 0..CLAIM_ATTEMPTS {
        match gw.runtime.take_over(&home, id).await {
            Ok(status) => {
                gw.failover.restoring.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), (home, status));
                return Route::Restore;
            }
            Err(e) if e.code == "session_moved" => {
                let namespace = home.session.metadata.namespace.clone().unwrap_or_default();
                home = match gw.runtime.locate_session(&namespace, id).await {
                    Ok(Some(fresh)) => fresh,
                    Ok(None) => return Route::Unknown,
                    Err(e) => return Route::Unavailable(e.message),
                };
                let mine = gw.runtime.gateway_id().is_some_and(|g| home.held_by(g));
                if home.holder != lost && !mine {
                    // Another replica took it over first: it holds the session now.
                    return match home.address.clone() {
                        Some(address) => {
                            gw.failover.remember(id, &home);
                            Route::Forward(address, Box::new(home))
                        }
                        None => Route::Moving,
                    };
                }
            }
            Err(e) => return Route::Unavailable(e.message),
        }
    }
    Route::Moving
}

/// Claims tried before a request is told to retry (each after re-reading the McpSession).
const CLAIM_ATTEMPTS: usize = 3;

/// What became of a request for session `id`, which this replica does not hold.
pub enum Reached {
    /// Answered: by the holder it was forwarded to, or with a retry or a `502`.
    Answered(Response),
    /// Taken over here (rmcp restores an `Mcp-Session-Id` session; the edge resumes a stateless one).
    Restore(Request),
    /// No McpSession of this caller's records it: rmcp answers an unknown id; a stateless session starts.
    Unknown(Request),
}

/// Sends `request` of session `id` (for `subject` in `namespace`) where the session lives: to the
/// replica holding it, or takes the session over when that replica is gone. With the local runtime
/// every request is [`Reached::Unknown`].
pub async fn reach(gw: &Gateway, namespace: &str, id: &str, subject: &str, request: Request) -> Reached {
    let Some(gateway_id) = gw.runtime.gateway_id().map(str::to_owned) else { return Reached::Unknown(request) };
    let forwarded = request.headers().contains_key(FORWARDED_BY);
    let mut route = route(gw, namespace, id, subject, forwarded).await;
    if let Route::Forward(address, home) = route {
        match connect(&address, gw.runtime.holder_gone(&address)).await {
            Ok(holder) => {
                gw.metrics.session_forwarded(namespace);
                return Reached::Answered(match holder.forward(&gateway_id, request).await {
                    Ok(response) => {
                        if response.status() == StatusCode::NOT_FOUND {
                            gw.failover.forget(id);
                        }
                        response
                    }
                    Err(ForwardError::Broken(why) | ForwardError::Unreachable(why)) => {
                        gw.failover.forget(id);
                        let message = format!(
                            "the gateway replica holding session {id} stopped while answering ({why}); the request may have run: retry it if that is safe"
                        );
                        crate::rpc_body::rpc_error(StatusCode::BAD_GATEWAY, -32000, message)
                    }
                });
            }
            Err(ForwardError::Unreachable(why) | ForwardError::Broken(why)) => {
                tracing::warn!(session = %id, holder = %home.holder, error = %why, "the replica holding the session is unreachable; taking it over");
                route = take_over(gw, id, *home).await;
            }
        }
    }
    match route {
        Route::Restore => {
            gw.metrics.session_taken_over(namespace);
            Reached::Restore(request)
        }
        Route::Moving | Route::Forward(..) => Reached::Answered(retry_later(format!("session {id} is moving between gateway replicas; retry in a second"))),
        Route::Unavailable(why) => Reached::Answered(retry_later(format!("cannot look up where session {id} lives: {why}"))),
        Route::Unknown => Reached::Unknown(request),
    }
}

/// Why a forward did not produce the holder's answer.
pub enum ForwardError {
    /// No connection: the holder is gone (or not listening). Nothing reached it.
    Unreachable(String),
    /// Connected, but the exchange broke: the holder may have acted on the request.
    Broken(String),
}

/// A connection to the replica holding a session.
pub struct Holder {
    address: String,
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

/// How long a connection to a live replica may take before the edge asks whether its pod is gone.
/// The kernel accepts for a live process, so on the cluster network this is far above the usual time.
const QUICK_CONNECT: Duration = Duration::from_millis(50);

/// Connects to the replica at `address`; an error means nothing reached it. When no connection comes
/// within [`QUICK_CONNECT`], `holder_gone` is asked (the runtime looks up the holder's pod); a deleted
/// holder is not waited for.
pub async fn connect(address: &str, holder_gone: impl Future<Output = bool>) -> Result<Holder, ForwardError> {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address));
    let gone = async {
        tokio::time::sleep(QUICK_CONNECT).await;
        holder_gone.await
    };
    let connected = tokio::select! {
        connected = connect => connected,
        // When the answer is "not known to be gone" this branch is disabled and the connect goes on.
        true = gone => return Err(ForwardError::Unreachable(format!("{address}: its pod is gone"))),
    };
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ForwardError::Unreachable(format!("{address}: {e}"))),
        Err(_) => return Err(ForwardError::Unreachable(format!("{address}: no connection within {CONNECT_TIMEOUT:?}"))),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ForwardError::Unreachable(format!("{address}: {e}")))?;
    // Runs until the answer (an SSE stream, maybe) is done.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Holder { address: address.to_owned(), sender })
}

impl Holder {
    /// Sends `request` (marked as forwarded by `gateway_id`) and streams the holder's answer back.
    pub async fn forward(mut self, gateway_id: &str, mut request: Request) -> Result<Response, ForwardError> {
        if let Ok(value) = HeaderValue::from_str(gateway_id) {
            request.headers_mut().insert(FORWARDED_BY, value);
        }
        match self.sender.send_request(request).await {
            Ok(response) => Ok(response.map(Body::new)),
            Err(e) => Err(ForwardError::Broken(format!("{}: {e}", self.address))),
        }
    }
}

/// Builds what rmcp replays as the restored session's `initialize`, from its McpSession.
fn initialize_params(home: &SessionHome) -> Option<InitializeRequestParams> {
    let spec = &home.session.spec;
    let params = serde_json::json!({
        "protocolVersion": spec.protocol_version.as_deref().unwrap_or("2025-06-18"),
        "capabilities": {},
        "clientInfo": {"name": spec.client.name, "version": spec.client.version.as_deref().unwrap_or("")},
    });
    serde_json::from_value(params).ok()
}

/// rmcp's session store: a session is restorable only while it is parked here (`crate::parking`) or this
/// replica is taking it over (the edge decided so after checking the caller). rmcp itself persists nothing here: the McpSession is the
/// record, written by the kubernetes runtime.
pub struct McpSessionStore {
    pub gateway: Arc<Gateway>,
}

#[async_trait::async_trait]
impl SessionStore for McpSessionStore {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        // A session parked here (`crate::parking`), else one this replica is taking over.
        if let Some(params) = self.gateway.sessions.get(session_id).and_then(|s| s.rmcp.restore_params()) {
            return Ok(Some(SessionState::new(params)));
        }
        Ok(self.gateway.failover.restoring(session_id).as_ref().and_then(initialize_params).map(SessionState::new))
    }

    async fn store(&self, _session_id: &str, _state: &SessionState) -> Result<(), SessionStoreError> {
        Ok(())
    }

    async fn delete(&self, _session_id: &str) -> Result<(), SessionStoreError> {
        Ok(())
    }
}

/// The answer to a request for a session that is moving between replicas, or whose home the API server
/// could not tell: retry shortly.
pub fn retry_later(message: String) -> Response {
    let mut response = crate::rpc_body::rpc_error(StatusCode::SERVICE_UNAVAILABLE, -32000, message);
    response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;
    use futures::future::BoxFuture;
    use serde_json::json;
    use toolwarden_core::resources::{McpSession, McpSessionSpec, SessionPhase};

    use crate::http::{App, mcp_service};
    use crate::runtime::{RuntimeError, WorkerRuntime};

    /// A runtime whose McpSessions say `subject`'s session "lost-1" was held by this gateway's previous
    /// run, tainted by `fetch_page`, after 5 calls.
    struct PreviousRun {
        subject: &'static str,
    }

    fn home(subject: &str) -> SessionHome {
        let spec = McpSessionSpec {
            subject: subject.into(),
            groups: vec![],
            client: toolwarden_core::resources::ClientInfo { name: "agent".into(), version: Some("2".into()) },
            protocol_version: Some("2025-06-18".into()),
            gateway: Some("gw-a".into()),
            started_at: None,
            idle_timeout_seconds: None,
            max_lifetime_seconds: None,
        };
        let mut session = McpSession::new("lost-1", spec);
        session.metadata.namespace = Some("default".into());
        session.status = Some(McpSessionStatus {
            phase: SessionPhase::Active,
            calls: 5,
            tainted: true,
            tainted_by: Some("fetch_page".into()),
            ..Default::default()
        });
        SessionHome { session, holder: "gw-a".into(), address: None }
    }

    impl WorkerRuntime for PreviousRun {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn start_session(&self, _: crate::runtime::SessionInfo) -> BoxFuture<'_, Result<(), RuntimeError>> {
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
            Box::pin(async {})
        }
        fn shutdown(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn gateway_id(&self) -> Option<&str> {
            Some("gw-a")
        }
        fn locate_session<'a>(&'a self, _: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<SessionHome>, RuntimeError>> {
            Box::pin(async move { Ok((id == "lost-1").then(|| home(self.subject))) })
        }
        fn take_over<'a>(&'a self, home: &'a SessionHome, _: &'a str) -> BoxFuture<'a, Result<McpSessionStatus, RuntimeError>> {
            Box::pin(async move { Ok(home.session.status.clone().unwrap_or_default()) })
        }
    }

    fn list(session: &str) -> Request {
        Request::post("/mcp/default")
            .header(header::AUTHORIZATION, format!("Bearer {}", "t".repeat(32)))
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::HOST, "localhost")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18")
            .body(Body::from(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string()))
            .unwrap()
    }

    async fn app(subject: &'static str) -> (Arc<Gateway>, App) {
        let gateway = Gateway::for_tests(Arc::new(PreviousRun { subject })).await;
        gateway.apply_config(toolwarden_core::config::GatewayConfig { namespace: "default".into(), ..Default::default() }).unwrap();
        let (service, _) = mcp_service(&gateway, tokio_util::sync::CancellationToken::new());
        (gateway.clone(), App::new(gateway, service))
    }

    #[tokio::test]
    async fn a_session_recorded_elsewhere_continues_here_with_its_taint() {
        let (gateway, app) = app("s").await;
        let response = crate::http::mcp_entry(app.clone(), "default".into(), list("lost-1")).await;
        assert_eq!(response.status(), StatusCode::OK, "restored without a new initialize");
        let record = gateway.sessions.get("lost-1").expect("the session is held here now");
        assert!(record.tainted(), "its taint came with it");
        assert_eq!(record.client_name, "agent");
        // Once held, it is served like any other.
        assert_eq!(crate::http::mcp_entry(app.clone(), "default".into(), list("lost-1")).await.status(), StatusCode::OK);
        // An id no McpSession records is unknown, as before.
        assert_eq!(crate::http::mcp_entry(app, "default".into(), list("never-was")).await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn another_callers_session_is_not_continued() {
        let (gateway, app) = app("mallory").await;
        let response = crate::http::mcp_entry(app, "default".into(), list("lost-1")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(gateway.sessions.get("lost-1").is_none());
    }
}
