//! How a message reaches the other nodes: the [`Relay`] trait, the [`RelaySink`] a relay
//! delivers into, and the in-process relay.
//!
//! A relay is told four things by its broker: publish this (and say whether it reached
//! the other nodes), the local interest in a topic may have changed (the relay compares
//! with [`RelaySink::has_interest`] when it gets round to it, so hints can be batched and
//! reordered freely), confirm that it listens to a topic (a [`Ticket`] that resolves once
//! every message another node publishes from then on will reach this node: what makes a
//! subscribe acknowledgement a cluster-wide promise), and, through [`RelaySink::deliver`],
//! it hands in what other nodes published. Inbound messages from the node itself must
//! never be delivered.
//!
//! Besides publications a relay carries control messages ([`ControlMessage`]: close a
//! user's connections on every node): [`Relay::send_control`] out, [`RelaySink::control`]
//! in, on a channel of their own that no topic can name. Like a publication, a node never
//! receives its own.
//!
//! [`MemoryRelay`] without a hub is the single-node default: nothing to relay, always up.
//! With a [`MemoryHub`] many brokers in one process form a cluster, for fast tests; the
//! hub can be switched off to simulate a relay outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use herald_protocol::{ControlMessage, Envelope, Payload, StreamPos};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::history::{History, ReadTicket, StreamPolicy};
use crate::memory_history::MemoryStreams;
use crate::registry::ConnId;

/// Where a relay stands, for `/readyz` and the `relay_up` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Single node: there is no other node to reach; publishing locally is complete.
    Standalone,
    Up,
    /// A sharded relay with some shards up and some down: the topics of the shards that
    /// are down get `Unavailable`, the others are relayed as usual.
    Degraded,
    Down,
}

/// One shard of a relay (one Redis, or one Redis Cluster master) and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    /// A stable, credential-free name: `"0"` for an unsharded relay, the shard's
    /// `host:port` otherwise.
    pub name: Arc<str>,
    pub state: RelayState,
}

impl RelayState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Up => "up",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

/// Why a publication did not reach the other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RelayError {
    #[error("relay unavailable: {0}")]
    Unavailable(String),
    #[error("relay queue is full")]
    Overloaded,
    #[error("relay is shutting down")]
    ShuttingDown,
}

/// A relay's answer to come: to [`Relay::publish`] (the other nodes got it), to
/// [`Relay::confirm_interest`] (the relay listens for the topic) or to a history read.
/// Known at once, or when the backend confirms.
pub enum Ticket<T = ()> {
    Done(Result<T, RelayError>),
    Pending(oneshot::Receiver<Result<T, RelayError>>),
}

/// The answer to [`Relay::publish`] and [`History::append`]: `Some(position)` for a message
/// appended to its topic's stream, `None` for a topic without history.
pub type PublishTicket = Ticket<Option<StreamPos>>;
/// The answer to [`Relay::confirm_interest`].
pub type InterestTicket = Ticket;

impl Ticket {
    pub fn ok() -> Self {
        Self::Done(Ok(()))
    }
}

impl PublishTicket {
    /// Published, no stream position (a topic without history).
    pub fn published() -> Self {
        Self::Done(Ok(None))
    }
}

impl<T: Clone> Ticket<T> {
    /// A ticket and the sender that resolves it.
    pub fn pending() -> (oneshot::Sender<Result<T, RelayError>>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self::Pending(rx))
    }

    /// Waits for the outcome. A relay that dropped the request without answering counts as
    /// unavailable, never as success.
    pub async fn outcome(self) -> Result<T, RelayError> {
        match self {
            Self::Done(r) => r,
            Self::Pending(rx) => rx.await.unwrap_or(Err(RelayError::ShuttingDown)),
        }
    }

    /// The outcome if it is known already (a pending ticket that has resolved counts),
    /// without waiting; `None` while pending.
    pub fn try_outcome(&mut self) -> Option<Result<T, RelayError>> {
        match self {
            Self::Done(r) => Some(r.clone()),
            Self::Pending(rx) => match rx.try_recv() {
                Ok(r) => {
                    *self = Self::Done(r.clone());
                    Some(r)
                }
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => {
                    *self = Self::Done(Err(RelayError::ShuttingDown));
                    Some(Err(RelayError::ShuttingDown))
                }
            },
        }
    }

    /// Waits for the outcome without consuming the ticket (cancel-safe: dropping the
    /// future loses nothing, the ticket can be awaited again).
    pub async fn wait(&mut self) -> Result<T, RelayError> {
        if let Self::Pending(rx) = self {
            let r = rx.await.unwrap_or(Err(RelayError::ShuttingDown));
            *self = Self::Done(r);
        }
        match self {
            Self::Done(r) => r.clone(),
            Self::Pending(_) => unreachable!("resolved above"),
        }
    }
}

