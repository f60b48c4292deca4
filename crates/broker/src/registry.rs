//! The topic registry: for each topic with at least one local subscriber, a [`Topic`]
//! object holding who they are.
//!
//! A sharded `DashMap` from topic name to `Arc<Topic>`; each topic guards its own
//! subscribers with its own lock. The map's shard lock is held only to find, insert or
//! remove a topic, never while a fan-out pushes to subscribers: fan-out clones the topic's
//! `Arc` under the shard's read lock, lets go of the shard, and then walks the topic's
//! subscribers under the topic's read lock. So a subscribe or unsubscribe on one topic
//! never waits for fan-outs of other topics that share its shard, and waits for a fan-out
//! of its own topic only as long as that one walk (std's `RwLock` queues writers ahead of
//! new readers, so a busy topic cannot starve its subscribes). Why a lock per topic rather
//! than a copy-on-write subscriber list: a copy per join makes 10k subscribers joining one
//! topic cost 50M subscriber copies; the lock costs one uncontended acquire per fan-out.
//!
//! Every guard is taken and released inside one method here and no method awaits, so no
//! guard can be held across `.await` or leak to callers. A topic's entry is removed with
//! its last subscriber (marked dead under its lock first, so a racing subscribe retries on
//! a fresh entry), so subscribe/unsubscribe churn cannot grow the map.
//!
//! The `Topic` is where per-topic state belongs: its subscribers, and for a topic with
//! history its policy and delivery sequence ([`TopicStream`], see `sequencer.rs`), decided
//! once when the topic object is created (so a fan-out of a topic without history never
//! matches a pattern). The history ring itself lives with the relay's history (it must
//! outlive the topic's last local subscriber); presence will attach here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::encoding::EncodingId;
use crate::history::{HistoryRules, StreamPolicy};
use crate::outbox::Outbox;
use crate::replay::Gate;
use crate::sequencer::Sequence;

/// A connection's number on this node (unique for the node's lifetime).
pub type ConnId = u64;

/// How a connection speaks: which requests it sends (the gateway's concern) and, through
/// [`SubscriberMode::encoding`], which encoding it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberMode {
    /// JSON protocol v1 (`/ws`).
    Json,
    /// Raw mode (`/raw/{topic}`).
    Raw,
}

impl SubscriberMode {
    /// The encoding this mode's subscribers receive.
    pub fn encoding(self) -> EncodingId {
        match self {
            Self::Json => EncodingId::JSON,
            Self::Raw => EncodingId::RAW,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Raw => "raw",
        }
    }
}

