//! The session's reader: client bytes in, whole messages out to the handler.
//!
//! It owns the connection's receive buffer and parses frames itself with
//! `herald_protocol::ws_parse`, which enforces the per-frame rules (masking, reserved bits,
//! opcodes, control frames, size). On top it reassembles fragmented messages with a cap on
//! the *whole* message, validates UTF-8 of text messages (single or reassembled), answers
//! pings through the outbox, validates close frames, and maps every failure to a close code
//! with a reason. See docs/adr/002-own-read-path.md for why this is not fastwebsockets'
//! read half.
//!
//! Memory: the buffer is allocated when the socket becomes readable and released whenever
//! it is empty, so an idle connection holds no receive buffer at all.
//!
//! Pacing: the reader stops taking requests while the answers it produced are not taken by
//! the writer (the outbox's control backlog is at `CONTROL_HIGH_WATER`) or while too many
//! answers wait for the relay (`answers::MAX_WAITING`). It then reads nothing more from
//! the socket, so a client that pipelines thousands of requests is served as fast as it
//! reads its answers, TCP pushes back on it, and it is disconnected only if its socket
//! stops taking bytes (the writer's write timeout). While waiting for bytes it also
//! releases answers whose relay verdict came in.
//!
//! Frame counters are accumulated locally and flushed on a coarse clock, not per frame.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use herald_broker::CONTROL_HIGH_WATER;
use herald_protocol::ws_frame::{pong_frame, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use herald_protocol::ws_parse::{frame_len_hint, parse_client_frame, ClientFrame, FrameError};

use super::counts::{kind_of, FrameCounts};
use super::socket::Socket;
use super::{handler, Exit, Session};
use crate::clock::coarse_ms;

/// Bytes asked of the kernel per read when no larger frame is pending.
const READ_CHUNK: usize = 4096;

/// A complete data message.
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
}

