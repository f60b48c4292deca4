//! The state one relay's handle and tasks share ([`Shared`]), and the values they hand each
//! other: a queued publication or history append ([`Outgoing`]), the live publish connection
//! ([`PublishLink`]) and a pub/sub stream for the reader ([`Feed`]).
//!
//! This file owns the relay's Up/Down truth: each of the two connections (publish,
//! pub/sub) is up or down on its own, and the relay is Up only when both are. It imports
//! none of the task modules; the tasks (`supervisor`, `publish_link`, `publisher`,
//! `inbound`) import it, and `relay` (the handle) imports it and starts the tasks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use herald_broker::{BrokerMetrics, RelayError, RelaySink};
use herald_protocol::StreamPos;
use prometheus::IntCounter;
use redis::aio::{MultiplexedConnection, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::RedisRelayConfig;
use crate::sharded_pubsub::ShardMessage;
use crate::subscriptions::Interest;

/// One queued command for the publish pipeline, and who waits for Redis's answer: `None`
/// for a PUBLISH, the message's stream position for an append.
pub(crate) struct Outgoing {
    pub(crate) command: Command,
    pub(crate) done: oneshot::Sender<Result<Option<StreamPos>, RelayError>>,
}

/// What the publisher sends for one [`Outgoing`]. Both kinds share the queue and the
/// pipelines, so a node's publications and appends reach Redis in the order they were
/// accepted.
pub(crate) enum Command {
    /// `PUBLISH channel envelope` (a topic without history, or a control message).
    Publish { channel: String, envelope: Bytes },
    /// One message for the append script (boxed: the queue's slots stay small).
    Append(Box<Append>),
}

/// One message's arguments for the append script (see `scripts::APPEND`); the publisher
/// sends consecutive ones together, see `publisher::chunks`.
pub(crate) struct Append {
    pub(crate) stream_key: String,
    pub(crate) meta_key: String,
    pub(crate) channel: String,
    /// The epoch the stream gets if this append starts it.
    pub(crate) epoch_candidate: String,
    /// `MAXLEN ~` of the stream.
    pub(crate) size: usize,
    pub(crate) ttl_ms: u64,
    pub(crate) published_at_micros: u64,
    pub(crate) kind: u8,
    /// The version 2 envelope up to and including its flags byte.
    pub(crate) head: Bytes,
    /// The origin connection's 8 bytes, or nothing.
    pub(crate) origin_conn: Bytes,
    pub(crate) payload: Bytes,
}

/// The live publish connection, as the publisher sees it.
pub(crate) struct PublishLink {
    /// For PUBLISH pipelines; cloning shares the one socket.
    pub(crate) conn: MultiplexedConnection,
    /// Cancelled by whoever first sees this connection fail (the publisher on a failed or
    /// timed-out pipeline, the heartbeat); only the publish connection is replaced.
    pub(crate) failed: CancellationToken,
}

/// A pub/sub connection's messages: redis-rs's stream (classic pub/sub) or the channel of
/// our own sharded pub/sub connection (`sharded_pubsub`).
pub(crate) enum FeedStream {
    Classic(PubSubStream),
    Sharded(mpsc::UnboundedReceiver<ShardMessage>),
}

/// One message from either kind of [`FeedStream`].
pub(crate) enum FeedMessage {
    Classic(redis::Msg),
    Sharded(ShardMessage),
}

impl FeedStream {
    /// The next message; `None` once the connection ended.
    pub(crate) async fn next(&mut self) -> Option<FeedMessage> {
        match self {
            Self::Classic(s) => futures_util::StreamExt::next(s).await.map(FeedMessage::Classic),
            Self::Sharded(rx) => rx.recv().await.map(FeedMessage::Sharded),
        }
    }
}

impl FeedMessage {
    /// The channel's name (`?` when it is not UTF-8, which no channel of ours is).
    pub(crate) fn channel(&self) -> &str {
        match self {
            Self::Classic(m) => m.get_channel_name(),
            Self::Sharded(m) => std::str::from_utf8(&m.channel).unwrap_or("?"),
        }
    }

    pub(crate) fn payload(&self) -> &[u8] {
        match self {
            Self::Classic(m) => m.get_payload_bytes(),
            Self::Sharded(m) => &m.payload,
        }
    }

    /// The payload as `Bytes`: a copy from redis-rs's message, a share of our read buffer.
    pub(crate) fn payload_bytes(&self) -> Bytes {
        match self {
            Self::Classic(m) => Bytes::copy_from_slice(m.get_payload_bytes()),
            Self::Sharded(m) => m.payload.clone(),
        }
    }
}

/// A new pub/sub connection's message stream, handed from the supervisor to the reader.
pub(crate) struct Feed {
    pub(crate) stream: FeedStream,
    /// Cancelled by whoever first sees the pub/sub connection fail: the reader when the
    /// stream ends, the supervisor on a failed PING or (UN)SUBSCRIBE.
    pub(crate) failed: CancellationToken,
}

/// The relay's two connections; each fails and reconnects on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    Publish,
    PubSub,
}

