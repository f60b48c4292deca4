//! The fleet as operators run it, and the two promises of the phased drain:
//!
//! - a rolling restart (SIGTERM, wait, start again) of three real `herald` processes behind
//!   a real HAProxy, relayed through a real `redis-server`, while 30 reconnecting
//!   subscribers listen through HAProxy and a publisher publishes every 20 ms: no node
//!   exits before it closed its clients with 1001, every subscriber ends up connected and
//!   receiving, and each one's messages missed in its reconnect gaps are reported (the
//!   at-most-once baseline recorded in docs/operations.md);
//! - the same rolling restart with topic history (`[[history]]` on the nodes, kept in
//!   Redis): every subscriber resubscribes with `since` (the last offset and epoch it
//!   received) after each close, and the publisher publishes over a WebSocket through
//!   HAProxy, reconnecting too: every acknowledged message reaches every subscriber, in
//!   offset order, with no offset skipped and none twice, and every resubscribe is
//!   `recovered: true`;
//! - a drain with 2,000 connected clients spreads their 1001 closes over the close window
//!   and leaves no task behind;
//! - a second SIGTERM during a drain stops the process at once (status 1).
//!
//! Both are timing-heavy, so they take turns (`SERIAL`) instead of sharing the CPUs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use herald_client::{Client, ClientOptions, Event, RawClient, RawFrame};
use herald_testkit::fleet::{raise_fd_limit, Haproxy, HeraldProcess, NodeSpec, TempDir};
use herald_testkit::node::{http_request, TestNode};
use herald_testkit::redis::RedisServer;
use herald_testkit::wire::WireClient;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SUBSCRIBERS: usize = 30;
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
const DRAIN_DELAY_MS: u64 = 500;
const CLOSE_WINDOW_MS: u64 = 1000;
const GRACE_MS: u64 = 3000;
/// HAProxy checks each node's /readyz every 200 ms and acts on one result, so a draining
/// node leaves the pool well within `DRAIN_DELAY_MS`.
const CHECK: &str = "inter 200ms fastinter 100ms downinter 200ms fall 1 rise 1";
const TOPIC: &str = "fleet";
/// A subscriber waits a random 0..100 ms before reconnecting, as a polite client does (so
/// a node's clients do not all come back in the same millisecond); it is part of the gap.
const RECONNECT_JITTER_MS: u64 = 100;

/// What one reconnecting subscriber saw.
#[derive(Default)]
struct SubLog {
    /// The node it is connected to right now (from the welcome frame).
    connected_to: Option<String>,
    /// Sequence numbers per connection, in arrival order.
    conns: Vec<Vec<u64>>,
    /// Every close: (node, code, reason).
    closes: Vec<(String, u16, String)>,
    /// Connection attempts that failed (refused upgrades, no server up).
    failed_connects: u32,
}

/// Connects through HAProxy, records every message's sequence number, and reconnects
/// after a close (with a little jitter, as a polite client does) until `stop`.
async fn subscriber(url: String, log: Arc<Mutex<SubLog>>, stop: CancellationToken) {
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    while !stop.is_cancelled() {
        let mut client = match Client::connect_with(&url, opts.clone()).await {
            Ok(c) => c,
            Err(_) => {
                log.lock().unwrap().failed_connects += 1;
                tokio::time::sleep(Duration::from_millis(20 + rand::random::<u64>() % 60)).await;
                continue;
            }
        };
        let node = client.node().to_owned();
        {
            let mut l = log.lock().unwrap();
            l.connected_to = Some(node.clone());
            l.conns.push(Vec::new());
        }
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = client.next_event() => ev,
            };
            match ev {
                Some(Event::Message(m)) => {
                    let v: serde_json::Value = m.json().unwrap_or_default();
                    if let Some(seq) = v["seq"].as_u64() {
                        let mut l = log.lock().unwrap();
                        l.conns.last_mut().expect("a connection").push(seq);
                    }
                }
                Some(Event::Closed(info)) => {
                    let mut l = log.lock().unwrap();
                    l.closes.push((node.clone(), info.code, info.reason));
                    l.connected_to = None;
                    break;
                }
                None => {
                    let info = client.closed().await;
                    let mut l = log.lock().unwrap();
                    l.closes.push((node.clone(), info.code, info.reason));
                    l.connected_to = None;
                    break;
                }
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % RECONNECT_JITTER_MS)).await;
    }
}

