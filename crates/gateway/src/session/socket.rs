//! A connection's TCP socket after the upgrade, shared by its reader (reads), its writer
//! (writes, shutdown) and its outbox (direct sends from the broker's flusher).
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

use herald_broker::DirectSocket;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// See the module docs.
pub struct Socket(TcpStream);

impl Socket {
    pub fn new(stream: TcpStream) -> Self {
        Self(stream)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.0
    }

    /// Writes as much of `bufs` as the socket takes now (`WouldBlock` when none).
    pub fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_io(Interest::WRITABLE, || self.send_now(bufs))
    }

    /// The send itself, outside tokio's readiness tracking.
    fn send_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let sock = SockRef::from(&self.0);
        match bufs {
            [one] => sock.send(one),
            _ => sock.send_vectored(bufs),
        }
    }

    /// Writes some of `bufs`, waiting until the socket takes any; returns how many bytes.
    pub async fn write_some(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            self.0.writable().await?;
            match self.try_write(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Writes all of `buf`, waiting for room as needed.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_some(&[IoSlice::new(buf)]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    /// Sends FIN: no more bytes from this side.
    pub fn shutdown_write(&self) -> io::Result<()> {
        SockRef::from(&self.0).shutdown(Shutdown::Write)
    }
}

impl DirectSocket for Socket {
    fn try_send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_now(bufs)
    }
}
