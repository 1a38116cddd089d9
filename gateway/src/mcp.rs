//! The MCP server handler: `tools/list` and `tools/call` over a dynamic, per-caller catalog. The HTTP
//! layer ([`crate::http`]) authenticates each request and attaches a [`Caller`] to it; this handler finds
//! the caller's session (by `Mcp-Session-Id`, or derived for stateless clients) and runs the call.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use toolwarden_core::policy::Subject;

use crate::elicit::Asking;
use crate::sessions::{Caller, SessionRecord, stateless_session};
use crate::state::Gateway;

#[derive(Clone)]
pub struct McpHandler {
    pub gateway: Arc<Gateway>,
}

fn parts(extensions: &rmcp::model::Extensions) -> Option<&http::request::Parts> {
    extensions.get::<http::request::Parts>()
}

fn caller(extensions: &rmcp::model::Extensions) -> Result<(Caller, Option<String>), McpError> {
    let parts = parts(extensions).ok_or_else(|| McpError::internal_error("request without HTTP context", None))?;
    let caller = parts.extensions.get::<Caller>().cloned().ok_or_else(|| McpError::internal_error("unauthenticated request reached the handler", None))?;
    let session = parts.headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((caller, session))
}

impl McpHandler {
    /// The session of this request, started on first sight for stateless clients.
    async fn session(&self, context: &RequestContext<RoleServer>) -> Result<Arc<SessionRecord>, McpError> {
        let (caller, header) = caller(&context.extensions)?;
        if let Some(id) = header {
            // The gateway registers a session before its `initialize` is answered, and the HTTP layer
            // hands rmcp only ids this caller holds; an id unknown here was ended in the meantime, and
            // must stay ended (a new record would start clean: no taint, no rate-limit history).
            return self.gateway.sessions.get(&id).ok_or_else(|| McpError::invalid_request("Session not found: it has ended", None));
        }
        // With several replicas (the kubernetes runtime) the HTTP edge has already started, continued or
        // forwarded this session (`crate::stateless`): the record is here.
        let new = stateless_session(&caller, &context.meta, context.protocol_version().map(|v| v.to_string()));
        if let Some(record) = self.gateway.sessions.get(&new.id) {
            return Ok(record);
        }
        self.gateway
            .admit_session(&caller.namespace, &caller.principal.subject)
            .map_err(|refused| McpError::new(rmcp::model::ErrorCode(-32000), refused.sentence(), None))?;
        Ok(self.gateway.start_session(new).await)
    }
}

/// Keeps the peer of a session with a stream, so config changes reach it as `tools/list_changed`.
fn remember_peer(session: &SessionRecord, context: &RequestContext<RoleServer>) {
    if session.stateless {
        return;
    }
    let mut peer = session.peer.lock().unwrap_or_else(|e| e.into_inner());
    if peer.is_none() {
        *peer = Some(context.peer.clone());
    }
}

impl ServerHandler for McpHandler {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("toolwarden", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tools served by Toolwarden. Every call is checked against policy; refusals explain why. \
                 Tools needing confirmation answer the first call with a preview and a confirm_token; \
                 tools needing human approval answer with an approval id to wait for.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let session = self.session(&context).await?;
        remember_peer(&session, &context);
        session.touch();
        self.gateway.runtime.touch(&session.id);
        let subject = Subject { name: session.subject.clone(), groups: session.groups.clone() };
        let tools = match self.gateway.engine(&session.namespace) {
            Some(engine) => crate::catalog::list(&engine, &subject),
            None => Vec::new(),
        };
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResponse, McpError> {
        let session = self.session(&context).await?;
        remember_peer(&session, &context);
        let asking = if session.stateless {
            // 2026-07-28: the request's `_meta` says what the client can do.
            match context.meta.client_capabilities() {
                Some(c) if c.elicitation.is_some() => Asking::InputRequired { responses: request.input_responses, state: request.request_state },
                _ => Asking::No,
            }
        } else if crate::elicit::supported(&context.peer) {
            Asking::Elicit(&context.peer)
        } else {
            Asking::No
        };
        let trace = self.gateway.telemetry.as_ref().map(|telemetry| {
            // rmcp moves the request's `_meta` to the context; the request keeps it in older paths.
            let meta = request.meta.as_ref().map(|m| &m.0.0).filter(|m| m.contains_key("traceparent")).unwrap_or(&context.meta.0.0);
            let http = parts(&context.extensions);
            let parent = crate::trace::caller_parent(http.map(|p| &p.headers), Some(meta));
            crate::trace::CallTrace::start(telemetry, parent, http.and_then(|p| p.extensions.get::<crate::trace::Edge>().copied()))
        });
        // rmcp cancels `context.ct` when the client sends `notifications/cancelled` for this request (or, for
        // a 2026-07-28 client, closes it).
        Ok(crate::call::call_tool(&self.gateway, &session, &request.name, request.arguments, asking, &context.ct, trace).await)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // Remember the peer of a session so config changes reach it as `tools/list_changed`.
        let Ok((_, Some(id))) = caller(&context.extensions) else { return };
        if let Some(record) = self.gateway.sessions.get(&id) {
            *record.peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(context.peer.clone());
        }
    }
}
