//! `http`: one HTTP request built from the arguments, to a destination the tool's `egress` declares,
//! checked after DNS resolution; the connection goes to the checked address only.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{CallError, Tool, failure, human};
use crate::egress;
use crate::output::shown;
use crate::protocol::{CallRequest, CallResult};
use crate::redact::Redactor;
use crate::template::http_target;

const MAX_REDIRECTS: usize = 5;
/// W3C trace context header, sent when the gateway traces the call.
const TRACEPARENT: &str = "traceparent";
/// Past the cap, a response body is still read (and counted) up to this many bytes, then dropped.
const DISCARD_LIMIT: u64 = 64 * 1024 * 1024;

pub struct Client {
    tls: Arc<rustls::ClientConfig>,
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client { tls: Arc::new(tls) }
    }
}

/// Why a request could not be made; each becomes a failed result with its code.
struct Refused(&'static str, String);

pub async fn call(tool: &Tool, client: &Client, request: &CallRequest, redactor: &Redactor) -> Result<CallResult, CallError> {
    let spec = &tool.spec;
    let http = spec.runtime.http.as_ref().ok_or_else(|| CallError::Internal("not an http tool".into()))?;
    let target = http_target(&http.url, &http.query, &http.body, &request.arguments).map_err(|e| CallError::InvalidArguments(e.0))?;
    let method = Method::from_bytes(http.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| CallError::Internal(format!("tool {}: unknown HTTP method {}", spec.name, http.method)))?;
    let mut headers = Vec::new();
    let traceparent = request.valid_traceparent();
    for (name, value) in &http.headers {
        // The call's own trace context replaces a fixed one.
        if traceparent.is_some() && name.eq_ignore_ascii_case(TRACEPARENT) {
            continue;
        }
        headers.push(header(name, value).map_err(|m| CallError::Internal(format!("tool {}: headers.{name}: {m}", spec.name)))?);
    }
    if let Some(value) = traceparent {
        // Not a secret: it names the gateway's span of this call, so the destination's spans join its trace.
        headers.push(header(TRACEPARENT, value).map_err(CallError::Internal)?);
    }
    let mut secret_headers = Vec::new();
    for (i, credential) in spec.credentials.iter().enumerate() {
        if let Some(h) = &credential.header {
            let value = crate::credentials::value(spec, i).map_err(CallError::Internal)?;
            let full = format!("{}{value}", h.prefix.as_deref().unwrap_or(""));
            let (name, mut value) = header(&h.name, &full)
                .map_err(|_| CallError::Internal(format!("credentials[{i}]: the value cannot be sent as header {}", h.name)))?;
            value.set_sensitive(true);
            secret_headers.push((name, value));
        }
    }
    let body = target.body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap_or_default()));
    let exchange = Exchange { tool, client, redactor, method, headers, secret_headers, body, follow: http.follow_redirects };
    match tokio::time::timeout(tool.timeout(), exchange.run(target.url)).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(Refused(code, message))) => {
            let (message, redacted) = redactor.redact(&message);
            Ok(CallResult { redacted, ..failure(code, message) })
        }
        Err(_) => Ok(failure("timeout", format!("the request ran past its {} timeout and was abandoned", human(tool.timeout())))),
    }
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| "not a valid header name".to_string())?;
    let value = HeaderValue::from_str(value).map_err(|_| "not a valid header value".to_string())?;
    Ok((name, value))
}

struct Exchange<'a> {
    tool: &'a Tool,
    client: &'a Client,
    redactor: &'a Redactor,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    secret_headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
    follow: bool,
}

struct Target {
    https: bool,
    host: String,
    port: u16,
    uri: Uri,
}

fn parse_target(url: &str) -> Result<Target, Refused> {
    let bad = || Refused("connect_failed", format!("`{url}` is not an http(s) URL with a host"));
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let host = uri.host().ok_or_else(bad)?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(Target { https, host, port, uri })
}

