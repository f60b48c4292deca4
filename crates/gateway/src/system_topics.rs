//! The node's system messages (`[demo]` enabled): every `demo.interval_ms` the node
//! publishes, node-locally (`Broker::fan_out`, never through the relay: each node speaks for
//! itself), its clock on `demo.time_topic` and its figures on `demo.stats_topic`:
//!
//! - time: `{"node":..,"time":"2026-12-02T19:30:00.123Z","unix_ms":..}`
//! - stats: `{"node":..,"unix_ms":..,"connections":N,"subscriptions":N,"topics":N,
//!   "messages_in_per_s":x,"messages_out_per_s":y,"fanout_latency_ms":{"p50":a,"p99":b}}`
//!
//! Rates are the deltas of the node's own metrics over the last interval
//! (`herald_messages_published_total` summed over sources in, `herald_messages_delivered_total`
//! out); the percentiles are read from the deltas of the `herald_fanout_duration_seconds`
//! buckets over the interval (interpolated inside a bucket, as Prometheus'
//! `histogram_quantile` does), `null` when no message was fanned out. A frame is encoded only
//! when its topic has a local subscriber. Clients may not publish to these topics
//! (`Core::check_reserved`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::BrokerMetrics;
use herald_protocol::Payload;
use prometheus::core::{Collector, Metric};
use tokio_util::sync::CancellationToken;

use crate::identity::now_ms;
use crate::state::AppState;

/// The metric readings one stats frame compares with the previous.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub messages_in: u64,
    pub messages_out: u64,
    /// `herald_fanout_duration_seconds`: (upper bound in seconds, cumulative count), the
    /// `+Inf` bucket last (its bound `f64::INFINITY`).
    pub fanout_buckets: Vec<(f64, u64)>,
}

impl Snapshot {
    pub fn take(metrics: &BrokerMetrics) -> Self {
        let messages_in = metrics
            .published
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum();
        let h = metrics.fanout_duration.metric();
        let h = h.get_histogram();
        let mut fanout_buckets: Vec<(f64, u64)> = h
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        fanout_buckets.push((f64::INFINITY, h.get_sample_count()));
        Self {
            messages_in,
            messages_out: metrics.delivered.get(),
            fanout_buckets,
        }
    }
}

/// The `q` quantile (0..1) in milliseconds of the samples between `before` and `after`
/// (same bucket layout), `None` without samples.
pub fn quantile_ms(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .enumerate()
        .map(|(i, (bound, n))| (*bound, n.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect();
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for (bound, cumulative) in &delta {
        if *cumulative as f64 >= rank && *cumulative > below {
            if bound.is_infinite() {
                // Past the largest finite bucket: its bound is the best we can say.
                return Some(lower * 1000.0);
            }
            let within = (rank - below as f64) / (*cumulative - below) as f64;
            return Some((lower + (bound - lower) * within) * 1000.0);
        }
        if !bound.is_infinite() {
            lower = *bound;
        }
        below = *cumulative;
    }
    Some(lower * 1000.0)
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds
/// (`2026-12-02T19:30:00.123Z`).
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

fn rounded(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The stats frame's JSON for the interval from `before` to `after`, `secs` long.
pub fn stats_json(
    node: &str,
    unix_ms: u64,
    metrics: &BrokerMetrics,
    before: &Snapshot,
    after: &Snapshot,
    secs: f64,
) -> String {
    let per_s = |a: u64, b: u64| rounded(a.saturating_sub(b) as f64 / secs.max(0.001));
    let p = |q| quantile_ms(&before.fanout_buckets, &after.fanout_buckets, q).map(rounded);
    serde_json::json!({
        "node": node,
        "unix_ms": unix_ms,
        "connections": metrics.connections.get(),
        "subscriptions": metrics.subscriptions.get(),
        "topics": metrics.topics.get(),
        "messages_in_per_s": per_s(after.messages_in, before.messages_in),
        "messages_out_per_s": per_s(after.messages_out, before.messages_out),
        "fanout_latency_ms": {"p50": p(0.5), "p99": p(0.99)},
    })
    .to_string()
}

/// Publishes the system messages every `demo.interval_ms` until `stop`.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let demo = &state.config.demo;
    let every = Duration::from_millis(demo.interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let registry = state.broker.registry();
    // Readings are a few atomic loads and one small vector per interval: taken every tick,
    // so the first frame a new subscriber gets covers one interval, not the time since the
    // last subscriber left.
    let mut before = Snapshot::take(&state.metrics);
    let mut before_at = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let unix_ms = now_ms();
        if registry.topic(&demo.time_topic).is_some() {
            let body = serde_json::json!({
                "node": &*state.node_id,
                "time": rfc3339_ms(unix_ms),
                "unix_ms": unix_ms,
            })
            .to_string();
            let payload = Payload::json(Bytes::from(body));
            state.broker.fan_out(&demo.time_topic, &payload, None);
        }
        let after = Snapshot::take(&state.metrics);
        let now = Instant::now();
        if registry.topic(&demo.stats_topic).is_some() {
            let secs = now.duration_since(before_at).as_secs_f64();
            let body = stats_json(&state.node_id, unix_ms, &state.metrics, &before, &after, secs);
            state
                .broker
                .fan_out(&demo.stats_topic, &Payload::json(Bytes::from(body)), None);
        }
        before = after;
        before_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_796_239_800_123), "2026-12-02T19:30:00.123Z");
    }

    #[test]
    fn quantiles_come_from_bucket_deltas() {
        let before = vec![(0.001, 10), (0.01, 10), (f64::INFINITY, 10)];
        // 100 new samples: 50 under 1 ms, 50 between 1 and 10 ms.
        let after = vec![(0.001, 60), (0.01, 110), (f64::INFINITY, 110)];
        assert_eq!(quantile_ms(&before, &after, 0.5), Some(1.0));
        let p99 = quantile_ms(&before, &after, 0.99).unwrap();
        assert!((p99 - 9.82).abs() < 1e-9, "{p99}");
        assert_eq!(quantile_ms(&before, &before, 0.5), None, "no samples: null");
        // All past the largest bound: that bound.
        let after = vec![(0.001, 10), (0.01, 10), (f64::INFINITY, 20)];
        assert_eq!(quantile_ms(&before, &after, 0.5), Some(10.0));
    }

    #[test]
    fn stats_frames_have_every_field() {
        let m = BrokerMetrics::new();
        let a = Snapshot::take(&m);
        m.delivered.inc_by(10);
        m.fanout_duration.observe(0.002);
        let b = Snapshot::take(&m);
        let v: serde_json::Value = serde_json::from_str(&stats_json("n1", 5, &m, &a, &b, 2.0)).unwrap();
        assert_eq!(v["node"], "n1");
        assert_eq!(v["messages_out_per_s"], 5.0);
        assert_eq!(v["messages_in_per_s"], 0.0);
        assert!(v["fanout_latency_ms"]["p50"].as_f64().unwrap() > 1.0);
        let v: serde_json::Value = serde_json::from_str(&stats_json("n1", 5, &m, &b, &b, 1.0)).unwrap();
        assert!(v["fanout_latency_ms"]["p99"].is_null());
        assert!(v["connections"].is_i64() && v["topics"].is_i64() && v["subscriptions"].is_i64());
    }
}
