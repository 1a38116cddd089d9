//! `tools/call` inside an MCP session, answered by the gateway itself instead of through rmcp's session
//! routing.
//!
//! rmcp hands each POSTed request of a session to the session's worker task, then to its service loop,
//! then to a handler task, and sends the reply back the same way as an SSE stream, which
//! [`crate::json_reply`] turns into JSON again. For `tools/call`, the request agents send most, those
//! hops cost more CPU than the gateway's own checks (see docs/gateway.md, "Benchmark"). The gateway
//! therefore runs a plain `tools/call` through the same pipeline ([`crate::call::call_tool`]) directly
//! and writes the JSON-RPC reply rmcp would have written.
//!
//! Only a request that rmcp would accept as it is takes this path. Anything else goes to rmcp unchanged,
//! so rmcp still produces every protocol error and serves every feature the direct path leaves out:
//! - a Host rmcp would refuse, an `Origin` header, an `Accept` without both JSON and SSE, another
//!   content type, an unknown or 2026-07-28 `MCP-Protocol-Version`, SEP-2243 `Mcp-*` headers;
//! - a body that is not a well-formed `tools/call` request, or that carries `_meta` other than a
//!   progress token and W3C trace context, or 2026-07-28 input responses;
//! - a session the gateway does not know (yet), a stateless one, or one whose client has not finished
//!   initializing;
//! - a call that may ask the user through elicitation (the client supports it and a policy of the
//!   namespace allows self-approval): the question must travel on the reply's SSE stream, which rmcp
//!   owns.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::FutureExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use rmcp::model::{CallToolRequestParams, RequestId, ServerJsonRpcMessage, ServerResult};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::elicit::Asking;
use crate::sessions::SessionRecord;
use crate::state::Gateway;

/// Protocol versions with sessions (before 2026-07-28). No header means 2025-03-26 to rmcp.
const SESSION_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The body of a `tools/call` request; other keys are ignored, as rmcp ignores them.
#[derive(Deserialize)]
struct ToolsCall<'a> {
    #[serde(borrow)]
    jsonrpc: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    id: RequestId,
    params: CallToolRequestParams,
}

/// Whether the headers are ones rmcp accepts for a request inside a session, with nothing that needs
/// rmcp's own checks. `false` never refuses anything: the request just goes to rmcp.
pub fn plain_headers(headers: &HeaderMap, allowed_hosts: &AllowedHosts) -> bool {
    let accept = only_value(headers, header::ACCEPT).unwrap_or("");
    let content_type = only_value(headers, header::CONTENT_TYPE).unwrap_or("");
    let version_ok = match headers.get("mcp-protocol-version") {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| SESSION_VERSIONS.contains(&v)),
    };
    let other_mcp_headers = headers
        .keys()
        .any(|k| k.as_str().starts_with("mcp-") && k != "mcp-session-id" && k != "mcp-protocol-version");
    accepts_json_and_sse(accept)
        && media_type(content_type).eq_ignore_ascii_case("application/json")
        && version_ok
        && !other_mcp_headers
        && !headers.contains_key(header::ORIGIN)
        && allowed_hosts.allow(headers.get(header::HOST))
}

/// The header's value when it is sent once (repeated ones are left to rmcp).
fn only_value(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then(|| first.to_str().ok()).flatten()
}

fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

/// Both types named, and no quality values (a `q=0` would mean "not acceptable"; rmcp decides those).
fn accepts_json_and_sse(accept: &str) -> bool {
    let types = || accept.split(',').map(media_type);
    !accept.contains("q=") && types().any(|t| t.eq_ignore_ascii_case("application/json")) && types().any(|t| t.eq_ignore_ascii_case("text/event-stream"))
}

/// rmcp's DNS-rebinding check, parsed once: the Host must match an allowed entry (an entry without a
/// port matches any port); an empty list allows every host.
#[derive(Debug, Default)]
pub struct AllowedHosts {
    /// No list was configured.
    any: bool,
    entries: Vec<(String, Option<u16>)>,
}

