//! [`ClusterRelay`]: the relay over a Redis Cluster, with sharded pub/sub (Redis 7
//! `SPUBLISH`/`SSUBSCRIBE`), so each message passes only through the master that owns its
//! topic's slot and the cluster's pub/sub capacity grows with its masters.
//!
//! # Shape
//! - A topic's channel is `{channel_prefix}{<topic>}`: the topic is the hash tag, as in its
//!   history keys, so the channel, the stream and the meta key of a topic share one slot
//!   and the append script (which `SPUBLISH`es) runs on one master.
//! - One whole [`RedisRelay`] per master ("member"), in sharded mode: its own publish and
//!   pub/sub connections, heartbeats, canary, reconnects, publish queue and history reads.
//!   Each member sees, through a filtering sink (`MemberSink`, see `owned_sink`), only the local interest in
//!   topics whose slot its master serves, so it subscribes nothing else. What the broker
//!   asks is routed by the topic's slot to its master's member; a master that is down
//!   (Redis keeps listing it until its replica takes over) or a slot no master serves
//!   answers `Unavailable`. A subscribe confirmation that fails because its slot moved
//!   meanwhile is asked again of the new owner.
//! - The control channel is the pseudo-topic `#control`, on the master of its slot; every
//!   node subscribes it there. Each member's canary is a channel its supervisor picks on
//!   one of its master's slots (asked through `ClusterHooks::owns_slot`), again when that
//!   slot moves away.
//! - The slot map (`CLUSTER SLOTS`) is read at start, every `refresh_interval` (every
//!   250 ms while a slot is uncovered or a member down), and at once when a member sees a
//!   sign that it moved (`MOVED`/`ASK` replies, a `sunsubscribe` Redis sent on its own, a
//!   lost connection: `ClusterHooks`). A hint that finds the map unchanged (the node asked
//!   may lag behind the one that redirected) makes the next read ask another node, after a
//!   pause that doubles up to `refresh_interval`. When the map changes, members are started
//!   for new masters; every topic whose owner changed, and every topic Redis dropped on its
//!   own, is announced to its owner, which subscribes it, *before* its old owner lets go of
//!   it (after its `unsubscribe_delay`, if Redis has not dropped it already); masters that
//!   left are stopped after a grace period. A topic whose owner changed may have missed messages meanwhile: once its new
//!   owner has subscribed it, `RelaySink::relinked_topics` makes the broker fill the gap
//!   from history (topics without history are at-most-once during a move, as during any
//!   relay outage).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use herald_broker::history::{History, ReadTicket, StreamPolicy};
use herald_broker::{
    BrokerMetrics, ConnId, InterestTicket, PublishTicket, Relay, RelayError, RelaySink, RelayState, ShardStatus, Ticket,
};
use herald_protocol::{ControlMessage, Payload};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster_hooks::{ClusterHooks, HintBoard};
use crate::config::{RedisRelayConfig, RelayStartError, CONTROL_SUFFIX};
use crate::owned_sink::{OwnedSink, Ownership};
use crate::relay::RedisRelay;
use crate::topology::{key_slot, Master, Topology};

/// Default pause between two reads of the slot map while everything is up.
pub const CLUSTER_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// The pause while a slot is uncovered or a member is down: a failover is under way, and
/// the sooner a node sees the promoted replica, the shorter its topics' gap.
const DEGRADED_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Least time between two reads of the map (hints come in bursts).
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// How long a member whose master left the map keeps running, so the new owners subscribe
/// before the old connections close.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// How long the gap fill after a move waits for the new owners to confirm.
const MOVE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a failed subscribe confirmation waits for its slot's new owner.
const CONFIRM_RETRY_WINDOW: Duration = Duration::from_secs(2);

/// The pseudo-topic of the control channel.
const CONTROL_TOPIC: &str = CONTROL_SUFFIX;

/// One master's relay and the sink it delivers into. `id` tells two members of one name
/// apart (a master that left the map and came back within the retirement grace).
struct Member {
    id: u64,
    name: Arc<str>,
    relay: Arc<RedisRelay>,
    sink: Arc<MemberSink>,
}

