//! Running a scenario: resolve and check the targets, raise the fd limit, plan source
//! addresses, start the live line, run the scenario's phases under a hard deadline, and
//! put the report together.
//!
//! The scenarios themselves are in `pubsub.rs` (fan-out, many topics, cross-node),
//! `churn.rs` and `idle.rs`; opening many connections is shared in `connect.rs`; the
//! reconnecting subscribers of recovery mode (`--drop-every`) are in `recovery.rs`.

mod churn;
mod connect;
mod idle;
mod observe;
mod pubsub;
mod recovery;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::cli::{Config, Scenario};
use crate::client::target::{self, Target};
use crate::limits::{self, SourcePlan};
use crate::progress::{self, PhaseCell};
use crate::report::{Plan, Report};
use crate::stats::{Clock, Shared};

/// Everything the phases of one run share.
pub struct Run {
    pub cfg: Config,
    pub clock: Clock,
    pub shared: Arc<Shared>,
    /// Cancelled by the operator (Ctrl-C): phases end early and the report is still made.
    pub abort: CancellationToken,
    pub pub_targets: Vec<Target>,
    pub sub_targets: Vec<Target>,
    pub admin_targets: Vec<Target>,
    pub phase: Arc<PhaseCell>,
    /// CPUs the generator can use.
    pub cores: usize,
    sources: HashMap<SocketAddr, (SourcePlan, AtomicU64)>,
    /// Signs the clients' tokens (`--jwt-secret` / `--jwt-key`).
    pub jwt: Option<crate::jwt::Minter>,
    warnings: Mutex<Vec<String>>,
}

impl Run {
    /// The source address for the next connection to `addr` (None: the kernel's choice).
    pub fn next_source(&self, addr: SocketAddr) -> Option<std::net::IpAddr> {
        let (plan, next) = self.sources.get(&addr)?;
        plan.source(next.fetch_add(1, Ordering::Relaxed))
    }

