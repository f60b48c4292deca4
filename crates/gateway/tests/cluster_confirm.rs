//! An acknowledged subscribe holds cluster-wide: two nodes on a real `redis-server`, a
//! subscriber on node B to a topic nobody listened to before, a publisher on node A right
//! after B's acknowledgement (the ack frame, the welcome of `?topics=`, or the 101 of
//! `/raw/{topic}`), and B must get every message. Before the relay confirmed interest, the
//! ack went out while the SUBSCRIBE still waited in a 20 ms batch window and these were
//! lost, 20 of 20.

use std::time::Duration;

use herald_testkit::node::RedisCluster;
use herald_testkit::wire::WireClient;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

async fn json_of(c: &mut WireClient) -> Value {
    serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap()
}

/// Publishes `data` to `topic` from a client on `node` and waits for the ack.
async fn publish(publisher: &mut WireClient, topic: &str, i: usize) {
    let req = json!({"op":"publish","topic":topic,"data":{"i":i},"id":i}).to_string();
    publisher.send_text(&req).await.unwrap();
    assert_eq!(json_of(publisher).await, json!({"type":"ack","id":i}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_acknowledged_on_one_node_receives_what_another_publishes_next() {
    let c = RedisCluster::start(2).await.unwrap();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let mut publisher = WireClient::connect(a.ws_addr(), "/ws").await.unwrap();
    json_of(&mut publisher).await;

    // By op.
    let mut sub = WireClient::connect(b.ws_addr(), "/ws").await.unwrap();
    json_of(&mut sub).await;
    for i in 0..20 {
        let topic = format!("fresh-op-{i}");
        let req = json!({"op":"subscribe","topics":[topic],"id":i}).to_string();
        sub.send_text(&req).await.unwrap();
        assert_eq!(json_of(&mut sub).await, json!({"type":"ack","id":i}));
        publish(&mut publisher, &topic, i).await;
        let m = json_of(&mut sub).await;
        assert_eq!(m, json!({"type":"message","topic":topic,"data":{"i":i}}), "op {i}");
    }

    // By query: the welcome frame comes after the 101, which waited for the relay.
    for i in 0..10 {
        let topic = format!("fresh-query-{i}");
        let mut s = WireClient::connect(b.ws_addr(), &format!("/ws?topics={topic}"))
            .await
            .unwrap();
        assert_eq!(json_of(&mut s).await["type"], "welcome");
        publish(&mut publisher, &topic, i).await;
        assert_eq!(json_of(&mut s).await["data"], json!({"i": i}), "query {i}");
    }

    // By raw path: no welcome at all, the 101 is the promise.
    for i in 0..10 {
        let topic = format!("fresh-raw-{i}");
        let mut s = WireClient::connect(b.ws_addr(), &format!("/raw/{topic}"))
            .await
            .unwrap();
        publish(&mut publisher, &topic, i).await;
        assert_eq!(s.read_text(WAIT).await.unwrap(), json!({"i": i}).to_string(), "raw {i}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_subscribes_say_relay_unavailable_and_hold_locally() {
    let mut c = RedisCluster::start(1).await.unwrap();
    let node = &c.nodes[0];
    let mut s = WireClient::connect(node.ws_addr(), "/ws").await.unwrap();
    json_of(&mut s).await;
    c.redis.kill().unwrap();
    // Wait until the relay noticed.
    let mut down = false;
    for _ in 0..200 {
        if node.metric("herald_relay_up").await.unwrap() == 0.0 {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(down, "the relay noticed Redis is gone");
    s.send_text(r#"{"op":"subscribe","topics":["during-outage"],"id":"s"}"#)
        .await
        .unwrap();
    let e = json_of(&mut s).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "relay_unavailable", "{e}");
    assert_eq!(e["id"], "s", "{e}");
    // Local delivery still works for it: the subscription holds on this node.
    let mut p = WireClient::connect(node.ws_addr(), "/ws").await.unwrap();
    json_of(&mut p).await;
    p.send_text(r#"{"op":"publish","topic":"during-outage","data":1}"#)
        .await
        .unwrap();
    assert_eq!(json_of(&mut s).await["data"], 1);
    // An upgrade that brings topics is not refused (the node serves its own clients), but
    // the promise cannot be made: the welcome is followed by relay_unavailable.
    let mut q = WireClient::connect(node.ws_addr(), "/ws?topics=x").await.unwrap();
    assert_eq!(json_of(&mut q).await["type"], "welcome");
    let e = json_of(&mut q).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("relay_unavailable")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("\"x\""), "{e}");
    // When Redis is back, the node subscribes what its clients hold, and the cluster
    // promise holds again.
    c.redis.restart().unwrap();
    c.wait_ready(Duration::from_secs(10)).await.unwrap();
    c.wait_numsub("herald:x", 1, WAIT).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_through_redis_are_acknowledged_in_order_and_all_cross() {
    let c = RedisCluster::start(2).await.unwrap();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let mut sub = WireClient::connect(b.ws_addr(), "/ws?topics=burst").await.unwrap();
    json_of(&mut sub).await;
    let mut p = WireClient::connect(a.ws_addr(), "/ws").await.unwrap();
    json_of(&mut p).await;
    // 500 publishes with ids in one write: each ack waits for Redis's PUBLISH reply, the
    // reader keeps reading meanwhile, and the acks still come back in request order.
    let n = 500;
    let mut all = Vec::new();
    for i in 0..n {
        let req = json!({"op":"publish","topic":"burst","data":i,"id":i}).to_string();
        all.extend(herald_protocol::ws_frame::masked_client_frame(
            0x81,
            req.as_bytes(),
            [3, 1, 4, 1],
        ));
    }
    tokio::io::AsyncWriteExt::write_all(&mut p.stream, &all).await.unwrap();
    for i in 0..n {
        assert_eq!(json_of(&mut p).await, json!({"type":"ack","id":i}), "answer {i}");
    }
    for i in 0..n {
        assert_eq!(json_of(&mut sub).await["data"], i, "message {i} on the other node");
    }
    c.shutdown().await;
}
