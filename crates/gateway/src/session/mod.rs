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

mod counts;
mod handler;
mod reader;
mod socket;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::{ConnId, Outbox, Subscriber, SubscriberMode};
use herald_protocol::server_msg;
use tokio_util::sync::CancellationToken;

pub use self::socket::Socket;

use crate::node::{AppState, ConnInfo, ConnSlot};

/// What the upgrade request asked for.
pub struct SessionParams {
    pub mode: SubscriberMode,
    /// Topics to subscribe at connect (`?topics=` or the raw path).
    pub topics: Vec<String>,
    /// Receive one's own publications (`?echo=false` turns it off).
    pub echo: bool,
    pub peer: SocketAddr,
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
}

/// Per-connection state owned by the session task.
pub struct Session {
    pub state: Arc<AppState>,
    pub id: ConnId,
    pub mode: SubscriberMode,
    pub echo: bool,
    pub outbox: Arc<Outbox>,
    /// Subscribed topics; a short list, searched linearly (at most
    /// `limits.max_subscriptions`), sized exactly to save memory on idle connections.
    pub topics: Vec<Arc<str>>,
    pub flags: Arc<SessionFlags>,
}

impl Session {
    fn holds(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| &**t == topic)
    }

    /// How many distinct topics of `topics` this connection does not hold yet.
    pub fn new_topics<'a>(&self, topics: impl Iterator<Item = &'a str>) -> usize {
        let mut fresh: Vec<&str> = topics.filter(|t| !self.holds(t)).collect();
        fresh.sort_unstable();
        fresh.dedup();
        fresh.len()
    }

    /// Subscribes to one topic (already validated); false when the limit is reached.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        if self.holds(topic) {
            return true;
        }
        if self.topics.len() >= self.state.config.limits.max_subscriptions {
            return false;
        }
        let sub = Subscriber {
            conn: self.id,
            outbox: self.outbox.clone(),
            mode: self.mode,
            echo: self.echo,
        };
        self.state.broker.subscribe(topic, sub);
        self.topics.reserve_exact(1);
        self.topics.push(Arc::from(topic));
        self.flags.engaged.store(true, std::sync::atomic::Ordering::Relaxed);
        true
    }

    pub fn unsubscribe(&mut self, topic: &str) {
        if let Some(i) = self.topics.iter().position(|t| &**t == topic) {
            self.topics.swap_remove(i);
            self.state.broker.unsubscribe(topic, self.id);
        }
    }

    fn unsubscribe_all(&mut self) {
        for t in std::mem::take(&mut self.topics) {
            self.state.broker.unsubscribe(&t, self.id);
        }
    }
}

/// How long the writer gets to send the close frame at the end.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// A connection registered before its upgrade response is sent: outbox, welcome frame and
/// subscriptions already in place, so that a client holding the 101 answer is subscribed
/// (raw mode has no welcome frame to wait for). Frames published meanwhile wait in the
/// outbox and follow the 101.
pub struct Prepared {
    session: Session,
    urgent: CancellationToken,
    peer: SocketAddr,
    released: bool,
}

impl Prepared {
    /// Registers the connection; call just before answering the upgrade.
    pub fn new(state: Arc<AppState>, params: SessionParams) -> Self {
        let id = state.next_conn_id();
        let urgent = CancellationToken::new();
        let outbox = Arc::new(Outbox::new(state.config.outbox_limits(), urgent.clone()));
        let mode_label = match params.mode {
            SubscriberMode::Json => "json",
            SubscriberMode::Raw => "raw",
        };
        state.metrics.connections.inc();
        state.metrics.connections_opened.with_label_values(&[mode_label]).inc();
        state.connections.insert(
            id,
            ConnInfo {
                outbox: outbox.clone(),
                peer: params.peer,
                mode: mode_label,
                opened: Instant::now(),
            },
        );
        let mut session = Session {
            state: state.clone(),
            id,
            mode: params.mode,
            echo: params.echo,
            outbox: outbox.clone(),
            topics: Vec::new(),
            flags: Arc::new(SessionFlags {
                last_seen_ms: AtomicU64::new(crate::clock::coarse_ms()),
                engaged: AtomicBool::new(params.mode == SubscriberMode::Raw),
            }),
        };
        if params.mode == SubscriberMode::Json {
            outbox.push_control(server_msg::welcome(&state.node_id, &id.to_string()));
        }
        for t in params.topics {
            session.subscribe(&t);
        }
        Self {
            session,
            urgent,
            peer: params.peer,
            released: false,
        }
    }

    /// Undoes the registration (the upgrade never completed); counted as `client_gone`.
    fn release(&mut self, label: &'static str) {
        if self.released {
            return;
        }
        self.released = true;
        let s = &mut self.session;
        s.unsubscribe_all();
        s.state.metrics.connections.dec();
        s.state.metrics.connections_closed.with_label_values(&[label]).inc();
        s.state.connections.remove(&s.id);
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.release("client_gone");
    }
}

/// Runs a session to its end. `slot` is released when it returns.
pub async fn run(mut prepared: Prepared, slot: ConnSlot, prefix: bytes::Bytes, socket: Arc<Socket>) {
    let state = prepared.session.state.clone();
    let metrics = state.metrics.clone();
    let outbox = prepared.session.outbox.clone();
    let urgent = prepared.urgent.clone();
    let id = prepared.session.id;
    let peer = prepared.peer;
    let session = &mut prepared.session;

    let mut writer = tokio::spawn(writer::run(
        socket.clone(),
        outbox.clone(),
        urgent,
        writer::WriterConfig::from_config(&state.config),
        session.flags.clone(),
        metrics.clone(),
    ));
    let mut writer_done = false;
    let mut exit = tokio::select! {
        e = reader::run(session, prefix, socket.stream()) => e,
        w = &mut writer => {
            writer_done = true;
            w.unwrap_or_else(|_| Exit::silent("internal"))
        }
    };

    session.unsubscribe_all();
    if !writer_done {
        // A close the node already asked for (drain, timers, an operator) is why the client
        // hung up, which is what the reader saw: count the writer's reason, not the hang-up.
        let node_closing = outbox.is_closing();
        match &exit.close {
            Some((code, reason)) => outbox.close_as(*code, reason.clone(), *code != 1000 && *code != 1001, exit.label),
            None => outbox.close_as(1000, "", true, exit.label),
        }
        match tokio::time::timeout(CLOSE_FLUSH, &mut writer).await {
            Ok(Ok(w)) if node_closing => exit = w,
            Ok(_) => {}
            Err(_) => writer.abort(),
        }
    }
    tracing::debug!(conn = id, %peer, reason = exit.label, "connection closed");
    prepared.release(exit.label);
    drop(slot);
}