impl AllowedHosts {
    pub fn new(entries: &[String]) -> AllowedHosts {
        let parsed = entries
            .iter()
            .filter_map(|entry| {
                let (host, port) = split_authority(entry.trim()).unwrap_or((entry.trim(), None));
                (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
            })
            .collect();
        AllowedHosts { any: entries.is_empty(), entries: parsed }
    }

    /// Whether rmcp would accept this Host; `false` also for Host values this check does not parse.
    fn allow(&self, host: Option<&HeaderValue>) -> bool {
        if self.any {
            return true;
        }
        let Some((name, port)) = host.and_then(|h| h.to_str().ok()).and_then(split_authority) else {
            return false;
        };
        self.entries.iter().any(|(allowed, p)| allowed.eq_ignore_ascii_case(name) && p.is_none_or(|p| port == Some(p)))
    }
}

/// `name`, `name:port`, `[v6]` or `[v6]:port`, without allocating; `None` for anything else.
fn split_authority(value: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = match value.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            (host, rest)
        }
        None => match value.split_once(':') {
            Some((host, port)) => (host, value.get(host.len()..).unwrap_or(port)),
            None => (value, ""),
        },
    };
    let port = match rest.strip_prefix(':') {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits.parse().ok()?),
        Some(_) => return None,
        None if rest.is_empty() => None,
        None => return None,
    };
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"-._:".contains(&b);
    (!host.is_empty() && host.bytes().all(valid)).then_some((host, port))
}

/// `_meta` keys of a `tools/call` the direct path serves: rmcp does nothing with them either.
const DIRECT_META_KEYS: [&str; 3] = ["progressToken", "traceparent", "tracestate"];

/// The parsed call, when the body is a plain `tools/call` request the direct path may serve.
fn plain_call(body: &[u8]) -> Option<ToolsCall<'_>> {
    let call: ToolsCall = serde_json::from_slice(body).ok()?;
    if call.jsonrpc != "2.0" || call.method != "tools/call" {
        return None;
    }
    let meta_ok = call.params.meta.as_ref().is_none_or(|m| m.0.0.keys().all(|k| DIRECT_META_KEYS.contains(&k.as_str())));
    (meta_ok && call.params.input_responses.is_none() && call.params.request_state.is_none()).then_some(call)
}

/// Whether this session's calls can be answered here: it has a session id, its client has initialized,
/// and its calls never ask the user through elicitation.
fn serves_directly(gateway: &Gateway, session: &SessionRecord) -> bool {
    if session.stateless {
        return false;
    }
    let may_elicit = {
        let peer = session.peer.lock().unwrap_or_else(|e| e.into_inner());
        match (peer.as_ref(), session.rmcp.parked_client_elicits()) {
            (Some(peer), _) => crate::elicit::supported(peer),
            // Parked: rmcp's peer is gone, the client's capabilities are kept.
            (None, Some(elicits)) => elicits,
            (None, None) => return false,
        }
    };
    !(may_elicit && gateway.engine(&session.namespace).is_some_and(|e| crate::elicit::policies_allow_asking(&e)))
}

/// Answers a plain `tools/call` of `session` (one the gateway knows), or returns `None` to let rmcp handle
/// the request. The caller has authenticated the request and checked that the session belongs to it.
///
/// `edge` is when the request arrived and was authenticated (measured while tracing).
pub async fn answer(
    gateway: &Arc<Gateway>,
    session: &Arc<SessionRecord>,
    body: &Bytes,
    headers: &HeaderMap,
    edge: Option<crate::trace::Edge>,
) -> Option<Response> {
    let call = plain_call(body)?;
    if !serves_directly(gateway, session) {
        return None;
    }
    let (gw, session) = (gateway.clone(), session.clone());
    let ToolsCall { id, params, .. } = call;
    let trace = gw.telemetry.as_ref().map(|telemetry| {
        let parent = crate::trace::caller_parent(Some(headers), params.meta.as_ref().map(|m| &m.0.0));
        crate::trace::CallTrace::start(telemetry, parent, edge)
    });
    let request_id = id.clone();
    let run = async move {
        // Registered for as long as the call runs, in this task or (after a hang-up) its own.
        let running = session.direct_calls.start(request_id);
        let response = crate::call::call_tool(&gw, &session, &params.name, params.arguments, Asking::No, &running.cancel, trace).await;
        (response, running.cancel.is_cancelled())
    };
    let reply = match RunToEnd::new(run).await {
        // The client cancelled it: no response, as the specification asks (and as rmcp does, whose
        // stream for a cancelled request ends without one). An empty event stream says just that.
        Ok((_, true)) => {
            let empty = Response::builder().status(StatusCode::OK).header(header::CONTENT_TYPE, "text/event-stream").body(Body::empty());
            return Some(empty.unwrap_or_else(|_| Response::new(Body::empty())));
        }
        Ok((response, false)) => {
            let mut result = ServerResult::from(response);
            // Sessions are legacy protocol versions, which have no `resultType`.
            result.strip_result_type_for_legacy_peer();
            serde_json::to_vec(&ServerJsonRpcMessage::response(result, id))
        }
        Err(()) => {
            tracing::error!("a tools/call panicked inside the gateway");
            let error = rmcp::ErrorData::internal_error("the call failed inside the gateway", None);
            serde_json::to_vec(&ServerJsonRpcMessage::error(error, Some(id)))
        }
    };
    let response = match reply {
        Ok(json) => Response::builder().status(StatusCode::OK).header(header::CONTENT_TYPE, "application/json").body(Body::from(json)),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a tools/call reply");
            Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).body(Body::empty())
        }
    };
    Some(response.unwrap_or_else(|_| Response::new(Body::empty())))
}

