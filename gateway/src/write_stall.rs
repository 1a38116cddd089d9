//! Connections whose client stopped reading: closed once it has accepted no byte for a while.
//!
//! An answer is written as fast as the client reads it. A client that never reads (a bug, or an attack:
//! open connections, ask for large results, read nothing) fills its receive buffer and the gateway's
//! send buffer; from then on the gateway's write waits, and without a bound it waits forever, holding
//! the connection's task, its file descriptor and the rest of the answer in memory. Enough such
//! connections exhaust the file descriptors and nobody can connect any more. hyper has no write
//! timeout, so the stream under it has one: a write (or flush) that has made no progress for
//! `timeout` fails, hyper drops the connection, and the socket is reset at once (`SO_LINGER` 0) so the
//! kernel does not keep the unsent bytes either.
//!
//! A slow client that keeps reading is never cut: each byte accepted starts the clock again. The call
//! behind an answer is not affected either: it ended (and was audited) before its answer was written.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// What a stalled connection does to the rest of the gateway: counted and logged once.
pub type OnStall = Arc<dyn Fn(Option<std::net::SocketAddr>) + Send + Sync>;

/// A TCP stream whose writes fail after `timeout` without progress.
pub struct WriteStallGuard {
    stream: TcpStream,
    timeout: Duration,
    /// Armed while a write is waiting for room; reset by any progress.
    stalled_since: Option<Pin<Box<Sleep>>>,
    on_stall: OnStall,
    tripped: bool,
}

impl WriteStallGuard {
    pub fn new(stream: TcpStream, timeout: Duration, on_stall: OnStall) -> WriteStallGuard {
        WriteStallGuard { stream, timeout, stalled_since: None, on_stall, tripped: false }
    }

    /// What a write that returned `result` means once the clock is taken into account.
    fn check<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            // Progress (or an error of the socket's own): the client is reading.
            self.stalled_since = None;
            return result;
        }
        let timeout = self.timeout;
        let timer = self.stalled_since.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        ready!(timer.as_mut().poll(cx));
        if !self.tripped {
            self.tripped = true;
            (self.on_stall)(self.stream.peer_addr().ok());
            // Reset rather than close: the unsent bytes are dropped instead of lingering in the kernel.
            let _ = self.stream.set_zero_linger();
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client accepted no data for {} s", timeout.as_secs_f64()),
        )))
    }
}

impl AsyncRead for WriteStallGuard {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStallGuard {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.check(cx, result)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.check(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.check(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A connected pair with small socket buffers, so that a client that does not read stalls the
    /// server's writes after a few kilobytes.
    async fn pair() -> (TcpStream, TcpStream) {
        let listening = tokio::net::TcpSocket::new_v4().unwrap();
        listening.set_send_buffer_size(16 * 1024).unwrap();
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listening.listen(8).unwrap();
        let connecting = tokio::net::TcpSocket::new_v4().unwrap();
        connecting.set_recv_buffer_size(16 * 1024).unwrap();
        let client = connecting.connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    fn counting() -> (OnStall, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        (Arc::new(move |_| { c.fetch_add(1, Ordering::SeqCst); }), count)
    }

    #[tokio::test]
    async fn a_client_that_never_reads_gets_its_connection_closed_and_counted() {
        let (server, client) = pair().await;
        let (on_stall, stalls) = counting();
        let mut guarded = WriteStallGuard::new(server, Duration::from_millis(300), on_stall);
        let chunk = vec![b'a'; 64 * 1024];
        let started = std::time::Instant::now();
        let error = loop {
            if let Err(e) = guarded.write_all(&chunk).await {
                break e;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the write never stalled");
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(stalls.load(Ordering::SeqCst), 1);
        drop(client);
    }

    #[tokio::test]
    async fn a_slow_reader_is_not_cut() {
        let (server, mut client) = pair().await;
        let (on_stall, stalls) = counting();
        let mut guarded = WriteStallGuard::new(server, Duration::from_millis(300), on_stall);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(30)).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        // Far more than the socket buffers hold, read in pieces with pauses shorter than the timeout.
        let data = vec![b'a'; 512 * 1024];
        guarded.write_all(&data).await.expect("a reading client is never cut");
        guarded.shutdown().await.unwrap();
        drop(guarded);
        assert_eq!(reader.await.unwrap(), data.len());
        assert_eq!(stalls.load(Ordering::SeqCst), 0);
    }
}
