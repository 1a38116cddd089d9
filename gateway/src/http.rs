//! The HTTP edge: `/mcp/{namespace}` (authenticated, then handed to rmcp), the approvals API, the
//! protected resource metadata, `/metrics`, `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde_json::json;

use crate::auth::AuthError;
use crate::rpc_body::{INVALID_REQUEST, PARSE_ERROR, check_body, json_errors, rpc_error};
use crate::mcp::McpHandler;
use crate::session_manager::GatewaySessionManager;
use crate::sessions::Caller;
use crate::state::Gateway;

pub type McpService = StreamableHttpService<McpHandler, GatewaySessionManager>;

/// The routes' state, cloned for every request: `Arc`s only (rmcp's service holds its whole config).
#[derive(Clone)]
pub struct App {
    pub gateway: Arc<Gateway>,
    pub mcp: Arc<McpService>,
    /// `settings.allowed_hosts`, parsed for [`crate::direct_call`].
    pub allowed_hosts: Arc<crate::direct_call::AllowedHosts>,
}

impl App {
    pub fn new(gateway: Arc<Gateway>, mcp: McpService) -> App {
        let allowed_hosts = Arc::new(crate::direct_call::AllowedHosts::new(&gateway.settings.allowed_hosts));
        App { gateway, mcp: Arc::new(mcp), allowed_hosts }
    }
}

/// Builds the rmcp service with the gateway's session manager and limits.
pub fn mcp_service(gateway: &Arc<Gateway>, cancel: tokio_util::sync::CancellationToken) -> (McpService, Arc<GatewaySessionManager>) {
    let mut local = LocalSessionManager::default();
    // The gateway's reaper ends idle and old sessions (its idle clock also sees the `tools/call`s that
    // [`crate::direct_call`] answers without rmcp). rmcp's own timer only catches a session the gateway
    // never registered.
    local.session_config.keep_alive = Some(gateway.settings.max_session_lifetime.saturating_add(gateway.settings.idle_timeout));
    local.session_config.completed_cache_ttl = crate::parking::COMPLETED_STREAM_TTL;
    let manager = Arc::new(GatewaySessionManager::new(local));
    manager.bind(gateway);
    let mut config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(gateway.settings.max_body_bytes)
        .with_cancellation_token(cancel);
    config = if gateway.settings.allowed_hosts.is_empty() {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(gateway.settings.allowed_hosts.clone())
    };
    // Sessions another replica held are restored through this store (see `crate::failover`).
    config.session_store = Some(Arc::new(crate::failover::McpSessionStore { gateway: gateway.clone() }));
    let handler = McpHandler { gateway: gateway.clone() };
    let service = StreamableHttpService::new(move || Ok(handler.clone()), manager.clone(), config);
    (service, manager)
}

/// What a listener serves: requests to `/mcp/{namespace}` go straight to [`mcp_entry`] when there is an
/// MCP endpoint, everything else through the router.
///
/// Agents' requests are nearly all of the traffic, so they skip the router's matching, extractors and
/// boxed handler (docs/gateway.md, "Benchmark"). A path whose namespace is not a plain DNS label
/// (percent-escapes, capitals) still goes through the router's own `/mcp/{namespace}` route, so every
/// path gets the same answer either way.
#[derive(Clone)]
pub struct Front {
    mcp: Option<App>,
    router: TowerToHyperService<axum::Router>,
}

impl Front {
    /// The main listener: MCP, approvals, resource metadata and (when `with_metrics`) `/metrics`.
    pub fn main(app: App, with_metrics: bool) -> Front {
        Front { mcp: Some(app.clone()), router: TowerToHyperService::new(router(app, with_metrics)) }
    }

    /// A listener of `router` alone (the separate metrics listener).
    pub fn routes(router: axum::Router) -> Front {
        Front { mcp: None, router: TowerToHyperService::new(router) }
    }
}

impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        match self.mcp.as_ref().zip(mcp_namespace(request.uri().path())) {
            Some((app, namespace)) => {
                let (app, namespace) = (app.clone(), namespace.to_owned());
                Box::pin(async move { Ok(mcp_entry(app, namespace, request.map(Body::new)).await) })
            }
            None => Box::pin(self.router.call(request)),
        }
    }
}

