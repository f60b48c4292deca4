//! [`RedisRelay`]: the handle the broker holds.
//!
//! This file owns the non-blocking side of the relay, the part the broker calls on its hot
//! path: `publish` encodes the envelope and queues it (or fails at once), `interest_changed`
//! marks a topic dirty, `confirm_interest` answers from the confirmed set or leaves a
//! waiter, `state` reads an atomic. It also starts and stops the tasks. The state they
//! share lives in `shared`; the tasks themselves in `supervisor` (pub/sub connection,
//! subscriptions), `publish_link` (publish connection), `publisher` (PUBLISH pipelines) and
//! `inbound` (pub/sub reader, delivery workers). Only this file imports the tasks.

use std::sync::{Arc, Weak};

use herald_broker::history::{History, ReadTicket, StreamPolicy};
use herald_broker::{
    BrokerMetrics, ConnId, InterestTicket, PublishTicket, Relay, RelayError, RelaySink, RelayState, Ticket,
};
use herald_protocol::{envelope, ControlMessage, Payload};
use redis::io::tcp::TcpSettings;
use redis::IntoConnectionInfo;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{RedisRelayConfig, RelayStartError};
use crate::history::{Queued, ReadMode, ReadRequest};
use crate::shared::{Command, Outgoing, Shared};
use crate::{history, inbound, publish_link, publisher, supervisor};

/// The relay over Redis pub/sub; see the crate docs. Dropping it stops its tasks.
pub struct RedisRelay {
    shared: Arc<Shared>,
    publish_tx: mpsc::Sender<Outgoing>,
    /// Every task of this relay, so `shutdown` can wait for all of them.
    tracker: TaskTracker,
    /// Where history reads run (the runtime the relay was started on: the broker may ask
    /// from any thread).
    runtime: tokio::runtime::Handle,
}

