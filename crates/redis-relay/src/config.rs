//! The Redis relay's settings ([`RedisRelayConfig`]) and the errors [`RedisRelay::start`]
//! can report ([`RelayStartError`]).
//!
//! This file owns the defaults and the validation of the relay's knobs. It deliberately
//! knows nothing about files, environment variables or flags: the gateway maps its own
//! configuration tree onto this struct, so the relay stays usable from tests and embedders.
//!
//! [`RedisRelay::start`]: crate::RedisRelay::start

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::TopicRules;
use thiserror::Error;

use crate::cluster_hooks::ClusterHooks;

/// Everything the Redis relay needs to know. Every field has a documented default
/// (see [`Default`]); `node_id` must be set by the caller.
#[derive(Debug, Clone)]
pub struct RedisRelayConfig {
    /// Redis server, `redis://[user:pass@]host:port[/db]` (default `redis://127.0.0.1:6379/`).
    /// The relay opens two connections to it: one multiplexed for PUBLISH and one
    /// dedicated to pub/sub.
    pub url: String,
    /// Prefix of every channel: topic `t` travels on `{channel_prefix}t` (default
    /// `herald:`; with `sharded_pubsub`, `{channel_prefix}{t}`), so several Herald clusters,
    /// or other applications, can share one Redis.
    pub channel_prefix: String,
    /// This node's id, written into every envelope (1..=255 bytes). Envelopes carrying it
    /// are dropped on receipt, which is how a node never receives its own publication.
    pub node_id: String,
    /// Applied to the topic of every inbound envelope, like every other entry point.
    pub topic_rules: TopicRules,
    /// How often both connections are PINGed (default 1 s). Detects a hung Redis
    /// (SIGSTOP) or a half-open socket, which neither the library nor TCP notice quickly.
    pub heartbeat_interval: Duration,
    /// How long a PING may go unanswered before the relay is marked down (default 1 s).
    /// A hang is noticed within `heartbeat_interval + heartbeat_timeout`.
    pub heartbeat_timeout: Duration,
    /// Deadline for opening a connection, TCP plus handshake (default 1 s). A paused
    /// Redis still accepts TCP connections (the kernel does), so this is what bounds a
    /// reconnect attempt to it.
    pub connect_timeout: Duration,
    /// Deadline for any command reply: PUBLISH pipelines, SUBSCRIBE, UNSUBSCRIBE
    /// (default 1 s). A timeout is treated as a dead connection.
    pub command_timeout: Duration,
    /// First reconnect delay bound (default 100 ms). Delays grow exponentially up to
    /// `reconnect_backoff_max`; each actual delay is uniform in `0..=bound` (full
    /// jitter), so a fleet of nodes does not reconnect in lockstep after a Redis restart.
    pub reconnect_backoff_min: Duration,
    /// Upper bound of the reconnect delay (default 5 s): after Redis returns, every node
    /// is back within this time.
    pub reconnect_backoff_max: Duration,
    /// How long a topic's channel stays subscribed after the last local subscriber left
    /// (default 500 ms): absorbs churn. The channel is gone within
    /// `subscribe_batch_window + unsubscribe_delay` (well under the 2 s we promise).
    pub unsubscribe_delay: Duration,
    /// How long interest changes are collected before SUBSCRIBE is sent (default 20 ms):
    /// a burst of first subscribers to many topics costs one SUBSCRIBE with many channels.
    pub subscribe_batch_window: Duration,
    /// How long interest changes are collected before SUBSCRIBE is sent while a
    /// `confirm_interest` waits (default 2 ms; capped at `subscribe_batch_window`): a
    /// client's subscribe acknowledgement waits for the SUBSCRIBE, so it should not wait
    /// out the whole batch window too. See the supervisor's docs on the batch window.
    pub subscribe_confirm_window: Duration,
    /// Most channels named in one SUBSCRIBE/UNSUBSCRIBE, also when resubscribing every
    /// topic after a reconnect (default 1000), so one command never gets huge.
    pub subscribe_batch_max: usize,
    /// Publications waiting for Redis (default 65536). Beyond it `publish` fails at
    /// once with `Overloaded` instead of growing memory.
    pub publish_queue_capacity: usize,
    /// Most PUBLISH commands sent in one pipeline (default 512).
    pub publish_batch_max: usize,
    /// Most messages stored by one run of the append script (default 64, at most
    /// [`APPEND_BATCH_LIMIT`]). Consecutive appends of a pipeline are sent as one
    /// `EVALSHA` of up to this many messages; 1 sends one per message. Redis runs one
    /// client's script at a time, so this bounds how long one call delays the others
    /// (about 4 µs of Redis CPU per 256-byte message).
    pub append_batch_max: usize,
    /// Tasks that decode inbound envelopes and hand them to the broker (default 0: one
    /// per core). A topic always goes to the same worker, which keeps per-topic order.
    pub deliver_workers: usize,
    /// Largest payload accepted from Redis, in bytes (default 64 KiB, the gateway's default
    /// `limits.max_message_bytes`, which the gateway passes here). A larger one is counted
    /// in `relay_invalid` and skipped before it is copied, decoded or validated: the limit
    /// a node enforces on its own clients holds for what other publishers on Redis send.
    pub max_payload_bytes: usize,
    /// Envelopes waiting per worker (default 1024). When full, the pub/sub reader waits
    /// (see the crate docs on back-pressure).
    pub deliver_queue_capacity: usize,
    /// History reads sent to Redis at the same time (default 16). Each returns at most
    /// `MAX_READ` messages, so this bounds the memory replies in flight can take (16 ×
    /// 1000 × the message size) while a deploy makes every client replay at once.
    pub history_read_concurrency: usize,
    /// History reads waiting for one of those slots (default 4096); beyond it a read is
    /// refused at once with `Overloaded` instead of queueing without bound.
    pub history_read_queue: usize,
    /// How often the node PUBLISHes a canary to its own canary channel (default 5 s;
    /// zero: never). A pub/sub connection that answers PING yet no longer delivers (a
    /// proxy or server that lost the subscription: the "subscribed but silent" failure)
    /// is caught when the canary does not come back, or when Redis answers that nobody
    /// received it, and is then replaced like any failed pub/sub connection.
    pub canary_interval: Duration,
    /// How long a canary Redis accepted may take to come back (default 3 s).
    pub canary_timeout: Duration,
    /// Whether this relay sets `herald_relay_up` itself (default `true`). A shard of a
    /// [`ShardedRelay`](crate::ShardedRelay) does not: the gauge is the whole relay's, and
    /// the gateway derives it from the sharded relay's state.
    pub sets_relay_up_gauge: bool,
    /// Redis Cluster sharded pub/sub (default `false`), set by
    /// [`ClusterRelay`](crate::ClusterRelay) for the relay it runs on each master:
    /// channels are hash-tagged like the history keys (`{channel_prefix}{<topic>}`, see
    /// [`channel`](Self::channel)), so a topic's channel and stream share a slot; the
    /// relay sends SSUBSCRIBE/SUNSUBSCRIBE/SPUBLISH, runs the append script only over
    /// topics of one slot, and subscribes the control channel only when the sink asks for
    /// it (it is a topic of the master owning its slot, `#control`).
    pub sharded_pubsub: bool,
    /// How this relay talks to its `ClusterRelay` (set by it; `None` outside a cluster):
    /// signs that the slot map moved (a `MOVED`, `ASK`, `TRYAGAIN` or `CLUSTERDOWN` answer,
    /// a `sunsubscribe` Redis sent on its own, a lost connection), and which slots this
    /// master serves (the canary is picked on one of them).
    pub cluster: Option<Arc<ClusterHooks>>,
}