/// The `tools/call`s of a session answered here and still running, so that the client's
/// `notifications/cancelled` reaches them: rmcp cancels only the requests it routed itself.
#[derive(Default)]
pub struct InFlight(Mutex<Vec<(RequestId, CancellationToken)>>);

/// A call's entry in [`InFlight`], removed when the call ends however it ends.
pub struct Running<'a> {
    calls: &'a InFlight,
    id: RequestId,
    pub cancel: CancellationToken,
}

impl InFlight {
    pub fn start(&self, id: RequestId) -> Running<'_> {
        let cancel = CancellationToken::new();
        self.lock().push((id.clone(), cancel.clone()));
        Running { calls: self, id, cancel }
    }

    /// Cancels the running calls with this id (one, unless the client reused an id); whether any ran.
    pub fn cancel(&self, id: &RequestId) -> bool {
        let calls = self.lock();
        let mut found = false;
        for (_, cancel) in calls.iter().filter(|(running, _)| running == id) {
            cancel.cancel();
            found = true;
        }
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(RequestId, CancellationToken)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut calls = self.calls.lock();
        if let Some(at) = calls.iter().position(|(id, _)| *id == self.id) {
            calls.swap_remove(at);
        }
    }
}

/// `notifications/cancelled` from the client of `session`: cancels the call it names if this module
/// runs it. The notification goes on to rmcp either way, for the calls rmcp runs.
pub fn cancel(session: &SessionRecord, body: &[u8]) {
    #[derive(Deserialize)]
    struct Cancelled {
        params: rmcp::model::CancelledNotificationParam,
    }
    let Ok(Cancelled { params: rmcp::model::CancelledNotificationParam { request_id: Some(id), .. } }) = serde_json::from_slice(body) else {
        return;
    };
    if session.direct_calls.cancel(&id) {
        tracing::info!(session = %session.id, request = %id, "the client cancelled a call");
    }
}

/// Runs a call in the request's own task (no task of its own to schedule), and still to its end, as
/// rmcp runs handlers: if the client hangs up and the request is dropped, the rest of the call (its
/// worker call, its result audit line) goes on as a task. A panic is caught and becomes `Err`.
struct RunToEnd<T: Send + 'static>(Option<Pin<Box<dyn Future<Output = std::thread::Result<T>> + Send>>>);

impl<T: Send + 'static> RunToEnd<T> {
    /// Boxes `call` before wrapping it: a call's future is kilobytes, and each wrapper would copy it.
    fn new(call: impl Future<Output = T> + Send + 'static) -> Self {
        let call: Pin<Box<dyn Future<Output = T> + Send>> = Box::pin(call);
        RunToEnd(Some(Box::pin(std::panic::AssertUnwindSafe(call).catch_unwind())))
    }
}

impl<T: Send + 'static> Future for RunToEnd<T> {
    type Output = Result<T, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(call) = self.0.as_mut() else { return Poll::Ready(Err(())) };
        let done = std::task::ready!(call.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(done.map_err(|_| ()))
    }
}

