//! Publishers: the send schedule (a fixed rate without coordinated omission, or as fast as
//! the window allows) and the WebSocket sink. The HTTP sink is in `http.rs`.
//!
//! At a fixed rate, message n of a publisher is *scheduled* at `start + n / rate` and carries
//! that time in its stamp; when the publisher falls behind (timer granularity, a full
//! socket) it sends the overdue messages at once, still stamped with their schedule, so
//! the latency a subscriber measures includes the wait (no coordinated omission). How late
//! the sends were is reported separately as "send lag". At `--rate max` messages carry the
//! actual send time, and a window (`--window`) bounds how far publishing may run ahead of
//! delivery so that a fast publisher measures the node's throughput, not its drop policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::payload::{Stamp, Template};
use crate::stats::{histogram, Clock, Shared};

/// Most messages sent in one write.
const MAX_BATCH: u64 = 1024;
/// Messages per write at `--rate max`.
const MAX_RATE_BATCH: u64 = 64;
/// How long after the end a late fixed-rate publisher may still send what was scheduled.
const CATCH_UP_GRACE: Duration = Duration::from_secs(1);

/// Where a publisher's messages go.
pub trait Sink {
    /// Queues one message whose delivery `weight` (subscribers of its topic) counts once
    /// the sink confirms it.
    fn push(&mut self, topic: &str, data: &[u8], weight: u64);
    /// Sends everything queued; returns (messages, weight) confirmed.
    fn flush(&mut self) -> impl std::future::Future<Output = Result<(u64, u64), String>> + Send;
}

/// One publisher's part of the run.
pub struct PubPlan {
    /// Publisher index (carried in every stamp).
    pub id: u32,
    /// Topic indices it cycles through, in order.
    pub topics: Vec<u32>,
    /// Messages per second, `None` for as fast as the window allows.
    pub rate: Option<f64>,
    /// Most messages this publisher sends.
    pub limit: u64,
    pub payload_size: usize,
}

/// What publishers share.
#[derive(Clone)]
pub struct PubCtx {
    pub shared: Arc<Shared>,
    pub clock: Clock,
    pub topic_names: Arc<Vec<String>>,
    pub subscribers_of: Arc<Vec<u64>>,
    /// Outstanding deliveries allowed at max rate (`None`: open loop).
    pub window: Option<u64>,
    pub start: Instant,
    pub end: Instant,
    pub stop: CancellationToken,
}

/// What a publisher did.
#[derive(Debug)]
pub struct PubOutcome {
    pub published: u64,
    /// How late sends were against their schedule (fixed rate only), µs.
    pub send_lag: Histogram<u64>,
    pub ended_early: Option<String>,
}

/// Publishes until the end time, the limit, or `stop`; hands the sink back so the
/// connection stays open until the run's drain is over.
pub async fn run<S: Sink>(mut sink: S, plan: PubPlan, ctx: PubCtx) -> (PubOutcome, S) {
    let mut template = Template::new(plan.payload_size);
    let mut seqs = vec![0u64; plan.topics.len()];
    let mut out = PubOutcome {
        published: 0,
        send_lag: histogram(),
        ended_early: None,
    };
    let start_us = ctx.clock.us_of(ctx.start);
    let mut n: u64 = 0; // messages handed to the sink
    let mut scheduled: Vec<u64> = Vec::new();
    // At a fixed rate the plan is every message scheduled before the end, sent even if the
    // publisher runs late (within a grace period, so a hopeless rate still ends).
    let scheduled_total = plan
        .rate
        .map(|r| ((ctx.end - ctx.start).as_secs_f64() * r).ceil() as u64);
    let hard_end = ctx.end + CATCH_UP_GRACE;
    while n < plan.limit && !ctx.stop.is_cancelled() {
        let now = Instant::now();
        let over = match scheduled_total {
            Some(total) => n >= total || now >= hard_end,
            None => now >= ctx.end,
        };
        if over {
            break;
        }
        let count = match plan.rate {
            Some(rate) => {
                let elapsed = (now.min(ctx.end) - ctx.start).as_secs_f64();
                let due = ((elapsed * rate) as u64 + 1).min(scheduled_total.unwrap_or(u64::MAX));
                if due <= n {
                    let next = ctx.start + Duration::from_secs_f64(n as f64 / rate);
                    tokio::select! {
                        _ = ctx.stop.cancelled() => break,
                        _ = tokio::time::sleep_until(next.min(ctx.end).into()) => continue,
                    }
                }
                (due - n).min(MAX_BATCH)
            }
            None => {
                if let Some(limit) = ctx.window {
                    wait_for_window(&ctx, limit).await;
                }
                MAX_RATE_BATCH
            }
        }
        .min(plan.limit - n);

        let now_us = ctx.clock.now_us();
        scheduled.clear();
        for i in 0..count {
            let k = ((n + i) % plan.topics.len() as u64) as usize;
            let topic = plan.topics[k];
            let t_us = match plan.rate {
                Some(rate) => start_us + ((n + i) as f64 * 1e6 / rate) as u64,
                None => now_us,
            };
            scheduled.push(t_us);
            let stamp = Stamp {
                t_us,
                seq: seqs[k],
                publisher: plan.id,
                topic,
            };
            seqs[k] += 1;
            let weight = ctx.subscribers_of[topic as usize];
            sink.push(&ctx.topic_names[topic as usize], template.stamp(&stamp), weight);
        }
        n += count;
        match sink.flush().await {
            Ok((msgs, weight)) => {
                out.published += msgs;
                ctx.shared
                    .published
                    .fetch_add(msgs, std::sync::atomic::Ordering::Relaxed);
                ctx.shared
                    .expected
                    .fetch_add(weight, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                out.ended_early = Some(e);
                break;
            }
        }
        if plan.rate.is_some() {
            let sent = ctx.clock.now_us();
            for &t in &scheduled {
                out.send_lag.saturating_record(sent.saturating_sub(t).max(1));
            }
        }
    }
    (out, sink)
}

/// Waits (1 ms steps) until outstanding deliveries are within `limit`. Outstanding means
/// expected − delivered − known missing − written off: a message the node dropped shows
/// as a gap in its stream as soon as a later one arrives, and is not waited for. Drops
/// with no later message to reveal them (a subscriber that went silent) would still stall
/// the window, so after 100 ms without any delivery the shortfall is written off (for all
/// publishers at once) and publishing goes on; the report shows the losses. While
/// deliveries flow, the window waits however long the node takes.
async fn wait_for_window(ctx: &PubCtx, limit: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let sh = &ctx.shared;
    let mut last = sh.delivered();
    let mut stalled = 0u32;
    loop {
        let outstanding = sh
            .expected
            .load(Relaxed)
            .saturating_sub(last)
            .saturating_sub(sh.missing())
            .saturating_sub(sh.written_off.load(Relaxed));
        if outstanding <= limit || ctx.stop.is_cancelled() || Instant::now() >= ctx.end {
            return;
        }
        if stalled >= 100 {
            sh.written_off.fetch_add(outstanding - limit / 2, Relaxed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let d = sh.delivered();
        stalled = if d == last { stalled + 1 } else { 0 };
        last = d;
    }
}
