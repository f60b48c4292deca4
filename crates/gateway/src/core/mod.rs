//! The one core every way in goes through: the JSON WebSocket, raw WebSocket and HTTP
//! publish paths (and later SSE) connect, subscribe, publish and leave here, and nowhere
//! else touch the broker's registry or relay.
//!
//! It is the one place where per-request rules apply: the connection limit, the
//! per-connection subscription limit, the connection's permissions (checked once per
//! subscribe or publish request, never per delivery; all-or-nothing per request) and the
//! per-connection publish rate limits (`rate.rs`, in [`Core::publish_from`]); presence
//! hooks belong here too, beside them, so that every transport gets them at once. A
//! connection's identity (user, permissions) lives in its [`Conn`] and, for the admin API
//! and `disconnect`, in the connection table. It answers with
//! tickets for what the cluster confirms later ([`Confirmation`] for subscribes,
//! `PublishTicket` for publishes), which each transport awaits in its own way: the
//! WebSocket session queues them in request order (`session/answers.rs`), the upgrade
//! waits before its 101, the HTTP API before its response.
//!
//! What it does not do: parse wire formats (the transports and `herald-protocol` do),
//! own sockets or timers (the session does), route or encode messages (the broker does).

mod confirm;
mod connections;
pub mod rate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_auth::Permissions;
use herald_broker::{
    Broker, BrokerMetrics, ConnId, EncodingId, Gate, Outbox, OutboxLimits, PublishReport, ReplayRequest, Source, Start,
    Subscriber, SubscriberMode,
};
use herald_protocol::server_msg::ErrorCode;
use herald_protocol::{Payload, StreamPos};
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;

pub use self::confirm::{ConfirmError, Confirmation, Recovered};
pub use self::connections::{ConnInfo, Connections};
use self::rate::{RateLimits, RateState, Verdict};

/// Longest wait for the relay's verdict on a publish or a subscribe. Past it the caller is
/// told the relay did not answer: the safe side of "unknown".
pub const RELAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The rules the core applies.
#[derive(Debug, Clone, Copy)]
pub struct CoreLimits {
    /// Topics one connection may hold.
    pub max_subscriptions: usize,
    /// Bounds of each connection's outbox.
    pub outbox: OutboxLimits,
    /// Publish rate limits of each connection (`rate.rs`).
    pub rate: RateLimits,
    /// Live messages held per subscription while it replays history.
    pub replay_buffer: usize,
}

/// Why the core refused a request. Each maps to one error code (and HTTP status, for the
/// refusals that can happen before an upgrade).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this node is at its connection limit ({max}); try another node or later")]
    ConnectionLimit { max: usize },
    #[error("subscribing to {new} more topic(s) would pass the limit of {max} per connection (holding {holding})")]
    TooManySubscriptions { new: usize, max: usize, holding: usize },
    #[error("publish rate limit exceeded (limits.publish_per_second / publish_bytes_per_second); the message was not published")]
    RateLimited,
    /// Still over the limit after `limits.publish_overlimit_close_ms`: the session closes
    /// the connection with 1008.
    #[error("publish rate limit exceeded for {over_ms} ms")]
    OverLimit { over_ms: u64 },
    #[error("not allowed to {action} {}", shown(topic))]
    Forbidden { action: Action, topic: String },
    /// A publish to one of the node's system topics (`[demo]` time and stats topics).
    #[error(
        "{} is reserved for the node's system messages; clients may not publish to it",
        shown(topic)
    )]
    Reserved { topic: String },
}

/// What a permission governs (the `action` label of `herald_forbidden_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of a refused topic a message repeats.
pub const ECHO_CHARS: usize = 64;

/// `topic` as an error message shows it: quoted, and cut after [`ECHO_CHARS`] characters.
pub fn shown(topic: &str) -> String {
    match topic.char_indices().nth(ECHO_CHARS) {
        None => format!("{topic:?}"),
        Some((end, _)) => format!("{:?}…", &topic[..end]),
    }
}

