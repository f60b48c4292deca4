//! The node's one shutdown path, the phased drain, and the background task that keeps
//! relay gauges (`herald_relay_up`, `herald_relay_shard_up`) current.
//!
//! Drain, triggered by a signal, the admin API or `Node::begin_drain`:
//! 1. `/readyz` answers 503 (`draining`), so load balancers stop sending new clients;
//! 2. after `shutdown.drain_delay_ms` the public listener stops accepting;
//! 3. every client is closed with 1001, each at a random moment within
//!    `shutdown.close_window_ms`, so reconnects do not hit the other nodes at once;
//! 4. the relay and the admin listener stop;
//! 5. whatever still runs after `shutdown.grace_ms` is abandoned and the process exits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::{Outbox, RelayState};

use crate::state::AppState;

/// Keeps `herald_relay_up` and `herald_relay_shard_up{shard}` in step with the relay's
/// state (every 100 ms; `/metrics` also refreshes them before it renders).
pub(crate) async fn relay_gauge(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        refresh_relay_gauges(&state);
        tokio::select! {
            _ = state.shutdown.stop_all.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

/// `herald_relay_up`: 1 unless the relay is down or degraded; `herald_relay_shard_up`: each
/// shard's own state.
pub(crate) fn refresh_relay_gauges(state: &AppState) {
    let up = matches!(state.broker.relay_state(), RelayState::Up | RelayState::Standalone);
    state.metrics.relay_up.set(up as i64);
    let shards = state.broker.relay_shards();
    for shard in &shards {
        let up = matches!(shard.state, RelayState::Up | RelayState::Standalone);
        state
            .metrics
            .relay_shard_up
            .with_label_values(&[&*shard.name])
            .set(up as i64);
    }
    let mut labels = state.shard_labels.lock().unwrap_or_else(|e| e.into_inner());
    if labels.len() != shards.len() || labels.iter().zip(&shards).any(|(l, s)| *l != s.name) {
        for gone in labels.iter().filter(|l| !shards.iter().any(|s| s.name == **l)) {
            let _ = state.metrics.relay_shard_up.remove_label_values(&[gone]);
        }
        *labels = shards.iter().map(|s| s.name.clone()).collect();
    }
}

/// Closes every connection with 1001, at evenly spaced moments in random order across the
/// close window, so clients reconnecting elsewhere arrive as a trickle, not a storm. One
/// task does it for all connections (no per-connection drain timer). A connection that
/// appears after the snapshot (an upgrade already in flight, its 101 perhaps waiting for
/// the relay) is caught by a second sweep at the end of the window.
async fn close_spread(state: Arc<AppState>) {
    let window = state.config.close_window();
    let mut outboxes: Vec<(u64, Arc<Outbox>)> = state
        .connections
        .outboxes()
        .into_iter()
        .map(|o| (rand::random::<u64>(), o))
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
    for outbox in state.connections.outboxes() {
        outbox.close_as(1001, "server shutting down", false, "shutdown");
    }
}

/// The drain phases (module docs).
pub(crate) async fn drain(state: Arc<AppState>) {
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
