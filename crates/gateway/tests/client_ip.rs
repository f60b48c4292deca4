//! Client addresses behind load balancers and per client IP limits, over real sockets:
//! PROXY protocol v1 and v2 headers written by hand from a trusted peer set the client
//! address `/api/connections` shows; an untrusted peer's header is not believed (hyper's
//! 400); a trusted peer without a header, with a bad one or a late one is closed and
//! counted; `X-Forwarded-For` from trusted and untrusted peers; the concurrent and the rate
//! limit per client IP (429, then a place again); and both limits with the client address
//! read from the PROXY v2 header a real HAProxy sends.
//!
//! Distinct clients on one machine: Linux routes all of 127.0.0.0/8 to loopback, so a test
//! binds its client sockets to 127.0.0.3, 127.0.0.4, ... (`wire::connect_from`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use herald_testkit::fleet::{Haproxy, NodeSpec, TempDir, HAPROXY_SOURCE};
use herald_testkit::node::{http_request, TestNode};
use herald_testkit::wire::{connect_from, Refused, WireClient};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The peers `/api/connections` lists, sorted.
async fn peers(node: &TestNode) -> Vec<String> {
    let (status, body) = http_request(node.admin_addr(), "GET", "/api/connections?limit=1000", &[], b"")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let mut out: Vec<String> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["peer"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Polls `peers` until it lists `n` connections (a session registers and leaves
/// asynchronously).
async fn peers_when(node: &TestNode, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = peers(node).await;
        if got.len() == n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upgrade of `/ws` from `from`, after `prefix`, with `headers`.
async fn upgrade_from(
    from: &str,
    node: &TestNode,
    prefix: &[u8],
    headers: &[(&str, &str)],
) -> Result<std::result::Result<WireClient, Refused>> {
    let stream = connect_from(ip(from), node.ws_addr()).await?;
    WireClient::try_upgrade(stream, node.ws_addr(), "/ws", prefix, headers).await
}

/// Like [`upgrade_from`]; the upgrade must succeed.
async fn connected(from: &str, node: &TestNode, prefix: &[u8], headers: &[(&str, &str)]) -> WireClient {
    match upgrade_from(from, node, prefix, headers).await.unwrap() {
        Ok(mut c) => {
            let welcome = c.read_text(WAIT).await.unwrap();
            assert!(welcome.contains("\"welcome\""), "{welcome}");
            c
        }
        Err(r) => panic!("upgrade from {from} refused: {} {}", r.status, r.body),
    }
}

/// A PROXY v2 header (PROXY command, TCP) from `src` to `dst`.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    let mut body = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => panic!("mixed families"),
    }
    // A NOOP TLV (type 4), as some balancers pad with: skipped.
    body.extend_from_slice(&[4, 0, 3, 0, 0, 0]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// True when the node closes `stream` without an answer within `WAIT`.
async fn closed_without_answer(mut stream: tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(WAIT, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn behind_proxy(c: &mut herald_gateway::Config) {
    c.proxy.trusted = vec!["127.0.0.5".into(), "10.0.0.0/8".into()];
    c.proxy.proxy_protocol = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_from_a_trusted_peer_name_the_client() {
    let node = TestNode::start_with(behind_proxy).await.unwrap();
    let dst = node.ws_addr();
    let _v1 = connected(
        "127.0.0.5",
        &node,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080\r\n",
        &[],
    )
    .await;
    let _v1_6 = connected(
        "127.0.0.5",
        &node,
        b"PROXY TCP6 2001:db8::7 2001:db8::1 51001 8080\r\n",
        &[],
    )
    .await;
    let _v2 = connected(
        "127.0.0.5",
        &node,
        &v2_header("198.51.100.9:40000".parse().unwrap(), dst),
        &[],
    )
    .await;
    let _v2_6 = connected(
        "127.0.0.5",
        &node,
        &v2_header(
            "[2001:db8::9]:40001".parse().unwrap(),
            "[2001:db8::1]:8080".parse().unwrap(),
        ),
        &[],
    )
    .await;
    // UNKNOWN (v1) and LOCAL (v2, HAProxy's own health checks): the peer's own address.
    let _unknown = connected("127.0.0.5", &node, b"PROXY UNKNOWN\r\n", &[]).await;
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let _local = connected("127.0.0.5", &node, local, &[]).await;
    // A peer that is not trusted needs no header.
    let _direct = connected("127.0.0.1", &node, b"", &[]).await;
    let got = peers(&node).await;
    let fixed: Vec<&String> = got.iter().filter(|p| !p.starts_with("127.")).collect();
    assert_eq!(
        fixed,
        [
            "198.51.100.9:40000",
            "203.0.113.7:51000",
            "[2001:db8::7]:51001",
            "[2001:db8::9]:40001"
        ]
    );
    let own: Vec<&String> = got.iter().filter(|p| p.starts_with("127.")).collect();
    assert_eq!(own.len(), 3, "{got:?}");
    assert_eq!(own.iter().filter(|p| p.starts_with("127.0.0.5:")).count(), 2, "{got:?}");
    assert_eq!(node.metric("herald_proxy_protocol_headers_total").await.unwrap(), 6.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peers_header_is_not_believed() {
    let node = TestNode::start_with(behind_proxy).await.unwrap();
    let refused = upgrade_from(
        "127.0.0.1",
        &node,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080\r\n",
        &[],
    )
    .await
    .unwrap()
    .err()
    .expect("not upgraded");
    assert_eq!(
        refused.status, 400,
        "hyper refuses a request line that is a PROXY header"
    );
    let v2 = v2_header("203.0.113.8:1".parse().unwrap(), node.ws_addr());
    let refused = upgrade_from("127.0.0.1", &node, &v2, &[])
        .await
        .unwrap()
        .err()
        .expect("not upgraded");
    assert_eq!(refused.status, 400);
    assert_eq!(peers(&node).await, Vec::<String>::new());
    assert_eq!(node.metric("herald_proxy_protocol_headers_total").await.unwrap(), 0.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peer_without_a_good_header_is_closed_and_counted() {
    let node = TestNode::start_with(|c| {
        behind_proxy(c);
        c.limits.handshake_timeout_ms = 300;
    })
    .await
    .unwrap();
    // No header: the upgrade request itself is not one.
    let stream = connect_from(ip("127.0.0.5"), node.ws_addr()).await.unwrap();
    let refused = WireClient::try_upgrade(stream, node.ws_addr(), "/ws", b"", &[]).await;
    assert!(
        refused.is_err(),
        "closed without an answer: {:?}",
        refused.map(|r| r.err())
    );
    // Malformed (a v1 header with one port), and too long (no line feed in 107 bytes).
    for bad in [
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        [b"PROXY TCP4 ".to_vec(), vec![b'1'; 120]].concat(),
    ] {
        let mut s = connect_from(ip("127.0.0.5"), node.ws_addr()).await.unwrap();
        s.write_all(&bad).await.unwrap();
        assert!(closed_without_answer(s).await);
    }
    // Late: half a header, then nothing until the handshake timeout.
    let mut s = connect_from(ip("127.0.0.5"), node.ws_addr()).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7").await.unwrap();
    let started = std::time::Instant::now();
    assert!(closed_without_answer(s).await);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    for (reason, n) in [
        ("missing", 1.0),
        ("malformed", 1.0),
        ("too_large", 1.0),
        ("timeout", 1.0),
    ] {
        let sample = format!("herald_proxy_protocol_errors_total{{reason=\"{reason}\"}}");
        assert_eq!(node.metric(&sample).await.unwrap(), n, "{sample}");
    }
    assert_eq!(peers(&node).await, Vec::<String>::new());
    // The node is fine: a good header still works.
    let _ok = connected("127.0.0.5", &node, b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n", &[]).await;
    assert_eq!(peers(&node).await, ["203.0.113.7:1"]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_from_trusted_peers_only() {
    let node = TestNode::start_with(|c| {
        c.proxy.trusted = vec!["127.0.0.5".into(), "10.0.0.0/8".into()];
        c.proxy.forwarded_for = true;
    })
    .await
    .unwrap();
    // The client forged the first entry; the proxies appended 198.51.100.20 and 10.1.2.3.
    let chain = [
        ("X-Forwarded-For", "6.6.6.6, 198.51.100.20"),
        ("X-Forwarded-For", "10.1.2.3"),
    ];
    let _trusted = connected("127.0.0.5", &node, b"", &chain).await;
    let untrusted = connected("127.0.0.6", &node, b"", &chain).await;
    let got = peers(&node).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].split(':').next(),
        Some("127.0.0.6"),
        "untrusted: its own address"
    );
    assert_eq!(got[1], "198.51.100.20:0");
    drop(untrusted);
    node.shutdown().await;
}

/// A hand-written upgrade of `/ws` from `from`: the answer's head and body (lowercase), and
/// the stream (open, when upgraded).
async fn raw_upgrade(from: &str, node: &TestNode) -> (String, tokio::net::TcpStream) {
    let mut s = connect_from(ip(from), node.ws_addr()).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 2048];
    let n = tokio::time::timeout(WAIT, s.read(&mut head)).await.unwrap().unwrap();
    (String::from_utf8_lossy(&head[..n]).to_ascii_lowercase(), s)
}

fn limited(concurrent: u32, rate: u32) -> impl FnOnce(&mut herald_gateway::Config) {
    move |c| {
        c.limits.connections_per_ip = concurrent;
        c.limits.connects_per_ip_per_second = rate;
        c.limits.per_ip_exempt = vec![];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrent_limit_per_ip_refuses_with_429_until_a_place_frees() {
    let node = TestNode::start_with(limited(2, 0)).await.unwrap();
    let a = connected("127.0.0.3", &node, b"", &[]).await;
    let _b = connected("127.0.0.3", &node, b"", &[]).await;
    let refused = upgrade_from("127.0.0.3", &node, b"", &[])
        .await
        .unwrap()
        .err()
        .expect("429");
    assert_eq!(refused.status, 429);
    let body: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(body["code"], "too_many_connections", "{body}");
    // Another address is not affected.
    let _other = connected("127.0.0.4", &node, b"", &[]).await;
    assert_eq!(
        node.metric("herald_ip_refusals_total{reason=\"concurrent\"}")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        node.metric("herald_connections_rejected_total{reason=\"ip_limit\"}")
            .await
            .unwrap(),
        1.0
    );
    // Closing one gives its place back.
    drop(a);
    let mut back = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while back.is_none() && tokio::time::Instant::now() < deadline {
        match upgrade_from("127.0.0.3", &node, b"", &[]).await.unwrap() {
            Ok(c) => back = Some(c),
            Err(r) => {
                assert_eq!(r.status, 429);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(back.is_some(), "a place freed after a close");
    assert_eq!(node.node.state().ip_limits.open_from(ip("127.0.0.3")), 2);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_rate_per_ip_refuses_with_429_and_recovers_after_a_second() {
    let node = TestNode::start_with(limited(0, 3)).await.unwrap();
    // Upgrades until the first refusal: a burst of 3 passes, plus one per 333 ms elapsed.
    let started = std::time::Instant::now();
    let mut held = Vec::new();
    let head = loop {
        let (head, stream) = raw_upgrade("127.0.0.3", &node).await;
        if !head.starts_with("http/1.1 101") {
            break head;
        }
        held.push(stream);
        assert!(held.len() < 50, "never refused");
    };
    let allowed = 3 + (started.elapsed().as_millis() / 333) as usize;
    assert!(
        (3..=allowed).contains(&held.len()),
        "{} passed, {allowed} allowed",
        held.len()
    );
    assert!(
        head.starts_with("http/1.1 429") && head.contains("retry-after: 1\r\n"),
        "{head}"
    );
    assert!(head.contains("too_many_connections"), "{head}");
    let _other = connected("127.0.0.4", &node, b"", &[]).await;
    assert_eq!(
        node.metric("herald_ip_refusals_total{reason=\"rate\"}").await.unwrap(),
        1.0
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (head, stream) = raw_upgrade("127.0.0.3", &node).await;
    assert!(head.starts_with("http/1.1 101"), "recovered after a second: {head}");
    held.push(stream);
    // The rate table forgets a key once its bucket is full again (swept every second).
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.node.state().ip_limits.entries() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.node.state().ip_limits.entries(), 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_use_the_client_address_a_real_haproxy_sends() {
    let dir = TempDir::new("client-ip-haproxy").unwrap();
    let node = TestNode::start_with(|c| {
        c.proxy.trusted = vec![HAPROXY_SOURCE.to_string()];
        c.proxy.proxy_protocol = true;
        c.limits.connections_per_ip = 2;
        c.limits.per_ip_exempt = vec![];
    })
    .await
    .unwrap();
    let spec = NodeSpec {
        name: "herald-1".into(),
        ws_port: node.ws_addr().port(),
        admin_port: node.admin_addr().port(),
        env: vec![],
        nofile: None,
    };
    let lb = Haproxy::start(std::slice::from_ref(&spec), "inter 200ms fall 1 rise 1", &dir)
        .await
        .unwrap();
    lb.wait_server("herald-1", "UP", Duration::from_secs(5)).await.unwrap();
    let through = |from: &'static str| {
        let lb = lb.addr();
        async move {
            let s = connect_from(ip(from), lb).await.unwrap();
            WireClient::try_upgrade(s, lb, "/ws", b"", &[]).await.unwrap()
        }
    };
    let mut held = Vec::new();
    for from in ["127.0.0.3", "127.0.0.3", "127.0.0.4"] {
        let mut c = through(from)
            .await
            .unwrap_or_else(|r| panic!("{from}: {} {}", r.status, r.body));
        assert!(c.read_text(WAIT).await.unwrap().contains("welcome"));
        held.push(c);
    }
    let got = peers_when(&node, 3).await;
    let ips: Vec<&str> = got.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        ips,
        ["127.0.0.3", "127.0.0.3", "127.0.0.4"],
        "the node sees the clients, not HAProxy"
    );
    let refused = through("127.0.0.3").await.err().expect("third from 127.0.0.3 refused");
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("too_many_connections"));
    let mut fourth = through("127.0.0.4").await.expect("127.0.0.4 has a place left");
    assert!(fourth.read_text(WAIT).await.unwrap().contains("welcome"));
    assert_eq!(
        node.metric("herald_ip_refusals_total{reason=\"concurrent\"}")
            .await
            .unwrap(),
        1.0
    );
    assert!(node.metric("herald_proxy_protocol_headers_total").await.unwrap() >= 5.0);
    // HAProxy's health checks go to the admin port and carry no header: nothing failed.
    assert_eq!(
        node.metric("herald_proxy_protocol_errors_total{reason=\"missing\"}")
            .await
            .unwrap(),
        0.0
    );
    // A client's close frees its place, seen through HAProxy too.
    drop(held.remove(0));
    let deadline = tokio::time::Instant::now() + WAIT;
    let again = loop {
        match through("127.0.0.3").await {
            Ok(c) => break Some(c),
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => break None,
        }
    };
    assert!(again.is_some(), "127.0.0.3 got its place back");
    drop(lb);
    node.shutdown().await;
}
