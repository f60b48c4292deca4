//! Publishing over the JSON protocol: `{"op":"publish","topic":T,"data":D}` text frames,
//! masked and written a batch per write, without an `id` (so the node sends no ack and
//! the publisher pays no round trip).
//!
//! The connection is split: the publisher task owns the write half ([`WsSink`]); a small
//! reader task owns the read half, counts error frames (a publish the node refused, e.g.
//! `relay_unavailable`) and hands ping payloads to the sink, which answers them with its
//! next write.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use super::frame::{self, FrameWriter, Parsed, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use super::publisher::Sink;
use crate::stats::Shared;

const HEAD: &[u8] = br#"{"op":"publish","topic":""#;
const MID: &[u8] = br#"","data":"#;

/// The write half of a publisher connection.
pub struct WsSink {
    write: OwnedWriteHalf,
    wr: FrameWriter,
    pongs: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: (u64, u64),
}

impl Sink for WsSink {
    fn push(&mut self, topic: &str, data: &[u8], weight: u64) {
        self.wr.push(OP_TEXT, &[HEAD, topic.as_bytes(), MID, data, b"}"]);
        self.pending.0 += 1;
        self.pending.1 += weight;
    }

    async fn flush(&mut self) -> Result<(u64, u64), String> {
        while let Ok(p) = self.pongs.try_recv() {
            self.wr.push(OP_PONG, &[&p]);
        }
        let done = std::mem::take(&mut self.pending);
        self.write
            .write_all(&self.wr.buf)
            .await
            .map_err(|e| format!("publish write failed: {e}"))?;
        self.wr.clear();
        Ok(done)
    }
}

impl WsSink {
    /// Sends Close 1000 (best effort).
    pub async fn close(mut self) {
        self.wr.clear();
        self.wr.push_close(1000);
        let _ = self.write.write_all(&self.wr.buf).await;
    }
}

/// Splits an open connection into the sink and its reader task. The reader runs until
/// `stop`, the node's close, or the end of the stream, and returns why it ended early.
pub fn split(
    conn: Conn,
    shared: Arc<Shared>,
    first_error: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
) -> (WsSink, JoinHandle<Option<String>>) {
    let Conn {
        stream, mut rbuf, wr, ..
    } = conn;
    let (mut read, write) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            loop {
                let f = match frame::parse(rbuf.data()) {
                    Ok(Parsed::Frame(f)) => f,
                    Ok(Parsed::Need(n)) => {
                        rbuf.reserve_frame(n);
                        break;
                    }
                    Err(e) => return Some(e.to_string()),
                };
                let body = &rbuf.data()[f.payload_start..f.payload_end];
                match f.opcode {
                    OP_TEXT if body.starts_with(br#"{"type":"error""#) => {
                        shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                        let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                        if first.is_none() {
                            *first = Some(String::from_utf8_lossy(body).into_owned());
                        }
                    }
                    OP_PING => {
                        let _ = tx.send(body.to_vec());
                    }
                    OP_CLOSE => {
                        let reason = String::from_utf8_lossy(body.get(2..).unwrap_or_default()).into_owned();
                        return Some(format!("publisher closed by the node: {reason}"));
                    }
                    _ => {}
                }
                rbuf.consume(f.payload_end);
            }
            let r = tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                r = rbuf.fill(&mut read) => r,
            };
            match r {
                Ok(0) => return Some("publisher connection closed".into()),
                Err(e) => return Some(format!("publisher read failed: {e}")),
                Ok(_) => {}
            }
        }
    });
    (
        WsSink {
            write,
            wr,
            pongs: rx,
            pending: (0, 0),
        },
        reader,
    )
}
