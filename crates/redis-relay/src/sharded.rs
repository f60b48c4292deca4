//! [`ShardedRelay`]: one relay over several independent Redis servers (shards), for when
//! one Redis's single thread is the cluster's limit.
//!
//! Every topic belongs to exactly one shard, chosen by rendezvous hashing ([`ShardRouter`])
//! of the topic over the shards' names (`host:port`, `host:port/db` for a database other
//! than 0). Each shard is a whole [`RedisRelay`] of its own (two connections, its canary,
//! reconnects, publish queue and history reads), so a shard that fails affects only its
//! topics. What the broker asks is routed by topic: publications, history appends and
//! reads go to the topic's shard; interest hints and confirmations too, and each shard
//! sees, through a filtering sink (`ShardSink`, see `owned_sink`), only the local interest in the topics it
//! owns, so it subscribes nothing else. Control messages (close a user's connections on
//! every node) go out on the first shard that is up; every node subscribes the control
//! channel on every shard, so whichever shard carries one, every node gets it.
//!
//! Every node must list the same set of shards (in any order: the hash depends on names,
//! not on positions). Adding or removing a shard moves about 1/N of the topics; see
//! `docs/adr/0007-sharding-over-several-redis.md` for the trade-offs and
//! `docs/cluster.md` for operations.

use std::sync::{Arc, Weak};

use herald_broker::history::{History, ReadTicket, StreamPolicy};
use herald_broker::{
    BrokerMetrics, ConnId, InterestTicket, PublishTicket, Relay, RelayError, RelaySink, RelayState, ShardStatus,
};
use herald_protocol::{ControlMessage, Payload};
use redis::IntoConnectionInfo;
use tokio_util::sync::CancellationToken;

use crate::config::{RedisRelayConfig, RelayStartError};
use crate::owned_sink::{OwnedSink, Ownership};
use crate::relay::RedisRelay;

/// The most shards one relay accepts.
pub const MAX_SHARDS: usize = 64;

/// Rendezvous (highest random weight) hashing of topic names over shard names: a topic's
/// owner is the shard whose `mix(fnv1a(topic) ^ mix(fnv1a(shard name)))` is largest. Stable
/// across processes, versions and list orders (FNV-1a 64 and the SplitMix64 finaliser are
/// fixed functions, documented in `docs/cluster.md`), and removing a shard moves only the
/// topics it owned.
#[derive(Debug, Clone)]
pub struct ShardRouter {
    seeds: Arc<[u64]>,
}

impl ShardRouter {
    /// A router over `names` (at least one).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        assert!(!names.is_empty(), "a router needs at least one shard");
        Self {
            seeds: names.iter().map(|n| mix(fnv1a(n.as_ref().as_bytes()))).collect(),
        }
    }

    /// The index (into the names given to [`new`](Self::new)) of the shard owning `topic`.
    /// One pass over the topic's bytes and one multiply-xorshift per shard.
    pub fn owner(&self, topic: &str) -> usize {
        let h = fnv1a(topic.as_bytes());
        let mut best = (0, 0u64);
        for (i, seed) in self.seeds.iter().enumerate() {
            let score = mix(h ^ seed);
            if i == 0 || score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }

    /// How many shards the router spreads over.
    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    /// Always `false`: a router has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty()
    }
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 finaliser: a bijection on u64 in which every input bit affects every
/// output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A shard's stable, credential-free name from its URL: `host:port`, with `/db` appended
/// for a database other than 0 (a Unix socket: its path).
pub fn shard_name(url: &str) -> Result<String, RelayStartError> {
    let info = url.into_connection_info()?;
    let db = info.redis_settings().db();
    Ok(if db == 0 {
        info.addr().to_string()
    } else {
        format!("{}/{db}", info.addr())
    })
}

/// One shard's ownership: the topics the router gives its index (see `owned_sink`).
struct ShardOwnership {
    index: usize,
    router: ShardRouter,
    inner: std::sync::OnceLock<Weak<dyn RelaySink>>,
}

impl Ownership for ShardOwnership {
    fn owns(&self, topic: &str) -> bool {
        self.router.owner(topic) == self.index
    }

