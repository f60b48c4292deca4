//! Metric values move exactly as known traffic says they must. The tests parse the
//! Prometheus text of `/metrics` before and after: 10 HTTP publishes to 3 subscribers add
//! exactly 30 deliveries, 30 text frames and their bytes, 30 write-latency observations and
//! 10 fan-outs; closes, pings, drops, relay traffic, client errors and rejections land in
//! their labelled series.

mod common;

use std::time::Duration;

use common::{Api, WAIT};
use herald_testkit::node::{parse_metric, MemoryCluster, TestNode};
use herald_testkit::wire::WireClient;
use serde_json::{json, Value};

/// Scrapes a node and counts its own scrapes (each one is an admin request too).
struct Scraper<'a> {
    node: &'a TestNode,
    scrapes: u64,
}

impl Scraper<'_> {
    async fn text(&mut self) -> String {
        self.scrapes += 1;
        self.node.metrics_text().await.unwrap()
    }

    /// Scrapes until `sample` reaches `value` (counters flushed after a write may trail the
    /// client's read by a moment).
    async fn until(&mut self, sample: &str, value: f64) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.text().await;
            let got = parse_metric(&text, sample);
            if got == value {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} stayed at {got}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn delta(before: &str, after: &str, sample: &str) -> f64 {
    parse_metric(after, sample) - parse_metric(before, sample)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_messages_to_three_subscribers_count_exactly() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    let mut m = Scraper {
        node: &node,
        scrapes: 0,
    };
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut c = WireClient::connect(node.ws_addr(), "/ws?topics=prices").await.unwrap();
        c.read_text(WAIT).await.unwrap(); // welcome
        subs.push(c);
    }
    let text_frames = "herald_frames_sent_total{kind=\"text\"}";
    let before = m.until(text_frames, 3.0).await;
    m.scrapes = 0;
    assert_eq!(parse_metric(&before, "herald_connections"), 3.0);
    assert_eq!(
        parse_metric(&before, "herald_connections_opened_total{mode=\"json\"}"),
        3.0
    );
    assert_eq!(parse_metric(&before, "herald_subscriptions"), 3.0);
    assert_eq!(parse_metric(&before, "herald_topics"), 1.0);

    for i in 0..10 {
        let r = api
            .post_json("/api/publish", &json!({"topic": "prices", "data": {"seq": i}}))
            .await;
        assert_eq!(r.json()["delivered"], 3);
    }
    let mut frame_bytes = 0u64;
    for c in subs.iter_mut() {
        for i in 0..10 {
            let f = c.read_frame(WAIT).await.unwrap();
            let v: Value = serde_json::from_slice(&f.payload).unwrap();
            assert_eq!(v["data"]["seq"], i);
            frame_bytes += 2 + f.payload.len() as u64; // short frames: a 2-byte header
        }
    }
    let after = m.until(text_frames, 33.0).await;
    let d = |s: &str| delta(&before, &after, s);
    assert_eq!(d("herald_messages_delivered_total"), 30.0);
    assert_eq!(d("herald_messages_published_total{source=\"http\"}"), 10.0);
    assert_eq!(d("herald_messages_published_total{source=\"websocket\"}"), 0.0);
    assert_eq!(d(text_frames), 30.0);
    assert_eq!(d("herald_bytes_sent_total{kind=\"text\"}"), frame_bytes as f64);
    assert_eq!(d("herald_frame_write_latency_seconds_count"), 30.0);
    assert_eq!(d("herald_fanout_duration_seconds_count"), 10.0);
    assert_eq!(d("herald_messages_dropped_total{reason=\"slow_consumer\"}"), 0.0);
    // The 10 publishes plus every scrape but the last (counted after it rendered).
    let requests = 10.0 + (m.scrapes - 1) as f64 + 1.0;
    assert_eq!(d("herald_http_requests_total{status=\"2xx\"}"), requests);
    assert_eq!(d("herald_http_request_duration_seconds_count"), requests);

    // A ping each, then a clean close each.
    for c in subs.iter_mut() {
        c.send_frame(true, 9, b"hi", true, 0).await.unwrap();
        assert_eq!(c.read_frame(WAIT).await.unwrap().opcode, 10);
        c.send_frame(true, 8, &1000u16.to_be_bytes(), true, 0).await.unwrap();
        assert_eq!(c.expect_close(WAIT).await.unwrap().0, 1000);
    }
    let closed = "herald_connections_closed_total{reason=\"client_close\"}";
    let end = m.until(closed, 3.0).await;
    let d = |s: &str| delta(&after, &end, s);
    assert_eq!(parse_metric(&end, "herald_connections"), 0.0);
    assert_eq!(parse_metric(&end, "herald_subscriptions"), 0.0);
    assert_eq!(parse_metric(&end, "herald_topics"), 0.0);
    assert_eq!(d("herald_frames_sent_total{kind=\"pong\"}"), 3.0);
    assert_eq!(d("herald_frames_sent_total{kind=\"close\"}"), 3.0);
    assert_eq!(d("herald_frames_received_total{kind=\"ping\"}"), 3.0);
    assert_eq!(d("herald_bytes_received_total{kind=\"ping\"}"), 6.0);
    assert_eq!(d("herald_frames_received_total{kind=\"close\"}"), 3.0);
    assert_eq!(d("herald_bytes_received_total{kind=\"close\"}"), 6.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drops_match_what_the_api_reported() {
    let node = TestNode::start_with(|c| c.outbox.max_frames = 1).await.unwrap();
    let api = Api::new(&node);
    let mut m = Scraper {
        node: &node,
        scrapes: 0,
    };
    let mut slow = WireClient::connect(node.ws_addr(), "/ws?topics=flood").await.unwrap();
    slow.read_text(WAIT).await.unwrap();
    let before = m.text().await;
    let messages: Vec<Value> = (0..200).map(|i| json!({"topic": "flood", "data": i})).collect();
    let v = api
        .post_json("/api/publish/batch", &json!({"messages": messages}))
        .await
        .json();
    let sum = |k: &str| -> f64 {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[k].as_f64().unwrap())
            .sum()
    };
    let (delivered, dropped) = (sum("delivered"), sum("dropped"));
    assert_eq!(delivered + dropped, 200.0);
    assert!(
        dropped > 0.0,
        "a one-frame outbox must overflow under a 200-message burst"
    );
    let after = m.text().await;
    assert_eq!(delta(&before, &after, "herald_messages_delivered_total"), delivered);
    assert_eq!(
        delta(
            &before,
            &after,
            "herald_messages_dropped_total{reason=\"slow_consumer\"}"
        ),
        dropped
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_traffic_and_relay_health_are_measured() {
    let cluster = MemoryCluster::start(2).await.unwrap();
    let (n0, n1) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut sub = WireClient::connect(n1.ws_addr(), "/ws?topics=x").await.unwrap();
    sub.read_text(WAIT).await.unwrap();
    let (b0, b1) = (n0.metrics_text().await.unwrap(), n1.metrics_text().await.unwrap());
    for i in 0..5 {
        let r = Api::new(n0)
            .post_json("/api/publish", &json!({"topic": "x", "data": i}))
            .await;
        assert_eq!(r.status, 200);
        sub.read_text(WAIT).await.unwrap();
    }
    let (a0, a1) = (n0.metrics_text().await.unwrap(), n1.metrics_text().await.unwrap());
    assert_eq!(delta(&b0, &a0, "herald_messages_published_total{source=\"http\"}"), 5.0);
    assert_eq!(
        delta(&b1, &a1, "herald_messages_published_total{source=\"relay\"}"),
        5.0
    );
    assert_eq!(delta(&b1, &a1, "herald_relay_messages_total{direction=\"in\"}"), 5.0);
    assert_eq!(delta(&b1, &a1, "herald_relay_latency_seconds_count"), 5.0);
    assert_eq!(delta(&b1, &a1, "herald_messages_delivered_total"), 5.0);
    assert_eq!(delta(&b0, &a0, "herald_relay_messages_total{direction=\"in\"}"), 0.0);
    assert_eq!(parse_metric(&a0, "herald_relay_up"), 1.0);

    cluster.hub.set_up(false);
    let mut m = Scraper { node: n0, scrapes: 0 };
    m.until("herald_relay_up", 0.0).await;
    let ready = Api::new(n0).get("/readyz").await;
    assert_eq!((ready.status, ready.json()["reason"].clone()), (200, json!("degraded")));
    m.until(r#"herald_relay_shard_up{shard="0"}"#, 0.0).await;
    cluster.hub.set_up(true);
    m.until("herald_relay_up", 1.0).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_rejections_build_info_and_draining_are_counted() {
    let node = TestNode::start_with(|c| c.shutdown.drain_delay_ms = 300).await.unwrap();
    let before = node.metrics_text().await.unwrap();
    assert_eq!(
        parse_metric(
            &before,
            &format!("herald_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    let mut c = WireClient::connect(node.ws_addr(), "/ws").await.unwrap();
    c.read_text(WAIT).await.unwrap();
    c.send_text("{not json").await.unwrap();
    let e: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(e["code"], "invalid_json");
    let refused = WireClient::try_connect(node.ws_addr(), "/raw/no%20spaces")
        .await
        .unwrap();
    assert_eq!(refused.err().map(|r| r.status), Some(400));
    let api = Api::new(&node);
    api.get("/api/nope").await;
    let after = node.metrics_text().await.unwrap();
    assert_eq!(
        delta(&before, &after, "herald_client_errors_total{code=\"invalid_json\"}"),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "herald_connections_rejected_total{reason=\"bad_request\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(&before, &after, "herald_http_requests_total{status=\"4xx\"}"),
        1.0
    );
    assert_eq!(parse_metric(&after, "herald_draining"), 0.0);
    api.call("POST", "/api/drain", &[], b"").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(node.metric("herald_draining").await.unwrap(), 1.0);
    node.shutdown().await;
}