impl RedisRelay {
    /// Validates `config` and spawns the relay's tasks on the current Tokio runtime. Redis
    /// does not need to be reachable: the relay starts [`RelayState::Down`] and connects
    /// in the background. The tasks stop when `cancel` (or a parent) is cancelled, on
    /// [`shutdown`](Self::shutdown), or when the returned handle is dropped.
    ///
    /// # Panics
    /// When called outside a Tokio runtime (the tasks are spawned on the current one).
    pub fn start(
        config: RedisRelayConfig,
        metrics: Arc<BrokerMetrics>,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, RelayStartError> {
        config.validate()?;
        if config.sharded_pubsub && config.cluster.is_none() {
            // Its control channel, canary and evictions need the cluster layer.
            return Err(RelayStartError::Config(vec![
                "sharded pub/sub runs only as a member of a ClusterRelay".into(),
            ]));
        }
        // TCP_NODELAY: PUBLISH pipelines are small and latency-bound.
        let info = config.url.as_str().into_connection_info()?;
        let info = info.set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let (publish_tx, publish_rx) = mpsc::channel(config.publish_queue_capacity);
        // One stream at a time: the supervisor hands over the next only after a reconnect.
        let (feeds_tx, feeds_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared::new(config, client, metrics, cancel.child_token(), feeds_tx));
        let tracker = TaskTracker::new();
        let workers = inbound::spawn_workers(&shared, &tracker);
        tracker.spawn(inbound::read_feeds(shared.clone(), feeds_rx, workers));
        tracker.spawn(publisher::run(shared.clone(), publish_rx));
        tracker.spawn(publish_link::run(shared.clone()));
        tracker.spawn(supervisor::run(shared.clone()));
        tracker.close();
        Ok(Arc::new(Self {
            shared,
            publish_tx,
            tracker,
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    /// Stops every task: the connections close (Redis drops our subscriptions with them)
    /// and queued publications fail with [`RelayError::ShuttingDown`]. A PUBLISH pipeline
    /// already sent gets its real answer (bounded by `command_timeout`). Idempotent.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.tracker.wait().await;
    }

    /// Waits until every task has stopped (after a cancellation from anywhere).
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// Whether the publish connection is up: `publish` is refused at once while it is not.
    /// The relay is [`RelayState::Up`] only while both connections are.
    pub fn publish_link_up(&self) -> bool {
        self.shared.is_publish_up()
    }

    /// Whether the pub/sub connection is up and resubscribed: `confirm_interest` is
    /// refused at once while it is not.
    pub fn pubsub_link_up(&self) -> bool {
        self.shared.is_pubsub_up()
    }

    /// The node id this relay writes into envelopes.
    pub fn node_id(&self) -> &str {
        &self.shared.config.node_id
    }

    /// The settings the relay runs with.
    pub fn config(&self) -> &RedisRelayConfig {
        &self.shared.config
    }

    /// An immediate refusal; the broker counts it (`dropped{reason="relay_unavailable"}`)
    /// as it counts every `PublishTicket::Done(Err)`.
    fn refuse(&self, err: RelayError) -> PublishTicket {
        PublishTicket::Done(Err(err))
    }

    /// Queues `command` for the publisher, or refuses at once (shutting down, publish
    /// connection down, queue full).
    fn enqueue(&self, command: impl FnOnce() -> Command) -> PublishTicket {
        if self.shared.cancel.is_cancelled() {
            return self.refuse(RelayError::ShuttingDown);
        }
        if !self.shared.is_publish_up() {
            return self.refuse(RelayError::Unavailable("redis relay publish connection is down".into()));
        }
        let (done, rx) = oneshot::channel();
        let item = Outgoing {
            command: command(),
            done,
        };
        match self.publish_tx.try_send(item) {
            Ok(()) => PublishTicket::Pending(rx),
            Err(mpsc::error::TrySendError::Full(_)) => self.refuse(RelayError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => self.refuse(RelayError::ShuttingDown),
        }
    }

    /// Starts a history read (see `history`): refused at once while the publish
    /// connection is down or too many reads wait.
    fn start_read(&self, topic: &str, mode: ReadMode, policy: &StreamPolicy) -> ReadTicket {
        if self.shared.cancel.is_cancelled() {
            return Ticket::Done(Err(RelayError::ShuttingDown));
        }
        if !self.shared.is_publish_up() {
            return Ticket::Done(Err(RelayError::Unavailable(
                "redis relay publish connection is down".into(),
            )));
        }
        let Some(queued) = Queued::enter(&self.shared) else {
            return Ticket::Done(Err(RelayError::Overloaded));
        };
        let req = ReadRequest::new(&self.shared, topic, mode, policy);
        let (done, ticket) = Ticket::pending();
        self.tracker.spawn_on(history::read(queued, req, done), &self.runtime);
        ticket
    }
}

impl Drop for RedisRelay {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl Relay for RedisRelay {
    fn attach(&self, sink: Weak<dyn RelaySink>) {
        if !self.shared.set_sink(sink) {
            tracing::warn!("redis relay attached twice; keeping the first sink");
            return;
        }
        // Set first, then mark: the supervisor may look at the marks at once, and must
        // find the sink to ask. (A broker normally has no topics yet at this point.)
        if let Some(s) = self.shared.sink() {
            for topic in s.interested_topics() {
                self.shared.interest.mark(&topic);
            }
        }
    }

    fn publish(&self, topic: &str, payload: &Payload, published_at_micros: u64) -> PublishTicket {
        self.enqueue(|| {
            let cfg = &self.shared.config;
            Command::Publish {
                channel: cfg.channel(topic),
                envelope: envelope::encode(&cfg.node_id, published_at_micros, topic, payload),
            }
        })
    }

    fn interest_changed(&self, topic: &str) {
        self.shared.interest.mark(topic);
    }

    /// On the control channel, through the same PUBLISH pipeline as publications.
    fn send_control(&self, message: &ControlMessage) -> PublishTicket {
        self.enqueue(|| {
            let cfg = &self.shared.config;
            Command::Publish {
                channel: cfg.control_channel(),
                envelope: herald_protocol::encode_control(&cfg.node_id, message),
            }
        })
    }

    fn history(&self) -> Option<&dyn History> {
        Some(self)
    }

    /// See `subscriptions` ("The confirmation race") and `supervisor` (the batch window).
    fn confirm_interest(&self, topic: &str) -> InterestTicket {
        if self.shared.cancel.is_cancelled() {
            return Ticket::Done(Err(RelayError::Unavailable("redis relay is shutting down".into())));
        }
        self.shared.interest.confirm(topic)
    }

    fn state(&self) -> RelayState {
        if self.shared.is_up() {
            RelayState::Up
        } else {
            RelayState::Down
        }
    }
}

/// Topic history in Redis: see `history` and `scripts`, and `docs/cluster.md` for the keys.
impl History for RedisRelay {
    /// Through the publish queue and pipelines, in order with publications: one run of the
    /// append script, which allocates the offset, stores the message and publishes it to
    /// every node (this one included).
    fn append(
        &self,
        topic: &str,
        payload: &Payload,
        published_at_micros: u64,
        origin_conn: Option<ConnId>,
        policy: &StreamPolicy,
    ) -> PublishTicket {
        let append =
            match history::append_command(&self.shared, topic, payload, published_at_micros, origin_conn, policy) {
                Ok(a) => a,
                // The broker validated the topic; only an oversized one could get here.
                Err(e) => return self.refuse(RelayError::Unavailable(format!("cannot encode the envelope: {e}"))),
            };
        self.enqueue(|| Command::Append(Box::new(append)))
    }

    fn read(&self, topic: &str, after: u64, limit: usize, policy: &StreamPolicy) -> ReadTicket {
        self.start_read(topic, ReadMode::After { after, limit }, policy)
    }

    fn latest(&self, topic: &str, policy: &StreamPolicy) -> ReadTicket {
        self.start_read(topic, ReadMode::Latest, policy)
    }
}
