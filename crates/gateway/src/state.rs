//! The state every task of a node shares ([`AppState`]) and its cancellation tree
//! ([`Shutdown`]). It holds handles only (the core, the broker, the identity, the budgets, the trackers),
//! and imports none of the modules that use it (listeners, sessions, the API, the drain),
//! so they all depend on it and it on none of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use herald_broker::{Broker, BrokerMetrics, RelayState};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client_ip::ClientAddrs;
use crate::config::Config;
use crate::core::{Connections, Core};
use crate::identity::Identity;
use crate::ip_limits::IpLimits;
use crate::origin::OriginPolicy;
use crate::socket_budget::SocketBudget;

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

/// State shared by every task of a node.
pub struct AppState {
    pub config: Arc<Config>,
    pub node_id: Arc<str>,
    pub broker: Arc<Broker>,
    /// Every way in (WebSocket, raw, HTTP) connects, subscribes and publishes through it.
    pub core: Arc<Core>,
    pub metrics: Arc<BrokerMetrics>,
    pub shutdown: Shutdown,
    /// WebSocket sessions (closed in drain phase 3).
    pub sessions: TaskTracker,
    /// Listeners, HTTP connections and background tasks.
    pub tasks: TaskTracker,
    /// Open connections (the core's table).
    pub connections: Arc<Connections>,
    pub started: Instant,
    /// False until the listeners are bound (and while the relay is down: see `ready`).
    pub started_up: AtomicBool,
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Public sockets: handshakes in flight and sessions, within the descriptor budget.
    pub sockets: Arc<SocketBudget>,
    /// Token verification and the permission policy.
    pub identity: Arc<Identity>,
    /// Who the client of a public connection is, behind trusted proxies (`[proxy]`).
    pub client_addrs: Arc<ClientAddrs>,
    /// Per client IP connection limits (`limits.connections_per_ip`, ...).
    pub ip_limits: Arc<IpLimits>,
    /// The Origin allow-list of WebSocket upgrades, parsed once at start.
    pub origins: OriginPolicy,
    /// `/demo/config.js`: the `[demo]` topic names the pages import (made once).
    pub demo_config: crate::static_files::Asset,
    /// The `shard` labels `herald_relay_shard_up` has now, so a Redis Cluster master that
    /// left the slot map loses its series instead of reporting its last state forever.
    pub shard_labels: std::sync::Mutex<Vec<Arc<str>>>,
}

impl AppState {
    /// Ready to take new clients: started and not draining; with
    /// `readiness.require_relay`, also the relay wholly up. Reasons: `starting`,
    /// `draining`, `relay_down` (not ready), `degraded` (ready, but the relay, or some of
    /// its shards, is down: this node's clients are served, other nodes' messages on the
    /// affected topics do not arrive) and `ready`.
    pub fn readiness(&self) -> (bool, &'static str) {
        self.readiness_with(self.broker.relay_state())
    }

    /// [`readiness`](Self::readiness) for a relay state read once by the caller, so one
    /// answer never mixes two states.
    pub fn readiness_with(&self, relay: RelayState) -> (bool, &'static str) {
        if !self.started_up.load(Ordering::Acquire) {
            return (false, "starting");
        }
        if self.shutdown.draining.is_cancelled() {
            return (false, "draining");
        }
        match relay {
            RelayState::Down | RelayState::Degraded if self.config.readiness.require_relay => (false, "relay_down"),
            RelayState::Down | RelayState::Degraded => (true, "degraded"),
            RelayState::Up | RelayState::Standalone => (true, "ready"),
        }
    }

    /// The relay's shards as JSON: `[{"shard": name, "state": "up"|"down"|...}]`.
    pub fn relay_shards_json(&self) -> serde_json::Value {
        let shards: Vec<serde_json::Value> = self
            .broker
            .relay_shards()
            .into_iter()
            .map(|s| serde_json::json!({"shard": &*s.name, "state": s.state.as_str()}))
            .collect();
        serde_json::Value::Array(shards)
    }
}