    fn inner(&self) -> Option<Arc<dyn RelaySink>> {
        self.inner.get().and_then(Weak::upgrade)
    }
}

/// What one shard's relay delivers into.
type ShardSink = OwnedSink<ShardOwnership>;

/// One shard: its name, its relay and the sink that relay delivers into.
struct Shard {
    name: Arc<str>,
    relay: Arc<RedisRelay>,
    sink: Arc<ShardSink>,
}

/// The relay over several Redis servers; see the module docs.
pub struct ShardedRelay {
    shards: Vec<Shard>,
    router: ShardRouter,
}

impl ShardedRelay {
    /// Starts one [`RedisRelay`] per configuration (each with its own `url`; every other
    /// setting as given), on the current Tokio runtime. Like [`RedisRelay::start`], no
    /// Redis needs to be reachable yet. Refused: no shard, more than [`MAX_SHARDS`], two
    /// URLs naming the same shard, or any shard's own configuration problem.
    pub fn start(
        configs: Vec<RedisRelayConfig>,
        metrics: Arc<BrokerMetrics>,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, RelayStartError> {
        if configs.is_empty() || configs.len() > MAX_SHARDS {
            return Err(RelayStartError::Config(vec![format!(
                "a sharded relay needs 1 to {MAX_SHARDS} Redis URLs, got {}",
                configs.len()
            )]));
        }
        let mut names: Vec<String> = Vec::with_capacity(configs.len());
        for c in &configs {
            let name = shard_name(&c.url)?;
            if names.contains(&name) {
                return Err(RelayStartError::Config(vec![format!(
                    "two Redis URLs name the same shard {name}"
                )]));
            }
            names.push(name);
        }
        for c in &configs {
            c.validate()?;
        }
        let router = ShardRouter::new(&names);
        let mut shards = Vec::with_capacity(configs.len());
        for (index, (mut config, name)) in configs.into_iter().zip(names).enumerate() {
            config.sets_relay_up_gauge = false;
            let relay = RedisRelay::start(config, metrics.clone(), cancel.child_token())?;
            shards.push(Shard {
                name: name.into(),
                relay,
                sink: Arc::new(OwnedSink(ShardOwnership {
                    index,
                    router: router.clone(),
                    inner: std::sync::OnceLock::new(),
                })),
            });
        }
        metrics.relay_up.set(0);
        Ok(Arc::new(Self { shards, router }))
    }

    /// Stops every shard's tasks (see [`RedisRelay::shutdown`]). Idempotent.
    pub async fn shutdown(&self) {
        for s in &self.shards {
            s.relay.shutdown().await;
        }
    }

    /// The router this relay uses.
    pub fn router(&self) -> &ShardRouter {
        &self.router
    }

    fn owner(&self, topic: &str) -> &RedisRelay {
        &self.shards[self.router.owner(topic)].relay
    }
}

impl Relay for ShardedRelay {
    fn attach(&self, sink: Weak<dyn RelaySink>) {
        for s in &self.shards {
            if s.sink.0.inner.set(sink.clone()).is_err() {
                tracing::warn!("sharded redis relay attached twice; keeping the first sink");
                return;
            }
            let shard_sink: Arc<dyn RelaySink> = s.sink.clone();
            s.relay.attach(Arc::downgrade(&shard_sink));
        }
    }

    fn publish(&self, topic: &str, payload: &Payload, published_at_micros: u64) -> PublishTicket {
        self.owner(topic).publish(topic, payload, published_at_micros)
    }

    fn interest_changed(&self, topic: &str) {
        self.owner(topic).interest_changed(topic);
    }

    fn confirm_interest(&self, topic: &str) -> InterestTicket {
        self.owner(topic).confirm_interest(topic)
    }

    /// Up while every shard is, down while none is, degraded in between.
    fn state(&self) -> RelayState {
        let up = self.shards.iter().filter(|s| s.relay.state() == RelayState::Up).count();
        match up {
            n if n == self.shards.len() => RelayState::Up,
            0 => RelayState::Down,
            _ => RelayState::Degraded,
        }
    }

