//! A deliberately low-level WebSocket peer for tests: it performs the opening handshake by
//! hand and then writes whatever frame bytes a test asks for (masked or not, any opcode,
//! any reserved bits, any fragmentation) and parses the server's frames exactly, so tests
//! can check the precise close code and reason a node answers with.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl WireFrame {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    /// Close code and reason of a close frame.
    pub fn close(&self) -> Option<(u16, String)> {
        (self.opcode == 8 && self.payload.len() >= 2).then(|| {
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                String::from_utf8_lossy(&self.payload[2..]).into(),
            )
        })
    }
}

/// See the module docs.
pub struct WireClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// How a connection attempt was answered when it was not upgraded.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl WireClient {
    /// Connects and upgrades `path`; fails if the node does not answer 101.
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<Self> {
        match Self::try_connect(addr, path).await? {
            Ok(c) => Ok(c),
            Err(r) => bail!("upgrade refused with {}: {}", r.status, r.body),
        }
    }

    /// Connects; `Err(Refused)` carries a non-101 answer.
    pub async fn try_connect(addr: SocketAddr, path: &str) -> Result<std::result::Result<Self, Refused>> {
        let stream = TcpStream::connect(addr).await?;
        Self::try_upgrade(stream, addr, path, b"", &[]).await
    }

    /// Like [`WireClient::try_connect`], with extra request headers (`Authorization`,
    /// `Origin`, ...).
    pub async fn try_connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<std::result::Result<Self, Refused>> {
        let stream = TcpStream::connect(addr).await?;
        Self::try_upgrade(stream, addr, path, b"", headers).await
    }

    /// Upgrades `path` on a stream the test connected itself (e.g. from a chosen local
    /// address, [`connect_from`]): writes `prefix` (a PROXY protocol header, say), then the
    /// upgrade request with `headers` added, in one write.
    pub async fn try_upgrade(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        prefix: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<std::result::Result<Self, Refused>> {
        stream.set_nodelay(true)?;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(req.as_bytes());
        stream.write_all(&bytes).await?;
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .context("handshake timed out")??;
            if n == 0 {
                bail!("connection closed during the handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head.split(' ').nth(1).context("no status")?.parse()?;
        let rest = buf[head_end + 4..].to_vec();
        if status != 101 {
            let mut body = rest;
            // The body's length when the answer says it (the connection may stay open),
            // else everything until the node closes (at most 2 s).
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let mut chunk = [0u8; 4096];
                while length.is_none_or(|n| body.len() < n) {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => body.extend_from_slice(&chunk[..k]),
                    }
                }
            })
            .await;
            return Ok(Err(Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            }));
        }
        Ok(Ok(Self { stream, buf: rest }))
    }

    /// Writes one frame. `first_byte_extra` is OR-ed into the first byte (reserved bits).
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        masked: bool,
        first_byte_extra: u8,
    ) -> Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(((fin as u8) << 7) | first_byte_extra | (opcode & 0x0f));
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key: [u8; 4] = rand::random();
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The socket's halves, for a test that writes and reads at once, and the bytes read
    /// past the last frame returned (to be parsed before anything read from the half).
    pub fn into_split(self) -> (Vec<u8>, tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf) {
        let (r, w) = self.stream.into_split();
        (self.buf, r, w)
    }

    /// A masked, final text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_frame(true, 1, text.as_bytes(), true, 0).await
    }

    /// A masked, final binary frame.
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<()> {
        self.send_frame(true, 2, data, true, 0).await
    }

    /// Reads the next frame within `wait`.
    pub async fn read_frame(&mut self, wait: Duration) -> Result<WireFrame> {
        tokio::time::timeout(wait, self.read_frame_inner())
            .await
            .context("no frame in time")?
    }

    async fn fill(&mut self, n: usize) -> Result<()> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 16384];
            let k = self.stream.read(&mut chunk).await?;
            if k == 0 {
                bail!("connection closed by the node");
            }
            self.buf.extend_from_slice(&chunk[..k]);
        }
        Ok(())
    }

    async fn read_frame_inner(&mut self) -> Result<WireFrame> {
        self.fill(2).await?;
        let fin = self.buf[0] & 0x80 != 0;
        let opcode = self.buf[0] & 0x0f;
        if self.buf[1] & 0x80 != 0 {
            bail!("server frames must not be masked");
        }
        let (len, header) = match self.buf[1] & 0x7f {
            126 => {
                self.fill(4).await?;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10).await?;
                (
                    u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                )
            }
            n => (n as usize, 2),
        };
        self.fill(header + len).await?;
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Ok(WireFrame { fin, opcode, payload })
    }

    /// Reads frames until a text frame arrives (skipping pings and pongs).
    pub async fn read_text(&mut self, wait: Duration) -> Result<String> {
        loop {
            let f = self.read_frame(wait).await?;
            match f.opcode {
                1 => return Ok(f.text()),
                9 | 10 => continue,
                8 => bail!("closed: {:?}", f.close()),
                op => bail!("unexpected opcode {op}"),
            }
        }
    }

    /// Reads a text frame and parses it as JSON.
    pub async fn read_json(&mut self, wait: Duration) -> Result<serde_json_lite::Value> {
        let t = self.read_text(wait).await?;
        serde_json_lite::parse(&t)
    }

    /// Reads frames until a close frame; returns its code and reason.
    pub async fn expect_close(&mut self, wait: Duration) -> Result<(u16, String)> {
        loop {
            let f = self.read_frame(wait).await?;
            if f.opcode == 8 {
                return f.close().context("close frame without a code");
            }
        }
    }

    /// True when the node has closed the TCP connection (EOF) within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// JSON parsing for tests without adding serde to the harness's public surface.
pub mod serde_json_lite {
    pub use serde_json::Value;
    pub fn parse(s: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(s)?)
    }
}

/// A TCP connection to `addr` from the local address `from` (any port): Linux routes all of
/// 127.0.0.0/8 to loopback, so tests can be several distinct clients, or a trusted proxy.
pub async fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> Result<TcpStream> {
    let socket = match from {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    Ok(socket.connect(addr).await?)
}
