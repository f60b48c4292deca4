//! [`OwnedSink`]: the broker's sink as one shard of a routing relay sees it (a server of a
//! `ShardedRelay`, a master of a `ClusterRelay`). Interest in topics the shard does not own
//! is hidden from its relay, so it never subscribes them, and a gap fill after its
//! reconnect covers only its own topics; deliveries and control messages pass through.
//!
//! What "owns" means is the routing relay's ([`Ownership`]); this file only applies it.

use std::sync::Arc;

use herald_broker::RelaySink;
use herald_protocol::{ControlMessage, Envelope};

/// How a routing relay answers for one of its shards.
pub(crate) trait Ownership: Send + Sync + 'static {
    /// Whether this shard carries `topic` now.
    fn owns(&self, topic: &str) -> bool;
    /// The broker's sink, while there is one.
    fn inner(&self) -> Option<Arc<dyn RelaySink>>;
    /// A channel that is no topic of the broker but that this shard must subscribe while it
    /// owns it (a cluster's `#control`), announced as a topic.
    fn extra_topic(&self) -> Option<&'static str> {
        None
    }
}

/// See the module docs.
pub(crate) struct OwnedSink<O>(pub(crate) O);

impl<O: Ownership> RelaySink for OwnedSink<O> {
    fn deliver(&self, envelope: Envelope) {
        if let Some(s) = self.0.inner() {
            s.deliver(envelope);
        }
    }

    fn has_interest(&self, topic: &str) -> bool {
        if self.0.extra_topic() == Some(topic) {
            return self.0.owns(topic);
        }
        self.0.owns(topic) && self.0.inner().is_some_and(|s| s.has_interest(topic))
    }

    fn interested_topics(&self) -> Vec<Arc<str>> {
        let mut topics = match self.0.inner() {
            Some(s) => s.interested_topics(),
            None => Vec::new(),
        };
        topics.retain(|t| self.0.owns(t));
        if let Some(extra) = self.0.extra_topic().filter(|t| self.0.owns(t)) {
            topics.push(extra.into());
        }
        topics
    }

    fn control(&self, message: ControlMessage) {
        if let Some(s) = self.0.inner() {
            s.control(message);
        }
    }

    fn relinked(&self) {
        if let Some(s) = self.0.inner() {
            s.relinked_topics(&|t| self.0.owns(t));
        }
    }

    fn relinked_topics(&self, owns: &dyn Fn(&str) -> bool) {
        if let Some(s) = self.0.inner() {
            s.relinked_topics(&|t| self.0.owns(t) && owns(t));
        }
    }
}