    fn shards(&self) -> Vec<ShardStatus> {
        self.shards
            .iter()
            .map(|s| ShardStatus {
                name: s.name.clone(),
                state: s.relay.state(),
            })
            .collect()
    }

    fn shard_of(&self, topic: &str) -> Option<Arc<str>> {
        Some(self.shards[self.router.owner(topic)].name.clone())
    }

    /// On the first shard that is up (every node listens for control messages on every
    /// shard); refused while none is.
    fn send_control(&self, message: &ControlMessage) -> PublishTicket {
        match self.shards.iter().find(|s| s.relay.state() == RelayState::Up) {
            Some(s) => s.relay.send_control(message),
            None => PublishTicket::Done(Err(RelayError::Unavailable(
                "no redis shard is up to carry the control message".into(),
            ))),
        }
    }

    fn history(&self) -> Option<&dyn History> {
        Some(self)
    }
}

/// A topic's history lives on the topic's shard, like its channel.
impl History for ShardedRelay {
    fn append(
        &self,
        topic: &str,
        payload: &Payload,
        published_at_micros: u64,
        origin_conn: Option<ConnId>,
        policy: &StreamPolicy,
    ) -> PublishTicket {
        History::append(
            self.owner(topic),
            topic,
            payload,
            published_at_micros,
            origin_conn,
            policy,
        )
    }

    fn read(&self, topic: &str, after: u64, limit: usize, policy: &StreamPolicy) -> ReadTicket {
        History::read(self.owner(topic), topic, after, limit, policy)
    }

    fn latest(&self, topic: &str, policy: &StreamPolicy) -> ReadTicket {
        History::latest(self.owner(topic), topic, policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:6379")).collect()
    }

    #[test]
    fn topics_spread_evenly_over_the_shards() {
        let r = ShardRouter::new(&names(3));
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            counts[r.owner(&format!("room.{i}"))] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn the_owner_does_not_depend_on_the_order_of_the_list() {
        let a = names(4);
        let mut b = a.clone();
        b.reverse();
        let (ra, rb) = (ShardRouter::new(&a), ShardRouter::new(&b));
        for i in 0..2_000 {
            let t = format!("t{i}");
            assert_eq!(a[ra.owner(&t)], b[rb.owner(&t)], "{t}");
        }
    }

    #[test]
    fn adding_a_shard_moves_only_the_topics_it_takes() {
        let three = names(3);
        let four = names(4);
        let (r3, r4) = (ShardRouter::new(&three), ShardRouter::new(&four));
        let mut moved = 0;
        for i in 0..20_000 {
            let t = format!("topic-{i}");
            let (before, after) = (&three[r3.owner(&t)], &four[r4.owner(&t)]);
            if before != after {
                assert_eq!(after, &four[3], "{t} moved between two old shards");
                moved += 1;
            }
        }
        // About a quarter moves, all of it to the new shard.
        assert!((4_000..6_000).contains(&moved), "{moved} moved");
    }

    #[test]
    fn the_hash_is_the_documented_one() {
        // Fixed values, so a change of function (which would move topics between shards
        // in a running cluster mid-upgrade) cannot pass unnoticed. docs/cluster.md lists
        // the same two.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let r = ShardRouter::new(&["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]);
        let owners: Vec<usize> = ["room", "chat.lobby", "game.42", "a", "", "herald.time"]
            .iter()
            .map(|t| r.owner(t))
            .collect();
        assert_eq!(owners, OWNERS);
    }

    /// The owners pinned in `the_hash_is_the_documented_one`.
    const OWNERS: [usize; 6] = [0, 1, 2, 0, 2, 0];

    #[test]
    fn shard_names_carry_no_credentials() {
        assert_eq!(shard_name("redis://:secret@10.1.2.3:6380/").unwrap(), "10.1.2.3:6380");
        assert_eq!(shard_name("redis://user:pw@r1:6379/2").unwrap(), "r1:6379/2");
        assert_eq!(shard_name("redis://r2:6390").unwrap(), "r2:6390");
    }
}
