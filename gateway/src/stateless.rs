//! Stateless (2026-07-28) sessions across gateway replicas (docs/sessions-kubernetes.md, "Replicas").
//! Such a client sends no `Mcp-Session-Id`: its session is derived from each request's `_meta`
//! ([`stateless_session`]), and its McpSession's name from that id, so every replica can find it. Before
//! rmcp sees such a request, the edge sends it where its session lives, as [`crate::failover`] does for
//! an `Mcp-Session-Id`: held here, it goes on; held by another replica, it is forwarded there; its holder
//! gone, it is taken over here with what its McpSession carried (taint, approvals, used confirm tokens,
//! counters); recorded nowhere, it starts here. Two replicas starting it at once cannot both hold it:
//! the McpSession is created once, and the replica whose create failed sends the request to the other.
//!
//! Only the kubernetes runtime records where sessions live; with the local runtime nothing here runs and
//! the MCP handler starts the session on its first request.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rmcp::model::{ClientJsonRpcMessage, GetMeta, ProtocolVersion, RequestMetaObject};

use crate::failover::{Reached, reach, retry_later};
use crate::rpc_body::{Envelope, rpc_error};
use crate::sessions::{Caller, NewSession, stateless_session};
use crate::state::{Gateway, SessionRefused};

/// Starts tried when another replica's create wins each time, before the client is told to retry.
const START_ATTEMPTS: usize = 3;

/// Sends a POST that carries no `Mcp-Session-Id` to where its stateless session lives. `None`: the
/// session is held here now (held before, started, or taken over), and rmcp serves the request;
/// `Some`: the answer (the holder's, a refusal, or a retry).
pub async fn settle(gw: &Gateway, caller: &Caller, parts: &Parts, body: &Bytes, envelope: &Envelope) -> Option<Response> {
    // Only the requests whose handler uses the session (`McpHandler::session`).
    if gw.runtime.gateway_id().is_none() || !(envelope.is_method("tools/call") || envelope.is_method("tools/list")) {
        return None;
    }
    let new = stateless_request(caller, &parts.headers, body)?;
    let subject = caller.principal.subject.as_str();
    for _ in 0..START_ATTEMPTS {
        if gw.sessions.get(&new.id).is_some() {
            return None;
        }
        let request = Request::from_parts(parts.clone(), Body::from(body.clone()));
        match reach(gw, &caller.namespace, &new.id, subject, request).await {
            Reached::Answered(response) => return Some(response),
            Reached::Restore(_) => {
                let carried = gw.failover.restored(&new.id);
                gw.resume_session(new, carried).await;
                return None;
            }
            Reached::Unknown(_) => {
                if let Err(refused) = gw.admit_session(&caller.namespace, subject) {
                    return Some(refused_session(refused));
                }
                match gw.start_unique_session(new.clone()).await {
                    Ok(_) => return None,
                    // Another replica created its McpSession first: the next round finds it there.
                    Err(e) => tracing::info!(session = %new.id, error = %e, "another gateway replica started this stateless session at the same moment"),
                }
            }
        }
    }
    Some(retry_later(format!("session {} is starting on another gateway replica; retry in a second", new.id)))
}

/// The answer to a session start refused by [`Gateway::admit_session`]: `429` for the subject's limit,
/// `503` with `Retry-After` when this replica is full.
pub fn refused_session(refused: SessionRefused) -> Response {
    match refused {
        SessionRefused::SubjectLimit(sentence) => rpc_error(StatusCode::TOO_MANY_REQUESTS, -32000, sentence),
        SessionRefused::GatewayFull(sentence) => retry_later(sentence),
    }
}

/// The session of a request rmcp serves statelessly, from its body; `None` for anything else (an
/// `initialize`, an older client's request, a body rmcp will refuse).
fn stateless_request(caller: &Caller, headers: &HeaderMap, body: &[u8]) -> Option<NewSession> {
    let Ok(ClientJsonRpcMessage::Request(request)) = serde_json::from_slice::<ClientJsonRpcMessage>(body) else { return None };
    let meta = request.request.get_meta();
    let header_version = headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok()).map(str::to_owned);
    served_stateless(meta, header_version.as_deref()).then(|| stateless_session(caller, meta, header_version))
}

