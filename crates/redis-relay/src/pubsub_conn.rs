//! The supervisor's pub/sub connection, of either kind ([`PubSubConn`]): classic pub/sub
//! over redis-rs's RESP2 `aio::PubSub` (`SUBSCRIBE`), or Redis Cluster sharded pub/sub over
//! our own connection (`sharded_pubsub`: `SSUBSCRIBE`, one command per hash slot, all of a
//! batch pipelined).
//!
//! It owns opening the connection and turning topic lists into commands; what to subscribe
//! and when is the supervisor's. On a sharded connection a `MOVED`/`ASK` answer is not a
//! broken connection: the slot lives elsewhere now. Those topics are reported back
//! (subscribe) or taken as gone (unsubscribe: Redis already dropped them), and the
//! cluster layer is told to read the slot map again.

use std::collections::BTreeMap;

use bytes::Bytes;
use redis::aio::PubSubSink;
use tokio::sync::mpsc;

use crate::link::LinkError;
use crate::sharded_pubsub::{self, PubSubError, ShardedPubSub};
use crate::shared::{FeedStream, Shared};
use crate::topology::key_slot;

/// One open pub/sub connection.
pub(crate) enum PubSubConn {
    Classic(PubSubSink),
    Sharded(ShardedPubSub),
}

/// What [`open`] returns: the connection, its messages for the reader, and (sharded only)
/// the channels Redis drops on its own.
pub(crate) struct Opened {
    pub(crate) conn: PubSubConn,
    pub(crate) stream: FeedStream,
    pub(crate) evicted: Option<mpsc::UnboundedReceiver<Bytes>>,
}

impl From<PubSubError> for LinkError {
    fn from(e: PubSubError) -> Self {
        match e {
            PubSubError::Server(e) => LinkError::Server(e),
            PubSubError::Lost(_) => LinkError::Lost,
            PubSubError::Protocol(p) => LinkError::Protocol(p),
        }
    }
}

/// Opens the kind of connection the relay's configuration asks for (no timeout here: the
/// supervisor bounds the call with `connect_timeout`).
pub(crate) async fn open(shared: &Shared) -> Result<Opened, LinkError> {
    if !shared.config.sharded_pubsub {
        let (sink, stream) = shared.client.get_async_pubsub().await?.split();
        return Ok(Opened {
            conn: PubSubConn::Classic(sink),
            stream: FeedStream::Classic(stream),
            evicted: None,
        });
    }
    let info = shared.client.get_connection_info();
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        other => {
            return Err(LinkError::Server(format!(
                "sharded pub/sub needs a TCP address, not {other}"
            )))
        }
    };
    let settings = info.redis_settings();
    let c = sharded_pubsub::connect(&host, port, settings.username(), settings.password()).await?;
    Ok(Opened {
        conn: PubSubConn::Sharded(c.conn),
        stream: FeedStream::Sharded(c.messages),
        evicted: Some(c.evicted),
    })
}

impl PubSubConn {
    /// PING, answered by the server.
    pub(crate) async fn ping(&mut self) -> Result<(), LinkError> {
        match self {
            Self::Classic(s) => s.ping::<redis::Value>().await.map(drop).map_err(Into::into),
            Self::Sharded(c) => c.ping().await.map_err(Into::into),
        }
    }

    /// Subscribes one channel that is no topic (the canary, the classic control channel).
    /// On a sharded connection a redirect answers `Ok(false)`: the channel's slot is not here.
    pub(crate) async fn subscribe_one(&mut self, channel: String) -> Result<bool, LinkError> {
        match self {
            Self::Classic(s) => s.subscribe(channel).await.map(|()| true).map_err(Into::into),
            Self::Sharded(c) => match c.ssubscribe(vec![Bytes::from(channel)]).await {
                Ok(()) => Ok(true),
                Err(e) if e.is_redirect() => Ok(false),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// SUBSCRIBE (or SSUBSCRIBE) the channels of `topics`, at most `subscribe_batch_max`
    /// per command, and per hash slot on a sharded connection. Returns the topics whose
    /// slot answered a redirect (not subscribed; always none on a classic connection).
    pub(crate) async fn subscribe(&mut self, shared: &Shared, topics: &[Box<str>]) -> Result<Vec<Box<str>>, LinkError> {
        let cfg = &shared.config;
        match self {
            Self::Classic(sink) => {
                for chunk in topics.chunks(cfg.subscribe_batch_max) {
                    let channels: Vec<String> = chunk.iter().map(|t| cfg.channel(t)).collect();
                    sink.subscribe(channels).await?;
                }
                Ok(Vec::new())
            }
            Self::Sharded(c) => {
                let groups = by_slot(shared, topics);
                let results = c
                    .ssubscribe_all(groups.iter().map(|(_, chs)| chs.clone()).collect())
                    .await;
                let mut moved = Vec::new();
                for ((ts, _), r) in groups.into_iter().zip(results) {
                    match r {
                        Ok(()) => {}
                        Err(e) if e.is_redirect() => moved.extend(ts),
                        Err(e) => return Err(e.into()),
                    }
                }
                if !moved.is_empty() {
                    tracing::debug!(
                        topics = moved.len(),
                        "sharded subscribe redirected: the slot map changed"
                    );
                    cfg.hint_topology();
                }
                Ok(moved)
            }
        }
    }

    /// UNSUBSCRIBE (or SUNSUBSCRIBE) the channels of `topics`. On a sharded connection a
    /// redirect means Redis already dropped them with their slot: that is success too.
    pub(crate) async fn unsubscribe(&mut self, shared: &Shared, topics: &[Box<str>]) -> Result<(), LinkError> {
        let cfg = &shared.config;
        match self {
            Self::Classic(sink) => {
                for chunk in topics.chunks(cfg.subscribe_batch_max) {
                    let channels: Vec<String> = chunk.iter().map(|t| cfg.channel(t)).collect();
                    sink.unsubscribe(channels).await?;
                }
                Ok(())
            }
            Self::Sharded(c) => {
                let groups = by_slot(shared, topics);
                let results = c
                    .sunsubscribe_all(groups.into_iter().map(|(_, chs)| chs).collect())
                    .await;
                for r in results {
                    match r {
                        Ok(()) => {}
                        Err(e) if e.is_redirect() => cfg.hint_topology(),
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
        }
    }
}

/// `topics` grouped by the hash slot of their channel (one SSUBSCRIBE may only name one
/// slot's channels), each group cut at `subscribe_batch_max`.
fn by_slot(shared: &Shared, topics: &[Box<str>]) -> Vec<(Vec<Box<str>>, Vec<Bytes>)> {
    let cfg = &shared.config;
    let mut slots: BTreeMap<u16, (Vec<Box<str>>, Vec<Bytes>)> = BTreeMap::new();
    for t in topics {
        let channel = cfg.channel(t);
        let g = slots.entry(key_slot(channel.as_bytes())).or_default();
        g.0.push(t.clone());
        g.1.push(Bytes::from(channel));
    }
    let mut out = Vec::with_capacity(slots.len());
    for (_, (ts, chs)) in slots {
        if ts.len() <= cfg.subscribe_batch_max {
            out.push((ts, chs));
        } else {
            for (t, c) in ts
                .chunks(cfg.subscribe_batch_max)
                .zip(chs.chunks(cfg.subscribe_batch_max))
            {
                out.push((t.to_vec(), c.to_vec()));
            }
        }
    }
    out
}
