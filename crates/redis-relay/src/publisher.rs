//! The publisher task: drains the bounded publish queue and sends its commands to Redis in
//! pipelines (PUBLISH for topics without history and control messages, `EVALSHA` of the
//! append script for topics with history: one call per run of consecutive appends, at most
//! `append_batch_max` messages, see [`chunks`]), answering each one's oneshot when Redis has
//! replied: an append with the offset and epoch the script allocated for that message.
//!
//! Ordering: one task takes the queue in order and hands each pipeline to the connection
//! before it builds the next, and Redis executes a connection's commands in order, so
//! publications and appends from one publisher (indeed from the whole node) reach Redis in
//! the order they were accepted. Throughput comes from batching: while pipelines are in
//! flight the queue fills, and the next pipeline takes up to `publish_batch_max` entries at
//! once, so the batch size grows with the load and one round trip carries many messages.
//! Up to [`PIPELINES_IN_FLIGHT`] pipelines are in flight, so Redis works on one while this
//! task reads the answers of the previous one and builds the next: with the append script
//! Redis and the node spend comparable CPU per message, and one pipeline at a time would
//! leave each idle while the other works.
//!
//! Answers are settled in pipeline order. Appends refused with `NOSCRIPT` (the script cache
//! was flushed) are sent again after `SCRIPT LOAD`, once, in their order. A pipeline
//! already in flight behind them ran before the reload, so its appends were refused too and
//! are retried after them: the order holds, unless another node reloaded the script in
//! between and part of that later pipeline went through (then those few appends got their
//! offsets before the retried ones; each is still stored, published and answered once).
//!
//! This task never reconnects: on an I/O error or a timeout it fails the batch, cancels the
//! publish link's `failed` token so `publish_link` replaces that one connection at once
//! (the pub/sub connection and its subscriptions are not affected), and carries on (failing
//! batches immediately while the publish link is down). It does not decide when the relay
//! is up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::stream::{FuturesOrdered, StreamExt};
use herald_broker::RelayError;
use herald_protocol::StreamPos;
use redis::{ServerErrorKind, Value};
use tokio::sync::mpsc;

use crate::link::is_connection_failure;
use crate::scripts;
use crate::shared::{Append, Command, Outgoing, PublishLink, Shared};
use crate::topology::key_slot;

/// Pipelines sent and not answered yet, at most.
pub(crate) const PIPELINES_IN_FLIGHT: usize = 2;

/// A pipeline in flight: its entries, the link it went out on, and Redis's replies.
struct Flight {
    batch: Vec<Outgoing>,
    link: Option<Arc<PublishLink>>,
    replies: Result<Vec<Value>, RelayError>,
}

type FlightFuture = Pin<Box<dyn Future<Output = Flight> + Send>>;

/// Runs until the relay is cancelled, then waits for the pipelines in flight (bounded by
/// `command_timeout`) and fails whatever is still queued with [`RelayError::ShuttingDown`].
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Outgoing>) {
    let max = shared.config.publish_batch_max;
    let mut batch = Vec::with_capacity(max);
    let mut inflight: FuturesOrdered<FlightFuture> = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            Some(flight) = inflight.next(), if !inflight.is_empty() => settle(&shared, flight).await,
            n = rx.recv_many(&mut batch, max), if inflight.len() < PIPELINES_IN_FLIGHT => {
                if n == 0 {
                    break;
                }
                let full = std::mem::replace(&mut batch, Vec::with_capacity(max));
                if let Some(flight) = submit(&shared, full).await {
                    inflight.push_back(flight);
                }
            }
        }
    }
    // A pipeline already sent gets its real answer.
    while let Some(flight) = inflight.next().await {
        settle(&shared, flight).await;
    }
    // No publish can enter after `close`; everything already queued gets an answer.
    rx.close();
    while let Ok(item) = rx.try_recv() {
        batch.push(item);
    }
    if !batch.is_empty() {
        tracing::debug!(count = batch.len(), "relay shutting down: failing queued publications");
        answer_all(&shared, &mut batch, Err(RelayError::ShuttingDown));
    }
}

