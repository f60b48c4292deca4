//! One WebSocket connection after the upgrade: its lifecycle and the state it owns.
//!
//! Task model: the session task runs the reader (`reader.rs`: frames in, requests applied)
//! and spawns one writer task (`writer.rs`: outbox out, heartbeat). The reader is never put
//! back into a `select!` after losing one (fastwebsockets' `read_frame` is not
//! cancel-safe by design: it is dropped, never re-polled): the single `select!` here ends
//! the session, whichever branch wins:
//! - the reader returns (client closed, protocol error, I/O error),
//! - the writer returns (idle timeout, stalled peer, slow consumer, I/O error),
//! - the node drains (close 1001 at a random moment within the close window),
//! - a `/ws` connection made no request and holds no subscription in time (1008).
//!
//! Then the session unsubscribes everything, asks the writer to send the close frame, waits
//! for it briefly, and releases the connection slot. Every end is counted by reason.

mod handler;
mod reader;
mod writer;

use std::collections::HashSet;
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

/// Per-connection state owned by the session task.
pub struct Session {
    pub state: Arc<AppState>,
    pub id: ConnId,
    pub mode: SubscriberMode,
    pub echo: bool,
    pub outbox: Arc<Outbox>,
    pub topics: HashSet<Arc<str>>,
    /// Set by the reader on any frame; reset by the writer's heartbeat.
    pub seen: Arc<AtomicBool>,
    /// The client has sent a request (or holds a subscription): the first-message
    /// deadline no longer applies.
    pub engaged: Arc<AtomicBool>,
}

impl Session {
    /// Subscribes to one topic (already validated); false when the limit is reached.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        if self.topics.contains(topic) {
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
        self.topics.insert(Arc::from(topic));
        self.engaged.store(true, std::sync::atomic::Ordering::Relaxed);
        true
    }

    pub fn unsubscribe(&mut self, topic: &str) {
        if self.topics.remove(topic) {
            self.state.broker.unsubscribe(topic, self.id);
        }
    }

    fn unsubscribe_all(&mut self) {
        for t in self.topics.drain() {
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
        topics: HashSet::new(),
        seen: Arc::new(AtomicBool::new(false)),
        engaged: Arc::new(AtomicBool::new(params.mode == SubscriberMode::Raw)),
    };
    if params.mode == SubscriberMode::Json {
        outbox.push_control(server_msg::welcome(&state.node_id, &id.to_string()));
    }
    for t in &params.topics {
        session.subscribe(t);
    }

    let mut writer = tokio::spawn(writer::run(
        write,
        outbox.clone(),
        urgent,
        writer::WriterConfig::from_config(&state.config),
        session.seen.clone(),
        metrics.clone(),
    ));
    let mut writer_exit: Option<Exit> = None;

    let exit = {
        let close_clients = state.shutdown.close_clients.clone();
        let window = state.config.close_window();
        let shutdown = async move {
            close_clients.cancelled().await;
            let spread = if window.is_zero() {
                Duration::ZERO
            } else {
                window.mul_f64(rand::random::<f64>())
            };
            tokio::time::sleep(spread).await;
        };
        let engaged = session.engaged.clone();
        let first = state.config.first_message_timeout();
        let first_deadline = async move {
            match first {
                Some(t) => {
                    tokio::time::sleep(t).await;
                    if engaged.load(std::sync::atomic::Ordering::Relaxed) {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let reader = reader::run(&mut session, prefix, read);
        tokio::select! {
            e = reader => e,
            w = &mut writer => {
                let e = w.unwrap_or_else(|_| Exit::silent("internal"));
                writer_exit = Some(e.clone());
                e
            }
            _ = shutdown => Exit::new(1001, "server shutting down", "shutdown"),
            _ = first_deadline => Exit::new(1008, "no subscription or request within the first-message deadline", "first_message_timeout"),
        }
    };

    session.unsubscribe_all();
    if writer_exit.is_none() {
        match &exit.close {
            Some((code, reason)) => outbox.close(*code, reason.clone(), *code != 1000 && *code != 1001),
            None => outbox.close(1000, "", true),
        }
        if tokio::time::timeout(CLOSE_FLUSH, &mut writer).await.is_err() {
            writer.abort();
        }
    }
    tracing::debug!(conn = id, peer = %params.peer, reason = exit.label, "connection closed");
    metrics.connections.dec();
    metrics.connections_closed.with_label_values(&[exit.label]).inc();
    state.connections.remove(&id);
    drop(slot);
}
