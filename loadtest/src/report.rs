//! The result of a run: one [`Report`] serialised as JSON (`--json`) or rendered as a
//! summary table (`render.rs`), and the pass/fail judgement of `--check`.
//!
//! Units: times in the JSON are seconds (`*_s`) or microseconds (`*_us`), sizes bytes, rates
//! per second. The report holds numbers only; it does no I/O.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::{PublishVia, Rate, Scenario, SubscribeVia};
use crate::metrics_scrape::ServerView;
use crate::procstat::ProcView;
use crate::stats::Percentiles;
use crate::topics::Distribution;

pub mod render;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub plan: Plan,
    pub phases: Phases,
    pub connections: Connections,
    /// Pub/sub scenarios.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Messages>,
    /// End-to-end latency of deliveries, µs, from the scheduled send time (fixed rate) or
    /// the actual send time (max rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Percentiles>,
    /// How far behind schedule publishers sent (fixed rate only), µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Idle>,
    pub generator: Generator,
    /// One entry per `--admin` URL.
    pub servers: Vec<ServerView>,
    /// One entry per `--server-pid`.
    pub processes: Vec<ProcView>,
    pub warnings: Vec<String>,
}

/// What was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub pub_urls: Vec<String>,
    pub sub_urls: Vec<String>,
    pub subscribers: usize,
    pub publishers: usize,
    pub topics: u32,
    pub distribution: Distribution,
    pub topics_per_subscriber: usize,
    pub subscribe_via: SubscribeVia,
    pub publish_via: PublishVia,
    pub rate: Rate,
    pub window: Option<u64>,
    pub payload_size: usize,
    pub duration_s: f64,
    pub topic_prefix: String,
    pub seed: u64,
}

/// How long each phase took, seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Opening (and subscribing) the connections.
    pub connect_s: f64,
    /// The measured phase: publishing, cycling (churn) or holding (idle).
    pub measured_s: f64,
    /// Waiting for the last deliveries after publishing stopped.
    pub drain_s: f64,
    pub total_s: f64,
}

/// Connection set-up and how connections ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    pub attempted: u64,
    pub established: u64,
    /// Failed attempts by reason.
    pub failed: BTreeMap<String, u64>,
    /// Connect + upgrade + subscribe time, µs.
    pub setup_us: Option<Percentiles>,
    /// Connections that ended before the run closed them, by reason.
    pub ended_early: BTreeMap<String, u64>,
}

/// Publications and deliveries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Messages {
    pub published: u64,
    pub published_per_s: f64,
    /// Error frames or non-2xx answers to publishes.
    pub publish_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_publish_error: Option<String>,
    /// Σ over published messages of their topic's subscriber count.
    pub expected: u64,
    /// Deliveries with this run's stamp, duplicates included.
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// expected − (received − duplicates).
    pub lost: u64,
    /// Messages on our topics that this run did not publish.
    pub foreign: u64,
    /// received / (measured + drain time until the last delivery).
    pub delivered_per_s: f64,
    /// Error frames received by subscribers.
    pub subscriber_errors: u64,
}

/// The churn scenario's cycles (connect, subscribe, close).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Churn {
    pub workers: usize,
    pub cycles: u64,
    pub cycles_per_s: f64,
    pub failures: BTreeMap<String, u64>,
    /// Connect + upgrade + subscribe time of successful cycles, µs.
    pub connect_us: Option<Percentiles>,
}

/// The idle scenario's memory figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    pub connections: u64,
    pub hold_s: f64,
    /// Node RSS growth (first `--admin` node after − before) divided by connections.
    pub server_bytes_per_connection: Option<f64>,
    /// The generator's own RSS growth per connection.
    pub generator_bytes_per_connection: Option<f64>,
}

/// The generator's own cost, so a saturated generator is visible.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Generator {
    /// CPUs the generator could use (worker threads, bounded by its CPU affinity).
    pub cores: usize,
    /// User + system CPU seconds during the measured phase and drain.
    pub cpu_s: f64,
    /// The system (kernel) part of `cpu_s`: socket I/O and loopback TCP work.
    pub cpu_system_s: f64,
    /// cpu_s / (wall time × cores).
    pub cpu_utilisation: f64,
    /// CPU µs per delivery received (pub/sub scenarios).
    pub cpu_us_per_delivery: Option<f64>,
    pub max_rss_bytes: u64,
    /// Time its threads were runnable but waiting for a CPU (other processes on the
    /// machine), seconds.
    pub waited_for_cpu_s: f64,
    /// Above 90% utilisation: the figures may measure the generator, not the node.
    pub saturated: bool,
}

impl Report {
    /// Whether nothing was lost, duplicated, reordered, refused or failed (`--check`).
    pub fn passed(&self) -> bool {
        let m = self.messages.as_ref();
        self.connections.failed.is_empty()
            && self.connections.ended_early.is_empty()
            && m.is_none_or(|m| m.lost == 0 && m.duplicates == 0 && m.out_of_order == 0 && m.publish_errors == 0)
            && self.churn.as_ref().is_none_or(|c| c.failures.is_empty())
    }

    /// The summary table.
    pub fn render(&self) -> String {
        render::render(self)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }
}
