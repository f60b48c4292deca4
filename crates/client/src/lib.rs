//! `herald-client`: an async Rust client for Herald, used by the integration tests, the
//! load generator and applications.
//!
//! [`Client`] speaks JSON protocol v1 on `/ws`: it checks the handshake (including
//! `Sec-WebSocket-Accept`), requires the node's welcome, matches answers to requests by
//! `id`, answers heartbeat pings, and reports how the connection ended (close code and
//! reason). [`RawClient`] speaks raw mode on `/raw/{topic}`. Each connection runs a reader
//! task and a writer task; the public types are handles to them.
//!
//! Deliberately absent: TLS (`wss://`), reconnection and resubscription (a caller that
//! wants them reconnects on `ClientError::Closed`), and any client-side topic validation
//! beyond what building a request needs, so tests can send what the node must refuse.
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

mod client;
mod error;
mod event;
mod handshake;
mod options;
mod raw;
mod router;
mod transport;

pub use client::{Client, ClientHandle, Events};
pub use error::{ClientError, CloseInfo};
pub use event::{Event, Message, RawFrame};
pub use handshake::accept_key;
pub use options::ClientOptions;
pub use raw::RawClient;
