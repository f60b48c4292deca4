//! Bad input over real sockets: each case checks the exact answer (error frame or close
//! code and reason), that it is counted in a metric, and that the node keeps serving other
//! clients afterwards.

use std::time::Duration;

use herald_testkit::node::TestNode;
use herald_testkit::wire::WireClient;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);

async fn json_client(node: &TestNode) -> WireClient {
    let mut c = WireClient::connect(node.ws_addr(), "/ws").await.unwrap();
    let welcome: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(welcome["type"], "welcome");
    c
}

async fn request(c: &mut WireClient, text: &str) -> Value {
    c.send_text(text).await.unwrap();
    serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap()
}

/// A fresh client can still subscribe, publish and receive.
async fn node_still_serves(node: &TestNode) {
    let mut a = json_client(node).await;
    let ack = request(&mut a, r#"{"op":"subscribe","topics":["health-check"],"id":1}"#).await;
    assert_eq!(ack, serde_json::json!({"type":"ack","id":1}));
    let mut b = json_client(node).await;
    let ack = request(
        &mut b,
        r#"{"op":"publish","topic":"health-check","data":"alive","id":2}"#,
    )
    .await;
    assert_eq!(ack, serde_json::json!({"type":"ack","id":2}));
    let msg: Value = serde_json::from_str(&a.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(
        msg,
        serde_json::json!({"type":"message","topic":"health-check","data":"alive"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_error_frames_and_the_connection_stays() {
    let node = TestNode::start().await.unwrap();
    let mut c = json_client(&node).await;
    let cases: &[(&str, &str, Option<Value>)] = &[
        ("{not json", "invalid_json", None),
        ("[1,2,3]", "invalid_message", None),
        (r#"{"op":"dance","id":7}"#, "unknown_op", Some(7.into())),
        (r#"{"op":"subscribe","id":"s"}"#, "missing_field", Some("s".into())),
        (
            r#"{"op":"subscribe","topics":"a","id":8}"#,
            "invalid_field",
            Some(8.into()),
        ),
        (
            r#"{"op":"publish","topic":5,"data":1,"id":9}"#,
            "invalid_field",
            Some(9.into()),
        ),
        (
            r#"{"op":"publish","topic":"a","id":10}"#,
            "missing_field",
            Some(10.into()),
        ),
        (
            r#"{"op":"subscribe","topics":["no spaces"],"id":11}"#,
            "invalid_topic",
            Some(11.into()),
        ),
        (r#"{"op":"ping","id":{"x":1}}"#, "invalid_field", None),
    ];
    for (text, code, id) in cases {
        let e = request(&mut c, text).await;
        assert_eq!(e["type"], "error", "{text}");
        assert_eq!(e["code"], *code, "{text} -> {e}");
        assert_eq!(e.get("id").cloned(), id.clone(), "{text} -> {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    let long = format!(r#"{{"op":"subscribe","topics":["{}"],"id":12}}"#, "x".repeat(129));
    let e = request(&mut c, &long).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("invalid_topic"), Some(12))
    );
    assert!(e["message"].as_str().unwrap().contains("129 bytes"), "{e}");
    // Binary frames have no meaning on the JSON protocol.
    c.send_binary(b"\x00\x01").await.unwrap();
    let e: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(e["code"], "binary_not_supported");
    // Still the same connection, still working.
    let pong = request(&mut c, r#"{"op":"ping","id":13}"#).await;
    assert_eq!(pong, serde_json::json!({"type":"pong","id":13}));
    assert_eq!(
        node.metric(r#"herald_client_errors_total{code="invalid_json"}"#)
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        node.metric(r#"herald_client_errors_total{code="invalid_topic"}"#)
            .await
            .unwrap(),
        2.0
    );
    node_still_serves(&node).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_past_the_limit_is_refused_whole() {
    let node = TestNode::start_with(|c| c.limits.max_subscriptions = 3).await.unwrap();
    let mut c = json_client(&node).await;
    let ack = request(&mut c, r#"{"op":"subscribe","topics":["a","b"],"id":1}"#).await;
    assert_eq!(ack["type"], "ack");
    let e = request(&mut c, r#"{"op":"subscribe","topics":["c","d"],"id":2}"#).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("too_many_subscriptions"), Some(2))
    );
    // Nothing of the refused request was applied; one more still fits.
    let ack = request(&mut c, r#"{"op":"subscribe","topics":["a","c"],"id":3}"#).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(node.metric("herald_subscriptions").await.unwrap(), 3.0);
    // ?topics= past the limit is refused before the upgrade.
    let r = WireClient::try_connect(node.ws_addr(), "/ws?topics=a,b,c,d")
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("too_many_subscriptions"), "{}", r.body);
    node.shutdown().await;
}

async fn expect_close(
    node: &TestNode,
    path: &str,
    send: impl AsyncFnOnce(&mut WireClient),
    code: u16,
    reason_part: &str,
    label: &str,
) {
    let mut c = WireClient::connect(node.ws_addr(), path).await.unwrap();
    send(&mut c).await;
    let (got, reason) = c.expect_close(WAIT).await.unwrap();
    assert_eq!(got, code, "reason: {reason}");
    assert!(
        reason.contains(reason_part),
        "{reason:?} should mention {reason_part:?}"
    );
    assert!(
        c.closed_within(WAIT).await,
        "the node closes the TCP connection after the close frame"
    );
    let sample = format!(r#"herald_connections_closed_total{{reason="{label}"}}"#);
    node.metric_reaches(&sample, 1.0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_the_right_code() {
    let node = TestNode::start_with(|c| c.limits.max_message_bytes = 1024)
        .await
        .unwrap();
    // Over the size limit in one frame.
    expect_close(
        &node,
        "/ws",
        async |c| c.send_text(&"x".repeat(2000)).await.unwrap(),
        1009,
        "too big",
        "too_big",
    )
    .await;
    // Over the limit in ten fragments of 900 bytes each (every frame alone is fine).
    expect_close(
        &node,
        "/raw/big",
        async |c| {
            // The node closes as soon as the total passes the cap, so later writes may fail.
            let _ = c.send_frame(false, 2, &[1u8; 900], true, 0).await;
            for _ in 0..9 {
                let _ = c.send_frame(false, 0, &[1u8; 900], true, 0).await;
            }
        },
        1009,
        "1024 bytes",
        "too_big",
    )
    .await;
    // Invalid UTF-8 in a single text frame and in a fragmented one.
    expect_close(
        &node,
        "/ws",
        async |c| c.send_frame(true, 1, &[0xff, 0xfe], true, 0).await.unwrap(),
        1007,
        "UTF-8",
        "invalid_utf8",
    )
    .await;
    expect_close(
        &node,
        "/raw/t",
        async |c| {
            c.send_frame(false, 1, &[b'a', 0xe2], true, 0).await.unwrap();
            c.send_frame(true, 0, &[0x28, 0xa1], true, 0).await.unwrap();
        },
        1007,
        "UTF-8",
        "invalid_utf8",
    )
    .await;
    // Unmasked client frame.
    expect_close(
        &node,
        "/ws",
        async |c| c.send_frame(true, 1, b"{}", false, 0).await.unwrap(),
        1002,
        "masked",
        "protocol_error",
    )
    .await;
    // Reserved bits without an extension.
    expect_close(
        &node,
        "/ws",
        async |c| c.send_frame(true, 1, b"{}", true, 0x40).await.unwrap(),
        1002,
        "reserved",
        "protocol_error",
    )
    .await;
    // A fragmented control frame.
    expect_close(
        &node,
        "/ws",
        async |c| c.send_frame(false, 9, b"p", true, 0).await.unwrap(),
        1002,
        "fragmented",
        "protocol_error",
    )
    .await;
    // A continuation with nothing to continue, and a new message inside a fragmented one.
    expect_close(
        &node,
        "/ws",
        async |c| c.send_frame(true, 0, b"x", true, 0).await.unwrap(),
        1002,
        "continuation",
        "protocol_error",
    )
    .await;
    expect_close(
        &node,
        "/raw/t",
        async |c| {
            c.send_frame(false, 1, b"a", true, 0).await.unwrap();
            c.send_frame(true, 1, b"b", true, 0).await.unwrap();
        },
        1002,
        "fragmented",
        "protocol_error",
    )
    .await;
    // Unknown opcode.
    expect_close(
        &node,
        "/ws",
        async |c| c.send_frame(true, 3, b"", true, 0).await.unwrap(),
        1002,
        "opcode",
        "protocol_error",
    )
    .await;
    // A close with a forbidden code.
    expect_close(
        &node,
        "/ws",
        async |c| c.send_frame(true, 8, &1005u16.to_be_bytes(), true, 0).await.unwrap(),
        1002,
        "1005",
        "protocol_error",
    )
    .await;
    node_still_serves(&node).await;
    // The health-check clients just dropped; the node notices within moments.
    let mut open = f64::NAN;
    for _ in 0..100 {
        open = node.metric("herald_connections").await.unwrap();
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, 0.0, "every closed connection was released");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_within_the_limit_are_reassembled() {
    let node = TestNode::start_with(|c| c.limits.max_message_bytes = 1024)
        .await
        .unwrap();
    let mut c = WireClient::connect(node.ws_addr(), "/raw/frag").await.unwrap();
    c.send_frame(false, 1, "héllo ".as_bytes(), true, 0).await.unwrap();
    c.send_frame(true, 9, b"ping inside", true, 0).await.unwrap();
    c.send_frame(true, 0, "wörld".as_bytes(), true, 0).await.unwrap();
    let pong = c.read_frame(WAIT).await.unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (10, &b"ping inside"[..]));
    assert_eq!(c.read_text(WAIT).await.unwrap(), "héllo wörld");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let node = TestNode::start_with(|c| c.limits.handshake_timeout_ms = 300)
        .await
        .unwrap();
    // Half a request line, then silence.
    let mut s = tokio::net::TcpStream::connect(node.ws_addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("node closes the socket");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
    // Connect and say nothing at all.
    let mut s = tokio::net::TcpStream::connect(node.ws_addr()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("silent socket is closed too");
    node_still_serves(&node).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_ws_client_meets_the_first_message_deadline() {
    let node = TestNode::start_with(|c| c.limits.first_message_timeout_ms = 300)
        .await
        .unwrap();
    let mut c = json_client(&node).await;
    let (code, reason) = c.expect_close(WAIT).await.unwrap();
    assert_eq!(code, 1008, "{reason}");
    // A client subscribed at connect is not affected.
    let mut d = WireClient::connect(node.ws_addr(), "/ws?topics=x").await.unwrap();
    let _welcome = d.read_text(WAIT).await.unwrap();
    assert!(
        d.read_frame(Duration::from_millis(600)).await.is_err(),
        "no close for a subscribed client"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_closed() {
    let node = TestNode::start_with(|c| {
        c.heartbeat.ping_interval_ms = 100;
        c.heartbeat.idle_timeout_ms = 350;
    })
    .await
    .unwrap();
    let mut c = WireClient::connect(node.ws_addr(), "/ws?topics=x").await.unwrap();
    let mut pings = 0;
    let close = loop {
        let f = c.read_frame(WAIT).await.unwrap();
        match f.opcode {
            9 => pings += 1,
            8 => break f.close().unwrap(),
            _ => {}
        }
    };
    assert_eq!(close.0, 1001, "{close:?}");
    assert!(close.1.contains("idle"), "{close:?}");
    assert!(pings >= 2, "pinged before giving up ({pings})");
    let idle = r#"herald_connections_closed_total{reason="idle_timeout"}"#;
    assert_eq!(node.metric_reaches(idle, 1.0).await.unwrap(), 1.0);
    // A client that answers pings stays.
    let mut d = WireClient::connect(node.ws_addr(), "/ws?topics=x").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(900);
    while std::time::Instant::now() < deadline {
        if let Ok(f) = d.read_frame(Duration::from_millis(100)).await {
            assert_ne!(f.opcode, 8, "answering client was closed: {:?}", f.close());
            if f.opcode == 9 {
                d.send_frame(true, 10, &f.payload, true, 0).await.unwrap();
            }
        }
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_answers_503_before_the_upgrade() {
    let node = TestNode::start_with(|c| c.limits.max_connections = 2).await.unwrap();
    let _a = WireClient::connect(node.ws_addr(), "/ws?topics=a").await.unwrap();
    let _b = WireClient::connect(node.ws_addr(), "/ws?topics=a").await.unwrap();
    let r = WireClient::try_connect(node.ws_addr(), "/ws?topics=a")
        .await
        .unwrap()
        .err()
        .expect("refused");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("connection_limit"), "{}", r.body);
    assert_eq!(
        node.metric(r#"herald_connections_rejected_total{reason="connection_limit"}"#)
            .await
            .unwrap(),
        1.0
    );
    drop(_a);
    // The slot comes back once the node notices the disconnect.
    let mut ok = false;
    for _ in 0..50 {
        if WireClient::try_connect(node.ws_addr(), "/ws?topics=a")
            .await
            .unwrap()
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a freed slot is reusable");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrade_requests_get_http_errors() {
    let node = TestNode::start().await.unwrap();
    let addr = node.ws_addr();
    let r = WireClient::try_connect(addr, "/raw/has%20space")
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid_topic"));
    let r = WireClient::try_connect(addr, "/ws?topics=ok,bad*")
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(r.status, 400);
    let r = WireClient::try_connect(addr, "/raw/x?echo=maybe")
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(r.status, 400);
    let r = WireClient::try_connect(addr, "/nowhere").await.unwrap().err().unwrap();
    assert_eq!(r.status, 404);
    let (status, body) = herald_testkit::node::http_request(addr, "GET", "/ws", &[], b"")
        .await
        .unwrap();
    assert_eq!(status, 426, "{}", String::from_utf8_lossy(&body));
    let (status, _) = herald_testkit::node::http_request(addr, "POST", "/healthz", &[], b"")
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, _) = herald_testkit::node::http_request(addr, "GET", "/healthz", &[], b"")
        .await
        .unwrap();
    assert_eq!(status, 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_churn_leaves_no_topic_behind() {
    let node = TestNode::start().await.unwrap();
    let mut c = json_client(&node).await;
    for i in 0..10_000u32 {
        let op = if i % 2 == 0 { "subscribe" } else { "unsubscribe" };
        c.send_text(&format!(r#"{{"op":"{op}","topics":["churn"]}}"#))
            .await
            .unwrap();
    }
    let pong = request(&mut c, r#"{"op":"ping","id":"done"}"#).await;
    assert_eq!(pong["id"], "done");
    assert_eq!(node.metric("herald_topics").await.unwrap(), 0.0);
    assert_eq!(node.metric("herald_subscriptions").await.unwrap(), 0.0);
    assert_eq!(node.node.state().broker.registry().topic_count(), 0);
    // Disconnecting with subscriptions also cleans up.
    let mut d = json_client(&node).await;
    let _ = request(&mut d, r#"{"op":"subscribe","topics":["p","q"],"id":1}"#).await;
    assert_eq!(node.node.state().broker.registry().topic_count(), 2);
    drop(d);
    for _ in 0..100 {
        if node.node.state().broker.registry().topic_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.node.state().broker.registry().topic_count(), 0);
    node.shutdown().await;
}
