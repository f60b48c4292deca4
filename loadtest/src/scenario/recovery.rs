//! Recovery mode (`--drop-every`): subscribers that drop their connection on a schedule,
//! stay away, reconnect and resubscribe with `since`; the probe of every topic's final head
//! after the drain; and the tally of what came back (the report's `recovery` section).
//!
//! A subscriber's life: its first connection is opened with the others (`open_all`) and its
//! ack's `positions` start the [`Book`]. From the start of the measured phase, each
//! connection lives `--drop-every` × U[1 − jitter, 1 + jitter] (the first one a uniform
//! share of that, so drops spread evenly) and is then aborted (RST, no Close frame). After
//! `--away` the subscriber reconnects with `since` = its book's positions; the reconnect's
//! start is when its replay timer starts. No drop is scheduled past the measured phase, so
//! the drain sees every subscriber connected. A connection the node ends is counted (in
//! `ended early`) and reconnected the same way; a `recovery_overflow` at once.
//!
//! The receive loop is `client::subscriber::pump`; the bookkeeping is `recovery::book`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::connect::{open_one, ConnSpec};
use super::Run;
use crate::cli::{RecoveryPlan, SubscribeVia};
use crate::client::conn::{BufSizes, Conn};
use crate::client::subscriber::{pump, Ended, RecvCtx, SubOutcome, SubState};
use crate::recovery::{wire, Ack, Book, Position};
use crate::report::Recovery;
use crate::stats::{histogram, Percentiles};

/// Pause before retrying a reconnect that failed.
const RETRY: Duration = Duration::from_millis(100);
/// Topics per subscribe of the head probe (below the node's default of 256 per connection).
const PROBE_CHUNK: usize = 200;

/// What one recovering subscriber did.
pub struct Outcome {
    pub state: SubState,
    pub drops: u64,
    pub reconnects: u64,
    pub failures: BTreeMap<String, u64>,
    /// Connections that ended without our drop, by reason.
    pub unplanned: BTreeMap<String, u64>,
    pub reconnect_us: Vec<u64>,
    pub overflows: u64,
    /// Why the first ack could not start the book (the topic has no history).
    pub no_history: Option<String>,
}

/// The lifetime of a connection: `every` × a uniform factor in [1 − jitter, 1 + jitter].
pub fn lifetime(plan: &RecoveryPlan, rng: &mut impl Rng) -> Duration {
    plan.drop_every
        .mul_f64(1.0 + plan.jitter * (2.0 * rng.random::<f64>() - 1.0))
}

/// A drop is scheduled only if it ends (`--away` later) at least this long before the end
/// of the measured phase, so every drop is followed by its reconnect within the run.
const LAST_DROP_MARGIN: Duration = Duration::from_millis(250);