/// Sends `batch` as one pipeline. The pipeline is handed to the connection (polled once)
/// before this returns, so the next one cannot overtake it; `None` when it was answered at
/// once (the publish link is down, or Redis was that quick).
async fn submit(shared: &Arc<Shared>, batch: Vec<Outgoing>) -> Option<FlightFuture> {
    let link = shared.publish_link.borrow().clone();
    // Unconstrained: tokio's cooperative budget must not make the first poll return before
    // the pipeline is in the connection's queue (a bounded, first-come-first-served
    // channel), or the next pipeline could get there first.
    let mut flight: FlightFuture = Box::pin(tokio::task::unconstrained(fly(shared.clone(), link, batch)));
    match std::future::poll_fn(|cx| Poll::Ready(flight.as_mut().poll(cx))).await {
        Poll::Ready(done) => {
            settle(shared, done).await;
            None
        }
        Poll::Pending => Some(flight),
    }
}

/// One pipeline's round trip.
async fn fly(shared: Arc<Shared>, link: Option<Arc<PublishLink>>, batch: Vec<Outgoing>) -> Flight {
    let replies = match &link {
        Some(l) => exec(&shared, l, &batch).await,
        None => Err(RelayError::Unavailable("redis relay is down".into())),
    };
    Flight { batch, link, replies }
}

/// Answers every entry of a pipeline that came back (see the module docs on `NOSCRIPT`).
/// Each command gets its own answer: a PUBLISH or an append Redis refused (an ACL, a
/// wrong key type) fails alone.
async fn settle(shared: &Shared, flight: Flight) {
    let Flight {
        mut batch,
        link,
        mut replies,
    } = flight;
    for attempt in 0..2 {
        let got = match replies {
            Ok(got) => got,
            Err(e) => {
                answer_all(shared, &mut batch, Err(e));
                return;
            }
        };
        let mut retry = Vec::new();
        for (item, reply) in batch.drain(..).zip(got) {
            if attempt == 0 && matches!(item.command, Command::Append(_)) && scripts::is_noscript_reply(&reply) {
                retry.push(item);
            } else {
                if let Value::ServerError(e) = &reply {
                    // A cluster slot that moved: the next publication goes to its new master.
                    if shared.config.sharded_pubsub
                        && matches!(
                            e.kind(),
                            Some(
                                ServerErrorKind::Moved
                                    | ServerErrorKind::Ask
                                    | ServerErrorKind::TryAgain
                                    | ServerErrorKind::ClusterDown
                            )
                        )
                    {
                        shared.config.hint_topology();
                    }
                }
                let result = outcome(&item.command, reply);
                answer(shared, item, result);
            }
        }
        let Some(link) = link.as_ref().filter(|_| !retry.is_empty()) else {
            return;
        };
        tracing::info!(
            appends = retry.len(),
            "redis forgot the append script (NOSCRIPT); loading it again"
        );
        batch = retry;
        let mut conn = link.conn.clone();
        if let Err(e) = scripts::append_for(&shared.config).load(&mut conn).await {
            if is_connection_failure(&e) {
                link.failed.cancel();
            }
            let err = RelayError::Unavailable(format!("redis: loading the append script: {e}"));
            answer_all(shared, &mut batch, Err(err));
            return;
        }
        replies = exec(shared, link, &batch).await;
    }
    // A second NOSCRIPT right after a successful load was answered as an error above.
}