impl Default for RedisRelayConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            channel_prefix: "herald:".into(),
            node_id: String::new(),
            topic_rules: TopicRules::default(),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            unsubscribe_delay: Duration::from_millis(500),
            subscribe_batch_window: Duration::from_millis(20),
            subscribe_confirm_window: Duration::from_millis(2),
            subscribe_batch_max: 1000,
            publish_queue_capacity: 65536,
            publish_batch_max: 512,
            append_batch_max: 64,
            deliver_workers: 0,
            max_payload_bytes: 64 * 1024,
            deliver_queue_capacity: 1024,
            history_read_concurrency: 16,
            history_read_queue: 4096,
            canary_interval: Duration::from_secs(5),
            canary_timeout: Duration::from_secs(3),
            sets_relay_up_gauge: true,
            sharded_pubsub: false,
            cluster: None,
        }
    }
}

/// The largest `append_batch_max` accepted: one script run stays well under a
/// millisecond of Redis time.
pub const APPEND_BATCH_LIMIT: usize = 256;

/// What follows the prefix in the control channel's name; not a valid topic.
pub const CONTROL_SUFFIX: &str = "#control";

/// What follows the prefix in a node's canary channel's name (then the node id); not a
/// valid topic.
pub const CANARY_SUFFIX: &str = "#canary:";