/// What a relay delivers into: implemented by the broker.
pub trait RelaySink: Send + Sync {
    /// A message another node published. Must not block.
    fn deliver(&self, envelope: Envelope);
    /// Whether anyone on this node listens to `topic` now.
    fn has_interest(&self, topic: &str) -> bool;
    /// Every topic with local listeners (after a reconnect, to resubscribe).
    fn interested_topics(&self) -> Vec<Arc<str>>;
    /// A control message another node sent (validated already). Must not block.
    fn control(&self, message: ControlMessage);
    /// The relay listens again after its subscription to the backend broke (Redis
    /// restarted, hung, or the network between them was cut) and every topic is
    /// resubscribed: what other nodes published meanwhile did not arrive. The broker reads
    /// each history topic's stream from the last offset it delivered and delivers what
    /// it missed. Must not block.
    fn relinked(&self) {}
    /// [`relinked`](Self::relinked) for the topics `owns` accepts only: one shard of a
    /// sharded relay came back, and only its topics missed anything. The default fills
    /// every topic.
    fn relinked_topics(&self, owns: &dyn Fn(&str) -> bool) {
        let _ = owns;
        self.relinked();
    }
}

/// See the module docs.
pub trait Relay: Send + Sync {
    /// Connects the relay to its broker; called once, before any other method.
    fn attach(&self, sink: Weak<dyn RelaySink>);
    /// Sends a local publication to the other nodes. Must not block.
    fn publish(&self, topic: &str, payload: &Payload, published_at_micros: u64) -> PublishTicket;
    /// The local interest in `topic` may have changed.
    fn interest_changed(&self, topic: &str);
    /// Resolves `Ok` once the relay listens for `topic` (at once when it already does), so
    /// every message another node publishes to `topic` after that reaches
    /// [`RelaySink::deliver`]. Called after the local interest was registered (the
    /// broker's subscribe did that, and called `interest_changed` when the topic was new).
    /// `Err` when the relay cannot listen now (down, shutting down); the local
    /// subscription holds regardless and is extended to the cluster when the relay
    /// recovers. Must not block.
    fn confirm_interest(&self, topic: &str) -> InterestTicket;
    fn state(&self) -> RelayState;
    /// Each shard's state (for `/readyz`, `/api/node` and per-shard metrics). A relay
    /// that is not sharded is one shard, named `"0"`, in [`state`](Self::state).
    fn shards(&self) -> Vec<ShardStatus> {
        vec![ShardStatus {
            name: Arc::from("0"),
            state: self.state(),
        }]
    }
    /// The name of the shard that carries `topic` (a sharded relay); `None` for a relay
    /// that is not sharded.
    fn shard_of(&self, topic: &str) -> Option<Arc<str>> {
        let _ = topic;
        None
    }
    /// Sends a control message to every other node (not to this one). `Ok` once the
    /// backend has it: every node listening then gets it. Must not block. The default is
    /// the single node's: there is nobody to tell.
    fn send_control(&self, message: &ControlMessage) -> PublishTicket {
        let _ = message;
        PublishTicket::published()
    }
    /// The relay's topic history, when it keeps one. Without it no topic has history
    /// whatever the configuration says (the gateway refuses to start that way).
    fn history(&self) -> Option<&dyn History> {
        None
    }
}

/// A hub member: its node id and where to deliver.
type Member = (Arc<str>, Weak<dyn RelaySink>);

/// Joins the brokers of one process into a cluster (tests, embedded use).
pub struct MemoryHub {
    members: Mutex<Vec<Member>>,
    up: AtomicBool,
    /// The members' shared topic history (one offset sequence per topic for the hub).
    streams: Arc<MemoryStreams>,
}

impl MemoryHub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            members: Mutex::new(Vec::new()),
            up: AtomicBool::new(true),
            streams: Arc::new(MemoryStreams::new()),
        })
    }

    /// Simulates the relay backend going down (`false`) or coming back (`true`).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

/// The in-process relay. See the module docs.
pub struct MemoryRelay {
    node_id: Arc<str>,
    hub: Option<Arc<MemoryHub>>,
    sink: OnceLock<Weak<dyn RelaySink>>,
    /// This node's topic history (standalone) or the hub's.
    streams: Arc<MemoryStreams>,
}

impl MemoryRelay {
    /// The single-node relay: nothing leaves the process.
    pub fn standalone(node_id: &str) -> Self {
        Self {
            node_id: node_id.into(),
            hub: None,
            sink: OnceLock::new(),
            streams: Arc::new(MemoryStreams::new()),
        }
    }

