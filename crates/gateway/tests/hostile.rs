//! A hostile client's view of a node: requests built to cost the node CPU, descriptors or
//! memory before any WebSocket exists. Each test checks the refusal is quick, says why
//! (status and JSON `code`), is counted, and leaves the node serving its probes.
//!
//! The descriptor and memory tests run a real `herald` process (the binary under test),
//! because the limits they exercise (RLIMIT_NOFILE, resident memory) belong to a process.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::{assert_error, send_raw, Resp};
use herald_testkit::fleet::{http_status, raise_fd_limit, readiness_reason, HeraldProcess, NodeSpec, TempDir};
use herald_testkit::node::{http_request, parse_metric, TestNode};
use herald_testkit::redis::RedisServer;
use herald_testkit::wire::WireClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const QUICK: Duration = Duration::from_secs(3);

/// An upgrade request for `path` with `extra` header lines (each ending in CRLF).
fn upgrade_head(path: &str, version: &str, key: &str, extra: &str) -> String {
    format!(
        "GET {path} {version}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

async fn upgrade(addr: SocketAddr, path: &str) -> Resp {
    send_raw(addr, &upgrade_head(path, "HTTP/1.1", KEY, ""), b"", QUICK)
        .await
        .unwrap_or_else(|e| panic!("GET {}: {e:#}", &path[..path.len().min(80)]))
}

/// `n` distinct three-letter topics, comma-separated.
fn topics(n: usize) -> String {
    (0..n)
        .map(|i| {
            let l = |k: usize| (b'a' + (i / k % 26) as u8) as char;
            format!("{}{}{}", l(676), l(26), l(1))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn topic_lists_are_refused_by_their_count_before_any_topic_is_checked() {
    let node = TestNode::start_with(|c| c.limits.max_subscriptions = 8).await.unwrap();
    let addr = node.ws_addr();
    // Nine copies of one topic: one subscription, but nine items to check.
    let r = upgrade(addr, &format!("/ws?topics={}", ["a"; 9].join(","))).await;
    assert_error(&r, 400, "too_many_subscriptions");
    // Over the count, a bad topic is not even looked at.
    let r = upgrade(addr, &format!("/ws?topics=bad%20topic,{}", topics(8))).await;
    assert_error(&r, 400, "too_many_subscriptions");
    // At the count, duplicates are fine and empty items do not count.
    let r = upgrade(addr, &format!("/ws?topics=,,{},a,a,,", topics(6))).await;
    assert_eq!(r.status, 101, "{}", r.text());
    assert_eq!(
        node.metric("herald_connections_rejected_total{reason=\"bad_request\"}")
            .await
            .unwrap(),
        2.0
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_topic_list_just_over_the_limit_within_the_head_cap_is_a_clean_400() {
    let node = TestNode::start().await.unwrap();
    // 257 topics (the default limit is 256), about 1 KB: far below the 32 KiB head cap.
    let r = upgrade(node.ws_addr(), &format!("/ws?topics={}", topics(257))).await;
    assert_error(&r, 400, "too_many_subscriptions");
    node.shutdown().await;
}

#[tokio::test]
async fn a_request_head_over_the_cap_gets_431_and_is_counted() {
    let node = TestNode::start().await.unwrap();
    // The probe's 64 KB URL of 16,380 topics never reaches the topic parser.
    let r = upgrade(node.ws_addr(), &format!("/ws?topics={}", topics(16_380))).await;
    assert_eq!(r.status, 431, "{}", r.text());
    // A head of many headers counts the same, on the admin listener too.
    let pad = format!("X-Pad: {}\r\n", "p".repeat(1000)).repeat(40);
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{pad}\r\n");
    let r = send_raw(node.admin_addr(), &head, b"", QUICK).await.unwrap();
    assert_eq!(r.status, 431);
    let counted = node
        .metric_reaches("herald_connections_rejected_total{reason=\"head_too_large\"}", 1.0)
        .await
        .unwrap();
    assert_eq!(counted, 1.0);
    node.metric_reaches("herald_admin_rejected_total{reason=\"head_too_large\"}", 1.0)
        .await
        .unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn an_http_1_0_upgrade_is_refused_before_the_upgrade() {
    let node = TestNode::start().await.unwrap();
    let r = send_raw(node.ws_addr(), &upgrade_head("/ws", "HTTP/1.0", KEY, ""), b"", QUICK)
        .await
        .unwrap();
    assert_error(&r, 400, "bad_handshake");
    node.shutdown().await;
}

#[tokio::test]
async fn a_websocket_key_must_be_sixteen_bytes_in_base64() {
    let node = TestNode::start().await.unwrap();
    for key in [
        "abc",
        "AAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAAAA=",
        "!!!!!!!!!!!!!!!!!!!!!!==",
    ] {
        let r = send_raw(node.ws_addr(), &upgrade_head("/ws", "HTTP/1.1", key, ""), b"", QUICK)
            .await
            .unwrap();
        assert_error(&r, 400, "bad_handshake");
    }
    let r = upgrade(node.ws_addr(), "/ws").await;
    assert_eq!(r.status, 101, "a real key still works");
    node.shutdown().await;
}

#[tokio::test]
async fn an_invalid_topic_is_echoed_cut_short() {
    let node = TestNode::start().await.unwrap();
    let long = "t".repeat(20_000);
    for path in [format!("/raw/{long}"), format!("/ws?topics=ok,{long}")] {
        let r = upgrade(node.ws_addr(), &path).await;
        assert_error(&r, 400, "invalid_topic");
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert!(message.len() < 200, "{} bytes: {message}", message.len());
        assert!(message.contains(&format!("\"{}\"…", "t".repeat(64))), "{message}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn idle_connections_cannot_hold_more_than_their_caps() {
    let node = TestNode::start_with(|c| {
        c.limits.max_pending_handshakes = 4;
        c.admin.max_connections = 4;
    })
    .await
    .unwrap();
    for (addr, code, reason) in [
        (
            node.ws_addr(),
            "handshake_limit",
            "herald_connections_rejected_total{reason=\"handshake_limit\"}",
        ),
        (
            node.admin_addr(),
            "connection_limit",
            "herald_admin_rejected_total{reason=\"connection_limit\"}",
        ),
    ] {
        // Four sockets that never finish a request head.
        let mut idle = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            idle.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let r = send_raw(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"", QUICK)
            .await
            .unwrap();
        assert_error(&r, 503, code);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(started.elapsed() < QUICK);
        drop(idle);
        let mut ok = false;
        for _ in 0..50 {
            if http_status(addr, "/healthz").await == Some(200) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "{addr} serves again once the idle sockets are gone");
        assert!(node.metric(reason).await.unwrap() >= 1.0, "{reason}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn admin_bodies_share_one_byte_budget() {
    let node = TestNode::start_with(|c| {
        c.admin.max_body_bytes = 1 << 20;
        c.admin.max_pending_body_bytes = 2 << 20;
    })
    .await
    .unwrap();
    let head = |len: usize| {
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\n\r\n"
        )
    };
    // Two 1 MiB bodies being sent slowly take the whole budget.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(node.admin_addr()).await.unwrap();
        s.write_all(head(1 << 20).as_bytes()).await.unwrap();
        s.write_all(&[b' '; 1000]).await.unwrap();
        slow.push(s);
    }
    node.metric_reaches("herald_admin_body_bytes", (2 << 20) as f64)
        .await
        .unwrap();
    let started = Instant::now();
    let r = send_raw(node.admin_addr(), &head(1000), &[b' '; 1000], QUICK)
        .await
        .unwrap();
    assert_error(&r, 503, "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(started.elapsed() < QUICK);
    assert_eq!(
        node.metric("herald_admin_rejected_total{reason=\"body_budget\"}")
            .await
            .unwrap(),
        1.0
    );
    // A chunked body is budgeted chunk by chunk.
    let chunked =
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n";
    let r = send_raw(node.admin_addr(), chunked, b"", QUICK).await.unwrap();
    assert_error(&r, 503, "overloaded");
    drop(slow);
    let mut freed = false;
    for _ in 0..50 {
        if node.metric("herald_admin_body_bytes").await.unwrap() == 0.0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the budget comes back when the bodies are gone");
    let body = br#"{"topic":"t","data":1}"#;
    let (status, text) = http_request(node.admin_addr(), "POST", "/api/publish", &[], body)
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&text));
    node.shutdown().await;
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
}

async fn admin_metric(addr: SocketAddr, sample: &str) -> Result<f64> {
    let (status, body) = http_request(addr, "GET", "/metrics", &[], b"").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(parse_metric(&String::from_utf8_lossy(&body), sample))
}

/// At soft = hard = 256 descriptors: sessions stop at the derived budget with a quick 503,
/// and the reserve keeps the admin probes and the Redis relay working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_refusals_are_quick_and_the_reserve_holds() {
    raise_fd_limit(2048).unwrap();
    let mut redis = RedisServer::start().unwrap();
    let dir = TempDir::new("hostile-fd").unwrap();
    let mut spec = NodeSpec::new(
        "fd-node",
        &[
            ("HERALD_RELAY__KIND", "redis"),
            ("HERALD_REDIS__URL", &redis.url()),
            ("HERALD_REDIS__HEARTBEAT_INTERVAL_MS", "200"),
            ("HERALD_REDIS__HEARTBEAT_TIMEOUT_MS", "400"),
            ("HERALD_REDIS__RECONNECT_MIN_MS", "50"),
            ("HERALD_REDIS__RECONNECT_MAX_MS", "300"),
            ("HERALD_ADMIN__MAX_CONNECTIONS", "32"),
            ("HERALD_LIMITS__FIRST_MESSAGE_TIMEOUT_MS", "0"),
        ],
    )
    .unwrap();
    spec.nofile = Some(256);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_herald"));
    let node = HeraldProcess::start(bin, spec, &dir).await.unwrap();
    // 256 - (64 + 32) reserved = 160 public sockets.
    assert!(
        node.log_text().contains("connection_limit=160"),
        "the start-up log states the limit:\n{}",
        node.log_text()
    );
    let ws = node.spec.ws_addr();
    let admin = node.spec.admin_addr();
    // Open sessions until three attempts in a row are refused (a socket that was just
    // upgraded counts twice for a moment, so one refusal may come early).
    let mut open = Vec::new();
    let mut refusals = 0;
    while refusals < 3 {
        let attempt = timeout(QUICK, WireClient::try_connect(ws, "/ws?topics=t")).await;
        match attempt {
            Ok(Ok(Ok(c))) => {
                open.push(c);
                refusals = 0;
            }
            Ok(Ok(Err(refused))) => {
                assert_eq!(refused.status, 503, "{}", refused.body);
                assert!(refused.body.contains("connection_limit"), "{}", refused.body);
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => panic!("after {} sessions the upgrade failed: {e:#}", open.len()),
            Err(_) => panic!("after {} sessions an upgrade hung", open.len()),
        }
        assert!(open.len() <= 160, "more sessions than the budget");
    }
    assert_eq!(open.len(), 160, "sessions up to the budget");
    for path in ["/healthz", "/metrics", "/readyz"] {
        let started = Instant::now();
        let status = timeout(QUICK, http_request(admin, "GET", path, &[], b""))
            .await
            .unwrap_or_else(|_| panic!("{path} hung at the limit"))
            .unwrap()
            .0;
        assert_eq!(status, 200, "{path}");
        assert!(started.elapsed() < QUICK);
    }
    // Again, a few times: each refusal is quick and says why.
    for _ in 0..5 {
        let r = timeout(QUICK, WireClient::try_connect(ws, "/ws"))
            .await
            .expect("a refusal, not a hang")
            .unwrap();
        assert!(matches!(&r, Err(x) if x.status == 503), "{:?}", r.as_ref().err());
    }
    assert!(
        admin_metric(admin, "herald_connections_rejected_total{reason=\"socket_limit\"}")
            .await
            .unwrap()
            >= 5.0
    );
    // The relay reconnects at the limit: Redis goes away and comes back.
    redis.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while readiness_reason(admin).await.as_deref() != Some("degraded") {
        assert!(Instant::now() < deadline, "the node never noticed Redis was gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while readiness_reason(admin).await.as_deref() != Some("ready") {
        assert!(
            Instant::now() < deadline,
            "the relay did not reconnect at the descriptor limit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sessions that leave free their sockets for new ones.
    open.truncate(open.len() - 10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = timeout(QUICK, WireClient::connect(ws, "/ws")).await.unwrap();
    assert!(c.is_ok(), "{:?}", c.err());
    drop(open);
}

/// 2,000 connections that send request heads without ever finishing them: the node holds
/// at most `limits.max_request_head_bytes` of each, cuts each off when it passes the cap,
/// and gives the memory back once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_request_heads_hold_bounded_memory() {
    const CONNS: usize = 2000;
    const HELD: usize = 24 * 1024;
    const MORE: usize = 200 * 1024;
    /// Resident memory the held heads may add (2,000 x 24 KiB is 47 MiB of data).
    const HELD_BOUND_MIB: u64 = 160;
    /// How far above the baseline the node may stay once they are gone.
    const AFTER_MARGIN_MIB: u64 = 48;
    raise_fd_limit(2 * CONNS as u64 + 512).unwrap();
    let dir = TempDir::new("hostile-heads").unwrap();
    let spec = NodeSpec::new("head-node", &[("HERALD_LIMITS__HANDSHAKE_TIMEOUT_MS", "60000")]).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_herald"));
    let node = HeraldProcess::start(bin, spec, &dir).await.unwrap();
    let pid = node.pid().unwrap();
    let ws = node.spec.ws_addr();
    let admin = node.spec.admin_addr();
    let test_started = Instant::now();
    let baseline = rss_kib(pid).unwrap();

    let line = format!("X-Pad: {}\r\n", "p".repeat(1000));
    let mut held = String::from("GET /ws HTTP/1.1\r\nHost: x\r\n");
    while held.len() + line.len() <= HELD {
        held.push_str(&line);
    }
    let mut socks = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut s = TcpStream::connect(ws).await.unwrap();
        s.write_all(held.as_bytes()).await.unwrap();
        socks.push(s);
    }
    // Until the node has taken them all (the RSS bounds below are the assertion).
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_metric(admin, "herald_pending_handshakes").await.unwrap() < CONNS as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let holding = rss_kib(pid).unwrap();

    // Now each sends 200 KiB more, still without the blank line.
    let more = line.repeat(MORE / line.len() + 1);
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in socks {
        let more = more.clone();
        tasks.spawn(async move {
            let _ = timeout(Duration::from_secs(10), s.write_all(more.as_bytes())).await;
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            let closed = timeout(Duration::from_secs(10), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await
            .is_ok();
            (closed, got.starts_with(b"HTTP/1.1 431"))
        });
    }
    let mut peak = holding;
    let (mut closed, mut answered_431) = (0, 0);
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => break,
                Some(r) => {
                    let (c, a) = r.unwrap();
                    closed += c as usize;
                    answered_431 += a as usize;
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(20)) => peak = peak.max(rss_kib(pid).unwrap()),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid).unwrap();
    let mib = |k: u64| k / 1024;
    eprintln!(
        "RSS MiB: baseline {}, {CONNS} heads held {}, peak {}, after {}; {answered_431} saw the 431; {:?}",
        mib(baseline),
        mib(holding),
        mib(peak),
        mib(after),
        test_started.elapsed()
    );
    assert_eq!(closed, CONNS, "every connection is cut off at the head cap");
    assert!(
        peak.saturating_sub(baseline) < HELD_BOUND_MIB * 1024,
        "peak {} MiB over a {} MiB baseline",
        mib(peak),
        mib(baseline)
    );
    assert!(
        after.saturating_sub(baseline) < AFTER_MARGIN_MIB * 1024,
        "{} MiB after the connections left, baseline {} MiB",
        mib(after),
        mib(baseline)
    );
    assert!(
        admin_metric(admin, "herald_connections_rejected_total{reason=\"head_too_large\"}")
            .await
            .unwrap()
            >= CONNS as f64
    );
    assert_eq!(http_status(admin, "/healthz").await, Some(200));
}
