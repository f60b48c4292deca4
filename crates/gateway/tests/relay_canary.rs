//! The relay's canary against a real `redis-server`: a node whose pub/sub connection still
//! answers PING but delivers nothing (a proxy between it and Redis drops the message
//! pushes: "subscribed but silent") notices within the canary's interval and timeout,
//! counts it, replaces the connection, and, on a history topic, delivers what it missed
//! once the path delivers again. A healthy relay raises no false alarm.

mod history_support;

use std::time::Duration;

use herald_gateway::config::HistoryEntry;
use herald_gateway::Config;
use herald_testkit::node::{redis_member_config, RedisCluster, TestNode};
use herald_testkit::redis::RedisServer;
use herald_testkit::tcp_proxy::TcpProxy;
use history_support::*;
use serde_json::{json, Value};

/// Frequent canaries with a generous timeout (a loaded 2-core machine must raise no false
/// alarm); the silent node gets a short one.
fn canary(c: &mut Config) {
    c.redis.canary_interval_ms = 200;
    c.redis.canary_timeout_ms = 1000;
    c.history.push(HistoryEntry {
        topics: "h.>".into(),
        ..Default::default()
    });
}

async fn next_data(c: &mut herald_testkit::wire::WireClient) -> Value {
    loop {
        let v: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
        if v["type"] == "message" {
            return v["data"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_but_silent_connection_is_caught_replaced_and_the_gap_filled() {
    let redis = RedisServer::start().unwrap();
    let proxy = TcpProxy::start(redis.addr()).await.unwrap();
    let mut ca = redis_member_config("node-a", &redis.url());
    canary(&mut ca);
    let mut cb = redis_member_config("node-b", &proxy.redis_url());
    canary(&mut cb);
    cb.redis.canary_timeout_ms = 300;
    let a = TestNode::start_config(ca, None).await.unwrap();
    let b = TestNode::start_config(cb, None).await.unwrap();
    let cluster = RedisCluster {
        redis,
        nodes: vec![a, b],
    };
    cluster.wait_ready(WAIT).await.unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut sub = client(b, "/ws").await;
    send(&mut sub, json!({"op":"subscribe","topics":["h.feed","plain"],"id":1})).await;
    until_answer(&mut sub, 1).await;
    let mut p = client(a, "/ws").await;
    send(&mut p, json!({"op":"publish","topic":"h.feed","data":1,"id":1})).await;
    until_answer(&mut p, 1).await;
    assert_eq!(next_data(&mut sub).await, json!(1));
    assert_eq!(b.metric("herald_relay_canary_failures_total").await.unwrap(), 0.0);
    let reconnects = r#"herald_relay_link_reconnects_total{link="pubsub"}"#;
    let before = b.metric(reconnects).await.unwrap();

    // Silent: B's pub/sub connection stays open and answers PING, but delivers nothing.
    proxy.mute();
    send(&mut p, json!({"op":"publish","topic":"h.feed","data":2,"id":2})).await;
    until_answer(&mut p, 2).await;
    let muted = tokio::time::Instant::now();
    b.metric_reaches("herald_relay_canary_failures_total", 1.0)
        .await
        .unwrap();
    let noticed = muted.elapsed();
    assert!(noticed < Duration::from_secs(5), "noticed after {noticed:?}");
    b.metric_reaches(reconnects, before + 1.0).await.unwrap();
    assert_eq!(
        a.metric("herald_relay_canary_failures_total").await.unwrap(),
        0.0,
        "A's path is healthy"
    );

    // The path delivers again: the next reconnect resubscribes, history fills the gap and
    // live messages flow, each once and in order.
    proxy.unmute();
    assert_eq!(
        next_data(&mut sub).await,
        json!(2),
        "the message published while silent"
    );
    send(&mut p, json!({"op":"publish","topic":"h.feed","data":3,"id":3})).await;
    until_answer(&mut p, 3).await;
    assert_eq!(next_data(&mut sub).await, json!(3));
    // Topics without history resume too (what was published while silent is lost there).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        send(&mut p, json!({"op":"publish","topic":"plain","data":"x","id":4})).await;
        until_answer(&mut p, 4).await;
        match tokio::time::timeout(Duration::from_millis(300), next_data(&mut sub)).await {
            Ok(v) => {
                assert_eq!(v, json!("x"));
                break;
            }
            Err(_) => assert!(tokio::time::Instant::now() < deadline, "plain never resumed"),
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_relay_raises_no_canary_alarm() {
    let cluster = RedisCluster::start_with(2, canary).await.unwrap();
    let mut sub = client(&cluster.nodes[1], "/ws?topics=t").await;
    let mut p = client(&cluster.nodes[0], "/ws").await;
    // Two seconds: about ten canaries per node, with traffic flowing.
    for i in 0..20u64 {
        send(&mut p, json!({"op":"publish","topic":"t","data":i,"id":i + 1})).await;
        until_answer(&mut p, i + 1).await;
        assert_eq!(next_data(&mut sub).await, json!(i));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &cluster.nodes {
        assert!(
            n.metric("herald_relay_canaries_total").await.unwrap() >= 5.0,
            "canaries are being sent"
        );
        assert_eq!(n.metric("herald_relay_canary_failures_total").await.unwrap(), 0.0);
        assert_eq!(
            n.metric(r#"herald_relay_link_reconnects_total{link="pubsub"}"#)
                .await
                .unwrap(),
            0.0
        );
    }
    // Each node listens on its own canary channel.
    for n in &cluster.nodes {
        let channel = format!("herald:#canary:{}", n.node.node_id());
        assert_eq!(cluster.redis.pubsub_numsub(&channel).unwrap(), 1, "{channel}");
    }
    cluster.shutdown().await;
}
