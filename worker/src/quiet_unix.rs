//! A unix stream that wakes its task only for what it waits for.
//!
//! tokio registers a `UnixStream` for reading and writing at once. A unix socket signals "writable"
//! every time its peer reads, so each request or answer read by the other side wakes this side for
//! nothing: one more sleep and wake-up per call, on both the gateway's and the worker's side of the
//! worker protocol. A TCP socket signals it only after a writer ran out of buffer space, so worker
//! pods do not have this cost.
//!
//! [`QuietUnixStream`] registers the socket for readability only and writes straight to it. Only when
//! the socket buffer is full does a write wait, through a second descriptor of the same socket that is
//! registered for writability for as long as that wait lasts.

use std::io::{self, IoSlice, Write as _};
use std::net::Shutdown;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub struct QuietUnixStream {
    stream: AsyncFd<UnixStream>,
    /// A duplicate of the socket's descriptor, registered for writability while a write waits for room.
    room: Option<AsyncFd<OwnedFd>>,
}

impl QuietUnixStream {
    /// Takes over a connected stream (made non-blocking here). Must run inside a tokio runtime.
    pub fn new(stream: UnixStream) -> io::Result<QuietUnixStream> {
        stream.set_nonblocking(true)?;
        // SAFETY: the stream owns its descriptor, open and unchanged for as long as it is registered.
        let stream = unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(QuietUnixStream { stream, room: None })
    }

    /// Takes over a tokio stream (its own registration is dropped first).
    pub fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<QuietUnixStream> {
        QuietUnixStream::new(stream.into_std()?)
    }

    fn poll_write_with(&mut self, cx: &mut Context<'_>, mut write: impl FnMut(&UnixStream) -> io::Result<usize>) -> Poll<io::Result<usize>> {
        loop {
            match write(self.stream.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                done => {
                    // Deregistered: no more wake-ups for room nobody waits for.
                    self.room = None;
                    return Poll::Ready(done);
                }
            }
            if self.room.is_none() {
                // Registering reports the socket writable at once if room appeared since the write
                // above, so no wake-up is lost.
                let fd = self.stream.get_ref().as_fd().try_clone_to_owned()?;
                // SAFETY: as in `new`: `fd` owns its descriptor for as long as it is registered.
                self.room = Some(unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }.map_err(io::Error::from)?);
            }
            let Some(room) = &self.room else { unreachable!("registered just above") };
            let mut ready = ready!(room.poll_write_ready(cx))?;
            ready.clear_ready();
        }
    }
}

impl AsyncRead for QuietUnixStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.stream.poll_read_ready(cx))?;
            // SAFETY: read(2) writes at most `unfilled.len()` bytes into memory we own, and only the
            // `n` bytes it reports are marked initialised.
            let unfilled = unsafe { buf.unfilled_mut() };
            let read = ready.try_io(|stream| {
                let n = unsafe { libc::read(stream.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
            });
            match read {
                Ok(Ok(n)) => {
                    if n > 0 && n < unfilled.len() {
                        // A short read drained the socket: wait for the next event instead of a read that
                        // would only fail with EAGAIN (as tokio's own streams do). An event that came
                        // meanwhile is kept: the guard clears only the readiness it saw.
                        ready.clear_ready();
                    }
                    // SAFETY: read(2) initialised these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Would block: the readiness was cleared; wait for the next.
                Err(_) => continue,
            }
        }
    }
}

impl AsyncWrite for QuietUnixStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut stream| stream.write(buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut stream| stream.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn pair() -> (QuietUnixStream, QuietUnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (QuietUnixStream::new(a).unwrap(), QuietUnixStream::new(b).unwrap())
    }

    /// The epoll event masks this process has registered for file descriptor `fd`
    /// (`/proc/self/fdinfo` of every epoll instance lists its `tfd`s and their `events`).
    fn epoll_masks(fd: i32) -> Vec<u32> {
        let mut masks = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            if !std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().contains("eventpoll")) {
                continue;
            }
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy())) else { continue };
            for line in info.lines() {
                let mut words = line.split_whitespace();
                if words.next() == Some("tfd:") && words.next().and_then(|n| n.parse::<i32>().ok()) == Some(fd) {
                    let events = words.skip_while(|w| *w != "events:").nth(1).unwrap();
                    masks.push(u32::from_str_radix(events, 16).unwrap());
                }
            }
        }
        masks
    }

    #[tokio::test]
    async fn the_socket_is_registered_for_reading_only_so_the_peers_reads_do_not_wake_it() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let quiet = QuietUnixStream::new(a).unwrap();
        // tokio's driver holds its epoll instance under two descriptors: each entry shows twice.
        let masks = epoll_masks(fd);
        assert!(!masks.is_empty(), "registered");
        for mask in &masks {
            assert_eq!(mask & libc::EPOLLIN as u32, libc::EPOLLIN as u32, "registered for reading: {mask:x}");
            assert_eq!(mask & libc::EPOLLOUT as u32, 0, "not for writability: {mask:x}");
        }
        drop(quiet);
        // What this avoids: tokio's own stream is registered for both.
        let plain = tokio::net::UnixStream::from_std({
            b.set_nonblocking(true).unwrap();
            b
        })
        .unwrap();
        let masks = epoll_masks(plain.as_raw_fd());
        assert!(!masks.is_empty() && masks.iter().all(|m| m & libc::EPOLLOUT as u32 != 0), "{masks:x?}");
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_shutdown_ends_the_peers_reads() {
        let (mut a, mut b) = pair();
        a.write_all(b"request").await.unwrap();
        let mut buf = [0u8; 7];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"request");
        b.write_all(b"answer").await.unwrap();
        b.shutdown().await.unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"answer");
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_waits_for_room_and_loses_nothing() {
        let (mut a, mut b) = pair();
        let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = big.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&big).await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        // Let the writer fill the buffer and wait before anything is read.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes arrive in order");
        let a = writer.await.unwrap();
        assert!(a.room.is_none(), "the wait for room ends with the write");
    }
}