impl Exchange<'_> {
    async fn run(mut self, mut url: String) -> Result<CallResult, Refused> {
        let first = parse_target(&url)?;
        let origin = (first.https, first.host.clone(), first.port);
        for _ in 0..=MAX_REDIRECTS {
            let target = parse_target(&url)?;
            let same_origin = (target.https, target.host.clone(), target.port) == origin;
            // In a local sandbox with an egress proxy there is no other way out: the proxy resolves the
            // host and checks egress; elsewhere the worker does both itself.
            let route = match std::env::var_os(crate::sandbox::proxy::ENV) {
                Some(_) => Route::Proxy,
                None => Route::Direct(self.resolve(&target).await?),
            };
            let response = self.send(&target, route, same_origin).await?;
            let status = response.status();
            let location = response.headers().get(hyper::header::LOCATION).and_then(|l| l.to_str().ok()).map(str::to_string);
            if status.is_redirection()
                && let Some(location) = location
            {
                if !self.follow {
                    // The location may echo what the request carried, a credential included.
                    let (location, redacted) = self.redactor.redact(&location);
                    let message = format!("HTTP {status}: redirect to {location} not followed (the tool does not set followRedirects)");
                    return Ok(CallResult { redacted, ..failure("http_status", message) });
                }
                url = resolve_location(&target, &location);
                if status == hyper::StatusCode::SEE_OTHER
                    || (matches!(status.as_u16(), 301 | 302) && self.method == Method::POST)
                {
                    self.method = Method::GET;
                    self.body = None;
                }
                continue;
            }
            return Ok(self.result(status, response).await);
        }
        Err(Refused("http_status", format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// DNS, then the egress check on every address; the first allowed one is used.
    async fn resolve(&self, target: &Target) -> Result<SocketAddr, Refused> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| Refused("connect_failed", format!("cannot resolve {}: {e}", target.host)))?
            .collect();
        let egress = &self.tool.spec.egress;
        addrs.iter().copied().find(|a| egress::allowed(egress, *a)).ok_or_else(|| {
            let declared: Vec<String> = egress
                .iter()
                .map(|e| if e.ports.is_empty() { e.cidr.clone() } else { format!("{} ports {:?}", e.cidr, e.ports) })
                .collect();
            let seen: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            Refused(
                "egress_denied",
                format!(
                    "{}:{} ({}) is not a destination this tool declares (egress: {})",
                    target.host,
                    target.port,
                    seen.join(", "),
                    if declared.is_empty() { "none".to_string() } else { declared.join("; ") }
                ),
            )
        })
    }

    async fn send(
        &self,
        target: &Target,
        route: Route,
        with_secrets: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Refused> {
        let via = match route {
            Route::Direct(addr) => addr.to_string(),
            Route::Proxy => "through the sandbox's egress proxy".to_string(),
        };
        let fail = |what: &str, e: &dyn std::fmt::Display| Refused("connect_failed", format!("{} ({via}): {what}: {e}", target.host));
        let tcp = match route {
            Route::Direct(addr) => TcpStream::connect(addr).await.map_err(|e| fail("connect", &e))?,
            Route::Proxy => tunnel(&target.host, target.port).await?,
        };
        let _ = tcp.set_nodelay(true);
        let mut builder = Request::builder().method(self.method.clone()).uri(target.uri.path_and_query().map_or("/", |p| p.as_str()));
        let host = if (target.https && target.port == 443) || (!target.https && target.port == 80) {
            target.host.clone()
        } else {
            format!("{}:{}", target.uri.host().unwrap_or(&target.host), target.port)
        };
        builder = builder.header(hyper::header::HOST, host);
        builder = builder.header(hyper::header::USER_AGENT, concat!("toolwarden-worker/", env!("CARGO_PKG_VERSION")));
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        // Credentials go only to the origin the tool declared in its URL, never to a redirect elsewhere.
        if with_secrets {
            for (name, value) in &self.secret_headers {
                builder = builder.header(name, value);
            }
        }
        if self.body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(self.body.clone().unwrap_or_default())).map_err(|e| fail("request", &e))?;
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|e| fail("tls name", &e))?;
            let tls = tokio_rustls::TlsConnector::from(self.client.tls.clone()).connect(name, tcp).await.map_err(|e| fail("tls", &e))?;
            exchange(TokioIo::new(tls), request).await.map_err(|e| fail("http", &e))
        } else {
            exchange(TokioIo::new(tcp), request).await.map_err(|e| fail("http", &e))
        }
    }

    async fn result(&self, status: hyper::StatusCode, response: hyper::Response<hyper::body::Incoming>) -> CallResult {
        let cap = self.tool.cap();
        // Past the cap by the redactor's margin: a credential across the cap is redacted whole, then cut.
        let keep = cap.saturating_add(self.redactor.margin());
        let mut body = response.into_body();
        let mut kept = Vec::new();
        let mut total = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&data[..data.len().min(room)]);
                if total >= DISCARD_LIMIT {
                    break;
                }
            }
        }
        let out = shown(&kept, total, cap, self.redactor);
        let text = out.text;
        let mut result = CallResult {
            output_bytes: total,
            truncated: out.truncated_bytes > 0,
            truncated_bytes: out.truncated_bytes,
            redacted: out.redacted,
            ..CallResult::default()
        };
        if status.as_u16() >= 400 {
            result.is_error = true;
            result.error_code = Some("http_status".into());
            result.content = format!("HTTP {status}: {text}");
        } else {
            result.structured = if result.truncated { None } else { self.tool.structured(&text) };
            result.content = text;
        }
        result.http_status = Some(status.as_u16());
        result
    }
}

