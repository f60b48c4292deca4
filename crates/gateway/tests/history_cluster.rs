//! Topic history across a cluster, with a real `redis-server`: offsets agree on every node,
//! a client recovers onto another node, a Redis restarted without persistence starts a new
//! epoch (`recovered: false`), and gap filling: a node whose link to Redis is cut while
//! another node publishes delivers everything it missed to its subscribers, in order and
//! once, without any client reconnecting.

mod history_support;

use std::time::Duration;

use herald_gateway::config::HistoryEntry;
use herald_gateway::Config;
use herald_testkit::node::{redis_member_config, RedisCluster, TestNode};
use herald_testkit::redis::RedisServer;
use herald_testkit::tcp_proxy::TcpProxy;
use herald_testkit::wire::WireClient;
use history_support::*;
use serde_json::{json, Value};

fn history(c: &mut Config) {
    c.history.push(HistoryEntry {
        topics: "h.>".into(),
        size: 100_000,
        ..Default::default()
    });
    c.limits.publish_per_second = 0;
    c.limits.publish_bytes_per_second = 0;
}

async fn messages(c: &mut WireClient, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = match c.read_text(WAIT).await {
            Ok(t) => serde_json::from_str::<Value>(&t).unwrap(),
            Err(e) => panic!("after {} messages (last {:?}): {e}", out.len(), out.last()),
        };
        if v["type"] == "message" {
            out.push(v["offset"].as_u64().expect("offset"));
        }
    }
    out
}