/// Runs one subscriber from the start of the measured phase (`start`) until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn subscriber(
    run: Arc<Run>,
    id: usize,
    spec: ConnSpec,
    topics: Vec<u32>,
    conn: Conn,
    ctx: RecvCtx,
    bufs: BufSizes,
    (start, end): (Instant, Instant),
    stop: CancellationToken,
) -> Outcome {
    let plan = run.cfg.recovery.expect("recovery mode");
    let mut rng = SmallRng::seed_from_u64(run.cfg.seed ^ (id as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut out = Outcome {
        state: SubState::new(topics.len(), ctx.publishers, None),
        drops: 0,
        reconnects: 0,
        failures: BTreeMap::new(),
        unplanned: BTreeMap::new(),
        reconnect_us: Vec::new(),
        overflows: 0,
        no_history: None,
    };
    let first = conn.ack.as_deref().and_then(wire::parse_ack);
    match first.map(|a| Book::start(spec.topics.clone(), &a)) {
        Some(Ok(book)) => out.state.history = Some(book),
        other => {
            let why = match other {
                Some(Err(e)) => e.to_string(),
                _ => "the subscribe ack could not be read".to_owned(),
            };
            out.state.out.ended_early = Some(why.clone());
            out.no_history = Some(why);
            conn.close(Duration::from_millis(100)).await;
            return out;
        }
    }
    let target = run.sub_targets[spec.target].clone();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let mut next_drop = start + plan.drop_every.mul_f64(1.0 - rng.random::<f64>());
    let mut conn = conn;
    loop {
        // No drop so late that its reconnect could still be under way when the run stops.
        let deadline = (next_drop + plan.away + LAST_DROP_MARGIN < end).then_some(next_drop);
        let ended = pump(
            &mut conn,
            id,
            &topics,
            &ctx,
            &mut out.state,
            cancelled.as_mut(),
            deadline,
        )
        .await;
        let book = out.state.history.as_mut().expect("book started");
        book.end_timing();
        match ended {
            Ended::Stopped => {
                conn.wr.push_close(1000);
                let _ = conn.flush_frames().await;
                return out;
            }
            Ended::Deadline => {
                out.drops += 1;
                conn.abort();
                let away = tokio::time::sleep(plan.away);
                tokio::select! {
                    _ = &mut cancelled => return out,
                    _ = away => {}
                }
            }
            Ended::Overflow => {
                out.overflows += 1;
                conn.abort();
            }
            Ended::Lost(why) => {
                *out.unplanned.entry(why).or_default() += 1;
                drop(conn);
            }
        }
        // Reconnect with `since`, retrying until it works or the run stops.
        conn = loop {
            let book = out.state.history.as_mut().expect("book started");
            let t0 = Instant::now();
            book.begin_reconnect(ctx.clock.us_of(t0));
            let since = book.since();
            let names: Vec<&str> = book.names.iter().map(String::as_str).collect();
            let since_refs: Vec<(&str, &Position)> = since.iter().map(|(t, p)| (t.as_str(), p)).collect();
            let retry = ConnSpec {
                request: Some(wire::subscribe_request(&names, &since_refs, 1)),
                ..spec.clone()
            };
            let attempts = out.reconnects + out.failures.values().sum::<u64>();
            let seed = run.cfg.seed ^ ((id as u64) << 20) ^ attempts;
            let attempt = open_one(&run, &target, &retry, SubscribeVia::Op, bufs, seed);
            let r = tokio::select! {
                _ = &mut cancelled => return out,
                r = attempt => r,
            };
            match r {
                Ok(c) => {
                    out.reconnects += 1;
                    out.reconnect_us.push(t0.elapsed().as_micros() as u64);
                    let ack = c.ack.as_deref().and_then(wire::parse_ack).unwrap_or_default();
                    book.on_resubscribed(&ack);
                    next_drop = Instant::now() + lifetime(&plan, &mut rng);
                    break c;
                }
                Err(e) => {
                    *out.failures.entry(e.label()).or_default() += 1;
                    book.end_timing();
                    tokio::select! {
                        _ = &mut cancelled => return out,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        };
    }
}

/// Reads every topic's head (`positions` of a subscribe without `since`) from the first
/// subscriber URL, `PROBE_CHUNK` topics per connection.
pub async fn final_heads(run: &Arc<Run>, names: &[String]) -> Result<HashMap<String, Position>, String> {
    let mut heads = HashMap::new();
    for (n, chunk) in names.chunks(PROBE_CHUNK).enumerate() {
        let token = match &run.jwt {
            Some(m) => Some(Arc::from(m.mint(false, n, chunk).map_err(|e| e.to_string())?)),
            None => None,
        };
        let spec = ConnSpec {
            target: 0,
            topics: chunk.to_vec(),
            token,
            request: None,
        };
        let bufs = BufSizes {
            initial: 4096,
            max: 64 << 10,
        };
        let c = open_one(
            run,
            &run.sub_targets[0],
            &spec,
            SubscribeVia::Op,
            bufs,
            run.cfg.seed ^ 0x5eed,
        )
        .await
        .map_err(|e| format!("head probe: {}", e.label()))?;
        let ack = c.ack.as_deref().and_then(wire::parse_ack);
        c.close(Duration::from_millis(200)).await;
        let ack: Ack = ack.ok_or("head probe: unreadable ack")?;
        for t in chunk {
            let p = ack
                .positions
                .get(t)
                .ok_or_else(|| format!("head probe: no position for {t}"))?;
            heads.insert(t.clone(), p.clone());
        }
    }
    Ok(heads)
}

/// Adds up the subscribers' outcomes into the report's section; returns the plain
/// subscriber counts and the connections that ended early (by reason) too.
pub fn tally(
    plan: &RecoveryPlan,
    outcomes: Vec<Outcome>,
    heads: Result<HashMap<String, Position>, String>,
) -> (Recovery, SubOutcome, BTreeMap<String, u64>) {
    let mut r = Recovery {
        drop_every_s: plan.drop_every.as_secs_f64(),
        jitter: plan.jitter,
        away_s: plan.away.as_secs_f64(),
        heads_known: heads.is_ok(),
        ..Default::default()
    };
    let (heads, probe_error) = match heads {
        Ok(h) => (h, None),
        Err(e) => (HashMap::new(), Some(e)),
    };
    r.head_probe_error = probe_error;
    let mut subs = SubOutcome::default();
    let mut ended = BTreeMap::new();
    let (mut reconnect, mut replay) = (histogram(), histogram());
    for o in outcomes {
        subs.add(&o.state.out);
        if let Some(why) = &o.state.out.ended_early {
            *ended.entry(why.clone()).or_insert(0) += 1;
        }
        for (k, v) in o.unplanned {
            *ended.entry(k).or_insert(0) += v;
        }
        for (k, v) in o.failures {
            *r.reconnect_failures.entry(k).or_insert(0) += v;
        }
        r.drops += o.drops;
        r.reconnects += o.reconnects;
        r.overflows += o.overflows;
        r.no_history += u64::from(o.no_history.is_some());
        for us in o.reconnect_us {
            reconnect.saturating_record(us.max(1));
        }
        let Some(book) = o.state.history else { continue };
        r.not_recovered += book.not_recovered;
        r.replay_unmeasured += book.unmeasured;
        for &us in &book.replay_us {
            replay.saturating_record(us.max(1));
        }
        for a in book.accounts(&heads) {
            r.pairs += 1;
            r.complete_pairs += u64::from(a.complete());
            r.owed += a.owed;
            r.received += a.received;
            r.missing += a.missing;
            r.behind_head += a.behind_head;
            r.duplicates += a.duplicates;
            r.out_of_order += a.out_of_order;
            r.epoch_changes += a.epoch_changes;
            r.heads_known &= a.head_known;
        }
    }
    r.completeness = if r.owed == 0 {
        1.0
    } else {
        r.received as f64 / r.owed as f64
    };
    r.reconnect_us = Percentiles::of(&reconnect);
    r.replay_us = Percentiles::of(&replay);
    (r, subs, ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    fn plan() -> RecoveryPlan {
        RecoveryPlan {
            drop_every: Duration::from_secs(2),
            jitter: 0.25,
            away: Duration::from_millis(100),
        }
    }

    /// A subscriber of topics "a" and "b" that started at a:10 and b:0.
    fn outcome() -> Outcome {
        let mut ack = Ack::default();
        ack.positions.insert("a".into(), pos(10, "e"));
        ack.positions.insert("b".into(), pos(0, "e"));
        let book = Book::start(vec!["a".into(), "b".into()], &ack).unwrap();
        Outcome {
            state: SubState::new(2, 1, Some(book)),
            drops: 2,
            reconnects: 2,
            failures: BTreeMap::new(),
            unplanned: BTreeMap::new(),
            reconnect_us: vec![1_000, 3_000],
            overflows: 0,
            no_history: None,
        }
    }

    #[test]
    fn lifetimes_stay_within_the_jitter() {
        let mut rng = SmallRng::seed_from_u64(7);
        let ls: Vec<Duration> = (0..1000).map(|_| lifetime(&plan(), &mut rng)).collect();
        assert!(ls.iter().all(|l| (1.5..=2.5).contains(&l.as_secs_f64())));
        let mean = ls.iter().map(Duration::as_secs_f64).sum::<f64>() / 1000.0;
        assert!((mean - 2.0).abs() < 0.05, "{mean}");
        let still = RecoveryPlan { jitter: 0.0, ..plan() };
        assert_eq!(lifetime(&still, &mut rng), Duration::from_secs(2));
    }

    #[test]
    fn tally_adds_up_completeness_duplicates_and_latencies() {
        let heads: HashMap<String, Position> = [("a".into(), pos(20, "e")), ("b".into(), pos(5, "e"))].into();
        // One complete subscriber: a 11..=20, b 1..=5, with one timed reconnect.
        let mut full = outcome();
        let book = full.state.history.as_mut().unwrap();
        book.begin_reconnect(100);
        for o in 11..=20 {
            book.arrive(0, o, b"e", 100 + o, 1_000);
        }
        for o in 1..=5 {
            book.arrive(1, o, b"e", 100 + o, 2_000);
        }
        // One that lost a:15 and the tail b:5, and got a:12 twice.
        let mut lossy = outcome();
        lossy.failures.insert("connection refused".into(), 1);
        let book = lossy.state.history.as_mut().unwrap();
        for o in (11..=20).filter(|&o| o != 15).chain([12]) {
            book.arrive(0, o, b"e", 0, 0);
        }
        for o in 1..=4 {
            book.arrive(1, o, b"e", 0, 0);
        }
        let (r, _, ended) = tally(&plan(), vec![full, lossy], Ok(heads.clone()));
        assert_eq!((r.pairs, r.complete_pairs), (4, 2));
        assert_eq!((r.owed, r.received, r.missing, r.behind_head), (30, 28, 2, 1));
        assert_eq!((r.duplicates, r.out_of_order), (1, 0));
        assert!((r.completeness - 28.0 / 30.0).abs() < 1e-12);
        assert_eq!((r.drops, r.reconnects), (4, 4));
        assert_eq!(r.reconnect_failures.get("connection refused"), Some(&1));
        let replay = r.replay_us.unwrap();
        assert_eq!(replay.samples, 2);
        assert_eq!((replay.p50, replay.max), (900, 1_900));
        assert_eq!(r.reconnect_us.unwrap().samples, 4);
        assert!(r.heads_known && !r.passed());
        assert!(ended.is_empty());

        // Without the heads, a lost tail cannot be seen: the run does not pass.
        let mut clean = outcome();
        let book = clean.state.history.as_mut().unwrap();
        book.arrive(0, 11, b"e", 0, 0);
        let (r, _, _) = tally(&plan(), vec![clean], Err("head probe: timeout".into()));
        assert_eq!((r.owed, r.received, r.missing), (1, 1, 0));
        assert!(!r.heads_known && !r.passed());
        assert_eq!(r.head_probe_error.as_deref(), Some("head probe: timeout"));
        let (r, _, _) = tally(
            &plan(),
            vec![outcome()],
            Ok(HashMap::from([("a".into(), pos(10, "e")), ("b".into(), pos(0, "e"))])),
        );
        assert!(r.passed(), "nothing owed, nothing missing: {r:?}");
        assert_eq!(r.completeness, 1.0);
    }
}
