//! `herald-client`: an async Rust client for Herald, used by the integration tests, the
//! load generator and applications.
//!
//! [`Client`] speaks JSON protocol v1 on `/ws`: it checks the handshake (including
//! `Sec-WebSocket-Accept`), requires the node's welcome, matches answers to requests by
//! `id`, answers heartbeat pings, and reports how the connection ended (close code and
//! reason). [`RawClient`] speaks raw mode on `/raw/{topic}`. Each connection runs a reader
//! task and a writer task; the public types are handles to them.
//!
//! On topics with history, [`Message::position`] carries each message's `offset` and
//! `epoch`, [`ClientHandle::subscribe_since`] resubscribes from a position and returns what
//! the ack says (`recovered`, `positions`: [`SubscribeAck`]), and `publish` returns the
//! published message's position. A `Client` never reconnects by itself.
//!
//! [`ResumingClient`] does: it keeps the set of subscribed topics and each history topic's
//! last position (from delivered messages, else from the subscribe ack), and after a
//! connection loss that its user did not ask for it reconnects with exponential backoff and
//! full jitter ([`ReconnectOptions`]), resubscribes every topic with `since`, and reports
//! [`ResumeEvent::Resubscribed`] with `recovered` per topic, plus one [`ResumeEvent::Lost`]
//! per topic whose messages could not all be replayed (the application should refetch its
//! state). Messages of every connection flow through one event stream; a message at or
//! before the last position delivered (same epoch) is dropped and counted
//! ([`ResumeStats::duplicates_dropped`]).
//!
//! Deliberately absent: TLS (`wss://`), retrying publishes, and any client-side topic
//! validation beyond what building a request needs, so tests can send what the node must
//! refuse.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herald_client::ClientError> {
//! let mut client = herald_client::Client::connect("ws://127.0.0.1:8080/ws").await?;
//! client.subscribe(&["chat"]).await?;
//! client.publish("chat", &serde_json::json!({"text": "hi"})).await?;
//! let msg = client.next_message().await.expect("connection open");
//! assert_eq!(msg.topic, "chat");
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod error;
mod event;
mod frame;
mod handshake;
mod history;
mod options;
mod raw;
mod resume;
mod resume_task;
mod router;
mod transport;

pub use client::{Client, ClientHandle, Events};
pub use error::{ClientError, CloseInfo};
pub use event::{Event, Message, RawFrame};
pub use handshake::accept_key;
pub use history::{StreamPos, SubscribeAck};
pub use options::{ClientOptions, ReconnectOptions};
pub use raw::RawClient;
pub use resume::{ResumeEvent, ResumeStats, ResumingClient, ResumingEvents, ResumingHandle};
