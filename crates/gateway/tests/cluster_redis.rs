//! A cluster of three nodes joined through a real `redis-server` that the test owns:
//! cross-node delivery both ways, fan-out over every node, per-topic reference counting
//! checked in Redis itself, ordering, and the faults the relay must survive (Redis
//! restarted, Redis hung with SIGSTOP, garbage in a channel, a node killed).

use std::time::{Duration, Instant};

use herald_client::{Client, ClientError, RawClient, RawFrame};
use herald_testkit::node::{http_request, redis_member_config, RedisCluster, TestNode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

async fn ready_status(node: &TestNode) -> (u16, Value) {
    let (status, body) = http_request(node.admin_addr(), "GET", "/readyz", &[], b"")
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_in_both_directions_exactly_once() {
    let c = RedisCluster::start(3).await.unwrap();
    let mut subs = Vec::new();
    for n in &c.nodes {
        subs.push(Client::connect(&n.url("/ws?topics=room")).await.unwrap());
    }
    let mut raw = RawClient::connect(&c.nodes[2].url("/raw/room")).await.unwrap();
    c.wait_numsub("herald:room", 3, WAIT).await.unwrap();
    // Each node publishes once (node 0 through a client, node 1 too, node 2 through raw).
    let p0 = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    p0.publish("room", &json!({"from": 0})).await.unwrap();
    let p1 = Client::connect(&c.nodes[1].url("/ws")).await.unwrap();
    p1.publish("room", &json!({"from": 1})).await.unwrap();
    raw.send_text("from raw on node 2").await.unwrap();
    for s in subs.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(s.next_message_timeout(WAIT).await.unwrap().data_json().to_owned());
        }
        got.sort();
        assert_eq!(got, vec![r#""from raw on node 2""#, r#"{"from":0}"#, r#"{"from":1}"#]);
        assert!(
            s.next_message_timeout(Duration::from_millis(300)).await.is_err(),
            "exactly once, no echo from Redis"
        );
    }
    // The raw subscriber on node 2 gets the JSON ones (and its own, echo on).
    let mut raw_got = Vec::new();
    for _ in 0..3 {
        match raw.next_timeout(WAIT).await.unwrap() {
            RawFrame::Text(t) => raw_got.push(t),
            other => panic!("{other:?}"),
        }
    }
    raw_got.sort();
    assert_eq!(raw_got, vec!["from raw on node 2", r#"{"from":0}"#, r#"{"from":1}"#]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribes_only_while_it_has_local_subscribers() {
    let c = RedisCluster::start(2).await.unwrap();
    assert_eq!(c.redis.pubsub_numsub("herald:quiet").unwrap(), 0);
    // Many local subscribers of one topic: one Redis subscription for the node.
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Client::connect(&c.nodes[0].url("/ws?topics=quiet")).await.unwrap());
    }
    c.wait_numsub("herald:quiet", 1, WAIT).await.unwrap();
    let other = Client::connect(&c.nodes[1].url("/ws?topics=quiet")).await.unwrap();
    c.wait_numsub("herald:quiet", 2, WAIT).await.unwrap();
    // The last local subscriber leaving removes the node's subscription within 2 s.
    for cl in &clients {
        cl.unsubscribe(&["quiet"]).await.unwrap();
    }
    let left = Instant::now();
    c.wait_numsub("herald:quiet", 1, Duration::from_secs(2)).await.unwrap();
    assert!(left.elapsed() < Duration::from_secs(2));
    drop(other);
    c.wait_numsub("herald:quiet", 0, Duration::from_secs(3)).await.unwrap();
    // Only the control channel and each node's canary channel (no topic can name them)
    // stay: no topic channel is left.
    let mut channels = c.redis.pubsub_channels("herald:*").unwrap();
    channels.sort();
    let mut expected = vec!["herald:#control".to_owned()];
    expected.extend(c.nodes.iter().map(|n| format!("herald:#canary:{}", n.node.node_id())));
    expected.sort();
    assert_eq!(channels, expected);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publishers_order_holds_across_nodes() {
    // Order is the point here, not the drop policy: the relay runs ahead of a subscriber
    // that a loaded machine slows down, so give the outboxes room for the whole run.
    // 3000 publishes from one connection may pass the default publish rate: off here.
    let c = RedisCluster::start_with(3, |cfg| {
        cfg.outbox.max_frames = 10_000;
        cfg.limits.publish_per_second = 0;
    })
    .await
    .unwrap();
    let mut subs = Vec::new();
    for n in &c.nodes[1..] {
        subs.push(Client::connect(&n.url("/ws?topics=seq")).await.unwrap());
    }
    c.wait_numsub("herald:seq", 2, WAIT).await.unwrap();
    let publisher = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    const N: u64 = 3000;
    for i in 0..N {
        // Paced so no subscriber outbox passes its bound (order is the point here).
        publisher.publish_nowait("seq", &i.to_string()).await.unwrap();
        if i % 200 == 199 {
            publisher.ping().await.unwrap();
        }
    }
    for s in subs.iter_mut() {
        for i in 0..N {
            let m = s.next_message_timeout(WAIT).await.unwrap();
            assert_eq!(m.data_json(), i.to_string());
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_resubscribes_and_delivery_resumes() {
    let mut c = RedisCluster::start(2).await.unwrap();
    let mut sub = Client::connect(&c.nodes[1].url("/ws?topics=r")).await.unwrap();
    let mut local = Client::connect(&c.nodes[0].url("/ws?topics=r")).await.unwrap();
    let publisher = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    c.wait_numsub("herald:r", 2, WAIT).await.unwrap();

    c.redis.kill().unwrap();
    // The relay notices, readiness says so (still ready by default: the node serves its
    // own clients), and a publish that cannot reach the other node is an error, while the
    // local subscriber still gets it.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = ready_status(&c.nodes[0]).await;
        if body["reason"] == "degraded" {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["ready"], true, "{body}");
            assert_eq!(body["degraded"], true, "{body}");
            assert_eq!(body["relay"], "down", "{body}");
            assert_eq!(body["shards"], json!([{"shard": "0", "state": "down"}]), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "degraded not reported: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.nodes[0].metric("herald_relay_up").await.unwrap(), 0.0);
    assert_eq!(
        c.nodes[0].metric(r#"herald_relay_shard_up{shard="0"}"#).await.unwrap(),
        0.0
    );
    match publisher.publish("r", &json!("during outage")).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "relay_unavailable"),
        other => panic!("expected relay_unavailable, got {other:?}"),
    }
    assert_eq!(
        local.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#""during outage""#
    );
    assert!(
        c.nodes[0]
            .metric(r#"herald_messages_dropped_total{reason="relay_unavailable"}"#)
            .await
            .unwrap()
            >= 1.0
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    c.redis.restart().unwrap();
    c.wait_ready(Duration::from_secs(10)).await.unwrap();
    c.wait_numsub("herald:r", 2, WAIT).await.unwrap();
    publisher.publish("r", &json!("after restart")).await.unwrap();
    assert_eq!(
        sub.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#""after restart""#
    );
    assert!(c.nodes[1].metric("herald_relay_reconnects_total").await.unwrap() >= 1.0);
    assert_eq!(c.nodes[1].metric("herald_relay_up").await.unwrap(), 1.0);
    assert_eq!(
        c.nodes[1].metric(r#"herald_relay_shard_up{shard="0"}"#).await.unwrap(),
        1.0
    );
    let (status, body) = ready_status(&c.nodes[1]).await;
    assert_eq!((status, body["degraded"].clone()), (200, json!(false)), "{body}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_noticed_and_recovered_from() {
    let mut c = RedisCluster::start(2).await.unwrap();
    let mut sub = Client::connect(&c.nodes[1].url("/ws?topics=h")).await.unwrap();
    let publisher = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    c.wait_numsub("herald:h", 1, WAIT).await.unwrap();
    c.redis.pause().unwrap();
    let paused = Instant::now();
    loop {
        if ready_status(&c.nodes[0]).await.1["reason"] == "degraded" {
            break;
        }
        assert!(
            paused.elapsed() < Duration::from_secs(5),
            "a SIGSTOPped Redis must be noticed"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let noticed = paused.elapsed();
    assert!(
        publisher.publish("h", &json!(1)).await.is_err(),
        "no ack while Redis hangs"
    );
    c.redis.resume().unwrap();
    c.wait_ready(Duration::from_secs(10)).await.unwrap();
    c.wait_numsub("herald:h", 1, WAIT).await.unwrap();
    publisher.publish("h", &json!("resumed")).await.unwrap();
    assert_eq!(
        sub.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#""resumed""#
    );
    eprintln!("hang noticed after {noticed:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_channel_is_counted_and_skipped() {
    let c = RedisCluster::start(2).await.unwrap();
    let mut sub = Client::connect(&c.nodes[1].url("/ws?topics=g")).await.unwrap();
    c.wait_numsub("herald:g", 1, WAIT).await.unwrap();
    c.redis.publish("herald:g", b"hello from someone else").unwrap();
    c.redis.publish("herald:g", &[9, 0, 0]).unwrap();
    c.redis.publish("herald:g", b"").unwrap();
    let mut wrong_version =
        herald_protocol::envelope::encode("x", 1, "g", &herald_protocol::Payload::json(&b"1"[..])).to_vec();
    wrong_version[0] = 2;
    c.redis.publish("herald:g", &wrong_version).unwrap();
    let truncated = herald_protocol::envelope::encode("x", 1, "g", &herald_protocol::Payload::json(&b"[1,2]"[..]));
    c.redis.publish("herald:g", &truncated[..truncated.len() - 2]).unwrap();
    let publisher = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    publisher.publish("g", &json!("good")).await.unwrap();
    assert_eq!(sub.next_message_timeout(WAIT).await.unwrap().data_json(), r#""good""#);
    assert_eq!(
        c.nodes[1].metric("herald_relay_invalid_messages_total").await.unwrap(),
        5.0
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_the_others_and_redis_clean() {
    let c = RedisCluster::start(1).await.unwrap();
    // A second member as a real process, killed with SIGKILL.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("HERALD_RELAY__KIND", "redis")
        .env("HERALD_REDIS__URL", c.redis.url())
        .env("HERALD_NODE_ID", "doomed")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ws = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap()
        .to_owned();
    let doomed_sub = Client::connect(&format!("{ws}/ws?topics=k")).await.unwrap();
    let mut survivor = Client::connect(&c.nodes[0].url("/ws?topics=k")).await.unwrap();
    c.wait_numsub("herald:k", 2, WAIT).await.unwrap();
    child.kill().await.unwrap();
    let info = doomed_sub.closed().await;
    assert_eq!(info.code, 1006, "abnormal closure: the process died");
    c.wait_numsub("herald:k", 1, WAIT).await.unwrap();
    let publisher = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    publisher.publish("k", &json!("still here")).await.unwrap();
    assert_eq!(
        survivor.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#""still here""#
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_while_redis_is_down_and_joins_when_it_appears() {
    let mut redis = herald_testkit::redis::RedisServer::start().unwrap();
    let url = redis.url();
    redis.kill().unwrap();
    let node = TestNode::start_config(redis_member_config("late", &url), None)
        .await
        .unwrap();
    let (status, body) = ready_status(&node).await;
    assert_eq!((status, body["reason"].as_str()), (200, Some("degraded")));
    let mut sub = Client::connect(&node.url("/ws?topics=late")).await.unwrap();
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready_status(&node).await.1["reason"] != "ready" {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + WAIT;
    while redis.pubsub_numsub("herald:late").unwrap() != 1 {
        assert!(
            Instant::now() < deadline,
            "subscription made before Redis came up was not restored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let envelope =
        herald_protocol::envelope::encode("elsewhere", 1, "late", &herald_protocol::Payload::json(&b"42"[..]));
    redis.publish("herald:late", &envelope).unwrap();
    assert_eq!(sub.next_message_timeout(WAIT).await.unwrap().data_json(), "42");
    node.shutdown().await;
}

/// `readiness.require_relay = true`: the old strict behaviour, for fleets that would rather
/// send new clients nowhere than to a node cut off from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_relay_a_redis_outage_makes_the_node_unready() {
    let mut redis = herald_testkit::redis::RedisServer::start().unwrap();
    let mut config = redis_member_config("strict", &redis.url());
    config.readiness.require_relay = true;
    let node = TestNode::start_config(config, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready_status(&node).await.1["reason"] != "ready" {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.kill().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = ready_status(&node).await;
        if status == 503 {
            assert_eq!(body["reason"], "relay_down", "{body}");
            assert_eq!(body["ready"], false, "{body}");
            break;
        }
        assert_eq!(body["reason"], "ready", "{body}");
        assert!(Instant::now() < deadline, "relay_down not reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready_status(&node).await.0 != 200 {
        assert!(Instant::now() < deadline, "never became ready again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready_status(&node).await.1["reason"], "ready");
    node.shutdown().await;
}
