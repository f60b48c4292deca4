//! The topic registry: for each topic with at least one local subscriber, who they are.
//!
//! A sharded `DashMap` from topic name to that topic's subscribers. Every guard is taken
//! and released inside one method here and no method awaits, so no guard can be held
//! across `.await` or leak to callers. A topic's entry is removed with its last
//! subscriber, so subscribe/unsubscribe churn cannot grow the map. Fan-out iterates a
//! topic's subscribers under the shard's read lock; publishers of different topics (and of
//! the same topic) proceed in parallel, and only subscribe/unsubscribe on the same shard
//! waits for it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::outbox::Outbox;

/// A connection's number on this node (unique for the node's lifetime).
pub type ConnId = u64;

/// How a subscriber wants messages framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberMode {
    /// JSON protocol v1 (`/ws`): `{"type":"message",...}` text frames.
    Json,
    /// Raw mode (`/raw/{topic}`): the payload itself, text or binary.
    Raw,
}

/// One subscription of one connection to one topic.
#[derive(Clone)]
pub struct Subscriber {
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
    pub mode: SubscriberMode,
    /// Whether this connection receives what it publishes itself.
    pub echo: bool,
}

/// Connection ids are sequential, so a multiplicative hash spreads them well and costs one
/// multiplication.
#[derive(Default)]
pub struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Subscribers = HashMap<ConnId, Subscriber, BuildHasherDefault<ConnIdHasher>>;

/// Result of [`Registry::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// The topic had no local subscriber before: the relay must start listening.
    FirstOnNode,
    Added,
    AlreadySubscribed,
}

/// Result of [`Registry::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeOutcome {
    /// That was the topic's last local subscriber: the topic is gone, the relay may stop.
    LastOnNode,
    Removed,
    NotSubscribed,
}

/// See the module docs.
#[derive(Default)]
pub struct Registry {
    topics: DashMap<Arc<str>, Subscribers>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `sub` to `topic`.
    pub fn subscribe(&self, topic: &str, sub: Subscriber) -> SubscribeOutcome {
        if let Some(mut subs) = self.topics.get_mut(topic) {
            return match subs.insert(sub.conn, sub) {
                Some(_) => SubscribeOutcome::AlreadySubscribed,
                None => SubscribeOutcome::Added,
            };
        }
        match self.topics.entry(Arc::from(topic)) {
            Entry::Occupied(mut e) => match e.get_mut().insert(sub.conn, sub) {
                Some(_) => SubscribeOutcome::AlreadySubscribed,
                None => SubscribeOutcome::Added,
            },
            Entry::Vacant(v) => {
                let mut subs = Subscribers::default();
                subs.insert(sub.conn, sub);
                v.insert(subs);
                SubscribeOutcome::FirstOnNode
            }
        }
    }

    /// Removes `conn` from `topic`, and the topic itself when it was the last subscriber.
    pub fn unsubscribe(&self, topic: &str, conn: ConnId) -> UnsubscribeOutcome {
        let mut outcome = UnsubscribeOutcome::NotSubscribed;
        // The closure runs under the shard's write lock, so "was it the last one" is exact.
        self.topics.remove_if_mut(topic, |_, subs| {
            if subs.remove(&conn).is_some() {
                outcome = if subs.is_empty() {
                    UnsubscribeOutcome::LastOnNode
                } else {
                    UnsubscribeOutcome::Removed
                };
            }
            subs.is_empty()
        });
        outcome
    }

    /// Calls `f` for every subscriber of `topic` while the shard's read lock is held.
    /// `f` must not block or touch the registry. Returns the number of subscribers visited.
    pub fn for_each_subscriber(&self, topic: &str, mut f: impl FnMut(&Subscriber)) -> usize {
        match self.topics.get(topic) {
            Some(subs) => {
                for s in subs.values() {
                    f(s);
                }
                subs.len()
            }
            None => 0,
        }
    }

