//! `serve`: the worker's HTTP/1.1 server (`docs/worker-protocol.md`). Authenticated by the SHA-256 of the
//! session's worker token; concurrent calls up to `--max-concurrent`, the rest refused as busy.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::protocol::{CALL_PATH, CallRequest, ErrorBody, HEALTH_PATH, Health, MAX_REQUEST_BYTES};
use crate::runtime::{CallError, Tool};

/// Where `serve` listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(String),
    Unix(PathBuf),
}

impl Listen {
    pub fn parse(addr: &str) -> Listen {
        match addr.strip_prefix("unix:") {
            Some(path) => Listen::Unix(PathBuf::from(path)),
            None => Listen::Tcp(addr.to_string()),
        }
    }
}

pub struct State {
    pub tool: Tool,
    pub token_sha256: [u8; 32],
    pub max_concurrent: usize,
    permits: Semaphore,
    in_flight: AtomicU32,
    /// Whether a finished call writes its line to stderr (failures always do).
    log_calls: bool,
}

impl State {
    pub fn new(tool: Tool, token_sha256: [u8; 32], max_concurrent: usize) -> State {
        State { tool, token_sha256, max_concurrent, permits: Semaphore::new(max_concurrent), in_flight: AtomicU32::new(0), log_calls: true }
    }

    /// `--no-call-log`: the local runtime reads the worker's stderr, and a line per call would wake the
    /// gateway once more per call for a line it shows only at debug level.
    pub fn log_calls(mut self, log_calls: bool) -> State {
        self.log_calls = log_calls;
        self
    }
}

/// Serves connections from `listen` until SIGTERM/SIGINT.
pub async fn serve(state: Arc<State>, listen: &Listen) -> std::io::Result<()> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    match listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            announce(&state, &listener.local_addr()?.to_string());
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => { let _ = stream.set_nodelay(true); spawn_connection(state.clone(), stream) }
                        Err(e) => eprintln!("toolwarden-worker: accept: {e}"),
                    },
                    _ = &mut shutdown => return Ok(()),
                }
            }
        }
        Listen::Unix(path) => {
            // A stale socket from an earlier worker would make bind fail.
            if std::fs::symlink_metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
                let _ = std::fs::remove_file(path);
            }
            // Only the owner may connect, from the first moment (the runtime is single-threaded, so the
            // umask change affects nothing else).
            // SAFETY: umask(2) has no memory effects.
            let previous = unsafe { libc::umask(0o077) };
            let bound = tokio::net::UnixListener::bind(path);
            // SAFETY: as above.
            unsafe { libc::umask(previous) };
            let listener = bound?;
            announce(&state, &format!("unix:{}", path.display()));
            let result = loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted.and_then(|(stream, _)| crate::quiet_unix::QuietUnixStream::from_tokio(stream)) {
                        Ok(stream) => spawn_connection(state.clone(), stream),
                        Err(e) => eprintln!("toolwarden-worker: accept: {e}"),
                    },
                    _ = &mut shutdown => break Ok(()),
                }
            };
            let _ = std::fs::remove_file(path);
            result
        }
    }
}

fn announce(state: &State, addr: &str) {
    eprintln!("toolwarden-worker: serving tool {} ({:?} runtime) on {addr}", state.tool.spec.name, state.tool.kind);
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn spawn_connection<S>(state: Arc<State>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
    });
}

type Answer = Response<Full<Bytes>>;

fn json(status: StatusCode, body: &impl serde::Serialize) -> Answer {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    let mut answer = json(status, &ErrorBody::new(code, message));
    if status == StatusCode::UNAUTHORIZED {
        answer.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    }
    answer
}