impl<T: Send + 'static> Drop for RunToEnd<T> {
    fn drop(&mut self) {
        if let Some(call) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(call);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    const PLAIN: [(&str, &str); 4] = [
        ("host", "127.0.0.1:8080"),
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("mcp-session-id", "s1"),
    ];

    fn with(extra: (&'static str, &str)) -> HeaderMap {
        let mut pairs = PLAIN.to_vec();
        pairs.push(extra);
        headers(&pairs)
    }

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn a_dropped_call_still_runs_to_its_end_and_a_panic_is_an_error() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let mut run = RunToEnd::new(async move {
            let _ = go_rx.await;
            let _ = done_tx.send("finished");
        });
        // Polled once (the call starts), then dropped, as when a client hangs up mid-call.
        assert!(futures::poll!(&mut run).is_pending());
        drop(run);
        go_tx.send(()).unwrap();
        assert_eq!(tokio::time::timeout(std::time::Duration::from_secs(5), done_rx).await.unwrap(), Ok("finished"));

        assert_eq!(RunToEnd::new(async { 7 }).await, Ok(7));
        assert_eq!(RunToEnd::new(async { panic!("boom") }).await, Err::<(), ()>(()));
    }

    #[test]
    fn a_cancellation_reaches_the_running_call_with_its_id_only_while_it_runs() {
        let calls = InFlight::default();
        let seven = calls.start(RequestId::Number(7));
        let named = calls.start(RequestId::String("seven".into()));
        assert!(!calls.cancel(&RequestId::Number(8)), "no such call");
        assert!(calls.cancel(&RequestId::Number(7)));
        assert!(seven.cancel.is_cancelled() && !named.cancel.is_cancelled());
        drop(seven);
        assert!(!calls.cancel(&RequestId::Number(7)), "a finished call is forgotten");
        assert!(calls.cancel(&RequestId::String("seven".into())));
        drop(named);
        assert!(calls.lock().is_empty());
    }

    #[test]
    fn plain_session_requests_qualify() {
        let local = hosts(&["localhost", "127.0.0.1"]);
        assert!(plain_headers(&headers(&PLAIN), &local));
        assert!(plain_headers(&with(("mcp-protocol-version", "2025-06-18")), &local));
        assert!(plain_headers(&headers(&PLAIN), &hosts(&[])), "an empty list allows every host");
        assert!(plain_headers(&headers(&PLAIN), &hosts(&["127.0.0.1:8080"])));
    }

    #[test]
    fn hosts_match_as_rmcp_matches_them() {
        let allowed = hosts(&["LocalHost", "::1", "gw.example:443", " "]);
        let host = |h: &str| Some(HeaderValue::from_str(h).unwrap());
        for ok in ["localhost", "LOCALHOST:8080", "[::1]:8080", "[::1]", "gw.example:443"] {
            assert!(allowed.allow(host(ok).as_ref()), "{ok}");
        }
        for refused in ["gw.example", "gw.example:80", "evil.example", "localhost.evil", "::1", "localhost:", "localhost:x", "a b", ""] {
            assert!(!allowed.allow(host(refused).as_ref()), "{refused}");
        }
        assert!(!allowed.allow(None), "no Host");
        assert!(!hosts(&[" "]).allow(host("localhost").as_ref()), "a list of blanks allows nothing, as in rmcp");
    }

    #[test]
    fn anything_rmcp_checks_goes_to_rmcp() {
        let local = hosts(&["localhost"]);
        assert!(!plain_headers(&headers(&PLAIN), &local), "a Host outside the list");
        assert!(!plain_headers(&headers(&PLAIN), &hosts(&["127.0.0.1:9999"])), "another port");
        let mut no_host = headers(&PLAIN);
        no_host.remove("host");
        assert!(!plain_headers(&no_host, &hosts(&["127.0.0.1"])));
        for extra in [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-protocol-version", "1999-01-01"),
            ("mcp-method", "tools/call"),
            ("origin", "http://evil.example"),
        ] {
            assert!(!plain_headers(&with(extra), &hosts(&[])), "{extra:?}");
        }
        let mut pairs = PLAIN.to_vec();
        pairs[1] = ("accept", "application/json");
        assert!(!plain_headers(&headers(&pairs), &hosts(&[])), "no SSE in Accept");
        pairs[1] = ("accept", "application/json, text/event-stream;q=0");
        assert!(!plain_headers(&headers(&pairs), &hosts(&[])), "quality values");
        pairs[1] = PLAIN[1];
        pairs.push(("accept", "text/html"));
        assert!(!plain_headers(&headers(&pairs), &hosts(&[])), "a repeated Accept");
        pairs.pop();
        pairs[2] = ("content-type", "text/plain");
        assert!(!plain_headers(&headers(&pairs), &hosts(&[])), "another content type");
    }

    #[test]
    fn only_plain_tools_calls_are_parsed_for_the_direct_path() {
        let call = plain_call(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{"a":1}}}"#).unwrap();
        assert_eq!(call.id, RequestId::Number(7));
        assert_eq!(call.params.name, "t");
        assert!(plain_call(br#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"t","_meta":{"progressToken":1}}}"#).is_some());
        assert!(plain_call(br#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"t","_meta":{"traceparent":"00-x","tracestate":"a=b"}}}"#).is_some());
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"t"}}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"t"}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"t"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}} trailing"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/call","params":{"name":"t"}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"traceparent":"00-x","example.com/note":"x"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","requestState":"s"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#,
        ] {
            assert!(plain_call(body.as_bytes()).is_none(), "{body}");
        }
        assert!(plain_call(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"t\xff\"}}").is_none(), "not UTF-8");
    }
}