/// Publishes `{"seq": n}` every 20 ms through the admin API of the node `target` names,
/// recording which sequence numbers were accepted (200).
async fn publisher(
    admin: Vec<SocketAddr>,
    target: Arc<AtomicUsize>,
    accepted: Arc<Mutex<BTreeSet<u64>>>,
    last: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        seq += 1;
        let addr = admin[target.load(Ordering::Relaxed)];
        let body = format!(r#"{{"topic":"{TOPIC}","data":{{"seq":{seq}}}}}"#);
        let headers = [("Content-Type", "application/json")];
        let ok = matches!(
            http_request(addr, "POST", "/api/publish", &headers, body.as_bytes()).await,
            Ok((200, _))
        );
        if ok {
            accepted.lock().unwrap().insert(seq);
        }
        last.store(seq, Ordering::Release);
    }
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn all_connected(subs: &[Arc<Mutex<SubLog>>]) -> bool {
    subs.iter().all(|s| s.lock().unwrap().connected_to.is_some())
}

fn distribution(subs: &[Arc<Mutex<SubLog>>]) -> String {
    let mut by_node = std::collections::BTreeMap::<String, usize>::new();
    for s in subs {
        if let Some(n) = &s.lock().unwrap().connected_to {
            *by_node.entry(n.clone()).or_default() += 1;
        }
    }
    format!("{by_node:?}")
}

/// Per-subscriber figures for the report.
struct Figures {
    reconnects: usize,
    /// Accepted publications in `[first received, mark]` that never arrived.
    missed: usize,
    /// Of those, the ones between two connections (the reconnect gaps).
    missed_in_gaps: usize,
    duplicates: usize,
}

fn figures(log: &SubLog, accepted: &BTreeSet<u64>, mark: u64) -> Result<Figures> {
    let received: Vec<u64> = log.conns.iter().flatten().copied().filter(|s| *s <= mark).collect();
    let unique: BTreeSet<u64> = received.iter().copied().collect();
    let first = *unique.first().context("received nothing")?;
    let missed = accepted.range(first..=mark).filter(|s| !unique.contains(s)).count();
    let mut in_conns = 0;
    for (i, c) in log.conns.iter().enumerate() {
        // Order: one publisher, one topic, one connection: strictly increasing.
        ensure!(
            c.windows(2).all(|w| w[0] < w[1]),
            "connection {i} saw messages out of order: {c:?}"
        );
        match (c.first(), c.last()) {
            (Some(&lo), Some(&hi)) if lo <= mark => {
                in_conns += accepted.range(lo..=hi.min(mark)).filter(|s| !c.contains(s)).count();
            }
            _ => {}
        }
    }
    Ok(Figures {
        reconnects: log.conns.len() - 1,
        missed,
        missed_in_gaps: missed - in_conns.min(missed),
        duplicates: received.len() - unique.len(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_behind_haproxy_keeps_every_subscriber() {
    let _turn = SERIAL.lock().await;
    tokio::time::timeout(Duration::from_secs(90), rolling_restart())
        .await
        .expect("the rolling restart must finish within 90 s")
        .unwrap();
}

/// Three `herald` processes relayed through one `redis-server`, behind HAProxy.
struct Fleet {
    _redis: RedisServer,
    nodes: Vec<HeraldProcess>,
    specs: Vec<NodeSpec>,
    lb: Haproxy,
    started: Instant,
}

impl Fleet {
    /// Starts Redis, three nodes (the drain timings above, behind HAProxy, plus `extra`
    /// environment) and HAProxy, and waits until HAProxy has every node up.
    async fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> Result<Self> {
        let started = Instant::now();
        let redis = RedisServer::start()?;
        let redis_url = redis.url();
        let (delay, window, grace) = (
            DRAIN_DELAY_MS.to_string(),
            CLOSE_WINDOW_MS.to_string(),
            GRACE_MS.to_string(),
        );
        let mut env = vec![
            ("HERALD_RELAY__KIND", "redis"),
            ("HERALD_REDIS__URL", redis_url.as_str()),
            ("HERALD_SHUTDOWN__DRAIN_DELAY_MS", delay.as_str()),
            ("HERALD_SHUTDOWN__CLOSE_WINDOW_MS", window.as_str()),
            ("HERALD_SHUTDOWN__GRACE_MS", grace.as_str()),
            ("HERALD_LOG__LEVEL", "info"),
            // HAProxy sends a PROXY v2 header from its own address.
            herald_testkit::fleet::BEHIND_HAPROXY[0],
            herald_testkit::fleet::BEHIND_HAPROXY[1],
        ];
        env.extend_from_slice(extra);
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_herald"));
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let spec = NodeSpec::new(&format!("herald-{i}"), &env)?;
            nodes.push(HeraldProcess::start(bin, spec, dir).await?);
        }
        let specs: Vec<NodeSpec> = nodes.iter().map(|n| n.spec.clone()).collect();
        let lb = Haproxy::start(&specs, CHECK, dir).await?;
        for s in &specs {
            lb.wait_server(&s.name, "UP", Duration::from_secs(5)).await?;
        }
        Ok(Self {
            _redis: redis,
            nodes,
            specs,
            lb,
            started,
        })
    }

    /// The rolling restart: each node in turn gets SIGTERM, must leave HAProxy's pool
    /// within the drain delay, close each of its subscribers with one 1001, report a
    /// complete drain and exit 0; it then starts again on the same ports, and the next
    /// node goes only once HAProxy has it back and every subscriber is connected again.
    /// `before(i)` runs just before node `i` gets its SIGTERM.
    async fn roll(&mut self, subs: &[Arc<Mutex<SubLog>>], mut before: impl FnMut(usize)) -> Result<()> {
        let (nodes, specs, lb) = (&mut self.nodes, &self.specs, &self.lb);
        for i in 0..nodes.len() {
            let name = specs[i].name.clone();
            before(i);
            let on_node: Vec<(usize, usize)> = subs
                .iter()
                .enumerate()
                .filter_map(|(k, s)| {
                    let l = s.lock().unwrap();
                    (l.connected_to.as_deref() == Some(name.as_str())).then_some((k, l.closes.len()))
                })
                .collect();
            ensure!(!on_node.is_empty(), "{name} has no subscriber to drain");

            let t0 = Instant::now();
            nodes[i].terminate()?;
            let to_down = lb
                .wait_server(&name, "DOWN", Duration::from_millis(DRAIN_DELAY_MS + 2000))
                .await?;
            let status = nodes[i]
                .wait_exit(Duration::from_millis(
                    DRAIN_DELAY_MS + CLOSE_WINDOW_MS + GRACE_MS + 2000,
                ))
                .await?;
            let to_exit = t0.elapsed();
            ensure!(status.success(), "{name} exited with {status}");
            ensure!(
                to_down < Duration::from_millis(DRAIN_DELAY_MS),
                "HAProxy took {to_down:?} to take {name} out of the pool; the drain delay is {DRAIN_DELAY_MS} ms"
            );
            // Every client of the node got its 1001 before the process exited: a client cut by
            // the exit would have seen 1006 (HAProxy closes the tunnel without a Close frame).
            for (k, closes_before) in &on_node {
                let l = subs[*k].lock().unwrap();
                let got: Vec<_> = l.closes[*closes_before..].iter().filter(|c| c.0 == name).collect();
                ensure!(
                    got.len() == 1 && got[0].1 == 1001,
                    "subscriber {k} on {name}: closes {got:?}, expected one 1001"
                );
            }
            let log = nodes[i].log_text();
            ensure!(
                log.contains("drain: every client closed") && log.contains("drain finished"),
                "{name} did not report a complete drain:\n{log}"
            );

            nodes[i].restart().await?;
            let t_up = Instant::now();
            lb.wait_server(&name, "UP", Duration::from_secs(5)).await?;
            let to_up = t_up.elapsed();
            wait_until("every subscriber reconnected", Duration::from_secs(10), || {
                all_connected(subs)
            })
            .await?;
            println!(
                "{name} (SIGTERM at {:?}): {} clients, HAProxy down after {to_down:?}, exited (status 0) after {to_exit:?}, \
                 back in the pool {to_up:?} after start; now {}",
                t0 - self.started,
                on_node.len(),
                distribution(subs)
            );
        }
        Ok(())
    }
}

/// Keeps `dir` (with every node's and HAProxy's log) when `run` fails, and says where.
async fn keeping_logs<F, Fut>(label: &str, run: F) -> Result<()>
where
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut dir = TempDir::new(label)?;
    let result = run(dir.to_path_buf()).await;
    if result.is_err() {
        let kept = dir.keep().display().to_string();
        return result.with_context(|| format!("node and HAProxy logs are in {kept}"));
    }
    result
}

async fn rolling_restart() -> Result<()> {
    keeping_logs("fleet", |dir| async move { rolling_restart_in(&dir).await }).await
}

async fn rolling_restart_in(dir: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let mut fleet = Fleet::start(dir, &[]).await?;

    let stop = CancellationToken::new();
    let subs: Vec<Arc<Mutex<SubLog>>> = (0..SUBSCRIBERS).map(|_| Arc::default()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for s in &subs {
        tasks.spawn(subscriber(
            fleet.lb.url(&format!("/ws?topics={TOPIC}")),
            s.clone(),
            stop.clone(),
        ));
    }
    wait_until("every subscriber connected", Duration::from_secs(10), || {
        all_connected(&subs)
    })
    .await?;
    println!("subscribers per node at start: {}", distribution(&subs));

    let target = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let last_seq = Arc::new(AtomicU64::new(0));
    let admin: Vec<SocketAddr> = fleet.specs.iter().map(NodeSpec::admin_addr).collect();
    let publishing = CancellationToken::new();
    tasks.spawn(publisher(
        admin,
        target.clone(),
        accepted.clone(),
        last_seq.clone(),
        publishing.clone(),
    ));
    wait_until("every subscriber received messages", Duration::from_secs(10), || {
        subs.iter()
            .all(|s| s.lock().unwrap().conns.iter().map(Vec::len).sum::<usize>() >= 5)
    })
    .await?;

    // Publish through a node that stays up.
    let n = fleet.nodes.len();
    fleet
        .roll(&subs, |i| target.store((i + 1) % n, Ordering::Relaxed))
        .await?;

    // Everyone connected; everyone receiving what is published from now on.
    let mark = last_seq.load(Ordering::Acquire);
    wait_until(
        "every subscriber receiving after the restarts",
        Duration::from_secs(10),
        || {
            subs.iter().all(|s| {
                let l = s.lock().unwrap();
                l.connected_to.is_some() && l.conns.last().and_then(|c| c.last()).is_some_and(|&q| q > mark)
            })
        },
    )
    .await?;
    publishing.cancel();
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    let accepted = accepted.lock().unwrap().clone();
    let refused = mark as usize - accepted.range(..=mark).count();
    println!("\npublished {mark} messages (every 20 ms), {refused} refused by the API");
    println!("subscriber  reconnects  missed  in_gaps  duplicates  failed_connects");
    let mut total_missed = 0;
    let mut max_missed = 0;
    let mut total_reconnects = 0;
    for (k, s) in subs.iter().enumerate() {
        let l = s.lock().unwrap();
        // Nobody was ever cut without a Close frame.
        for c in &l.closes {
            ensure!(c.1 == 1001, "subscriber {k} saw close {c:?}");
        }
        let f = figures(&l, &accepted, mark)?;
        ensure!(
            f.missed == f.missed_in_gaps,
            "subscriber {k} lost {} message(s) while connected",
            f.missed - f.missed_in_gaps
        );
        println!(
            "{k:>10}  {:>10}  {:>6}  {:>7}  {:>10}  {:>15}",
            f.reconnects, f.missed, f.missed_in_gaps, f.duplicates, l.failed_connects
        );
        total_missed += f.missed;
        max_missed = max_missed.max(f.missed);
        total_reconnects += f.reconnects;
    }
    println!(
        "\nreconnect-gap baseline: {total_reconnects} reconnects, {total_missed} messages missed in total, \
         {:.2} per reconnect, at most {max_missed} for one subscriber; test took {:?}",
        total_missed as f64 / total_reconnects.max(1) as f64,
        started.elapsed()
    );
    ensure!(refused == 0, "{refused} publications refused");
    Ok(())
}

/// The topic of the history variant, matched by the nodes' `[[history]]` entry.
const HISTORY_TOPIC: &str = "fleet.history";
const HISTORY_ENTRY: &str = r#"[{"topics":"fleet.>","size":10000,"ttl_ms":600000}]"#;

/// What a resubscribing subscriber saw besides the offsets in [`SubLog::conns`].
#[derive(Default)]
struct HistoryLog {
    /// The position the first subscribe ack gave (before any message).
    start: Option<u64>,
    /// `recovered` of every resubscribe ack, in order.
    recovered: Vec<bool>,
    /// The epoch of that first position (a stream nobody published to yet may get its
    /// epoch with its first message; only reported).
    start_epoch: String,
    /// Every epoch seen on a message or in a resubscribe ack.
    epochs: BTreeSet<String>,
    /// The publisher's `seq` carried by each offset received.
    seq_at: BTreeMap<u64, u64>,
    /// Per connection after the first: the highest offset the publisher had been
    /// acknowledged when the resubscribe was sent (offsets up to it on that connection were
    /// published before the subscription existed: history delivered them).
    acked_at_resubscribe: Vec<u64>,
    /// Per connection after the first: the `since` offset it resubscribed with.
    since: Vec<u64>,
    /// Per connection: the node it was on, and when (since the test's start) its
    /// subscribe was sent.
    conn_at: Vec<(String, Duration)>,
    /// Frames that should not have come (errors, malformed frames).
    unexpected: Vec<String>,
}

/// Connects through HAProxy to `/ws`, subscribes to [`HISTORY_TOPIC`] (with `since` = the
/// last offset and epoch received, or the position the first ack gave, from the second
/// connection on), records every message's offset, and reconnects after a close, as the
/// protocol's client rule says (docs/protocol.md, "History and recovery").
async fn history_subscriber(
    url: String,
    log: Arc<Mutex<SubLog>>,
    hist: Arc<Mutex<HistoryLog>>,
    acked_head: Arc<AtomicU64>,
    t0: Instant,
    stop: CancellationToken,
) {
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    // (offset, epoch) of the last message received, or of the first ack's position.
    let mut last: Option<(u64, String)> = None;
    while !stop.is_cancelled() {
        let mut client = match RawClient::connect_with(&url, opts.clone()).await {
            Ok(c) => c,
            Err(_) => {
                log.lock().unwrap().failed_connects += 1;
                tokio::time::sleep(Duration::from_millis(20 + rand::random::<u64>() % 60)).await;
                continue;
            }
        };
        let welcome = match client.next_timeout(Duration::from_secs(2)).await {
            Ok(RawFrame::Text(t)) => serde_json::from_str::<Value>(&t).unwrap_or_default(),
            _ => Value::Null,
        };
        let Some(node) = welcome["node"].as_str().map(str::to_owned) else {
            log.lock().unwrap().failed_connects += 1;
            continue;
        };
        let mut sub = json!({"op": "subscribe", "topics": [HISTORY_TOPIC], "id": 1});
        if let Some((offset, epoch)) = &last {
            sub["since"] = json!({ HISTORY_TOPIC: {"offset": offset, "epoch": epoch} });
        }
        let resubscribe = last.is_some();
        {
            let mut h = hist.lock().unwrap();
            if let Some((offset, _)) = &last {
                h.since.push(*offset);
            }
            h.conn_at.push((node.clone(), t0.elapsed()));
        }
        let acked_before = acked_head.load(Ordering::Acquire);
        if client.send_text(sub.to_string()).await.is_err() {
            continue;
        }
        {
            let mut l = log.lock().unwrap();
            l.connected_to = Some(node.clone());
            l.conns.push(Vec::new());
        }
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return,
                f = client.next() => f,
            };
            let Some(frame) = frame else {
                let info = client.closed().await;
                let mut l = log.lock().unwrap();
                l.closes.push((node.clone(), info.code, info.reason));
                l.connected_to = None;
                break;
            };
            let RawFrame::Text(text) = frame else {
                hist.lock().unwrap().unexpected.push("a binary frame".into());
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            let mut h = hist.lock().unwrap();
            match (v["type"].as_str(), v["id"].as_u64()) {
                (Some("ack"), Some(1)) => {
                    let pos = &v["positions"][HISTORY_TOPIC];
                    let (Some(offset), Some(epoch)) = (pos["offset"].as_u64(), pos["epoch"].as_str()) else {
                        h.unexpected
                            .push(format!("an ack without the topic's position: {text}"));
                        continue;
                    };
                    if resubscribe {
                        h.epochs.insert(epoch.to_owned());
                        h.recovered.push(v["recovered"][HISTORY_TOPIC] == true);
                        h.acked_at_resubscribe.push(acked_before);
                    } else if last.is_none() {
                        h.start = Some(offset);
                        h.start_epoch = epoch.to_owned();
                        last = Some((offset, epoch.to_owned()));
                    }
                }
                (Some("message"), _) if v["topic"] == HISTORY_TOPIC => {
                    let (Some(offset), Some(epoch), Some(seq)) =
                        (v["offset"].as_u64(), v["epoch"].as_str(), v["data"]["seq"].as_u64())
                    else {
                        h.unexpected
                            .push(format!("a message without offset, epoch or seq: {text}"));
                        continue;
                    };
                    h.epochs.insert(epoch.to_owned());
                    h.seq_at.insert(offset, seq);
                    last = Some((offset, epoch.to_owned()));
                    log.lock().unwrap().conns.last_mut().expect("a connection").push(offset);
                }
                _ => h.unexpected.push(text),
            }
        }
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % RECONNECT_JITTER_MS)).await;
    }
}

/// What the WebSocket publisher did.
#[derive(Default)]
struct PubLog {
    /// offset -> seq of every publish acknowledged.
    acked: BTreeMap<u64, u64>,
    epochs: BTreeSet<String>,
    /// Publishes sent that were never acknowledged (their connection closed first).
    unacked: u64,
    /// Publishes answered with an error, and other unexpected frames.
    unexpected: Vec<String>,
    reconnects: u64,
}

/// Publishes `{"seq": n}` to [`HISTORY_TOPIC`] every 20 ms over a WebSocket through HAProxy
/// (so it too is drained and reconnects during the restart), each with `id` = n; only
/// acknowledged publishes count, by the offset their ack carries. `acked_head` follows the
/// highest offset acknowledged. After `stop` it waits (at most 2 s) for the answers still due.
async fn ws_publisher(url: String, log: Arc<Mutex<PubLog>>, acked_head: Arc<AtomicU64>, stop: CancellationToken) {
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut first = true;
    'connect: loop {
        if stop.is_cancelled() {
            return;
        }
        let Ok(mut client) = RawClient::connect_with(&url, opts.clone()).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if !first {
            log.lock().unwrap().reconnects += 1;
        }
        first = false;
        let mut pending = BTreeSet::new();
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            let frame = tokio::select! {
                _ = tick.tick(), if stopping.is_none() => {
                    if stop.is_cancelled() {
                        stopping = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                        if pending.is_empty() {
                            return;
                        }
                        continue;
                    }
                    seq += 1;
                    let publish = json!({"op": "publish", "topic": HISTORY_TOPIC, "data": {"seq": seq}, "id": seq});
                    if client.send_text(publish.to_string()).await.is_ok() {
                        pending.insert(seq);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)), if stopping.is_some() => {
                    log.lock().unwrap().unacked += pending.len() as u64;
                    return;
                }
                f = client.next() => f,
            };
            let Some(frame) = frame else {
                log.lock().unwrap().unacked += pending.len() as u64;
                if stopping.is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % RECONNECT_JITTER_MS)).await;
                continue 'connect;
            };
            let RawFrame::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            let mut l = log.lock().unwrap();
            match (v["type"].as_str(), v["id"].as_u64()) {
                (Some("welcome"), _) => {}
                (Some("ack"), Some(id)) if pending.remove(&id) => {
                    let (Some(offset), Some(epoch)) = (v["offset"].as_u64(), v["epoch"].as_str()) else {
                        l.unexpected
                            .push(format!("a publish ack without offset or epoch: {text}"));
                        continue;
                    };
                    l.epochs.insert(epoch.to_owned());
                    l.acked.insert(offset, id);
                    acked_head.fetch_max(offset, Ordering::AcqRel);
                }
                _ => l.unexpected.push(text),
            }
            drop(l);
            if stopping.is_some() && pending.is_empty() {
                return;
            }
        }
    }
}

