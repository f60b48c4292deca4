//! Builds the Redis relay (over one Redis, sharded over several, or over a Redis Cluster)
//! from the node's configuration and ties its lifetime to the node's: it stops when the drain reaches its
//! last phase (`stop_all`).

use std::sync::Arc;
use std::time::Duration;

use herald_broker::{BrokerMetrics, Relay};
use herald_redis::{ClusterRelay, RedisRelay, RedisRelayConfig, ShardedRelay};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// Starts the Redis relay: over `redis.url`, sharded over `redis.urls` when that lists
/// two or more servers, or over the Redis Cluster `redis.urls` (or `redis.url`) belongs to
/// with `relay.kind = "redis-cluster"`. It connects in the background: a node starts (not ready) while
/// Redis is down and becomes ready when the relay is up.
pub fn start_redis(
    config: &Config,
    node_id: &str,
    metrics: Arc<BrokerMetrics>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> Result<Arc<dyn Relay>, herald_redis::RelayStartError> {
    let r = &config.redis;
    let urls: Vec<&str> = if r.urls.is_empty() {
        vec![r.url.as_str()]
    } else {
        r.urls.iter().map(String::as_str).collect()
    };
    if config.relay.kind == "redis-cluster" {
        let seeds = urls.iter().map(|u| u.to_string()).collect();
        let relay = ClusterRelay::start(
            seeds,
            relay_config(config, urls[0], node_id),
            Duration::from_millis(r.cluster_refresh_ms),
            metrics,
            stop.child_token(),
        )?;
        let handle = relay.clone();
        tasks.spawn(async move {
            stop.cancelled().await;
            handle.shutdown().await;
        });
        return Ok(relay);
    }
    if let [url] = urls[..] {
        let relay = RedisRelay::start(relay_config(config, url, node_id), metrics, stop.child_token())?;
        let handle = relay.clone();
        tasks.spawn(async move {
            stop.cancelled().await;
            handle.shutdown().await;
        });
        return Ok(relay);
    }
    let configs = urls.iter().map(|url| relay_config(config, url, node_id)).collect();
    let relay = ShardedRelay::start(configs, metrics, stop.child_token())?;
    let handle = relay.clone();
    tasks.spawn(async move {
        stop.cancelled().await;
        handle.shutdown().await;
    });
    Ok(relay)
}

/// The relay settings for one Redis server, from the node's `[redis]` section.
fn relay_config(config: &Config, url: &str, node_id: &str) -> RedisRelayConfig {
    let r = &config.redis;
    let mut rc = RedisRelayConfig::new(url, node_id);
    rc.channel_prefix = r.channel_prefix.clone();
    rc.topic_rules = config.topic_rules();
    rc.heartbeat_interval = Duration::from_millis(r.heartbeat_interval_ms);
    rc.heartbeat_timeout = Duration::from_millis(r.heartbeat_timeout_ms);
    rc.reconnect_backoff_min = Duration::from_millis(r.reconnect_min_ms);
    rc.reconnect_backoff_max = Duration::from_millis(r.reconnect_max_ms);
    rc.unsubscribe_delay = Duration::from_millis(r.unsubscribe_delay_ms);
    rc.publish_queue_capacity = r.publish_queue;
    rc.append_batch_max = r.history_append_batch;
    rc.history_read_concurrency = r.history_read_concurrency;
    rc.history_read_queue = r.history_read_queue;
    rc.canary_interval = Duration::from_millis(r.canary_interval_ms);
    rc.canary_timeout = Duration::from_millis(r.canary_timeout_ms);
    rc.max_payload_bytes = config.limits.max_message_bytes;
    rc
}
