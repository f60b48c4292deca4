//! Fan-out, many-topics and cross-node: subscribers connect and subscribe, the cluster
//! settles, publishers publish for the measured phase, the run drains the deliveries still
//! in flight, and every message is accounted for.
//!
//! Phases: connect subscribers → settle → connect publishers → scrape nodes → publish
//! (measured) → drain (until every expected delivery arrived, or `--drain` passed, or
//! deliveries stopped for that long) → scrape nodes → close everything. Expected deliveries
//! count only the subscribers that were established, so a failed connect shows as a
//! connect failure, not as loss.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connect::{open_all, ConnSpec, ConnTally, Side};
use super::{recovery, Run};
use crate::cli::{PublishVia, Rate, SubscribeVia};
use crate::client::conn::BufSizes;
use crate::client::http::HttpSink;
use crate::client::publisher::{self, PubCtx, PubOutcome, PubPlan};
use crate::client::subscriber::{self, RecvCtx, SubOutcome};
use crate::client::ws_sink::{self, WsSink};
use crate::progress::Phase;
use crate::report::{Messages, Report};
use crate::stats::{histogram, Percentiles};
use crate::topics;

/// Subscriber read buffers: 4 KiB to start, doubling under load up to 64 KiB, or less when
/// there are so many subscribers that all of them at 64 KiB would pass 128 MiB.
fn sub_bufs(subscribers: usize) -> BufSizes {
    BufSizes {
        initial: 4096,
        max: ((128 << 20) / subscribers.max(1)).clamp(8 << 10, 64 << 10),
    }
}

/// A publisher's sink and, for WebSocket ones, its reader task.
enum Publisher {
    Ws(WsSink, tokio::task::JoinHandle<Option<String>>),
    Http(Box<HttpSink>),
}

