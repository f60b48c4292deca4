//! A TLS session's socket after the upgrade: the TCP stream and its rustls
//! `ServerConnection`, which the reader (decrypts) and the writer (encrypts) share behind a
//! per-connection std mutex held only around synchronous rustls calls and non-blocking
//! system calls, never across an `.await` (ADR 005).
//!
//! Readiness stays tokio's: every system call runs inside `try_io`, so a call that finds the
//! socket empty (read) or full (write) clears tokio's flag and `readable()`/`writable()` then
//! truly wait. Encrypted bytes rustls could not hand to a full socket stay in its send buffer
//! (capped at [`SEND_BUFFER`]); the next write sends them first, and [`TlsSocket::pending`]
//! tells the writer to wait for them before it considers a batch written.
//!
//! Not here: direct sends from the broker's flusher. A TLS connection's outbox has no socket
//! attached, so the flusher wakes its writer instead (ADR 005 says why).

use std::io::{self, IoSlice, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use rustls::ServerConnection;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Encrypted bytes rustls holds for a full socket before it takes no more plaintext.
const SEND_BUFFER: usize = 64 * 1024;

/// The raw TCP socket as std I/O for rustls (one `recv`/`send` per call, non-blocking).
struct Raw<'a>(&'a TcpStream);

impl Read for Raw<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*SockRef::from(self.0)).read(buf)
    }
}