/// The namespace of an `/mcp/{namespace}` path when it is a DNS label as Kubernetes names namespaces
/// (lowercase letters, digits, `-`), which needs no decoding.
fn mcp_namespace(path: &str) -> Option<&str> {
    let namespace = path.strip_prefix("/mcp/")?;
    let label = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    (!namespace.is_empty() && namespace.len() <= 63 && namespace.bytes().all(label)).then_some(namespace)
}

/// The main listener's routes. `/metrics` is left out when a separate metrics listener serves it, so
/// the port agents reach does not publish tool names, subjects' traffic and denial counts.
pub fn router(app: App, with_metrics: bool) -> axum::Router {
    axum::Router::new()
        .route("/mcp/{namespace}", any(mcp_route))
        .route("/.well-known/oauth-protected-resource", get(resource_metadata_root))
        .route("/.well-known/oauth-protected-resource/mcp/{namespace}", get(resource_metadata))
        .route("/approvals", get(crate::approvals_api::list))
        .route("/approvals/{id}/approve", post(crate::approvals_api::approve))
        .route("/approvals/{id}/deny", post(crate::approvals_api::deny))
        .merge(ops_router(app.gateway.clone(), with_metrics))
        .with_state(app)
}

/// `/metrics` (when `with_metrics`), `/healthz`, `/readyz`: also served alone on `--metrics-listen`.
pub fn ops_router<S: Clone + Send + Sync + 'static>(gateway: Arc<Gateway>, with_metrics: bool) -> axum::Router<S> {
    let metrics_gw = gateway.clone();
    let ready_gw = gateway;
    let router = axum::Router::new();
    let router = if !with_metrics {
        router
    } else {
        router.route(
            "/metrics",
            get(move || {
                let gw = metrics_gw.clone();
                async move {
                    gw.refresh_approval_metrics();
                    let body = crate::metrics::render(&gw.registry);
                    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                }
            }),
        )
    };
    router
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let gw = ready_gw.clone();
                async move {
                    if gw.is_ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "config not loaded yet\n")
                    }
                }
            }),
        )
}

/// `http(s)://host` of this request, as the client addressed it.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).filter(|s| *s == "https").unwrap_or("http");
    format!("{scheme}://{host}")
}