impl Refusal {
    /// The error code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ConnectionLimit { .. } => ErrorCode::Internal,
            Self::TooManySubscriptions { .. } => ErrorCode::TooManySubscriptions,
            Self::RateLimited | Self::OverLimit { .. } => ErrorCode::RateLimited,
            Self::Forbidden { .. } | Self::Reserved { .. } => ErrorCode::Forbidden,
        }
    }
}

/// Who a connection is: its user (the token's `sub`; `None` when anonymous), what it may do,
/// and when its token expires.
#[derive(Clone)]
pub struct ConnIdentity {
    pub user: Option<Arc<str>>,
    pub permissions: Arc<Permissions>,
    /// Milliseconds since the epoch after which the token no longer counts (its `exp`
    /// plus the configured leeway); `None` without a token or without `exp`. The session
    /// keeps it where its writer's expiry timer reads it (`SessionFlags`), not in [`Conn`]:
    /// one copy per connection.
    pub expires_ms: Option<u64>,
}

impl ConnIdentity {
    /// Anonymous, with `permissions`.
    pub fn anonymous(permissions: Arc<Permissions>) -> Self {
        Self {
            user: None,
            permissions,
            expires_ms: None,
        }
    }
}

/// What a connection asks for when it connects.
pub struct ConnectRequest {
    pub mode: SubscriberMode,
    /// Receive one's own publications.
    pub echo: bool,
    pub peer: SocketAddr,
    pub identity: ConnIdentity,
}

/// A connection registered with the core: its slot, outbox and subscriptions. It must be
/// ended with [`Core::leave`] (the session does, and `session::Prepared` on drop); it holds
/// no handle back to the core, to keep every connection small.
pub struct Conn {
    pub id: ConnId,
    pub mode: SubscriberMode,
    encoding: EncodingId,
    echo: bool,
    pub outbox: Arc<Outbox>,
    /// Subscribed topics; a short list, searched linearly (at most
    /// `limits.max_subscriptions`), sized exactly to save memory on idle connections.
    topics: Vec<Arc<str>>,
    /// Publish rate buckets, allocated at the first publish (`rate.rs`).
    rate: Option<Box<RateState>>,
    /// The user (the token's `sub`), `None` when anonymous.
    user: Option<Arc<str>>,
    /// What it may subscribe to and publish on; replaced by `auth` and `refresh`.
    permissions: Arc<Permissions>,
    left: bool,
}

impl Conn {
    fn holds(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| &**t == topic)
    }

    /// The topics held now.
    pub fn topics(&self) -> &[Arc<str>] {
        &self.topics
    }

    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    pub fn permissions(&self) -> &Arc<Permissions> {
        &self.permissions
    }

    /// True once [`Core::leave`] ended it.
    pub fn has_left(&self) -> bool {
        self.left
    }
}

/// See the module docs.
pub struct Core {
    broker: Arc<Broker>,
    metrics: Arc<BrokerMetrics>,
    limits: CoreLimits,
    connections: Arc<Connections>,
    /// `herald_rate_limited_total` for `json` and `raw`, resolved once (a label lookup
    /// per refused frame would cost a flood more than the refusal).
    rate_limited: [IntCounter; 2],
    /// Topics only the node itself publishes to (`[demo]` system topics); usually empty.
    reserved: Vec<Box<str>>,
    /// `herald_forbidden_total{action="publish"}`, resolved once: refusals of `reserved`
    /// topics cost a flood no label lookup.
    forbidden_publish: IntCounter,
}

impl Core {
    pub fn new(broker: Arc<Broker>, limits: CoreLimits, connections: Arc<Connections>) -> Arc<Self> {
        Self::with_reserved(broker, limits, connections, Vec::new())
    }

    /// Like [`Core::new`], with topics no client may publish to (the node's system topics).
    pub fn with_reserved(
        broker: Arc<Broker>,
        limits: CoreLimits,
        connections: Arc<Connections>,
        reserved: Vec<String>,
    ) -> Arc<Self> {
        let metrics = broker.metrics();
        let rate_limited =
            [SubscriberMode::Json, SubscriberMode::Raw].map(|m| metrics.rate_limited.with_label_values(&[m.as_str()]));
        let forbidden_publish = metrics.forbidden.with_label_values(&[Action::Publish.as_str()]);
        Arc::new(Self {
            rate_limited,
            metrics: broker.metrics().clone(),
            broker,
            limits,
            connections,
            reserved: reserved.into_iter().map(String::into_boxed_str).collect(),
            forbidden_publish,
        })
    }

