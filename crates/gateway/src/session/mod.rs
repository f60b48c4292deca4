//! One WebSocket connection after the upgrade: its lifecycle and the state it owns.
//!
//! Task model: the session task runs the reader (`reader.rs`: frames in, requests applied)
//! and spawns one writer task (`writer.rs`: outbox out, and every timer of the connection:
//! heartbeat and idle timeout, the first-message deadline, the spread close of a drain).
//! The session ends when either returns; then it unsubscribes everything, asks the writer
//! to send the close frame (if the reader ended it), waits for it briefly, and releases the
//! connection slot. Every end is counted by reason.
//!
//! Keeping the timers in the writer, which wakes for its heartbeat anyway, keeps the idle
//! connection small: the session task waits on two futures only.

mod answers;
mod counts;
mod handler;
mod linger;
mod reader;
mod socket;
mod tls_socket;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use herald_broker::SubscriberMode;
use herald_protocol::server_msg;
use tokio_util::sync::CancellationToken;

pub use self::socket::Socket;

use self::answers::Answers;
use crate::core::{Confirmation, Conn, ConnIdentity, ConnectRequest, Refusal};
use crate::ip_limits::IpSlot;
use crate::state::AppState;

/// What the upgrade request asked for.
pub struct SessionParams {
    pub mode: SubscriberMode,
    /// Topics to subscribe at connect (`?topics=` or the raw path).
    pub topics: Vec<String>,
    /// Receive one's own publications (`?echo=false` turns it off).
    pub echo: bool,
    /// `?heartbeat=json`: heartbeats as `{"type":"ping"}` text frames (for browsers, which
    /// cannot see WebSocket pings), announced in the welcome.
    pub json_heartbeat: bool,
    /// The client's address (behind trusted proxies: the one they named).
    pub peer: SocketAddr,
    /// Who connects: from a token on the upgrade, or anonymous.
    pub identity: ConnIdentity,
    /// The connection's place in its client IP's count (`ip_limits.rs`), when limited.
    pub ip_slot: Option<IpSlot>,
}

/// How a session ended: the close frame to send and the metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Close code and reason to send; `None` when the socket is already unusable.
    pub close: Option<(u16, String)>,
    pub label: &'static str,
}

impl Exit {
    pub fn new(code: u16, reason: impl Into<String>, label: &'static str) -> Self {
        Self {
            close: Some((code, reason.into())),
            label,
        }
    }
    pub fn silent(label: &'static str) -> Self {
        Self { close: None, label }
    }
}

/// Flags the reader sets and the writer reads (one allocation for both).
#[derive(Default)]
pub struct SessionFlags {
    /// When the reader last saw a frame, on the coarse clock (`clock::coarse_ms`).
    pub last_seen_ms: AtomicU64,
    /// The client has sent a request or holds a subscription: the first-message deadline
    /// no longer applies.
    pub engaged: AtomicBool,
    /// When the connection's token expires, in milliseconds since the epoch (0: never);
    /// set by the reader (`auth`, `refresh`), watched by the writer's expiry timer.
    pub expires_ms: AtomicU64,
    /// The expiry whose `token_expired` notice the writer sent (only the writer touches
    /// it).
    pub noticed_ms: AtomicU64,
    /// `token_expired` goes out this many milliseconds before the expiry; 0: no notice
    /// (raw mode has no error frames: a raw connection is simply closed at expiry + grace).
    /// Here rather than in the writer's configuration: it differs by mode, and these bytes
    /// fit the allocation the flags already take, where the writer's future would grow.
    pub expiry_notice_ms: u32,
    /// A connection whose token expired is closed this many milliseconds after it.
    pub expiry_grace_ms: u32,
    /// `?heartbeat=json`: the writer sends `{"type":"ping"}` every ping interval instead of
    /// a WebSocket ping (in the flags' padding: no byte more per connection).
    pub json_heartbeat: bool,
}

/// Per-connection state owned by the session task.
pub struct Session {
    pub state: Arc<AppState>,
    /// The connection as the core knows it: id, outbox, subscriptions.
    pub conn: Conn,
    /// Answers in request order, some waiting for the relay (no allocation while none
    /// waits).
    pub answers: Answers,
    /// The outbox's control backlog as last seen by a push: the reader pauses at
    /// `CONTROL_HIGH_WATER` (see `reader.rs`).
    pub backlog: u32,
    pub flags: Arc<SessionFlags>,
}

/// How long the writer gets to send the close frame at the end.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// A connection registered before its upgrade response is sent: outbox, welcome frame and
/// subscriptions already in place, so that a client holding the 101 answer is subscribed
/// (raw mode has no welcome frame to wait for). Frames published meanwhile wait in the
/// outbox and follow the 101. Dropping it (the upgrade never completed) leaves, counted as
/// `client_gone`.
pub struct Prepared {
    // The session only: every byte here is paid by every connection (more than once, as the
    // task futures that carry it keep their arguments), so the cancellation token lives in
    // the outbox and the peer address in the connection table.
    session: Session,
    /// Given back to the client IP's count when the session ends (this is dropped once,
    /// after `Drop::drop` has left the core).
    _ip_slot: Option<IpSlot>,
}

