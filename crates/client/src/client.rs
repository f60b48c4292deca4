//! The JSON protocol v1 client (`/ws`): connecting, requests that await their answer, and
//! the stream of events.
//!
//! A [`Client`] is a [`ClientHandle`] (the sending side: cheap to clone, usable from many
//! tasks) plus [`Events`] (the receiving side, one owner). `into_split` separates them so a
//! load generator can publish from one task and consume in another. Each connection runs
//! two background tasks (see `transport` and `router`); dropping every handle closes the
//! connection with code 1000.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::OpCode;
use herald_protocol::server_msg::publish_request;
use herald_protocol::topic::is_topic_byte;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::error::{ClientError, CloseInfo};
use crate::event::{Event, Message};
use crate::history::{StreamPos, SubscribeAck};
use crate::options::ClientOptions;
use crate::router::{self, AckInfo, Reply, Shared};
use crate::transport::{self, next_data, spawn_writer, Out};

/// What the node said in its welcome frame.
#[derive(Debug)]
struct Welcome {
    node: String,
    connection: String,
}

/// A connection speaking JSON protocol v1. Dereferences to [`ClientHandle`] for sending.
pub struct Client {
    handle: ClientHandle,
    events: Events,
}

/// The sending side of a [`Client`]: requests, publishes, close. Clone it to share it.
#[derive(Clone)]
pub struct ClientHandle {
    data: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    welcome: Arc<Welcome>,
    request_timeout: Duration,
}

/// The receiving side of a [`Client`]: messages and other [`Event`]s, in arrival order.
pub struct Events {
    rx: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
}

impl Client {
    /// Connects to `ws://host:port/ws[?topics=a,b]` with default [`ClientOptions`] and waits
    /// for the welcome frame.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with explicit options. A Close instead of the welcome (a node at capacity
    /// or draining) is `ClientError::Closed`; an error frame is `ClientError::Server`.
    pub async fn connect_with(url: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        let (mut rd, wr) = crate::handshake::open(url, &opts).await?;
        let (data, ctrl) = spawn_writer(wr, opts.send_buffer);
        let first = tokio::time::timeout(opts.connect_timeout, next_data(&mut rd, &ctrl))
            .await
            .map_err(|_| ClientError::Timeout)?;
        let welcome = match first {
            Err(info) => return Err(info.into()),
            Ok((OpCode::Text, bytes)) => parse_welcome(&bytes)?,
            Ok(_) => {
                return Err(ClientError::Protocol(
                    "expected a welcome frame, got a binary frame".into(),
                ))
            }
        };
        let shared = Arc::new(Shared::new());
        let (ev_tx, ev_rx) = mpsc::channel(opts.event_buffer.max(1));
        tokio::spawn(router::run(rd, ctrl, shared.clone(), ev_tx));
        Ok(Client {
            handle: ClientHandle {
                data,
                shared: shared.clone(),
                welcome: Arc::new(welcome),
                request_timeout: opts.request_timeout,
            },
            events: Events { rx: ev_rx, shared },
        })
    }

    /// A clone of the sending side.
    pub fn handle(&self) -> ClientHandle {
        self.handle.clone()
    }

    /// Separates the sending and receiving sides.
    pub fn into_split(self) -> (ClientHandle, Events) {
        (self.handle, self.events)
    }

    /// The receiving side.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// See [`Events::next_event`].
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.next_event().await
    }

    /// See [`Events::next_event_timeout`].
    pub async fn next_event_timeout(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        self.events.next_event_timeout(timeout).await
    }

    /// See [`Events::next_message`].
    pub async fn next_message(&mut self) -> Option<Message> {
        self.events.next_message().await
    }

    /// See [`Events::next_message_timeout`].
    pub async fn next_message_timeout(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        self.events.next_message_timeout(timeout).await
    }
}

impl std::ops::Deref for Client {
    type Target = ClientHandle;
    fn deref(&self) -> &ClientHandle {
        &self.handle
    }
}

fn parse_welcome(bytes: &[u8]) -> Result<Welcome, ClientError> {
    let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    let m = crate::frame::decode(bytes)
        .map_err(|_| ClientError::Protocol(format!("expected a welcome frame, got {}", shown())))?;
    match (m.kind.as_ref(), m.node, m.connection) {
        ("welcome", Some(node), Some(connection)) => Ok(Welcome { node, connection }),
        ("error", ..) => Err(ClientError::Server {
            code: m.code.unwrap_or_default().into_owned(),
            message: m.message.unwrap_or_default(),
        }),
        _ => Err(ClientError::Protocol(format!(
            "expected a welcome frame, got {}",
            shown()
        ))),
    }
}

/// Removes a request's slot if the request is dropped before its answer arrives.
struct Slot<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

