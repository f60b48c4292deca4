//! The supervisor task: owns the relay's connections and its Redis subscriptions.
//!
//! One loop, one owner, no races: connect (multiplexed connection for PUBLISH plus a
//! dedicated RESP2 pub/sub connection, each under `connect_timeout`), start the reader,
//! SUBSCRIBE every topic the broker has local interest in (in batches), publish the session
//! and flip the state to Up. While up it serves three things: the heartbeat (PING on both
//! connections with `heartbeat_timeout`), interest hints (batched SUBSCRIBE after
//! `subscribe_batch_window`, UNSUBSCRIBE after `unsubscribe_delay`), and failure signals
//! from the reader (stream ended) and the publisher (I/O error, timeout). On any failure:
//! state Down first (so `publish` fails fast), drop both connections, sleep a jittered
//! exponential backoff, start over. Redis forgets a connection's subscriptions with the
//! connection, so every reconnect resubscribes from scratch; nothing in the library
//! reconnects or resubscribes on its own.
//!
//! It does not touch publications or inbound messages; see `publisher` and `inbound`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub, PubSubSink};
use redis::{AsyncConnectionConfig, RedisError};
use thiserror::Error;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::inbound::{self, Workers};
use crate::relay::Shared;
use crate::subscriptions::Reconciler;

/// A live pair of connections, as the publisher sees it.
pub(crate) struct Session {
    /// For PUBLISH pipelines; cloning shares the one socket.
    pub(crate) conn: MultiplexedConnection,
    /// Cancelled by whoever first sees the connection fail; ends the session.
    pub(crate) failed: CancellationToken,
}

/// Why a session ended or never started.
#[derive(Debug, Error)]
pub(crate) enum SessionError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("connection lost")]
    Lost,
    #[error("shutting down")]
    Shutdown,
}

/// Runs until the relay is cancelled.
pub(crate) async fn run(shared: Arc<Shared>, workers: Workers, tracker: TaskTracker) {
    let cfg = &shared.config;
    let mut backoff = Backoff::new(cfg.reconnect_backoff_min, cfg.reconnect_backoff_max);
    let mut was_up = false;
    // Failed attempts since the relay was last up: the first is a warning, the rest debug.
    let mut failures = 0u32;
    loop {
        let connected = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            c = connect(&shared) => c,
        };
        let result = match connected {
            Ok((conn, pubsub)) => {
                let started = Instant::now();
                let r = session(&shared, conn, pubsub, &workers, &tracker, &mut was_up, &mut failures).await;
                if started.elapsed() >= cfg.reconnect_backoff_max {
                    backoff.reset();
                }
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Err(SessionError::Shutdown) => break,
            Err(e) if failures == 0 => tracing::warn!(error = %e, url = %cfg.url, "redis relay down; reconnecting"),
            Err(e) => tracing::debug!(error = %e, failures, "redis relay reconnect failed"),
            Ok(()) => {}
        }
        failures = failures.saturating_add(1);
        let delay = backoff.next_delay();
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    shared.set_up(false);
    shared.session.send_replace(None);
}

/// Opens both connections, each within `connect_timeout`.
async fn connect(shared: &Shared) -> Result<(MultiplexedConnection, PubSub), SessionError> {
    let cfg = &shared.config;
    let conn_cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.command_timeout));
    let conn = shared
        .client
        .get_multiplexed_async_connection_with_config(&conn_cfg)
        .await?;
    let pubsub = timeout(cfg.connect_timeout, shared.client.get_async_pubsub())
        .await
        .map_err(|_| SessionError::Timeout("pub/sub connect"))??;
    Ok((conn, pubsub))
}