    /// Whether anyone on this node listens to `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Subscribers of `topic` on this node.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topics.get(topic).map(|s| s.len()).unwrap_or(0)
    }

    /// Topics with at least one subscriber (locks every shard in turn; not for hot paths).
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Calls `f` with every topic and its subscriber count, one shard's read lock at a time,
    /// without collecting them: the admin API pages through 100k topics keeping only a
    /// page's worth. `f` must not block or touch the registry.
    pub fn for_each_topic(&self, mut f: impl FnMut(&Arc<str>, usize)) {
        for e in self.topics.iter() {
            f(e.key(), e.value().len());
        }
    }

    /// Every topic name (for the relay's resubscription after a reconnect).
    pub fn topic_names(&self) -> Vec<Arc<str>> {
        self.topics.iter().map(|e| e.key().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxLimits;
    use tokio_util::sync::CancellationToken;

    fn sub(conn: ConnId) -> Subscriber {
        Subscriber {
            conn,
            outbox: Arc::new(Outbox::new(OutboxLimits::default(), CancellationToken::new())),
            mode: SubscriberMode::Json,
            echo: true,
        }
    }

    #[test]
    fn reference_counts_topics() {
        let r = Registry::new();
        assert_eq!(r.subscribe("t", sub(1)), SubscribeOutcome::FirstOnNode);
        assert_eq!(r.subscribe("t", sub(2)), SubscribeOutcome::Added);
        assert_eq!(r.subscribe("t", sub(2)), SubscribeOutcome::AlreadySubscribed);
        assert_eq!(r.subscriber_count("t"), 2);
        assert_eq!(r.unsubscribe("t", 3), UnsubscribeOutcome::NotSubscribed);
        assert_eq!(r.unsubscribe("t", 1), UnsubscribeOutcome::Removed);
        assert_eq!(r.unsubscribe("t", 2), UnsubscribeOutcome::LastOnNode);
        assert!(!r.has_topic("t"));
        assert_eq!(r.unsubscribe("t", 2), UnsubscribeOutcome::NotSubscribed);
    }

    #[test]
    fn churn_leaves_nothing_behind() {
        let r = Registry::new();
        for i in 0..10_000u64 {
            r.subscribe("hot", sub(i % 7));
            r.unsubscribe("hot", i % 7);
        }
        assert_eq!(r.topic_count(), 0);
    }

    #[test]
    fn model_against_a_plain_map() {
        // A small deterministic model test: random ops, compare with a BTreeMap model.
        use std::collections::{BTreeMap, BTreeSet};
        let r = Registry::new();
        let mut model: BTreeMap<String, BTreeSet<ConnId>> = BTreeMap::new();
        let mut x: u64 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let topic = format!("t{}", x % 13);
            let conn = (x >> 8) % 5;
            if x & 0x100 == 0 {
                let fresh = !model.contains_key(&topic);
                let added = model.entry(topic.clone()).or_default().insert(conn);
                let expect = match (fresh, added) {
                    (true, _) => SubscribeOutcome::FirstOnNode,
                    (false, true) => SubscribeOutcome::Added,
                    (false, false) => SubscribeOutcome::AlreadySubscribed,
                };
                assert_eq!(r.subscribe(&topic, sub(conn)), expect);
            } else {
                let removed = model.get_mut(&topic).map(|set| set.remove(&conn)).unwrap_or(false);
                let expect = if !removed {
                    UnsubscribeOutcome::NotSubscribed
                } else if model[&topic].is_empty() {
                    model.remove(&topic);
                    UnsubscribeOutcome::LastOnNode
                } else {
                    UnsubscribeOutcome::Removed
                };
                assert_eq!(r.unsubscribe(&topic, conn), expect);
            }
        }
        assert_eq!(r.topic_count(), model.len());
        for (t, set) in &model {
            assert_eq!(r.subscriber_count(t), set.len());
        }
    }
}