/// The slot map and the member serving each of its masters (aligned with
/// `topology.masters()`; `None` where the member could not be started).
struct View {
    topology: Topology,
    members: Vec<Option<Arc<Member>>>,
}

impl View {
    fn member_of_slot(&self, slot: u16) -> Option<&Arc<Member>> {
        self.members.get(self.topology.owner_index(slot)?)?.as_ref()
    }

    fn live(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.members.iter().flatten()
    }
}

/// What every member and the refresh task share.
struct Core {
    template: RedisRelayConfig,
    seeds: Vec<String>,
    /// `user:password@` of the first seed, reused for every master (a cluster has one set
    /// of credentials).
    userinfo: String,
    metrics: Arc<BrokerMetrics>,
    cancel: CancellationToken,
    view: ArcSwap<View>,
    sink: OnceLock<Weak<dyn RelaySink>>,
    board: Arc<HintBoard>,
    refresh_interval: Duration,
    tracker: TaskTracker,
    runtime: tokio::runtime::Handle,
    next_id: AtomicU64,
    /// Topics a `fill_moved` is running for.
    filling: std::sync::Mutex<HashSet<Arc<str>>>,
}

impl Core {
    fn slot_of(&self, topic: &str) -> u16 {
        key_slot(self.template.channel(topic).as_bytes())
    }

    fn sink(&self) -> Option<Arc<dyn RelaySink>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    fn url_of(&self, m: &Master) -> String {
        format!("redis://{}{}/", self.userinfo, m.name())
    }

    /// Whether member `id` serves `slot` in the map in use.
    fn serves(&self, id: u64, slot: u16) -> bool {
        self.view.load().member_of_slot(slot).is_some_and(|m| m.id == id)
    }
}

/// One member's ownership: the topics whose slot its master serves in the map in use,
/// plus `#control` where its slot is (see `owned_sink`).
struct MemberOwnership {
    id: u64,
    core: Weak<Core>,
}

impl Ownership for MemberOwnership {
    fn owns(&self, topic: &str) -> bool {
        let Some(core) = self.core.upgrade() else { return false };
        core.serves(self.id, core.slot_of(topic))
    }

    fn inner(&self) -> Option<Arc<dyn RelaySink>> {
        self.core.upgrade()?.sink()
    }

    fn extra_topic(&self) -> Option<&'static str> {
        Some(CONTROL_TOPIC)
    }
}

/// What one member's relay delivers into.
type MemberSink = OwnedSink<MemberOwnership>;

/// The relay over a Redis Cluster; see the module docs.
pub struct ClusterRelay {
    core: Arc<Core>,
}

