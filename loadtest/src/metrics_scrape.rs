//! The node's side of the story: `/metrics` scraped from each `--admin` URL before and after
//! the measured phase, and the difference that matters for a load test (deliveries,
//! drops by reason, process CPU seconds, resident memory, connections).
//!
//! Names are those of `herald-broker`'s metrics module (`herald_` prefix; the process
//! collector's are `herald_process_*`). A missing sample reads as 0, so an older node or
//! another broker with a compatible exporter still yields a partial view.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::client::http;
use crate::client::target::Target;

const DELIVERED: &str = "herald_messages_delivered_total";
const PUBLISHED: &str = "herald_messages_published_total";
const DROPPED: &str = "herald_messages_dropped_total";
const CLOSED: &str = "herald_connections_closed_total";
const CPU: &str = "herald_process_cpu_seconds_total";
const RSS: &str = "herald_process_resident_memory_bytes";
const CONNECTIONS: &str = "herald_connections";

/// One scrape: every `herald_*` sample except histogram series, by full sample name
/// (`name{labels}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| l.starts_with("herald_"))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                let base = name.split('{').next().unwrap_or(name);
                if base.ends_with("_bucket") || base.ends_with("_sum") || base.ends_with("_count") {
                    return None;
                }
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self { samples }
    }

    /// The value of one sample; 0 when absent.
    pub fn get(&self, sample: &str) -> f64 {
        self.samples.get(sample).copied().unwrap_or(0.0)
    }

    /// Sum of a metric over all its label values.
    pub fn sum(&self, metric: &str) -> f64 {
        self.by_label(metric).values().sum::<f64>() + self.get(metric)
    }

    /// A labelled metric's values by the value of its (single) label.
    pub fn by_label(&self, metric: &str) -> BTreeMap<String, f64> {
        let prefix = format!("{metric}{{");
        self.samples
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, v)| {
                let inner = k[prefix.len()..].trim_end_matches('}');
                let value = inner.split_once('=')?.1.trim_matches('"');
                Some((value.to_owned(), *v))
            })
            .collect()
    }
}

/// Fetches and parses `/metrics`.
pub async fn scrape(admin: &Target) -> Result<Scrape, String> {
    match http::get(admin, &admin.endpoint("/metrics"), Duration::from_secs(10)).await {
        Ok((200, body)) => Ok(Scrape::parse(&String::from_utf8_lossy(&body))),
        Ok((status, _)) => Err(format!("/metrics answered HTTP {status}")),
        Err(e) => Err(format!("scraping /metrics failed: {e}")),
    }
}

/// What one node reports about the measured phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerView {
    pub admin: String,
    /// Why the view is missing or partial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub delivered: u64,
    pub published: u64,
    /// Drops by reason (only reasons with drops).
    pub dropped: BTreeMap<String, u64>,
    /// Connections closed by reason during the phase (only reasons that occurred).
    pub closed: BTreeMap<String, u64>,
    pub cpu_seconds: f64,
    /// Server CPU per delivered message, µs.
    pub cpu_us_per_delivery: Option<f64>,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub connections_before: u64,
    pub connections_after: u64,
}

fn delta_map(before: &Scrape, after: &Scrape, metric: &str) -> BTreeMap<String, u64> {
    let b = before.by_label(metric);
    after
        .by_label(metric)
        .into_iter()
        .map(|(k, v)| {
            let d = (v - b.get(&k).copied().unwrap_or(0.0)).max(0.0) as u64;
            (k, d)
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

impl ServerView {
    pub fn between(admin: &str, before: &Scrape, after: &Scrape) -> Self {
        let d = |m: &str| (after.sum(m) - before.sum(m)).max(0.0);
        let delivered = d(DELIVERED) as u64;
        let cpu = d(CPU);
        Self {
            admin: admin.to_owned(),
            error: None,
            delivered,
            published: d(PUBLISHED) as u64,
            dropped: delta_map(before, after, DROPPED),
            closed: delta_map(before, after, CLOSED),
            cpu_seconds: cpu,
            cpu_us_per_delivery: (delivered > 0 && cpu > 0.0).then(|| cpu * 1e6 / delivered as f64),
            rss_before_bytes: before.get(RSS) as u64,
            rss_after_bytes: after.get(RSS) as u64,
            connections_before: before.get(CONNECTIONS) as u64,
            connections_after: after.get(CONNECTIONS) as u64,
        }
    }

    pub fn failed(admin: &str, error: String) -> Self {
        Self {
            admin: admin.to_owned(),
            error: Some(error),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP x\nherald_messages_delivered_total 10\n\
        herald_messages_dropped_total{reason=\"slow_consumer\"} 1\n\
        herald_messages_dropped_total{reason=\"closed\"} 0\n\
        herald_messages_published_total{source=\"websocket\"} 2\n\
        herald_process_cpu_seconds_total 1.5\nherald_process_resident_memory_bytes 1000\n\
        herald_connections 3\nherald_fanout_duration_seconds_bucket{le=\"0.1\"} 4\nother_metric 9\n";
    const AFTER: &str = "herald_messages_delivered_total 1010\n\
        herald_messages_dropped_total{reason=\"slow_consumer\"} 4\n\
        herald_messages_dropped_total{reason=\"closed\"} 0\n\
        herald_messages_published_total{source=\"websocket\"} 3\n\
        herald_messages_published_total{source=\"relay\"} 1\n\
        herald_process_cpu_seconds_total 2.5\nherald_process_resident_memory_bytes 5000\n\
        herald_connections 7\n";

    #[test]
    fn computes_the_server_view() {
        let (b, a) = (Scrape::parse(BEFORE), Scrape::parse(AFTER));
        assert_eq!(b.samples.len(), 7, "{:?}", b.samples);
        let v = ServerView::between("http://x", &b, &a);
        assert_eq!(v.delivered, 1000);
        assert_eq!(v.published, 2);
        assert_eq!(v.dropped, BTreeMap::from([("slow_consumer".to_owned(), 3)]));
        assert!((v.cpu_seconds - 1.0).abs() < 1e-9);
        assert!((v.cpu_us_per_delivery.unwrap() - 1000.0).abs() < 1e-6);
        assert_eq!((v.rss_before_bytes, v.rss_after_bytes), (1000, 5000));
        assert_eq!((v.connections_before, v.connections_after), (3, 7));
    }
}
