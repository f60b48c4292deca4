//! [`RedisRelay`]: the handle the broker holds, and the state its tasks share.
//!
//! This file owns the non-blocking side of the relay, the part the broker calls on its hot
//! path: `publish` encodes the envelope and queues it (or fails at once), `interest_changed`
//! marks a topic dirty, `state` reads an atomic. It also starts and stops the tasks. The
//! tasks themselves live in `supervisor` (connections, heartbeat, subscriptions),
//! `publisher` (PUBLISH pipelines) and `inbound` (pub/sub reader, delivery workers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use herald_broker::{BrokerMetrics, PublishTicket, Relay, RelayError, RelaySink, RelayState};
use herald_protocol::{envelope, Payload};
use prometheus::IntCounter;
use redis::io::tcp::TcpSettings;
use redis::IntoConnectionInfo;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{RedisRelayConfig, RelayStartError};
use crate::subscriptions::Interest;
use crate::supervisor::Session;
use crate::{inbound, publisher, supervisor};

/// One queued publication: the channel, the encoded envelope, and who waits for Redis's
/// answer.
pub(crate) struct Outgoing {
    pub(crate) channel: String,
    pub(crate) envelope: Bytes,
    pub(crate) done: oneshot::Sender<Result<(), RelayError>>,
}

/// State shared by the handle and every task of one relay.
pub(crate) struct Shared {
    pub(crate) config: RedisRelayConfig,
    pub(crate) client: redis::Client,
    pub(crate) metrics: Arc<BrokerMetrics>,
    /// `relay_messages{direction="out"}`, resolved once.
    pub(crate) sent: IntCounter,
    /// `dropped{reason="relay_unavailable"}`, resolved once: every accepted publication that
    /// then failed to reach Redis (failed pipeline, shutting down). Immediate refusals
    /// (down, overloaded) are counted by the broker, so each failure is counted once.
    pub(crate) unrelayed: IntCounter,
    /// The truth behind [`Relay::state`]; only the supervisor writes it.
    up: AtomicBool,
    /// Set once by `attach`; weak because the broker owns the relay.
    sink: OnceLock<Weak<dyn RelaySink>>,
    pub(crate) interest: Interest,
    /// Cancelled by `shutdown`, by dropping the handle, or by the caller's parent token.
    pub(crate) cancel: CancellationToken,
    /// The live connection, `None` while down. The publisher reads it per batch.
    pub(crate) session: watch::Sender<Option<Arc<Session>>>,
}

impl Shared {
    pub(crate) fn sink(&self) -> Option<Arc<dyn RelaySink>> {
        self.sink.get()?.upgrade()
    }

    pub(crate) fn has_interest(&self, topic: &str) -> bool {
        self.sink().is_some_and(|s| s.has_interest(topic))
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Flips the state and the `relay_up` gauge together.
    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.relay_up.set(i64::from(up));
    }
}

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
        let unrelayed = metrics.dropped.with_label_values(&["relay_unavailable"]);
        let sent = metrics.relay_messages.with_label_values(&["out"]);
        metrics.relay_up.set(0);
        let shared = Arc::new(Shared {
            config,
            client,
            metrics,
            sent,
            unrelayed,
            up: AtomicBool::new(false),
            sink: OnceLock::new(),
            interest: Interest::default(),
            cancel: cancel.child_token(),
            session: watch::Sender::new(None),
        });
        let tracker = TaskTracker::new();
        let workers = inbound::spawn_workers(&shared, &tracker);
        tracker.spawn(publisher::run(shared.clone(), publish_rx));
        tracker.spawn(supervisor::run(shared.clone(), workers, tracker.clone()));
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
        if self.shared.sink.set(sink).is_err() {
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
        if !self.shared.is_up() {
            return self.refuse(RelayError::Unavailable("redis relay is down".into()));
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

    fn confirm_interest(&self, _topic: &str) -> herald_broker::InterestTicket {
        // Not yet confirmed against Redis: see the interest-confirmation work in progress.
        PublishTicket::ok()
    }

    fn state(&self) -> RelayState {
        if self.shared.is_up() {
            RelayState::Up
        } else {
            RelayState::Down
        }
    }
}