/// Whether rmcp serves a request without `Mcp-Session-Id` statelessly rather than asking for a session:
/// its `_meta` carries the 2026-07-28 client context, or its protocol version (from `_meta`, else the
/// `MCP-Protocol-Version` header, else 2025-03-26) has no `initialize` handshake. (rmcp's rule; an
/// `initialize` never gets here: it is no `tools/*` request.)
fn served_stateless(meta: &RequestMetaObject, header_version: Option<&str>) -> bool {
    if meta.missing_required_keys(&ProtocolVersion::V_2026_07_28).is_empty() {
        return true;
    }
    let from_header = || header_version.and_then(|v| serde_json::from_value::<ProtocolVersion>(serde_json::Value::String(v.to_owned())).ok());
    let version = meta.protocol_version().or_else(from_header).unwrap_or(ProtocolVersion::V_2025_03_26);
    !version.has_initialize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caller() -> Caller {
        Caller { namespace: "default".into(), principal: crate::auth::Principal { subject: "alice".into(), groups: vec![], credential_id: "c1".into() } }
    }

    fn headers(version: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(version) = version {
            headers.insert("mcp-protocol-version", version.parse().unwrap());
        }
        headers
    }

    fn call(meta: serde_json::Value) -> Vec<u8> {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": {}, "_meta": meta}}).to_string().into_bytes()
    }

    fn context(client: &str) -> serde_json::Value {
        json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientInfo": {"name": client, "version": "3"},
               "io.modelcontextprotocol/clientCapabilities": {}})
    }

    #[test]
    fn a_stateless_request_names_the_session_the_handler_derives() {
        let new = stateless_request(&caller(), &headers(Some("2026-07-28")), &call(context("claude"))).expect("stateless");
        let meta: RequestMetaObject = serde_json::from_value(context("claude")).unwrap();
        assert_eq!(new.id, stateless_session(&caller(), &meta, None).id, "one derivation for the edge and the handler");
        assert_eq!(new.id, crate::sessions::stateless_session_id(&caller(), None, "claude"));
        assert_eq!((new.client_name.as_str(), new.client_version.as_str(), new.protocol_version.as_deref()), ("claude", "3", Some("2026-07-28")));
        assert!(new.stateless);
        let mut explicit = context("claude");
        explicit["toolwarden.dev/session"] = json!("task-7");
        let named = stateless_request(&caller(), &headers(Some("2026-07-28")), &call(explicit)).unwrap();
        assert_eq!(named.id, crate::sessions::stateless_session_id(&caller(), Some("task-7"), "claude"));
    }

    #[test]
    fn only_requests_rmcp_serves_without_a_session_are_stateless() {
        // The 2026-07-28 context in `_meta`, or a version without `initialize` in the header.
        assert!(stateless_request(&caller(), &headers(None), &call(context("c"))).is_some());
        assert!(stateless_request(&caller(), &headers(Some("2026-07-28")), &call(json!({}))).is_some());
        // An older client without a session id gets rmcp's "session id required", not a session.
        assert!(stateless_request(&caller(), &headers(Some("2025-06-18")), &call(json!({}))).is_none());
        assert!(stateless_request(&caller(), &headers(None), &call(json!({}))).is_none());
        let old = json!({"io.modelcontextprotocol/protocolVersion": "2025-11-25"});
        assert!(stateless_request(&caller(), &headers(Some("2026-07-28")), &call(old)).is_none(), "the body's version wins");
        // Not a request rmcp reads.
        assert!(stateless_request(&caller(), &headers(Some("2026-07-28")), br#"{"jsonrpc":"2.0","method":"notifications/x"}"#).is_none());
        assert!(stateless_request(&caller(), &headers(Some("2026-07-28")), b"{").is_none());
    }
}
