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

mod handler;
mod reader;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::{ConnId, Outbox, Subscriber, SubscriberMode};
use herald_protocol::server_msg;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

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
    /// Set by the reader on any frame; reset by the writer's heartbeat.
    pub seen: AtomicBool,
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

    /// How many of `topics` this connection does not hold yet.
    pub fn new_topics<'a>(&self, topics: impl Iterator<Item = &'a str>) -> usize {
        topics.filter(|t| !self.holds(t)).count()
    }

    /// Subscribes to one topic (already validated); false when the limit is reached.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        if self.holds(topic) {
            return true;
        }
        if self.topics.len() >= self.state.config.limits.max_subscriptions {
            return false;
        }
        let sub = Subscriber { conn: self.id, outbox: self.outbox.clone(), mode: self.mode, echo: self.echo };
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

/// Runs a session to its end. `slot` is released when it returns.
pub async fn run(
    state: Arc<AppState>,
    slot: ConnSlot,
    params: SessionParams,
    prefix: bytes::Bytes,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
) {
    let id = state.next_conn_id();
    let urgent = CancellationToken::new();
    let outbox = Arc::new(Outbox::new(state.config.outbox_limits(), urgent.clone()));
    let mode_label = match params.mode {
        SubscriberMode::Json => "json",
        SubscriberMode::Raw => "raw",
    };
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    metrics.connections_opened.with_label_values(&[mode_label]).inc();
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
            seen: AtomicBool::new(false),
            engaged: AtomicBool::new(params.mode == SubscriberMode::Raw),
        }),
    };
    if params.mode == SubscriberMode::Json {
        outbox.push_control(server_msg::welcome(&state.node_id, &id.to_string()));
    }
    for t in params.topics {
        session.subscribe(&t);
    }
    let peer = params.peer;

    let mut writer = tokio::spawn(writer::run(
        write,
        outbox.clone(),
        urgent,
        writer::WriterConfig::from_config(&state.config),
        session.flags.clone(),
        state.shutdown.close_clients.clone(),
        metrics.clone(),
    ));
    let mut writer_done = false;
    let mut exit = tokio::select! {
        e = reader::run(&mut session, prefix, read) => e,
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
    metrics.connections.dec();
    metrics.connections_closed.with_label_values(&[exit.label]).inc();
    state.connections.remove(&id);
    drop(slot);
}
