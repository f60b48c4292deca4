//! One client connection before and around the hot path: TCP connect (optionally from a
//! chosen source address), the HTTP/1.1 upgrade with its `Sec-WebSocket-Accept` check,
//! subscribing with an acknowledgement, answering pings, and closing.
//!
//! A connection owns one growable read buffer ([`ReadBuf`]): it starts small (idle
//! connections stay cheap) and doubles when a read fills it, so busy subscribers read in
//! large batches. The hot receive loop itself is in `subscriber.rs`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::frame::{self, FrameWriter, Parsed, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use super::target::Target;

/// A read buffer with a consumed prefix `[..start]`, data `[start..end]` and free space.
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

impl ReadBuf {
    pub fn new(initial: usize, max: usize) -> Self {
        Self {
            buf: vec![0; initial.max(64)],
            start: 0,
            end: 0,
            max: max.max(initial),
        }
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Capacity in bytes (for reports and tests).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Makes room for a frame of `need` bytes in total, growing past `max` only as far as
    /// such a frame requires.
    pub fn reserve_frame(&mut self, need: usize) {
        if need > self.buf.len() {
            self.compact();
            self.buf.resize(need.next_power_of_two(), 0);
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// One `read` into the free space; `Ok(0)` is end of stream. Compacts when the tail is
    /// short and doubles the buffer (up to `max`) when a read filled all of it.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        let len = self.buf.len();
        if self.start > 0 && len - self.end < len / 4 {
            self.compact();
        }
        if self.end == len {
            self.buf.resize(len * 2, 0);
        }
        let free = self.buf.len() - self.end;
        let n = r.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        if n == free && self.buf.len() < self.max {
            let grown = (self.buf.len() * 2).min(self.max);
            self.buf.resize(grown, 0);
        }
        Ok(n)
    }
}

/// Why a connection could not be set up; [`ConnectError::label`] is the report's key.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(io::Error),
    /// The upgrade was answered with this HTTP status instead of 101.
    Status(u16),
    Handshake(&'static str),
    /// The node answered a subscribe with an error frame.
    Refused(String),
    Closed,
}

impl ConnectError {
    pub fn label(&self) -> String {
        match self {
            Self::Timeout => "timeout".into(),
            Self::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => "connection refused".into(),
                io::ErrorKind::ConnectionReset => "connection reset".into(),
                io::ErrorKind::AddrNotAvailable => "no free local port (EADDRNOTAVAIL)".into(),
                io::ErrorKind::AddrInUse => "local address in use".into(),
                _ => match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) => "too many open files".into(),
                    _ => format!("i/o: {:?}", e.kind()),
                },
            },
            Self::Status(s) => format!("http {s}"),
            Self::Handshake(why) => format!("bad handshake: {why}"),
            Self::Refused(_) => "subscribe refused".into(),
            Self::Closed => "closed during setup".into(),
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// An open WebSocket connection.
pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: ReadBuf,
    pub wr: FrameWriter,
    /// The last subscribe ack's text (see [`Conn::subscribe_with`]).
    pub ack: Option<Vec<u8>>,
}

/// Sizes of a connection's read buffer.
#[derive(Debug, Clone, Copy)]
pub struct BufSizes {
    pub initial: usize,
    pub max: usize,
}

/// TCP connect from `source` (port chosen by the kernel) or the default address.
async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The `Sec-WebSocket-Accept` a node must answer to `key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    STANDARD.encode(sha.finalize())
}

/// Connects to `target` with request target `path` and upgrades, within `timeout`.
pub async fn connect(
    target: &Target,
    path: &str,
    source: Option<IpAddr>,
    bufs: BufSizes,
    seed: u64,
    timeout: Duration,
) -> Result<Conn, ConnectError> {
    connect_with_headers(target, path, "", source, bufs, seed, timeout).await
}

/// [`connect`] with extra request header lines (each ending in `\r\n`), e.g. a bearer token.
pub async fn connect_with_headers(
    target: &Target,
    path: &str,
    headers: &str,
    source: Option<IpAddr>,
    bufs: BufSizes,
    seed: u64,
    timeout: Duration,
) -> Result<Conn, ConnectError> {
    tokio::time::timeout(timeout, connect_inner(target, path, headers, source, bufs, seed))
        .await
        .map_err(|_| ConnectError::Timeout)?
}

async fn connect_inner(
    target: &Target,
    path: &str,
    headers: &str,
    source: Option<IpAddr>,
    bufs: BufSizes,
    seed: u64,
) -> Result<Conn, ConnectError> {
    let mut stream = tcp_connect(target.addr, source).await?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut key_bytes = [0u8; 16];
    rng.fill_bytes(&mut key_bytes);
    let key = STANDARD.encode(key_bytes);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n",
        target.host
    );
    stream.write_all(req.as_bytes()).await?;

    // The response head may arrive with the first frames behind it: they stay buffered.
    let mut rbuf = ReadBuf::new(bufs.initial.max(1024), bufs.max);
    let head_len = loop {
        if let Some(i) = rbuf.data().windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if rbuf.data().len() > 16 * 1024 {
            return Err(ConnectError::Handshake("response head too long"));
        }
        if rbuf.fill(&mut stream).await? == 0 {
            return Err(ConnectError::Closed);
        }
    };
    let head = std::str::from_utf8(&rbuf.data()[..head_len]).map_err(|_| ConnectError::Handshake("not UTF-8"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ConnectError::Handshake("no status line"))?;
    if status != 101 {
        return Err(ConnectError::Status(status));
    }
    let accept = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim())
    });
    if accept != Some(accept_key(&key).as_str()) {
        return Err(ConnectError::Handshake("wrong Sec-WebSocket-Accept"));
    }
    rbuf.consume(head_len);
    if bufs.initial < rbuf.capacity() && rbuf.data().is_empty() {
        rbuf = ReadBuf::new(bufs.initial, bufs.max);
    }
    Ok(Conn {
        stream,
        rbuf,
        wr: FrameWriter::new(rng),
        ack: None,
    })
}

impl Conn {
    /// Writes whatever frames are in the frame writer's buffer.
    pub async fn flush_frames(&mut self) -> io::Result<()> {
        if !self.wr.buf.is_empty() {
            self.stream.write_all(&self.wr.buf).await?;
            self.wr.clear();
        }
        Ok(())
    }

    /// Reads until a text frame for which `done` returns true; answers pings, skips other
    /// text frames (the welcome). For setup only: not the hot path.
    pub async fn read_until(
        &mut self,
        mut done: impl FnMut(&[u8]) -> Result<bool, ConnectError>,
    ) -> Result<(), ConnectError> {
        loop {
            while let Some((op, payload)) = self.next_buffered()? {
                match op {
                    OP_TEXT if done(&payload)? => return Ok(()),
                    OP_PING => {
                        self.wr.push(OP_PONG, &[&payload]);
                        self.flush_frames().await?;
                    }
                    OP_CLOSE => return Err(ConnectError::Closed),
                    _ => {}
                }
            }
            if self.rbuf.fill(&mut self.stream).await? == 0 {
                return Err(ConnectError::Closed);
            }
        }
    }

    /// The next complete frame already in the buffer (copied: setup path only).
    fn next_buffered(&mut self) -> Result<Option<(u8, Vec<u8>)>, ConnectError> {
        match frame::parse(self.rbuf.data()) {
            Ok(Parsed::Need(n)) => {
                self.rbuf.reserve_frame(n);
                Ok(None)
            }
            Ok(Parsed::Frame(f)) => {
                let payload = self.rbuf.data()[f.payload_start..f.payload_end].to_vec();
                self.rbuf.consume(f.payload_end);
                Ok(Some((f.opcode, payload)))
            }
            Err(_) => Err(ConnectError::Handshake("bad frame from the node")),
        }
    }

    /// Waits for the welcome frame (the node's word that the session, and any `?topics=`
    /// subscription, is set up).
    pub async fn await_welcome(&mut self) -> Result<(), ConnectError> {
        self.read_until(|t| Ok(t.starts_with(br#"{"type":"welcome""#))).await
    }

    /// Subscribes to `topics` with request id 1 and waits for the ack.
    pub async fn subscribe(&mut self, topics: &[&str]) -> Result<(), ConnectError> {
        let mut req = String::with_capacity(48 + topics.iter().map(|t| t.len() + 3).sum::<usize>());
        req.push_str(r#"{"op":"subscribe","topics":["#);
        for (i, t) in topics.iter().enumerate() {
            if i > 0 {
                req.push(',');
            }
            req.push('"');
            req.push_str(t);
            req.push('"');
        }
        req.push_str(r#"],"id":1}"#);
        self.subscribe_with(&req).await
    }

    /// Sends a subscribe request with id 1 (e.g. one with `since`) and waits for its ack,
    /// which is kept in [`Conn::ack`]. Deliveries that arrive after the ack stay buffered.
    pub async fn subscribe_with(&mut self, request: &str) -> Result<(), ConnectError> {
        self.wr.push(OP_TEXT, &[request.as_bytes()]);
        self.flush_frames().await?;
        let mut ack = None;
        self.read_until(|t| {
            if t.starts_with(br#"{"type":"message""#) {
                return Ok(false);
            }
            // The ack of a history topic carries more fields, in any order.
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(t) else {
                return Ok(false);
            };
            match v.get("type").and_then(|t| t.as_str()) {
                Some("ack") if v.get("id").and_then(|i| i.as_u64()) == Some(1) => {
                    ack = Some(t.to_vec());
                    Ok(true)
                }
                Some("error") => Err(ConnectError::Refused(String::from_utf8_lossy(t).into_owned())),
                _ => Ok(false),
            }
        })
        .await?;
        self.ack = ack;
        Ok(())
    }

    /// Drops the connection abruptly: an RST (`SO_LINGER` 0) and no Close frame, as a
    /// network failure or a killed client would; it also leaves no TIME_WAIT on our ports.
    pub fn abort(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }

    /// Sends Close 1000 and waits (up to `wait`) for the node to answer and close the TCP
    /// connection, so the TIME_WAIT state lands on the node's side, not on our ports.
    pub async fn close(mut self, wait: Duration) {
        self.wr.push_close(1000);
        if self.flush_frames().await.is_err() {
            return;
        }
        let drain = async {
            loop {
                self.rbuf.consume(self.rbuf.data().len());
                match self.rbuf.fill(&mut self.stream).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(wait, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[tokio::test]
    async fn read_buffer_grows_when_reads_fill_it() {
        let data = vec![7u8; 10_000];
        let mut src = &data[..];
        let mut rb = ReadBuf::new(64, 4096);
        let mut total = 0;
        while total < data.len() {
            let n = rb.fill(&mut src).await.unwrap();
            total += n;
            let len = rb.data().len();
            rb.consume(len);
        }
        assert_eq!(rb.capacity(), 4096);
        rb.reserve_frame(10_000);
        assert_eq!(rb.capacity(), 16_384);
    }
}