impl RedisRelayConfig {
    /// The defaults with `url` and `node_id` set.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node_id: node_id.into(),
            ..Self::default()
        }
    }

    /// The Redis channel that carries `topic`: `{channel_prefix}<topic>`, or with
    /// `sharded_pubsub` `{channel_prefix}{<topic>}`, the topic in a hash tag exactly as in
    /// [`stream_key`](Self::stream_key) (so the channel and the stream share a slot).
    pub fn channel(&self, topic: &str) -> String {
        if self.sharded_pubsub {
            return self.tagged(topic, "}");
        }
        let mut c = String::with_capacity(self.channel_prefix.len() + topic.len());
        c.push_str(&self.channel_prefix);
        c.push_str(topic);
        c
    }

    /// The topic (or `#...` name) a channel from [`channel`](Self::channel) carries;
    /// `None` for a channel of another prefix or shape.
    pub fn topic_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let rest = channel.strip_prefix(self.channel_prefix.as_str())?;
        if !self.sharded_pubsub {
            return Some(rest);
        }
        let inner = rest.strip_prefix('{')?.strip_suffix('}')?;
        match inner.strip_prefix('#') {
            Some(t) if t.starts_with('}') => Some(t),
            _ => Some(inner),
        }
    }

    /// `{channel_prefix}{<topic>` then `end`, with the `#` escape of a topic starting with
    /// `}` (see [`stream_key`](Self::stream_key)).
    fn tagged(&self, topic: &str, end: &str) -> String {
        let mut k = String::with_capacity(self.channel_prefix.len() + topic.len() + 2 + end.len());
        k.push_str(&self.channel_prefix);
        k.push('{');
        if topic.starts_with('}') {
            k.push('#');
        }
        k.push_str(topic);
        k.push_str(end);
        k
    }

    /// `SPUBLISH` with `sharded_pubsub`, else `PUBLISH`.
    pub fn publish_verb(&self) -> &'static str {
        if self.sharded_pubsub {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Tells the cluster layer (if any) that the slots may have moved.
    pub fn hint_topology(&self) {
        if let Some(c) = &self.cluster {
            c.hint();
        }
    }

    /// With `sharded_pubsub`: candidate `k` for this node's canary channel on a master,
    /// `{channel_prefix}{#canary:<node_id>:<k>}`; the supervisor takes the first whose slot
    /// the master serves.
    pub fn canary_candidate(&self, k: u32) -> String {
        self.channel(&format!("{CANARY_SUFFIX}{}:{k}", self.node_id))
    }

    /// The Redis channel that carries control messages between nodes:
    /// `{channel_prefix}#control`. `#` is reserved in topic names, so no topic's channel can
    /// be this one.
    pub fn control_channel(&self) -> String {
        self.channel(CONTROL_SUFFIX)
    }

    /// This node's canary channel, `{channel_prefix}#canary:{node_id}`: only this node
    /// subscribes it.
    /// (With `sharded_pubsub` the canary is one of [`canary_candidate`](Self::canary_candidate).)
    pub fn canary_channel(&self) -> String {
        let mut c = self.channel(CANARY_SUFFIX);
        c.push_str(&self.node_id);
        c
    }

    /// The Redis Stream holding `topic`'s history: `{channel_prefix}{<topic>}:s`.
    ///
    /// The topic sits between braces, a Redis Cluster hash tag, so the stream and the meta
    /// key ([`meta_key`](Self::meta_key)) of one topic always hash to the same slot and
    /// one script can touch both (a script's keys must share a slot in a cluster). The two
    /// names differ only in their last byte, which is never a brace, so they share their
    /// hash tag whatever braces the topic contains (a topic like `a}b` makes the tag `a`,
    /// still the same for both keys). A topic that starts with `}` would make the tag
    /// empty, and Redis would hash each whole name apart, so such a topic is written with a
    /// `#` before it (`herald:{#}x}:s`); `#` cannot start a topic, so different topics
    /// never share a key name. `validate` refuses a prefix whose first `{` is followed by
    /// `}` for the same reason.
    pub fn stream_key(&self, topic: &str) -> String {
        self.topic_key(topic, 's')
    }

    /// The hash holding `topic`'s stream `epoch` and last `offset`:
    /// `{channel_prefix}{<topic>}:m` (see [`stream_key`](Self::stream_key)).
    pub fn meta_key(&self, topic: &str) -> String {
        self.topic_key(topic, 'm')
    }

    fn topic_key(&self, topic: &str, kind: char) -> String {
        let mut end = String::from("}:");
        end.push(kind);
        self.tagged(topic, &end)
    }

    /// The number of delivery workers actually started.
    pub fn worker_count(&self) -> usize {
        match self.deliver_workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }

    /// Checks every field and reports every problem at once.
    pub fn validate(&self) -> Result<(), RelayStartError> {
        let mut p = Vec::new();
        if self.node_id.is_empty() || self.node_id.len() > 255 {
            p.push(format!("node_id must be 1..=255 bytes, is {}", self.node_id.len()));
        }
        if self
            .channel_prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            p.push("channel_prefix must not contain spaces or control characters".into());
        }
        if self.sharded_pubsub {
            if let Some(open) = self.channel_prefix.find('{') {
                if self.channel_prefix[open..].contains('}') {
                    p.push(
                        "channel_prefix must not hold a hash tag `{...}` on a Redis Cluster: every topic would share one slot".into(),
                    );
                }
            }
            if self.node_id.contains(['{', '}']) {
                p.push(
                    "node_id must not contain braces on a Redis Cluster (they would change the canary's slot)".into(),
                );
            }
        }
        if let Some(open) = self.channel_prefix.find('{') {
            if self.channel_prefix[open + 1..].starts_with('}') {
                p.push(
                    "channel_prefix must not contain `{}` at its first brace (an empty Redis Cluster hash tag)".into(),
                );
            }
        }
        for (name, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
            ("canary_timeout", self.canary_timeout),
        ] {
            if d.is_zero() {
                p.push(format!("{name} must be positive"));
            }
        }
        if self.append_batch_max > APPEND_BATCH_LIMIT {
            p.push(format!("append_batch_max must be at most {APPEND_BATCH_LIMIT}"));
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_min {
            p.push("reconnect_backoff_max must be at least reconnect_backoff_min".into());
        }
        for (name, n) in [
            ("subscribe_batch_max", self.subscribe_batch_max),
            ("publish_queue_capacity", self.publish_queue_capacity),
            ("publish_batch_max", self.publish_batch_max),
            ("append_batch_max", self.append_batch_max),
            ("deliver_queue_capacity", self.deliver_queue_capacity),
            ("max_payload_bytes", self.max_payload_bytes),
            ("history_read_concurrency", self.history_read_concurrency),
            ("history_read_queue", self.history_read_queue),
        ] {
            if n == 0 {
                p.push(format!("{name} must be positive"));
            }
        }
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            // The URL itself is not repeated: it may carry a password.
            p.push(format!("url is not a Redis URL: {e}"));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(RelayStartError::Config(p))
        }
    }
}