    /// [`Refusal::Reserved`] for a node system topic (counted as a forbidden publish), for
    /// every way in: WebSocket, raw and the admin API.
    pub fn check_reserved(&self, topic: &str) -> Result<(), Refusal> {
        if self.reserved.iter().any(|r| &**r == topic) {
            self.forbidden_publish.inc();
            return Err(Refusal::Reserved {
                topic: topic.to_owned(),
            });
        }
        Ok(())
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Registers a connection: a slot, a number, an outbox (whose slow-consumer policy
    /// cancels `urgent`), an entry in the table. Refused at the connection limit.
    pub fn connect(&self, req: ConnectRequest, urgent: CancellationToken) -> Result<Conn, Refusal> {
        if !self.connections.take_slot() {
            return Err(Refusal::ConnectionLimit {
                max: self.connections.max(),
            });
        }
        let id = self.connections.next_id();
        let outbox = Arc::new(Outbox::new(self.limits.outbox, urgent));
        let mode = req.mode.as_str();
        self.metrics.connections.inc();
        self.metrics.connections_opened.with_label_values(&[mode]).inc();
        self.connections.insert(
            id,
            ConnInfo {
                outbox: outbox.clone(),
                peer: req.peer,
                mode,
                opened: Instant::now(),
                user: req.identity.user.clone(),
            },
        );
        Ok(Conn {
            id,
            mode: req.mode,
            encoding: req.mode.encoding(),
            echo: req.echo,
            outbox,
            topics: Vec::new(),
            rate: None,
            user: req.identity.user,
            permissions: req.identity.permissions,
            left: false,
        })
    }

    /// Gives `conn` a new identity (after `auth` or `refresh`; the caller moves the
    /// expiry, see [`ConnIdentity::expires_ms`]) and drops the subscriptions
    /// its new permissions no longer allow; returns the dropped topics (the caller tells
    /// the client about each).
    pub fn set_identity(&self, conn: &mut Conn, identity: ConnIdentity) -> Vec<Arc<str>> {
        if conn.user != identity.user {
            self.connections.set_user(conn.id, identity.user.clone());
        }
        conn.user = identity.user;
        conn.permissions = identity.permissions;
        let dropped: Vec<Arc<str>> = conn
            .topics
            .iter()
            .filter(|t| !conn.permissions.can_subscribe(t))
            .cloned()
            .collect();
        self.unsubscribe(conn, dropped.iter().map(|t| &**t));
        dropped
    }

    /// Counts and builds a permission refusal.
    fn forbidden(&self, action: Action, topic: &str) -> Refusal {
        self.metrics.forbidden.with_label_values(&[action.as_str()]).inc();
        Refusal::Forbidden {
            action,
            topic: topic.to_owned(),
        }
    }

    /// Whether `conn` may subscribe to every one of `topics` (for the upgrade's 403, before
    /// a connection exists); counts a refusal.
    pub fn check_subscribe<'a>(
        &self,
        permissions: &Permissions,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Refusal> {
        for t in topics {
            if !permissions.can_subscribe(t) {
                return Err(self.forbidden(Action::Subscribe, t));
            }
        }
        Ok(())
    }

    /// Subscribes `conn` to `topics` (already valid names; duplicates and topics held
    /// already are fine): all of them, or none when one is not allowed by its permissions
    /// or the subscription limit would be passed. The [`Confirmation`] resolves once the
    /// cluster delivers every one of them to this node; the local subscriptions hold from
    /// now on. A history topic with `latest_on_subscribe` gets its latest message after
    /// the confirmation is released.
    pub fn subscribe<'a>(
        &self,
        conn: &mut Conn,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<Confirmation, Refusal> {
        self.subscribe_from::<&str>(conn, topics, &[], false)
    }

    /// [`Core::subscribe`] for a JSON `subscribe` op: history topics named in `since`
    /// replay what followed the given position (held topics too: the replay starts over),
    /// and with `positions` every history topic's position is reported in the answer
    /// (which is what a client that has seen nothing yet resubscribes with later).
    pub fn subscribe_from<'a, S: AsRef<str>>(
        &self,
        conn: &mut Conn,
        topics: impl IntoIterator<Item = &'a str>,
        since: &[(S, StreamPos)],
        positions: bool,
    ) -> Result<Confirmation, Refusal> {
        // Distinct topics first (a request may repeat one thousands of times): the work
        // below is then bounded by the limit, not by the request.
        let mut topics: Vec<&str> = topics.into_iter().collect();
        topics.sort_unstable();
        topics.dedup();
        if let Some(t) = topics.iter().find(|t| !conn.permissions.can_subscribe(t)) {
            return Err(self.forbidden(Action::Subscribe, t));
        }
        let max = self.limits.max_subscriptions;
        let holding = conn.topics.len();
        // At most `holding` of them can be held already.
        let new = if topics.len() > max + holding {
            topics.len() - holding
        } else {
            topics.iter().filter(|t| !conn.holds(t)).count()
        };
        if holding + new > max {
            return Err(Refusal::TooManySubscriptions { new, max, holding });
        }
        conn.topics.reserve_exact(new);
        let mut confirmation = Confirmation::default();
        for topic in topics {
            let held = conn.holds(topic);
            let from = since.iter().find(|(t, _)| t.as_ref() == topic).map(|(_, p)| p);
            let policy = self.broker.stream_policy(topic);
            // A held history subscription that ended (`recovery_overflow`,
            // `recovery_lost`) is subscribed again, like a new one.
            let ended = held
                && policy.is_some()
                && self
                    .broker
                    .registry()
                    .gate_of(topic, conn.id)
                    .is_some_and(|g| g.has_ended());
            let start = match policy {
                None => None,
                Some(policy) => match from {
                    Some(p) => Some((Start::After(p.clone()), policy)),
                    None if policy.latest_on_subscribe && (!held || ended) => Some((Start::Latest, policy)),
                    None if positions => Some((Start::Head, policy)),
                    None if ended => Some((Start::Head, policy)),
                    None => None,
                },
            };
            let gate = start.as_ref().map(|_| Gate::new(self.limits.replay_buffer));
            if !held || gate.is_some() {
                if held {
                    // A replay of a held topic starts over: the running one (if any) stops.
                    if let Some(old) = self.broker.registry().gate_of(topic, conn.id) {
                        old.supersede();
                    }
                }
                let sub = Subscriber {
                    conn: conn.id,
                    outbox: conn.outbox.clone(),
                    encoding: conn.encoding,
                    echo: conn.echo,
                    gate: gate.clone(),
                };
                self.broker.subscribe(topic, sub);
                if !held {
                    conn.topics.push(Arc::from(topic));
                }
            }
            // Held already or not, the caller's promise is the same: confirmed when the
            // relay listens (at once for a topic it already listens to).
            let interest = self.broker.confirm_interest(topic);
            match (start, gate) {
                (Some((start, policy)), Some(gate)) => {
                    let topic: Arc<str> = Arc::from(topic);
                    let handle = self.broker.recover(
                        ReplayRequest {
                            topic: topic.clone(),
                            conn: conn.id,
                            outbox: conn.outbox.clone(),
                            encoding: conn.encoding,
                            gate,
                            start,
                            policy,
                        },
                        interest,
                    );
                    confirmation.add_replay(topic, handle);
                }
                _ => confirmation.add(topic, interest),
            }
        }
        Ok(confirmation)
    }

    /// Unsubscribes `conn` from `topics` (those it holds; the rest are ignored).
    pub fn unsubscribe<'a>(&self, conn: &mut Conn, topics: impl IntoIterator<Item = &'a str>) {
        for topic in topics {
            if let Some(i) = conn.topics.iter().position(|t| &**t == topic) {
                conn.topics.swap_remove(i);
                self.broker.unsubscribe(topic, conn.id);
            }
        }
    }