/// Sends `batch` as one pipeline within `command_timeout`; one reply per entry, or why the
/// pipeline as a whole failed (then the connection is replaced when it is to blame).
/// Consecutive appends go out as one run of the append script each (see [`chunks`]); its
/// answers are handed back one per entry, and a run that failed as a whole fails each of
/// its entries.
async fn exec(shared: &Shared, link: &PublishLink, batch: &[Outgoing]) -> Result<Vec<Value>, RelayError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let chunks = chunks(batch, shared.config.append_batch_max, shared.config.sharded_pubsub);
    for chunk in &chunks {
        match chunk {
            Chunk::Publish(i) => {
                let Command::Publish { channel, envelope } = &batch[*i].command else {
                    unreachable!("a publish chunk is a publish")
                };
                pipe.cmd(shared.config.publish_verb()).arg(channel).arg(&envelope[..]);
            }
            Chunk::Appends(run) => {
                run.add_to(&mut pipe, scripts::append_for(&shared.config));
            }
        }
    }
    let mut conn = link.conn.clone();
    let timeout = shared.config.command_timeout;
    match tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(&mut conn)).await {
        Ok(Ok(replies)) if replies.len() == chunks.len() => Ok(spread(&chunks, replies)),
        Ok(Ok(replies)) => {
            // Not seen in practice; the connection's framing cannot be trusted after it.
            link.failed.cancel();
            tracing::warn!(
                sent = chunks.len(),
                got = replies.len(),
                "pipeline reply count mismatch"
            );
            Err(RelayError::Unavailable(
                "redis answered the pipeline incompletely".into(),
            ))
        }
        Ok(Err(e)) => {
            if is_connection_failure(&e) {
                link.failed.cancel();
            }
            tracing::debug!(error = %e, count = batch.len(), "publish pipeline failed");
            Err(RelayError::Unavailable(format!("redis: {e}")))
        }
        Err(_) => {
            link.failed.cancel();
            tracing::debug!(count = batch.len(), "publish pipeline timed out");
            Err(RelayError::Unavailable(
                "redis did not answer the publish pipeline in time".into(),
            ))
        }
    }
}

/// One command of a pipeline: a PUBLISH (the entry's index) or one run of the append
/// script for some consecutive appends.
enum Chunk<'a> {
    Publish(usize),
    Appends(AppendRun<'a>),
}

/// Consecutive appends of a pipeline sent as one `EVALSHA` of the append script.
struct AppendRun<'a> {
    /// The topics in the order they first appear; each one's arguments (channel, epoch
    /// candidate, size, TTL, keys) are those of its first message.
    topics: Vec<&'a Append>,
    /// The messages in queue order, each with its topic's index in `topics`.
    messages: Vec<(&'a Append, usize)>,
}

impl<'a> AppendRun<'a> {
    /// Takes `a` into the run, or says it cannot: the run is full, or `a`'s topic is in it
    /// with other settings (a policy changed between two messages), which one run cannot
    /// express.
    fn push(&mut self, a: &'a Append, max: usize, one_slot: bool) -> bool {
        if self.messages.len() >= max {
            return false;
        }
        // On a Redis Cluster one script's keys must share a slot.
        if one_slot && key_slot(a.stream_key.as_bytes()) != key_slot(self.topics[0].stream_key.as_bytes()) {
            return false;
        }
        let j = match self.topics.iter().position(|t| t.stream_key == a.stream_key) {
            Some(j) => {
                let t = self.topics[j];
                if t.meta_key != a.meta_key || t.channel != a.channel || t.size != a.size || t.ttl_ms != a.ttl_ms {
                    return false;
                }
                j
            }
            None => {
                self.topics.push(a);
                self.topics.len() - 1
            }
        };
        self.messages.push((a, j));
        true
    }

    /// The `EVALSHA` of `script`, laid out as `scripts::APPEND` documents: the keys
    /// grouped per topic.
    fn add_to(&self, pipe: &mut redis::Pipeline, script: &scripts::Script) {
        let cmd = pipe.cmd("EVALSHA").arg(&script.sha).arg(2 * self.topics.len());
        for t in &self.topics {
            cmd.arg(&t.stream_key).arg(&t.meta_key);
        }
        cmd.arg(self.topics.len());
        for t in &self.topics {
            cmd.arg(&t.channel).arg(&t.epoch_candidate).arg(t.size).arg(t.ttl_ms);
        }
        for (a, j) in &self.messages {
            cmd.arg(j + 1)
                .arg(a.published_at_micros)
                .arg(a.kind)
                .arg(&a.head[..])
                .arg(&a.origin_conn[..])
                .arg(&a.payload[..]);
        }
    }
}