/// Why the relay could not start. Redis being unreachable is *not* one of these: the relay
/// starts down and keeps reconnecting.
#[derive(Debug, Error)]
pub enum RelayStartError {
    /// One entry per invalid setting.
    #[error("invalid redis relay configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The URL parsed as a whole but the client refused it.
    #[error("redis client: {0}")]
    Client(#[from] redis::RedisError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes (the cluster specification's rule): between
    /// the first `{` and the first `}` after it, when that is not empty; else the whole key.
    fn hash_tag(key: &str) -> &str {
        if let Some(open) = key.find('{') {
            if let Some(len) = key[open + 1..].find('}') {
                if len > 0 {
                    return &key[open + 1..open + 1 + len];
                }
            }
        }
        key
    }

    #[test]
    fn a_topics_keys_share_their_hash_tag_whatever_the_braces() {
        let prefixes = ["herald:", "", "{app}:", "a{b:", "x}y:", "a{", "}{"];
        let topics = ["room", "a}b", "{x}", "}", "{", "a{b}c", "{}", "t.1/2@=-_:"];
        let mut names = std::collections::HashSet::new();
        for prefix in prefixes {
            let c = RedisRelayConfig {
                channel_prefix: prefix.into(),
                ..RedisRelayConfig::new("redis://127.0.0.1:1/", "n")
            };
            for topic in topics {
                let (s, m) = (c.stream_key(topic), c.meta_key(topic));
                assert_eq!(hash_tag(&s), hash_tag(&m), "{prefix:?} {topic:?}: {s} / {m}");
                assert!(
                    names.insert((prefix, s)) && names.insert((prefix, m)),
                    "no two topics share a key"
                );
            }
        }
        assert_eq!(hash_tag("herald:{room}:s"), "room");
        let bad = RedisRelayConfig {
            channel_prefix: "x{}".into(),
            ..RedisRelayConfig::new("redis://127.0.0.1:1/", "n")
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn on_a_cluster_a_topics_channel_shares_its_keys_slot_and_maps_back() {
        let prefixes = ["herald:", "", "a{b:", "x}y:", "a{", "}{"];
        let topics = [
            "room",
            "a}b",
            "{x}",
            "}",
            "}x",
            "{",
            "a{b}c",
            "{}",
            "#control",
            "t.1/2@=-_:",
        ];
        for prefix in prefixes {
            let c = RedisRelayConfig {
                channel_prefix: prefix.into(),
                sharded_pubsub: true,
                ..RedisRelayConfig::new("redis://127.0.0.1:1/", "n")
            };
            let mut channels = std::collections::HashSet::new();
            for topic in topics {
                let ch = c.channel(topic);
                assert_eq!(
                    crate::topology::key_slot(ch.as_bytes()),
                    crate::topology::key_slot(c.stream_key(topic).as_bytes()),
                    "{prefix:?} {topic:?}: {ch}"
                );
                assert_eq!(c.topic_of_channel(&ch), Some(topic), "{prefix:?} {ch}");
                assert!(channels.insert(ch), "no two topics share a channel");
            }
            assert_eq!(c.topic_of_channel("other:room"), None);
        }
        let c = RedisRelayConfig {
            sharded_pubsub: true,
            ..RedisRelayConfig::new("redis://127.0.0.1:1/", "n")
        };
        assert_eq!(c.channel("room"), "herald:{room}");
        assert_eq!(c.publish_verb(), "SPUBLISH");
        assert_eq!(c.canary_candidate(7), "herald:{#canary:n:7}");
        // A prefix holding a whole hash tag would put every topic in one slot.
        let one_slot = RedisRelayConfig {
            channel_prefix: "{app}:".into(),
            ..c.clone()
        };
        assert!(one_slot.validate().is_err());
        let braces = RedisRelayConfig {
            node_id: "a}b".into(),
            ..c
        };
        assert!(braces.validate().is_err());
    }

    #[test]
    fn defaults_are_valid_once_a_node_id_is_set() {
        assert!(RedisRelayConfig::default().validate().is_err());
        let c = RedisRelayConfig::new("redis://127.0.0.1:1/", "n1");
        c.validate().unwrap();
        assert_eq!(c.channel("room"), "herald:room");
        assert_eq!(c.stream_key("room"), "herald:{room}:s");
        assert_eq!(c.meta_key("room"), "herald:{room}:m");
        assert!(c.worker_count() >= 1);
    }

    #[test]
    fn reports_every_problem() {
        let c = RedisRelayConfig {
            url: "http://nope".into(),
            node_id: "x".repeat(300),
            heartbeat_interval: Duration::ZERO,
            reconnect_backoff_max: Duration::from_millis(1),
            publish_queue_capacity: 0,
            ..RedisRelayConfig::default()
        };
        let Err(RelayStartError::Config(p)) = c.validate() else {
            panic!("expected errors")
        };
        assert_eq!(p.len(), 5, "{p:?}");
    }

    #[test]
    fn the_append_batch_is_between_one_and_the_limit() {
        for (n, ok) in [
            (0, false),
            (1, true),
            (64, true),
            (APPEND_BATCH_LIMIT, true),
            (APPEND_BATCH_LIMIT + 1, false),
        ] {
            let c = RedisRelayConfig {
                append_batch_max: n,
                ..RedisRelayConfig::new("redis://127.0.0.1:1/", "n1")
            };
            assert_eq!(c.validate().is_ok(), ok, "append_batch_max {n}");
        }
    }
}