impl ClusterRelay {
    /// Starts the relay on the current Tokio runtime: `seeds` are `redis://` URLs of some
    /// cluster nodes (any role; credentials, if any, from the first), `template` the
    /// settings every member gets (its `url` is ignored). No node needs to be reachable
    /// yet: the relay starts Down and reads the slot map in the background.
    pub fn start(
        seeds: Vec<String>,
        template: RedisRelayConfig,
        refresh_interval: Duration,
        metrics: Arc<BrokerMetrics>,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, RelayStartError> {
        let mut problems = Vec::new();
        if seeds.is_empty() {
            problems.push("a Redis Cluster relay needs at least one seed URL".to_owned());
        }
        for s in &seeds {
            match redis::IntoConnectionInfo::into_connection_info(s.as_str()) {
                Ok(info) => {
                    if !matches!(info.addr(), redis::ConnectionAddr::Tcp(..)) {
                        problems.push("Redis Cluster seeds must be redis://host:port URLs".to_owned());
                    }
                    if info.redis_settings().db() != 0 {
                        problems.push("a Redis Cluster has only database 0".to_owned());
                    }
                }
                Err(e) => problems.push(format!("a seed is not a Redis URL: {e}")),
            }
        }
        if refresh_interval.is_zero() {
            problems.push("the cluster refresh interval must be positive".to_owned());
        }
        if !problems.is_empty() {
            return Err(RelayStartError::Config(problems));
        }
        let mut template = template;
        template.url = seeds[0].clone();
        template.sharded_pubsub = true;
        template.validate()?;
        let userinfo = userinfo(&seeds[0]);
        let core = Arc::new(Core {
            template,
            seeds,
            userinfo,
            metrics: metrics.clone(),
            cancel: cancel.child_token(),
            view: ArcSwap::from_pointee(View {
                topology: Topology::empty(),
                members: Vec::new(),
            }),
            sink: OnceLock::new(),
            board: Arc::new(HintBoard::default()),
            refresh_interval,
            tracker: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            next_id: AtomicU64::new(1),
            filling: Default::default(),
        });
        metrics.relay_up.set(0);
        core.tracker.spawn(refresh_loop(core.clone()));
        Ok(Arc::new(Self { core }))
    }

    /// Stops every member and the refresh task. Idempotent.
    pub async fn shutdown(&self) {
        self.core.cancel.cancel();
        self.core.tracker.close();
        self.core.tracker.wait().await;
        let members: Vec<Arc<Member>> = self.core.view.load().live().cloned().collect();
        for m in members {
            m.relay.shutdown().await;
        }
    }

    /// The name (`host:port`) of the master serving `topic`'s slot, in the map in use.
    pub fn master_of(&self, topic: &str) -> Option<Arc<str>> {
        let view = self.core.view.load();
        view.member_of_slot(self.core.slot_of(topic)).map(|m| m.name.clone())
    }

    fn with_owner<T>(&self, topic: &str, f: impl FnOnce(&RedisRelay) -> T, none: impl FnOnce() -> T) -> T {
        let view = self.core.view.load();
        match view.member_of_slot(self.core.slot_of(topic)) {
            Some(m) => f(&m.relay),
            None => none(),
        }
    }
}

impl Drop for ClusterRelay {
    fn drop(&mut self) {
        self.core.cancel.cancel();
    }
}

fn no_master() -> RelayError {
    RelayError::Unavailable("no Redis Cluster master serves the topic's slot right now".into())
}

impl Relay for ClusterRelay {
    fn attach(&self, sink: Weak<dyn RelaySink>) {
        if self.core.sink.set(sink).is_err() {
            tracing::warn!("redis cluster relay attached twice; keeping the first sink");
            return;
        }
        for m in self.core.view.load().live() {
            attach_member(m);
        }
    }

    fn publish(&self, topic: &str, payload: &Payload, published_at_micros: u64) -> PublishTicket {
        self.with_owner(
            topic,
            |r| r.publish(topic, payload, published_at_micros),
            || PublishTicket::Done(Err(no_master())),
        )
    }

    fn interest_changed(&self, topic: &str) {
        self.with_owner(topic, |r| r.interest_changed(topic), || ());
    }

    /// Asks the slot's master's member. A confirmation that fails while its member is up
    /// (the slot moved: Redis redirected the SSUBSCRIBE, or the map moved the topic away
    /// before it was subscribed) is asked again of the slot's new owner, for up to
    /// `CONFIRM_RETRY_WINDOW`, so a subscribe during a move is not refused needlessly.
    fn confirm_interest(&self, topic: &str) -> InterestTicket {
        let slot = self.core.slot_of(topic);
        let (first, mut ticket) = {
            let view = self.core.view.load();
            let Some(m) = view.member_of_slot(slot) else {
                return Ticket::Done(Err(no_master()));
            };
            (m.clone(), m.relay.confirm_interest(topic))
        };
        if let Some(Ok(())) = ticket.try_outcome() {
            return Ticket::ok();
        }
        let (tx, out) = Ticket::pending();
        let core = self.core.clone();
        let topic = topic.to_owned();
        self.core.runtime.spawn(async move {
            let mut result = ticket.outcome().await;
            // Worth asking again when the failure came from a move: the member was up (Redis
            // redirected, or the map took the topic away before it was subscribed), or the
            // slot has another owner by now (a retiring member failed its waiters). A member
            // that is simply down answers at once, as without a cluster.
            let moved_on = |core: &Core| core.view.load().member_of_slot(slot).is_some_and(|m| m.id != first.id);
            if result.is_err() && (first.relay.state() == RelayState::Up || moved_on(&core)) {
                let deadline = Instant::now() + CONFIRM_RETRY_WINDOW;
                // Who was asked last, and whether its pub/sub connection was up then: the
                // same owner is asked again only once that connection has come up (a new
                // member), never in a loop that would SSUBSCRIBE into a redirect again.
                let mut asked = (first.id, first.relay.pubsub_link_up());
                while result.is_err() && Instant::now() < deadline && !core.cancel.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let next = core.view.load().member_of_slot(slot).cloned();
                    let Some(m) = next else { continue };
                    let up = m.relay.pubsub_link_up();
                    if m.id == asked.0 && (asked.1 || !up) {
                        continue;
                    }
                    asked = (m.id, up);
                    let left = deadline.saturating_duration_since(Instant::now());
                    result = tokio::time::timeout(left, m.relay.confirm_interest(&topic).outcome())
                        .await
                        .unwrap_or_else(|_| Err(no_master()));
                }
            }
            let _ = tx.send(result);
        });
        out
    }

