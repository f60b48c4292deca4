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

use herald_broker::{BrokerMetrics, InterestTicket, PublishTicket, Relay, RelayError, RelaySink, RelayState, Ticket};
use herald_protocol::{envelope, ControlMessage, Payload};
use redis::io::tcp::TcpSettings;
use redis::IntoConnectionInfo;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{RedisRelayConfig, RelayStartError};
use crate::shared::{Outgoing, Shared};
use crate::{inbound, publish_link, publisher, supervisor};

/// The relay over Redis pub/sub; see the crate docs. Dropping it stops its tasks.
pub struct RedisRelay {
    shared: Arc<Shared>,
    publish_tx: mpsc::Sender<Outgoing>,
    /// Every task of this relay, so `shutdown` can wait for all of them.
    tracker: TaskTracker,
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
        if self.shared.cancel.is_cancelled() {
            return self.refuse(RelayError::ShuttingDown);
        }
        if !self.shared.is_publish_up() {
            return self.refuse(RelayError::Unavailable("redis relay publish connection is down".into()));
        }
        let cfg = &self.shared.config;
        let envelope = envelope::encode(&cfg.node_id, published_at_micros, topic, payload);
        let (done, rx) = oneshot::channel();
        let item = Outgoing {
            channel: cfg.channel(topic),
            envelope,
            done,
        };
        match self.publish_tx.try_send(item) {
            Ok(()) => PublishTicket::Pending(rx),
            Err(mpsc::error::TrySendError::Full(_)) => self.refuse(RelayError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => self.refuse(RelayError::ShuttingDown),
        }
    }

    fn interest_changed(&self, topic: &str) {
        self.shared.interest.mark(topic);
    }

    /// On the control channel, through the same PUBLISH pipeline as publications.
    fn send_control(&self, message: &ControlMessage) -> PublishTicket {
        if self.shared.cancel.is_cancelled() {
            return self.refuse(RelayError::ShuttingDown);
        }
        if !self.shared.is_publish_up() {
            return self.refuse(RelayError::Unavailable("redis relay publish connection is down".into()));
        }
        let cfg = &self.shared.config;
        let (done, rx) = oneshot::channel();
        let item = Outgoing {
            channel: cfg.control_channel(),
            envelope: herald_protocol::encode_control(&cfg.node_id, message),
            done,
        };
        match self.publish_tx.try_send(item) {
            Ok(()) => PublishTicket::Pending(rx),
            Err(mpsc::error::TrySendError::Full(_)) => self.refuse(RelayError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => self.refuse(RelayError::ShuttingDown),
        }
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
