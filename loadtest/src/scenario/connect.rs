//! Opening many connections: spread over `--ramp-up`, at most `--connect-concurrency`
//! handshakes in flight, each bounded by `--connect-timeout`, each one subscribed (or
//! otherwise confirmed by the node) before it counts as established. Failures are counted
//! by reason, never retried: a failed connection is a finding.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Run;
use crate::cli::SubscribeVia;
use crate::client::conn::{self, BufSizes, Conn, ConnectError};
use crate::client::frame::OP_TEXT;
use crate::client::target::Target;
use crate::jwt::JwtVia;
use crate::report::Report;
use crate::stats::{histogram, Percentiles};

/// Which of the run's URL lists a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sub,
    Pub,
}

/// One connection to open.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// Index into the side's URL list.
    pub target: usize,
    /// Topic names to subscribe to (empty: none).
    pub topics: Vec<String>,
    /// The client's token (`--jwt-*`), minted before the connection phase.
    pub token: Option<Arc<str>>,
    /// A subscribe request (id 1) to send instead of the plain one, e.g. with `since`.
    pub request: Option<String>,
}

/// Outcome of opening a set of connections.
pub struct Opened {
    /// By spec index; `None` for those that failed.
    pub conns: Vec<Option<Conn>>,
    pub attempted: u64,
    pub established: u64,
    pub failed: BTreeMap<String, u64>,
    /// Connect + upgrade + confirmation time, µs.
    pub setup: Histogram<u64>,
    pub elapsed: Duration,
}

/// Connects, upgrades and confirms one connection (subscribe ack, welcome, or pong).
pub async fn open_one(
    run: &Run,
    target: &Target,
    spec: &ConnSpec,
    via: SubscribeVia,
    bufs: BufSizes,
    seed: u64,
) -> Result<Conn, ConnectError> {
    let timeout = run.cfg.connect_timeout;
    let deadline = Instant::now() + timeout;
    let mut path = match via {
        SubscribeVia::Query if !spec.topics.is_empty() => target.path_with_query("topics", &spec.topics.join(",")),
        _ => target.path.clone(),
    };
    let mut headers = String::new();
    if let (Some(t), Some(m)) = (&spec.token, &run.jwt) {
        match m.via() {
            JwtVia::Header => headers = format!("Authorization: Bearer {t}\r\n"),
            JwtVia::Query => {
                let sep = if path.contains('?') { '&' } else { '?' };
                path = format!("{path}{sep}token={t}");
            }
        }
    }
    let source = run.next_source(target.addr);
    let mut c = conn::connect_with_headers(target, &path, &headers, source, bufs, seed, timeout).await?;
    let confirm = async {
        match via {
            SubscribeVia::Op if !spec.topics.is_empty() => match &spec.request {
                Some(req) => c.subscribe_with(req).await,
                None => {
                    let names: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
                    c.subscribe(&names).await
                }
            },
            SubscribeVia::None => {
                c.wr.push(OP_TEXT, &[br#"{"op":"ping","id":1}"#]);
                c.flush_frames().await?;
                c.read_until(|t| Ok(t.starts_with(br#"{"type":"pong""#))).await
            }
            _ => c.await_welcome().await,
        }
    };
    tokio::time::timeout_at(deadline.into(), confirm)
        .await
        .map_err(|_| ConnectError::Timeout)??;
    Ok(c)
}

/// Opens every spec's connection on `side`, spread over `ramp`.
pub async fn open_all(
    run: &Arc<Run>,
    side: Side,
    specs: Vec<ConnSpec>,
    via: SubscribeVia,
    ramp: Duration,
    bufs: BufSizes,
) -> Opened {
    let mut specs = specs;
    if let Some(m) = run.jwt.as_ref().filter(|_| specs.iter().any(|s| s.token.is_none())) {
        // Signed before the first connection, so setup times hold no signing.
        match m.mint_all(side == Side::Pub, specs.iter().map(|s| s.topics.as_slice())) {
            Ok(tokens) => {
                for (s, t) in specs.iter_mut().zip(tokens) {
                    s.token = Some(t);
                }
            }
            Err(e) => run.warn(format!("minting tokens failed ({e}); clients connect without one")),
        }
    }
    let started = Instant::now();
    let n = specs.len();
    let sem = Arc::new(Semaphore::new(run.cfg.connect_concurrency));
    let mut set = JoinSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let run = run.clone();
        let sem = sem.clone();
        let at = started + ramp.mul_f64(i as f64 / n.max(1) as f64);
        set.spawn(async move {
            tokio::select! {
                _ = run.abort.cancelled() => return (i, Err(ConnectError::Closed), 0),
                _ = tokio::time::sleep_until(at.into()) => {}
            }
            let Ok(_permit) = sem.acquire().await else {
                return (i, Err(ConnectError::Closed), 0);
            };
            if run.abort.is_cancelled() {
                return (i, Err(ConnectError::Closed), 0);
            }
            let targets = match side {
                Side::Sub => &run.sub_targets,
                Side::Pub => &run.pub_targets,
            };
            let target = &targets[spec.target];
            let seed = run.cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (side as u64);
            let t0 = Instant::now();
            let r = open_one(&run, target, &spec, via, bufs, seed).await;
            if r.is_ok() {
                run.shared.connected.fetch_add(1, Ordering::Relaxed);
            }
            (i, r, t0.elapsed().as_micros() as u64)
        });
    }
    let mut out = Opened {
        conns: (0..n).map(|_| None).collect(),
        attempted: 0,
        established: 0,
        failed: BTreeMap::new(),
        setup: histogram(),
        elapsed: Duration::ZERO,
    };
    while let Some(joined) = set.join_next().await {
        let Ok((i, r, us)) = joined else { continue };
        if run.abort.is_cancelled() && r.is_err() {
            continue;
        }
        out.attempted += 1;
        match r {
            Ok(c) => {
                out.established += 1;
                out.setup.saturating_record(us.max(1));
                out.conns[i] = Some(c);
            }
            Err(e) => *out.failed.entry(e.label()).or_default() += 1,
        }
    }
    out.elapsed = started.elapsed();
    out
}

/// Connection figures added up over several [`open_all`] calls (subscribers, publishers).
pub struct ConnTally {
    attempted: u64,
    established: u64,
    failed: BTreeMap<String, u64>,
    setup: Histogram<u64>,
}

impl ConnTally {
    pub fn new() -> Self {
        Self {
            attempted: 0,
            established: 0,
            failed: BTreeMap::new(),
            setup: histogram(),
        }
    }

    pub fn merge(&mut self, o: &Opened) {
        self.attempted += o.attempted;
        self.established += o.established;
        for (k, v) in &o.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
        let _ = self.setup.add(&o.setup);
    }

    /// Writes the tally into the report's connection section.
    pub fn finish(self, report: &mut Report) {
        report.connections.attempted = self.attempted;
        report.connections.established = self.established;
        report.connections.failed = self.failed;
        report.connections.setup_us = Percentiles::of(&self.setup);
    }
}