impl ClientHandle {
    /// The id of the node this client is connected to (from the welcome frame).
    pub fn node(&self) -> &str {
        &self.welcome.node
    }

    /// The node-assigned id of this connection (from the welcome frame).
    pub fn connection_id(&self) -> &str {
        &self.welcome.connection
    }

    /// Subscribes to `topics` and waits for the ack.
    pub async fn subscribe(&self, topics: &[&str]) -> Result<(), ClientError> {
        self.subscribe_since(topics, &HashMap::new()).await.map(drop)
    }

    /// Subscribes to `topics`, asking the node to replay each history topic of `since`
    /// from after the given position (keys must be among `topics`; an empty map sends no
    /// `since`), and returns what the ack says about history: per topic of `since` whether
    /// it was `recovered`, and per history topic the stream's position (see
    /// [`SubscribeAck`]). The replayed messages follow the ack as ordinary messages.
    pub async fn subscribe_since(
        &self,
        topics: &[&str],
        since: &HashMap<String, StreamPos>,
    ) -> Result<SubscribeAck, ClientError> {
        let frame = subscribe_frame(topics, since)?;
        let reply = self
            .request(|id| {
                let mut f = frame;
                f.insert("id".into(), id.into());
                serde_json::to_vec(&f).expect("a JSON map always serialises")
            })
            .await?;
        Ok(expect_ack(reply)?.subscribe)
    }

    /// Unsubscribes from `topics` and waits for the ack.
    pub async fn unsubscribe(&self, topics: &[&str]) -> Result<(), ClientError> {
        let list = serde_json::to_string(topics).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        let reply = self
            .request(|id| format!(r#"{{"op":"unsubscribe","topics":{list},"id":{id}}}"#).into_bytes())
            .await?;
        expect_ack(reply).map(drop)
    }

    /// Publishes `data` to `topic` and waits for the ack; returns the message's position
    /// when the topic has history (see [`publish_json`](Self::publish_json)).
    pub async fn publish(&self, topic: &str, data: &serde_json::Value) -> Result<Option<StreamPos>, ClientError> {
        let json = serde_json::to_string(data).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        self.publish_json(topic, &json).await
    }

    /// Publishes `data_json` (JSON text, sent verbatim) to `topic` and waits for the ack.
    /// Returns the `offset` and `epoch` the ack carries on a topic with history, `None` on
    /// other topics. Invalid JSON is refused locally, since the node could not echo the
    /// request's id.
    pub async fn publish_json(&self, topic: &str, data_json: &str) -> Result<Option<StreamPos>, ClientError> {
        serde_json::from_str::<&RawValue>(data_json)
            .map_err(|e| ClientError::InvalidInput(format!("data is not valid JSON: {e}")))?;
        let reply = self.request(|id| publish_frame(topic, data_json, Some(id))).await?;
        Ok(expect_ack(reply)?.position)
    }

    /// Publishes `data_json` (JSON text, sent verbatim, not validated) without an id: no
    /// ack is requested, so this returns once the frame is queued. Errors the node reports
    /// arrive as [`Event::Error`].
    pub async fn publish_nowait(&self, topic: &str, data_json: &str) -> Result<(), ClientError> {
        self.send(Out::Text(publish_frame(topic, data_json.as_bytes(), None)))
            .await
    }

    /// Sends `{"op":"ping"}` and returns the round-trip time to the `pong`.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        match self
            .request(|id| format!(r#"{{"op":"ping","id":{id}}}"#).into_bytes())
            .await?
        {
            Reply::Pong => Ok(start.elapsed()),
            other => Err(ClientError::Protocol(format!("expected a pong, got {other:?}"))),
        }
    }

    /// Sends `text` as one text frame, as is (for tests of malformed requests). Answers
    /// arrive as events.
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.send(Out::Text(text.into().into_bytes())).await
    }

    /// Sends arbitrary bytes as one binary frame (the JSON protocol refuses them; for tests).
    pub async fn send_binary(&self, bytes: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.send(Out::Binary(bytes.into())).await
    }

    /// Sends Close with `code` and `reason` after everything queued before it, then waits
    /// (up to the request timeout) for the node's Close reply. Closing a closed connection
    /// is not an error.
    pub async fn close(&self, code: u16, reason: &str) -> Result<(), ClientError> {
        let close = self.shared.watch_close();
        transport::close_and_wait(&self.data, code, reason, self.request_timeout, close).await
    }

    /// How the connection ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseInfo> {
        self.shared.close_info()
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.close_info().is_some()
    }

    /// Waits until the connection ends (for example until a draining node closes it).
    pub async fn closed(&self) -> CloseInfo {
        transport::wait_closed(self.shared.watch_close()).await
    }

    async fn send(&self, out: Out) -> Result<(), ClientError> {
        self.data.send(out).await.map_err(|_| self.shared.close_error())
    }

    /// Sends the frame `build(id)` and waits for its answer; an error frame is
    /// `ClientError::Server`.
    async fn request(&self, build: impl FnOnce(u64) -> Vec<u8>) -> Result<Reply, ClientError> {
        let (id, rx) = self.shared.register()?;
        let _slot = Slot {
            shared: &self.shared,
            id,
        };
        let exchange = async {
            self.send(Out::Text(build(id))).await?;
            rx.await.map_err(|_| self.shared.close_error())
        };
        let reply = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)??;
        match reply {
            Reply::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Ok(other),
        }
    }
}

