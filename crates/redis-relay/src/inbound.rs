//! The inbound path: the pub/sub reader task and the delivery workers (one per core), all
//! for the relay's lifetime. The reader reads one pub/sub connection's stream at a time,
//! each handed over by the supervisor as a `Feed`.
//!
//! The reader does as little as possible per message, because redis-rs buffers the pub/sub
//! stream in an unbounded channel and only our reading bounds it: skip our own version 1
//! envelopes with [`envelope::peek_origin`] (no decode, no copy; our own version 2
//! envelopes, appends to history topics, are delivered like anyone's: the broker delivers
//! history topics only from the relay, in offset order), refuse a payload larger than
//! `max_payload_bytes` from the header alone ([`envelope::payload_len`]: before the copy,
//! the decoding and the validation), map the channel to its topic, copy the payload once
//! into `Bytes` (on a sharded pub/sub connection not even that: the payload is a slice of
//! the connection's read buffer), and hand it to the worker that owns the topic
//! (`fnv1a(topic) % workers`), so each topic is handled by exactly one worker and keeps its
//! order. Workers decode and validate (JSON validation is the expensive part and runs on all
//! cores), count and skip malformed envelopes, and call `RelaySink::deliver`, which never
//! blocks (it only pushes into bounded outboxes).
//!
//! Messages on the control channel (`{channel_prefix}#control`, no topic can name it) are
//! decoded by the reader itself and handed to `RelaySink::control`: they are rare, and
//! taking them in arrival order needs no worker. So are this node's canaries
//! (`{channel_prefix}#canary:{node_id}`, see `supervisor`): the reader only notes their
//! number.
//!
//! A full worker queue makes the reader wait; see "Back-pressure" in the crate docs for
//! why waiting beats dropping here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::envelope::{self, EnvelopeError};
use herald_protocol::ENVELOPE_VERSION_STREAM;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::shared::{Feed, Shared};

/// One message taken off the pub/sub connection, not yet decoded.
pub(crate) struct Inbound {
    /// The topic named by the channel; the envelope must agree.
    topic: Box<str>,
    envelope: Bytes,
}

/// Worker queues, indexed by topic hash.
pub(crate) type Workers = Arc<[mpsc::Sender<Inbound>]>;

/// Most envelopes a worker takes per wake-up (one sink upgrade per batch).
const WORKER_BATCH: usize = 64;

/// A reader wait longer than this is logged: the node is not keeping up with Redis.
const SLOW_HANDOFF: Duration = Duration::from_millis(100);

/// Starts the delivery workers; they stop when the relay is cancelled.
pub(crate) fn spawn_workers(shared: &Arc<Shared>, tracker: &TaskTracker) -> Workers {
    (0..shared.config.worker_count())
        .map(|_| {
            let (tx, rx) = mpsc::channel(shared.config.deliver_queue_capacity);
            tracker.spawn(work(shared.clone(), rx));
            tx
        })
        .collect()
}

/// FNV-1a: tiny, stable, good enough to spread topics over a handful of workers.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads each pub/sub connection the supervisor hands over, one after the other, until the
/// relay stops.
pub(crate) async fn read_feeds(shared: Arc<Shared>, mut feeds: mpsc::Receiver<Feed>, workers: Workers) {
    loop {
        let feed = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return,
            feed = feeds.recv() => feed,
        };
        let Some(feed) = feed else { return };
        read(&shared, feed, &workers).await;
    }
}