    /// Up while every slot is served and every member is up; Down while no member is up.
    fn state(&self) -> RelayState {
        let view = self.core.view.load();
        let up = view.live().filter(|m| m.relay.state() == RelayState::Up).count();
        if up == 0 {
            RelayState::Down
        } else if up == view.members.len() && view.topology.uncovered() == 0 {
            RelayState::Up
        } else {
            RelayState::Degraded
        }
    }

    fn shards(&self) -> Vec<ShardStatus> {
        let view = self.core.view.load();
        // A master whose relay could not be started is listed, down.
        let mut out: Vec<ShardStatus> = view
            .topology
            .masters()
            .iter()
            .zip(&view.members)
            .map(|(master, m)| match m {
                Some(m) => ShardStatus {
                    name: m.name.clone(),
                    state: m.relay.state(),
                },
                None => ShardStatus {
                    name: master.name().into(),
                    state: RelayState::Down,
                },
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn shard_of(&self, topic: &str) -> Option<Arc<str>> {
        self.master_of(topic)
    }

    fn send_control(&self, message: &ControlMessage) -> PublishTicket {
        self.with_owner(
            CONTROL_TOPIC,
            |r| r.send_control(message),
            || PublishTicket::Done(Err(no_master())),
        )
    }

    fn history(&self) -> Option<&dyn History> {
        Some(self)
    }
}

/// A topic's history lives on the master of its slot, like its channel.
impl History for ClusterRelay {
    fn append(
        &self,
        topic: &str,
        payload: &Payload,
        published_at_micros: u64,
        origin_conn: Option<ConnId>,
        policy: &StreamPolicy,
    ) -> PublishTicket {
        self.with_owner(
            topic,
            |r| History::append(r, topic, payload, published_at_micros, origin_conn, policy),
            || PublishTicket::Done(Err(no_master())),
        )
    }

    fn read(&self, topic: &str, after: u64, limit: usize, policy: &StreamPolicy) -> ReadTicket {
        self.with_owner(
            topic,
            |r| History::read(r, topic, after, limit, policy),
            || Ticket::Done(Err(no_master())),
        )
    }

    fn latest(&self, topic: &str, policy: &StreamPolicy) -> ReadTicket {
        self.with_owner(
            topic,
            |r| History::latest(r, topic, policy),
            || Ticket::Done(Err(no_master())),
        )
    }
}

fn attach_member(m: &Member) {
    let sink: Arc<dyn RelaySink> = m.sink.clone();
    m.relay.attach(Arc::downgrade(&sink));
}

/// `user:password@` (or `:password@`) of a URL, as written; empty without credentials.
fn userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return String::new();
    };
    let rest = &url[start..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => authority[..=at].to_owned(),
        None => String::new(),
    }
}

/// Reads the slot map on start, on hints and periodically; applies changes.
async fn refresh_loop(core: Arc<Core>) {
    /// Why this read happens.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Cause {
        Start,
        Timer,
        Hint,
        FollowUp,
    }
    let mut conn: Option<(String, MultiplexedConnection)> = None;
    let mut last = Instant::now() - MIN_REFRESH_GAP;
    let mut failures = 0u32;
    // Hints in a row whose read found the map unchanged: each doubles the least gap before
    // the read a further hint causes (up to the regular pause). A read caused by the timer
    // resets it. After such a hint, the other nodes are asked in turn (follow-ups), at most
    // once each, in case the one asked lags behind the one that redirected.
    let mut stale = 0u32;
    let mut follow_ups_left = 0usize;
    let mut rotate = 0usize;
    let mut cause = Cause::Start;
    loop {
        let gap = match cause {
            Cause::Hint => {
                (MIN_REFRESH_GAP * 2u32.saturating_pow(stale.min(6))).min(regular_pause(&core).max(MIN_REFRESH_GAP))
            }
            _ => MIN_REFRESH_GAP,
        };
        let since = last.elapsed();
        if since < gap {
            tokio::select! {
                _ = core.cancel.cancelled() => return,
                _ = tokio::time::sleep(gap - since) => {}
            }
        }
        last = Instant::now();
        let fetched = tokio::select! {
            _ = core.cancel.cancelled() => return,
            f = fetch(&core, &mut conn, rotate) => f,
        };
        match fetched {
            Ok(topology) => {
                if failures > 0 {
                    tracing::info!("redis cluster slot map read again");
                }
                failures = 0;
                let changed = apply(&core, topology);
                match cause {
                    _ if changed => {
                        stale = 0;
                        follow_ups_left = 0;
                    }
                    Cause::Timer | Cause::Start => stale = 0,
                    Cause::Hint => {
                        // Told that the map moved, but this node says it did not.
                        stale = stale.saturating_add(1);
                        follow_ups_left = core.seeds.len() + core.view.load().topology.masters().len();
                    }
                    Cause::FollowUp => {}
                }
                if !changed && matches!(cause, Cause::Hint | Cause::FollowUp) && follow_ups_left > 0 {
                    conn = None;
                    rotate = rotate.wrapping_add(1);
                }
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot read the redis cluster slot map; retrying");
                }
                failures = failures.saturating_add(1);
                rotate = rotate.wrapping_add(1);
            }
        }
        let follow_up = follow_ups_left > 0;
        let pause = if follow_up {
            MIN_REFRESH_GAP
        } else {
            regular_pause(&core)
        };
        cause = tokio::select! {
            _ = core.cancel.cancelled() => return,
            _ = core.board.wait() => Cause::Hint,
            _ = tokio::time::sleep(pause) => if follow_up { Cause::FollowUp } else { Cause::Timer },
        };
        if cause == Cause::FollowUp {
            follow_ups_left -= 1;
        }
    }
}

