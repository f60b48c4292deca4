//! History on the Redis side, except the append (which rides the publish pipeline, see
//! `publisher`): building an append's arguments ([`append_command`]), and reading a topic's
//! stream ([`read`]) with the read script, off the caller's path, bounded.
//!
//! A read is one `EVALSHA` of `scripts::READ` on the publish connection's multiplexed
//! connection (it shares the socket with the PUBLISH pipelines but never waits for them),
//! run from its own task: the broker gets a pending ticket at once. At most
//! `history_read_concurrency` reads are in flight, each returns at most `MAX_READ`
//! messages, and at most `history_read_queue` wait for a slot; beyond that a read is
//! refused (`Overloaded`) rather than queued without bound.
//!
//! Entries are checked on the way out as envelopes are on the way in (whoever can write
//! to Redis can write garbage): an entry whose payload is not of its kind (JSON that does
//! not parse, text that is not UTF-8) or that is not shaped like ours is counted in
//! `relay_invalid` and skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::history::{HistoryPage, StoredMessage, StreamPolicy, MAX_READ};
use herald_broker::RelayError;
use herald_protocol::envelope::{self, EnvelopeError};
use herald_protocol::{Payload, PayloadKind, StreamPos};
use redis::Value;
use tokio::sync::oneshot;

use crate::link::is_connection_failure;
use crate::scripts;
use crate::shared::{Append, Shared};

/// The TTL in whole milliseconds for `PEXPIRE` (at least 1: 0 would be refused).
fn ttl_ms(ttl: Duration) -> u64 {
    // Redis refuses an expiry its clock cannot add (and a script is not rolled back: the
    // message would be stored but not published), so a TTL is at most a year here, as in
    // the configuration.
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).clamp(1, MAX_TTL_MS)
}

/// The longest TTL given to Redis keys: a year.
const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// The append script's arguments for one message: the envelope is encoded as version 2
/// with a placeholder position (offset 0, empty epoch), then cut around the position, which
/// the script splices in.
pub(crate) fn append_command(
    shared: &Shared,
    topic: &str,
    payload: &Payload,
    published_at_micros: u64,
    origin_conn: Option<u64>,
    policy: &StreamPolicy,
) -> Result<Append, EnvelopeError> {
    let cfg = &shared.config;
    let empty = Payload {
        kind: payload.kind,
        bytes: Bytes::new(),
    };
    let placeholder = StreamPos {
        offset: 0,
        epoch: String::new(),
    };
    let frame = envelope::encode_with_stream(
        &cfg.node_id,
        published_at_micros,
        topic,
        &empty,
        Some(&placeholder),
        origin_conn,
    )?;
    // version, kind, time (8), origin length, origin, topic length (2), topic, flags.
    let flags_end = 1 + 1 + 8 + 1 + cfg.node_id.len() + 2 + topic.len() + 1;
    // Then the placeholder: offset (8) and epoch length (1, the epoch is empty).
    let head = frame.slice(..flags_end);
    let origin_conn = frame.slice(flags_end + 9..);
    Ok(Append {
        stream_key: cfg.stream_key(topic),
        meta_key: cfg.meta_key(topic),
        channel: cfg.channel(topic),
        epoch_candidate: shared.epoch_candidate(),
        size: policy.size.max(1),
        ttl_ms: ttl_ms(policy.ttl),
        published_at_micros,
        kind: payload.kind as u8,
        head,
        origin_conn,
        payload: payload.bytes.clone(),
    })
}

/// What to read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadMode {
    /// Up to `limit` messages after `after`.
    After { after: u64, limit: usize },
    /// The most recent message.
    Latest,
}

/// One read, ready to send.
pub(crate) struct ReadRequest {
    stream_key: String,
    meta_key: String,
    epoch_candidate: String,
    ttl_ms: u64,
    /// Messages published before this (µs) are past the TTL.
    cutoff_micros: u64,
    mode: ReadMode,
}

impl ReadRequest {
    pub(crate) fn new(shared: &Shared, topic: &str, mode: ReadMode, policy: &StreamPolicy) -> Self {
        let ttl_micros = u64::try_from(policy.ttl.as_micros()).unwrap_or(u64::MAX);
        Self {
            stream_key: shared.config.stream_key(topic),
            meta_key: shared.config.meta_key(topic),
            epoch_candidate: shared.epoch_candidate(),
            ttl_ms: ttl_ms(policy.ttl),
            cutoff_micros: herald_broker::broker::now_micros().saturating_sub(ttl_micros),
            mode,
        }
    }