/// One subscription of one connection to one topic.
#[derive(Clone)]
pub struct Subscriber {
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
    /// The encoding this subscriber receives (an id of the broker's `Encodings`).
    pub encoding: EncodingId,
    /// Whether this connection receives what it publishes itself.
    pub echo: bool,
    /// Set while the subscription replays history (history topics): live messages wait
    /// in the gate and are merged by offset when the replay has caught up (`replay.rs`).
    pub gate: Option<Arc<Gate>>,
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

/// A topic's subscribers and its liveness, under the topic's lock.
#[derive(Default)]
struct Members {
    subs: Subscribers,
    /// Set when the last subscriber left and the topic is being removed from the map: a
    /// subscribe that finds it dead starts over with a fresh topic.
    dead: bool,
}

/// A history topic's policy and the order its messages are delivered in on this node.
pub struct TopicStream {
    pub policy: Arc<StreamPolicy>,
    pub(crate) sequence: Mutex<Sequence>,
}

/// One topic with local subscribers. See the module docs.
pub struct Topic {
    name: Arc<str>,
    members: RwLock<Members>,
    /// `Some` for a topic with history.
    stream: Option<TopicStream>,
}

impl Topic {
    fn new(name: Arc<str>, policy: Option<Arc<StreamPolicy>>) -> Self {
        Self {
            name,
            members: RwLock::new(Members::default()),
            stream: policy.map(|policy| TopicStream {
                policy,
                sequence: Mutex::new(Sequence::default()),
            }),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The history policy and sequence of a topic with history.
    pub fn stream(&self) -> Option<&TopicStream> {
        self.stream.as_ref()
    }

    // A panic while holding these locks cannot leave the map inconsistent (every mutation
    // is one insert or remove), so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, Members> {
        self.members.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Members> {
        self.members.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `f` for every subscriber under the topic's read lock; returns how many.
    /// `f` must not block or touch the registry.
    pub fn for_each_subscriber(&self, mut f: impl FnMut(&Subscriber)) -> usize {
        let m = self.read();
        for s in m.subs.values() {
            f(s);
        }
        m.subs.len()
    }

    /// Subscribers now.
    pub fn len(&self) -> usize {
        self.read().subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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
    topics: DashMap<Arc<str>, Arc<Topic>>,
    rules: Arc<HistoryRules>,
}

impl Registry {
    /// A registry in which no topic has history.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry whose topics take their history policy from `rules`.
    pub fn with_rules(rules: Arc<HistoryRules>) -> Self {
        Self {
            topics: DashMap::new(),
            rules,
        }
    }

    pub fn rules(&self) -> &Arc<HistoryRules> {
        &self.rules
    }

    /// The topic object, if `topic` has local subscribers (the shard lock is released
    /// before this returns).
    pub fn topic(&self, topic: &str) -> Option<Arc<Topic>> {
        self.topics.get(topic).map(|t| t.value().clone())
    }

    /// Adds `sub` to `topic`.
    pub fn subscribe(&self, topic: &str, sub: Subscriber) -> SubscribeOutcome {
        loop {
            let t = match self.topic(topic) {
                Some(t) => t,
                None => match self.topics.entry(Arc::from(topic)) {
                    Entry::Occupied(e) => e.get().clone(),
                    Entry::Vacant(v) => {
                        let t = Topic::new(v.key().clone(), self.rules.policy(topic).cloned());
                        t.write().subs.insert(sub.conn, sub);
                        v.insert(Arc::new(t));
                        return SubscribeOutcome::FirstOnNode;
                    }
                },
            };
            let mut m = t.write();
            if m.dead {
                // Its last subscriber just left and it is on its way out of the map.
                drop(m);
                std::thread::yield_now();
                continue;
            }
            return match m.subs.insert(sub.conn, sub) {
                Some(_) => SubscribeOutcome::AlreadySubscribed,
                None => SubscribeOutcome::Added,
            };
        }
    }

    /// The gate of `conn`'s subscription to `topic`, while it replays.
    pub fn gate_of(&self, topic: &str, conn: ConnId) -> Option<Arc<Gate>> {
        let t = self.topic(topic)?;
        let m = t.read();
        m.subs.get(&conn).and_then(|s| s.gate.clone())
    }

    /// Ends `conn`'s replay on `topic`: its subscriber entry loses `gate`, if it still holds
    /// that very gate (a later resubscribe or an unsubscribe may have replaced or removed
    /// it meanwhile, and must not be undone). Returns whether it did.
    pub fn ungate(&self, topic: &str, conn: ConnId, gate: &Arc<Gate>) -> bool {
        let Some(t) = self.topic(topic) else {
            return false;
        };
        let mut m = t.write();
        match m.subs.get_mut(&conn) {
            Some(s) if s.gate.as_ref().is_some_and(|g| Arc::ptr_eq(g, gate)) => {
                s.gate = None;
                true
            }
            _ => false,
        }
    }

    /// Removes `conn` from `topic`, and the topic itself when it was the last subscriber.
    pub fn unsubscribe(&self, topic: &str, conn: ConnId) -> UnsubscribeOutcome {
        let Some(t) = self.topic(topic) else {
            return UnsubscribeOutcome::NotSubscribed;
        };
        let mut m = t.write();
        if m.dead {
            return UnsubscribeOutcome::NotSubscribed;
        }
        match m.subs.remove(&conn) {
            None => return UnsubscribeOutcome::NotSubscribed,
            // A replay still running for it stops sending (unsubscribed, or leaving).
            Some(Subscriber { gate: Some(g), .. }) => g.supersede(),
            Some(_) => {}
        }
        if !m.subs.is_empty() {
            return UnsubscribeOutcome::Removed;
        }
        // Exact under the topic's lock: it was the last one. Mark it dead before letting
        // go, so a subscribe between here and the removal starts a fresh topic.
        m.dead = true;
        drop(m);
        self.topics.remove_if(topic, |_, v| Arc::ptr_eq(v, &t));
        UnsubscribeOutcome::LastOnNode
    }

    /// Calls `f` for every subscriber of `topic` while the topic's read lock (not the
    /// map's) is held. `f` must not block or touch the registry. Returns the number of
    /// subscribers visited.
    pub fn for_each_subscriber(&self, topic: &str, mut f: impl FnMut(&Subscriber)) -> usize {
        let Some(t) = self.topic(topic) else {
            return 0;
        };
        let m = t.read();
        for s in m.subs.values() {
            f(s);
        }
        m.subs.len()
    }

    /// Whether anyone on this node listens to `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Subscribers of `topic` on this node.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topic(topic).map_or(0, |t| t.len())
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

    /// Every topic with history that has local subscribers (after a relay relink).
    pub fn stream_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .iter()
            .filter(|e| e.value().stream().is_some())
            .map(|e| e.value().clone())
            .collect()
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
            encoding: EncodingId::JSON,
            echo: true,
            gate: None,
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

    #[test]
    fn racing_joins_and_leaves_of_one_topic_keep_the_count_exact() {
        // Two threads churn one topic while a third holds a subscription throughout: the
        // topic must never vanish under it, and every outcome must add up.
        let r = Arc::new(Registry::new());
        assert_eq!(r.subscribe("t", sub(0)), SubscribeOutcome::FirstOnNode);
        let threads: Vec<_> = (1..=2u64)
            .map(|k| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let c = k * 1_000_000 + i % 3;
                        r.subscribe("t", sub(c));
                        r.subscribe("u", sub(c));
                        r.unsubscribe("t", c);
                        r.unsubscribe("u", c);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.subscriber_count("t"), 1);
        assert!(!r.has_topic("u"), "the churned topic is gone with its last subscriber");
        assert_eq!(r.unsubscribe("t", 0), UnsubscribeOutcome::LastOnNode);
        assert_eq!(r.topic_count(), 0);
    }
}
