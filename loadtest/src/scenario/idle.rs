//! Idle: open `--subscribers` connections (each subscribed to its topic, by default through
//! `?topics=` so no request frame is needed), hold them for `--duration` while answering the
//! node's heartbeat pings, and report the node's memory per connection: the growth of its
//! resident memory (from `/metrics`, scraped before connecting and again at the end of the
//! hold, while every connection is still open) divided by the connections established.
//!
//! RSS rarely shrinks after a process freed memory, so run this against a fresh node; the
//! figure then includes the registry and per-connection buffers, not just sockets.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connect::{open_all, ConnSpec, ConnTally, Side};
use super::Run;
use crate::client::conn::BufSizes;
use crate::client::subscriber::{self, RecvCtx};
use crate::limits::current_rss;
use crate::progress::Phase;
use crate::report::{Idle, Report};
use crate::topics;

/// Idle connections read little: start tiny, never grow large.
const IDLE_BUFS: BufSizes = BufSizes {
    initial: 256,
    max: 4096,
};

pub async fn run(run: Arc<Run>) -> Result<Report> {
    let cfg = &run.cfg;
    let mut report = run.blank_report();
    let rss_before = current_rss();
    let before = run.snapshot().await;

    run.phase.set(Phase::Connect);
    let assignment = topics::assign(
        cfg.subscribers,
        cfg.topics,
        cfg.topics_per_subscriber,
        cfg.distribution,
        cfg.seed,
    );
    let specs = assignment
        .iter()
        .enumerate()
        .map(|(i, t)| ConnSpec {
            target: i % run.sub_targets.len(),
            topics: match cfg.subscribe_via {
                crate::cli::SubscribeVia::None => Vec::new(),
                _ => t.iter().map(|&k| topics::name(&cfg.topic_prefix, k)).collect(),
            },
            token: None,
            request: None,
        })
        .collect();
    let opened = open_all(&run, Side::Sub, specs, cfg.subscribe_via, cfg.ramp_up, IDLE_BUFS).await;
    report.phases.connect_s = opened.elapsed.as_secs_f64();
    let mut tally = ConnTally::new();
    tally.merge(&opened);
    tally.finish(&mut report);

    let stop = CancellationToken::new();
    let ctx = RecvCtx {
        shared: run.shared.clone(),
        clock: run.clock,
        publishers: 0,
    };
    let mut held = JoinSet::new();
    for (i, (c, t)) in opened.conns.into_iter().zip(assignment).enumerate() {
        if let Some(c) = c {
            held.spawn(subscriber::receive(c, i, t, ctx.clone(), stop.child_token()));
        }
    }
    let connections = held.len() as u64;

    run.phase.set(Phase::Measure);
    let start = Instant::now();
    run.sleep(cfg.duration).await;
    let hold = start.elapsed();
    let after = run.snapshot().await;
    let rss_after = current_rss();

    run.phase.set(Phase::Close);
    stop.cancel();
    let mut ended = std::collections::BTreeMap::new();
    while let Some(j) = held.join_next().await {
        if let Ok(Some(why)) = j.map(|o| o.ended_early) {
            *ended.entry(why).or_insert(0u64) += 1;
        }
    }
    report.connections.ended_early = ended;
    report.phases.measured_s = hold.as_secs_f64();
    run.fill_views(&mut report, &before, &after, 0);
    // Node memory growth: from /proc when pids are given (page-exact), else from /metrics.
    let grown: Option<i64> = if report.processes.is_empty() {
        report
            .servers
            .iter()
            .map(|s| {
                s.error
                    .is_none()
                    .then(|| s.rss_after_bytes as i64 - s.rss_before_bytes as i64)
            })
            .sum::<Option<i64>>()
            .filter(|_| !report.servers.is_empty())
    } else {
        report
            .processes
            .iter()
            .map(|p| {
                p.error
                    .is_none()
                    .then(|| p.rss_after_bytes as i64 - p.rss_before_bytes as i64)
            })
            .sum()
    };
    let per = |bytes: i64| (connections > 0).then(|| bytes as f64 / connections as f64);
    report.idle = Some(Idle {
        connections,
        hold_s: hold.as_secs_f64(),
        server_bytes_per_connection: grown.and_then(per),
        generator_bytes_per_connection: rss_before.zip(rss_after).and_then(|(b, a)| per(a as i64 - b as i64)),
    });
    Ok(report)
}