    /// One transaction: the read script for the head (creating an empty stream when
    /// there is none, trimming expired entries from the front) with nothing to range, then
    /// the range itself as a native `XRANGE` / `XREVRANGE`, which Redis serves ten times
    /// faster than the same command inside Lua (no copy of every entry into Lua tables and
    /// back). `MULTI`/`EXEC` keeps head and entries one atomic view.
    fn command(&self) -> redis::Pipeline {
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("EVALSHA")
            .arg(&scripts::READ.sha)
            .arg(2)
            .arg(&self.stream_key)
            .arg(&self.meta_key)
            .arg(&self.epoch_candidate)
            .arg(self.ttl_ms)
            .arg(self.cutoff_micros)
            .arg("range")
            .arg("-")
            .arg(0);
        match self.mode {
            // A zero limit reads the head alone.
            ReadMode::After { limit: 0, .. } => {}
            ReadMode::After { after, limit } => {
                p.cmd("XRANGE")
                    .arg(&self.stream_key)
                    .arg(format!("{}-0", after.saturating_add(1)))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit.min(MAX_READ));
            }
            ReadMode::Latest => {
                p.cmd("XREVRANGE")
                    .arg(&self.stream_key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
            }
        }
        p
    }
}

/// The transaction's two replies as the read script's `{offset, epoch, entries}`.
fn combine(v: Value) -> Result<Value, RelayError> {
    let Value::Array(v) = v else {
        return Err(unexpected("transaction reply"));
    };
    let mut v = v.into_iter();
    let (Some(head), entries, None) = (v.next(), v.next(), v.next()) else {
        return Err(unexpected("transaction length"));
    };
    let entries = entries.unwrap_or(Value::Array(Vec::new()));
    let Value::Array(mut head) = head else {
        return Err(unexpected("head"));
    };
    if head.len() != 3 {
        return Err(unexpected("head length"));
    }
    head[2] = entries;
    Ok(Value::Array(head))
}

/// Holds a place in `history_read_queue` until dropped.
pub(crate) struct Queued(Arc<Shared>);

impl Queued {
    /// A place in the queue, or `None` when it is full.
    pub(crate) fn enter(shared: &Arc<Shared>) -> Option<Self> {
        let cap = shared.config.history_read_queue;
        shared
            .reads_waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1))
            .ok()
            .map(|_| Self(shared.clone()))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.reads_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs one read and answers it (see the module docs). Gives up when the relay stops.
pub(crate) async fn read(queued: Queued, req: ReadRequest, done: oneshot::Sender<Result<HistoryPage, RelayError>>) {
    let shared = queued.0.clone();
    let result = tokio::select! {
        biased;
        _ = shared.cancel.cancelled() => Err(RelayError::ShuttingDown),
        r = run(&shared, &req) => r,
    };
    drop(queued);
    // The caller may have stopped waiting; that is its business.
    let _ = done.send(result);
}

async fn run(shared: &Shared, req: &ReadRequest) -> Result<HistoryPage, RelayError> {
    let _permit = shared.reads.acquire().await.map_err(|_| RelayError::ShuttingDown)?;
    if !shared.is_publish_up() {
        return Err(RelayError::Unavailable("redis relay is down".into()));
    }
    let mut conn = read_connection(shared).await?;
    let cmd = req.command();
    let timeout = shared.config.command_timeout;
    let mut reloaded = false;
    loop {
        let reply = match tokio::time::timeout(timeout, cmd.query_async::<Value>(&mut conn)).await {
            Err(_) => {
                forget_read_connection(shared).await;
                return Err(RelayError::Unavailable(
                    "redis did not answer a history read in time".into(),
                ));
            }
            Ok(r) => r,
        };
        match reply {
            Ok(v) => return parse_page(shared, combine(v)?, req.cutoff_micros),
            Err(e) if scripts::is_noscript(&e) && !reloaded => {
                tracing::info!("redis forgot the read script (NOSCRIPT); loading it again");
                reloaded = true;
                if let Err(e) = scripts::READ.load(&mut conn).await {
                    return Err(fail(shared, e).await);
                }
            }
            Err(e) => return Err(fail(shared, e).await),
        }
    }
}

