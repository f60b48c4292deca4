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
    /// Recovery mode (`--drop-every`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
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

/// Recovery mode: how subscribers dropped and came back, and what the history replay
/// delivered, counted by offset per (subscriber, topic) pair (see `recovery::book`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    pub drop_every_s: f64,
    pub jitter: f64,
    pub away_s: f64,
    /// Connections the generator dropped on schedule.
    pub drops: u64,
    /// Successful reconnects (subscribed with `since` and acknowledged).
    pub reconnects: u64,
    /// Failed reconnect attempts by reason (each is retried after 100 ms).
    pub reconnect_failures: BTreeMap<String, u64>,
    /// Connect + upgrade + subscribe ack of the reconnects, µs.
    pub reconnect_us: Option<Percentiles>,
    /// Topics of resubscribes the node answered `recovered: false` (or not at all).
    pub not_recovered: u64,
    /// Subscriptions the node ended with `recovery_overflow` (resubscribed at once).
    pub overflows: u64,
    /// Subscribers whose first ack had no position: their topics have no history.
    pub no_history: u64,
    /// (subscriber, topic) pairs accounted, and those that got every owed offset once.
    pub pairs: u64,
    pub complete_pairs: u64,
    /// Distinct offsets owed: per pair, the final head − the first ack's position.
    pub owed: u64,
    /// Distinct offsets received.
    pub received: u64,
    pub missing: u64,
    /// Of `missing`: the tail between a pair's highest offset and the final head.
    pub behind_head: u64,
    /// Offsets received again (or at or below the start position).
    pub duplicates: u64,
    pub out_of_order: u64,
    pub epoch_changes: u64,
    /// received / owed (1 when nothing was owed).
    pub completeness: f64,
    /// Whether the final head of every topic was read from the node after the drain; if
    /// not, `owed` ends at each pair's highest offset seen and a lost tail goes unseen.
    pub heads_known: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_probe_error: Option<String>,
    /// From the start of a reconnect to the first message of the topic published after
    /// that start, µs: one sample per (reconnect, topic).
    pub replay_us: Option<Percentiles>,
    /// (reconnect, topic) pairs that saw no such message before the next drop or the end.
    pub replay_unmeasured: u64,
}

impl Recovery {
    /// Whether every owed offset arrived exactly once and in order, with no loss reported.
    pub fn passed(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.not_recovered == 0
            && self.overflows == 0
            && self.no_history == 0
            && self.reconnect_failures.is_empty()
            && self.heads_known
    }
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
            && self.recovery.as_ref().is_none_or(Recovery::passed)
    }

    /// The summary table.
    pub fn render(&self) -> String {
        render::render(self)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }
}