pub async fn run(run: Arc<Run>) -> Result<Report> {
    let cfg = &run.cfg;
    let mut report = run.blank_report();
    let names: Arc<Vec<String>> = Arc::new((0..cfg.topics).map(|i| topics::name(&cfg.topic_prefix, i)).collect());
    let assignment = topics::assign(
        cfg.subscribers,
        cfg.topics,
        cfg.topics_per_subscriber,
        cfg.distribution,
        cfg.seed,
    );

    // Subscribers.
    run.phase.set(Phase::Connect);
    let mut specs: Vec<ConnSpec> = assignment
        .iter()
        .enumerate()
        .map(|(i, t)| ConnSpec {
            target: i % run.sub_targets.len(),
            topics: t.iter().map(|&k| names[k as usize].clone()).collect(),
            token: None,
            request: None,
        })
        .collect();
    if let (Some(_), Some(m)) = (&cfg.recovery, &run.jwt) {
        // Reconnects reuse the tokens: mint them here, where the specs are kept.
        match m.mint_all(false, specs.iter().map(|s| s.topics.as_slice())) {
            Ok(tokens) => specs.iter_mut().zip(tokens).for_each(|(s, t)| s.token = Some(t)),
            Err(e) => run.warn(format!("minting tokens failed ({e}); clients connect without one")),
        }
    }
    let kept_specs = cfg.recovery.is_some().then(|| specs.clone());
    let bufs = sub_bufs(cfg.subscribers);
    let opened = open_all(&run, Side::Sub, specs, cfg.subscribe_via, cfg.ramp_up, bufs).await;
    let mut connect_s = opened.elapsed.as_secs_f64();
    let mut conns = ConnTally::new();
    conns.merge(&opened);
    let established: Vec<_> = assignment
        .into_iter()
        .zip(opened.conns)
        .enumerate()
        .filter_map(|(i, (t, c))| c.map(|c| (i, t, c)))
        .collect();
    let live_topics: Vec<Vec<u32>> = established.iter().map(|(_, t, _)| t.clone()).collect();
    let subscribers_of = Arc::new(topics::subscribers_per_topic(&live_topics, cfg.topics));
    let subscriptions: u64 = subscribers_of.iter().sum();

    let recv_stop = CancellationToken::new();
    let ctx = RecvCtx {
        shared: run.shared.clone(),
        clock: run.clock,
        publishers: cfg.publishers,
    };
    let mut receivers = JoinSet::new();
    // Recovery mode: subscribers start their drop schedule with the measured phase.
    let mut recovering = Vec::new();
    for (n, (i, t, c)) in established.into_iter().enumerate() {
        match &kept_specs {
            Some(specs) => recovering.push((n, specs[i].clone(), t, c)),
            None => {
                receivers.spawn(subscriber::receive(c, n, t, ctx.clone(), recv_stop.child_token()));
            }
        }
    }

    run.phase.set(Phase::Settle);
    run.sleep(cfg.settle).await;

    // Publishers.
    run.phase.set(Phase::Connect);
    let first_error = Arc::new(Mutex::new(None));
    let mut sinks = Vec::new();
    let t0 = Instant::now();
    match cfg.publish_via {
        PublishVia::Ws => {
            let specs = (0..cfg.publishers)
                .map(|i| ConnSpec {
                    target: i % run.pub_targets.len(),
                    topics: Vec::new(),
                    token: None,
                    request: None,
                })
                .collect();
            let bufs = BufSizes {
                initial: 1024,
                max: 64 * 1024,
            };
            let opened = open_all(&run, Side::Pub, specs, SubscribeVia::Op, Duration::ZERO, bufs).await;
            conns.merge(&opened);
            for (i, c) in opened.conns.into_iter().enumerate() {
                if let Some(c) = c {
                    let (sink, reader) = ws_sink::split(c, run.shared.clone(), first_error.clone(), recv_stop.clone());
                    sinks.push((i as u32, Publisher::Ws(sink, reader)));
                }
            }
        }
        PublishVia::Http => {
            for i in 0..cfg.publishers {
                let target = run.admin_targets[i % run.admin_targets.len()].clone();
                let sink = HttpSink::new(target, cfg.api_key.as_deref(), run.shared.clone());
                sinks.push((i as u32, Publisher::Http(Box::new(sink))));
            }
        }
    }
    connect_s += t0.elapsed().as_secs_f64();
    conns.finish(&mut report);

    // Measured phase.
    let before = run.snapshot().await;
    run.phase.set(Phase::Measure);
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut recovery_set = JoinSet::new();
    for (n, spec, t, c) in recovering {
        recovery_set.spawn(recovery::subscriber(
            run.clone(),
            n,
            spec,
            t,
            c,
            ctx.clone(),
            bufs,
            (start, end),
            recv_stop.child_token(),
        ));
    }
    let pub_stop = CancellationToken::new();
    let pctx = PubCtx {
        shared: run.shared.clone(),
        clock: run.clock,
        topic_names: names.clone(),
        subscribers_of: subscribers_of.clone(),
        window: cfg.window.map(|w| w.saturating_mul(subscriptions.max(1))),
        start,
        end,
        stop: pub_stop.clone(),
    };
    let n_pubs = sinks.len().max(1) as u64;
    let (rate, limit) = match cfg.rate {
        Rate::PerSec(r) => (Some(r / n_pubs as f64), cfg.messages),
        Rate::Max => (None, cfg.messages),
    };
    let mut pubs = JoinSet::new();
    for (k, (id, p)) in sinks.into_iter().enumerate() {
        let plan = PubPlan {
            id,
            topics: topics::publisher_cycle(id as usize, cfg.publishers, cfg.topics),
            rate,
            // Share the total cap; the first publishers take the remainder.
            limit: if limit == u64::MAX {
                u64::MAX
            } else {
                limit / n_pubs + u64::from((k as u64) < limit % n_pubs)
            },
            payload_size: cfg.payload_size,
        };
        let pctx = pctx.clone();
        pubs.spawn(async move {
            match p {
                Publisher::Ws(sink, reader) => {
                    let (o, sink) = publisher::run(sink, plan, pctx).await;
                    (o, Publisher::Ws(sink, reader))
                }
                Publisher::Http(sink) => {
                    let (o, sink) = publisher::run(*sink, plan, pctx).await;
                    (o, Publisher::Http(Box::new(sink)))
                }
            }
        });
    }
    let abort_watch = {
        let (abort, stop) = (run.abort.clone(), pub_stop.clone());
        tokio::spawn(async move {
            abort.cancelled().await;
            stop.cancel();
        })
    };
    let mut outcomes: Vec<PubOutcome> = Vec::new();
    let mut held = Vec::new();
    while let Some(j) = pubs.join_next().await {
        if let Ok((o, p)) = j {
            outcomes.push(o);
            held.push(p);
        }
    }
    abort_watch.abort();
    // A fixed-rate plan that sent everything early (its last message is scheduled up to
    // 1/rate before the end) still spans the whole --duration.
    if matches!(cfg.rate, Rate::PerSec(_)) && cfg.messages == u64::MAX && !run.abort.is_cancelled() {
        tokio::time::sleep_until(end.into()).await;
    }
    let measured = start.elapsed();

    // Drain.
    run.phase.set(Phase::Drain);
    let drain_start = Instant::now();
    let mut last = (run.shared.delivered(), Instant::now());
    while run.shared.delivered() < run.shared.expected.load(Ordering::Relaxed)
        && drain_start.elapsed() < cfg.drain
        && !run.abort.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let d = run.shared.delivered();
        if d != last.0 {
            last = (d, Instant::now());
        }
    }
    // Deliveries ran from the first publish to the last delivery seen.
    let delivering = last.1.saturating_duration_since(start).max(measured);
    let after = run.snapshot().await;
    // Recovery mode: every topic's final head, read after the drain.
    let heads = match cfg.recovery {
        Some(_) if !recovery_set.is_empty() => {
            let held: Vec<String> = (0..cfg.topics)
                .filter(|&k| subscribers_of[k as usize] > 0)
                .map(|k| names[k as usize].clone())
                .collect();
            Some(recovery::final_heads(&run, &held).await)
        }
        _ => None,
    };

    // Close and collect.
    run.phase.set(Phase::Close);
    recv_stop.cancel();
    let mut subs = SubOutcome::default();
    let mut ended = BTreeMap::new();
    while let Some(j) = receivers.join_next().await {
        let Ok(o) = j else { continue };
        subs.add(&o);
        if let Some(why) = o.ended_early {
            *ended.entry(why).or_insert(0u64) += 1;
        }
    }
    if let (Some(plan), Some(heads)) = (&cfg.recovery, heads) {
        let mut outcomes = Vec::new();
        while let Some(j) = recovery_set.join_next().await {
            if let Ok(o) = j {
                outcomes.push(o);
            }
        }
        if let Some(why) = outcomes.iter().find_map(|o| o.no_history.clone()) {
            run.warn(format!("recovery mode: {why}"));
        }
        let (section, counted, their_ended) = recovery::tally(plan, outcomes, heads);
        subs.add(&counted);
        for (k, v) in their_ended {
            *ended.entry(k).or_insert(0u64) += v;
        }
        report.recovery = Some(section);
    }
    for p in held {
        match p {
            Publisher::Ws(sink, reader) => {
                sink.close().await;
                if let Ok(Some(why)) = reader.await {
                    *ended.entry(why).or_insert(0u64) += 1;
                }
            }
            Publisher::Http(sink) => {
                if let Some(e) = sink.first_error {
                    first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                }
            }
        }
    }
    let mut lag = histogram();
    for o in &outcomes {
        let _ = lag.add(&o.send_lag);
        if let Some(why) = &o.ended_early {
            *ended.entry(why.clone()).or_insert(0u64) += 1;
        }
    }

    let published = run.shared.published.load(Ordering::Relaxed);
    let expected = run.shared.expected.load(Ordering::Relaxed);
    let unique = subs.received - subs.duplicates;
    report.phases.connect_s = connect_s;
    report.phases.measured_s = measured.as_secs_f64();
    report.phases.drain_s = drain_start.elapsed().as_secs_f64();
    report.connections.ended_early = ended;
    report.messages = Some(Messages {
        published,
        published_per_s: published as f64 / measured.as_secs_f64().max(1e-3),
        publish_errors: run.shared.publish_errors.load(Ordering::Relaxed),
        first_publish_error: first_error.lock().unwrap_or_else(|e| e.into_inner()).take(),
        expected,
        received: subs.received,
        duplicates: subs.duplicates,
        out_of_order: subs.out_of_order,
        lost: expected.saturating_sub(unique),
        foreign: subs.foreign,
        delivered_per_s: subs.received as f64 / delivering.as_secs_f64().max(1e-3),
        subscriber_errors: subs.errors,
    });
    report.latency_us = Percentiles::of(&run.shared.latency());
    report.send_lag_us = Percentiles::of(&lag);
    run.fill_views(&mut report, &before, &after, subs.received);
    if unique > expected {
        run.warn(format!(
            "{} more deliveries than expected: another client is publishing on this run's topics",
            unique - expected
        ));
    }
    Ok(report)
}
