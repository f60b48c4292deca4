//! A minimal HTTP/1.1 client for the admin listener: one-shot GETs (`/metrics`) and a
//! keep-alive publisher sink for `POST /api/publish` that pipelines a batch of requests in
//! one write and then reads the batch's answers in order.
//!
//! It understands exactly what it needs of a response: the status, `Content-Length` or
//! chunked bodies, and `Connection: close`. Anything else is treated as a failed request.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::ReadBuf;
use super::publisher::Sink;
use super::target::Target;
use crate::stats::Shared;

/// Status and body of a one-shot request with `Connection: close`, within `timeout`.
pub async fn get(target: &Target, path: &str, timeout: Duration) -> io::Result<(u16, Vec<u8>)> {
    let fut = async {
        let mut s = TcpStream::connect(target.addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            target.host
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        match parse_response(&buf)? {
            Some((status, _, body)) => Ok((status, body)),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated HTTP response")),
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP request timed out"))?
}

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parses the response at the start of `b`: `Some((status, bytes used, body))` when it is
/// complete.
fn parse_response(b: &[u8]) -> io::Result<Option<(u16, usize, Vec<u8>)>> {
    let Some(head_end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&b[..head_end]).map_err(|_| bad("response head is not UTF-8"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    let mut length = None;
    let mut chunked = false;
    for line in head.lines().skip(1) {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body_start = head_end + 4;
    if chunked {
        let mut at = body_start;
        let mut body = Vec::new();
        loop {
            let Some(eol) = b[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_text = std::str::from_utf8(&b[at..at + eol]).map_err(|_| bad("bad chunk"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            at += eol + 2;
            if b.len() < at + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&b[at..at + size]);
            at += size + 2;
            if size == 0 {
                return Ok(Some((status, at, body)));
            }
        }
    }
    let len = length.unwrap_or(0);
    if b.len() < body_start + len {
        return Ok(None);
    }
    Ok(Some((
        status,
        body_start + len,
        b[body_start..body_start + len].to_vec(),
    )))
}

/// Publishes through `POST /api/publish` on a keep-alive connection.
pub struct HttpSink {
    target: Target,
    path: String,
    auth: String,
    conn: Option<TcpStream>,
    rbuf: ReadBuf,
    out: Vec<u8>,
    weights: Vec<u64>,
    shared: Arc<Shared>,
    /// First refusal seen (status and body), for the report.
    pub first_error: Option<String>,
}

impl HttpSink {
    pub fn new(target: Target, api_key: Option<&str>, shared: Arc<Shared>) -> Self {
        Self {
            path: target.endpoint("/api/publish"),
            auth: api_key
                .map(|k| format!("Authorization: Bearer {k}\r\n"))
                .unwrap_or_default(),
            target,
            conn: None,
            rbuf: ReadBuf::new(4096, 256 * 1024),
            out: Vec::with_capacity(64 * 1024),
            weights: Vec::new(),
            shared,
            first_error: None,
        }
    }

    async fn exchange(&mut self) -> io::Result<(u64, u64)> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.target.addr).await?;
            s.set_nodelay(true)?;
            self.conn = Some(s);
            self.rbuf = ReadBuf::new(4096, 256 * 1024);
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.write_all(&self.out).await?;
        let (mut msgs, mut weight) = (0, 0);
        for &w in &self.weights {
            let (status, used, body) = loop {
                if let Some(r) = parse_response(self.rbuf.data())? {
                    break r;
                }
                if self.rbuf.fill(conn).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "admin API closed the connection",
                    ));
                }
            };
            self.rbuf.consume(used);
            if (200..300).contains(&status) {
                msgs += 1;
                weight += w;
            } else {
                self.shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                if self.first_error.is_none() {
                    self.first_error = Some(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
                }
            }
        }
        Ok((msgs, weight))
    }
}

impl Sink for HttpSink {
    fn push(&mut self, topic: &str, data: &[u8], weight: u64) {
        use std::io::Write;
        let body_len = br#"{"topic":"","data":}"#.len() + topic.len() + data.len();
        // Written straight into the batch buffer: no allocation per request.
        let _ = write!(
            self.out,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{}Content-Length: {body_len}\r\n\r\n",
            self.path, self.target.host, self.auth
        );
        self.out.extend_from_slice(br#"{"topic":""#);
        self.out.extend_from_slice(topic.as_bytes());
        self.out.extend_from_slice(br#"","data":"#);
        self.out.extend_from_slice(data);
        self.out.push(b'}');
        self.weights.push(weight);
    }

    async fn flush(&mut self) -> Result<(u64, u64), String> {
        let r = self.exchange().await;
        self.out.clear();
        self.weights.clear();
        match r {
            Ok(done) => Ok(done),
            Err(e) => {
                // The answers of this batch are unknown: nothing of it is counted.
                self.conn = None;
                Err(format!("admin API request failed: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_responses() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 503";
        assert_eq!(parse_response(r).unwrap(), Some((200, 40, b"ok".to_vec())));
        assert_eq!(parse_response(&r[..39]).unwrap(), None);
        let c = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(parse_response(c).unwrap(), Some((404, c.len(), b"abc".to_vec())));
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
