//! The fleet as operators run it, and the two promises of the phased drain:
//!
//! - a rolling restart (SIGTERM, wait, start again) of three real `herald` processes behind
//!   a real HAProxy, relayed through a real `redis-server`, while 30 reconnecting
//!   subscribers listen through HAProxy and a publisher publishes every 20 ms: no node
//!   exits before it closed its clients with 1001, every subscriber ends up connected and
//!   receiving, and each one's messages missed in its reconnect gaps are reported (the
//!   at-most-once baseline recorded in docs/operations.md);
//! - a drain with 2,000 connected clients spreads their 1001 closes over the close window
//!   and leaves no task behind;
//! - a second SIGTERM during a drain stops the process at once (status 1).
//!
//! Both are timing-heavy, so they take turns (`SERIAL`) instead of sharing the CPUs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use herald_client::{Client, ClientOptions, Event};
use herald_testkit::fleet::{raise_fd_limit, Haproxy, HeraldProcess, NodeSpec, TempDir};
use herald_testkit::node::{http_request, TestNode};
use herald_testkit::redis::RedisServer;
use herald_testkit::wire::WireClient;
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

async fn rolling_restart() -> Result<()> {
    let mut dir = TempDir::new("fleet")?;
    let result = rolling_restart_in(&dir).await;
    if result.is_err() {
        let kept = dir.keep().display().to_string();
        return result.with_context(|| format!("node and HAProxy logs are in {kept}"));
    }
    result
}

async fn rolling_restart_in(dir: &std::path::Path) -> Result<()> {
    let started = Instant::now();
    let redis = RedisServer::start()?;
    let redis_url = redis.url();
    let (delay, window, grace) = (
        DRAIN_DELAY_MS.to_string(),
        CLOSE_WINDOW_MS.to_string(),
        GRACE_MS.to_string(),
    );
    let env = [
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

    let stop = CancellationToken::new();
    let subs: Vec<Arc<Mutex<SubLog>>> = (0..SUBSCRIBERS).map(|_| Arc::default()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for s in &subs {
        tasks.spawn(subscriber(
            lb.url(&format!("/ws?topics={TOPIC}")),
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
    let admin: Vec<SocketAddr> = specs.iter().map(NodeSpec::admin_addr).collect();
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

    for i in 0..nodes.len() {
        let name = specs[i].name.clone();
        // Publish through a node that stays up.
        target.store((i + 1) % nodes.len(), Ordering::Relaxed);
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
            all_connected(&subs)
        })
        .await?;
        println!(
            "{name}: {} clients, HAProxy down after {to_down:?}, exited (status 0) after {to_exit:?}, \
             back in the pool {to_up:?} after start; now {}",
            on_node.len(),
            distribution(&subs)
        );
    }

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