impl Write for Raw<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        SockRef::from(self.0).send(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        SockRef::from(self.0).send_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// See the module docs.
pub struct TlsSocket {
    tcp: TcpStream,
    conn: Mutex<ServerConnection>,
    /// Set once rustls saw the peer's close_notify or a TLS error: the stream's end is
    /// known without the socket becoming readable again (the peer may keep TCP open), so
    /// [`TlsSocket::readable`] returns at once and the next read reports it.
    ended: AtomicBool,
}

/// Sends what rustls holds until it holds nothing (`Ok`) or the socket is full
/// (`WouldBlock`).
fn send_pending(conn: &mut ServerConnection, tcp: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        if conn.write_tls(&mut Raw(tcp))? == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// Moves every decrypted byte rustls holds to the end of `buf`; returns how many, and
/// whether the peer sent close_notify.
fn take_plaintext(conn: &mut ServerConnection, buf: &mut BytesMut) -> io::Result<(usize, bool)> {
    let state = conn
        .process_new_packets()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let available = state.plaintext_bytes_to_read();
    if available == 0 {
        return Ok((0, state.peer_has_closed()));
    }
    let start = buf.len();
    buf.resize(start + available, 0);
    let mut got = 0;
    while got < available {
        match conn.reader().read(&mut buf[start + got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                buf.truncate(start + got);
                return Err(e);
            }
        }
    }
    buf.truncate(start + got);
    Ok((got, state.peer_has_closed()))
}

impl TlsSocket {
    /// Takes over a connection whose handshake (and HTTP upgrade) is done.
    pub fn new(tcp: TcpStream, mut conn: ServerConnection) -> Self {
        conn.set_buffer_limit(Some(SEND_BUFFER));
        Self {
            tcp,
            conn: Mutex::new(conn),
            ended: AtomicBool::new(false),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.tcp
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the plaintext rustls decrypted already (read with the upgrade request, past
    /// what hyper took) to the end of `buf`. A close_notify or a TLS error found with it
    /// is not lost: the reader's next wait returns at once and its read reports it.
    pub fn take_buffered(&self, buf: &mut BytesMut) {
        self.take(&mut self.lock(), buf).ok();
    }

    /// [`take_plaintext`], remembering an end or error in `ended`.
    fn take(&self, conn: &mut ServerConnection, buf: &mut BytesMut) -> io::Result<(usize, bool)> {
        let r = take_plaintext(conn, buf);
        if !matches!(r, Ok((_, false))) {
            self.ended.store(true, Ordering::Release);
        }
        r
    }

    /// Waits until the socket has bytes to read, or returns at once when the end (or an
    /// error) of the TLS stream is already known.
    pub async fn readable(&self) -> io::Result<()> {
        if self.ended.load(Ordering::Acquire) {
            return Ok(());
        }
        self.tcp.readable().await
    }

    /// Reads and decrypts what the socket holds now, appending the plaintext to `buf`:
    /// `Ok(0)` at the end of the stream (close_notify or FIN), `WouldBlock` when no whole
    /// record is there yet. Answers rustls owes the peer (a key update, an alert) are sent
    /// if the socket takes them; otherwise the next write sends them.
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut conn = self.lock();
        let conn = &mut *conn;
        let result = (|| loop {
            let (n, closed) = self.take(conn, buf)?;
            if n > 0 || closed {
                return Ok(n);
            }
            let read = self
                .tcp
                .try_io(Interest::READABLE, || conn.read_tls(&mut Raw(&self.tcp)))?;
            if read == 0 {
                return self.take(conn, buf).map(|(n, _)| n);
            }
        })();
        if conn.wants_write() {
            let _ = self.tcp.try_io(Interest::WRITABLE, || send_pending(conn, &self.tcp));
        }
        result
    }

    /// Encrypts as much of `bufs` as rustls takes once what it holds went out, and sends
    /// what the socket takes; returns how many plaintext bytes were taken (`WouldBlock`
    /// when the socket is full with older bytes).
    pub fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut conn = self.lock();
        let conn = &mut *conn;
        self.tcp.try_io(Interest::WRITABLE, || {
            send_pending(conn, &self.tcp)?;
            let n = conn.writer().write_vectored(bufs)?;
            match send_pending(conn, &self.tcp) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                // The rest waits in rustls for the next call.
                _ => Ok(n),
            }
        })
    }

    /// True while rustls holds encrypted bytes the socket did not take yet.
    pub fn pending(&self) -> bool {
        self.lock().wants_write()
    }

    /// Sends what rustls holds now (`WouldBlock` when the socket is full).
    pub fn try_flush(&self) -> io::Result<()> {
        let mut conn = self.lock();
        self.tcp
            .try_io(Interest::WRITABLE, || send_pending(&mut conn, &self.tcp))
    }

    /// Queues the TLS close_notify alert (sent by the next flush).
    pub fn close_notify(&self) {
        self.lock().send_close_notify();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;

    use super::super::socket::Socket;
    use super::*;

    /// A finished handshake over loopback: our side as a session socket, and the client.
    async fn pair() -> (Socket, tokio_rustls::client::TlsStream<TcpStream>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(ck.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, _) = l.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(tcp)
                .await
                .unwrap()
        };
        let (c, s) = tokio::join!(connect, accept);
        let (tcp, conn) = s.into_inner();
        (Socket::Tls(Box::new(TlsSocket::new(tcp, conn))), c)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_a_full_socket_did_not_take_are_flushed_then_close_notify_ends_the_stream() {
        let (sock, mut client) = pair().await;
        // The client reads nothing: write until the socket and rustls' buffer are full.
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut taken = 0usize;
        loop {
            match sock.try_write(&[IoSlice::new(&chunk)]) {
                Ok(n) => {
                    assert!(n > 0);
                    taken += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(sock.pending(), "a full socket leaves records in rustls");
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut all = Vec::new();
            // Ok(_) only after close_notify: a bare FIN would be an UnexpectedEof error.
            client.read_to_end(&mut all).await.map(|_| all)
        });
        tokio::time::timeout(Duration::from_secs(10), sock.flush())
            .await
            .unwrap()
            .unwrap();
        assert!(!sock.pending());
        sock.shutdown_write().await.unwrap();
        let all = reader.await.unwrap().expect("a clean TLS end (close_notify)");
        assert_eq!(all.len(), taken, "every byte rustls took arrived");
        assert!(all.chunks(chunk.len()).all(|c| c == &chunk[..c.len()]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reader_gets_every_decrypted_byte_and_the_end_of_the_stream() {
        use tokio::io::AsyncWriteExt;
        let (sock, mut client) = pair().await;
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let body = sent.clone();
        // Kept until the end: dropping the client with unread bytes (its session tickets)
        // would reset the connection.
        let writer = tokio::spawn(async move {
            client.write_all(&body).await.unwrap();
            client.shutdown().await.unwrap(); // close_notify, then FIN
            client
        });
        let mut buf = BytesMut::new();
        // Bounded: a reader that misses a byte or the end must fail, not hang.
        let read_all = async {
            loop {
                sock.readable().await.unwrap();
                match sock.try_read_buf(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read_all)
            .await
            .unwrap_or_else(|_| panic!("not at the end after 10 s"));
        assert!(buf[..] == sent[..]);
        drop(writer.await.unwrap());
    }
}
