//! rmcp answers every POSTed request of a session as an SSE stream, even when the reply is its only
//! message. Streamable HTTP lets the server answer a POST with either `application/json` or
//! `text/event-stream`, and every conforming client accepts both. A JSON body is one write instead of
//! a stream of chunks and needs no SSE parsing, so the gateway answers with JSON whenever the first
//! message on the stream is the reply itself.
//!
//! The stream is passed on unchanged when anything else comes first: an elicitation request or a
//! notification (they must reach the client before the reply), or a keep-alive comment (a long call;
//! the pings keep proxies from cutting an idle connection).

use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use http::{HeaderValue, header};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// What the buffered start of an SSE stream says.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// No complete event with a message yet.
    NeedMore,
    /// The first message is the reply: this is its JSON.
    Reply(Bytes),
    /// Something else comes first: keep streaming.
    Stream,
}

/// The keys that tell a JSON-RPC reply from a request or notification, read without allocating.
#[derive(Deserialize)]
struct Probe {
    method: Option<IgnoredAny>,
    result: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
}

fn is_reply(data: &[u8]) -> bool {
    serde_json::from_slice::<Probe>(data).is_ok_and(|p| p.method.is_none() && (p.result.is_some() || p.error.is_some()))
}

/// Looks at the complete events in `buffer`: priming events (no data) are skipped; the first event with
/// a message decides; a comment-only event (keep-alive ping) means the call is long, so keep streaming.
fn scan(buffer: &[u8]) -> Scan {
    let mut rest = buffer;
    while let Some(end) = find_event_end(rest) {
        let (event, next) = (&rest[..end], &rest[end..]);
        rest = next.strip_prefix(b"\r\n\r\n").or_else(|| next.strip_prefix(b"\n\n")).unwrap_or(next);
        let mut data: Vec<&[u8]> = Vec::new();
        let mut comment = false;
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(value) = line.strip_prefix(b"data:") {
                data.push(value.strip_prefix(b" ").unwrap_or(value));
            } else if line.starts_with(b":") {
                comment = true;
            }
        }
        let message = data.join(&b'\n');
        if message.iter().all(u8::is_ascii_whitespace) {
            if comment {
                return Scan::Stream;
            }
            continue;
        }
        return if is_reply(&message) { Scan::Reply(Bytes::from(message)) } else { Scan::Stream };
    }
    Scan::NeedMore
}

/// Where the first event ends (the blank line that closes it), if it is complete.
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n");
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n");
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether the client named JSON (or anything) acceptable.
pub fn accepts_json(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else { return false };
    accept.split(',').map(|t| t.split(';').next().unwrap_or("").trim()).any(|t| t == "application/json" || t == "*/*" || t == "application/*")
}

/// Turns rmcp's SSE answer to a POSTed request into a JSON answer when its first message is the reply.
pub async fn prefer_json(response: Response<BoxBody<Bytes, Infallible>>) -> Response {
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_stream {
        return response.map(Body::new);
    }
    let (mut parts, mut body) = response.into_parts();
    let mut buffered = BytesMut::new();
    loop {
        let Some(Ok(frame)) = body.frame().await else { break };
        let Ok(data) = frame.into_data() else { continue };
        buffered.extend_from_slice(&data);
        match scan(&buffered) {
            Scan::NeedMore => continue,
            Scan::Stream => break,
            Scan::Reply(json) => {
                // The stream ends with the reply; dropping it frees the request's channel.
                parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                parts.headers.remove("x-accel-buffering");
                parts.headers.remove(header::CONTENT_LENGTH);
                return Response::from_parts(parts, Body::from(json));
            }
        }
    }
    let head = futures::stream::once(async move { Ok::<Bytes, Infallible>(buffered.freeze()) });
    Response::from_parts(parts, Body::from_stream(head.chain(body.into_data_stream())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY: &str = r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"hi\n\nthere"}]}}"#;

    #[test]
    fn a_reply_after_a_priming_event_is_the_answer() {
        let sse = format!("id: 0\nretry: 3000\ndata:\n\ndata: {REPLY}\nid: 1\n\n");
        assert_eq!(scan(sse.as_bytes()), Scan::Reply(Bytes::from(REPLY)));
        let crlf = format!("data: \r\nid: 0\r\n\r\ndata: {REPLY}\r\n\r\n");
        assert_eq!(scan(crlf.as_bytes()), Scan::Reply(Bytes::from(REPLY)));
        let error = r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"bad"}}"#;
        assert_eq!(scan(format!("data: {error}\n\n").as_bytes()), Scan::Reply(Bytes::from(error)));
    }

    #[test]
    fn an_incomplete_event_waits_for_more() {
        assert_eq!(scan(b""), Scan::NeedMore);
        assert_eq!(scan(b"id: 0\nretry: 3000\ndata:\n\n"), Scan::NeedMore);
        assert_eq!(scan(format!("data: {REPLY}\n").as_bytes()), Scan::NeedMore);
    }

    #[test]
    fn requests_notifications_and_pings_keep_the_stream() {
        let elicit = r#"{"jsonrpc":"2.0","id":0,"method":"elicitation/create","params":{}}"#;
        assert_eq!(scan(format!("data:\n\ndata: {elicit}\n\n").as_bytes()), Scan::Stream);
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert_eq!(scan(format!("data: {progress}\n\n").as_bytes()), Scan::Stream);
        assert_eq!(scan(b":ping\n\n"), Scan::Stream);
        assert_eq!(scan(b"data: not json\n\n"), Scan::Stream);
    }

    #[test]
    fn accept_headers() {
        let ok = |v: &str| accepts_json(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(ok("application/json, text/event-stream"));
        assert!(ok("text/event-stream;q=1, application/json;q=0.9"));
        assert!(ok("*/*"));
        assert!(!ok("text/event-stream"));
        assert!(!accepts_json(None));
    }

    fn sse_response(body: &'static str) -> Response<BoxBody<Bytes, Infallible>> {
        let body = http_body_util::Full::new(Bytes::from(body)).boxed();
        Response::builder().header(header::CONTENT_TYPE, "text/event-stream").body(body).unwrap()
    }

    #[tokio::test]
    async fn replies_become_json_and_everything_else_streams_unchanged() {
        let reply = prefer_json(sse_response("data:\nid: 0\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n")).await;
        assert_eq!(reply.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = reply.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);

        let sse = "data: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"elicitation/create\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        let streamed = prefer_json(sse_response(sse)).await;
        assert_eq!(streamed.headers()[header::CONTENT_TYPE], "text/event-stream");
        let bytes = streamed.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), sse);
    }
}