async fn exchange<T>(io: TokioIo<T>, request: Request<Full<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await
}

/// How a request reaches its destination.
#[derive(Clone, Copy)]
enum Route {
    /// To this address, resolved and checked against egress by the worker.
    Direct(SocketAddr),
    /// Through the local sandbox's egress proxy (`sandbox/proxy.rs`), which resolves and checks.
    Proxy,
}

/// A TCP stream to `host:port` through the egress proxy (`CONNECT`); its refusal becomes `egress_denied`.
async fn tunnel(host: &str, port: u16) -> Result<TcpStream, Refused> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fail = |e: &dyn std::fmt::Display| Refused("connect_failed", format!("{host}:{port} through the sandbox's egress proxy: {e}"));
    let mut stream = TcpStream::connect(("127.0.0.1", crate::sandbox::proxy::PORT)).await.map_err(|e| fail(&e))?;
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    stream.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes()).await.map_err(|e| fail(&e))?;
    // Byte by byte up to the blank line: nothing of the tunnel itself may be read here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(fail(&"the proxy's answer is too long"));
        }
        let byte = stream.read_u8().await.map_err(|e| fail(&e))?;
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1).unwrap_or("");
    if status == "200" {
        return Ok(stream);
    }
    let mut body = Vec::new();
    let _ = (&mut stream).take(16 * 1024).read_to_end(&mut body).await;
    let why = String::from_utf8_lossy(&body).trim().trim_start_matches("toolwarden egress proxy: ").to_string();
    Err(Refused(if status == "403" { "egress_denied" } else { "connect_failed" }, why))
}

fn resolve_location(base: &Target, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let scheme = if base.https { "https" } else { "http" };
    let authority = base.uri.authority().map_or(base.host.as_str(), |a| a.as_str());
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = base.uri.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{scheme}://{authority}{dir}{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations_resolve_against_the_request() {
        let base = parse_target("https://api.test:8443/a/b?x=1").ok().unwrap();
        assert_eq!(resolve_location(&base, "/c"), "https://api.test:8443/c");
        assert_eq!(resolve_location(&base, "c"), "https://api.test:8443/a/c");
        assert_eq!(resolve_location(&base, "http://other.test/"), "http://other.test/");
    }
}
