//! `--network proxy`: the network of an exec or mcp tool that declares `egress`, in the local sandbox.
//!
//! The sandbox gets its own network namespace with only `lo` — no route to the host or anywhere else.
//! Its init opens a listener on the sandbox's `127.0.0.1:`[`PORT`] and hands it (SCM_RIGHTS) to the
//! sandbox process, which stays in the host's network namespace and serves it as an HTTP proxy: `CONNECT
//! host:port` (HTTPS and any TCP) and absolute-form `GET http://host/...` requests. Each destination is
//! resolved on the host and checked against the tool's `egress` (CIDR and ports, the same check as the
//! `http` runtime, except that a broad CIDR does not open the host's loopback, private, shared or
//! link-local ranges: see `egress::allowed_narrowly`) before a connection is made; refused ones get `403`
//! with the reason. Tools get
//! `HTTP_PROXY`/`HTTPS_PROXY` (and the lowercase forms) pointing at it; a program that ignores them
//! reaches nothing.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::spec::Egress;

/// The proxy's port on the sandbox's loopback.
pub const PORT: u16 = 3128;
/// The environment variable serve finds the proxy's URL in (set by the sandbox's init).
pub const ENV: &str = "TOOLWARDEN_EGRESS_PROXY";
/// Connections served at once; more get `503`.
const MAX_CONNECTIONS: usize = 64;
/// Longest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// Time for a client to send its request head, and for a destination to accept.
const TIMEOUT: Duration = Duration::from_secs(10);

pub fn url() -> String {
    format!("http://127.0.0.1:{PORT}")
}

/// Sends `fd` over the unix socket `via`.
pub fn send_fd(via: &OwnedFd, fd: &impl AsRawFd) -> std::io::Result<()> {
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // SAFETY: a msghdr over our own buffers; CMSG_* macros stay within `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
        if libc::sendmsg(via.as_raw_fd(), &msg, 0) != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives a descriptor sent with [`send_fd`]; `None` when the peer closed without sending one.
pub fn recv_fd(via: &OwnedFd) -> std::io::Result<Option<OwnedFd>> {
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // SAFETY: as in send_fd; the received descriptor is owned from here on.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(via.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n == 0 || cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

/// Serves the proxy on `listener` (in the sandbox's network namespace) from a thread of this process
/// (in the host's), until the process exits.
pub fn serve(listener: OwnedFd, egress: Vec<Egress>) {
    let listener = TcpListener::from(listener);
    let egress = Arc::new(egress);
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::SeqCst);
                answer(&client, "503 Service Unavailable", &format!("more than {MAX_CONNECTIONS} connections at once"));
                continue;
            }
            let (egress, open) = (egress.clone(), open.clone());
            std::thread::spawn(move || {
                handle(client, &egress);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

fn answer(mut client: &TcpStream, status: &str, why: &str) {
    let body = format!("toolwarden egress proxy: {why}\n");
    // One write: `write!` on a socket sends each formatted piece as its own segment, and a client that
    // reads the status line with one recv would see half of it.
    let answer = format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = client.write_all(answer.as_bytes());
}

/// What a request asks for: the destination, and the bytes to send it first (none for CONNECT).
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub host: String,
    pub port: u16,
    pub connect: bool,
    /// The request rewritten for the destination (origin-form), with any body bytes already read.
    pub forward: Vec<u8>,
}

/// Parses a request head (`head` ends with the blank line; `rest` is what followed it).
pub fn parse(head: &str, rest: &[u8]) -> Result<Request, String> {
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(format!("not an HTTP request line: {:?}", line.chars().take(100).collect::<String>()));
    };
    if method == "CONNECT" {
        let (host, port) = split_host_port(target, None)?;
        return Ok(Request { host, port, connect: true, forward: Vec::new() });
    }
    let Some(after) = target.strip_prefix("http://") else {
        return Err(format!("{method} {target}: only CONNECT and absolute http:// requests go through this proxy"));
    };
    let (authority, path) = after.split_at(after.find('/').unwrap_or(after.len()));
    let (host, port) = split_host_port(authority, Some(80))?;
    let mut forward = format!("{method} {} {version}\r\n", if path.is_empty() { "/" } else { path }).into_bytes();
    for header in lines.filter(|h| !h.is_empty() && !h.to_ascii_lowercase().starts_with("proxy-")) {
        forward.extend_from_slice(header.as_bytes());
        forward.extend_from_slice(b"\r\n");
    }
    forward.extend_from_slice(b"\r\n");
    forward.extend_from_slice(rest);
    Ok(Request { host, port, connect: false, forward })
}

fn split_host_port(authority: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("`{authority}` is not host:port");
    if authority.contains('@') {
        return Err(format!("`{authority}`: user info is not accepted"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
        _ => (authority, None),
    };
    let port = port.or(default).ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The first resolved address of `host:port` that `egress` allows, or the refusal sentence.
pub fn destination(host: &str, port: u16, egress: &[Egress]) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
    addrs.iter().copied().find(|a| crate::egress::allowed_narrowly(egress, *a)).ok_or_else(|| {
        let declared: Vec<String> =
            egress.iter().map(|e| if e.ports.is_empty() { e.cidr.clone() } else { format!("{} ports {:?}", e.cidr, e.ports) }).collect();
        let seen: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        format!("{host}:{port} ({}) is not a destination this tool declares (egress: {})", seen.join(", "), declared.join("; "))
    })
}

fn handle(mut client: TcpStream, egress: &[Egress]) {
    let _ = client.set_read_timeout(Some(TIMEOUT));
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buffer.len() > MAX_HEAD {
            return answer(&client, "431 Request Header Fields Too Large", "the request head is too long");
        }
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..end - 4]).into_owned();
    let request = match parse(&head, &buffer[end..]) {
        Ok(r) => r,
        Err(why) => return answer(&client, "400 Bad Request", &why),
    };
    let addr = match destination(&request.host, request.port, egress) {
        Ok(a) => a,
        Err(why) => {
            eprintln!("toolwarden-worker sandbox: egress proxy refused {why}");
            return answer(&client, "403 Forbidden", &why);
        }
    };
    let mut upstream = match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(s) => s,
        Err(e) => return answer(&client, "502 Bad Gateway", &format!("{}:{} ({addr}): {e}", request.host, request.port)),
    };
    let _ = client.set_read_timeout(None);
    let ready = if request.connect {
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
    } else {
        upstream.write_all(&request.forward)
    };
    if ready.is_err() {
        return;
    }
    relay(client, upstream);
}