    /// Unsubscribes `conn` from every topic it holds (it stays connected).
    pub fn unsubscribe_all(&self, conn: &mut Conn) {
        for t in std::mem::take(&mut conn.topics) {
            self.broker.unsubscribe(&t, conn.id);
        }
    }

    /// Publishes for a backend over HTTP: governed by the admin API's keys, not by
    /// connection permissions.
    pub fn publish_http(&self, topic: &str, payload: Payload) -> PublishReport {
        self.broker.publish(topic, payload, None, Source::Http)
    }

    /// Closes every local connection of `user` with `code` and `reason` (after what is
    /// queued for them); returns how many. Counted as `kicked`.
    pub fn disconnect_user(&self, user: &str, code: u16, reason: &str) -> usize {
        let mut closed = 0;
        self.connections.for_each(|_, info| {
            if info.user.as_deref() == Some(user) && !info.outbox.is_closing() {
                info.outbox.close_as(code, reason.to_owned(), false, "kicked");
                closed += 1;
            }
        });
        closed
    }

    /// Publishes from connection `conn` (JSON or raw, as `source` says) if its permissions
    /// allow the topic ([`Refusal::Forbidden`], counted, otherwise) and within its rate
    /// limits (`rate.rs`): over them the message is not published and the refusal is
    /// counted in `herald_rate_limited_total` by mode; [`Refusal::OverLimit`] means the
    /// connection has been over them for `limits.publish_overlimit_close_ms` and must be
    /// closed. A forbidden publish does not spend the rate buckets.
    pub fn publish_from(
        &self,
        conn: &mut Conn,
        source: Source,
        topic: &str,
        payload: Payload,
    ) -> Result<PublishReport, Refusal> {
        self.check_reserved(topic)?;
        if !conn.permissions.can_publish(topic) {
            return Err(self.forbidden(Action::Publish, topic));
        }
        match self.limits.rate.check(&mut conn.rate, payload.len()) {
            Verdict::Admitted => Ok(self.broker.publish(topic, payload, Some(conn.id), source)),
            verdict => {
                self.rate_limited[usize::from(conn.mode == SubscriberMode::Raw)].inc();
                Err(match verdict {
                    Verdict::Close { over_ms } => Refusal::OverLimit { over_ms },
                    _ => Refusal::RateLimited,
                })
            }
        }
    }

