//! A connection's socket after the upgrade, shared by its reader (reads), its writer
//! (writes, shutdown) and, for plain TCP, its outbox (direct sends from the broker's
//! flusher). A TLS connection's socket is `tls_socket.rs`; this type dispatches with one
//! `match`, so the plain path costs no indirection (ADR 005).
//!
//! The writer's writes go through tokio's readiness (`try_io`): a write that finds the
//! socket full clears tokio's writable flag, so `writable()` then truly waits for room.
//! Direct sends skip that check (one cache miss per delivery at a low rate): when one finds
//! the socket full, the outbox wakes the writer, whose own attempt then clears the flag
//! before it waits. Writes use `send`/`sendmsg` on the socket rather than `write`/`writev`:
//! the same bytes without the VFS layer's file lookup and position lock, which is
//! measurable at one send per delivery.

use std::io::{self, IoSlice};
use std::net::Shutdown;

use bytes::{Bytes, BytesMut};
use herald_broker::DirectSocket;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::tls_socket::TlsSocket;

/// See the module docs.
pub enum Socket {
    Plain(TcpStream),
    /// Boxed: rustls' connection state is over a kilobyte, which a plain connection's
    /// socket must not carry.
    Tls(Box<TlsSocket>),
}

impl Socket {
    pub fn new(stream: TcpStream) -> Self {
        Self::Plain(stream)
    }

    /// Takes the connection back from hyper after the upgrade: the socket and the bytes
    /// that arrived with the request (plaintext, for TLS). `None` for an I/O type the
    /// listener never produces.
    pub fn from_upgraded(upgraded: Upgraded) -> Option<(Self, Bytes)> {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => return Some((Self::Plain(parts.io.into_inner()), parts.read_buf)),
            Err(u) => u,
        };
        let parts = upgraded
            .downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>()
            .ok()?;
        let (tcp, conn) = parts.io.into_inner().into_inner();
        let tls = TlsSocket::new(tcp, conn);
        let mut prefix = BytesMut::from(&parts.read_buf[..]);
        // Decrypted by rustls but not yet taken by hyper: no readiness would announce it,
        // nor a close_notify (or a bad record) that came with it; the socket remembers
        // those, and the reader's first wait after the prefix finds them.
        tls.take_buffered(&mut prefix);
        Some((Self::Tls(Box::new(tls)), prefix.freeze()))
    }

    pub fn stream(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => t.stream(),
        }
    }

    /// Whether the broker's flusher may write to this socket directly (plain TCP only).
    pub fn direct_sends(&self) -> bool {
        matches!(self, Self::Plain(_))
    }

    /// Waits until the socket has bytes (or an error) to read; for TLS, also returns when
    /// the stream's end is known already (close_notify, a TLS error).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.readable().await,
            Self::Tls(t) => t.readable().await,
        }
    }

    /// Reads what is there now into `buf` (plaintext for TLS): `Ok(0)` at the end of the
    /// stream, `WouldBlock` when nothing (no whole TLS record) is there.
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.try_read_buf(buf),
            Self::Tls(t) => t.try_read_buf(buf),
        }
    }

    /// Writes as much of `bufs` as the socket takes now (`WouldBlock` when none).
    pub fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.try_io(Interest::WRITABLE, || send_now(s, bufs)),
            Self::Tls(t) => t.try_write(bufs),
        }
    }

    /// True while written bytes still wait inside the process (TLS records the socket did
    /// not take yet): the writer flushes them before it calls a batch written.
    pub fn pending(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls(t) => t.pending(),
        }
    }

    /// Waits until nothing [`Socket::pending`] is left.
    pub async fn flush(&self) -> io::Result<()> {
        let Self::Tls(t) = self else { return Ok(()) };
        loop {
            match t.try_flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => t.stream().writable().await?,
                r => return r,
            }
        }
    }

    /// Writes some of `bufs`, waiting until the socket takes any; returns how many bytes.
    pub async fn write_some(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            self.stream().writable().await?;
            match self.try_write(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Writes all of `buf` (and whatever TLS still held), waiting for room as needed.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_some(&[IoSlice::new(buf)]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        self.flush().await
    }

    /// Ends this side: TLS close_notify first (TLS), then FIN.
    pub async fn shutdown_write(&self) -> io::Result<()> {
        if let Self::Tls(t) = self {
            t.close_notify();
            self.flush().await?;
        }
        SockRef::from(self.stream()).shutdown(Shutdown::Write)
    }
}

/// Whether a read failed on a TLS protocol error (a bad record, a fatal alert from the
/// peer), as opposed to the connection failing.
pub fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// The send itself, outside tokio's readiness tracking.
fn send_now(s: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let sock = SockRef::from(s);
    match bufs {
        [one] => sock.send(one),
        _ => sock.send_vectored(bufs),
    }
}

impl DirectSocket for Socket {
    fn try_send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => send_now(s, bufs),
            // Never attached (see `direct_sends`); were it, the writer would be woken.
            Self::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}