/// Copies both ways until both sides are done.
fn relay(client: TcpStream, upstream: TcpStream) {
    let (Ok(client_read), Ok(upstream_write)) = (client.try_clone(), upstream.try_clone()) else { return };
    let out = std::thread::spawn(move || copy(client_read, upstream_write));
    copy(upstream, client);
    let _ = out.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_into_a_destination_and_what_to_forward() {
        let connect = parse("CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443", b"").unwrap();
        assert_eq!((connect.host.as_str(), connect.port, connect.connect), ("api.example.test", 443, true));
        let get = parse("GET http://[::1]:8080/a?b=1 HTTP/1.1\r\nHost: [::1]:8080\r\nProxy-Connection: keep-alive", b"body").unwrap();
        assert_eq!((get.host.as_str(), get.port), ("::1", 8080));
        assert_eq!(String::from_utf8(get.forward).unwrap(), "GET /a?b=1 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\nbody");
        assert_eq!(parse("GET http://h.test HTTP/1.1", b"").unwrap().forward, b"GET / HTTP/1.1\r\n\r\n");
        assert!(parse("GET /relative HTTP/1.1", b"").unwrap_err().contains("only CONNECT"));
        assert!(parse("CONNECT user@h.test:443 HTTP/1.1", b"").unwrap_err().contains("user info"));
        assert!(parse("CONNECT h.test HTTP/1.1", b"").is_err(), "CONNECT needs a port");
        assert!(parse("garbage", b"").is_err());
    }

    #[test]
    fn destinations_outside_egress_are_refused_with_what_was_declared() {
        let egress = [Egress { cidr: "127.0.0.1/32".into(), ports: vec![8443] }];
        assert_eq!(destination("127.0.0.1", 8443, &egress).unwrap(), "127.0.0.1:8443".parse().unwrap());
        let refused = destination("127.0.0.1", 22, &egress).unwrap_err();
        assert!(refused.contains("127.0.0.1:22") && refused.contains("127.0.0.1/32 ports [8443]"), "{refused}");
        let any = [Egress { cidr: "0.0.0.0/0".into(), ports: vec![] }];
        assert!(destination("127.0.0.1", 8443, &any).is_err(), "a broad CIDR does not open the host's loopback");
    }
}