    /// Ends `conn`: every subscription removed, the slot freed, the end counted under
    /// `label`. Idempotent.
    pub fn leave(&self, conn: &mut Conn, label: &'static str) {
        if conn.left {
            return;
        }
        conn.left = true;
        self.unsubscribe_all(conn);
        self.metrics.connections.dec();
        self.metrics.connections_closed.with_label_values(&[label]).inc();
        self.connections.remove(conn.id);
        self.connections.release_slot();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_broker::MemoryRelay;

    fn core(max_subscriptions: usize, max_connections: usize) -> Arc<Core> {
        let broker = Broker::new(
            "n",
            Arc::new(MemoryRelay::standalone("n")),
            Arc::new(BrokerMetrics::new()),
        );
        let limits = CoreLimits {
            max_subscriptions,
            outbox: OutboxLimits::default(),
            rate: RateLimits::default(),
            replay_buffer: 100,
        };
        Core::new(broker, limits, Arc::new(Connections::new(max_connections)))
    }

    fn request() -> ConnectRequest {
        ConnectRequest {
            mode: SubscriberMode::Json,
            echo: true,
            peer: "127.0.0.1:1".parse().unwrap(),
            identity: ConnIdentity::anonymous(Permissions::allow_all()),
        }
    }

    fn only(subscribe: &[&str], publish: &[&str]) -> Arc<Permissions> {
        use herald_auth::PatternSet;
        Arc::new(Permissions::new(
            Arc::new(PatternSet::compile(subscribe, None).unwrap()),
            Arc::new(PatternSet::compile(publish, None).unwrap()),
        ))
    }

    #[test]
    fn permissions_are_all_or_nothing_and_follow_a_new_identity() {
        let core = core(10, 10);
        let mut req = request();
        req.identity = ConnIdentity::anonymous(only(&["chat.*", "news"], &["chat.room1"]));
        let mut c = core.connect(req, CancellationToken::new()).unwrap();
        let refused = core.subscribe(&mut c, ["chat.a", "secret", "news"]).unwrap_err();
        assert_eq!(
            refused,
            Refusal::Forbidden {
                action: Action::Subscribe,
                topic: "secret".into()
            }
        );
        assert_eq!(refused.code(), ErrorCode::Forbidden);
        assert!(c.topics().is_empty(), "nothing subscribed");
        core.subscribe(&mut c, ["chat.a", "news"]).unwrap();
        let p = core.publish_from(
            &mut c,
            Source::Websocket,
            "chat.other",
            Payload::text(bytes::Bytes::from_static(b"x")),
        );
        assert!(matches!(
            p,
            Err(Refusal::Forbidden {
                action: Action::Publish,
                ..
            })
        ));
        core.publish_http("chat.other", Payload::text(bytes::Bytes::from_static(b"x")));
        assert_eq!(core.metrics.forbidden.with_label_values(&["subscribe"]).get(), 1);
        assert_eq!(core.metrics.forbidden.with_label_values(&["publish"]).get(), 1);
        // Narrower permissions drop what they no longer allow.
        let dropped = core.set_identity(
            &mut c,
            ConnIdentity {
                user: Some("u".into()),
                permissions: only(&["news"], &[]),
                expires_ms: Some(1),
            },
        );
        assert_eq!(dropped, vec![Arc::<str>::from("chat.a")]);
        assert_eq!(c.topics(), &[Arc::<str>::from("news")]);
        assert!(!core.broker().registry().has_topic("chat.a"));
        assert_eq!(
            core.connections().with(c.id, |i| i.user.clone()).flatten().as_deref(),
            Some("u")
        );
        assert_eq!(core.disconnect_user("u", 4001, "bye"), 1);
        assert!(c.outbox.is_closing());
        assert_eq!(core.disconnect_user("u", 4001, "bye"), 0, "closing already");
    }

    #[test]
    fn the_subscription_limit_is_all_or_nothing() {
        let core = core(3, 10);
        let mut c = core.connect(request(), CancellationToken::new()).unwrap();
        assert!(core.subscribe(&mut c, ["a", "b", "a"]).is_ok());
        assert_eq!(c.topics().len(), 2);
        let refused = core.subscribe(&mut c, ["c", "d", "a", "d"]).unwrap_err();
        assert_eq!(
            refused,
            Refusal::TooManySubscriptions {
                new: 2,
                max: 3,
                holding: 2
            }
        );
        assert_eq!(c.topics().len(), 2, "nothing subscribed");
        assert!(!core.broker().registry().has_topic("c"));
        assert!(core.subscribe(&mut c, ["c", "b"]).is_ok());
        // Thousands of copies of held and new topics: one distinct new topic passes.
        let many: Vec<&str> = std::iter::repeat_n(["a", "b", "c"], 5000).flatten().collect();
        assert!(core.subscribe(&mut c, many).is_ok());
        let over: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        assert!(matches!(
            core.subscribe(&mut c, over.iter().map(String::as_str)),
            Err(Refusal::TooManySubscriptions { new: 9_997, .. })
        ));
        core.unsubscribe(&mut c, ["a", "zzz"]);
        assert_eq!(c.topics().len(), 2);
    }

    #[test]
    fn slots_are_freed_by_leave() {
        let core = core(3, 2);
        let mut a = core.connect(request(), CancellationToken::new()).unwrap();
        let mut b = core.connect(request(), CancellationToken::new()).unwrap();
        assert!(matches!(
            core.connect(request(), CancellationToken::new()),
            Err(Refusal::ConnectionLimit { max: 2 })
        ));
        core.subscribe(&mut a, ["t"]).unwrap();
        core.leave(&mut a, "client_close");
        core.leave(&mut a, "client_close");
        assert!(!core.broker().registry().has_topic("t"));
        core.leave(&mut b, "client_close");
        assert_eq!(core.connections().len(), 0);
        assert!(core.connect(request(), CancellationToken::new()).is_ok());
    }
}
