//! What `/mcp/{namespace}` accepts as a POSTed body, and how every refusal at this edge is answered:
//! a JSON-RPC error (no id) in a JSON body, with an HTTP status that says what kind of problem it was.
//!
//! [`check_body`] reads a body once, without building it: it refuses what is not one JSON-RPC 2.0
//! message (invalid UTF-8, a syntax error, nesting deeper than 128 levels, a number no JSON parser can
//! hold, a lone UTF-16 surrogate, a batch, a message of no known shape, an id that is no string or
//! integer) before rmcp sees it. rmcp then reads the message into its own types; what it still cannot
//! read (a method's params of the wrong shape) and its protocol refusals, which rmcp writes as plain
//! text, are turned into the same JSON-RPC errors by [`json_errors`].

use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use serde::Deserialize;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

/// JSON-RPC error codes used at the edge.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// A refusal: HTTP status, JSON-RPC code and message.
pub type Rejection = (StatusCode, i64, String);

/// A JSON-RPC error without id, as Streamable HTTP allows for input the server cannot accept.
pub fn rpc_error(status: StatusCode, code: i64, message: String) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

/// The kind of JSON-RPC message a body holds, from which of its keys are present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Request,
    Notification,
    Response,
    Error,
}

/// What [`check_body`] learned of a message: its shape and method name.
#[derive(Debug)]
pub struct Envelope {
    pub shape: Shape,
    method: Option<String>,
}

impl Envelope {
    pub fn is_method(&self, method: &str) -> bool {
        self.method.as_deref() == Some(method)
    }
}

/// Checks that a POST body is one well-formed JSON-RPC 2.0 message. Every value is read (so every
/// string, number and nesting level is checked as serde_json checks them when rmcp reads the body), but
/// only the method name is kept.
pub fn check_body(bytes: &[u8]) -> Result<Envelope, Rejection> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err((StatusCode::BAD_REQUEST, PARSE_ERROR, format!("Parse error: the body is not valid UTF-8 (byte {})", e.valid_up_to())));
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => {
            // A syntax error is still reported as one; a well-formed batch gets its own sentence.
            return Err(match serde_json::from_slice::<Checked>(bytes) {
                Err(e) => parse_error(&e),
                Ok(_) => invalid("batch requests are not supported; send one JSON-RPC message per request"),
            });
        }
        Some(b'{') => {}
        _ => {
            return Err(match serde_json::from_slice::<Checked>(bytes) {
                Err(e) => parse_error(&e),
                Ok(_) => invalid("the body must be one JSON-RPC object"),
            });
        }
    }
    let keys = serde_json::from_slice::<Keys>(bytes).map_err(|e| if e.is_data() { invalid(&e.to_string()) } else { parse_error(&e) })?;
    if keys.jsonrpc.as_deref() != Some("2.0") {
        return Err(invalid("not a JSON-RPC 2.0 message (it needs \"jsonrpc\": \"2.0\")"));
    }
    let shape = match (keys.method.is_some(), keys.id.is_some(), keys.result, keys.error.is_some()) {
        (true, true, false, false) => Shape::Request,
        (true, false, false, false) => Shape::Notification,
        (false, _, true, false) => Shape::Response,
        (false, _, false, true) => Shape::Error,
        (false, _, false, false) => return Err(invalid("not a JSON-RPC 2.0 message (it needs a method, a result or an error)")),
        _ => return Err(invalid("a JSON-RPC message has either a method (a request or notification) or a result or an error (a response)")),
    };
    if let Some(Some(method)) = &keys.method
        && method.is_empty()
    {
        return Err(invalid("the method is empty"));
    }
    if keys.method == Some(None) {
        return Err(invalid("the method must be a string"));
    }
    match (&keys.id, shape) {
        (None | Some(Id::Valid), _) | (Some(Id::Null), Shape::Error) => {}
        (Some(Id::Null), _) => return Err(invalid("the id must be a string or an integer, not null")),
        (Some(Id::Invalid), _) => return Err(invalid("the id must be a string or an integer")),
    }
    let bad_params = |why: &str| (StatusCode::BAD_REQUEST, INVALID_PARAMS, format!("Invalid params: {why}"));
    match keys.params {
        Some(Params::NotAnObject) => return Err(bad_params("params must be an object (MCP methods take named parameters)")),
        Some(Params::BadMeta) => return Err(bad_params("_meta must be an object")),
        _ => {}
    }
    if shape == Shape::Response && keys.id.is_none() {
        return Err(invalid("a response needs the id of the request it answers"));
    }
    if keys.error == Some(false) {
        return Err(invalid("an error must be an object with an integer code and a string message"));
    }
    Ok(Envelope { shape, method: keys.method.flatten() })
}

fn invalid(why: &str) -> Rejection {
    (StatusCode::BAD_REQUEST, INVALID_REQUEST, format!("Invalid Request: {why}"))
}

fn parse_error(e: &serde_json::Error) -> Rejection {
    (StatusCode::BAD_REQUEST, PARSE_ERROR, format!("Parse error: {e}"))
}

/// The top-level keys [`check_body`] needs. A repeated key is refused (rmcp refuses it too).
#[derive(Default)]
struct Keys {
    jsonrpc: Option<String>,
    /// `Some(None)`: present but not a string.
    method: Option<Option<String>>,
    id: Option<Id>,
    params: Option<Params>,
    result: bool,
    /// `Some(false)`: present but not `{"code": i32, "message": string, ...}`.
    error: Option<bool>,
}

enum Params {
    Valid,
    NotAnObject,
    /// `_meta` is there but not an object.
    BadMeta,
}

