//! The session's reader: client frames in, whole messages out to the handler.
//!
//! fastwebsockets parses frames (rejecting reserved bits, unknown opcodes, fragmented or
//! oversized control frames, and invalid UTF-8 in single text frames). This reader adds what
//! it leaves to us: the mask check (clients must mask), reassembly of fragmented messages
//! with a cap on the *whole* message, UTF-8 validation of reassembled text, ping and close
//! handling (auto-pong and auto-close are off so the answers go through the outbox), and
//! the mapping of every failure to a close code with a reason.
//!
//! Frame counters are accumulated locally and flushed on a coarse clock, not per frame.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use herald_protocol::ws_frame::pong_frame;

use super::{handler, Exit, Session};
use crate::clock::coarse_ms;
use crate::stream::PrefixedRead;

/// A complete data message.
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
}

/// Frame and byte counts not yet added to the shared metrics.
#[derive(Default)]
struct LocalCounts {
    frames: [u64; 5],
    bytes: [u64; 5],
    pending: u32,
    last_flush_ms: u64,
}

impl LocalCounts {
    fn add(&mut self, kind: usize, len: usize) {
        self.frames[kind] += 1;
        self.bytes[kind] += len as u64;
        self.pending += 1;
    }

    fn maybe_flush(&mut self, session: &Session) {
        let now = coarse_ms();
        if self.pending >= 64 || now != self.last_flush_ms {
            self.flush(session);
            self.last_flush_ms = now;
        }
    }

    fn flush(&mut self, session: &Session) {
        if self.pending == 0 {
            return;
        }
        let m = &session.state.metrics;
        for (i, kind) in herald_broker::metrics::FRAME_KINDS.iter().enumerate() {
            if self.frames[i] > 0 {
                m.frames_in.with_label_values(&[kind]).inc_by(self.frames[i]);
                m.bytes_in.with_label_values(&[kind]).inc_by(self.bytes[i]);
            }
        }
        *self = LocalCounts {
            last_flush_ms: self.last_flush_ms,
            ..Default::default()
        };
    }
}

fn kind_index(op: OpCode) -> usize {
    match op {
        OpCode::Text => 0,
        OpCode::Binary | OpCode::Continuation => 1,
        OpCode::Ping => 2,
        OpCode::Pong => 3,
        OpCode::Close => 4,
    }
}

fn frame_bytes(frame: Frame<'_>) -> Bytes {
    match frame.payload {
        fastwebsockets::Payload::Bytes(b) => b.freeze(),
        fastwebsockets::Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

fn map_error(e: WebSocketError) -> Exit {
    use WebSocketError as E;
    match e {
        E::InvalidUTF8 => Exit::new(1007, "invalid UTF-8 in a text message", "invalid_utf8"),
        E::FrameTooLarge => Exit::new(1009, "message too big", "too_big"),
        E::UnexpectedEOF | E::ConnectionClosed => Exit::silent("client_gone"),
        E::IoError(_) => Exit::silent("client_gone"),
        E::ReservedBitsNotZero => Exit::new(
            1002,
            "reserved bits set without a negotiated extension",
            "protocol_error",
        ),
        E::ControlFrameFragmented => Exit::new(1002, "fragmented control frame", "protocol_error"),
        E::PingFrameTooLarge => Exit::new(1002, "control frame payload over 125 bytes", "protocol_error"),
        E::InvalidValue => Exit::new(1002, "unknown opcode", "protocol_error"),
        other => Exit::new(1002, format!("protocol error: {other}"), "protocol_error"),
    }
}

/// Validates a close frame's payload; returns the code to echo.
fn close_reply(payload: &[u8]) -> Result<u16, Exit> {
    match payload.len() {
        0 => Ok(1000),
        1 => Err(Exit::new(1002, "close frame with a 1-byte payload", "protocol_error")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                return Err(Exit::new(
                    1002,
                    format!("close code {code} is not allowed"),
                    "protocol_error",
                ));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(Exit::new(1007, "invalid UTF-8 in the close reason", "invalid_utf8"));
            }
            Ok(code)
        }
    }
}

/// Reads until the connection must end; returns why.
pub async fn run(session: &mut Session, read: PrefixedRead) -> Exit {
    let (mut ws, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    let max = session.state.config.limits.max_message_bytes;
    // The library refuses frames of `limit` bytes or more; we allow exactly `max`.
    ws.set_max_message_size(max + 1);
    let mut counts = LocalCounts::default();
    let mut fragments: Option<(OpCode, BytesMut)> = None;
    let mut obligated = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };

    let exit = loop {
        let frame = match ws.read_frame(&mut obligated).await {
            Ok(f) => f,
            Err(e) => break map_error(e),
        };
        session.seen.store(true, Ordering::Relaxed);
        let mut head = [0u8; 16];
        let mut frame = frame;
        frame.fmt_head(&mut head);
        if head[1] & 0x80 == 0 {
            break Exit::new(1002, "client frames must be masked", "protocol_error");
        }
        counts.add(kind_index(frame.opcode), frame.payload.len());
        counts.maybe_flush(session);
        let fin = frame.fin;
        let message = match frame.opcode {
            OpCode::Ping => {
                session.outbox.push_control(pong_frame(&frame.payload));
                continue;
            }
            OpCode::Pong => continue,
            OpCode::Close => match close_reply(&frame.payload) {
                Ok(code) => break Exit::new(code, "", "client_close"),
                Err(e) => break e,
            },
            OpCode::Text | OpCode::Binary if fragments.is_some() => {
                break Exit::new(
                    1002,
                    "new data frame before the fragmented message ended",
                    "protocol_error",
                );
            }
            OpCode::Text | OpCode::Binary if !fin => {
                let mut buf = BytesMut::with_capacity(frame.payload.len().max(1024).min(max));
                buf.extend_from_slice(&frame.payload);
                fragments = Some((frame.opcode, buf));
                continue;
            }
            OpCode::Text => Message::Text(frame_bytes(frame)),
            OpCode::Binary => Message::Binary(frame_bytes(frame)),
            OpCode::Continuation => {
                let Some((op, buf)) = fragments.as_mut() else {
                    break Exit::new(
                        1002,
                        "continuation frame without a message to continue",
                        "protocol_error",
                    );
                };
                if buf.len() + frame.payload.len() > max {
                    break Exit::new(1009, format!("message over {max} bytes"), "too_big");
                }
                buf.extend_from_slice(&frame.payload);
                if !fin {
                    continue;
                }
                let op = *op;
                let (_, buf) = fragments.take().expect("checked above");
                let bytes = buf.freeze();
                if op == OpCode::Text {
                    if std::str::from_utf8(&bytes).is_err() {
                        break Exit::new(1007, "invalid UTF-8 in a text message", "invalid_utf8");
                    }
                    Message::Text(bytes)
                } else {
                    Message::Binary(bytes)
                }
            }
        };
        if let Some(exit) = handler::handle(session, message).await {
            break exit;
        }
    };
    counts.flush(session);
    exit
}
