//! The JSON client's reader task and the table of requests waiting for an answer.
//!
//! The reader decodes every frame and routes it: an `ack`, `pong` or `error` whose `id` a
//! request registered goes to that request's oneshot; a `message` and everything else goes
//! to the bounded event queue (waiting when it is full, which is the back-pressure). When
//! the connection ends, every waiting request fails with the close reason and `Closed` is
//! the last event. The table's lock is never held across an `.await`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use fastwebsockets::OpCode;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{ClientError, CloseInfo};
use crate::event::{Event, Message, RawFrame};
use crate::frame::decode;
use crate::handshake::WsRead;
use crate::history::{StreamPos, SubscribeAck};
use crate::transport::{next_data, CtrlTx};

/// The answer to a request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Boxed: most acks carry no history, and the variant would make every reply large.
    Ack(Box<AckInfo>),
    Pong,
    Error {
        code: String,
        message: String,
    },
}

/// What an ack carries besides its id: history positions, for acks of history topics.
#[derive(Debug, Default)]
pub(crate) struct AckInfo {
    /// A publish ack's `offset` and `epoch`.
    pub position: Option<StreamPos>,
    /// A subscribe ack's `recovered` and `positions`.
    pub subscribe: SubscribeAck,
}

/// State shared by the handles and the reader of one connection.
pub(crate) struct Shared {
    pending: Mutex<Pending>,
    /// How the connection ended, once it has; handles wait on it in `close`/`closed`.
    close: watch::Sender<Option<CloseInfo>>,
    /// Request ids; numbers, so the reader can match answers without allocating.
    next_id: AtomicU64,
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set (under the same lock) when the reader finishes, so no request registers after
    /// the table was drained and waits forever.
    finished: bool,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            pending: Mutex::default(),
            close: watch::Sender::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates an id and a slot for its answer.
    pub(crate) fn register(&self) -> Result<(u64, oneshot::Receiver<Reply>), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut p = self.lock();
        if p.finished {
            drop(p);
            return Err(self.close_error());
        }
        p.waiters.insert(id, tx);
        Ok((id, rx))
    }

    /// Drops the slot of a request that gave up (timeout, cancelled).
    pub(crate) fn forget(&self, id: u64) {
        self.lock().waiters.remove(&id);
    }

    /// Hands `reply` to request `id`; gives it back when nobody waits for that id.
    fn complete(&self, id: u64, reply: Reply) -> Result<(), Reply> {
        let waiter = self.lock().waiters.remove(&id);
        match waiter {
            Some(tx) => tx.send(reply),
            None => Err(reply),
        }
    }

    /// Records how the connection ended and fails every waiting request.
    fn finish(&self, info: CloseInfo) {
        let waiters = {
            let mut p = self.lock();
            p.finished = true;
            std::mem::take(&mut p.waiters)
        };
        self.close.send_replace(Some(info));
        drop(waiters);
    }

    /// How the connection ended, if it has.
    pub(crate) fn close_info(&self) -> Option<CloseInfo> {
        self.close.borrow().clone()
    }

    /// A receiver to wait for the end of the connection.
    pub(crate) fn watch_close(&self) -> watch::Receiver<Option<CloseInfo>> {
        self.close.subscribe()
    }

    /// The error for an operation on a connection that is gone.
    pub(crate) fn close_error(&self) -> ClientError {
        match self.close_info() {
            Some(info) => info.into(),
            None => ClientError::Closed {
                code: CloseInfo::ABNORMAL,
                reason: "connection is closing".into(),
            },
        }
    }
}

/// The reader task: routes frames until the connection ends.
pub(crate) async fn run(mut rd: WsRead, ctrl: CtrlTx, shared: std::sync::Arc<Shared>, events: mpsc::Sender<Event>) {
    let info = loop {
        match next_data(&mut rd, &ctrl).await {
            Ok((op, bytes)) => {
                if let Some(ev) = route(&shared, op, bytes) {
                    // A dropped event queue only means nobody listens any more.
                    let _ = events.send(ev).await;
                }
            }
            Err(info) => break info,
        }
    };
    // Dropping the obligation queue lets the writer finish once it has sent what it holds.
    drop(ctrl);
    shared.finish(info.clone());
    let _ = events.send(Event::Closed(info)).await;
}