/// Where a subscriber's offsets jump or repeat: `(connection, since, previous, next)` for
/// each break, with `since` the offset that connection resubscribed with.
fn seams(conns: &[Vec<u64>], since: &[u64], at: &[(String, Duration)]) -> String {
    let mut out = Vec::new();
    let mut prev: Option<u64> = None;
    for (i, c) in conns.iter().enumerate() {
        let s = i.checked_sub(1).and_then(|j| since.get(j));
        for (n, &o) in c.iter().enumerate() {
            if let Some(p) = prev.filter(|p| o != p + 1) {
                out.push(format!(
                    "connection {i} (on {:?}, since {s:?}), its message {n}: {p} then {o}",
                    at.get(i)
                ));
            }
            prev = Some(o);
        }
    }
    out.join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_with_history_loses_nothing() {
    let _turn = SERIAL.lock().await;
    tokio::time::timeout(
        Duration::from_secs(60),
        keeping_logs("fleet-history", |dir| async move { history_restart_in(&dir).await }),
    )
    .await
    .expect("the rolling restart with history must finish within 60 s")
    .unwrap();
}

async fn history_restart_in(dir: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let mut fleet = Fleet::start(
        dir,
        &[
            ("HERALD_HISTORY", HISTORY_ENTRY),
            // One publisher at 50/s; the default per-connection limit is far above, but a
            // reconnect must not meet a burst limit either.
            ("HERALD_LIMITS__PUBLISH_PER_SECOND", "0"),
        ],
    )
    .await?;

    let stop = CancellationToken::new();
    let acked_head = Arc::new(AtomicU64::new(0));
    let subs: Vec<Arc<Mutex<SubLog>>> = (0..SUBSCRIBERS).map(|_| Arc::default()).collect();
    let hists: Vec<Arc<Mutex<HistoryLog>>> = (0..SUBSCRIBERS).map(|_| Arc::default()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (s, h) in subs.iter().zip(&hists) {
        tasks.spawn(history_subscriber(
            fleet.lb.url("/ws"),
            s.clone(),
            h.clone(),
            acked_head.clone(),
            fleet.started,
            stop.clone(),
        ));
    }
    wait_until("every subscriber subscribed", Duration::from_secs(10), || {
        all_connected(&subs) && hists.iter().all(|h| h.lock().unwrap().start.is_some())
    })
    .await?;
    println!("subscribers per node at start: {}", distribution(&subs));

    let publog = Arc::new(Mutex::new(PubLog::default()));
    let publishing = CancellationToken::new();
    let publisher = tokio::spawn(ws_publisher(
        fleet.lb.url("/ws"),
        publog.clone(),
        acked_head.clone(),
        publishing.clone(),
    ));
    wait_until("every subscriber received messages", Duration::from_secs(10), || {
        subs.iter()
            .all(|s| s.lock().unwrap().conns.iter().map(Vec::len).sum::<usize>() >= 5)
    })
    .await?;

    fleet.roll(&subs, |_| {}).await?;

    // Go on publishing a moment with everyone back, then stop and read the stream's head.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publishing.cancel();
    publisher.await?;
    let admin = fleet.specs[0].admin_addr();
    let (status, body) = http_request(admin, "GET", &format!("/api/topics/{HISTORY_TOPIC}"), &[], b"").await?;
    ensure!(status == 200, "GET /api/topics/{HISTORY_TOPIC}: {status}");
    let head: Value = serde_json::from_slice(&body)?;
    let head_offset = head["offset"]
        .as_u64()
        .with_context(|| format!("no offset in {head}"))?;
    wait_until(
        "every subscriber caught up with the head",
        Duration::from_secs(10),
        || {
            subs.iter().all(|s| {
                let l = s.lock().unwrap();
                l.conns.iter().flatten().last().is_some_and(|&o| o >= head_offset)
            })
        },
    )
    .await?;
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    let p = publog.lock().unwrap();
    ensure!(p.unexpected.is_empty(), "the publisher got {:?}", p.unexpected);
    ensure!(p.epochs.len() == 1, "publish acks carried epochs {:?}", p.epochs);
    let epoch = p.epochs.first().expect("one epoch").clone();
    ensure!(
        head["epoch"] == epoch.as_str(),
        "the stream's epoch changed: {head} after acks in {epoch}"
    );
    let acked = &p.acked;
    ensure!(acked.len() >= 100, "only {} publishes acknowledged", acked.len());
    println!(
        "\npublished every 20 ms over a WebSocket through HAProxy: {} acknowledged, {} unacknowledged \
         (in flight at a drain close), publisher reconnected {} times; stream head {head_offset}",
        acked.len(),
        p.unacked,
        p.reconnects
    );
    println!("subscriber  reconnects  received  missed  duplicates  from_history  failed_connects");
    // Problems are collected so the table is printed before the test fails.
    let mut problems = Vec::new();
    macro_rules! check {
        ($cond:expr, $($fmt:tt)+) => {
            if !$cond {
                problems.push(format!($($fmt)+));
            }
        };
    }
    let (mut total_reconnects, mut total_missed, mut total_dups, mut total_replayed) = (0, 0, 0, 0);
    for (k, (s, h)) in subs.iter().zip(&hists).enumerate() {
        let l = s.lock().unwrap();
        let h = h.lock().unwrap();
        for c in &l.closes {
            check!(c.1 == 1001, "subscriber {k} saw close {c:?}");
        }
        check!(h.unexpected.is_empty(), "subscriber {k} got {:?}", h.unexpected);
        check!(
            h.epochs.len() == 1 && h.epochs.contains(&epoch),
            "subscriber {k} saw epochs {:?}, the publisher {epoch}",
            h.epochs
        );
        let reconnects = l.conns.len() - 1;
        check!(
            h.recovered.len() == reconnects && h.recovered.iter().all(|r| *r),
            "subscriber {k}: {reconnects} reconnects, recovered {:?}",
            h.recovered
        );
        let start = h.start.unwrap_or_default();
        let received: Vec<u64> = l.conns.iter().flatten().copied().collect();
        let unique: BTreeSet<u64> = received.iter().copied().collect();
        let duplicates = received.len() - unique.len();
        // Every acknowledged publish after the subscriber's first position arrived.
        let missed: Vec<u64> = acked
            .range(start + 1..)
            .map(|(o, _)| *o)
            .filter(|o| !unique.contains(o))
            .collect();
        // Order across all connections, and nothing skipped even among unacknowledged
        // publishes: offsets are consecutive, start+1 ..= head.
        check!(
            received.windows(2).all(|w| w[1] == w[0] + 1),
            "subscriber {k}: offsets not consecutive: {}",
            seams(&l.conns, &h.since, &h.conn_at)
        );
        check!(
            received.first() == Some(&(start + 1)) && received.last() == Some(&head_offset),
            "subscriber {k}: received {:?}..{:?}, expected {}..{head_offset}",
            received.first(),
            received.last(),
            start + 1
        );
        for (o, seq) in acked.range(start + 1..) {
            check!(
                h.seq_at.get(o) == Some(seq),
                "subscriber {k}: offset {o} carried seq {:?}, the publisher's ack said {seq}",
                h.seq_at.get(o)
            );
        }
        let replayed: usize = l.conns[1..]
            .iter()
            .zip(&h.acked_at_resubscribe)
            .map(|(c, bound)| c.iter().filter(|o| *o <= bound).count())
            .sum();
        println!(
            "{k:>10}  {reconnects:>10}  {:>8}  {:>6}  {duplicates:>10}  {replayed:>12}  {:>15}",
            received.len(),
            missed.len(),
            l.failed_connects
        );
        total_reconnects += reconnects;
        total_missed += missed.len();
        total_dups += duplicates;
        total_replayed += replayed;
    }
    println!(
        "\nwith history: {total_reconnects} reconnects (each resubscribing with since, recovered: true), \
         {} messages acknowledged, {total_missed} missed, {total_dups} duplicates, at least \
         {total_replayed} delivered from history on a resubscribe ({:.2} per reconnect); test took {:?}",
        acked.len(),
        total_replayed as f64 / total_reconnects.max(1) as f64,
        started.elapsed()
    );
    let other_start = hists.iter().filter(|h| h.lock().unwrap().start_epoch != epoch).count();
    if other_start > 0 {
        println!("({other_start} subscriber(s) were first given another epoch, before the stream's first message)");
    }
    ensure!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    ensure!(total_missed == 0 && total_dups == 0);
    ensure!(total_reconnects >= SUBSCRIBERS, "only {total_reconnects} reconnects");
    Ok(())
}

const CLIENTS: usize = 2000;
const SPREAD_WINDOW_MS: u64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_spreads_2000_closes_over_the_window() {
    let _turn = SERIAL.lock().await;
    tokio::time::timeout(Duration::from_secs(60), drain_spread())
        .await
        .expect("the drain test must finish within 60 s")
        .unwrap();
}

async fn drain_spread() -> Result<()> {
    // Each client is two sockets in this process (client and server side).
    raise_fd_limit(2 * CLIENTS as u64 + 512)?;
    let node = TestNode::start_with(|c| {
        c.shutdown.drain_delay_ms = 0;
        c.shutdown.close_window_ms = SPREAD_WINDOW_MS;
        c.shutdown.grace_ms = 3000;
    })
    .await?;
    let addr = node.ws_addr();
    let permits = Arc::new(tokio::sync::Semaphore::new(100));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (permits, connected) = (permits.clone(), connected.clone());
        clients.spawn(async move {
            let permit = permits.acquire_owned().await?;
            let mut c = WireClient::connect(addr, "/ws?topics=spread").await?;
            let welcome = c.read_json(Duration::from_secs(10)).await?;
            ensure!(welcome["type"] == "welcome", "{welcome}");
            drop(permit);
            connected.fetch_add(1, Ordering::AcqRel);
            let close = c.expect_close(Duration::from_secs(30)).await?;
            Ok::<_, anyhow::Error>((close, Instant::now()))
        });
    }
    let state = node.node.state().clone();
    wait_until("2000 clients connected", Duration::from_secs(30), || {
        connected.load(Ordering::Acquire) == CLIENTS && state.connections.len() == CLIENTS
    })
    .await?;

    let t0 = Instant::now();
    node.node.begin_drain();
    let mut at = Vec::with_capacity(CLIENTS);
    while let Some(r) = clients.join_next().await {
        let ((code, reason), when) = r??;
        ensure!(code == 1001, "closed with {code} {reason:?}");
        at.push(when.duration_since(t0));
    }
    tokio::time::timeout(Duration::from_millis(SPREAD_WINDOW_MS + 3000), node.node.stopped())
        .await
        .context("the node did not stop within the window and grace")?;
    let stopped = t0.elapsed();

    at.sort();
    let window = Duration::from_millis(SPREAD_WINDOW_MS);
    let slice = window / 10;
    let mut per_slice = [0usize; 11];
    for t in &at {
        per_slice[((t.as_millis() / slice.as_millis()) as usize).min(10)] += 1;
    }
    println!(
        "2000 closes: first {:?}, median {:?}, last {:?}; per 10% of the window {:?}; node stopped after {stopped:?}",
        at[0],
        at[CLIENTS / 2],
        at[CLIENTS - 1],
        per_slice
    );
    ensure!(at[0] < slice, "the first close came only after {:?}", at[0]);
    ensure!(
        at[CLIENTS - 1] >= window * 8 / 10 && at[CLIENTS - 1] < window + Duration::from_millis(500),
        "the last close came after {:?}; the window is {window:?}",
        at[CLIENTS - 1]
    );
    ensure!(
        per_slice.iter().all(|n| *n <= CLIENTS / 4),
        "closes bunched: {per_slice:?}"
    );
    ensure!(
        state.sessions.is_empty() && state.tasks.is_empty() && state.connections.is_empty(),
        "tasks left behind: {} sessions, {} tasks, {} connections",
        state.sessions.len(),
        state.tasks.len(),
        state.connections.len()
    );
    ensure!(state.metrics.connections.get() == 0);
    let closed = &state.metrics.connections_closed;
    let by_reason: Vec<(&str, u64)> = herald_broker::metrics::CLOSE_REASONS
        .iter()
        .map(|r| (*r, closed.with_label_values(&[r]).get()))
        .filter(|(_, n)| *n > 0)
        .collect();
    ensure!(
        by_reason == [("shutdown", CLIENTS as u64)],
        "closes counted by reason: {by_reason:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_a_draining_node_at_once() {
    tokio::time::timeout(Duration::from_secs(30), second_signal())
        .await
        .expect("the second-signal test must finish within 30 s")
        .unwrap();
}

async fn second_signal() -> Result<()> {
    let dir = TempDir::new("second-signal")?;
    // A drain that would take 30 s before it even closes a client.
    let env = [
        ("HERALD_SHUTDOWN__DRAIN_DELAY_MS", "30000"),
        ("HERALD_LOG__LEVEL", "info"),
    ];
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_herald"));
    let mut node = HeraldProcess::start(bin, NodeSpec::new("second-signal", &env)?, &dir).await?;
    let mut client = WireClient::connect(node.spec.ws_addr(), "/ws?topics=t").await?;
    let welcome = client.read_json(Duration::from_secs(5)).await?;
    ensure!(welcome["type"] == "welcome", "{welcome}");

    node.terminate()?;
    herald_testkit::fleet::wait_http_status(node.spec.admin_addr(), "/readyz", 503, Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        herald_testkit::fleet::http_status(node.spec.admin_addr(), "/healthz").await == Some(200),
        "the first signal only starts the drain: the node still answers"
    );

    let t0 = Instant::now();
    node.terminate()?;
    let status = node.wait_exit(Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    ensure!(
        status.code() == Some(1),
        "a forced stop exits with status 1, not {status}"
    );
    ensure!(took < Duration::from_secs(3), "stopped only after {took:?}");
    ensure!(
        node.log_text().contains("second signal: stopping now"),
        "the log says why:\n{}",
        node.log_text()
    );
    ensure!(
        client.closed_within(Duration::from_secs(5)).await,
        "the client's connection ended with the process"
    );
    Ok(())
}