impl Link {
    /// The `link` label of `herald_relay_link_reconnects_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::PubSub => "pubsub",
        }
    }
}

/// Which links are up; changed under one lock so the relay's state, its gauge and the
/// reconnect count never disagree.
#[derive(Debug, Default)]
struct Links {
    publish: bool,
    pubsub: bool,
    /// The relay was Up at least once (so turning Up again is a reconnect).
    was_up: bool,
}

/// State shared by the handle and every task of one relay.
pub(crate) struct Shared {
    pub(crate) config: RedisRelayConfig,
    pub(crate) client: redis::Client,
    pub(crate) metrics: Arc<BrokerMetrics>,
    /// `relay_messages{direction="out"}`, resolved once.
    pub(crate) sent: IntCounter,
    /// `dropped{reason="relay_unavailable"}`, resolved once: every accepted publication that
    /// then failed to reach Redis (failed pipeline, shutting down). Immediate refusals
    /// (down, overloaded) are counted by the broker, so each failure is counted once.
    pub(crate) unrelayed: IntCounter,
    links: Mutex<Links>,
    /// Both links up: the truth behind `Relay::state`.
    up: AtomicBool,
    /// The publish link is up: `publish` fails fast while it is not.
    publish_up: AtomicBool,
    /// The pub/sub link is up (connected and resubscribed).
    pubsub_up: AtomicBool,
    /// Set once by `attach`; weak because the broker owns the relay.
    sink: OnceLock<Weak<dyn RelaySink>>,
    pub(crate) interest: Interest,
    /// Cancelled by `shutdown`, by dropping the handle, or by the caller's parent token.
    pub(crate) cancel: CancellationToken,
    /// The live publish connection, `None` while down. The publisher reads it per batch.
    pub(crate) publish_link: watch::Sender<Option<Arc<PublishLink>>>,
    /// Where the supervisor hands each new pub/sub stream to the reader.
    pub(crate) feeds: mpsc::Sender<Feed>,
    /// History reads in flight to Redis (`history_read_concurrency` permits).
    pub(crate) reads: Semaphore,
    /// The connection history reads use, opened on first use and dropped when it fails:
    /// never the publish connection, so a large read (Redis answers a connection's
    /// commands in order) cannot hold up PUBLISH pipelines, and a failed read never
    /// replaces the publish connection.
    pub(crate) read_conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// History reads accepted and not answered yet (bounded by `history_read_queue`).
    pub(crate) reads_waiting: AtomicUsize,
    /// The canary number the supervisor waits for (0: none), set before its PUBLISH; the
    /// reader marks it seen when exactly that number comes back, and wakes the supervisor.
    /// Any other payload on the canary channel is ignored.
    pub(crate) canary_expected: AtomicU64,
    pub(crate) canary_seen: AtomicBool,
    pub(crate) canary_back: tokio::sync::Notify,
    /// The canary channel: fixed (`{prefix}#canary:<node>`), or with sharded pub/sub the
    /// candidate the supervisor picked on this master's slots (empty until then).
    canary: Mutex<Arc<str>>,
    /// What every canary channel of this relay starts with, to recognise one cheaply.
    canary_stem: String,
    /// Sharded pub/sub: the candidate number the next canary pick starts from (after the
    /// last one picked, so a pick after an eviction does not try the evicted one first).
    pub(crate) canary_next: AtomicU64,
    /// Messages the pub/sub reader has taken off its stream (any channel), and whether it
    /// is waiting for room in a delivery worker's queue now: a canary stuck behind a
    /// backlog is a busy reader, not a silent connection.
    pub(crate) reader_progress: AtomicU64,
    pub(crate) reader_waiting: AtomicBool,
    /// This process's part of every epoch it proposes (random).
    epoch_seed: String,
    /// Numbers the epochs this process proposes.
    epochs: AtomicU64,
}

