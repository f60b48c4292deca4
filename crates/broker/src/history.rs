//! Topic history, the broker's side of it: which topics keep one ([`HistoryRules`], first
//! matching `[[history]]` entry wins), how much ([`StreamPolicy`]), what a stored message
//! and a read look like, and the [`History`] trait a relay implements to append messages
//! to a topic's stream and read them back.
//!
//! A history topic's messages are numbered: offset 1 for the first, +1 per message, the
//! same on every node, and its stream has an epoch that changes whenever the stream's past
//! is lost (a restart of a single node, Redis flushed, the stream expired). The relay
//! allocates the offset when it appends, and publishes the message with its position to
//! every node, *this one included* (through `RelaySink::deliver`), so that all nodes
//! deliver a topic's messages in offset order from one path. How the broker keeps that
//! order, fills gaps and merges a subscriber's replay with live messages is in
//! `sequencer.rs` and `replay.rs`.
//!
//! Topics no entry matches take none of this: [`HistoryRules::policy`] answers `None`
//! without looking at the topic when there are no entries, and the broker caches the
//! answer in each registry topic.

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::{Payload, StreamPos};

use crate::registry::ConnId;
use crate::relay::{PublishTicket, RelayError, Ticket};

/// How much history one topic keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPolicy {
    /// Most messages kept (older ones are trimmed; Redis trims approximately).
    pub size: usize,
    /// Most payload bytes kept per topic by the in-memory store (0: no byte bound).
    pub max_bytes: usize,
    /// Messages older than this are not replayed; a stream nobody published to for this
    /// long is gone, and comes back with a new epoch.
    pub ttl: Duration,
    /// Send each new subscriber the topic's most recent message at once.
    pub latest_on_subscribe: bool,
}

/// Decides whether a topic matches an entry's pattern (the gateway compiles patterns; the
/// broker does not know their syntax).
pub type TopicMatcher = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// The configured `[[history]]` entries, in order: the first that matches a topic gives
/// its policy.
#[derive(Default)]
pub struct HistoryRules {
    entries: Vec<(TopicMatcher, Arc<StreamPolicy>)>,
}

impl HistoryRules {
    /// No topic has history.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds an entry after the existing ones.
    pub fn push(&mut self, matcher: TopicMatcher, policy: StreamPolicy) {
        self.entries.push((matcher, Arc::new(policy)));
    }

    /// An entry matching every topic for which `matches` holds (tests, embedding).
    pub fn with(mut self, matches: impl Fn(&str) -> bool + Send + Sync + 'static, policy: StreamPolicy) -> Self {
        self.push(Box::new(matches), policy);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The policy of `topic`, `None` for topics without history.
    #[inline]
    pub fn policy(&self, topic: &str) -> Option<&Arc<StreamPolicy>> {
        if self.entries.is_empty() {
            return None;
        }
        self.entries.iter().find(|(m, _)| m(topic)).map(|(_, p)| p)
    }
}

/// One message as history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub offset: u64,
    pub published_at_micros: u64,
    pub payload: Payload,
}

/// What one read of a topic's history found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The stream's epoch and its latest offset when it was read. A topic without a stream
    /// (nothing published yet, or its past was lost) gets one by being read: offset 0 in a
    /// new epoch, expiring like any stream, so every reader is given a real position.
    pub head: StreamPos,
    /// Messages after the requested offset, oldest first, at most the requested number,
    /// none older than the policy's TTL.
    pub messages: Vec<StoredMessage>,
}

impl HistoryPage {
    /// Whether this page continues a reader that has seen everything up to `after` in
    /// `epoch`: same epoch, and the first message is `after + 1` (or there is nothing
    /// after `after`). `false` is the loss signal: trimmed, expired or another epoch.
    pub fn continues(&self, after: u64, epoch: &str) -> bool {
        if self.head.epoch != epoch || after > self.head.offset {
            return false;
        }
        match self.messages.first() {
            Some(m) => m.offset == after + 1,
            None => self.head.offset == after,
        }
    }
}

/// The answer to [`History::read`].
pub type ReadTicket = Ticket<HistoryPage>;

/// Most messages one read returns, whatever the caller asks (bounded replies, bounded
/// memory per read; a long replay is many reads).
pub const MAX_READ: usize = 1000;

/// Why history could not be read.
pub type HistoryError = RelayError;

/// A topic stream store and publisher; implemented by every relay that supports history.
/// See the module docs.
pub trait History: Send + Sync {
    /// Appends a message to `topic`'s stream (offset = the previous one + 1; a new stream
    /// starts at 1 in a new epoch) and publishes it with its position to every node, this
    /// one included, so that `RelaySink::deliver` sees each topic's messages in offset
    /// order. `origin_conn` is the publishing connection when it must not get the message
    /// back. Resolves `Ok(Some(position))` once the message is stored and published.
    /// Must not block.
    fn append(
        &self,
        topic: &str,
        payload: &Payload,
        published_at_micros: u64,
        origin_conn: Option<ConnId>,
        policy: &StreamPolicy,
    ) -> PublishTicket;

    /// Reads up to `limit` (at most [`MAX_READ`]) messages of `topic` with an offset
    /// greater than `after`, oldest first, and the stream's head (creating an empty stream
    /// when there is none, see [`HistoryPage::head`]). Must not block.
    fn read(&self, topic: &str, after: u64, limit: usize, policy: &StreamPolicy) -> ReadTicket;

    /// Reads the most recent message, if any (for `latest_on_subscribe`), and the head,
    /// like [`History::read`].
    fn latest(&self, topic: &str, policy: &StreamPolicy) -> ReadTicket;
}
