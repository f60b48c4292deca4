//! The broker: one per node. It ties the registry, the encodings, the metrics and the relay
//! together and implements the data path's middle step: a message is encoded once per
//! encoding that some local subscriber uses (`encoding.rs`), the same `Bytes` is queued to
//! every local subscriber, and the payload is handed to the relay for the other nodes.
//! Messages arriving from the relay go through the same local fan-out.
//!
//! Nothing here awaits, so a publish never waits for a subscriber. What the relay says about
//! a publication comes back as a [`PublishTicket`] the caller may await.
//!
//! A subscriber whose writer is idle is not woken: its outbox is listed for the flusher
//! (`flusher.rs`), which sends to it directly. The list is gathered in a per-thread buffer
//! while the topic's subscribers are walked, and handed over after, so no socket is
//! written while the topic is locked.

use std::cell::RefCell;
use std::future::Future;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_protocol::{ControlMessage, Envelope, Payload, StreamPos};

use crate::encoding::{Delivery, Encodings, FrameCache};
use crate::flusher::FlushQueue;
use crate::history::{History, HistoryRules, StreamPolicy, MAX_READ};
use crate::metrics::{BrokerMetrics, Source};
use crate::outbox::{Outbox, PushOutcome};
use crate::registry::{ConnId, Registry, SubscribeOutcome, Subscriber, Topic, UnsubscribeOutcome};
use crate::relay::{InterestTicket, PublishTicket, Relay, RelaySink, RelayState};
use crate::sequencer::{Offered, Sequenced};

/// What one local fan-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Queued to a subscriber's outbox.
    pub delivered: usize,
    /// Not queued: the subscriber's outbox was full (dropped, or the subscriber was
    /// disconnected by the slow-consumer policy).
    pub dropped_slow: usize,
    /// Not queued: the subscriber was already closing.
    pub dropped_closed: usize,
}

/// What [`Broker::publish`] did locally, and the relay's answer to come.
pub struct PublishReport {
    pub local: FanOut,
    pub relay: PublishTicket,
}

/// See the module docs.
pub struct Broker {
    node_id: Arc<str>,
    registry: Registry,
    encodings: Encodings,
    relay: Arc<dyn Relay>,
    metrics: Arc<BrokerMetrics>,
    flush: Arc<FlushQueue>,
    /// Who acts on control messages from other nodes (the gateway); set once at start.
    control: OnceLock<ControlHandler>,
    /// This broker, for the gap-filling tasks that `RelaySink::deliver` (`&self`) starts.
    me: OnceLock<Weak<Broker>>,
    /// Topics this node alone publishes, locally (the gateway's system topics): what the
    /// relay brings on them is dropped. Set once at start; empty for most nodes.
    local_only: OnceLock<Box<[Box<str>]>>,
}

/// Acts on a control message another node sent; must not block.
pub type ControlHandler = Box<dyn Fn(ControlMessage) + Send + Sync>;

thread_local! {
    /// The outboxes a fan-out on this thread lists for the flusher (kept for its capacity).
    static LISTED: RefCell<Vec<Arc<Outbox>>> = const { RefCell::new(Vec::new()) };
}

/// A fan-out's listed outboxes; handed to the flusher when dropped, so that even a panic
/// mid fan-out leaves no listed outbox behind unseen.
struct Listed<'a> {
    outboxes: Vec<Arc<Outbox>>,
    queue: &'a FlushQueue,
}

impl<'a> Listed<'a> {
    fn new(queue: &'a FlushQueue) -> Self {
        // Taken out of the thread-local (not borrowed), so a nested fan-out is harmless.
        let outboxes = LISTED.with(|l| std::mem::take(&mut *l.borrow_mut()));
        Self { outboxes, queue }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.queue.enqueue(&mut self.outboxes);
        let v = std::mem::take(&mut self.outboxes);
        LISTED.with(|l| {
            let mut l = l.borrow_mut();
            if l.capacity() < v.capacity() {
                *l = v;
            }
        });
    }
}