    pub fn warn(&self, w: impl Into<String>) {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).push(w.into());
    }

    /// Sleeps for `d` unless the run is aborted first; false when aborted.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.abort.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// An empty report for this run, for a scenario to fill in.
    pub fn blank_report(&self) -> Report {
        Report {
            scenario: self.cfg.scenario,
            plan: self.plan(),
            phases: Default::default(),
            connections: Default::default(),
            messages: None,
            latency_us: None,
            send_lag_us: None,
            recovery: None,
            churn: None,
            idle: None,
            generator: Default::default(),
            servers: Vec::new(),
            processes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn plan(&self) -> Plan {
        let c = &self.cfg;
        let pub_urls = match c.publish_via {
            crate::cli::PublishVia::Ws => c.pub_urls.clone(),
            crate::cli::PublishVia::Http => c
                .admin
                .iter()
                .map(|a| format!("{}/api/publish", a.trim_end_matches('/')))
                .collect(),
        };
        Plan {
            pub_urls,
            sub_urls: c.sub_urls.clone(),
            subscribers: c.subscribers,
            publishers: c.publishers,
            topics: c.topics,
            distribution: c.distribution,
            topics_per_subscriber: c.topics_per_subscriber,
            subscribe_via: c.subscribe_via,
            publish_via: c.publish_via,
            rate: c.rate,
            window: c.window,
            payload_size: c.payload_size,
            duration_s: c.duration.as_secs_f64(),
            topic_prefix: c.topic_prefix.clone(),
            seed: c.seed,
        }
    }
}

/// How many WebSocket connections of a run go to each address.
fn connections_per_addr(cfg: &Config, pubs: &[Target], subs: &[Target]) -> HashMap<SocketAddr, u64> {
    let mut per: HashMap<SocketAddr, u64> = HashMap::new();
    for i in 0..cfg.subscribers {
        *per.entry(subs[i % subs.len()].addr).or_default() += 1;
    }
    if cfg.publish_via == crate::cli::PublishVia::Ws {
        for i in 0..cfg.publishers {
            *per.entry(pubs[i % pubs.len()].addr).or_default() += 1;
        }
    }
    per
}

/// Runs the plan and returns its report. `abort` ends the run early (the report covers
/// what happened until then).
pub async fn run(cfg: Config, abort: CancellationToken) -> Result<Report> {
    let started = Instant::now();
    let mut pub_targets = Vec::new();
    if cfg.publish_via == crate::cli::PublishVia::Ws {
        for u in &cfg.pub_urls {
            pub_targets.push(target::ws(u).await?);
        }
    }
    let mut sub_targets = Vec::new();
    for u in &cfg.sub_urls {
        sub_targets.push(target::ws(u).await?);
    }
    let mut admin_targets = Vec::new();
    for u in &cfg.admin {
        admin_targets.push(target::http(u).await?);
    }
    let all: Vec<&Target> = pub_targets.iter().chain(&sub_targets).chain(&admin_targets).collect();
    target::check_loopback(&all, cfg.i_own_the_target)?;

    let per_addr = connections_per_addr(&cfg, &pub_targets, &sub_targets);
    let sockets = (cfg.subscribers + cfg.publishers + cfg.admin.len()) as u64;
    let fd_limit = limits::raise_nofile(sockets)?;
    let mut sources = HashMap::new();
    for (addr, n) in &per_addr {
        let v4_loopback = matches!(addr, SocketAddr::V4(a) if a.ip().is_loopback());
        let plan = SourcePlan::new(*n, v4_loopback).with_context(|| format!("connections to {addr}"))?;
        sources.insert(*addr, (plan, AtomicU64::new(0)));
    }
    let lifetime = cfg.ramp_up + cfg.connect_timeout * 3 + cfg.settle + cfg.duration + cfg.drain;
    let jwt = match &cfg.jwt {
        Some(plan) => Some(crate::jwt::Minter::new(
            plan.clone(),
            &cfg.topic_prefix,
            cfg.topics,
            lifetime,
        )?),
        None => None,
    };
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = Arc::new(Run {
        cores: workers.min(cpus).max(1),
        clock: Clock::new(),
        shared: Arc::new(Shared::new()),
        abort,
        pub_targets,
        sub_targets,
        admin_targets,
        phase: Arc::new(PhaseCell::default()),
        sources,
        jwt,
        warnings: Mutex::new(Vec::new()),
        cfg,
    });
    if run.sources.values().any(|(p, _)| p.spreads()) {
        run.warn(format!(
            "spreading connections over source addresses 127.0.0.x (fd limit {fd_limit})"
        ));
    }
    let live_stop = CancellationToken::new();
    let live =
        (!run.cfg.quiet).then(|| progress::spawn(run.shared.clone(), run.phase.clone(), run.cores, live_stop.clone()));

    // Every phase is bounded on its own; this deadline is the backstop.
    let c = &run.cfg;
    let bound = c.ramp_up + c.connect_timeout * 3 + c.settle + c.duration + c.drain + Duration::from_secs(60);
    let result = tokio::time::timeout(bound, async {
        match run.cfg.scenario {
            Scenario::Fanout | Scenario::ManyTopics | Scenario::CrossNode => pubsub::run(run.clone()).await,
            Scenario::Churn => churn::run(run.clone()).await,
            Scenario::Idle => idle::run(run.clone()).await,
        }
    })
    .await;
    live_stop.cancel();
    if let Some(h) = live {
        let _ = h.await;
    }
    let mut report = match result {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the run passed its hard deadline of {bound:?} and was stopped"),
    };
    report.phases.total_s = started.elapsed().as_secs_f64();
    report
        .warnings
        .extend(run.warnings.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
    if run.abort.is_cancelled() {
        report
            .warnings
            .push("the run was interrupted; figures cover the part that ran".into());
    }
    Ok(report)
}
