//! A keep-alive HTTP/1.1 client for the worker protocol (`docs/worker-protocol.md`) over a unix socket
//! (`unix:/path`, the local sandbox) or TCP (`http://host:port`, worker pods).
//!
//! Connections are reused: a small pool of idle hyper senders, one in-flight request each. A pooled
//! connection the worker closed while idle is replaced transparently, but only when hyper reports that the
//! request was never sent, so a call never runs twice.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use toolwarden_worker::protocol::{CALL_PATH, CallRequest, CallResult, ErrorBody, HEALTH_PATH, Health, MAX_REQUEST_BYTES};

use super::RuntimeError;

/// Idle connections kept per worker.
pub const MAX_IDLE: usize = 64;
/// Largest answer read from a worker (output caps are far below this).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a worker listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerEndpoint {
    /// `unix:/path/to/worker.sock`
    Unix(PathBuf),
    /// `http://host:port` (the `host:port` part).
    Tcp(String),
}

impl FromStr for WorkerEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("worker endpoint {s}: the unix socket path must be absolute"));
            }
            return Ok(WorkerEndpoint::Unix(path.into()));
        }
        if let Some(authority) = s.strip_prefix("http://") {
            let authority = authority.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
                return Err(format!("worker endpoint {s}: expected http://HOST:PORT"));
            }
            return Ok(WorkerEndpoint::Tcp(authority.to_owned()));
        }
        Err(format!("worker endpoint {s}: expected unix:/path or http://HOST:PORT"))
    }
}

impl std::fmt::Display for WorkerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerEndpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            WorkerEndpoint::Tcp(authority) => write!(f, "http://{authority}"),
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// One worker's client. Share it (`Arc`) between the calls of that worker.
pub struct WorkerClient {
    endpoint: WorkerEndpoint,
    authorization: HeaderValue,
    host: HeaderValue,
    /// Idle connections, each with the time it was put back; the most recent last.
    idle: Mutex<Vec<(Sender, std::time::Instant)>>,
}

impl std::fmt::Debug for WorkerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerClient").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

fn err(code: &'static str, message: String) -> RuntimeError {
    RuntimeError::new(code, message)
}

fn transient(code: &'static str, message: String) -> RuntimeError {
    RuntimeError { code, message, transient: true }
}

