//! Abuse defences over real sockets: per-connection publish rate limits (refused with
//! `rate_limited`, recovered after the refill, a flooder closed with 1008; the latency
//! probe under a flood is `flood.rs`), the Origin allow-list (403
//! `origin_not_allowed` before the upgrade), publish-only admin keys (403 `forbidden`
//! outside the publish endpoints) and the listen backlog (read back from the kernel).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::raw_frames::{masked_binary_frame, read_until_close};
use common::{assert_error, Api, KEY};
use herald_testkit::node::{http_request, TestNode};
use herald_testkit::wire::WireClient;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);

async fn read_json(c: &mut WireClient) -> Value {
    c.read_json(WAIT).await.expect("a JSON frame")
}

/// A JSON client, its welcome frame read.
async fn json_client(addr: SocketAddr, path: &str) -> WireClient {
    let mut c = WireClient::connect(addr, path).await.unwrap();
    assert_eq!(read_json(&mut c).await["type"], "welcome");
    c
}

// ---------------------------------------------------------------------------------------
// Publish rate limits

#[tokio::test]
async fn a_publish_over_the_limit_gets_rate_limited_and_passes_again_after_the_refill() {
    let node = TestNode::start_with(|c| {
        c.limits.publish_per_second = 2;
        c.limits.publish_burst = 5;
    })
    .await
    .unwrap();
    let mut sub = json_client(node.ws_addr(), "/ws?topics=t").await;
    let mut publisher = json_client(node.ws_addr(), "/ws").await;
    for id in 1..=6 {
        let msg = json!({"op": "publish", "topic": "t", "data": id, "id": id}).to_string();
        publisher.send_text(&msg).await.unwrap();
    }
    for id in 1..=5 {
        let ack = read_json(&mut publisher).await;
        assert_eq!(ack, json!({"type": "ack", "id": id}));
    }
    let refused = read_json(&mut publisher).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], 6);
    assert_eq!(refused["code"], "rate_limited");
    assert!(refused["message"].as_str().unwrap().contains("rate limit"), "{refused}");
    // Without an id: dropped, and counted only.
    let msg = json!({"op": "publish", "topic": "t", "data": "dropped"}).to_string();
    publisher.send_text(&msg).await.unwrap();
    // The subscriber got the five admitted messages and nothing else.
    for id in 1..=5 {
        assert_eq!(read_json(&mut sub).await["data"], id);
    }
    // 2/s: a token every 500 ms (plus the coarse clock's 20 ms steps).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let msg = json!({"op": "publish", "topic": "t", "data": "again", "id": 7}).to_string();
    publisher.send_text(&msg).await.unwrap();
    assert_eq!(read_json(&mut publisher).await, json!({"type": "ack", "id": 7}));
    assert_eq!(read_json(&mut sub).await["data"], "again");
    assert!(
        sub.read_frame(Duration::from_millis(200)).await.is_err(),
        "nothing refused was delivered"
    );
    assert_eq!(
        node.metric(r#"herald_rate_limited_total{mode="json"}"#).await.unwrap(),
        2.0
    );
    assert_eq!(
        node.metric(r#"herald_client_errors_total{code="rate_limited"}"#)
            .await
            .unwrap(),
        1.0
    );
    node.shutdown().await;
}

#[tokio::test]
async fn the_byte_limit_counts_payload_bytes() {
    let node = TestNode::start_with(|c| {
        c.limits.max_message_bytes = 10_000;
        c.limits.publish_bytes_per_second = 1000;
        c.limits.publish_bytes_burst = 10_000;
    })
    .await
    .unwrap();
    let mut publisher = json_client(node.ws_addr(), "/ws").await;
    let big = "x".repeat(6000);
    for id in 1..=2 {
        let msg = json!({"op": "publish", "topic": "t", "data": big, "id": id}).to_string();
        publisher.send_text(&msg).await.unwrap();
    }
    assert_eq!(read_json(&mut publisher).await["type"], "ack");
    let refused = read_json(&mut publisher).await;
    assert_eq!(
        (refused["id"].clone(), refused["code"].clone()),
        (json!(2), json!("rate_limited"))
    );
    // Small messages still fit in what is left of the byte burst.
    let msg = json!({"op": "publish", "topic": "t", "data": 1, "id": 3}).to_string();
    publisher.send_text(&msg).await.unwrap();
    assert_eq!(read_json(&mut publisher).await, json!({"type": "ack", "id": 3}));
    node.shutdown().await;
}

#[tokio::test]
async fn a_raw_connection_that_stays_over_its_limit_is_dropped_counted_and_closed_with_1008() {
    let node = TestNode::start_with(|c| {
        c.limits.publish_per_second = 50;
        c.limits.publish_burst = 10;
        c.limits.publish_overlimit_close_ms = 600;
    })
    .await
    .unwrap();
    let mut sub = WireClient::connect(node.ws_addr(), "/raw/flood").await.unwrap();
    let flooder = WireClient::connect(node.ws_addr(), "/raw/flood?echo=false")
        .await
        .unwrap();
    let (buf, mut rd, mut wr) = flooder.into_split();
    let frame = masked_binary_frame(b"0123456789");
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        // Bounded: the node must close it well before this.
        while started.elapsed() < Duration::from_secs(10) {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
            sent += 1;
            if sent.is_multiple_of(64) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sent
    });
    let (code, reason) = tokio::time::timeout(Duration::from_secs(8), read_until_close(&mut rd, buf))
        .await
        .expect("closed in time")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code, 1008);
    assert!(reason.contains("publish rate limit exceeded"), "{reason}");
    assert!(took >= Duration::from_millis(550), "closed after {took:?}");
    drop(rd);
    let sent = flood.await.unwrap();
    // What the subscriber got: the burst and the rate, no more.
    let mut delivered = 0u64;
    while let Ok(f) = sub.read_frame(Duration::from_millis(300)).await {
        assert_eq!(f.payload, b"0123456789");
        delivered += 1;
    }
    let secs = took.as_secs_f64() + 0.1;
    assert!(delivered >= 10, "{delivered}");
    assert!(delivered as f64 <= 10.0 + 50.0 * secs + 2.0, "{delivered} in {secs} s");
    let limited = node.metric(r#"herald_rate_limited_total{mode="raw"}"#).await.unwrap();
    assert!(limited >= 100.0, "{limited} of {sent} sent");
    assert!(
        limited + delivered as f64 <= sent as f64,
        "{limited} + {delivered} <= {sent}"
    );
    assert_eq!(
        node.metric(r#"herald_connections_closed_total{reason="rate_limited"}"#)
            .await
            .unwrap(),
        1.0
    );
    node.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Origin allow-list

/// An upgrade of `path` with `extra` header lines; the status and (for a refusal) body.
async fn upgrade_with(addr: SocketAddr, path: &str, extra: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut buf = Vec::new();
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .context("no answer")??;
        if n == 0 {
            bail!("closed before an answer");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head.split(' ').nth(1).context("no status")?.parse()?;
    let mut body = buf[end + 4..].to_vec();
    if status != 101 {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut body)).await;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[track_caller]
fn assert_origin_refused(answer: &(u16, String)) {
    assert_eq!(answer.0, 403, "{}", answer.1);
    let v: Value = serde_json::from_str(&answer.1).unwrap();
    assert_eq!(v["code"], "origin_not_allowed", "{v}");
}

#[tokio::test]
async fn upgrades_from_origins_off_the_list_are_refused_before_the_upgrade() {
    let node = TestNode::start_with(|c| {
        c.auth.allowed_origins = vec!["https://app.example.com".into(), "https://*.example.org".into()];
    })
    .await
    .unwrap();
    let ws = node.ws_addr();
    for allowed in [
        "https://app.example.com",
        "HTTPS://App.Example.COM:443",
        "https://a.example.org",
        "https://deep.sub.example.org",
    ] {
        for path in ["/ws", "/raw/t"] {
            let r = upgrade_with(ws, path, &format!("Origin: {allowed}\r\n")).await.unwrap();
            assert_eq!(r.0, 101, "{allowed} on {path}: {}", r.1);
        }
    }
    for refused in [
        "https://evil.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.com",
        "https://example.org",
        "null",
    ] {
        for path in ["/ws?topics=a", "/raw/t"] {
            let r = upgrade_with(ws, path, &format!("Origin: {refused}\r\n")).await.unwrap();
            assert_origin_refused(&r);
        }
    }
    // No Origin (a non-browser client): allowed by default.
    assert_eq!(upgrade_with(ws, "/ws", "").await.unwrap().0, 101);
    assert_eq!(
        node.metric(r#"herald_connections_rejected_total{reason="origin_not_allowed"}"#)
            .await
            .unwrap(),
        12.0
    );
    assert_eq!(
        node.metric("herald_connections_opened_total{mode=\"json\"}")
            .await
            .unwrap(),
        5.0
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_missing_origin_can_be_refused_and_an_empty_list_allows_any() {
    let node = TestNode::start_with(|c| c.auth.allow_missing_origin = false)
        .await
        .unwrap();
    let ws = node.ws_addr();
    assert_origin_refused(&upgrade_with(ws, "/ws", "").await.unwrap());
    let r = upgrade_with(ws, "/ws", "Origin: https://anything.test\r\n")
        .await
        .unwrap();
    assert_eq!(r.0, 101, "{}", r.1);
    node.shutdown().await;
    let node = TestNode::start().await.unwrap();
    let r = upgrade_with(node.ws_addr(), "/ws", "Origin: https://anything.test\r\n")
        .await
        .unwrap();
    assert_eq!(r.0, 101, "{}", r.1);
    node.shutdown().await;
}

#[test]
fn bad_origin_entries_are_refused_at_start() {
    let mut c = herald_testkit::node::test_config("n");
    c.auth.allowed_origins = vec![
        "https://ok.example".into(),
        "example.com".into(),
        "https://a.com/x".into(),
    ];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("auth.allowed_origins: \"example.com\""), "{e}");
    assert!(e.contains("auth.allowed_origins: \"https://a.com/x\""), "{e}");
    assert!(!e.contains("ok.example"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Admin API key scopes

const PUBLISH_KEY: &str = "publish-only-0123456789";

#[tokio::test]
async fn publish_keys_may_publish_and_nothing_else() {
    let node = TestNode::start_with(|c| {
        c.admin.api_keys = vec![KEY.into()];
        c.admin.publish_keys = vec![PUBLISH_KEY.into()];
    })
    .await
    .unwrap();
    let mut sub = json_client(node.ws_addr(), "/ws?topics=t,u").await;
    let publisher = Api::with_key(&node, PUBLISH_KEY);
    let r = publisher
        .post_json("/api/publish", &json!({"topic": "t", "data": 1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = publisher
        .post_json("/api/publish/batch", &json!({"messages": [{"topic": "t", "data": 2}]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = publisher
        .post_json("/api/broadcast", &json!({"topics": ["t", "u"], "data": 3}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = publisher.post("/api/topics/t/publish", "text/plain", b"four").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(read_json(&mut sub).await["data"].clone());
        }
        v
    };
    assert_eq!(got, vec![json!(1), json!(2), json!(3), json!(3), json!("four")]);
    for (method, path) in [
        ("GET", "/api/node"),
        ("GET", "/api/topics"),
        ("GET", "/api/topics/t"),
        ("GET", "/api/connections"),
        ("GET", "/api/connections/1"),
        ("POST", "/api/connections/1/close"),
        ("POST", "/api/topics/t/disconnect"),
        ("POST", "/api/drain"),
    ] {
        let r = publisher
            .call(method, path, &[("Content-Type", "application/json")], b"{}")
            .await;
        assert_error(&r, 403, "forbidden");
    }
    // The full key still reaches everything; no key and a wrong key are 401.
    let full = Api::with_key(&node, KEY);
    assert_eq!(full.get("/api/node").await.status, 200);
    assert_error(&Api::new(&node).get("/api/node").await, 401, "unauthorized");
    let wrong = Api::with_key(&node, "publish-only-0123456780");
    assert_error(
        &wrong.post_json("/api/publish", &json!({"topic": "t", "data": 1})).await,
        401,
        "unauthorized",
    );
    assert!(
        sub.read_frame(Duration::from_millis(200)).await.is_err(),
        "nothing else published"
    );
    // Probes stay open.
    assert_eq!(
        http_request(node.admin_addr(), "GET", "/readyz", &[], b"")
            .await
            .unwrap()
            .0,
        200
    );
    node.shutdown().await;
}

#[tokio::test]
async fn publish_keys_alone_close_every_other_endpoint() {
    let node = TestNode::start_with(|c| c.admin.publish_keys = vec![PUBLISH_KEY.into()])
        .await
        .unwrap();
    assert_error(&Api::new(&node).get("/api/node").await, 401, "unauthorized");
    assert_error(
        &Api::new(&node)
            .post_json("/api/publish", &json!({"topic": "t", "data": 1}))
            .await,
        401,
        "unauthorized",
    );
    let publisher = Api::with_key(&node, PUBLISH_KEY);
    assert_error(&publisher.get("/api/connections").await, 403, "forbidden");
    let r = publisher
        .post_json("/api/publish", &json!({"topic": "t", "data": 1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    node.shutdown().await;
}

#[test]
fn admin_key_rules_are_checked_at_start() {
    let mut c = herald_testkit::node::test_config("n");
    c.admin.listen = "0.0.0.0:9090".into();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("admin.listen"), "{e}");
    // Publish keys alone close every endpoint, so they make a public listener safe.
    c.admin.publish_keys = vec![PUBLISH_KEY.into()];
    c.validate().unwrap();
    c.admin.publish_keys = vec!["short".into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("admin.publish_keys: every key must be at least 16 characters"),
        "{e}"
    );
    c.admin.publish_keys = vec![KEY.into()];
    c.admin.api_keys = vec![KEY.into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("must not also be in admin.api_keys"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Listen backlog

/// The kernel's accept-queue limit of this process's listening socket on `addr`: for a
/// listener, `tcpi_sacked` of `TCP_INFO` is `sk_max_ack_backlog`, the backlog passed to
/// `listen()` capped at `net.core.somaxconn`.
fn listen_backlog_of(addr: SocketAddr) -> Option<u32> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()? {
        let Ok(fd) = entry.ok()?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: plain getsockopt/getsockname on a descriptor of this process into
        // correctly sized buffers; a descriptor that is not a socket just fails.
        unsafe {
            let mut listening: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let ok = libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                &mut listening as *mut _ as *mut libc::c_void,
                &mut len,
            );
            if ok != 0 || listening == 0 {
                continue;
            }
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len) != 0
                || i32::from(sa.sin_family) != libc::AF_INET
                || u16::from_be(sa.sin_port) != addr.port()
            {
                continue;
            }
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                &mut info as *mut _ as *mut libc::c_void,
                &mut len,
            ) == 0
            {
                return Some(info.tcpi_sacked);
            }
        }
    }
    None
}

#[tokio::test]
async fn the_listen_backlog_is_applied_to_both_listeners() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let node = TestNode::start_with(|c| c.limits.listen_backlog = 1500).await.unwrap();
    let want = 1500.min(somaxconn);
    assert_eq!(listen_backlog_of(node.ws_addr()), Some(want));
    assert_eq!(listen_backlog_of(node.admin_addr()), Some(want));
    node.shutdown().await;
    let node = TestNode::start().await.unwrap();
    assert_eq!(listen_backlog_of(node.ws_addr()), Some(4096.min(somaxconn)));
    node.shutdown().await;
    let mut c = herald_testkit::node::test_config("n");
    c.limits.listen_backlog = 128;
    assert!(c.validate().unwrap_err().to_string().contains("limits.listen_backlog"));
}