/// The reads' own connection (see `Shared::read_conn`), opened when there is none, with
/// the read script loaded. The lock is held only while a connection is being opened, by
/// whichever read comes first.
async fn read_connection(shared: &Shared) -> Result<redis::aio::MultiplexedConnection, RelayError> {
    let mut slot = shared.read_conn.lock().await;
    if let Some(c) = slot.as_ref() {
        return Ok(c.clone());
    }
    let cfg = &shared.config;
    let conn_cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.command_timeout));
    let mut conn = shared
        .client
        .get_multiplexed_async_connection_with_config(&conn_cfg)
        .await
        .map_err(|e| RelayError::Unavailable(format!("redis: history read connection: {e}")))?;
    scripts::READ
        .load(&mut conn)
        .await
        .map_err(|e| RelayError::Unavailable(format!("redis: loading the read script: {e}")))?;
    *slot = Some(conn.clone());
    Ok(conn)
}

async fn forget_read_connection(shared: &Shared) {
    *shared.read_conn.lock().await = None;
}

/// A failed read; the reads' connection is dropped when it is to blame (the publish
/// connection is never touched by a read).
async fn fail(shared: &Shared, e: redis::RedisError) -> RelayError {
    if is_connection_failure(&e) {
        forget_read_connection(shared).await;
    }
    RelayError::Unavailable(format!("redis: history read: {e}"))
}

fn unexpected(what: &str) -> RelayError {
    RelayError::Unavailable(format!("redis: the read script answered something unexpected ({what})"))
}

fn utf8(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// The read script's `{offset, epoch, entries}`. Entries at the front published before
/// `cutoff` (past the TTL; the script trims a bounded number per call, so some may remain)
/// are left out, so a page never holds an expired message and never has a hole.
fn parse_page(shared: &Shared, reply: Value, cutoff: u64) -> Result<HistoryPage, RelayError> {
    let Value::Array(v) = reply else {
        return Err(unexpected("not an array"));
    };
    let [offset, epoch, entries] = <[Value; 3]>::try_from(v).map_err(|_| unexpected("length"))?;
    let offset: u64 = utf8(offset)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| unexpected("offset"))?;
    let epoch = utf8(epoch).ok_or_else(|| unexpected("epoch"))?;
    let Value::Array(entries) = entries else {
        return Err(unexpected("entries"));
    };
    let mut messages: Vec<StoredMessage> = Vec::with_capacity(entries.len());
    for entry in entries {
        match parse_entry(entry) {
            Some(m) if messages.is_empty() && m.published_at_micros < cutoff => {}
            Some(m) if m.offset <= offset && messages.last().is_none_or(|p| p.offset < m.offset) => messages.push(m),
            _ => {
                shared.metrics.relay_invalid.inc();
                tracing::debug!(epoch, "malformed history entry skipped");
            }
        }
    }
    Ok(HistoryPage {
        head: StreamPos { offset, epoch },
        messages,
    })
}

/// One stream entry: `[id, [field, value, ...]]` with fields `t` (publish time, µs),
/// `k` (payload kind) and `p` (payload), checked like an inbound envelope.
fn parse_entry(entry: Value) -> Option<StoredMessage> {
    let Value::Array(e) = entry else { return None };
    let [id, fields] = <[Value; 2]>::try_from(e).ok()?;
    let id = utf8(id)?;
    let (offset, seq) = id.split_once('-')?;
    if seq != "0" {
        return None;
    }
    let offset: u64 = offset.parse().ok()?;
    let Value::Array(fields) = fields else { return None };
    let (mut at, mut kind, mut bytes) = (None, None, None);
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let Value::BulkString(name) = name else { return None };
        match name.as_slice() {
            b"t" => at = utf8(value)?.parse::<u64>().ok(),
            b"k" => kind = PayloadKind::from_u8(utf8(value)?.parse::<u8>().ok()?),
            b"p" => match value {
                Value::BulkString(b) => bytes = Some(Bytes::from(b)),
                _ => return None,
            },
            _ => {}
        }
    }
    let payload = Payload {
        kind: kind?,
        bytes: bytes?,
    };
    valid(&payload).then_some(StoredMessage {
        offset,
        published_at_micros: at?,
        payload,
    })
}

