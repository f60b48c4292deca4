//! The two halves of an open connection as tasks: a writer that drains a queue of
//! outgoing frames, and `next_data`, which the reader tasks call to get the next data frame.
//!
//! The writer owns the write half. It takes frames from two queues: a bounded one for the
//! application's frames (senders wait when it is full) and an unbounded one for the frames
//! the protocol obliges the reader to send (pong answers to the node's heartbeat pings, the
//! reply to a Close). The obligation queue goes first, so a busy publisher never delays a
//! pong into an idle timeout. Frames are written in batches with one flush per batch. The
//! writer stops after its first Close frame (fastwebsockets would otherwise allow a second)
//! and, when every application handle is gone, sends Close 1000 itself.
//!
//! Reading is never raced in a `select!` (fastwebsockets' `read_frame` is not cancel-safe):
//! each connection has one reader task that alone calls [`next_data`].

use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::sync::{mpsc, watch};

use crate::error::{ClientError, CloseInfo};
use crate::handshake::{WsRead, WsWrite};

/// Most frames written before a flush.
const BATCH: usize = 64;

/// A frame for the writer.
#[derive(Debug)]
pub(crate) enum Out {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    /// A frame the reader is obliged to send (pong, Close reply), passed through as is.
    Control(OpCode, Vec<u8>),
    /// A Close with `code` and `reason`; the last frame the writer sends.
    Close(u16, String),
}

impl Out {
    fn is_close(&self) -> bool {
        matches!(self, Out::Close(..) | Out::Control(OpCode::Close, _))
    }

    fn into_frame(self) -> Frame<'static> {
        match self {
            Out::Text(v) => Frame::text(Payload::Owned(v)),
            Out::Binary(v) => Frame::binary(Payload::Owned(v)),
            Out::Control(op, v) => Frame::new(true, op, None, Payload::Owned(v)),
            Out::Close(code, reason) => {
                // A control frame's payload is at most 125 bytes: 2 for the code, 123 of reason.
                let mut end = reason.len().min(123);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                Frame::close(code, &reason.as_bytes()[..end])
            }
        }
    }
}

/// Waits until the connection's close state (`close`) is set and returns it.
pub(crate) async fn wait_closed(mut close: watch::Receiver<Option<CloseInfo>>) -> CloseInfo {
    match close.wait_for(Option::is_some).await.map(|c| c.clone()) {
        Ok(Some(info)) => info,
        _ => close
            .borrow()
            .clone()
            .unwrap_or_else(|| CloseInfo::abnormal("connection dropped")),
    }
}

/// Queues a Close frame and waits up to `within` for the connection to end (the closing
/// handshake of `Client::close` and `RawClient::close`).
pub(crate) async fn close_and_wait(
    data: &mpsc::Sender<Out>,
    code: u16,
    reason: &str,
    within: Duration,
    close: watch::Receiver<Option<CloseInfo>>,
) -> Result<(), ClientError> {
    // A writer already gone means the connection has ended: the wait returns at once.
    let _ = data.send(Out::Close(code, reason.to_owned())).await;
    tokio::time::timeout(within, wait_closed(close))
        .await
        .map_err(|_| ClientError::Timeout)?;
    Ok(())
}

/// Sending side of the obligation queue, held by the reader.
pub(crate) type CtrlTx = mpsc::UnboundedSender<Out>;

/// Creates both queues and spawns the writer; returns the application queue's sender and
/// the obligation queue's sender.
pub(crate) fn spawn_writer(wr: WsWrite, capacity: usize) -> (mpsc::Sender<Out>, CtrlTx) {
    let (data_tx, data_rx) = mpsc::channel(capacity.max(1));
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    tokio::spawn(run_writer(wr, data_rx, ctrl_rx));
    (data_tx, ctrl_tx)
}

async fn run_writer(mut wr: WsWrite, mut data: mpsc::Receiver<Out>, mut ctrl: mpsc::UnboundedReceiver<Out>) {
    loop {
        let first = tokio::select! {
            biased;
            c = ctrl.recv() => match c {
                Some(c) => c,
                // The reader has finished: the connection is over.
                None => return,
            },
            // Every handle is gone: say goodbye.
            d = data.recv() => d.unwrap_or(Out::Close(1000, String::new())),
        };
        let mut next = Some(first);
        let mut written = 0;
        while let Some(out) = next.take() {
            let closing = out.is_close();
            if wr.write_frame(out.into_frame()).await.is_err() {
                return;
            }
            if closing {
                let _ = wr.flush().await;
                return;
            }
            written += 1;
            if written < BATCH {
                next = ctrl.try_recv().ok().or_else(|| data.try_recv().ok());
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
}

/// Reads until the next text or binary message and returns it; pings are answered and
/// pongs skipped on the way. Returns `Err` with how the connection ended when it ends;
/// after that the reader must stop calling.
pub(crate) async fn next_data(rd: &mut WsRead, ctrl: &CtrlTx) -> Result<(OpCode, Bytes), CloseInfo> {
    // The frames fastwebsockets obliges us to send go to the writer; if it is gone the
    // connection is closing anyway.
    let mut obliged = |frame: Frame<'_>| {
        let _ = ctrl.send(Out::Control(frame.opcode, Vec::from(frame.payload)));
        std::future::ready(Ok::<(), std::io::Error>(()))
    };
    loop {
        match rd.read_frame(&mut obliged).await {
            Ok(frame) => match frame.opcode {
                OpCode::Close => return Err(CloseInfo::from_payload(&frame.payload)),
                OpCode::Text | OpCode::Binary => return Ok((frame.opcode, into_bytes(frame.payload))),
                _ => {}
            },
            Err(e) => {
                if let Some(code) = close_code_for(&e) {
                    let _ = ctrl.send(Out::Close(code, e.to_string()));
                }
                return Err(CloseInfo::abnormal(e.to_string()));
            }
        }
    }
}

/// The close code to send for a read error, or `None` when the socket itself failed.
fn close_code_for(e: &WebSocketError) -> Option<u16> {
    match e {
        WebSocketError::IoError(_) | WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed => None,
        // fastwebsockets has already queued its own 1002 Close for this one.
        WebSocketError::InvalidCloseCode => None,
        WebSocketError::InvalidUTF8 => Some(1007),
        WebSocketError::FrameTooLarge => Some(1009),
        _ => Some(1002),
    }
}

/// A frame payload as `Bytes`, without copying when the library handed us owned memory.
fn into_bytes(p: Payload<'_>) -> Bytes {
    match p {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}