/// One connected period: resubscribe, go Up, serve until something fails, go Down.
async fn session(
    shared: &Arc<Shared>,
    conn: MultiplexedConnection,
    pubsub: PubSub,
    workers: &Workers,
    tracker: &TaskTracker,
    was_up: &mut bool,
    failures: &mut u32,
) -> Result<(), SessionError> {
    let failed = shared.cancel.child_token();
    let (mut sink, stream) = pubsub.split();
    tracker.spawn(inbound::read(shared.clone(), stream, workers.clone(), failed.clone()));
    let mut rec = Reconciler::default();
    let result = async {
        // Hints that arrived until now are covered by the full snapshot taken next; hints
        // that arrive from now on are handled by `serve`.
        drop(shared.interest.take());
        let topics: Vec<Box<str>> = match shared.sink() {
            Some(s) => s.interested_topics().iter().map(|t| Box::from(&**t)).collect(),
            None => Vec::new(),
        };
        subscribe(shared, &mut sink, &topics, "SUBSCRIBE").await?;
        let count = topics.len();
        rec.reset(topics);
        shared.session.send_replace(Some(Arc::new(Session {
            conn: conn.clone(),
            failed: failed.clone(),
        })));
        shared.set_up(true);
        if *was_up {
            shared.metrics.relay_reconnects.inc();
            tracing::info!(topics = count, "redis relay reconnected and resubscribed");
        } else {
            tracing::info!(topics = count, "redis relay connected");
        }
        *was_up = true;
        *failures = 0;
        serve(shared, &mut sink, &conn, &mut rec, &failed).await
    }
    .await;
    // Down before anything else, so `publish` fails fast instead of queueing.
    shared.set_up(false);
    shared.session.send_replace(None);
    failed.cancel();
    result
}

/// The Up state: heartbeat, interest changes, failure signals.
async fn serve(
    shared: &Shared,
    sink: &mut PubSubSink,
    conn: &MultiplexedConnection,
    rec: &mut Reconciler,
    failed: &CancellationToken,
) -> Result<(), SessionError> {
    let cfg = &shared.config;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + cfg.heartbeat_interval, cfg.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let has_interest = |t: &str| shared.has_interest(t);
    loop {
        let deadline = rec.next_deadline();
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return Err(SessionError::Shutdown),
            _ = failed.cancelled() => return Err(SessionError::Lost),
            _ = heartbeat.tick() => ping(cfg.heartbeat_timeout, sink, conn).await?,
            _ = shared.interest.changed() => {
                // Let a burst of hints accumulate: one SUBSCRIBE for all of them.
                tokio::select! {
                    _ = shared.cancel.cancelled() => return Err(SessionError::Shutdown),
                    _ = tokio::time::sleep(cfg.subscribe_batch_window) => {}
                }
                let now = Instant::now();
                let new = rec.plan(shared.interest.take(), has_interest, now, cfg.unsubscribe_delay);
                subscribe(shared, sink, &new, "SUBSCRIBE").await?;
                rec.subscribed(&new);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let gone = rec.due(Instant::now(), has_interest);
                subscribe(shared, sink, &gone, "UNSUBSCRIBE").await?;
                rec.unsubscribed(&gone);
            }
        }
    }
}

/// PING on both connections at once; either failing or timing out ends the session.
async fn ping(limit: Duration, sink: &mut PubSubSink, conn: &MultiplexedConnection) -> Result<(), SessionError> {
    let mut conn = conn.clone();
    let pubsub = timeout(limit, sink.ping::<redis::Value>());
    let ping = redis::cmd("PING");
    let command = timeout(limit, ping.query_async::<redis::Value>(&mut conn));
    let (a, b) = tokio::join!(pubsub, command);
    a.map_err(|_| SessionError::Timeout("pub/sub heartbeat"))??;
    b.map_err(|_| SessionError::Timeout("heartbeat"))??;
    Ok(())
}

/// SUBSCRIBE or UNSUBSCRIBE `topics` in commands of at most `subscribe_batch_max`
/// channels, each within `command_timeout`. Nothing is sent for an empty list.
async fn subscribe(
    shared: &Shared,
    sink: &mut PubSubSink,
    topics: &[Box<str>],
    verb: &'static str,
) -> Result<(), SessionError> {
    let cfg = &shared.config;
    for chunk in topics.chunks(cfg.subscribe_batch_max) {
        let channels: Vec<String> = chunk.iter().map(|t| cfg.channel(t)).collect();
        let op = async {
            if verb == "SUBSCRIBE" {
                sink.subscribe(channels).await
            } else {
                sink.unsubscribe(channels).await
            }
        };
        timeout(cfg.command_timeout, op)
            .await
            .map_err(|_| SessionError::Timeout(verb))??;
        tracing::debug!(verb, channels = chunk.len(), "redis subscriptions updated");
    }
    Ok(())
}