/// Whether a payload read from Redis is what its kind says.
fn valid(p: &Payload) -> bool {
    match p.kind {
        PayloadKind::Json => serde_json::from_slice::<serde::de::IgnoredAny>(&p.bytes).is_ok(),
        PayloadKind::Text => std::str::from_utf8(&p.bytes).is_ok(),
        PayloadKind::Binary => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn entry(id: &str, t: &str, k: &str, p: &[u8]) -> Value {
        Value::Array(vec![
            bulk(id.as_bytes()),
            Value::Array(vec![
                bulk(b"t"),
                bulk(t.as_bytes()),
                bulk(b"k"),
                bulk(k.as_bytes()),
                bulk(b"p"),
                bulk(p),
            ]),
        ])
    }

    fn shared(node: &str) -> Shared {
        let config = crate::RedisRelayConfig::new("redis://127.0.0.1:1/", node);
        let client = redis::Client::open(config.url.as_str()).unwrap();
        let (feeds, _) = tokio::sync::mpsc::channel(1);
        Shared::new(
            config,
            client,
            Arc::new(herald_broker::BrokerMetrics::new()),
            tokio_util::sync::CancellationToken::new(),
            feeds,
        )
    }

    /// What the append script publishes: head, offset, epoch length, epoch, origin
    /// connection, payload.
    fn splice(a: &Append, pos: &StreamPos) -> Vec<u8> {
        let mut v = a.head.to_vec();
        v.extend_from_slice(&pos.offset.to_be_bytes());
        v.push(pos.epoch.len() as u8);
        v.extend_from_slice(pos.epoch.as_bytes());
        v.extend_from_slice(&a.origin_conn);
        v.extend_from_slice(&a.payload);
        v
    }

    #[test]
    fn the_spliced_envelope_is_the_version_2_encoding() {
        let policy = StreamPolicy {
            size: 10,
            max_bytes: 0,
            ttl: Duration::from_millis(1500),
            latest_on_subscribe: false,
        };
        for node in ["n", "node-with-a-longer-id"] {
            let shared = shared(node);
            for (topic, payload, conn) in [
                ("t", Payload::text("hello"), None),
                ("room.{a}", Payload::json(&b"[1]"[..]), Some(7u64)),
                ("b", Payload::binary(&[0u8, 255][..]), Some(u64::MAX)),
                ("e", Payload::binary(&[][..]), None),
            ] {
                let a = append_command(&shared, topic, &payload, 99, conn, &policy).unwrap();
                assert_eq!((a.size, a.ttl_ms, a.kind), (10, 1500, payload.kind as u8));
                assert_eq!(a.stream_key, shared.config.stream_key(topic));
                for pos in [
                    StreamPos {
                        offset: 1,
                        epoch: "ep".into(),
                    },
                    StreamPos {
                        offset: u64::MAX >> 11,
                        epoch: "x".repeat(255),
                    },
                ] {
                    let want = envelope::encode_with_stream(node, 99, topic, &payload, Some(&pos), conn).unwrap();
                    assert_eq!(splice(&a, &pos), want.to_vec(), "{node} {topic}");
                }
            }
            assert_ne!(shared.epoch_candidate(), shared.epoch_candidate());
        }
    }

    #[test]
    fn entries_are_checked_like_envelopes() {
        let m = parse_entry(entry("7-0", "123", "0", br#"{"a":1}"#)).unwrap();
        assert_eq!((m.offset, m.published_at_micros), (7, 123));
        assert_eq!(m.payload, Payload::json(&br#"{"a":1}"#[..]));
        assert_eq!(
            parse_entry(entry("7-0", "1", "2", &[0xff])).unwrap().payload.kind,
            PayloadKind::Binary
        );
        for bad in [
            entry("7-1", "1", "1", b"x"),
            entry("x-0", "1", "1", b"x"),
            entry("7-0", "-1", "1", b"x"),
            entry("7-0", "1", "9", b"x"),
            entry("7-0", "1", "0", b"{nope"),
            entry("7-0", "1", "1", &[0xff]),
            Value::Array(vec![bulk(b"7-0"), Value::Array(vec![bulk(b"t"), bulk(b"1")])]),
            bulk(b"7-0"),
        ] {
            assert!(parse_entry(bad.clone()).is_none(), "{bad:?}");
        }
    }
}