impl Shared {
    /// A relay's shared state, everything down; `feeds` is the reader's inbox.
    pub(crate) fn new(
        config: RedisRelayConfig,
        client: redis::Client,
        metrics: Arc<BrokerMetrics>,
        cancel: CancellationToken,
        feeds: mpsc::Sender<Feed>,
    ) -> Self {
        let unrelayed = metrics.dropped.with_label_values(&["relay_unavailable"]);
        let sent = metrics.relay_messages.with_label_values(&["out"]);
        if config.sets_relay_up_gauge {
            metrics.relay_up.set(0);
        }
        let reads = Semaphore::new(config.history_read_concurrency);
        let (canary, canary_stem): (Arc<str>, String) = if config.sharded_pubsub {
            let c = config.canary_candidate(0);
            let stem = c[..c.len() - "0}".len()].to_owned();
            ("".into(), stem)
        } else {
            let c = config.canary_channel();
            (c.as_str().into(), c)
        };
        let epoch_seed = {
            use rand::Rng;
            rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(10)
                .map(char::from)
                .collect()
        };
        Self {
            config,
            client,
            metrics,
            sent,
            unrelayed,
            links: Mutex::new(Links::default()),
            up: AtomicBool::new(false),
            publish_up: AtomicBool::new(false),
            pubsub_up: AtomicBool::new(false),
            sink: OnceLock::new(),
            interest: Interest::default(),
            cancel,
            publish_link: watch::Sender::new(None),
            feeds,
            reads,
            reads_waiting: AtomicUsize::new(0),
            read_conn: tokio::sync::Mutex::new(None),
            canary_expected: AtomicU64::new(0),
            canary_seen: AtomicBool::new(false),
            canary_back: tokio::sync::Notify::new(),
            canary: Mutex::new(canary),
            canary_stem,
            canary_next: AtomicU64::new(0),
            reader_progress: AtomicU64::new(0),
            reader_waiting: AtomicBool::new(false),
            epoch_seed,
            epochs: AtomicU64::new(0),
        }
    }

    /// An epoch for a stream this node may start (by appending to it or reading it when
    /// it has none): unique to this process (random part) and to the call (counter), so a
    /// stream that lost its past never gets an epoch it had before.
    pub(crate) fn epoch_candidate(&self) -> String {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.epoch_seed)
    }

    /// Stores the broker's sink; `false` when one was set already.
    pub(crate) fn set_sink(&self, sink: Weak<dyn RelaySink>) -> bool {
        self.sink.set(sink).is_ok()
    }

    pub(crate) fn sink(&self) -> Option<Arc<dyn RelaySink>> {
        self.sink.get()?.upgrade()
    }

    pub(crate) fn has_interest(&self, topic: &str) -> bool {
        self.sink().is_some_and(|s| s.has_interest(topic))
    }

    /// Both connections up.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The publish connection is up (the pub/sub one may not be).
    pub(crate) fn is_publish_up(&self) -> bool {
        self.publish_up.load(Ordering::Acquire)
    }

    /// The pub/sub connection is up and resubscribed.
    pub(crate) fn is_pubsub_up(&self) -> bool {
        self.pubsub_up.load(Ordering::Acquire)
    }

    /// One link went up or down: updates the relay's state and the `relay_up` gauge, and
    /// counts `relay_reconnects` when the relay as a whole turns Up again (for a shard of a
    /// `ShardedRelay`, when that shard does: the counter sums the shards' recoveries).
    pub(crate) fn set_link(&self, link: Link, up: bool) {
        let mut l = self.links.lock().unwrap_or_else(|p| p.into_inner());
        match link {
            Link::Publish => {
                l.publish = up;
                self.publish_up.store(up, Ordering::Release);
            }
            Link::PubSub => {
                l.pubsub = up;
                self.pubsub_up.store(up, Ordering::Release);
            }
        }
        let both = l.publish && l.pubsub;
        let was = self.up.swap(both, Ordering::AcqRel);
        if both && !was {
            if l.was_up {
                self.metrics.relay_reconnects.inc();
            }
            l.was_up = true;
        }
        if self.config.sets_relay_up_gauge {
            self.metrics.relay_up.set(i64::from(both));
        }
    }

    /// Whether `channel` is one of this relay's canary channels, now or before.
    pub(crate) fn is_canary_family(&self, channel: &str) -> bool {
        channel.starts_with(&self.canary_stem)
    }

    /// Whether `channel` is this relay's canary channel now.
    pub(crate) fn is_canary(&self, channel: &str) -> bool {
        channel.starts_with(&self.canary_stem) && *self.canary_channel() == *channel
    }

    /// The canary channel now (empty while a sharded relay has none).
    pub(crate) fn canary_channel(&self) -> Arc<str> {
        self.canary.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sharded pub/sub: the canary channel the supervisor picked and subscribed.
    pub(crate) fn set_canary_channel(&self, channel: &str) {
        *self.canary.lock().unwrap_or_else(|p| p.into_inner()) = channel.into();
    }

    /// The reader saw `payload` on the canary channel: the awaited canary (8 bytes,
    /// big-endian, the expected number) or something to ignore.
    pub(crate) fn canary_arrived(&self, payload: &[u8]) {
        let Ok(n) = <[u8; 8]>::try_from(payload) else { return };
        let n = u64::from_be_bytes(n);
        if n != 0 && n == self.canary_expected.load(Ordering::Acquire) {
            self.canary_seen.store(true, Ordering::Release);
            self.canary_back.notify_one();
        }
    }

    /// Counts a link's reconnect (not its first connection).
    pub(crate) fn count_link_reconnect(&self, link: Link) {
        self.metrics
            .relay_link_reconnects
            .with_label_values(&[link.as_str()])
            .inc();
    }
}
