//! Starting a gateway node: bind the listeners, check the descriptor budget, build the
//! relay, the broker and the core, spawn the accept loops, the flushers and the drain
//! (`drain.rs`). The state the node's tasks share is `state.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::{Broker, BrokerMetrics, Encodings, MemoryRelay, Relay};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::task::TaskTracker;

use crate::api::body::BodyBudget;
use crate::client_ip::ClientAddrs;
use crate::config::Config;
use crate::core::rate::RateLimits;
use crate::core::{Connections, Core, CoreLimits};
use crate::fd_budget::{FdBudget, FdLimitTooLow};
use crate::identity::{Identity, IdentityError};
use crate::ip_limits::{self, IpLimits};
use crate::origin::OriginPolicy;
use crate::socket_budget::SocketBudget;
use crate::state::{AppState, Shutdown};
use crate::tls::Tls;
use crate::{admin, clock, drain, http_server, public, relay_setup};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("relay: {0}")]
    Relay(String),
    #[error("{0}")]
    FdLimit(#[from] FdLimitTooLow),
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("auth.allowed_origins: {0}")]
    Origins(crate::origin::OriginError),
}

/// A started node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    state: Arc<AppState>,
}

fn generate_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

impl Node {
    /// Binds the listeners and starts serving. Must run inside a multi-threaded runtime.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        Self::start_with_relay(config, None).await
    }

    /// Like [`Node::start`], with a relay built by the caller (tests join nodes through an
    /// in-process hub this way) instead of the one `relay.kind` names.
    pub async fn start_with_relay(config: Config, relay: Option<Arc<dyn Relay>>) -> Result<Node, StartError> {
        let config = Arc::new(config);
        let origins = OriginPolicy::from_config(&config.auth).map_err(|e| StartError::Origins(e[0].clone()))?;
        let fds = FdBudget::current(config.admin.max_connections)?;
        let backlog = config.limits.listen_backlog;
        let ws_listener = bind(config.listen_addr(), backlog)?;
        let admin_listener = bind(config.admin_addr(), backlog)?;
        let ws_addr = ws_listener.local_addr().map_err(|e| StartError::Bind {
            addr: config.listen_addr(),
            source: e,
        })?;
        let admin_addr = admin_listener.local_addr().map_err(|e| StartError::Bind {
            addr: config.admin_addr(),
            source: e,
        })?;

        let node_id: Arc<str> = if config.node_id.is_empty() {
            generate_node_id().into()
        } else {
            config.node_id.as_str().into()
        };
        let metrics = Arc::new(BrokerMetrics::new());
        let identity = Arc::new(Identity::new(&config.auth, metrics.clone())?);
        let tls = Tls::from_config(&config.tls, metrics.registry())?;
        let shutdown = Shutdown::default();
        let tasks = TaskTracker::new();
        let mut memory_history = None;
        let relay: Arc<dyn Relay> = match (relay, config.relay.kind.as_str()) {
            (Some(r), _) => r,
            (None, "redis" | "redis-cluster") => {
                relay_setup::start_redis(&config, &node_id, metrics.clone(), shutdown.stop_all.clone(), &tasks)
                    .map_err(|e| StartError::Relay(e.to_string()))?
            }
            (None, _) => {
                let r = MemoryRelay::standalone(&node_id);
                memory_history = Some(r.streams().clone());
                Arc::new(r)
            }
        };
        if !config.history.is_empty() && relay.history().is_none() {
            return Err(StartError::Relay(format!(
                "[[history]] is configured, but relay.kind = {:?} keeps no history",
                config.relay.kind
            )));
        }
        // `[demo]` adds a rule for its chat topic, where the relay keeps history at all.
        let history = if relay.history().is_some() {
            crate::history::effective(&config)
        } else {
            config.history.clone()
        };
        // `[demo]`: only the node publishes to its system topics, live
        // (no history, never relayed).
        let reserved = if config.demo.enabled {
            vec![config.demo.time_topic.clone(), config.demo.stats_topic.clone()]
        } else {
            Vec::new()
        };
        let broker = Broker::with_history(
            &node_id,
            relay,
            metrics.clone(),
            Encodings::default(),
            crate::history::rules(&history, &reserved),
        );
        if let (Some(streams), false) = (memory_history, history.is_empty()) {
            tasks.spawn(crate::history::run_sweeper(
                streams,
                metrics.clone(),
                shutdown.stop_all.clone(),
            ));
        }
        let sockets = SocketBudget::public(&fds, &config, &metrics);
        let connections = Arc::new(Connections::with_budget(sockets.clone()));
        let limits = CoreLimits {
            max_subscriptions: config.limits.max_subscriptions,
            outbox: config.outbox_limits(),
            rate: RateLimits::from_config(&config.limits),
            replay_buffer: config.limits.replay_buffer,
        };
        broker.set_local_only(&reserved);
        let core = Core::with_reserved(broker.clone(), limits, connections.clone(), reserved);
        let state = Arc::new(AppState {
            config: config.clone(),
            node_id: node_id.clone(),
            broker,
            core,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            sessions: TaskTracker::new(),
            tasks: tasks.clone(),
            connections,
            started: Instant::now(),
            started_up: AtomicBool::new(false),
            ws_addr,
            admin_addr,
            sockets,
            identity: identity.clone(),
            client_addrs: Arc::new(ClientAddrs::new(&config.proxy, &metrics)),
            ip_limits: IpLimits::new(&config, &metrics),
            origins,
            demo_config: crate::static_files::demo_config(
                &config.demo.time_topic,
                &config.demo.stats_topic,
                &config.demo.chat_topic,
            ),
            shard_labels: Default::default(),
        });
        // Other nodes' `POST /api/users/{user}/disconnect`, through the relay.
        let core = Arc::downgrade(&state.core);
        state.broker.set_control_handler(Box::new(move |message| {
            if let Some(core) = core.upgrade() {
                crate::api::users::apply_control(&core, message);
            }
        }));
        if identity.is_open() {
            if config.auth.anonymous_subscribe.is_empty() && config.auth.anonymous_publish.is_empty() {
                tracing::warn!(
                    %ws_addr,
                    "no JWT key is configured: the public listener is open to anyone, who may subscribe to and publish on every topic (set [auth] keys or anonymous_* patterns)"
                );
            } else {
                tracing::warn!(%ws_addr, "no JWT key is configured: anyone may connect, with the anonymous_* permissions");
            }
        }
        if identity.has_key_files() {
            tasks.spawn(crate::identity::run_key_reload(identity, shutdown.stop_all.clone()));
        }

        tasks.spawn(clock::run_ticker(shutdown.stop_all.clone()));
        if config.demo.enabled {
            tasks.spawn(crate::system_topics::run(state.clone(), shutdown.stop_all.clone()));
        }
        tasks.spawn(drain::relay_gauge(state.clone()));
        tasks.spawn(ip_limits::run_cleanup(
            state.ip_limits.clone(),
            shutdown.stop_all.clone(),
        ));
        // One flusher per worker: direct sends to idle subscribers spread over the cores.
        for _ in 0..tokio::runtime::Handle::current().metrics().num_workers().max(1) {
            tasks.spawn(state.broker.flusher(shutdown.stop_all.clone()));
        }
        let serve = http_server::ServeLimits::from_config(&config);
        let st = state.clone();
        tasks.spawn(http_server::accept_loop(
            ws_listener,
            shutdown.stop_accepting.clone(),
            tasks.clone(),
            serve,
            state.sockets.clone(),
            http_server::Edge {
                proxy: Some(state.client_addrs.clone()),
                tls: tls.clone(),
            },
            move |req, peer| public::route(st.clone(), req, peer),
        ));
        let st = state.clone();
        let bodies = BodyBudget::new(
            config.admin.max_pending_body_bytes,
            metrics.admin_rejected.with_label_values(&["body_budget"]),
            metrics.admin_body_bytes.clone(),
        );
        tasks.spawn(http_server::accept_loop(
            admin_listener,
            shutdown.stop_all.clone(),
            tasks.clone(),
            serve,
            SocketBudget::admin(&config, &metrics),
            http_server::Edge::default(),
            move |mut req, peer| {
                req.extensions_mut().insert(bodies.clone());
                admin::route(st.clone(), req, peer)
            },
        ));
        if let Some(tls) = &tls {
            let every = Duration::from_millis(config.tls.reload_interval_ms);
            tasks.spawn(tls.clone().reload_loop(every, shutdown.stop_all.clone()));
        }
        tokio::spawn(drain::drain(state.clone()));
        state.started_up.store(true, Ordering::Release);
        tracing::info!(node = %node_id, %ws_addr, %admin_addr, relay = %config.relay.kind, tls = tls.is_some(), "node started");
        tracing::info!(
            fd_limit = fds.limit,
            fd_reserve = fds.reserve,
            public_sockets = fds.public_sockets,
            connection_limit = state.sockets.session_limit(),
            "descriptor budget: WebSocket sessions limited to {}",
            state.sockets.session_limit()
        );
        Ok(Node { state })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.state.ws_addr
    }
    pub fn admin_addr(&self) -> SocketAddr {
        self.state.admin_addr
    }
    pub fn node_id(&self) -> &str {
        &self.state.node_id
    }
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Starts the phased drain (idempotent); returns at once.
    pub fn begin_drain(&self) {
        self.state.shutdown.draining.cancel();
    }

    /// Waits until the drain has finished.
    pub async fn stopped(&self) {
        self.state.shutdown.finished.cancelled().await
    }

    /// Drains and waits for the end.
    pub async fn shutdown(self) {
        self.begin_drain();
        self.stopped().await;
    }
}

/// A listener on `addr` with a listen queue of `backlog` connections (the kernel caps it at
/// `net.core.somaxconn`), so a connection storm waits in the queue instead of being refused.
/// `SO_REUSEADDR` as tokio's own `bind` sets it: a restarted node rebinds at once.
fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(backlog).map_err(err)
}