fn expect_ack(reply: Reply) -> Result<AckInfo, ClientError> {
    match reply {
        Reply::Ack(info) => Ok(*info),
        other => Err(ClientError::Protocol(format!("expected an ack, got {other:?}"))),
    }
}

/// A subscribe request without its id: `op`, `topics` and, when not empty, `since`.
fn subscribe_frame(
    topics: &[&str],
    since: &HashMap<String, StreamPos>,
) -> Result<serde_json::Map<String, serde_json::Value>, ClientError> {
    let mut f = serde_json::Map::new();
    f.insert("op".into(), "subscribe".into());
    f.insert("topics".into(), topics.into());
    if !since.is_empty() {
        let since = serde_json::to_value(since).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        f.insert("since".into(), since);
    }
    Ok(f)
}

/// A publish request; topics that need JSON escaping (invalid ones, sent by tests) are
/// escaped instead of copied.
fn publish_frame(topic: &str, data_json: impl AsRef<[u8]>, id: Option<u64>) -> Vec<u8> {
    let data = data_json.as_ref();
    if topic.bytes().all(is_topic_byte) {
        return publish_request(topic, data, id);
    }
    let quoted = serde_json::to_string(topic).expect("a str always serialises");
    let mut out = format!(r#"{{"op":"publish","topic":{quoted},"data":"#).into_bytes();
    out.extend_from_slice(data);
    if let Some(id) = id {
        out.extend_from_slice(format!(r#","id":{id}"#).as_bytes());
    }
    out.push(b'}');
    out
}

impl Events {
    /// The next event; `None` after [`Event::Closed`] has been returned.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event within `timeout`; `Timeout` if none came, `Closed` if the connection
    /// ended and its `Closed` event was already taken.
    pub async fn next_event_timeout(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Some(ev)) => Ok(ev),
            Ok(None) => Err(self.shared.close_error()),
        }
    }

    /// The next message, skipping other events (use [`next_event`](Self::next_event) to see
    /// unsolicited errors); `None` once the connection has ended.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            match self.rx.recv().await? {
                Event::Message(m) => return Some(m),
                Event::Closed(_) => return None,
                Event::Error { .. } | Event::Other(_) => {}
            }
        }
    }

    /// The next message within `timeout`, skipping other events; `Timeout` if none came,
    /// `Closed` (with the node's code and reason) if the connection ended.
    pub async fn next_message_timeout(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        match tokio::time::timeout(timeout, self.next_message()).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(self.shared.close_error()),
        }
    }

    /// An event that has already arrived, without waiting.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_frames_escape_only_when_needed() {
        assert_eq!(
            publish_frame("a", "1", Some(2)),
            br#"{"op":"publish","topic":"a","data":1,"id":2}"#
        );
        assert_eq!(
            publish_frame("a\"b", "1", None),
            br#"{"op":"publish","topic":"a\"b","data":1}"#
        );
    }

    #[test]
    fn subscribe_frames_carry_since_only_when_given() {
        let f = subscribe_frame(&["a", "b"], &HashMap::new()).unwrap();
        assert_eq!(
            serde_json::Value::Object(f),
            serde_json::json!({"op": "subscribe", "topics": ["a", "b"]})
        );
        let since = HashMap::from([("a".to_owned(), StreamPos::new(41, "k3"))]);
        let f = subscribe_frame(&["a", "b"], &since).unwrap();
        assert_eq!(f["since"], serde_json::json!({"a": {"offset": 41, "epoch": "k3"}}));
    }

    #[test]
    fn welcome_is_required() {
        let w = parse_welcome(br#"{"type":"welcome","node":"n1","connection":"c1"}"#).unwrap();
        assert_eq!((w.node.as_str(), w.connection.as_str()), ("n1", "c1"));
        assert!(matches!(
            parse_welcome(br#"{"type":"error","code":"shutting_down","message":"m"}"#),
            Err(ClientError::Server { .. })
        ));
        assert!(matches!(parse_welcome(b"[]"), Err(ClientError::Protocol(_))));
    }
}