/// The pause between two reads of the map without hints: `refresh_interval` while every
/// slot is served and every member is up, else at most `DEGRADED_REFRESH_INTERVAL`.
fn regular_pause(core: &Core) -> Duration {
    let healthy = {
        let view = core.view.load();
        view.topology.uncovered() == 0
            && !view.members.is_empty()
            && view
                .members
                .iter()
                .all(|m| m.as_ref().is_some_and(|m| m.relay.state() == RelayState::Up))
    };
    if healthy {
        core.refresh_interval
    } else {
        core.refresh_interval.min(DEGRADED_REFRESH_INTERVAL)
    }
}

/// `CLUSTER SLOTS` from the first node that answers: the masters of the current map first,
/// then the seeds. A connection that answered is kept for the next time.
async fn fetch(
    core: &Core,
    conn: &mut Option<(String, MultiplexedConnection)>,
    rotate: usize,
) -> Result<Topology, String> {
    let limit = core.template.command_timeout;
    if let Some((host, c)) = conn.as_mut() {
        let answer =
            tokio::time::timeout(limit, redis::cmd("CLUSTER").arg("SLOTS").query_async::<redis::Value>(c)).await;
        match answer.map(|r| r.map(|v| Topology::from_cluster_slots(&v, host))) {
            Ok(Ok(Ok(t))) if !t.masters().is_empty() => return Ok(t),
            // Failed, unreadable, or a node that serves nothing any more (reset, removed):
            // ask the others.
            _ => *conn = None,
        }
    }
    let mut candidates: Vec<String> = core
        .view
        .load()
        .topology
        .masters()
        .iter()
        .map(|m| core.url_of(m))
        .collect();
    candidates.extend(core.seeds.iter().cloned());
    if !candidates.is_empty() {
        let n = rotate % candidates.len();
        candidates.rotate_left(n);
    }
    let mut last = String::from("no node to ask");
    for url in candidates {
        let attempt = async {
            let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            let host = match client.get_connection_info().addr() {
                redis::ConnectionAddr::Tcp(h, _) => h.clone(),
                _ => String::new(),
            };
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(core.template.connect_timeout))
                .set_response_timeout(Some(limit));
            let mut c = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(|e| e.to_string())?;
            let v: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            let t = Topology::from_cluster_slots(&v, &host)?;
            Ok::<_, String>((t, host, c))
        };
        match tokio::time::timeout(limit + core.template.connect_timeout, attempt).await {
            Ok(Ok((t, host, c))) => {
                if t.masters().is_empty() {
                    last = "a node answered with no slots assigned".into();
                    continue;
                }
                *conn = Some((host, c));
                return Ok(t);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
    }
    Err(last)
}

/// Makes `topology` the map in use: members for new masters, topics re-announced to their
/// owners (see the module docs), departed masters retired. Returns whether the map changed.
fn apply(core: &Arc<Core>, topology: Topology) -> bool {
    let old = core.view.load_full();
    let changed = !old.topology.same_as(&topology) || old.topology.masters() != topology.masters();
    let evicted = core.board.take_evicted();
    if !changed && evicted.as_ref().is_some_and(Vec::is_empty) {
        return false;
    }
    let new = if changed {
        let mut by_name: HashMap<Arc<str>, Arc<Member>> = old.live().map(|m| (m.name.clone(), m.clone())).collect();
        let mut members = Vec::with_capacity(topology.masters().len());
        let mut started = Vec::new();
        for master in topology.masters() {
            let name: Arc<str> = master.name().into();
            members.push(match by_name.remove(&name) {
                Some(m) => Some(m),
                None => match start_member(core, master, name.clone()) {
                    Ok(m) => {
                        started.push(m.clone());
                        Some(m)
                    }
                    Err(e) => {
                        // Its slots answer Unavailable; the next change tries again.
                        tracing::warn!(error = %e, master = %name, "cannot start the relay for a redis cluster master");
                        None
                    }
                },
            });
        }
        let retired: Vec<Arc<Member>> = by_name.into_values().collect();
        let new = Arc::new(View { topology, members });
        core.view.store(new.clone());
        if core.sink.get().is_some() {
            for m in &started {
                attach_member(m);
            }
        }
        for m in retired {
            let cancel = core.cancel.clone();
            core.tracker.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(RETIRE_GRACE) => {}
                }
                tracing::info!(master = %m.name, "redis cluster master left the slot map; its relay stops");
                m.relay.shutdown().await;
            });
        }
        new
    } else {
        old.clone()
    };
    // To its owner in the new map, and to its old owner if that changed (which then lets it
    // go): every topic whose owner changed, every topic Redis dropped on its own (its owner
    // subscribes it again if the map says it is still its own), and, when evictions were
    // too many to remember, every topic.
    let mut moved = HashSet::new();
    if let Some(sink) = core.sink() {
        let evicted: Option<HashSet<Box<str>>> = evicted.map(|v| v.into_iter().collect());
        let mut topics: Vec<Arc<str>> = sink.interested_topics();
        topics.push(CONTROL_TOPIC.into());
        for t in topics {
            let slot = core.slot_of(&t);
            let (was, now) = (old.member_of_slot(slot), new.member_of_slot(slot));
            let owner_changed = was.map(|m| m.id) != now.map(|m| m.id);
            let dropped = evicted.as_ref().is_none_or(|e| e.contains(&*t));
            if !owner_changed && !dropped {
                continue;
            }
            if let Some(n) = now {
                n.relay.interest_changed(&t);
            }
            if let (Some(w), true) = (was, owner_changed) {
                w.relay.interest_changed(&t);
            }
            if now.is_some() && &*t != CONTROL_TOPIC && (owner_changed || dropped) {
                moved.insert(t.clone());
            }
        }
    }
    if changed {
        let names: Vec<&str> = new.live().map(|m| &*m.name).collect();
        tracing::info!(
            masters = ?names,
            uncovered = new.topology.uncovered(),
            moved = moved.len(),
            "redis cluster slot map changed"
        );
    }
    // One fill per topic at a time: a burst of hints (a stale map) must not stack them.
    {
        let mut filling = core.filling.lock().unwrap_or_else(|p| p.into_inner());
        moved.retain(|t| filling.insert(t.clone()));
    }
    if !moved.is_empty() {
        core.tracker.spawn(fill_moved(core.clone(), moved));
    }
    changed
}

