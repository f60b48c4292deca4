//! Nodes sharding their topics over several independent `redis-server`s (`redis.urls`),
//! each owned by the test: every topic's channel (and history stream) lives on exactly the
//! shard the rendezvous hash names, messages cross nodes on each shard, one shard killed
//! fails only its own topics (readiness degraded, per-shard state and gauges) and recovers
//! when it returns, and control messages still reach every node through a shard that is up.

mod auth_support;
mod common;

use std::time::{Duration, Instant};

use auth_support::{ask, claims, hs, hs_node, ws};
use common::Api;
use herald_client::{Client, ClientError};
use herald_gateway::config::HistoryEntry;
use herald_redis::ShardRouter;
use herald_testkit::node::{http_request, ShardedCluster, TestNode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

/// The first topic `{prefix}N` that the router puts on `shard`.
fn topic_on(router: &ShardRouter, shard: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|t| router.owner(t) == shard)
        .expect("some topic lands on every shard")
}

fn router(c: &ShardedCluster) -> ShardRouter {
    ShardRouter::new(&c.shard_names())
}

async fn ready_status(node: &TestNode) -> (u16, Value) {
    let (status, body) = http_request(node.admin_addr(), "GET", "/readyz", &[], b"")
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

/// Waits until `node`'s `/readyz` shows `states` (in configuration order) for the shards.
async fn wait_shard_states(c: &ShardedCluster, node: usize, states: &[&str]) -> (u16, Value) {
    let names = c.shard_names();
    let want: Vec<Value> = names
        .iter()
        .zip(states)
        .map(|(n, s)| json!({"shard": n, "state": s}))
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = ready_status(&c.nodes[node]).await;
        if body["shards"] == Value::Array(want.clone()) {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "shards never became {want:?}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_topic_lives_on_its_own_shard_and_crosses_nodes_there() {
    let c = ShardedCluster::start_with(2, 2, |_| {}).await.unwrap();
    let r = router(&c);
    let names = c.shard_names();
    let topics = [topic_on(&r, 0, "room."), topic_on(&r, 1, "room.")];
    let mut subs = Vec::new();
    for n in &c.nodes {
        let path = format!("/ws?topics={},{}", topics[0], topics[1]);
        subs.push(Client::connect(&n.url(&path)).await.unwrap());
    }
    for (shard, topic) in topics.iter().enumerate() {
        let channel = format!("herald:{topic}");
        c.wait_numsub(shard, &channel, 2, WAIT).await.unwrap();
        assert_eq!(
            c.redis[1 - shard].pubsub_numsub(&channel).unwrap(),
            0,
            "{topic} subscribed on a shard that does not own it"
        );
    }
    // Control and canary channels are on every shard.
    for shard in 0..2 {
        c.wait_numsub(shard, "herald:#control", 2, WAIT).await.unwrap();
        c.wait_numsub(shard, "herald:#canary:node-0", 1, WAIT).await.unwrap();
    }
    // Both ways, on both shards.
    let p0 = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    let p1 = Client::connect(&c.nodes[1].url("/ws")).await.unwrap();
    for topic in &topics {
        p0.publish(topic, &json!({"from": 0, "topic": topic})).await.unwrap();
        p1.publish(topic, &json!({"from": 1, "topic": topic})).await.unwrap();
    }
    for s in subs.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..4 {
            let m = s.next_message_timeout(WAIT).await.unwrap();
            got.push((m.topic.clone(), m.json::<Value>().unwrap()["from"].as_u64().unwrap()));
        }
        got.sort();
        let mut want = vec![
            (topics[0].clone(), 0),
            (topics[0].clone(), 1),
            (topics[1].clone(), 0),
            (topics[1].clone(), 1),
        ];
        want.sort();
        assert_eq!(got, want);
        assert!(
            s.next_message_timeout(Duration::from_millis(300)).await.is_err(),
            "exactly once"
        );
    }
    // The API says which Redis carries a topic, readiness and metrics list both shards.
    for (shard, topic) in topics.iter().enumerate() {
        let t = Api::new(&c.nodes[1]).get(&format!("/api/topics/{topic}")).await;
        assert_eq!(t.status, 200, "{}", t.text());
        assert_eq!(t.json()["shard"], names[shard]);
    }
    let (status, body) = wait_shard_states(&c, 0, &["up", "up"]).await;
    assert_eq!(
        (status, body["reason"].clone(), body["relay"].clone()),
        (200, json!("ready"), json!("up"))
    );
    let node = Api::new(&c.nodes[0]).get("/api/node").await;
    assert_eq!(node.json()["relay"]["shards"], body["shards"], "{}", node.text());
    for name in &names {
        let sample = format!(r#"herald_relay_shard_up{{shard="{name}"}}"#);
        assert_eq!(c.nodes[0].metric(&sample).await.unwrap(), 1.0, "{sample}");
    }
    assert_eq!(c.nodes[0].metric("herald_relay_up").await.unwrap(), 1.0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_down_fails_only_its_topics_and_they_return_with_it() {
    let mut c = ShardedCluster::start_with(2, 2, |_| {}).await.unwrap();
    let r = router(&c);
    let names = c.shard_names();
    let (alive, dead) = (topic_on(&r, 0, "t."), topic_on(&r, 1, "t."));
    let mut sub = Client::connect(&c.nodes[1].url(&format!("/ws?topics={alive},{dead}")))
        .await
        .unwrap();
    let mut local = Client::connect(&c.nodes[0].url(&format!("/ws?topics={dead}")))
        .await
        .unwrap();
    let publisher = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    c.wait_numsub(0, &format!("herald:{alive}"), 1, WAIT).await.unwrap();
    c.wait_numsub(1, &format!("herald:{dead}"), 2, WAIT).await.unwrap();

    c.redis[1].kill().unwrap();
    let (status, body) = wait_shard_states(&c, 0, &["up", "down"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["ready"].clone(),
            body["reason"].clone(),
            body["degraded"].clone(),
            body["relay"].clone()
        ),
        (json!(true), json!("degraded"), json!(true), json!("degraded")),
        "{body}"
    );
    assert_eq!(c.nodes[0].metric("herald_relay_up").await.unwrap(), 0.0);
    let shard_up = |i: usize| format!(r#"herald_relay_shard_up{{shard="{}"}}"#, names[i]);
    assert_eq!(c.nodes[0].metric(&shard_up(0)).await.unwrap(), 1.0);
    assert_eq!(c.nodes[0].metric(&shard_up(1)).await.unwrap(), 0.0);

    // The dead shard's topic: the local subscriber gets it, the caller is told it did not
    // reach the other nodes.
    match publisher.publish(&dead, &json!("during outage")).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "relay_unavailable"),
        other => panic!("expected relay_unavailable, got {other:?}"),
    }
    assert_eq!(
        local.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#""during outage""#
    );
    // The live shard's topic crosses as if nothing happened, also from the HTTP API.
    publisher.publish(&alive, &json!("still here")).await.unwrap();
    let m = sub.next_message_timeout(WAIT).await.unwrap();
    assert_eq!((m.topic.as_str(), m.data_json()), (alive.as_str(), r#""still here""#));
    let api = Api::new(&c.nodes[0]);
    let ok = api
        .post_json("/api/publish", &json!({"topic": alive, "data": "over http"}))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let refused = api
        .post_json("/api/publish", &json!({"topic": dead, "data": "over http"}))
        .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["code"], "relay_unavailable", "{}", refused.text());
    assert_eq!(
        sub.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#""over http""#
    );
    assert!(
        sub.next_message_timeout(Duration::from_millis(300)).await.is_err(),
        "nothing from the dead shard arrived"
    );

    // Back: resubscribed on the shard, delivery resumes, the node is wholly ready again.
    c.redis[1].restart().unwrap();
    c.wait_ready(Duration::from_secs(10)).await.unwrap();
    c.wait_numsub(1, &format!("herald:{dead}"), 2, WAIT).await.unwrap();
    publisher.publish(&dead, &json!("after restart")).await.unwrap();
    let m = sub.next_message_timeout(WAIT).await.unwrap();
    assert_eq!((m.topic.as_str(), m.data_json()), (dead.as_str(), r#""after restart""#));
    let (status, body) = wait_shard_states(&c, 1, &["up", "up"]).await;
    assert_eq!((status, body["degraded"].clone()), (200, json!(false)), "{body}");
    assert_eq!(c.nodes[0].metric(&shard_up(1)).await.unwrap(), 1.0);
    assert_eq!(c.nodes[0].metric("herald_relay_up").await.unwrap(), 1.0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_relay_one_shard_down_makes_the_node_unready() {
    let mut c = ShardedCluster::start_with(2, 1, |c| c.readiness.require_relay = true)
        .await
        .unwrap();
    c.redis[0].kill().unwrap();
    let (status, body) = wait_shard_states(&c, 0, &["down", "up"]).await;
    assert_eq!((status, body["reason"].clone()), (503, json!("relay_down")), "{body}");
    c.redis[0].restart().unwrap();
    c.wait_ready(Duration::from_secs(10)).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_topic_keeps_its_stream_on_its_shard() {
    let mut c = ShardedCluster::start_with(2, 2, |c| {
        c.history = vec![HistoryEntry {
            topics: "h.>".into(),
            ..HistoryEntry::default()
        }];
    })
    .await
    .unwrap();
    let r = router(&c);
    let topics = [topic_on(&r, 0, "h."), topic_on(&r, 1, "h.")];
    let mut sub = Client::connect(&c.nodes[1].url(&format!("/ws?topics={},{}", topics[0], topics[1])))
        .await
        .unwrap();
    for (shard, topic) in topics.iter().enumerate() {
        c.wait_numsub(shard, &format!("herald:{topic}"), 1, WAIT).await.unwrap();
    }
    let publisher = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    for (shard, topic) in topics.iter().enumerate() {
        for i in 1..=3u64 {
            let pos = publisher.publish(topic, &json!(i)).await.unwrap().expect("a position");
            assert_eq!(pos.offset, i, "{topic}");
        }
        let key = format!("herald:{{{topic}}}:s");
        assert_eq!(
            c.redis[shard].command(&["EXISTS", &key]).unwrap(),
            "(integer) 1",
            "{key}"
        );
        assert_eq!(
            c.redis[1 - shard].command(&["EXISTS", &key]).unwrap(),
            "(integer) 0",
            "{key} on the other shard"
        );
    }
    for _ in 0..6 {
        assert!(sub.next_message_timeout(WAIT).await.unwrap().position.is_some());
    }
    // The other node reads each stream from its shard.
    for topic in &topics {
        let page = Api::new(&c.nodes[1])
            .get(&format!("/api/topics/{topic}/history?since=1"))
            .await;
        assert_eq!(page.status, 200, "{}", page.text());
        let offsets: Vec<u64> = page.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![2, 3], "{topic}");
    }
    // With shard 0 down, shard 1's history still appends and reads; shard 0's is refused.
    c.redis[0].kill().unwrap();
    wait_shard_states(&c, 0, &["down", "up"]).await;
    let pos = publisher.publish(&topics[1], &json!(4)).await.unwrap().unwrap();
    assert_eq!(pos.offset, 4);
    match publisher.publish(&topics[0], &json!(4)).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "relay_unavailable"),
        other => panic!("expected relay_unavailable, got {other:?}"),
    }
    let page = Api::new(&c.nodes[0])
        .get(&format!("/api/topics/{}/history?since=3", topics[1]))
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.json()["messages"][0]["data"], 4);
    let down = Api::new(&c.nodes[0])
        .get(&format!("/api/topics/{}/history", topics[0]))
        .await;
    assert_eq!(down.status, 503, "{}", down.text());
    c.redis[0].restart().unwrap();
    c.wait_ready(Duration::from_secs(10)).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_disconnected_on_every_node_while_one_shard_is_down() {
    let mut c = ShardedCluster::start_with(2, 2, |c| {
        hs_node(c);
        c.auth.authenticated_subscribe = vec![">".into()];
    })
    .await
    .unwrap();
    for shard in 0..2 {
        c.wait_numsub(shard, "herald:#control", 2, WAIT).await.unwrap();
    }
    let alice = hs(&claims("alice", 300, json!({})));
    let mut a1 = ws(c.nodes[1].ws_addr(), &format!("/ws?token={alice}"), &[]).await;
    // Whichever shard comes first in the list is the one that goes.
    c.redis[0].kill().unwrap();
    wait_shard_states(&c, 0, &["down", "up"]).await;
    wait_shard_states(&c, 1, &["down", "up"]).await;
    let r = Api::new(&c.nodes[0])
        .post_json(
            "/api/users/alice/disconnect",
            &json!({"code": 4003, "reason": "banned"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["relayed"], true, "{}", r.text());
    assert_eq!(a1.expect_close(WAIT).await.unwrap(), (4003, "banned".into()));
    // Every shard down: the request is not relayed.
    c.redis[1].kill().unwrap();
    wait_shard_states(&c, 0, &["down", "down"]).await;
    let mut a1 = ws(c.nodes[1].ws_addr(), &format!("/ws?token={alice}"), &[]).await;
    let r = Api::new(&c.nodes[0])
        .post_json("/api/users/alice/disconnect", &json!({}))
        .await;
    assert_eq!(r.json()["relayed"], false, "{}", r.text());
    assert_eq!(ask(&mut a1, json!({"op":"ping","id":1})).await["type"], "pong");
    c.shutdown().await;
}
