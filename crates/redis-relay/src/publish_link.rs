//! The publish link task: owns the multiplexed connection that carries PUBLISH pipelines,
//! on its own, apart from the pub/sub connection.
//!
//! Connect (within `connect_timeout`, replies within `command_timeout`), load the history
//! scripts (`SCRIPT LOAD`, see `scripts`), publish the
//! connection to the publisher through `Shared::publish_link`, mark the link up, then PING
//! every `heartbeat_interval` (answered within `heartbeat_timeout`) until the PING fails
//! or the publisher reports a failed or timed-out pipeline. Then: link down first (so
//! `publish` fails fast), drop the connection, back off, reconnect. The pub/sub connection,
//! its subscriptions and the inbound reader are not touched: a Redis that stalls writes
//! (`CLIENT PAUSE WRITE`) or one lost PUBLISH reply costs the publishers a reconnect, not
//! every subscriber a gap.

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::link::{is_connection_failure, LinkError, Retry};
use crate::scripts;
use crate::shared::{Link, PublishLink, Shared};

/// Runs until the relay is cancelled.
pub(crate) async fn run(shared: Arc<Shared>) {
    let cfg = &shared.config;
    let mut retry = Retry::new(Link::Publish, cfg);
    loop {
        let connected = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            c = connect(&shared) => c,
        };
        let result = match connected {
            Ok(conn) => {
                let failed = shared.cancel.child_token();
                shared.publish_link.send_replace(Some(Arc::new(PublishLink {
                    conn: conn.clone(),
                    failed: failed.clone(),
                })));
                shared.set_link(Link::Publish, true);
                if retry.up() {
                    shared.count_link_reconnect(Link::Publish);
                    tracing::info!("redis relay publish connection re-established");
                } else {
                    tracing::debug!("redis relay publish connection up");
                }
                let r = heartbeat(&shared, &conn, &failed).await;
                // Down before anything else, so `publish` fails fast instead of queueing.
                shared.set_link(Link::Publish, false);
                shared.publish_link.send_replace(None);
                failed.cancel();
                r
            }
            Err(e) => e,
        };
        if matches!(result, LinkError::Shutdown) {
            break;
        }
        retry.failed(&result, &cfg.url);
        if !retry.pause(&shared.cancel).await {
            break;
        }
    }
    shared.set_link(Link::Publish, false);
    shared.publish_link.send_replace(None);
}

/// Opens the multiplexed connection within `connect_timeout` and loads the history
/// scripts on it (a restarted Redis has forgotten them). A Redis that refuses to load them
/// (an ACL without `SCRIPT`, say) still carries publications of topics without history;
/// appends and reads then fail with Redis's answer, each time.
async fn connect(shared: &Shared) -> Result<MultiplexedConnection, LinkError> {
    let cfg = &shared.config;
    let conn_cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.command_timeout));
    let mut conn = shared
        .client
        .get_multiplexed_async_connection_with_config(&conn_cfg)
        .await?;
    for script in [scripts::append_for(cfg), &*scripts::READ] {
        match script.load(&mut conn).await {
            Ok(()) => {}
            Err(e) if is_connection_failure(&e) => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, script = script.name, "redis refused a history script"),
        }
    }
    Ok(conn)
}

/// PINGs until a PING fails, `failed` is cancelled (by the publisher) or the relay stops;
/// returns why it ended.
async fn heartbeat(shared: &Shared, conn: &MultiplexedConnection, failed: &CancellationToken) -> LinkError {
    let cfg = &shared.config;
    let mut tick = tokio::time::interval_at(Instant::now() + cfg.heartbeat_interval, cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return LinkError::Shutdown,
            _ = failed.cancelled() => return LinkError::Lost,
            _ = tick.tick() => {
                let mut conn = conn.clone();
                let ping = redis::cmd("PING");
                let answer = tokio::select! {
                    biased;
                    _ = failed.cancelled() => return LinkError::Lost,
                    a = timeout(cfg.heartbeat_timeout, ping.query_async::<redis::Value>(&mut conn)) => a,
                };
                match answer {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.into(),
                    Err(_) => return LinkError::Timeout("publish connection heartbeat"),
                }
            }
        }
    }
}