enum Id {
    Valid,
    Null,
    Invalid,
}

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON-RPC message")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Keys::default();
                let mut seen = Seen::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Other => {
                            map.next_value::<Checked>()?;
                        }
                        Key::Jsonrpc => {
                            once(&mut seen.jsonrpc, "jsonrpc")?;
                            keys.jsonrpc = Some(map.next_value::<Value>()?.as_str().map(str::to_owned).unwrap_or_default());
                        }
                        Key::Method => {
                            once(&mut seen.method, "method")?;
                            keys.method = Some(map.next_value::<Value>()?.as_str().map(str::to_owned));
                        }
                        Key::Id => {
                            once(&mut seen.id, "id")?;
                            keys.id = Some(match map.next_value::<Value>()? {
                                Value::String(_) => Id::Valid,
                                Value::Number(n) if n.is_i64() => Id::Valid,
                                Value::Null => Id::Null,
                                _ => Id::Invalid,
                            });
                        }
                        Key::Result => {
                            once(&mut seen.result, "result")?;
                            map.next_value::<Checked>()?;
                            keys.result = true;
                        }
                        Key::Params => {
                            once(&mut seen.params, "params")?;
                            keys.params = Some(match map.next_value::<Value>()? {
                                Value::Object(params) if params.get("_meta").is_some_and(|m| !m.is_object()) => Params::BadMeta,
                                Value::Object(_) => Params::Valid,
                                _ => Params::NotAnObject,
                            });
                        }
                        Key::Error => {
                            once(&mut seen.error, "error")?;
                            let error = map.next_value::<Value>()?;
                            let code_fits = error["code"].as_i64().is_some_and(|c| i32::try_from(c).is_ok());
                            keys.error = Some(code_fits && error["message"].is_string());
                        }
                    }
                }
                Ok(keys)
            }
        }
        deserializer.deserialize_map(KeysVisitor)
    }
}

#[derive(Default)]
struct Seen {
    jsonrpc: bool,
    method: bool,
    id: bool,
    params: bool,
    result: bool,
    error: bool,
}

fn once<E: serde::de::Error>(seen: &mut bool, key: &str) -> Result<(), E> {
    if std::mem::replace(seen, true) { Err(E::custom(format!("the key `{key}` appears twice"))) } else { Ok(()) }
}

enum Key {
    Jsonrpc,
    Method,
    Id,
    Params,
    Result,
    Error,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "jsonrpc" => Key::Jsonrpc,
                    "method" => Key::Method,
                    "id" => Key::Id,
                    "params" => Key::Params,
                    "result" => Key::Result,
                    "error" => Key::Error,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Any JSON value, read in full and dropped. Unlike `serde::de::IgnoredAny`, which serde_json skips without
/// decoding, every string is decoded (a lone surrogate is an error), every number parsed (one out of
/// range is an error) and every level counted (deeper than 128 is an error), as when rmcp reads it.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// Gives every error rmcp answers the edge's form: rmcp writes its refusals (`Accept`, content type,
/// unknown session, Host...) as plain text; they become a JSON-RPC error in JSON with the same status
/// and headers. A body rmcp could not read as an MCP message (`415` although the content type is JSON)
/// is the client's malformed request: `400` with the reason rmcp's types give.
pub async fn json_errors(response: Response<BoxBody<Bytes, Infallible>>, posted: Option<(&Bytes, Shape)>) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response.map(Body::new);
    }
    let (mut parts, body) = response.into_parts();
    // rmcp's error bodies are one short sentence, already complete.
    let text = match body.collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).trim().to_owned(),
        Err(never) => match never {},
    };
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE
        && let Some((body, shape)) = posted
        && let Some((code, reason)) = unreadable(body, shape)
    {
        let message = match code {
            INVALID_PARAMS => format!("Invalid params: {reason}"),
            _ => format!("Invalid Request: {reason}"),
        };
        return rpc_error(StatusCode::BAD_REQUEST, code, message);
    }
    let code = if status.is_server_error() { INTERNAL_ERROR } else { INVALID_REQUEST };
    let body = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": text}})).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Why rmcp's types cannot read a message [`check_body`] accepted, or `None` when they can (rmcp's
/// `415` was then about the content type). Read as the one kind of message its keys say it is, so the
/// reason names the field at fault instead of "unrecognized JSON-RPC message".
fn unreadable(body: &[u8], shape: Shape) -> Option<(i64, String)> {
    use rmcp::model::{ClientNotification, ClientRequest, ClientResult, JsonRpcError, JsonRpcNotification, JsonRpcRequest, JsonRpcResponse};
    serde_json::from_slice::<rmcp::model::ClientJsonRpcMessage>(body).err()?;
    let error = match shape {
        Shape::Request => serde_json::from_slice::<JsonRpcRequest<ClientRequest>>(body).err(),
        Shape::Notification => serde_json::from_slice::<JsonRpcNotification<ClientNotification>>(body).err(),
        Shape::Response => serde_json::from_slice::<JsonRpcResponse<ClientResult>>(body).err(),
        Shape::Error => serde_json::from_slice::<JsonRpcError>(body).err(),
    };
    let code = if matches!(shape, Shape::Request | Shape::Notification) { INVALID_PARAMS } else { INVALID_REQUEST };
    let reason = error.map(|e| e.to_string()).unwrap_or_else(|| "the message does not fit the MCP schema".to_owned());
    Some((code, reason))
}

#[cfg(test)]
#[path = "rpc_body_tests.rs"]
mod tests;
