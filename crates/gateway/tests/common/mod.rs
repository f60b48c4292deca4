//! Shared by the admin API test binaries: a small HTTP/1.1 client that returns status,
//! headers and body ([`request`], [`send_raw`]), and [`Api`], which adds the API key and
//! checks every response it gets against docs/openapi.yaml (`openapi.rs`), so each test
//! that calls the API also tests the contract.
//!
//! It is test plumbing only: no retries, no keep-alive, one request per connection.

#![allow(dead_code)]

pub mod openapi;
pub mod raw_frames;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use herald_testkit::node::TestNode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(5);

/// A key long enough for `admin.api_keys`.
pub const KEY: &str = "test-key-0123456789abcdef";

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `head` (request line and headers, up to and including the blank line) and `body`
/// as they are, then reads one response within `wait`. Reading stops once the response is
/// complete, so it works when the node answers before the body was sent.
pub async fn send_raw(addr: SocketAddr, head: &str, body: &[u8], wait: Duration) -> Result<Resp> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(head.as_bytes()).await?;
        if !body.is_empty() {
            // The node may refuse and close early; the answer is what matters.
            let _ = s.write_all(body).await;
        }
        let head_request = head.starts_with("HEAD ");
        let mut buf = Vec::new();
        loop {
            if let Some(resp) = parse_response(&buf, head_request)? {
                return Ok(resp);
            }
            let mut chunk = [0u8; 8192];
            let n = match s.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) if !buf.is_empty() => bail!("connection error after {} bytes: {e}", buf.len()),
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return parse_response(&buf, head_request)?.context("connection closed before a whole response");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(wait, fut).await.context("no answer in time")?
}

/// A complete response in `buf`, or `None` when more bytes are needed. A response to
/// `HEAD` has no body whatever its `Content-Length` says.
fn parse_response(buf: &[u8], head_request: bool) -> Result<Option<Resp>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .context("no status line")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse())
        .transpose()?
        .filter(|_| !head_request)
        .unwrap_or(0);
    let rest = &buf[end + 4..];
    if rest.len() < len {
        return Ok(None);
    }
    Ok(Some(Resp {
        status,
        headers,
        body: rest[..len].to_vec(),
    }))
}

/// One request with `Content-Length` set from `body`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    send_raw(addr, &head, body, Duration::from_secs(10)).await
}

/// The admin API of one node, checked against the OpenAPI document on every call.
pub struct Api {
    pub addr: SocketAddr,
    pub key: Option<String>,
}

impl Api {
    pub fn new(node: &TestNode) -> Self {
        Self {
            addr: node.admin_addr(),
            key: None,
        }
    }

    pub fn with_key(node: &TestNode, key: &str) -> Self {
        Self {
            addr: node.admin_addr(),
            key: Some(key.to_owned()),
        }
    }

    /// Sends a request (with the key, if any) and checks the answer against the spec.
    pub async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let auth = self.key.as_ref().map(|k| format!("Bearer {k}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("Authorization", a));
        }
        let resp = request(self.addr, method, path, &all, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        openapi::check(method, path, &resp);
        resp
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, &[], b"").await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        let body = body.to_string();
        self.call("POST", path, &[("Content-Type", "application/json")], body.as_bytes())
            .await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Resp {
        self.call("POST", path, &[("Content-Type", content_type)], body).await
    }
}

/// Asserts an error answer: status and code.
#[track_caller]
pub fn assert_error(resp: &Resp, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}
