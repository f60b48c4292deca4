//! Disconnecting a user (`POST /api/users/{user}/disconnect`) across two nodes joined by a
//! real `redis-server`: every connection of the user on both nodes is closed with the
//! requested code and reason, other users stay, the answer counts the local closes and says
//! the request was relayed; on a single node it is not relayed; bad requests are 400. Every
//! answer is checked against docs/openapi.yaml.

mod auth_support;
mod common;

use auth_support::*;
use common::{assert_error, Api};
use std::sync::Arc;

use herald_broker::{MemoryHub, MemoryRelay, Relay};
use herald_testkit::node::{test_config, RedisCluster, TestNode};
use serde_json::json;

fn tokens(c: &mut herald_gateway::Config) {
    hs_node(c);
    c.auth.authenticated_subscribe = vec![">".into()];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_disconnected_on_every_node_through_redis() {
    let cluster = RedisCluster::start_with(2, tokens).await.unwrap();
    cluster
        .wait_numsub("herald:#control", 2, WAIT)
        .await
        .expect("both nodes listen on the control channel");
    let (n0, n1) = (&cluster.nodes[0], &cluster.nodes[1]);
    let alice = hs(&claims("alice", 300, json!({})));
    let bob = hs(&claims("bob", 300, json!({})));
    let mut a0 = ws(n0.ws_addr(), &format!("/ws?token={alice}"), &[]).await;
    let mut a0_raw = ws(n0.ws_addr(), &format!("/raw/room?token={alice}"), &[]).await;
    let mut a1 = ws(n1.ws_addr(), "/ws", &[]).await;
    assert_eq!(
        ask(&mut a1, json!({"op":"auth","token":alice,"id":1})).await["type"],
        "ack"
    );
    let mut b1 = ws(n1.ws_addr(), &format!("/ws?token={bob}"), &[]).await;

    let api = Api::new(n0);
    let r = api
        .post_json(
            "/api/users/alice/disconnect",
            &json!({"code": 4003, "reason": "banned"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"user": "alice", "closed": 2, "relayed": true, "code": 4003, "reason": "banned"})
    );
    for c in [&mut a0, &mut a0_raw, &mut a1] {
        assert_eq!(c.expect_close(WAIT).await.unwrap(), (4003, "banned".into()));
    }
    assert_eq!(
        ask(&mut b1, json!({"op":"ping","id":1})).await["type"],
        "pong",
        "bob stays"
    );
    n1.metric_reaches("herald_connections_closed_total{reason=\"kicked\"}", 1.0)
        .await
        .unwrap();

    // Defaults, and refusals.
    let mut a1 = ws(n1.ws_addr(), &format!("/ws?token={alice}"), &[]).await;
    let r = Api::new(n1)
        .post("/api/users/alice/disconnect", "application/json", b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["closed"].as_u64(), r.json()["code"].as_u64()),
        (Some(1), Some(4001))
    );
    assert_eq!(
        a1.expect_close(WAIT).await.unwrap(),
        (4001, "disconnected by the operator".into())
    );
    assert_error(
        &api.post_json("/api/users/alice/disconnect", &json!({"code": 1000}))
            .await,
        400,
        "invalid_field",
    );
    assert_error(
        &api.post_json("/api/users/alice/disconnect", &json!({"reason": "r".repeat(124)}))
            .await,
        400,
        "invalid_field",
    );
    assert_eq!(api.get("/api/users/alice/disconnect").await.status, 405);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_single_node_the_disconnect_is_local_only() {
    let node = TestNode::start_with(tokens).await.unwrap();
    let alice = hs(&claims("alice@example.com", 300, json!({})));
    let mut a = ws(node.ws_addr(), &format!("/ws?token={alice}"), &[]).await;
    let r = Api::new(&node)
        .post_json("/api/users/alice%40example.com/disconnect", &json!({"code": 1008}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["closed"].as_u64(), r.json()["relayed"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(a.expect_close(WAIT).await.unwrap().0, 1008);
    let r = Api::new(&node)
        .post_json("/api/users/nobody/disconnect", &json!({}))
        .await;
    assert_eq!(r.json()["closed"], 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_in_process_hub_too() {
    let hub = MemoryHub::new();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let id = format!("hub-{i}");
        let mut c = test_config(&id);
        tokens(&mut c);
        let relay: Arc<dyn Relay> = Arc::new(MemoryRelay::with_hub(&id, hub.clone()));
        nodes.push(TestNode::start_config(c, Some(relay)).await.unwrap());
    }
    let alice = hs(&claims("alice", 300, json!({})));
    let mut far = ws(nodes[1].ws_addr(), &format!("/ws?token={alice}"), &[]).await;
    let r = Api::new(&nodes[0])
        .post_json("/api/users/alice/disconnect", &json!({"code": 4100, "reason": "x"}))
        .await;
    assert_eq!(
        (r.json()["closed"].as_u64(), r.json()["relayed"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(far.expect_close(WAIT).await.unwrap(), (4100, "x".into()));
    for n in nodes {
        n.shutdown().await;
    }
}