    /// A member of `hub`.
    pub fn with_hub(node_id: &str, hub: Arc<MemoryHub>) -> Self {
        Self {
            node_id: node_id.into(),
            streams: hub.streams.clone(),
            hub: Some(hub),
            sink: OnceLock::new(),
        }
    }

    /// The in-memory topic history (for its metrics and the TTL sweep).
    pub fn streams(&self) -> &Arc<MemoryStreams> {
        &self.streams
    }
}

impl MemoryRelay {
    /// The other live members of `hub` (the lock is released before anyone is called).
    fn peers(&self, hub: &MemoryHub) -> Vec<Arc<dyn RelaySink>> {
        let mut members = hub.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|(_, w)| w.strong_count() > 0);
        members
            .iter()
            .filter(|(id, _)| *id != self.node_id)
            .filter_map(|(_, w)| w.upgrade())
            .collect()
    }
}

impl Relay for MemoryRelay {
    fn attach(&self, sink: Weak<dyn RelaySink>) {
        if let Some(hub) = &self.hub {
            hub.members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((self.node_id.clone(), sink.clone()));
        }
        let _ = self.sink.set(sink);
    }

    fn publish(&self, topic: &str, payload: &Payload, published_at_micros: u64) -> PublishTicket {
        let Some(hub) = &self.hub else {
            return PublishTicket::published();
        };
        if !hub.is_up() {
            return PublishTicket::Done(Err(RelayError::Unavailable("in-process hub is down".into())));
        }
        for peer in self.peers(hub) {
            peer.deliver(Envelope {
                origin: self.node_id.to_string(),
                published_at_micros,
                topic: topic.to_owned(),
                payload: payload.clone(),
                stream: None,
                origin_conn: None,
            });
        }
        PublishTicket::published()
    }

    fn interest_changed(&self, _topic: &str) {}

    fn send_control(&self, message: &ControlMessage) -> PublishTicket {
        let Some(hub) = &self.hub else {
            return PublishTicket::published();
        };
        if !hub.is_up() {
            return PublishTicket::Done(Err(RelayError::Unavailable("in-process hub is down".into())));
        }
        for peer in self.peers(hub) {
            peer.control(message.clone());
        }
        PublishTicket::published()
    }

    fn history(&self) -> Option<&dyn History> {
        Some(self)
    }

    fn confirm_interest(&self, _topic: &str) -> InterestTicket {
        // Delivery between hub members is synchronous: a registered subscriber is reached
        // by the next publish of any member. A hub that is down is the relay being down.
        match &self.hub {
            Some(h) if !h.is_up() => Ticket::Done(Err(RelayError::Unavailable("in-process hub is down".into()))),
            _ => Ticket::ok(),
        }
    }

    fn state(&self) -> RelayState {
        match &self.hub {
            None => RelayState::Standalone,
            Some(h) if h.is_up() => RelayState::Up,
            Some(_) => RelayState::Down,
        }
    }
}

/// The in-process history: appends under the topic stream's lock and delivers to every
/// member (this one first) before letting go, so offsets and delivery order agree on every
/// member. A hub that is down refuses appends, like publishes; reads are local and always
/// work.
impl History for MemoryRelay {
    fn append(
        &self,
        topic: &str,
        payload: &Payload,
        published_at_micros: u64,
        origin_conn: Option<ConnId>,
        policy: &StreamPolicy,
    ) -> PublishTicket {
        let mut sinks: Vec<Arc<dyn RelaySink>> = Vec::new();
        if let Some(me) = self.sink.get().and_then(Weak::upgrade) {
            sinks.push(me);
        }
        if let Some(hub) = &self.hub {
            if !hub.is_up() {
                return PublishTicket::Done(Err(RelayError::Unavailable("in-process hub is down".into())));
            }
            sinks.extend(self.peers(hub));
        }
        let pos = self.streams.append(topic, payload, published_at_micros, policy, |pos| {
            for sink in &sinks {
                sink.deliver(Envelope {
                    origin: self.node_id.to_string(),
                    published_at_micros,
                    topic: topic.to_owned(),
                    payload: payload.clone(),
                    stream: Some(pos.clone()),
                    origin_conn,
                });
            }
        });
        PublishTicket::Done(Ok(Some(pos)))
    }

    fn read(&self, topic: &str, after: u64, limit: usize, policy: &StreamPolicy) -> ReadTicket {
        Ticket::Done(Ok(self.streams.read(topic, after, limit, policy)))
    }

    fn latest(&self, topic: &str, policy: &StreamPolicy) -> ReadTicket {
        Ticket::Done(Ok(self.streams.latest(topic, policy)))
    }
}
