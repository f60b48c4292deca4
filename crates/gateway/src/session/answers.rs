//! A connection's answers, in request order, while some of them wait for the relay.
//!
//! A subscribe is acknowledged once the relay listens for its topics, a publish with an
//! `id` once the relay has it (the core hands out tickets for both). The reader does not
//! stop for them: it queues the answer here and goes on reading, and an answer known at
//! once (a pong, an error, an ack on a single node) that comes after a waiting one waits
//! behind it, so answers always leave in request order. Each waiting answer has a deadline
//! ([`RELAY_ANSWER_TIMEOUT`]); past it the client gets `relay_unavailable` ("did not answer
//! in time"), never silence. At most [`MAX_WAITING`] answers wait; the reader stops reading
//! while that many do.
//!
//! Nothing is allocated while nothing waits: a connection whose answers are all known at
//! once (every connection on a single node) sends them straight to the outbox.

use std::collections::VecDeque;

use bytes::Bytes;
use herald_broker::{BrokerMetrics, Outbox, PublishTicket};
use herald_protocol::server_msg::{self, ErrorCode};
use herald_protocol::StreamPos;
use tokio::time::Instant;

use crate::core::{ConfirmError, Confirmation, Recovered, RELAY_ANSWER_TIMEOUT};

/// Answers that may wait at once; the reader pauses at this many.
pub const MAX_WAITING: usize = 256;

/// One answer in the queue.
enum Pending {
    /// Known, waiting for those before it.
    Ready(Bytes),
    Subscribe {
        id: Option<Box<str>>,
        confirmation: Confirmation,
        deadline: Instant,
    },
    Publish {
        id: Box<str>,
        ticket: PublishTicket,
        /// Local subscribers that got it, for the error message.
        delivered: usize,
        deadline: Instant,
    },
}

/// See the module docs.
#[derive(Default)]
pub struct Answers {
    /// `None` while nothing waits. Boxed: 8 bytes in every idle session instead of a
    /// `VecDeque`'s 32.
    #[allow(clippy::box_collection)]
    queue: Option<Box<VecDeque<Pending>>>,
}

/// Counts an error answer by code and builds its frame.
pub fn error_frame(metrics: &BrokerMetrics, id: Option<&str>, code: ErrorCode, message: &str) -> Bytes {
    metrics.client_errors.with_label_values(&[code.as_str()]).inc();
    server_msg::error(id, code, message)
}

/// [`error_frame`] about one subscription (no `id`, a `topic` field): counted the same way.
pub fn topic_error_frame(metrics: &BrokerMetrics, code: ErrorCode, topic: &str, message: &str) -> Bytes {
    metrics.client_errors.with_label_values(&[code.as_str()]).inc();
    server_msg::topic_error(code, topic, message)
}