/// 401 with `WWW-Authenticate` pointing at the resource metadata; nothing else is revealed.
pub fn unauthorized(gateway: &Gateway, headers: &HeaderMap, namespace: Option<&str>, error: AuthError) -> Response {
    if let AuthError::Invalid(reason) = &error {
        tracing::info!(reason = %reason, "refused a bearer token");
    }
    let suffix = namespace.map(|ns| format!("/mcp/{ns}")).unwrap_or_default();
    let metadata = format!("{}/.well-known/oauth-protected-resource{suffix}", base_url(headers));
    let challenge = gateway.auth.www_authenticate(&metadata);
    let mut response = (StatusCode::UNAUTHORIZED, Json(json!({"error": {"code": "unauthorized", "message": "a valid bearer token is required"}}))).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

async fn mcp_route(State(app): State<App>, Path(namespace): Path<String>, request: Request) -> Response {
    mcp_entry(app, namespace, request).await
}

/// 403 for a request whose `Origin` the gateway does not accept (see [`crate::origin`]), before anything
/// else is looked at; `None` lets the request on.
pub fn refuse_origin(gateway: &Gateway, headers: &HeaderMap) -> Option<crate::origin::Refused> {
    let origin = headers.get(header::ORIGIN);
    let refused = gateway.settings.allowed_origins.check(origin).err()?;
    tracing::warn!(origin = ?origin, why = ?refused, "refused a request from a browser origin that is not allowed");
    gateway.metrics.http_refused("origin");
    Some(refused)
}

pub(crate) async fn mcp_entry(app: App, namespace: String, mut request: Request) -> Response {
    let gateway = &app.gateway;
    // Measured only while tracing: the `authenticate` span of a `tools/call` in this request.
    let received = gateway.telemetry.as_ref().map(|_| std::time::SystemTime::now());
    if refuse_origin(gateway, request.headers()).is_some() {
        return rpc_error(StatusCode::FORBIDDEN, INVALID_REQUEST, crate::origin::REFUSAL.into());
    }
    let principal = match gateway.auth.authenticate(request.headers()).await {
        Ok(p) => p,
        Err(e) => return unauthorized(gateway, request.headers(), Some(&namespace), e),
    };
    let edge = received.map(|received| crate::trace::Edge { received, authenticated: std::time::SystemTime::now() });
    if gateway.engine(&namespace).is_none() {
        return rpc_error(StatusCode::NOT_FOUND, INVALID_REQUEST, format!("no tools are served at /mcp/{namespace}"));
    }
    let session_id = request.headers().get("mcp-session-id").and_then(|v| v.to_str().ok());
    let without_session = session_id.is_none();
    let mut session = session_id.and_then(|id| gateway.sessions.get(id));
    if let Some(record) = &session
        && (record.subject != principal.subject || record.namespace != namespace)
    {
        tracing::warn!(session = %record.id, subject = %principal.subject, "refused a session id that belongs to another caller");
        session = None;
    }
    // A session this replica does not hold may live on another one, or need taking over here.
    let mut restoring = false;
    if session.is_none()
        && let Some(id) = session_id.map(str::to_owned)
    {
        request = match crate::failover::reach(gateway, &namespace, &id, &principal.subject, request).await {
            crate::failover::Reached::Answered(response) => return response,
            crate::failover::Reached::Restore(request) => {
                restoring = true;
                request
            }
            crate::failover::Reached::Unknown(request) => request,
        };
    }
    if session.is_none() && !restoring && request.headers().contains_key("mcp-session-id") {
        // An id this caller does not hold: another caller's (or another namespace's), or one the gateway
        // ended (rmcp may still hold it for a moment; its requests must not bring it back). rmcp answers it
        // as an unknown id, so status, headers and body are exactly those of any unknown id.
        let unknown = format!("unknown-{}", crate::approvals::random_hex(16));
        let unknown = HeaderValue::try_from(unknown).unwrap_or(HeaderValue::from_static("unknown-session"));
        request.headers_mut().insert("mcp-session-id", unknown);
    }
    if request.method() == axum::http::Method::DELETE && !without_session && session.is_none() && !restoring {
        // rmcp answers `202` to any DELETE, as if it had ended the session; an id this caller does not
        // hold is unknown to it, so it gets the `404` an unknown session gets on every other method.
        return rpc_error(StatusCode::NOT_FOUND, INVALID_REQUEST, "Not Found: Session not found".into());
    }
    let post = request.method() == axum::http::Method::POST;
    let json_ok = crate::json_reply::accepts_json(request.headers().get(header::ACCEPT));
    let mut posted = None;
    let mut request = if post {
        let (parts, body) = request.into_parts();
        let limit = gateway.settings.max_body_bytes;
        let body = match axum::body::to_bytes(body, limit).await {
            Ok(body) => body,
            Err(e) if is_length_limit(&e) => {
                return rpc_error(StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST, format!("Invalid Request: the body is larger than {limit} bytes"));
            }
            Err(e) => return rpc_error(StatusCode::BAD_REQUEST, PARSE_ERROR, format!("Parse error: the body could not be read: {e}")),
        };
        // A body that parses as a plain `tools/call` is a well-formed JSON-RPC request: no other check.
        if let Some(session) = &session
            && crate::direct_call::plain_headers(&parts.headers, &app.allowed_hosts)
            && let Some(response) = crate::direct_call::answer(gateway, session, &body, &parts.headers, edge).await
        {
            return response;
        }
        let message = match check_body(&body) {
            Ok(message) => message,
            Err((status, code, message)) => return rpc_error(status, code, message),
        };
        if message.is_method("notifications/cancelled")
            && let Some(session) = &session
        {
            crate::direct_call::cancel(session, &body);
        }
        let initialize = message.is_method("initialize");
        if initialize
            && without_session
            && let Err(refused) = gateway.admit_session(&namespace, &principal.subject)
        {
            return crate::stateless::refused_session(refused);
        }
        if without_session && gateway.runtime.gateway_id().is_some() {
            // A stateless client's session may live on another replica (see `crate::stateless`).
            let caller = Caller { namespace: namespace.clone(), principal: principal.clone() };
            if let Some(response) = crate::stateless::settle(gateway, &caller, &parts, &body, &message).await {
                return response;
            }
        }
        posted = Some((body.clone(), message.shape));
        Request::from_parts(parts, Body::from(body))
    } else {
        request
    };
    request.extensions_mut().insert(Caller { namespace, principal });
    if let Some(edge) = edge {
        request.extensions_mut().insert(edge);
    }
    // While the request is in rmcp its session is not parked; a parked one rmcp restores first.
    let in_rmcp = match &session {
        Some(record) => match record.rmcp.enter().await {
            Some(hold) => Some(hold),
            None => return crate::failover::retry_later(format!("session {} is being parked; retry in a second", record.id)),
        },
        None => None,
    };
    // Boxed: rmcp's future is large, and keeping it out of this one makes every request's future cheaper
    // to set up, the direct `tools/call`s included.
    let response = Box::pin(app.mcp.handle(request)).await;
    if !response.status().is_success() {
        return Box::pin(json_errors(response, posted.as_ref().map(|(body, shape)| (body, *shape)))).await;
    }
    let response = if post && json_ok { Box::pin(crate::json_reply::prefer_json(response)).await } else { response.map(Body::new) };
    drop(in_rmcp);
    response
}

/// Whether reading a body failed because it is longer than the limit (not because the client left).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

async fn resource_metadata_root(State(app): State<App>, headers: HeaderMap) -> Response {
    Json(app.gateway.auth.protected_resource_metadata(&base_url(&headers))).into_response()
}

async fn resource_metadata(State(app): State<App>, Path(namespace): Path<String>, headers: HeaderMap) -> Response {
    let resource = format!("{}/mcp/{namespace}", base_url(&headers));
    Json(app.gateway.auth.protected_resource_metadata(&resource)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: serde_json::Value, session: Option<&str>) -> Request {
        let mut request = Request::post("/mcp/default")
            .header(header::AUTHORIZATION, format!("Bearer {}", "t".repeat(32)))
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::HOST, "localhost");
        if let Some(id) = session {
            request = request.header("mcp-session-id", id).header("mcp-protocol-version", "2025-06-18");
        }
        request.body(Body::from(body.to_string())).unwrap()
    }

    #[tokio::test]
    async fn a_session_the_gateway_ended_stays_ended_while_rmcp_still_holds_it() {
        let gateway = Gateway::for_tests(Arc::new(crate::runtime::NoWorkers)).await;
        gateway.apply_config(toolwarden_core::config::GatewayConfig { namespace: "default".into(), ..Default::default() }).unwrap();
        let (service, manager) = mcp_service(&gateway, tokio_util::sync::CancellationToken::new());
        let app = App::new(gateway.clone(), service);
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let response = mcp_entry(app.clone(), "default".into(), post(init, None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let id = response.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(mcp_entry(app.clone(), "default".into(), post(initialized, Some(&id))).await.status(), StatusCode::ACCEPTED);
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        assert_eq!(mcp_entry(app.clone(), "default".into(), post(list.clone(), Some(&id))).await.status(), StatusCode::OK);

        // The gateway ends it (idle, or its McpSession was deleted); rmcp is told a moment later.
        gateway.end_session(&id, "idle").await;
        use rmcp::transport::streamable_http_server::session::SessionManager as _;
        assert!(manager.inner.has_session(&id.clone().into()).await.unwrap(), "rmcp still holds it");
        let response = mcp_entry(app.clone(), "default".into(), post(list, Some(&id))).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(gateway.sessions.get(&id).is_none(), "the ended session was not brought back (clean of its taint)");
    }

    #[test]
    fn only_plain_namespace_labels_skip_the_router() {
        for (path, namespace) in [("/mcp/default", "default"), ("/mcp/team-a1", "team-a1"), ("/mcp/0", "0")] {
            assert_eq!(mcp_namespace(path), Some(namespace), "{path}");
        }
        let long = format!("/mcp/{}", "a".repeat(64));
        // These go to the router, whose `/mcp/{namespace}` route decodes or refuses them.
        for path in ["/mcp/", "/mcp", "/mcp/default/", "/mcp/a/b", "/mcp/Default", "/mcp/%64efault", "/mcp/a.b", "/approvals", &long] {
            assert_eq!(mcp_namespace(path), None, "{path}");
        }
    }
}