impl WorkerClient {
    pub fn new(endpoint: WorkerEndpoint, token: String) -> Self {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        authorization.set_sensitive(true);
        let host = match &endpoint {
            WorkerEndpoint::Unix(_) => HeaderValue::from_static("worker"),
            WorkerEndpoint::Tcp(authority) => HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("worker")),
        };
        WorkerClient { endpoint, authorization, host, idle: Mutex::new(Vec::new()) }
    }

    pub fn endpoint(&self) -> &WorkerEndpoint {
        &self.endpoint
    }

    /// Runs one call. `timeout` covers connecting, the call and reading the answer; give the tool's own
    /// timeout plus a margin, since the worker enforces the tool timeout itself.
    pub async fn call(&self, req: &CallRequest, timeout: Duration) -> Result<CallResult, RuntimeError> {
        let body = Bytes::from(serde_json::to_vec(req).map_err(|e| err("internal", format!("call request: {e}")))?);
        if body.len() > MAX_REQUEST_BYTES {
            return Err(err(
                "request_too_large",
                format!("the call's arguments are {} bytes; workers accept at most {MAX_REQUEST_BYTES}", body.len()),
            ));
        }
        let (status, bytes) = tokio::time::timeout(timeout, self.exchange(Method::POST, CALL_PATH, Some(body)))
            .await
            .map_err(|_| err("worker_timeout", format!("the worker did not answer within {} ms", timeout.as_millis())))??;
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes)
                .map_err(|e| err("worker_protocol", format!("the worker's answer is not a call result: {e}")));
        }
        Err(status_error(status, &bytes))
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, RuntimeError> {
        let (status, bytes) = tokio::time::timeout(HEALTH_TIMEOUT, self.exchange(Method::GET, HEALTH_PATH, None))
            .await
            .map_err(|_| err("worker_timeout", "the worker's health check did not answer within 2 s".into()))??;
        if status != StatusCode::OK {
            return Err(status_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| err("worker_protocol", format!("the worker's health answer is malformed: {e}")))
    }

    fn request(&self, method: &Method, path: &str, body: &Option<Bytes>) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method.clone()).uri(path).header(HOST, self.host.clone());
        if body.is_some() {
            builder = builder.header(AUTHORIZATION, self.authorization.clone()).header(CONTENT_TYPE, "application/json");
        }
        builder.body(Full::new(body.clone().unwrap_or_default())).expect("static request parts are valid")
    }

    async fn exchange(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<(StatusCode, Bytes), RuntimeError> {
        // A pooled sender may have been closed by the worker while idle: try the next one (or a new
        // connection) when the request provably did not go out.
        let mut pooled = self.take_idle();
        let response = loop {
            let from_pool = pooled.is_some();
            let mut sender = match pooled.take() {
                Some(sender) => sender,
                None => self.connect().await?,
            };
            if sender.ready().await.is_err() {
                pooled = self.take_idle();
                if from_pool {
                    continue;
                }
                return Err(err("worker_died", format!("the connection to the worker at {} closed", self.endpoint)));
            }
            match sender.try_send_request(self.request(&method, path, &body)).await {
                Ok(response) => break (response, sender),
                Err(e) if from_pool && e.message().is_some() => {
                    pooled = self.take_idle();
                    continue;
                }
                Err(e) => return Err(connection_error(&self.endpoint, e.error())),
            }
        };
        let (response, sender) = response;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| err("worker_died", format!("the worker at {} stopped while answering: {e}", self.endpoint)))?
            .to_bytes();
        self.put_idle(sender);
        Ok((status, bytes))
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((sender, _)) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((sender, std::time::Instant::now()));
        }
    }

    /// Drops the connections idle for longer than `max_idle`. Each holds a task and its read and write
    /// buffers (about 16 KiB) in the gateway; a session that went quiet then holds none, and its next
    /// call opens a connection again (a unix socket connect and an HTTP/1.1 handshake).
    pub fn close_idle_older_than(&self, max_idle: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(sender, since)| !sender.is_closed() && since.elapsed() <= max_idle);
    }

    /// Drops every idle connection (the worker is being replaced).
    pub fn close_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    async fn connect(&self) -> Result<Sender, RuntimeError> {
        let refused = |e: std::io::Error| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => "worker_died",
                _ => "worker_unreachable",
            };
            transient(code, format!("cannot connect to the worker at {}: {e}", self.endpoint))
        };
        match &self.endpoint {
            WorkerEndpoint::Unix(path) => {
                // A unix socket whose accept backlog is full refuses with EAGAIN instead of queueing
                // the connect (a burst of first calls): try again shortly, a bounded number of times.
                let mut tries = 0;
                let stream = loop {
                    match tokio::net::UnixStream::connect(path).await {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        other => break other.map_err(refused)?,
                    }
                };
                // Registered for reading only: the worker's reads of each request would otherwise wake
                // the gateway for nothing (see `QuietUnixStream`).
                let stream = toolwarden_worker::quiet_unix::QuietUnixStream::from_tokio(stream).map_err(refused)?;
                self.handshake(stream).await
            }
            WorkerEndpoint::Tcp(authority) => {
                let stream = tokio::net::TcpStream::connect(authority.as_str()).await.map_err(refused)?;
                let _ = stream.set_nodelay(true);
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<S>(&self, stream: S) -> Result<Sender, RuntimeError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connection_error(&self.endpoint, &e))?;
        tokio::spawn(async move {
            // Ends when the worker closes the connection or every sender is dropped.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

fn connection_error(endpoint: &WorkerEndpoint, e: &hyper::Error) -> RuntimeError {
    let code = if e.is_timeout() { "worker_timeout" } else { "worker_died" };
    err(code, format!("the worker at {endpoint} closed the connection during the call: {e}"))
}

/// Maps a non-200 answer to a runtime error; the worker's message is kept when it helps the caller.
fn status_error(status: StatusCode, body: &[u8]) -> RuntimeError {
    let detail = serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error);
    let message = detail.as_ref().map(|d| d.message.clone()).unwrap_or_else(|| format!("HTTP {status}"));
    match status.as_u16() {
        401 => err("worker_unauthorized", "the worker refused the session's token".into()),
        413 => err("request_too_large", format!("the worker refused the call as too large: {message}")),
        422 => err("invalid_arguments", message),
        429 => transient("worker_busy", format!("the worker is running as many calls as it may: {message}")),
        400 => err("worker_bad_request", format!("the worker refused the request: {message}")),
        404 => err("worker_protocol", format!("the worker does not speak this protocol version: {message}")),
        500..=599 => transient("worker_error", format!("the worker failed: {message}")),
        _ => err("worker_protocol", format!("the worker answered {status}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        assert_eq!("unix:/run/w.sock".parse(), Ok(WorkerEndpoint::Unix("/run/w.sock".into())));
        assert_eq!("http://10.0.0.7:8443".parse(), Ok(WorkerEndpoint::Tcp("10.0.0.7:8443".into())));
        assert_eq!("http://[fd00::1]:8443/".parse::<WorkerEndpoint>().unwrap().to_string(), "http://[fd00::1]:8443");
        for bad in ["unix:relative.sock", "https://x:1", "http://host", "10.0.0.7:8443", "http://a:1/path"] {
            assert!(bad.parse::<WorkerEndpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_map_to_specific_codes() {
        let body = br#"{"error":{"code":"invalid_arguments","message":"argument path must be a string"}}"#;
        let e = status_error(StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!((e.code, e.message.as_str()), ("invalid_arguments", "argument path must be a string"));
        assert_eq!(status_error(StatusCode::UNAUTHORIZED, b"").code, "worker_unauthorized");
        assert_eq!(status_error(StatusCode::PAYLOAD_TOO_LARGE, b"").code, "request_too_large");
        let busy = status_error(StatusCode::TOO_MANY_REQUESTS, b"");
        assert!(busy.code == "worker_busy" && busy.transient);
        assert_eq!(status_error(StatusCode::BAD_GATEWAY, b"not json").code, "worker_error");
        assert_eq!(status_error(StatusCode::NOT_FOUND, b"").code, "worker_protocol");
    }
}
