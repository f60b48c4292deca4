//! A running gateway node: its shared state, its start-up (bind listeners, build the relay
//! and the broker, spawn the accept loops) and its one shutdown path, the phased drain.
//!
//! Drain, triggered by a signal, the admin API or [`Node::begin_drain`]:
//! 1. `/readyz` answers 503 (`draining`), so load balancers stop sending new clients;
//! 2. after `shutdown.drain_delay_ms` the public listener stops accepting;
//! 3. every client is closed with 1001, each at a random moment within
//!    `shutdown.close_window_ms`, so reconnects do not hit the other nodes at once;
//! 4. the relay and the admin listener stop;
//! 5. whatever still runs after `shutdown.grace_ms` is abandoned and the process exits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use herald_broker::{Broker, BrokerMetrics, ConnId, MemoryRelay, Outbox, Relay, RelayState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::body::BodyBudget;
use crate::config::Config;
use crate::fd_budget::{FdBudget, FdLimitTooLow};
use crate::socket_budget::SocketBudget;
use crate::{admin, clock, http_server, public, relay_setup};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("relay: {0}")]
    Relay(String),
    #[error("{0}")]
    FdLimit(#[from] FdLimitTooLow),
}

/// The cancellation tree of one node, one token per drain phase.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// A drain was requested; `/readyz` reports 503 from now on.
    pub draining: CancellationToken,
    /// The public listener stops accepting.
    pub stop_accepting: CancellationToken,
    /// Sessions close their clients with 1001 (spread over the close window).
    pub close_clients: CancellationToken,
    /// Everything else stops: relay, admin listener, background tasks.
    pub stop_all: CancellationToken,
    /// The drain has finished; the node is gone.
    pub finished: CancellationToken,
}

/// What the admin API and metrics know about one open connection.
pub struct ConnInfo {
    pub outbox: Arc<Outbox>,
    pub peer: SocketAddr,
    pub mode: &'static str,
    pub opened: Instant,
}

/// State shared by every task of a node.
pub struct AppState {
    pub config: Arc<Config>,
    pub node_id: Arc<str>,
    pub broker: Arc<Broker>,
    pub metrics: Arc<BrokerMetrics>,
    pub shutdown: Shutdown,
    /// WebSocket sessions (closed in drain phase 3).
    pub sessions: TaskTracker,
    /// Listeners, HTTP connections and background tasks.
    pub tasks: TaskTracker,
    pub connections: DashMap<ConnId, ConnInfo>,
    pub started: Instant,
    /// False until the listeners are bound (and while the relay is down: see `ready`).
    pub started_up: AtomicBool,
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    next_conn: AtomicU64,
    /// Public sockets: handshakes in flight and sessions, within the descriptor budget.
    pub sockets: Arc<SocketBudget>,
}

/// A reserved connection slot; dropping it frees the slot.
pub struct ConnSlot {
    state: Arc<AppState>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.state.sockets.end_session();
    }
}

