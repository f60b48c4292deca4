//! The raw-mode client (`/raw/{topic}`): every frame sent is published to the path's topic
//! as is, and every frame received is a message on it, with no JSON envelope.
//!
//! It shares the connection machinery of the JSON client (handshake, writer, pong
//! answers) but has no requests: a reader task forwards each data frame to a bounded queue
//! and records how the connection ended. No welcome frame is expected.

use std::time::Duration;

use fastwebsockets::OpCode;
use tokio::sync::{mpsc, watch};

use crate::error::{ClientError, CloseInfo};
use crate::event::RawFrame;
use crate::handshake::WsRead;
use crate::options::ClientOptions;
use crate::transport::{self, next_data, spawn_writer, CtrlTx, Out};

/// A raw-mode connection. Dropping it closes the connection with code 1000.
pub struct RawClient {
    data: mpsc::Sender<Out>,
    frames: mpsc::Receiver<RawFrame>,
    close: watch::Receiver<Option<CloseInfo>>,
    request_timeout: Duration,
}

impl RawClient {
    /// Connects to `ws://host:port/raw/{topic}[?echo=false]` with default options.
    pub async fn connect(url: &str) -> Result<RawClient, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(url: &str, opts: ClientOptions) -> Result<RawClient, ClientError> {
        let (rd, wr) = crate::handshake::open(url, &opts).await?;
        let (data, ctrl) = spawn_writer(wr, opts.send_buffer);
        let (frames_tx, frames) = mpsc::channel(opts.event_buffer.max(1));
        let (close_tx, close) = watch::channel(None);
        tokio::spawn(read_task(rd, ctrl, frames_tx, close_tx));
        Ok(RawClient {
            data,
            frames,
            close,
            request_timeout: opts.request_timeout,
        })
    }

    /// Sends one text frame.
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.send(Out::Text(text.into().into_bytes())).await
    }

    /// Sends one binary frame.
    pub async fn send_binary(&self, bytes: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.send(Out::Binary(bytes.into())).await
    }

    /// The next frame; `None` once the connection has ended (see [`close_reason`](Self::close_reason)).
    pub async fn next(&mut self) -> Option<RawFrame> {
        self.frames.recv().await
    }

    /// The next frame within `timeout`; `Timeout` if none came, `Closed` if the connection ended.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<RawFrame, ClientError> {
        match tokio::time::timeout(timeout, self.frames.recv()).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(self.close_error()),
        }
    }

    /// Sends Close with `code` and `reason` after everything queued before it and waits (up
    /// to the request timeout) for the node's reply.
    pub async fn close(&self, code: u16, reason: &str) -> Result<(), ClientError> {
        transport::close_and_wait(&self.data, code, reason, self.request_timeout, self.close.clone()).await
    }

    /// How the connection ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseInfo> {
        self.close.borrow().clone()
    }

    /// Waits until the connection ends.
    pub async fn closed(&self) -> CloseInfo {
        transport::wait_closed(self.close.clone()).await
    }

    async fn send(&self, out: Out) -> Result<(), ClientError> {
        self.data.send(out).await.map_err(|_| self.close_error())
    }

    fn close_error(&self) -> ClientError {
        match self.close_reason() {
            Some(info) => info.into(),
            None => ClientError::Closed {
                code: CloseInfo::ABNORMAL,
                reason: "connection is closing".into(),
            },
        }
    }
}

async fn read_task(
    mut rd: WsRead,
    ctrl: CtrlTx,
    frames: mpsc::Sender<RawFrame>,
    close: watch::Sender<Option<CloseInfo>>,
) {
    let info = loop {
        match next_data(&mut rd, &ctrl).await {
            Ok((OpCode::Text, bytes)) => {
                // fastwebsockets has checked text frames to be UTF-8.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let _ = frames.send(RawFrame::Text(text)).await;
            }
            Ok((_, bytes)) => {
                let _ = frames.send(RawFrame::Binary(bytes)).await;
            }
            Err(info) => break info,
        }
    };
    drop(ctrl);
    // Record the reason before the frame queue ends, so `next` returning `None` can be
    // followed by `close_reason`.
    close.send_replace(Some(info));
    drop(frames);
}