pub async fn handle(state: &State, req: Request<Incoming>) -> Answer {
    match (req.method(), req.uri().path()) {
        (&Method::GET, HEALTH_PATH) => json(
            StatusCode::OK,
            &Health { status: "ok".into(), tool: state.tool.spec.name.clone(), in_flight: state.in_flight.load(Ordering::Relaxed) },
        ),
        (&Method::POST, CALL_PATH) => call(state, req).await,
        (_, CALL_PATH) => error(StatusCode::BAD_REQUEST, "bad_request", format!("{CALL_PATH} takes POST")),
        (_, path) => error(StatusCode::NOT_FOUND, "not_found", format!("no endpoint {path}; the worker serves POST {CALL_PATH} and GET {HEALTH_PATH}")),
    }
}

/// Whether `header` (an `Authorization` value) carries the token whose SHA-256 is `expected`.
/// Compares digests in constant time.
pub fn authorized(header: Option<&[u8]>, expected: &[u8; 32]) -> bool {
    let Some(token) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(token).into();
    digest.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn call(state: &State, req: Request<Incoming>) -> Answer {
    // Authentication comes first: on a 401 nothing is read, parsed or run.
    if !authorized(req.headers().get(hyper::header::AUTHORIZATION).map(|h| h.as_bytes()), &state.token_sha256) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token");
    }
    let content_type = req.headers().get(hyper::header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("");
    if !content_type.trim_start().to_ascii_lowercase().starts_with("application/json") {
        return error(StatusCode::BAD_REQUEST, "bad_request", "Content-Type must be application/json");
    }
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|l| l.to_str().ok()?.parse::<u64>().ok());
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("request body over {MAX_REQUEST_BYTES} bytes"));
    if declared.is_some_and(|l| l > MAX_REQUEST_BYTES as u64) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return too_large(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("cannot read the request body: {e}")),
    };
    let mut request: CallRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("the body is not a CallRequest: {e}")),
    };
    if request.arguments.is_null() {
        request.arguments = serde_json::Value::Object(Default::default());
    }
    if !request.arguments.is_object() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "arguments must be a JSON object");
    }
    let Ok(_permit) = state.permits.try_acquire() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            format!("{} calls are already running in this worker (the limit); retry when one finishes", state.max_concurrent),
        );
    };
    state.in_flight.fetch_add(1, Ordering::Relaxed);
    let outcome = state.tool.call(&request).await;
    state.in_flight.fetch_sub(1, Ordering::Relaxed);
    let call_id = || serde_json::to_string(&request.call_id).unwrap_or_default();
    match outcome {
        Ok(result) if state.log_calls => {
            log_line(&format!(
                "toolwarden-worker: call {} done in {} ms: error={} code={} output={}B truncated={}\n",
                call_id(),
                result.duration_ms,
                result.is_error,
                result.error_code.as_deref().unwrap_or("-"),
                result.output_bytes,
                result.truncated
            ));
            json(StatusCode::OK, &result)
        }
        Ok(result) => json(StatusCode::OK, &result),
        Err(CallError::InvalidArguments(m)) => error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_arguments", m),
        Err(CallError::BadRequest(m)) => error(StatusCode::BAD_REQUEST, "bad_request", m),
        Err(CallError::Internal(m)) => {
            log_line(&format!("toolwarden-worker: call {} failed: {m}\n", call_id()));
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
        }
    }
}

/// One whole line to stderr in one write: `eprintln!` writes each formatted piece separately (stderr
/// is unbuffered), and whoever reads the pipe would wake for every piece.
fn log_line(line: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_with_the_expected_hash_is_authorized() {
        let expected: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(authorized(Some(b"Bearer s3cret"), &expected));
        assert!(!authorized(Some(b"Bearer s3cre"), &expected));
        assert!(!authorized(Some(b"s3cret"), &expected));
        assert!(!authorized(None, &expected));
    }

    #[test]
    fn listen_addresses_are_tcp_or_unix() {
        assert_eq!(Listen::parse("0.0.0.0:8443"), Listen::Tcp("0.0.0.0:8443".into()));
        assert_eq!(Listen::parse("unix:/run/w.sock"), Listen::Unix("/run/w.sock".into()));
    }
}