impl AppState {
    /// Reserves a connection slot, or `None` at the session limit in force
    /// (`limits.max_connections`, lowered by the descriptor budget).
    pub fn try_reserve(self: &Arc<Self>) -> Option<ConnSlot> {
        self.sockets.try_session().then(|| ConnSlot { state: self.clone() })
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ready to take new clients: started, not draining, relay not down.
    pub fn readiness(&self) -> (bool, &'static str) {
        if !self.started_up.load(Ordering::Acquire) {
            (false, "starting")
        } else if self.shutdown.draining.is_cancelled() {
            (false, "draining")
        } else if self.broker.relay_state() == RelayState::Down {
            (false, "relay_down")
        } else {
            (true, "ready")
        }
    }
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
        let fds = FdBudget::current(config.admin.max_connections)?;
        let ws_listener = bind(config.listen_addr()).await?;
        let admin_listener = bind(config.admin_addr()).await?;
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
        let shutdown = Shutdown::default();
        let tasks = TaskTracker::new();
        let relay: Arc<dyn Relay> = match (relay, config.relay.kind.as_str()) {
            (Some(r), _) => r,
            (None, "redis") => {
                relay_setup::start_redis(&config, &node_id, metrics.clone(), shutdown.stop_all.clone(), &tasks)?
            }
            (None, _) => Arc::new(MemoryRelay::standalone(&node_id)),
        };
        let broker = Broker::new(&node_id, relay, metrics.clone());
        let state = Arc::new(AppState {
            config: config.clone(),
            node_id: node_id.clone(),
            broker,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            sessions: TaskTracker::new(),
            tasks: tasks.clone(),
            connections: DashMap::new(),
            started: Instant::now(),
            started_up: AtomicBool::new(false),
            ws_addr,
            admin_addr,
            next_conn: AtomicU64::new(0),
            sockets: SocketBudget::public(&fds, &config, &metrics),
        });

        tasks.spawn(clock::run_ticker(shutdown.stop_all.clone()));
        tasks.spawn(relay_gauge(state.clone()));
        // One flusher per worker: direct sends to idle subscribers spread over the cores.
        for _ in 0..tokio::runtime::Handle::current().metrics().num_workers().max(1) {
            tasks.spawn(state.broker.flusher(shutdown.stop_all.clone()));
        }
        let serve = config.serve_limits();
        let st = state.clone();
        tasks.spawn(http_server::accept_loop(
            ws_listener,
            shutdown.stop_accepting.clone(),
            tasks.clone(),
            serve,
            state.sockets.clone(),
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
            move |mut req, peer| {
                req.extensions_mut().insert(bodies.clone());
                admin::route(st.clone(), req, peer)
            },
        ));
        tokio::spawn(drain(state.clone()));
        state.started_up.store(true, Ordering::Release);
        tracing::info!(node = %node_id, %ws_addr, %admin_addr, relay = %config.relay.kind, "node started");
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Keeps `herald_relay_up` in step with the relay's state.
async fn relay_gauge(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        let up = state.broker.relay_state() != RelayState::Down;
        state.metrics.relay_up.set(up as i64);
        tokio::select! {
            _ = state.shutdown.stop_all.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

/// Closes every connection with 1001, at evenly spaced moments in random order across the
/// close window, so clients reconnecting elsewhere arrive as a trickle, not a storm. One
/// task does it for all connections (no per-connection drain timer). A connection that
/// appears after the snapshot (an upgrade already in flight) closes itself when its writer
/// next wakes, and a second sweep at the end of the window catches the rest.
async fn close_spread(state: Arc<AppState>) {
    let window = state.config.close_window();
    let mut outboxes: Vec<(u64, Arc<Outbox>)> = state
        .connections
        .iter()
        .map(|e| (rand::random::<u64>(), e.outbox.clone()))
        .collect();
    if outboxes.is_empty() {
        // Nobody to close (upgrades are refused while draining): do not hold the drain.
        return;
    }
    outboxes.sort_unstable_by_key(|(k, _)| *k);
    let start = tokio::time::Instant::now();
    let n = outboxes.len().max(1) as u32;
    for (i, (_, outbox)) in outboxes.into_iter().enumerate() {
        tokio::time::sleep_until(start + window * i as u32 / n).await;
        outbox.close_as(1001, "server shutting down", false, "shutdown");
    }
    tokio::time::sleep_until(start + window).await;
    for e in state.connections.iter() {
        e.outbox.close_as(1001, "server shutting down", false, "shutdown");
    }
}

/// The drain phases (module docs).
async fn drain(state: Arc<AppState>) {
    let sd = &state.shutdown;
    sd.draining.cancelled().await;
    let cfg = &state.config;
    let started = Instant::now();
    let open = state.connections.len();
    state.metrics.draining.set(1);
    tracing::info!(connections = open, delay = ?cfg.drain_delay(), window = ?cfg.close_window(), "drain started: readiness now 503");
    tokio::time::sleep(cfg.drain_delay()).await;
    sd.stop_accepting.cancel();
    tracing::info!("drain: stopped accepting; closing clients with 1001 over the close window");
    sd.close_clients.cancel();
    state.sessions.close();
    state.tasks.spawn(close_spread(state.clone()));
    let deadline = tokio::time::Instant::now() + cfg.close_window() + cfg.grace();
    // Progress once a second, so a long close window is visible in the logs.
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let all_closed = loop {
        tokio::select! {
            _ = state.sessions.wait() => break true,
            _ = tokio::time::sleep_until(deadline) => break false,
            _ = progress.tick() => tracing::info!(left = state.connections.len(), "drain: closing clients"),
        }
    };
    if all_closed {
        tracing::info!(elapsed = ?started.elapsed(), "drain: every client closed");
    } else {
        tracing::warn!(
            left = state.sessions.len(),
            "drain: sessions still open at the deadline; abandoning them"
        );
    }
    sd.stop_all.cancel();
    state.tasks.close();
    if tokio::time::timeout(cfg.grace(), state.tasks.wait()).await.is_err() {
        tracing::warn!(
            left = state.tasks.len(),
            "drain: background tasks still running at the deadline"
        );
    }
    tracing::info!(elapsed = ?started.elapsed(), "drain finished");
    sd.finished.cancel();
}
