//! A TCP proxy between one node and Redis that a test can cut and restore, to break the
//! network between the two without touching Redis itself (the other nodes keep talking
//! to Redis directly). Cutting closes every proxied connection at once and makes new ones
//! be accepted and closed at once, until restored.
//!
//! It can also *mute* deliveries: while muted, the pub/sub messages Redis pushes to a
//! subscriber (RESP2 `message`, `pmessage` and `smessage` arrays) are dropped on their way to
//! the node, while every other reply (PONG, subscribe confirmations, PUBLISH counts) still
//! passes. The connection looks healthy to PING and delivers nothing: the "subscribed but
//! silent" failure a relay's canary must catch.
//!
//! Each proxied connection ends as a whole as soon as either direction ends (no half-close
//! is relayed), which is all Redis clients need.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// See the module docs. Dropping it stops the proxy.
pub struct TcpProxy {
    addr: SocketAddr,
    /// Bumped on every cut: live connections end when it changes.
    generation: watch::Sender<u64>,
    cut: Arc<AtomicBool>,
    muted: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (generation, gen_rx) = watch::channel(0u64);
        let cut = Arc::new(AtomicBool::new(false));
        let muted = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (c, s, m) = (cut.clone(), stop.clone(), muted.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client); // cut: refused at once
                    continue;
                }
                let mut gen = gen_rx.clone();
                // A clone has seen what the original saw (nothing: it is never awaited), so
                // without this every connection after the first cut ends at once.
                gen.borrow_and_update();
                let s = s.clone();
                let muted = m.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_rd, mut client_wr) = client.into_split();
                    let (mut up_rd, up_wr) = upstream.into_split();
                    let mut up_wr = up_wr;
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_rd, &mut up_wr) => {}
                        _ = copy_replies(&mut up_rd, &mut client_wr, &muted) => {}
                        _ = gen.changed() => {}
                        _ = s.cancelled() => {}
                    }
                    // Dropping every half closes the connections.
                });
            }
        });
        Ok(Self {
            addr,
            generation,
            cut,
            muted,
            stop,
        })
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://` URL of the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Closes every proxied connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Drops pub/sub message pushes from Redis to the node (see the module docs) until
    /// [`TcpProxy::unmute`]; connections stay open, PING and every other reply pass.
    pub fn mute(&self) {
        self.muted.store(true, Ordering::SeqCst);
    }

    /// Delivers pub/sub messages again.
    pub fn unmute(&self) {
        self.muted.store(false, Ordering::SeqCst);
    }
}

/// Copies Redis's replies to the node frame by frame, dropping pub/sub message pushes while
/// `muted`. A stream that is not RESP2 (RESP3, TLS) is passed through as raw bytes from
/// the first frame it cannot read. Ends when either side does.
async fn copy_replies(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, muted: &AtomicBool) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut raw = false;
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        if raw {
            to.write_all(&chunk[..n]).await?;
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        let mut out = Vec::with_capacity(buf.len());
        loop {
            match resp_frame_len(&buf[start..]) {
                Frame::Whole(len) => {
                    let frame = &buf[start..start + len];
                    if !(muted.load(Ordering::SeqCst) && is_message_push(frame)) {
                        out.extend_from_slice(frame);
                    }
                    start += len;
                }
                Frame::Partial => break,
                Frame::NotResp2 => {
                    raw = true;
                    out.extend_from_slice(&buf[start..]);
                    start = buf.len();
                    break;
                }
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            to.write_all(&out).await?;
        }
    }
}

/// What [`resp_frame_len`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A complete frame of this many bytes.
    Whole(usize),
    /// The start of a frame; more bytes are needed.
    Partial,
    /// Not RESP2.
    NotResp2,
}

/// Whether a whole RESP2 frame is a pub/sub push: an array whose first element is the bulk
/// string `message`, `pmessage` or `smessage`.
fn is_message_push(frame: &[u8]) -> bool {
    [&b"$7\r\nmessage\r\n"[..], b"$8\r\npmessage\r\n", b"$8\r\nsmessage\r\n"]
        .iter()
        .any(|kind| {
            frame.first() == Some(&b'*') && {
                let body = frame
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&[][..], |i| &frame[i + 1..]);
                body.starts_with(kind)
            }
        })
}

/// The first RESP2 frame in `buf`: complete (its length), incomplete, or not RESP2.
fn resp_frame_len(buf: &[u8]) -> Frame {
    let Some(&kind) = buf.first() else {
        return Frame::Partial;
    };
    if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
        return Frame::NotResp2;
    }
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Frame::Partial;
    };
    let head = line_end + 2;
    if matches!(kind, b'+' | b'-' | b':') {
        return Frame::Whole(head);
    }
    let Some(n) = std::str::from_utf8(&buf[1..line_end])
        .ok()
        .and_then(|l| l.parse::<i64>().ok())
    else {
        return Frame::NotResp2;
    };
    if kind == b'$' {
        if n < 0 {
            return Frame::Whole(head);
        }
        let end = head + n as usize + 2;
        return if buf.len() >= end {
            Frame::Whole(end)
        } else {
            Frame::Partial
        };
    }
    let mut at = head;
    for _ in 0..n.max(0) {
        match resp_frame_len(&buf[at..]) {
            Frame::Whole(len) => at += len,
            other => return other,
        }
    }
    Frame::Whole(at)
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_resp2_frames_and_spots_message_pushes() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nabc\r\n";
        assert_eq!(resp_frame_len(msg), Frame::Whole(msg.len()));
        assert!(is_message_push(msg));
        let pong = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        assert_eq!(resp_frame_len(pong), Frame::Whole(pong.len()));
        assert!(!is_message_push(pong));
        assert_eq!(resp_frame_len(b":1\r\n"), Frame::Whole(4));
        assert_eq!(resp_frame_len(b"$-1\r\n"), Frame::Whole(5));
        assert_eq!(resp_frame_len(&msg[..msg.len() - 1]), Frame::Partial, "incomplete");
        assert_eq!(resp_frame_len(b"%1\r\n"), Frame::NotResp2, "RESP3 map");
        assert_eq!(resp_frame_len(b"$x\r\n"), Frame::NotResp2);
        assert_eq!(resp_frame_len(b"\r\n"), Frame::NotResp2);
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        assert_eq!(resp_frame_len(sub), Frame::Whole(sub.len()));
        assert!(!is_message_push(sub));
    }
}
