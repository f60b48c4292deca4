//! Observing the processes around a measured phase: a [`Snapshot`] before and after holds
//! each node's `/metrics`, the generator's own CPU (`getrusage`) and run delay, and each
//! `--server-pid`'s `/proc` figures; [`Run::fill_views`] turns two snapshots into the
//! report's generator, server and process sections, with warnings when a figure is not to
//! be trusted (a saturated or starved generator, whole-second server CPU).

use std::time::Instant;

use super::Run;
use crate::limits::Usage;
use crate::metrics_scrape::{self, Scrape, ServerView};
use crate::procstat::{self, ProcView, Sample};
use crate::report::{Generator, Report};

/// The state of every observed process at one moment.
pub struct Snapshot {
    pub at: Instant,
    usage: Usage,
    me: Option<Sample>,
    pids: Vec<Option<Sample>>,
    pub scrapes: Vec<Result<Scrape, String>>,
}

impl Run {
    /// Scrapes every admin URL (one after the other), then reads the local processes.
    pub async fn snapshot(&self) -> Snapshot {
        let mut scrapes = Vec::with_capacity(self.admin_targets.len());
        for t in &self.admin_targets {
            scrapes.push(metrics_scrape::scrape(t).await);
        }
        Snapshot {
            at: Instant::now(),
            usage: Usage::now(),
            me: procstat::sample("self"),
            pids: self
                .cfg
                .server_pids
                .iter()
                .map(|p| procstat::sample(&p.to_string()))
                .collect(),
            scrapes,
        }
    }

    /// Fills the generator, server and process sections from two snapshots;
    /// `deliveries` is what the generator received in between (0 if not pub/sub).
    pub fn fill_views(&self, report: &mut Report, before: &Snapshot, after: &Snapshot, deliveries: u64) {
        let wall = after.at.saturating_duration_since(before.at).as_secs_f64().max(1e-3);
        let cpu = after.usage.cpu_s() - before.usage.cpu_s();
        // getrusage ticks are coarse: a share of a phase shorter than 0.1 s means nothing.
        let util = if wall < 0.1 {
            0.0
        } else {
            cpu / (wall * self.cores as f64)
        };
        let waited = match (before.me, after.me) {
            (Some(b), Some(a)) => a.run_delay_s - b.run_delay_s,
            _ => 0.0,
        };
        report.generator = Generator {
            cores: self.cores,
            cpu_s: cpu,
            cpu_system_s: after.usage.system_s - before.usage.system_s,
            cpu_utilisation: util,
            cpu_us_per_delivery: (deliveries > 0).then(|| cpu * 1e6 / deliveries as f64),
            max_rss_bytes: after.usage.max_rss_bytes,
            waited_for_cpu_s: waited,
            saturated: util > 0.9,
        };
        if util > 0.9 {
            self.warn(format!(
                "the generator used {:.0}% of its {} core(s): it may be the bottleneck; give it more cores \
                 (--threads, taskset) or run several generators",
                util * 100.0,
                self.cores
            ));
        }
        if waited > 0.1 * wall {
            self.warn(format!(
                "the generator waited {waited:.2} s for a CPU during the {wall:.2} s phase: other processes \
                 compete for this machine and every figure is pessimistic"
            ));
        }
        report.servers = self
            .admin_targets
            .iter()
            .zip(before.scrapes.iter().zip(&after.scrapes))
            .map(|(t, pair)| match pair {
                (Ok(b), Ok(a)) => ServerView::between(&t.url, b, a),
                (Err(e), _) | (_, Err(e)) => ServerView::failed(&t.url, e.clone()),
            })
            .collect();
        if !report.servers.is_empty() && self.cfg.server_pids.is_empty() && wall < 60.0 {
            self.warn(
                "node CPU from /metrics counts whole seconds (Prometheus process collector); for precise \
                 CPU per delivery pass --server-pid or run longer",
            );
        }
        report.processes = self
            .cfg
            .server_pids
            .iter()
            .zip(before.pids.iter().zip(&after.pids))
            .map(|(&pid, (b, a))| ProcView::between(pid, *b, *a, wall, deliveries))
            .collect();
        for p in &report.processes {
            if p.waited_for_cpu_s > 0.1 * wall {
                self.warn(format!(
                    "process {} waited {:.2} s for a CPU: it shares its cores with other work",
                    p.pid, p.waited_for_cpu_s
                ));
            }
        }
    }
}