/// Decides where one data frame goes; `None` when a waiting request took it.
fn route(shared: &Shared, op: OpCode, bytes: Bytes) -> Option<Event> {
    if op != OpCode::Text {
        return Some(Event::Other(RawFrame::Binary(bytes)));
    }
    let Ok(m) = decode(&bytes) else {
        return Some(other_text(&bytes));
    };
    let id = m.id.map(|r| r.get());
    let reply = match m.kind.as_ref() {
        "message" => {
            let position = m.position();
            return match (m.topic, m.data) {
                (Some(topic), Some(data)) => Some(Event::Message(Message {
                    topic: topic.into_owned(),
                    data: data.to_owned(),
                    encoding: m.encoding.map(Cow::into_owned),
                    position,
                    frame: bytes.clone(),
                })),
                _ => Some(other_text(&bytes)),
            };
        }
        "ack" => Reply::Ack(Box::new(AckInfo {
            position: m.position(),
            subscribe: SubscribeAck {
                recovered: m.recovered.unwrap_or_default(),
                positions: m.positions.unwrap_or_default(),
            },
        })),
        "pong" => Reply::Pong,
        "error" => Reply::Error {
            code: m.code.unwrap_or_default().into_owned(),
            message: m.message.unwrap_or_default(),
        },
        _ => return Some(other_text(&bytes)),
    };
    let reply = match id.and_then(|s| s.parse::<u64>().ok()) {
        Some(n) => match shared.complete(n, reply) {
            Ok(()) => return None,
            Err(reply) => reply,
        },
        None => reply,
    };
    match reply {
        Reply::Error { code, message } => Some(Event::Error {
            id: id.map(str::to_owned),
            code,
            message,
            topic: m.topic.map(Cow::into_owned),
        }),
        _ => Some(other_text(&bytes)),
    }
}

fn other_text(bytes: &[u8]) -> Event {
    Event::Other(RawFrame::Text(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn routes_answers_to_waiters_and_the_rest_to_events() {
        let shared = Shared::new();
        let (id, mut rx) = shared.register().unwrap();
        let ack = format!(r#"{{"type":"ack","id":{id}}}"#);
        assert!(route(&shared, OpCode::Text, text(&ack)).is_none());
        assert!(matches!(rx.try_recv(), Ok(Reply::Ack(_))));
        // The same answer again has no waiter.
        assert!(matches!(
            route(&shared, OpCode::Text, text(&ack)),
            Some(Event::Other(_))
        ));

        let ev = route(
            &shared,
            OpCode::Text,
            text(r#"{"type":"error","code":"invalid_json","message":"m"}"#),
        );
        assert!(matches!(ev, Some(Event::Error { id: None, ref code, .. }) if code == "invalid_json"));
        let ev = route(
            &shared,
            OpCode::Text,
            text(r#"{"type":"error","id":"s","code":"x","message":"m"}"#),
        );
        assert!(matches!(ev, Some(Event::Error { id: Some(ref i), .. }) if i == "\"s\""));

        let ev = route(
            &shared,
            OpCode::Text,
            text(r#"{"type":"message","topic":"a","data":{"k":[1]}}"#),
        );
        let Some(Event::Message(m)) = ev else { panic!("{ev:?}") };
        assert_eq!((m.topic.as_str(), m.data_json()), ("a", r#"{"k":[1]}"#));

        assert!(matches!(
            route(&shared, OpCode::Text, text("nope")),
            Some(Event::Other(RawFrame::Text(_)))
        ));
        assert!(matches!(
            route(&shared, OpCode::Binary, text("b")),
            Some(Event::Other(RawFrame::Binary(_)))
        ));
    }

    #[test]
    fn finishing_fails_waiters_and_refuses_new_requests() {
        let shared = Shared::new();
        let (_, mut rx) = shared.register().unwrap();
        shared.finish(CloseInfo {
            code: 1001,
            reason: "bye".into(),
        });
        assert!(rx.try_recv().is_err());
        assert!(matches!(shared.register(), Err(ClientError::Closed { code: 1001, .. })));
    }
}
