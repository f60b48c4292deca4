//! Opening a WebSocket: URL parsing, TCP connect, the HTTP/1.1 upgrade, and checking the
//! node's `Sec-WebSocket-Accept`.
//!
//! fastwebsockets performs the upgrade but does not verify the accept key, so this module
//! does (RFC 6455 section 4.2.2). After the upgrade the TCP stream is taken back out of
//! hyper and split into owned halves, so the reader and writer tasks never contend on a
//! lock; bytes hyper read past the 101 response (often the welcome frame) are replayed in
//! front of the read half. No TLS: `wss://` URLs are refused.

use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use fastwebsockets::{after_handshake_split, FragmentCollectorRead, Role, WebSocketWrite};
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::ClientError;
use crate::options::ClientOptions;

/// The read half of an open connection; it reassembles fragmented messages.
pub(crate) type WsRead = FragmentCollectorRead<Box<dyn AsyncRead + Send + Unpin>>;
/// The write half of an open connection.
pub(crate) type WsWrite = WebSocketWrite<Box<dyn AsyncWrite + Send + Unpin>>;

/// The GUID RFC 6455 appends to the key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value a server must answer to `key`:
/// base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// Where to connect: `host:port` and the request target (`/ws?topics=a`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub authority: String,
    pub path_and_query: String,
}

/// Parses `ws://host[:port][/path][?query]`; the port defaults to 80.
pub(crate) fn parse_ws_url(url: &str) -> Result<Target, ClientError> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ws") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("wss") => {
            return Err(ClientError::InvalidInput("wss:// (TLS) is not supported".into()))
        }
        _ => return Err(ClientError::InvalidInput(format!("not a ws:// URL: {url:?}"))),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return Err(ClientError::InvalidInput(format!("bad host in URL {url:?}")));
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let path_and_query = match target.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{target}"),
        Some(_) => target.to_owned(),
    };
    Ok(Target {
        authority,
        path_and_query,
    })
}

/// Runs hyper's connection future (which hands over the upgraded stream) on tokio.
struct SpawnExecutor;

impl hyper::rt::Executor<Pin<Box<dyn Future<Output = ()> + Send>>> for SpawnExecutor {
    fn execute(&self, fut: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(fut);
    }
}

/// Connects to `url`, upgrades, verifies the accept key and returns the split halves.
/// Bounded by `opts.connect_timeout`.
pub(crate) async fn open(url: &str, opts: &ClientOptions) -> Result<(WsRead, WsWrite), ClientError> {
    let target = parse_ws_url(url)?;
    tokio::time::timeout(opts.connect_timeout, open_inner(target, opts))
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn open_inner(target: Target, opts: &ClientOptions) -> Result<(WsRead, WsWrite), ClientError> {
    let tcp = TcpStream::connect(&target.authority).await?;
    tcp.set_nodelay(true)?;
    let key = fastwebsockets::handshake::generate_key();
    let req = Request::builder()
        .method("GET")
        .uri(&target.path_and_query)
        .header(HOST, &target.authority)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", &key)
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::InvalidInput(format!("cannot build the upgrade request: {e}")))?;
    let (ws, response) = fastwebsockets::handshake::client(&SpawnExecutor, req, tcp).await?;

    let expected = accept_key(&key);
    match response.headers().get("Sec-WebSocket-Accept") {
        Some(got) if got.as_bytes() == expected.as_bytes() => {}
        Some(got) => {
            return Err(ClientError::Handshake(format!(
                "Sec-WebSocket-Accept is {:?}, expected {expected:?}",
                String::from_utf8_lossy(got.as_bytes())
            )))
        }
        None => return Err(ClientError::Handshake("no Sec-WebSocket-Accept header".into())),
    }

    // Take the TCP stream back out of hyper so the halves need no shared lock.
    let upgraded = ws.into_inner().into_inner();
    let (rd, wr): (Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>) =
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (r, w) = parts.io.into_inner().into_split();
                (Box::new(Cursor::new(parts.read_buf).chain(r)), Box::new(w))
            }
            Err(upgraded) => {
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                (Box::new(r), Box::new(w))
            }
        };
    let (mut rd, wr) = after_handshake_split(rd, wr, Role::Client);
    rd.set_max_message_size(opts.max_frame_size);
    rd.set_auto_pong(true);
    rd.set_auto_close(true);
    Ok((FragmentCollectorRead::new(rd), wr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        // RFC 6455 section 1.3 (also what Python's hashlib/base64 give for this key).
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn parses_ws_urls() {
        let t = |a: &str, p: &str| Target {
            authority: a.into(),
            path_and_query: p.into(),
        };
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:8080/ws").unwrap(),
            t("127.0.0.1:8080", "/ws")
        );
        assert_eq!(
            parse_ws_url("ws://h/ws?topics=a,b").unwrap(),
            t("h:80", "/ws?topics=a,b")
        );
        assert_eq!(parse_ws_url("WS://h:1").unwrap(), t("h:1", "/"));
        assert_eq!(parse_ws_url("ws://h:1?x=1").unwrap(), t("h:1", "/?x=1"));
        assert_eq!(parse_ws_url("ws://[::1]:9/raw/t").unwrap(), t("[::1]:9", "/raw/t"));
        assert_eq!(parse_ws_url("ws://[::1]/").unwrap(), t("[::1]:80", "/"));
        assert!(matches!(parse_ws_url("wss://h/ws"), Err(ClientError::InvalidInput(_))));
        assert!(matches!(parse_ws_url("http://h/ws"), Err(ClientError::InvalidInput(_))));
        assert!(matches!(parse_ws_url("ws:///ws"), Err(ClientError::InvalidInput(_))));
    }
}