/// Reads one pub/sub connection until it ends (then cancels `failed`, so the supervisor
/// reconnects) or until `failed` is cancelled by someone else.
async fn read(shared: &Shared, feed: Feed, workers: &Workers) {
    let Feed { mut stream, failed } = feed;
    let node = shared.config.node_id.as_bytes();
    let max = shared.config.max_payload_bytes;
    let control = shared.config.control_channel();
    let mut log = Throttle::default();
    loop {
        let msg = tokio::select! {
            biased;
            _ = failed.cancelled() => return,
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else {
            tracing::debug!("redis pub/sub stream ended");
            failed.cancel();
            return;
        };
        shared
            .reader_progress
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let payload = msg.payload();
        if msg.channel() == control {
            // Rare (an operator's request): handled here, in arrival order.
            control_message(shared, payload, &mut log);
            continue;
        }
        if shared.is_canary(msg.channel()) {
            // This node's own probe came back: the connection delivers.
            shared.canary_arrived(payload);
            continue;
        }
        if envelope::peek_origin(payload) == Some(node) && payload.first() != Some(&ENVELOPE_VERSION_STREAM) {
            // Redis echoes our own publications to us: those without a stream position
            // (version 1) were delivered locally already. Those with one (appends to a
            // history topic) are delivered from here, on every node alike, in offset order.
            continue;
        }
        match envelope::payload_len(payload) {
            Ok(n) if n <= max => {}
            Ok(n) => {
                shared.metrics.relay_invalid.inc();
                log.note(|| tracing::debug!(bytes = n, max, "oversized relay message skipped"));
                continue;
            }
            Err(e) => {
                shared.metrics.relay_invalid.inc();
                log.note(|| tracing::debug!(error = %e, "malformed relay message skipped"));
                continue;
            }
        }
        let Some(topic) = shared.config.topic_of_channel(msg.channel()) else {
            shared.metrics.relay_invalid.inc();
            log.note(|| tracing::debug!(channel = msg.channel(), "message on a foreign channel"));
            continue;
        };
        let worker = &workers[(fnv1a(topic.as_bytes()) % workers.len() as u64) as usize];
        let item = Inbound {
            topic: topic.into(),
            envelope: msg.payload_bytes(),
        };
        let started = Instant::now();
        shared.reader_waiting.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = tokio::select! {
            biased;
            _ = failed.cancelled() => false,
            sent = worker.send(item) => sent.is_ok(),
        };
        shared.reader_waiting.store(false, std::sync::atomic::Ordering::Relaxed);
        if !sent {
            return;
        }
        if started.elapsed() > SLOW_HANDOFF {
            log.note(|| tracing::warn!("relay delivery is falling behind Redis (worker queue full)"));
        }
    }
}

/// A message on the control channel: validated, then handed to the sink unless this node
/// sent it. Bounded like an envelope: an oversized one is skipped before decoding.
fn control_message(shared: &Shared, payload: &[u8], log: &mut Throttle) {
    if payload.len() > shared.config.max_payload_bytes {
        shared.metrics.relay_invalid.inc();
        log.note(|| tracing::debug!(bytes = payload.len(), "oversized control message skipped"));
        return;
    }
    match herald_protocol::decode_control(payload) {
        Ok(env) if env.origin == shared.config.node_id => {}
        Ok(env) => {
            if let Some(sink) = shared.sink() {
                sink.control(env.message);
            }
        }
        Err(e) => {
            shared.metrics.relay_invalid.inc();
            log.note(|| tracing::debug!(error = %e, "malformed control message skipped"));
        }
    }
}

/// Decodes, validates and delivers what the reader hands over, in order.
async fn work(shared: Arc<Shared>, mut rx: mpsc::Receiver<Inbound>) {
    let rules = shared.config.topic_rules;
    let node = shared.config.node_id.as_str();
    let mut batch = Vec::with_capacity(WORKER_BATCH);
    let mut log = Throttle::default();
    loop {
        let n = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return,
            n = rx.recv_many(&mut batch, WORKER_BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let sink = shared.sink();
        for item in batch.drain(..) {
            let env = match envelope::decode(item.envelope, rules) {
                Ok(env) if *env.topic != *item.topic => Err(EnvelopeError::Topic(format!(
                    "envelope names {:?} but came on the channel of {:?}",
                    env.topic, item.topic
                ))),
                other => other,
            };
            match env {
                // Our own, without a position: delivered locally already (a version 2
                // envelope without a position is not written by this release).
                Ok(env) if env.origin == node && env.stream.is_none() => {}
                Ok(env) => {
                    if let Some(sink) = &sink {
                        sink.deliver(env);
                    }
                }
                Err(e) => {
                    shared.metrics.relay_invalid.inc();
                    log.note(|| tracing::debug!(error = %e, topic = &*item.topic, "malformed relay message skipped"));
                }
            }
        }
    }
}

/// At most one log line per second per task, with the number of lines it swallowed, so
/// garbage flooding a channel cannot flood the log.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn note(&mut self, log: impl FnOnce()) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            tracing::debug!(suppressed = self.suppressed, "similar relay log lines suppressed");
        }
        self.last = Some(now);
        self.suppressed = 0;
        log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable_and_spreads() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let buckets: std::collections::HashSet<u64> =
            (0..100).map(|i| fnv1a(format!("room-{i}").as_bytes()) % 4).collect();
        assert_eq!(buckets.len(), 4);
    }

    #[test]
    fn throttle_logs_once_per_second() {
        let mut t = Throttle::default();
        let mut lines = 0;
        for _ in 0..100 {
            t.note(|| lines += 1);
        }
        assert_eq!(lines, 1);
        assert_eq!(t.suppressed, 99);
    }
}