async fn subscribe(c: &mut WireClient, topic: &str, since: Option<(u64, &str)>, id: u64) -> Value {
    let mut req = json!({"op":"subscribe","topics":[topic],"id":id});
    if let Some((offset, epoch)) = since {
        req["since"] = json!({ topic: {"offset": offset, "epoch": epoch} });
    }
    send(c, req).await;
    let (ack, before) = until_answer(c, id).await;
    assert!(
        before.iter().all(|m| m["type"] != "message"),
        "messages before the ack: {before:?}"
    );
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_agree_across_nodes_and_a_client_recovers_onto_another_node() {
    let cluster = RedisCluster::start_with(2, history).await.unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut sub_a = client(a, "/ws").await;
    let mut sub_b = client(b, "/ws").await;
    let ack = subscribe(&mut sub_a, "h.room", None, 1).await;
    let epoch = ack["positions"]["h.room"]["epoch"].as_str().unwrap().to_owned();
    let ack_b = subscribe(&mut sub_b, "h.room", None, 1).await;
    assert_eq!(
        ack_b["positions"]["h.room"]["epoch"],
        epoch.as_str(),
        "one stream for the cluster"
    );
    // Both nodes publish; offsets are one sequence, delivered in the same order everywhere.
    let mut pa = client(a, "/ws").await;
    let mut pb = client(b, "/ws").await;
    for n in 1..=20u64 {
        let p = if n.is_multiple_of(2) { &mut pa } else { &mut pb };
        send(p, json!({"op":"publish","topic":"h.room","data":n,"id":n})).await;
        let (ack, _) = until_answer(p, n).await;
        assert_eq!(ack["offset"], n, "{ack}");
        assert_eq!(ack["epoch"], epoch.as_str());
    }
    assert_eq!(messages(&mut sub_a, 20).await, (1..=20).collect::<Vec<_>>());
    assert_eq!(messages(&mut sub_b, 20).await, (1..=20).collect::<Vec<_>>());
    // A's subscriber goes away at offset 20; 10 more are published; it comes back on B.
    drop(sub_a);
    for n in 21..=30u64 {
        send(&mut pa, json!({"op":"publish","topic":"h.room","data":n,"id":n})).await;
        until_answer(&mut pa, n).await;
    }
    let mut back = client(b, "/ws").await;
    let ack = subscribe(&mut back, "h.room", Some((20, &epoch)), 2).await;
    assert_eq!(ack["recovered"]["h.room"], true, "{ack}");
    assert_eq!(messages(&mut back, 10).await, (21..=30).collect::<Vec<_>>());
    // The history API answers the same on both nodes.
    for n in [a, b] {
        let (s, body) =
            herald_testkit::node::http_request(n.admin_addr(), "GET", "/api/topics/h.room/history?since=25", &[], b"")
                .await
                .unwrap();
        assert_eq!(s, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["offset"].clone(), v["epoch"].clone()), (json!(30), json!(epoch)));
        assert_eq!(v["messages"].as_array().unwrap().len(), 5);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_without_persistence_means_a_new_epoch() {
    let mut cluster = RedisCluster::start_with(1, history).await.unwrap();
    let node = &cluster.nodes[0];
    let mut p = client(node, "/ws").await;
    let mut epoch = String::new();
    for n in 1..=5u64 {
        send(&mut p, json!({"op":"publish","topic":"h.x","data":n,"id":n})).await;
        epoch = until_answer(&mut p, n).await.0["epoch"].as_str().unwrap().to_owned();
    }
    cluster.redis.restart().unwrap();
    cluster.wait_ready(WAIT).await.unwrap();
    // Publishing works again once the relay is back, in a new epoch from offset 1.
    let mut p = client(&cluster.nodes[0], "/ws").await;
    let mut ack = Value::Null;
    for attempt in 0..50u64 {
        send(
            &mut p,
            json!({"op":"publish","topic":"h.x","data":"after","id":100 + attempt}),
        )
        .await;
        ack = until_answer(&mut p, 100 + attempt).await.0;
        if ack["type"] == "ack" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ack["offset"], 1, "{ack}");
    assert_ne!(ack["epoch"], epoch.as_str());
    let mut s = client(&cluster.nodes[0], "/ws").await;
    let got = subscribe(&mut s, "h.x", Some((5, &epoch)), 1).await;
    assert_eq!(got["recovered"]["h.x"], false, "{got}");
    assert_eq!(messages(&mut s, 1).await, vec![1], "what the new stream holds");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_between_one_node_and_redis_loses_nothing_on_history_topics() {
    let redis = RedisServer::start().unwrap();
    let proxy = TcpProxy::start(redis.addr()).await.unwrap();
    let mut ca = redis_member_config("node-a", &redis.url());
    history(&mut ca);
    let mut cb = redis_member_config("node-b", &proxy.redis_url());
    history(&mut cb);
    let a = TestNode::start_config(ca, None).await.unwrap();
    let b = TestNode::start_config(cb, None).await.unwrap();
    let cluster = RedisCluster {
        redis,
        nodes: vec![a, b],
    };
    cluster.wait_ready(WAIT).await.unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut s = client(b, "/ws").await;
        subscribe(&mut s, "h.feed", None, 1).await;
        subs.push(s);
    }
    let mut p = client(a, "/ws").await;
    // Cut B off from Redis for 2 s while A publishes 1,000 messages.
    proxy.cut();
    let started = tokio::time::Instant::now();
    for n in 1..=1000u64 {
        send(&mut p, json!({"op":"publish","topic":"h.feed","data":n,"id":n})).await;
        if n.is_multiple_of(100) {
            until_answer(&mut p, n).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    tokio::time::sleep_until(started + Duration::from_secs(2)).await;
    proxy.restore();
    for s in subs.iter_mut() {
        assert_eq!(
            messages(s, 1000).await,
            (1..=1000).collect::<Vec<_>>(),
            "every message, in order, once"
        );
    }
    // Nothing more (no duplicate) arrives.
    for s in subs.iter_mut() {
        assert!(s.read_text(Duration::from_millis(300)).await.is_err());
    }
    assert!(b.metric("herald_history_gaps_total{outcome=\"filled\"}").await.unwrap() >= 1.0);
    assert_eq!(b.metric("herald_history_lost_total").await.unwrap(), 0.0);
    cluster.shutdown().await;
}