/// Starts the member for `master`: a sharded-mode [`RedisRelay`] whose hooks answer, from
/// the map in use, which slots are its master's.
fn start_member(core: &Arc<Core>, master: &Master, name: Arc<str>) -> Result<Arc<Member>, RelayStartError> {
    let id = core.next_id.fetch_add(1, Ordering::Relaxed);
    let weak = Arc::downgrade(core);
    let hooks = ClusterHooks::new(
        core.board.clone(),
        Box::new(move |slot| weak.upgrade().is_some_and(|c| c.serves(id, slot))),
    );
    let mut config = core.template.clone();
    config.url = core.url_of(master);
    config.sharded_pubsub = true;
    config.sets_relay_up_gauge = false;
    config.cluster = Some(Arc::new(hooks));
    let relay = RedisRelay::start(config, core.metrics.clone(), core.cancel.child_token())?;
    let sink = Arc::new(OwnedSink(MemberOwnership {
        id,
        core: Arc::downgrade(core),
    }));
    Ok(Arc::new(Member { id, name, relay, sink }))
}

/// After a move: once a moved topic's new owner has it subscribed and can read history
/// (its pub/sub and publish connections up: asked again every 100 ms while a new member
/// comes up, or while its slot has no master, for up to `MOVE_CONFIRM_TIMEOUT`), the broker
/// fills its gap from history. A topic not confirmed by then is not filled from here (a
/// read before the subscription exists could miss what follows it); its next message
/// opens the gap in the broker's sequence, which reads it then.
async fn fill_moved(core: Arc<Core>, moved: HashSet<Arc<str>>) {
    let deadline = Instant::now() + MOVE_CONFIRM_TIMEOUT;
    let mut pending: Vec<Arc<str>> = moved.iter().cloned().collect();
    let mut confirmed: HashSet<Arc<str>> = HashSet::new();
    let mut tried: HashMap<Arc<str>, u64> = HashMap::new();
    while !pending.is_empty() && Instant::now() < deadline && !core.cancel.is_cancelled() {
        let mut asked: Vec<(Arc<str>, InterestTicket)> = Vec::new();
        let mut waiting: Vec<Arc<str>> = Vec::new();
        {
            let view = core.view.load();
            for t in pending.drain(..) {
                match view.member_of_slot(core.slot_of(&t)) {
                    // Asked once per owner that is wholly up (so it can subscribe and read
                    // history); a refusal there waits for the map to give the slot to
                    // another owner rather than asking into the same redirect again.
                    Some(m) if m.relay.state() == RelayState::Up && tried.get(&t) != Some(&m.id) => {
                        tried.insert(t.clone(), m.id);
                        let ticket = m.relay.confirm_interest(&t);
                        asked.push((t, ticket));
                    }
                    _ => waiting.push(t),
                }
            }
        }
        pending = waiting;
        for (t, ticket) in asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if matches!(tokio::time::timeout(left, ticket.outcome()).await, Ok(Ok(()))) {
                confirmed.insert(t);
            } else {
                pending.push(t);
            }
        }
        if !pending.is_empty() {
            tokio::select! {
                _ = core.cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
    {
        let mut filling = core.filling.lock().unwrap_or_else(|p| p.into_inner());
        for t in &moved {
            filling.remove(t);
        }
    }
    if confirmed.is_empty() || core.cancel.is_cancelled() {
        return;
    }
    if let Some(sink) = core.sink() {
        tracing::debug!(
            topics = confirmed.len(),
            unconfirmed = pending.len(),
            "topics moved to another redis cluster master: filling their gap"
        );
        sink.relinked_topics(&|t| confirmed.contains(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_carry_over_to_every_master() {
        assert_eq!(userinfo("redis://:pw@10.0.0.1:7000/"), ":pw@");
        assert_eq!(userinfo("redis://app:p@ss@10.0.0.1:7000"), "app:p@ss@");
        assert_eq!(userinfo("redis://10.0.0.1:7000/"), "");
    }
}