impl Answers {
    /// Answers queued (waiting or behind one that waits).
    pub fn waiting(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    pub fn is_empty(&self) -> bool {
        self.waiting() == 0
    }

    /// True while the reader must not take more requests.
    pub fn full(&self) -> bool {
        self.waiting() >= MAX_WAITING
    }

    /// An answer known now: to the outbox at once, or behind the ones that wait. Returns
    /// the outbox's backlog when it was pushed.
    pub fn send(&mut self, outbox: &Outbox, frame: Bytes) -> Option<usize> {
        match &mut self.queue {
            Some(q) if !q.is_empty() => {
                q.push_back(Pending::Ready(frame));
                None
            }
            _ => Some(outbox.push_control(frame)),
        }
    }

    /// The answer to a subscribe: an ack (when it has an `id`) once `confirmation`
    /// resolves, or `relay_unavailable`.
    pub fn subscribe(
        &mut self,
        outbox: &Outbox,
        metrics: &BrokerMetrics,
        id: Option<&str>,
        mut confirmation: Confirmation,
    ) -> Option<usize> {
        match confirmation.try_now() {
            Some(result) if self.is_empty() => {
                let sent = subscribe_answer(metrics, id, result).and_then(|f| self.send(outbox, f));
                confirmation.release();
                sent
            }
            _ => {
                self.push(Pending::Subscribe {
                    id: id.map(Box::from),
                    confirmation,
                    deadline: Instant::now() + RELAY_ANSWER_TIMEOUT,
                });
                self.flush(outbox, metrics)
            }
        }
    }

    /// The answer to a publish with an `id`: an ack once the relay has it, or
    /// `relay_unavailable`.
    pub fn publish(
        &mut self,
        outbox: &Outbox,
        metrics: &BrokerMetrics,
        id: &str,
        mut ticket: PublishTicket,
        delivered: usize,
    ) -> Option<usize> {
        match ticket.try_outcome() {
            Some(result) if self.is_empty() => {
                let frame = publish_answer(metrics, id, result.map_err(|e| e.to_string()), delivered);
                self.send(outbox, frame)
            }
            _ => {
                self.push(Pending::Publish {
                    id: id.into(),
                    ticket,
                    delivered,
                    deadline: Instant::now() + RELAY_ANSWER_TIMEOUT,
                });
                self.flush(outbox, metrics)
            }
        }
    }

    fn push(&mut self, p: Pending) {
        self.queue.get_or_insert_with(Default::default).push_back(p);
    }

    /// Sends every answer at the head of the queue that is known now (resolved, or past
    /// its deadline). Returns the outbox's backlog after the last push, if any.
    pub fn flush(&mut self, outbox: &Outbox, metrics: &BrokerMetrics) -> Option<usize> {
        let q = self.queue.as_mut()?;
        let now = Instant::now();
        let mut backlog = None;
        while let Some(front) = q.front_mut() {
            let frame = match front {
                Pending::Ready(f) => Some(f.clone()),
                Pending::Subscribe {
                    id,
                    confirmation,
                    deadline,
                } => match confirmation.try_now() {
                    Some(r) => subscribe_answer(metrics, id.as_deref(), r),
                    None if now >= *deadline => {
                        let err = ConfirmError::Timeout {
                            topic: "(one of them)".into(),
                        };
                        subscribe_answer(metrics, id.as_deref(), Err(err))
                    }
                    None => break,
                },
                Pending::Publish {
                    id,
                    ticket,
                    delivered,
                    deadline,
                } => match ticket.try_outcome() {
                    Some(r) => Some(publish_answer(metrics, id, r.map_err(|e| e.to_string()), *delivered)),
                    None if now >= *deadline => Some(publish_answer(
                        metrics,
                        id,
                        Err("the relay did not answer in time; the other nodes may or may not have it".into()),
                        *delivered,
                    )),
                    None => break,
                },
            };
            let done = q.pop_front();
            if let Some(f) = frame {
                backlog = Some(outbox.push_control(f));
            }
            // A history subscription's replay follows its answer, never precedes it.
            if let Some(Pending::Subscribe { confirmation, .. }) = done {
                confirmation.release();
            }
        }
        if q.is_empty() {
            // Nothing waits: hold no queue.
            self.queue = None;
        }
        backlog
    }

    /// Resolves when the answer at the head is known (or its deadline passed); pending
    /// forever while nothing waits. Cancel-safe.
    pub async fn head_known(&mut self) {
        let front = self.queue.as_mut().and_then(|q| q.front_mut());
        match front {
            None => std::future::pending().await,
            Some(Pending::Ready(_)) => {}
            Some(Pending::Subscribe {
                confirmation, deadline, ..
            }) => {
                let _ = confirmation.wait(*deadline).await;
            }
            Some(Pending::Publish { ticket, deadline, .. }) => {
                let _ = tokio::time::timeout_at(*deadline, ticket.wait()).await;
            }
        }
    }
}

fn subscribe_answer(
    metrics: &BrokerMetrics,
    id: Option<&str>,
    result: Result<Recovered, ConfirmError>,
) -> Option<Bytes> {
    match result {
        Ok(r) => id.map(|id| {
            let recovered: Vec<(&str, bool)> = r.recovered.iter().map(|(t, ok)| (&**t, *ok)).collect();
            let positions: Vec<(&str, &StreamPos)> = r.positions.iter().map(|(t, p)| (&**t, p)).collect();
            server_msg::subscribe_ack(id, &recovered, &positions)
        }),
        Err(e) => {
            let msg = format!("{e}; messages from other nodes follow once the relay recovers");
            Some(error_frame(metrics, id, ErrorCode::RelayUnavailable, &msg))
        }
    }
}

fn publish_answer(
    metrics: &BrokerMetrics,
    id: &str,
    result: Result<Option<StreamPos>, String>,
    delivered: usize,
) -> Bytes {
    match result {
        Ok(pos) => server_msg::publish_ack(id, pos.as_ref()),
        Err(e) => {
            let msg = format!("{e}; delivered to {delivered} local subscriber(s) only");
            error_frame(metrics, Some(id), ErrorCode::RelayUnavailable, &msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_broker::{OutboxLimits, RelayError, TakenBatch, Ticket};
    use tokio::sync::oneshot;
    use tokio_util::sync::CancellationToken;

    fn taken(outbox: &Outbox) -> Vec<String> {
        let mut b = TakenBatch::default();
        outbox.take_batch(&mut b);
        b.control
            .iter()
            .map(|f| String::from_utf8_lossy(&f[2..]).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn answers_leave_in_request_order_behind_a_waiting_one() {
        let outbox = Outbox::new(OutboxLimits::default(), CancellationToken::new());
        let m = BrokerMetrics::new();
        let mut a = Answers::default();
        a.send(&outbox, server_msg::pong(Some("1")));
        let (tx, rx) = oneshot::channel();
        a.publish(&outbox, &m, "2", Ticket::Pending(rx), 0);
        a.send(&outbox, server_msg::pong(Some("3")));
        a.publish(&outbox, &m, "4", Ticket::published(), 0);
        assert_eq!(a.waiting(), 3);
        let first = taken(&outbox);
        assert_eq!(first.len(), 1, "only the answer before the waiting one: {first:?}");
        tx.send(Ok(None)).unwrap();
        a.head_known().await;
        a.flush(&outbox, &m);
        let rest = taken(&outbox);
        assert_eq!(rest.len(), 3);
        assert!(rest[0].contains(r#""type":"ack","id":2"#), "{rest:?}");
        assert!(rest[1].contains(r#""type":"pong","id":3"#), "{rest:?}");
        assert!(rest[2].contains(r#""type":"ack","id":4"#), "{rest:?}");
        assert!(a.is_empty() && a.queue.is_none(), "no queue kept once nothing waits");
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_never_answers_gets_relay_unavailable_at_the_deadline() {
        let outbox = Outbox::new(OutboxLimits::default(), CancellationToken::new());
        let m = BrokerMetrics::new();
        let mut a = Answers::default();
        let (_tx, rx) = oneshot::channel::<Result<Option<StreamPos>, RelayError>>();
        a.publish(&outbox, &m, "7", Ticket::Pending(rx), 2);
        a.head_known().await; // paused time: jumps to the deadline
        a.flush(&outbox, &m);
        let got = taken(&outbox);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].contains("relay_unavailable") && got[0].contains("in time"),
            "{got:?}"
        );
        assert!(got[0].contains("delivered to 2 local"), "{got:?}");
    }
}