fn map_error(e: FrameError) -> Exit {
    match e {
        FrameError::TooBig { limit } => Exit::new(1009, format!("message too big: over {limit} bytes"), "too_big"),
        other => Exit::new(1002, other.to_string(), "protocol_error"),
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

/// Reads until the connection must end; returns why. `prefix` holds bytes that arrived
/// with the upgrade request.
pub async fn run(session: &mut Session, prefix: Bytes, read: &Socket) -> Exit {
    let max = session.state.config.limits.max_message_bytes;
    let mut buf = BytesMut::new();
    if !prefix.is_empty() {
        buf.extend_from_slice(&prefix);
    }
    // `prefix` is a slice of hyper's whole read buffer: holding it would keep that buffer
    // (8 KiB or more) alive for the connection's life.
    drop(prefix);
    let mut counts = FrameCounts::new(&session.state.metrics.frames_in, &session.state.metrics.bytes_in);
    let mut fragments: Option<(u8, BytesMut)> = None;
    let exit = 'conn: loop {
        // Apply what is buffered, while the answers keep up.
        while !paused(session) {
            let frame = match parse_client_frame(&mut buf, max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn map_error(e),
            };
            session.flags.last_seen_ms.store(coarse_ms(), Ordering::Relaxed);
            counts.add(kind_of(frame.opcode), frame.payload.len());
            counts.maybe_flush();
            if let Some(exit) = on_frame(session, frame, &mut fragments, max) {
                break 'conn exit;
            }
        }
        if buf.is_empty() && buf.capacity() > 0 {
            // Idle: hold no buffer until the next bytes arrive.
            buf = BytesMut::new();
        }
        if session.answers.is_empty() && (session.backlog as usize) < CONTROL_HIGH_WATER {
            // The common case, and the idle one: nothing waits but bytes. Only this
            // future lives in an idle connection's task.
            if read.readable().await.is_err() {
                break Exit::silent("client_gone");
            }
        } else {
            // Boxed: the busy wait's futures (a relay ticket, a deadline timer, the
            // outbox's room) exist only while answers wait.
            match Box::pin(busy_wait(session, read)).await {
                Woke::Read => {}
                Woke::Again => continue,
                Woke::Closing => break closing().await,
                Woke::Gone => break Exit::silent("client_gone"),
            }
        }
        let pending = frame_len_hint(&buf).map(|n| n.saturating_sub(buf.len())).unwrap_or(0);
        buf.reserve(pending.max(READ_CHUNK).min((max + 14).max(READ_CHUNK)));
        match read.try_read_buf(&mut buf) {
            Ok(0) => break Exit::silent("client_gone"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if super::socket::is_tls_error(&e) => break Exit::silent("tls_error"),
            Err(_) => break Exit::silent("client_gone"),
        }
    };
    counts.flush();
    exit
}

/// What ended a busy wait.
enum Woke {
    /// The socket is readable.
    Read,
    /// Answers went out or room was made: apply what is buffered, then wait again.
    Again,
    /// The node requested the close.
    Closing,
    /// The socket failed.
    Gone,
}

/// Waits while answers wait for the relay or for the writer: for the head answer, for
/// room in the outbox, and, unless paused, for bytes.
async fn busy_wait(session: &mut Session, read: &Socket) -> Woke {
    let backlogged = session.backlog as usize >= CONTROL_HIGH_WATER;
    let reading = !paused(session);
    let outbox = session.conn.outbox.clone();
    tokio::select! {
        // Answers whose relay verdict came in (or whose deadline passed) go out.
        _ = session.answers.head_known(), if !session.answers.is_empty() => {
            if let Some(b) = session.answers.flush(&outbox, &session.state.metrics) {
                session.backlog = pushed(b);
            }
            Woke::Again
        }
        // The writer took the answers: read on. Or a close was requested: take no more
        // requests, and wait for the writer to end the session.
        _ = outbox.control_room(), if backlogged => {
            if outbox.is_closing() {
                return Woke::Closing;
            }
            session.backlog = u32::try_from(outbox.control_backlog()).unwrap_or(u32::MAX);
            Woke::Again
        }
        r = read.readable(), if reading => if r.is_err() { Woke::Gone } else { Woke::Read },
    }
}

/// The backlog the reader goes by after a push: a push refused because the node is
/// closing the connection pauses the reader for good (see [`closing`]).
pub(super) fn pushed(backlog: usize) -> u32 {
    match backlog {
        0 => u32::MAX,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    }
}

/// After the node requested the close: the session ends when the writer has sent it (the
/// session's other branch), so this never returns.
async fn closing() -> Exit {
    std::future::pending().await
}

/// True while the reader must not take more requests (see the module docs).
fn paused(session: &Session) -> bool {
    session.backlog as usize >= CONTROL_HIGH_WATER || session.answers.full()
}

/// Applies one frame; `Some` ends the session.
fn on_frame(
    session: &mut Session,
    frame: ClientFrame,
    fragments: &mut Option<(u8, BytesMut)>,
    max: usize,
) -> Option<Exit> {
    let ClientFrame { fin, opcode, payload } = frame;
    let message = match opcode {
        OP_PING => {
            // A protocol-level pong: not ordered with the JSON answers (RFC 6455 lets it
            // go first), but paced with them.
            session.backlog = pushed(session.conn.outbox.push_control(pong_frame(&payload)));
            return None;
        }
        OP_PONG => return None,
        OP_CLOSE => {
            return Some(match close_reply(&payload) {
                Ok(code) => Exit::new(code, "", "client_close"),
                Err(e) => e,
            })
        }
        OP_TEXT | OP_BINARY if fragments.is_some() => {
            return Some(Exit::new(
                1002,
                "new data frame before the fragmented message ended",
                "protocol_error",
            ));
        }
        OP_TEXT | OP_BINARY if !fin => {
            *fragments = Some((opcode, payload));
            return None;
        }
        OP_TEXT => {
            if std::str::from_utf8(&payload).is_err() {
                return Some(Exit::new(1007, "invalid UTF-8 in a text message", "invalid_utf8"));
            }
            Message::Text(payload.freeze())
        }
        OP_BINARY => Message::Binary(payload.freeze()),
        _ => {
            // OP_CONTINUATION (the parser refuses every other opcode).
            let Some((op, buf)) = fragments.as_mut() else {
                return Some(Exit::new(
                    1002,
                    "continuation frame without a message to continue",
                    "protocol_error",
                ));
            };
            if buf.len() + payload.len() > max {
                return Some(Exit::new(1009, format!("message too big: over {max} bytes"), "too_big"));
            }
            buf.extend_from_slice(&payload);
            if !fin {
                return None;
            }
            let op = *op;
            let (_, whole) = fragments.take().expect("checked above");
            let bytes = whole.freeze();
            if op == OP_TEXT {
                if std::str::from_utf8(&bytes).is_err() {
                    return Some(Exit::new(1007, "invalid UTF-8 in a text message", "invalid_utf8"));
                }
                Message::Text(bytes)
            } else {
                Message::Binary(bytes)
            }
        }
    };
    handler::handle(session, message)
}