/// Why a connection could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl Prepared {
    /// Registers the connection and subscribes its topics; call before answering the
    /// upgrade, and await the [`Confirmation`] before the 101 goes out, so that the
    /// subscriptions hold cluster-wide once the client has the answer.
    pub fn new(state: Arc<AppState>, params: SessionParams) -> Result<(Self, Confirmation), PrepareError> {
        let expires_ms = params.identity.expires_ms.unwrap_or(0);
        let request = ConnectRequest {
            mode: params.mode,
            echo: params.echo,
            peer: params.peer,
            identity: params.identity,
        };
        let mut conn = state.core.connect(request, CancellationToken::new())?;
        let json_heartbeat = params.json_heartbeat && params.mode == SubscriberMode::Json;
        if params.mode == SubscriberMode::Json {
            let connection = conn.id.to_string();
            let welcome = if json_heartbeat {
                let every = state.config.heartbeat.ping_interval_ms;
                server_msg::welcome_json_heartbeat(&state.node_id, &connection, every)
            } else {
                server_msg::welcome(&state.node_id, &connection)
            };
            conn.outbox.push_control(welcome);
        }
        let confirmation = match state
            .core
            .subscribe(&mut conn, params.topics.iter().map(String::as_str))
        {
            Ok(c) => c,
            Err(refusal) => {
                state.core.leave(&mut conn, "client_gone");
                return Err(refusal.into());
            }
        };
        let engaged = params.mode == SubscriberMode::Raw || !conn.topics().is_empty();
        // At most a day each (`Config::validate`).
        let auth = &state.config.auth;
        let expiry_notice_ms = match params.mode {
            SubscriberMode::Raw => 0,
            SubscriberMode::Json => auth.expiry_notice_ms.min(u64::from(u32::MAX)) as u32,
        };
        let expiry_grace_ms = auth.expiry_grace_ms.min(u64::from(u32::MAX)) as u32;
        let session = Session {
            state,
            conn,
            answers: Answers::default(),
            backlog: 0,
            flags: Arc::new(SessionFlags {
                last_seen_ms: AtomicU64::new(crate::clock::coarse_ms()),
                engaged: AtomicBool::new(engaged),
                expires_ms: AtomicU64::new(expires_ms),
                noticed_ms: AtomicU64::new(0),
                expiry_notice_ms,
                expiry_grace_ms,
                json_heartbeat,
            }),
        };
        Ok((
            Self {
                session,
                _ip_slot: params.ip_slot,
            },
            confirmation,
        ))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // The upgrade never completed (or the session ended: then this does nothing).
        let s = &mut self.session;
        s.state.core.leave(&mut s.conn, "client_gone");
    }
}

impl Prepared {
    /// The topics it brought are held on this node only for now: a JSON client gets an
    /// error frame saying so right after its welcome (raw mode has no answers).
    pub fn relay_unavailable(&mut self, e: &crate::core::ConfirmError) {
        let metrics = &self.session.state.metrics;
        metrics
            .client_errors
            .with_label_values(&[server_msg::ErrorCode::RelayUnavailable.as_str()])
            .inc();
        if self.session.conn.mode == SubscriberMode::Json {
            let msg = format!("{e}; messages from other nodes follow once the relay recovers");
            let frame = server_msg::error(None, server_msg::ErrorCode::RelayUnavailable, &msg);
            self.session.conn.outbox.push_control(frame);
        }
    }
}

/// Aborts the writer task however the session ends, a panic included, so no writer is left
/// holding the socket.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a session to its end. The connection's slot is freed when it returns.
pub async fn run(mut prepared: Prepared, prefix: bytes::Bytes, socket: Arc<Socket>) {
    let state = prepared.session.state.clone();
    let metrics = state.metrics.clone();
    let outbox = prepared.session.conn.outbox.clone();
    let urgent = outbox.urgent();
    let id = prepared.session.conn.id;
    let session = &mut prepared.session;
    let writer_config = writer::WriterConfig::from_config(&state.config);

    let mut writer = tokio::spawn(writer::run(
        socket.clone(),
        outbox.clone(),
        urgent,
        writer_config,
        session.flags.clone(),
        metrics.clone(),
    ));
    let _abort = AbortOnDrop(writer.abort_handle());
    let mut writer_done = false;
    let mut exit = tokio::select! {
        e = reader::run(session, prefix, &socket) => e,
        w = &mut writer => {
            writer_done = true;
            w.unwrap_or_else(|_| Exit::silent("internal"))
        }
    };

    let core = state.core.clone();
    core.unsubscribe_all(&mut session.conn);
    // Whether the writer got the close frame out (then the session lingers).
    let mut close_sent = false;
    if !writer_done {
        // A close the node already asked for (drain, timers, an operator) is why the client
        // hung up, which is what the reader saw: count the writer's reason, not the hang-up.
        let node_closing = outbox.is_closing();
        match &exit.close {
            Some((code, reason)) => outbox.close_as(*code, reason.clone(), *code != 1000 && *code != 1001, exit.label),
            None => outbox.close_as(1000, "", true, exit.label),
        }
        match tokio::time::timeout(CLOSE_FLUSH, &mut writer).await {
            Ok(Ok(w)) => {
                close_sent = w.close.is_some();
                if node_closing {
                    exit = w;
                }
            }
            Ok(Err(_)) => {}
            Err(_) => writer.abort(),
        }
    } else {
        close_sent = exit.close.is_some();
    }
    // The close frame is out and our side is shut for writing: read what the peer still
    // sends until it closes too (briefly), so its last bytes do not earn it a TCP reset.
    if close_sent {
        // Boxed: a once-per-connection path, kept out of the idle session task's size.
        Box::pin(linger::drain(socket.stream())).await;
    }
    tracing::debug!(conn = id, reason = exit.label, "connection closed");
    core.leave(&mut session.conn, exit.label);
}