/// How `batch` goes out: each PUBLISH on its own, each run of consecutive appends in
/// script runs of at most `max` messages. Nothing is reordered: a PUBLISH between two
/// appends ends the run, so Redis executes the entries in queue order. With `one_slot`
/// (a Redis Cluster) a run also ends where the next append's slot differs.
fn chunks(batch: &[Outgoing], max: usize, one_slot: bool) -> Vec<Chunk<'_>> {
    let mut out = Vec::new();
    for (i, item) in batch.iter().enumerate() {
        match &item.command {
            Command::Publish { .. } => out.push(Chunk::Publish(i)),
            Command::Append(a) => {
                if let Some(Chunk::Appends(run)) = out.last_mut() {
                    if run.push(a, max, one_slot) {
                        continue;
                    }
                }
                out.push(Chunk::Appends(AppendRun {
                    topics: vec![a],
                    messages: vec![(a, 0)],
                }));
            }
        }
    }
    out
}

/// One reply per entry from one reply per chunk. A script run answers an array with one
/// answer per message; anything else (an error for the whole run, `NOSCRIPT` included, or
/// an answer of the wrong length) is given to each of its messages, so none of them can
/// be taken for stored.
fn spread(chunks: &[Chunk<'_>], replies: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::with_capacity(replies.len());
    for (chunk, reply) in chunks.iter().zip(replies) {
        let n = match chunk {
            Chunk::Publish(_) => {
                out.push(reply);
                continue;
            }
            Chunk::Appends(run) => run.messages.len(),
        };
        match reply {
            Value::Array(answers) if answers.len() == n => out.extend(answers),
            Value::Array(_) => out.extend(std::iter::repeat_n(Value::Nil, n)),
            other => out.extend(std::iter::repeat_n(other, n)),
        }
    }
    out
}

/// What one reply means for its command.
fn outcome(command: &Command, reply: Value) -> Result<Option<StreamPos>, RelayError> {
    match (command, reply) {
        (_, Value::ServerError(e)) => Err(RelayError::Unavailable(format!("redis: {e}"))),
        (Command::Publish { .. }, _) => Ok(None),
        (Command::Append(_), reply) => append_position(reply)
            .map(Some)
            .ok_or_else(|| RelayError::Unavailable("redis: the append script answered something unexpected".into())),
    }
}

/// The append script's `{offset, epoch}`.
fn append_position(reply: Value) -> Option<StreamPos> {
    let Value::Array(v) = reply else { return None };
    let [offset, Value::BulkString(epoch)] = <[Value; 2]>::try_from(v).ok()? else {
        return None;
    };
    let offset = match offset {
        Value::Int(n) => u64::try_from(n).ok()?,
        Value::BulkString(b) => std::str::from_utf8(&b).ok()?.parse().ok()?,
        _ => return None,
    };
    Some(StreamPos {
        offset,
        epoch: String::from_utf8(epoch).ok()?,
    })
}

/// Answers one entry and counts its outcome.
fn answer(shared: &Shared, item: Outgoing, result: Result<Option<StreamPos>, RelayError>) {
    match &result {
        Ok(_) => shared.sent.inc(),
        Err(_) => shared.unrelayed.inc(),
    }
    // The caller may have stopped waiting; that is its business.
    let _ = item.done.send(result);
}

/// Answers every entry with the same failure and counts it once per message.
fn answer_all(shared: &Shared, batch: &mut Vec<Outgoing>, result: Result<(), RelayError>) {
    let n = batch.len() as u64;
    match &result {
        Ok(()) => shared.sent.inc_by(n),
        Err(_) => shared.unrelayed.inc_by(n),
    }
    for item in batch.drain(..) {
        let _ = item.done.send(result.clone().map(|()| None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn append(topic: &str, ttl_ms: u64) -> Outgoing {
        Outgoing {
            command: Command::Append(Box::new(Append {
                stream_key: format!("s:{topic}"),
                meta_key: format!("m:{topic}"),
                channel: format!("c:{topic}"),
                epoch_candidate: "e".into(),
                size: 10,
                ttl_ms,
                published_at_micros: 1,
                kind: 1,
                head: Bytes::new(),
                origin_conn: Bytes::new(),
                payload: Bytes::new(),
            })),
            done: tokio::sync::oneshot::channel().0,
        }
    }

    fn publish() -> Outgoing {
        Outgoing {
            command: Command::Publish {
                channel: "c".into(),
                envelope: Bytes::new(),
            },
            done: tokio::sync::oneshot::channel().0,
        }
    }

    /// Each chunk as `P` or the stream keys of its messages, and its topics' count.
    fn shape(chunks: &[Chunk<'_>]) -> Vec<String> {
        chunks
            .iter()
            .map(|c| match c {
                Chunk::Publish(_) => "P".to_owned(),
                Chunk::Appends(run) => {
                    let topics: Vec<&str> = run.topics.iter().map(|t| &t.stream_key[2..]).collect();
                    let msgs: Vec<String> = run
                        .messages
                        .iter()
                        .map(|(a, j)| format!("{}{j}", &a.stream_key[2..]))
                        .collect();
                    format!("{}|{}", topics.join(","), msgs.join(","))
                }
            })
            .collect()
    }

    #[test]
    fn runs_of_appends_are_cut_at_publications_the_cap_and_a_changed_policy() {
        let batch = vec![
            append("x", 1),
            append("y", 1),
            append("x", 1),
            publish(),
            append("x", 1),
            append("x", 1),
            append("x", 1),
            append("x", 1),
            append("x", 2),
            publish(),
            publish(),
        ];
        assert_eq!(
            shape(&chunks(&batch, 3, false)),
            ["x,y|x0,y1,x0", "P", "x|x0,x0,x0", "x|x0", "x|x0", "P", "P"]
        );
        assert_eq!(shape(&chunks(&batch[..3], 1, false)), ["x|x0", "y|y0", "x|x0"]);
    }

    #[test]
    fn on_a_cluster_a_run_holds_one_slot() {
        // `{g}a` and `{g}b` share the hash tag `g`; `x` and `y` are in other slots.
        assert_ne!(key_slot(b"s:x"), key_slot(b"s:y"));
        let batch = vec![
            append("{g}a", 1),
            append("{g}b", 1),
            append("x", 1),
            append("y", 1),
            append("y", 1),
        ];
        assert_eq!(
            shape(&chunks(&batch, 64, true)),
            ["{g}a,{g}b|{g}a0,{g}b1", "x|x0", "y|y0,y0"]
        );
        assert_eq!(
            shape(&chunks(&batch, 64, false)),
            ["{g}a,{g}b,x,y|{g}a0,{g}b1,x2,y3,y3"]
        );
    }

    #[test]
    fn a_run_answered_as_a_whole_answers_each_of_its_messages() {
        let batch = vec![
            append("x", 1),
            append("x", 1),
            publish(),
            append("y", 1),
            append("y", 1),
        ];
        let c = chunks(&batch, 64, false);
        let pos = |n| Value::Array(vec![Value::Int(n), Value::BulkString(b"e".to_vec())]);
        let noscript = || redis::parse_redis_value(b"-NOSCRIPT No matching script.\r\n").unwrap();
        assert!(scripts::is_noscript_reply(&noscript()));
        let got = spread(&c, vec![Value::Array(vec![pos(1), pos(2)]), Value::Okay, noscript()]);
        assert_eq!(got, vec![pos(1), pos(2), Value::Okay, noscript(), noscript()]);
        // An answer of the wrong length is no answer for any of them.
        let got = spread(&c, vec![Value::Array(vec![pos(1)]), Value::Okay, Value::Array(vec![])]);
        assert_eq!(got, vec![Value::Nil, Value::Nil, Value::Okay, Value::Nil, Value::Nil]);
        assert!(outcome(&batch[0].command, Value::Nil).is_err());
    }

    #[test]
    fn reads_the_append_scripts_answer() {
        let ok = Value::Array(vec![Value::Int(42), Value::BulkString(b"ep".to_vec())]);
        assert_eq!(
            append_position(ok),
            Some(StreamPos {
                offset: 42,
                epoch: "ep".into()
            })
        );
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(-1), Value::BulkString(b"ep".to_vec())]),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(1), Value::Int(2)]),
            Value::Array(vec![Value::Int(1), Value::BulkString(vec![0xff])]),
        ] {
            assert_eq!(append_position(bad), None);
        }
    }
}
