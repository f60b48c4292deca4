//! Churn: `--subscribers` workers each connect, subscribe (and wait for the ack), and close
//! (Close 1000, then wait for the node to close the TCP connection so TIME_WAIT lands on
//! the node), over and over for `--duration`, at `--rate` cycles per second in total (or as
//! fast as they can). Reports cycles per second, failures by reason and the
//! connect-to-ack time. A fixed rate is a schedule shared by all workers: slot n starts at
//! `start + n / rate`, whichever worker is free.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::task::JoinSet;

use super::connect::{open_one, ConnSpec};
use super::Run;
use crate::cli::Rate;
use crate::client::conn::BufSizes;
use crate::progress::Phase;
use crate::report::{Churn, Report};
use crate::stats::{histogram, Percentiles};
use crate::topics;

/// How long a closing cycle waits for the node's close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

pub async fn run(run: Arc<Run>) -> Result<Report> {
    let cfg = &run.cfg;
    let mut report = run.blank_report();
    let before = run.snapshot().await;
    // One token per topic (a churned connection subscribes to one), signed before the clock starts.
    let tokens: Arc<Vec<Arc<str>>> = Arc::new(match &run.jwt {
        Some(m) => {
            let names: Vec<[String; 1]> = (0..cfg.topics).map(|k| [topics::name(&cfg.topic_prefix, k)]).collect();
            m.mint_all(false, names.iter().map(|n| n.as_slice()))?
        }
        None => Vec::new(),
    });
    run.phase.set(Phase::Measure);
    let start = Instant::now();
    let end = start + cfg.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..cfg.subscribers {
        let (run, next, tokens) = (run.clone(), next.clone(), tokens.clone());
        workers.spawn(async move {
            let cfg = &run.cfg;
            let mut setup = histogram();
            let mut failures: BTreeMap<String, u64> = BTreeMap::new();
            let mut cycles = 0u64;
            loop {
                let slot = next.fetch_add(1, Ordering::Relaxed);
                if slot >= cfg.messages {
                    break;
                }
                if let Rate::PerSec(r) = cfg.rate {
                    let at = start + Duration::from_secs_f64(slot as f64 / r);
                    if at >= end {
                        break;
                    }
                    tokio::select! {
                        _ = run.abort.cancelled() => break,
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                if Instant::now() >= end || run.abort.is_cancelled() {
                    break;
                }
                let spec = ConnSpec {
                    target: slot as usize % run.sub_targets.len(),
                    topics: vec![topics::name(&cfg.topic_prefix, (slot % cfg.topics as u64) as u32)],
                    token: tokens.get((slot % cfg.topics as u64) as usize).cloned(),
                    request: None,
                };
                let target = &run.sub_targets[spec.target];
                let bufs = BufSizes {
                    initial: 1024,
                    max: 8192,
                };
                let t0 = Instant::now();
                match open_one(&run, target, &spec, cfg.subscribe_via, bufs, cfg.seed ^ slot).await {
                    Ok(conn) => {
                        setup.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                        run.shared.connected.fetch_add(1, Ordering::Relaxed);
                        conn.close(CLOSE_WAIT).await;
                        cycles += 1;
                    }
                    Err(e) => *failures.entry(e.label()).or_default() += 1,
                }
            }
            (cycles, failures, setup)
        });
    }
    let mut churn = Churn {
        workers: cfg.subscribers,
        ..Churn::default()
    };
    let mut setup = histogram();
    while let Some(j) = workers.join_next().await {
        let Ok((cycles, failures, h)) = j else { continue };
        churn.cycles += cycles;
        for (k, v) in failures {
            *churn.failures.entry(k).or_default() += v;
        }
        let _ = setup.add(&h);
    }
    let measured = start.elapsed();
    let after = run.snapshot().await;
    churn.cycles_per_s = churn.cycles as f64 / measured.as_secs_f64().max(1e-3);
    churn.connect_us = Percentiles::of(&setup);
    report.connections.attempted = churn.cycles + churn.failures.values().sum::<u64>();
    report.connections.established = churn.cycles;
    report.connections.failed = churn.failures.clone();
    report.connections.setup_us = churn.connect_us;
    report.phases.measured_s = measured.as_secs_f64();
    run.fill_views(&mut report, &before, &after, 0);
    report.churn = Some(churn);
    Ok(report)
}