/// Microseconds since the Unix epoch, the envelope's clock.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Broker {
    /// Creates the broker with the built-in encodings (JSON v1, raw) and attaches it to
    /// `relay`.
    pub fn new(node_id: &str, relay: Arc<dyn Relay>, metrics: Arc<BrokerMetrics>) -> Arc<Self> {
        Self::with_encodings(node_id, relay, metrics, Encodings::default())
    }

    /// Like [`Broker::new`], with the caller's table of encodings.
    pub fn with_encodings(
        node_id: &str,
        relay: Arc<dyn Relay>,
        metrics: Arc<BrokerMetrics>,
        encodings: Encodings,
    ) -> Arc<Self> {
        Self::with_history(node_id, relay, metrics, encodings, HistoryRules::none())
    }

    /// Like [`Broker::with_encodings`], with the topics that keep history. A topic only
    /// has history when `relay` keeps one ([`Relay::history`]); the gateway refuses to
    /// start with rules and a relay without.
    pub fn with_history(
        node_id: &str,
        relay: Arc<dyn Relay>,
        metrics: Arc<BrokerMetrics>,
        encodings: Encodings,
        rules: HistoryRules,
    ) -> Arc<Self> {
        let rules = if relay.history().is_some() {
            rules
        } else {
            HistoryRules::none()
        };
        let broker = Arc::new(Self {
            node_id: node_id.into(),
            registry: Registry::with_rules(Arc::new(rules)),
            encodings,
            relay,
            metrics,
            flush: Arc::new(FlushQueue::default()),
            control: OnceLock::new(),
            me: OnceLock::new(),
            local_only: OnceLock::new(),
        });
        let _ = broker.me.set(Arc::downgrade(&broker));
        let sink: Arc<dyn RelaySink> = broker.clone();
        let weak: Weak<dyn RelaySink> = Arc::downgrade(&sink);
        broker.relay.attach(weak);
        broker
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Sets who acts on control messages from other nodes (once; later calls are
    /// ignored and return `false`). Without one they are dropped.
    pub fn set_control_handler(&self, handler: ControlHandler) -> bool {
        self.control.set(handler).is_ok()
    }

    /// Declares topics only this node publishes, with [`fan_out`](Self::fan_out): messages
    /// the relay delivers on them (another node's clients publishing there) are dropped.
    /// Once, at start; `false` if already set.
    pub fn set_local_only(&self, topics: &[String]) -> bool {
        let topics = topics.iter().map(|t| t.clone().into_boxed_str()).collect();
        self.local_only.set(topics).is_ok()
    }

    fn is_local_only(&self, topic: &str) -> bool {
        self.local_only.get().is_some_and(|l| l.iter().any(|t| &**t == topic))
    }

    /// Sends a control message to every other node through the relay.
    pub fn send_control(&self, message: &ControlMessage) -> PublishTicket {
        self.relay.send_control(message)
    }

    pub fn metrics(&self) -> &Arc<BrokerMetrics> {
        &self.metrics
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn encodings(&self) -> &Encodings {
        &self.encodings
    }

    pub fn relay_state(&self) -> RelayState {
        self.relay.state()
    }

    /// Each relay shard and its state (one, `"0"`, for an unsharded relay).
    pub fn relay_shards(&self) -> Vec<crate::relay::ShardStatus> {
        self.relay.shards()
    }

    /// The relay shard that carries `topic` (`None` unless the relay is sharded).
    pub fn relay_shard_of(&self, topic: &str) -> Option<Arc<str>> {
        self.relay.shard_of(topic)
    }

    /// Resolves once the relay listens for `topic`, so that every message another node
    /// publishes to it from then on reaches this node's subscribers (at once on a single
    /// node). Call after [`Broker::subscribe`].
    pub fn confirm_interest(&self, topic: &str) -> InterestTicket {
        self.relay.confirm_interest(topic)
    }

    /// One flusher, running until `stop` is cancelled; spawn one per runtime worker. Until
    /// one runs, every delivery wakes the subscriber's writer.
    pub fn flusher(&self, stop: tokio_util::sync::CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        self.flush.clone().run(self.metrics.clone(), stop)
    }

    /// The flusher's list (for tests).
    pub fn flush_queue(&self) -> &FlushQueue {
        &self.flush
    }

    /// Subscribes; tells the relay when the topic is new on this node.
    pub fn subscribe(&self, topic: &str, sub: Subscriber) -> SubscribeOutcome {
        let outcome = self.registry.subscribe(topic, sub);
        match outcome {
            SubscribeOutcome::FirstOnNode => {
                self.metrics.subscriptions.inc();
                self.metrics.topics.inc();
                self.relay.interest_changed(topic);
            }
            SubscribeOutcome::Added => self.metrics.subscriptions.inc(),
            SubscribeOutcome::AlreadySubscribed => {}
        }
        outcome
    }

    /// Unsubscribes; tells the relay when nobody on this node listens any more.
    pub fn unsubscribe(&self, topic: &str, conn: ConnId) -> UnsubscribeOutcome {
        let outcome = self.registry.unsubscribe(topic, conn);
        match outcome {
            UnsubscribeOutcome::LastOnNode => {
                self.metrics.subscriptions.dec();
                self.metrics.topics.dec();
                self.relay.interest_changed(topic);
            }
            UnsubscribeOutcome::Removed => self.metrics.subscriptions.dec(),
            UnsubscribeOutcome::NotSubscribed => {}
        }
        outcome
    }

    /// The relay's history (when the relay keeps one).
    pub fn relay_history(&self) -> Option<&dyn History> {
        self.relay.history()
    }

    /// The history policy of `topic`, `None` for a topic without history. Costs nothing
    /// when no topic has history; otherwise the registry's cached answer, or one match of
    /// the configured patterns for a topic without local subscribers.
    pub fn stream_policy(&self, topic: &str) -> Option<Arc<StreamPolicy>> {
        let rules = self.registry.rules();
        if rules.is_empty() {
            return None;
        }
        match self.registry.topic(topic) {
            Some(t) => t.stream().map(|s| s.policy.clone()),
            None => rules.policy(topic).cloned(),
        }
    }

    /// Publishes a message that entered this node (client or HTTP): local fan-out, then
    /// the relay. `origin` is the publishing connection, for echo suppression. A message
    /// of a history topic is appended to the topic's stream instead, and delivered here
    /// when the relay hands it back with its offset, like on every other node; its
    /// report's local fan-out is empty, and its ticket carries the position.
    pub fn publish(&self, topic: &str, payload: Payload, origin: Option<ConnId>, source: Source) -> PublishReport {
        self.metrics.published.with_label_values(&[source.as_str()]).inc();
        let rules = self.registry.rules();
        let local = if rules.is_empty() {
            // No topic has history: today's path, untouched.
            self.fan_out(topic, &payload, origin)
        } else {
            // One registry lookup serves both the policy and the fan-out.
            let t = self.registry.topic(topic);
            let policy = match &t {
                Some(t) => t.stream().map(|s| s.policy.clone()),
                None => rules.policy(topic).cloned(),
            };
            if let (Some(policy), Some(history)) = (policy, self.relay.history()) {
                let relay = history.append(topic, &payload, now_micros(), origin, &policy);
                if let PublishTicket::Done(Err(_)) = &relay {
                    self.metrics.dropped.with_label_values(&["relay_unavailable"]).inc();
                }
                return PublishReport {
                    local: FanOut::default(),
                    relay,
                };
            }
            match t {
                Some(t) => self.fan_out_topic(&t, topic, &payload, origin),
                None => FanOut::default(),
            }
        };
        let relay = self.relay.publish(topic, &payload, now_micros());
        if let PublishTicket::Done(Err(_)) = &relay {
            // Refused at once (relay down or full). Failures found later are counted by the
            // relay that finds them.
            self.metrics.dropped.with_label_values(&["relay_unavailable"]).inc();
        }
        PublishReport { local, relay }
    }

    /// Queues `payload` to every local subscriber of `topic`, encoding at most once per
    /// encoding in use.
    pub fn fan_out(&self, topic: &str, payload: &Payload, origin: Option<ConnId>) -> FanOut {
        match self.registry.topic(topic) {
            Some(t) => self.fan_out_topic(&t, topic, payload, origin),
            None => FanOut::default(),
        }
    }

    /// [`Broker::fan_out`] to a topic object already looked up.
    fn fan_out_topic(&self, t: &Topic, topic: &str, payload: &Payload, origin: Option<ConnId>) -> FanOut {
        let delivery = Delivery {
            topic,
            payload,
            stream: None,
        };
        self.fan_out_delivery(t, &delivery, origin)
    }

    /// The one fan-out loop: queues `delivery` to every subscriber of `t` but `skip` (when
    /// it does not want its own messages), encoding at most once per encoding in use; idle
    /// writers' outboxes are listed for the flusher. A subscriber that replays history
    /// (history topics only: `delivery.stream` is set) gets the frame through its gate.
    fn fan_out_delivery(&self, t: &Topic, delivery: &Delivery<'_>, skip: Option<ConnId>) -> FanOut {
        let started = Instant::now();
        let mut frames = FrameCache::default();
        let mut out = FanOut::default();
        let mut overflowed = 0u64;
        let direct = self.flush.is_running();
        let mut listed = Listed::new(&self.flush);
        let visited = t.for_each_subscriber(|s| {
            if !s.echo && skip == Some(s.conn) {
                return;
            }
            let frame: Bytes = frames.get(&self.encodings, s.encoding, delivery);
            let outcome = match (&s.gate, delivery.stream) {
                (Some(g), Some(pos)) => {
                    let (o, over) = g.offer(pos, frame, &s.outbox, started);
                    if over {
                        overflowed += 1;
                        crate::replay::overflowed(self, t.name(), &s.outbox);
                        return;
                    }
                    match o {
                        Some(o) => o,
                        None => {
                            // A late live copy of an offset its replay sent already.
                            self.metrics.history_duplicates.inc();
                            return;
                        }
                    }
                }
                _ if direct => {
                    let (outcome, list) = s.outbox.push_listed(frame, started);
                    if list {
                        listed.outboxes.push(s.outbox.clone());
                    }
                    outcome
                }
                _ => s.outbox.push(frame, started),
            };
            match outcome {
                PushOutcome::Queued => out.delivered += 1,
                PushOutcome::Dropped | PushOutcome::Disconnected => out.dropped_slow += 1,
                PushOutcome::Closed => out.dropped_closed += 1,
            }
        });
        drop(listed);
        if visited > 0 {
            let m = &self.metrics;
            m.delivered.inc_by(out.delivered as u64);
            if out.dropped_slow > 0 {
                m.dropped
                    .with_label_values(&["slow_consumer"])
                    .inc_by(out.dropped_slow as u64);
            }
            if out.dropped_closed > 0 {
                m.dropped
                    .with_label_values(&["closed"])
                    .inc_by(out.dropped_closed as u64);
            }
            if overflowed > 0 {
                m.dropped.with_label_values(&["recovery_overflow"]).inc_by(overflowed);
            }
            m.fanout_duration.observe(started.elapsed().as_secs_f64());
        }
        out
    }
}

impl Broker {
    /// Delivers one message of a history topic to local subscribers, in offset order
    /// (`sequencer.rs`): at once, held behind a gap (and a fill started), or dropped as
    /// a duplicate.
    fn deliver_sequenced(&self, t: &Arc<Topic>, msg: Sequenced) {
        let Some(stream) = t.stream() else {
            // A topic without history here (another node's configuration differs): plain
            // delivery, position shown.
            self.fan_out_stream(t, &msg);
            return;
        };
        let offered = {
            let mut seq = stream.sequence.lock().unwrap_or_else(|p| p.into_inner());
            seq.offer(msg, |m| {
                self.fan_out_stream(t, m);
            })
        };
        self.after_offer(t, offered);
    }

    fn after_offer(&self, t: &Arc<Topic>, offered: Offered) {
        if offered.duplicate {
            self.metrics.history_duplicates.inc();
        }
        if offered.lost > 0 {
            self.count_lost(t, offered.lost);
        }
        if let Some(after) = offered.fill_after {
            self.spawn_fill(t.clone(), after);
        }
    }

    fn count_lost(&self, t: &Topic, lost: u64) {
        self.metrics.history_gaps.with_label_values(&["lost"]).inc();
        self.metrics.history_lost.inc_by(lost);
        tracing::warn!(topic = %t.name(), lost, "history no longer holds messages this node missed; its subscribers did not get them");
    }

    /// Fills a history topic's gap after `after` from history, in a task (reads wait for
    /// the relay). Without a runtime (some unit tests) the gap stays until the next fill.
    fn spawn_fill(&self, t: Arc<Topic>, after: u64) {
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move { me.fill(t, after).await });
    }

    async fn fill(self: Arc<Self>, t: Arc<Topic>, mut after: u64) {
        let Some(stream) = t.stream() else { return };
        let policy = stream.policy.clone();
        let mut failures = 0u32;
        let mut filled_any = false;
        loop {
            let read = match self.relay.history() {
                Some(h) => h.read(t.name(), after, MAX_READ, &policy).outcome().await,
                None => return,
            };
            let page = match read {
                Ok(p) => p,
                Err(e) if failures < 5 => {
                    failures += 1;
                    tracing::debug!(topic = %t.name(), error = %e, "history read for a gap failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 << failures)).await;
                    continue;
                }
                Err(e) => {
                    // Counted as a loss (its size is unknown); the next relink tries again.
                    self.metrics.history_gaps.with_label_values(&["lost"]).inc();
                    tracing::warn!(topic = %t.name(), error = %e, "history read for a gap failed; giving the gap up");
                    crate::history::HistoryPage {
                        head: StreamPos {
                            offset: 0,
                            epoch: String::new(),
                        },
                        messages: Vec::new(),
                    }
                }
            };
            let more = page.messages.len() >= MAX_READ;
            let next = {
                let mut seq = stream.sequence.lock().unwrap_or_else(|p| p.into_inner());
                let mut deliver = |m: &Sequenced| {
                    self.fan_out_stream(&t, m);
                };
                let same_epoch = seq.fill_epoch() == Some(page.head.epoch.as_str());
                let mut lost = 0;
                if same_epoch {
                    for m in page.messages {
                        if seq.fill_from().is_some_and(|from| m.offset > from) {
                            filled_any = true;
                            let o = seq.offer(
                                Sequenced {
                                    pos: StreamPos {
                                        offset: m.offset,
                                        epoch: page.head.epoch.clone(),
                                    },
                                    payload: m.payload,
                                    skip_conn: None,
                                },
                                &mut deliver,
                            );
                            lost += o.lost;
                        }
                    }
                }
                let (next, gave_up) = seq.fill_step(more && same_epoch, &mut deliver);
                lost += gave_up;
                drop(seq);
                if lost > 0 {
                    self.count_lost(&t, lost);
                }
                next
            };
            match next {
                Some(a) => after = a,
                None => break,
            }
        }
        if filled_any {
            self.metrics.history_gaps.with_label_values(&["filled"]).inc();
        }
    }

    /// Whether this node's delivery of `topic` has passed `offset` in `epoch` (or moved
    /// on to another epoch).
    pub(crate) fn delivered_past(&self, topic: &str, epoch: &str, offset: u64) -> bool {
        let Some(t) = self.registry.topic(topic) else {
            return true;
        };
        let Some(s) = t.stream() else { return true };
        let seq = s.sequence.lock().unwrap_or_else(|p| p.into_inner());
        match seq.position() {
            Some(p) => p.epoch != epoch || p.offset >= offset,
            None => false,
        }
    }

    /// Tells the topic's sequence where the stream stands, if it knew nothing yet (a
    /// replay read the head), so a later gap can be filled from there.
    pub(crate) fn learn_position(&self, topic: &str, head: &StreamPos) {
        if let Some(t) = self.registry.topic(topic) {
            if let Some(s) = t.stream() {
                s.sequence.lock().unwrap_or_else(|p| p.into_inner()).learn(head);
            }
        }
    }

    /// Queues a history topic's message to every local subscriber (under the topic's
    /// sequence lock), with its position in the frame.
    fn fan_out_stream(&self, t: &Topic, msg: &Sequenced) -> FanOut {
        let delivery = Delivery {
            topic: t.name(),
            payload: &msg.payload,
            stream: Some(&msg.pos),
        };
        self.fan_out_delivery(t, &delivery, msg.skip_conn)
    }
}

impl RelaySink for Broker {
    fn deliver(&self, env: Envelope) {
        if self.is_local_only(&env.topic) {
            return; // a system topic: only this node's own messages count
        }
        if let Some(pos) = env.stream {
            // A history topic's message: delivered from here on every node, the origin too
            // (where `publish` counted it already, by its source).
            let own = *env.origin == *self.node_id;
            if !own {
                self.metrics
                    .published
                    .with_label_values(&[Source::Relay.as_str()])
                    .inc();
                self.metrics.relay_messages.with_label_values(&["in"]).inc();
                let lag = now_micros().saturating_sub(env.published_at_micros);
                self.metrics.relay_latency.observe(lag as f64 / 1e6);
            }
            let Some(t) = self.registry.topic(&env.topic) else {
                return; // nobody listens here
            };
            let msg = Sequenced {
                pos,
                payload: env.payload,
                skip_conn: if own { env.origin_conn } else { None },
            };
            self.deliver_sequenced(&t, msg);
            return;
        }
        if *env.origin == *self.node_id {
            // Our own publication came back (e.g. Redis echoes to every subscriber of a
            // channel, us included): it was delivered locally already.
            return;
        }
        self.metrics
            .published
            .with_label_values(&[Source::Relay.as_str()])
            .inc();
        self.metrics.relay_messages.with_label_values(&["in"]).inc();
        let lag = now_micros().saturating_sub(env.published_at_micros);
        self.metrics.relay_latency.observe(lag as f64 / 1e6);
        self.fan_out(&env.topic, &env.payload, None);
    }

    fn has_interest(&self, topic: &str) -> bool {
        self.registry.has_topic(topic)
    }

    fn interested_topics(&self) -> Vec<Arc<str>> {
        self.registry.topic_names()
    }

    fn control(&self, message: ControlMessage) {
        match self.control.get() {
            Some(handle) => handle(message),
            None => tracing::debug!("control message without a handler dropped"),
        }
    }

    fn relinked(&self) {
        self.relinked_topics(&|_| true);
    }

    fn relinked_topics(&self, owns: &dyn Fn(&str) -> bool) {
        for t in self.registry.stream_topics() {
            if !owns(t.name()) {
                continue;
            }
            let start = t
                .stream()
                .and_then(|s| s.sequence.lock().unwrap_or_else(|p| p.into_inner()).start_fill());
            if let Some(after) = start {
                self.spawn_fill(t, after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outbox, OutboxLimits, TakenBatch};
    use crate::registry::SubscriberMode;
    use crate::relay::{MemoryHub, MemoryRelay};
    use tokio_util::sync::CancellationToken;

    fn conn(broker: &Broker, id: ConnId, topic: &str, mode: SubscriberMode, echo: bool) -> Arc<Outbox> {
        let encoding = mode.encoding();
        let ob = Arc::new(Outbox::new(OutboxLimits::default(), CancellationToken::new()));
        broker.subscribe(
            topic,
            Subscriber {
                conn: id,
                outbox: ob.clone(),
                encoding,
                echo,
                gate: None,
            },
        );
        ob
    }

    fn take(ob: &Outbox) -> Vec<Bytes> {
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        b.frames.into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn encodes_once_and_shares_the_bytes() {
        let b = Broker::new(
            "n1",
            Arc::new(MemoryRelay::standalone("n1")),
            Arc::new(BrokerMetrics::new()),
        );
        let a = conn(&b, 1, "t", SubscriberMode::Json, true);
        let c = conn(&b, 2, "t", SubscriberMode::Json, true);
        let r = conn(&b, 3, "t", SubscriberMode::Raw, false);
        let rep = b.publish("t", Payload::text(&b"hi"[..]), Some(3), Source::Raw);
        assert_eq!(rep.local.delivered, 2, "the raw publisher opted out of echo");
        let fa = take(&a);
        let fc = take(&c);
        assert_eq!(
            fa[0].as_ptr(),
            fc[0].as_ptr(),
            "one encoding shared by both subscribers"
        );
        assert!(take(&r).is_empty());
        assert_eq!(b.metrics().delivered.get(), 2);
    }

    #[test]
    fn hub_relays_to_other_nodes_only() {
        let hub = MemoryHub::new();
        let m = Arc::new(BrokerMetrics::new());
        let b1 = Broker::new("n1", Arc::new(MemoryRelay::with_hub("n1", hub.clone())), m.clone());
        let b2 = Broker::new("n2", Arc::new(MemoryRelay::with_hub("n2", hub.clone())), m.clone());
        let s1 = conn(&b1, 1, "t", SubscriberMode::Json, true);
        let s2 = conn(&b2, 1, "t", SubscriberMode::Json, true);
        let rep = b1.publish("t", Payload::json(&b"1"[..]), None, Source::Http);
        assert!(matches!(rep.relay, PublishTicket::Done(Ok(None))));
        assert_eq!(take(&s1).len(), 1);
        assert_eq!(take(&s2).len(), 1);
        hub.set_up(false);
        let rep = b1.publish("t", Payload::json(&b"2"[..]), None, Source::Http);
        assert!(matches!(rep.relay, PublishTicket::Done(Err(_))));
        assert_eq!(take(&s1).len(), 1, "local delivery continues while the relay is down");
        assert!(take(&s2).is_empty());
    }

    #[test]
    fn local_only_topics_ignore_what_the_relay_brings() {
        let hub = MemoryHub::new();
        let m = Arc::new(BrokerMetrics::new());
        let b1 = Broker::new("n1", Arc::new(MemoryRelay::with_hub("n1", hub.clone())), m.clone());
        let b2 = Broker::new("n2", Arc::new(MemoryRelay::with_hub("n2", hub.clone())), m.clone());
        assert!(b2.set_local_only(&["sys.time".to_owned()]));
        assert!(!b2.set_local_only(&[]), "set once");
        let sys = conn(&b2, 1, "sys.time", SubscriberMode::Json, true);
        let other = conn(&b2, 2, "sys.timex", SubscriberMode::Json, true);
        b1.publish("sys.time", Payload::json(&b"\"forged\""[..]), None, Source::Http);
        b1.publish("sys.timex", Payload::json(&b"1"[..]), None, Source::Http);
        assert!(
            take(&sys).is_empty(),
            "another node's message on a local-only topic is dropped"
        );
        assert_eq!(take(&other).len(), 1, "other topics are relayed as ever");
        b2.fan_out("sys.time", &Payload::json(&b"\"own\""[..]), None);
        assert_eq!(
            take(&sys).len(),
            1,
            "the node's own fan-out still reaches its subscribers"
        );
    }
}
