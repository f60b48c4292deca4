//! Inspecting and steering a node through the admin API: node info, paged topics and
//! connections, one topic's and one connection's detail, closing a connection or a topic's
//! subscribers with a code and reason (checked on the wire), and the drain.
//! Every answer is also checked against docs/openapi.yaml.

mod common;

use std::time::Duration;

use common::{assert_error, Api, WAIT};
use herald_client::{Client, RawClient};
use herald_testkit::node::TestNode;
use herald_testkit::wire::WireClient;
use serde_json::{json, Value};

/// A `/ws` wire client and its connection id (from the welcome frame).
async fn wire(node: &TestNode, path: &str) -> (WireClient, String) {
    let mut c = WireClient::connect(node.ws_addr(), path).await.unwrap();
    let welcome: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    let id = welcome["connection"].as_str().unwrap().to_owned();
    (c, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_info_says_who_and_how_the_node_is() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    let _c = Client::connect(&node.url("/ws?topics=a,b")).await.unwrap();
    let v = api.get("/api/node").await.json();
    assert_eq!(v["node"], node.node.node_id());
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["listeners"]["public"], node.ws_addr().to_string());
    assert_eq!(v["listeners"]["admin"], node.admin_addr().to_string());
    assert_eq!(
        v["relay"],
        json!({"kind": "memory", "state": "standalone", "shards": [{"shard": "0", "state": "standalone"}]})
    );
    assert_eq!(
        (v["ready"].clone(), v["readiness"].clone()),
        (json!(true), json!("ready"))
    );
    assert_eq!(
        (
            v["connections"].clone(),
            v["topics"].clone(),
            v["subscriptions"].clone()
        ),
        (json!(1), json!(2), json!(2))
    );
    assert!(v["uptime_seconds"].as_u64().is_some());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_paged_in_name_order() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    // 250 topics on one connection, a second subscriber on one of them.
    let names: Vec<String> = (0..250).map(|i| format!("t/{:03}", (i * 37) % 250)).collect();
    let c = Client::connect(&node.url("/ws")).await.unwrap();
    for chunk in names.chunks(50) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        c.subscribe(&refs).await.unwrap();
    }
    let _r = Client::connect(&node.url("/ws?topics=t/007")).await.unwrap();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/api/topics?limit=100".to_owned(),
            Some(c) => format!("/api/topics?limit=100&cursor={}", c.replace('/', "%2F")),
        };
        let v = api.get(&path).await.json();
        assert_eq!(v["total"], 250);
        pages += 1;
        for t in v["topics"].as_array().unwrap() {
            let expect = if t["topic"] == "t/007" { 2 } else { 1 };
            assert_eq!(t["subscribers"], expect, "{t}");
            seen.push(t["topic"].as_str().unwrap().to_owned());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!((pages, seen), (3, sorted));
    let v = api.get("/api/topics").await.json();
    assert_eq!(
        (v["topics"].as_array().unwrap().len(), v["next_cursor"].clone()),
        (100, json!("t/099"))
    );
    let v = api.get("/api/topics?cursor=t/249").await.json();
    assert_eq!(
        (v["topics"].clone(), v["next_cursor"].clone()),
        (json!([]), Value::Null)
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_connection_details() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    let (_a, id_a) = wire(&node, "/ws?topics=room").await;
    let (_b, id_b) = wire(&node, "/ws?topics=room").await;
    let _raw = RawClient::connect(&node.url("/raw/room")).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let v = loop {
        let v = api.get("/api/topics/room").await.json();
        if v["subscribers"] == 3 || tokio::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        v,
        json!({"topic": "room", "subscribers": 3, "by_mode": {"json": 2, "raw": 1}})
    );
    let v = api.get("/api/topics/nobody-here").await.json();
    assert_eq!(
        v,
        json!({"topic": "nobody-here", "subscribers": 0, "by_mode": {"json": 0, "raw": 0}})
    );

    let v = api.get("/api/connections").await.json();
    assert_eq!(
        (v["total"].clone(), v["by_mode"].clone()),
        (json!(3), json!({"json": 2, "raw": 1}))
    );
    let ids: Vec<&str> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(&ids[..2], &[id_a.as_str(), id_b.as_str()]);
    assert_eq!(v["next_cursor"], Value::Null);
    let first = api.get("/api/connections?limit=1").await.json();
    assert_eq!(first["connections"][0]["id"], id_a.as_str());
    assert_eq!(first["next_cursor"], id_a.as_str());
    let second = api.get(&format!("/api/connections?limit=1&cursor={id_a}")).await.json();
    assert_eq!(second["connections"][0]["id"], id_b.as_str());

    let c = api.get(&format!("/api/connections/{id_a}")).await.json();
    assert_eq!((c["mode"].clone(), c["closing"].clone()), (json!("json"), json!(false)));
    assert!(c["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_error(&api.get("/api/connections/999999").await, 404, "not_found");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_connection_sends_the_requested_code_and_reason() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    let (mut a, id_a) = wire(&node, "/ws?topics=x").await;
    let (mut b, id_b) = wire(&node, "/ws?topics=x").await;
    let kicked = "herald_connections_closed_total{reason=\"kicked\"}";
    let before = node.metric(kicked).await.unwrap();

    let r = api
        .post_json(
            &format!("/api/connections/{id_a}/close"),
            &json!({"code": 4001, "reason": "moved to eu-2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"connection": id_a, "closed": true, "code": 4001, "reason": "moved to eu-2"})
    );
    assert_eq!(a.expect_close(WAIT).await.unwrap(), (4001, "moved to eu-2".into()));
    // No body: the defaults.
    let r = api
        .call("POST", &format!("/api/connections/{id_b}/close"), &[], b"")
        .await;
    assert_eq!((r.status, r.json()["code"].clone()), (200, json!(4000)));
    assert_eq!(
        b.expect_close(WAIT).await.unwrap(),
        (4000, "closed by the node operator".into())
    );

    let (_c, id_c) = wire(&node, "/ws").await;
    let close = format!("/api/connections/{id_c}/close");
    for body in [
        json!({"code": 1002}),
        json!({"code": 1006}),
        json!({"code": 5000}),
        json!({"code": 70000}),
    ] {
        assert_error(&api.post_json(&close, &body).await, 400, "invalid_field");
    }
    assert_error(
        &api.post_json(&close, &json!({"reason": "r".repeat(124)})).await,
        400,
        "invalid_field",
    );
    assert_error(
        &api.post_json("/api/connections/424242/close", &json!({})).await,
        404,
        "not_found",
    );

    let deadline = tokio::time::Instant::now() + WAIT;
    while node.metric(kicked).await.unwrap() < before + 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "kicked closes not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(node.metric(kicked).await.unwrap(), before + 2.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_a_topic_closes_its_subscribers_only() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    let (mut a, _) = wire(&node, "/ws?topics=doomed").await;
    let (mut b, _) = wire(&node, "/ws?topics=doomed,other").await;
    let mut survivor = Client::connect(&node.url("/ws?topics=other")).await.unwrap();
    let r = api
        .post_json(
            "/api/topics/doomed/disconnect",
            &json!({"code": 1013, "reason": "rebalancing"}),
        )
        .await;
    assert_eq!(
        r.json(),
        json!({"topic": "doomed", "closed": 2, "code": 1013, "reason": "rebalancing"})
    );
    assert_eq!(a.expect_close(WAIT).await.unwrap(), (1013, "rebalancing".into()));
    assert_eq!(b.expect_close(WAIT).await.unwrap(), (1013, "rebalancing".into()));
    let r = api
        .post_json("/api/publish", &json!({"topic": "other", "data": "still here"}))
        .await;
    assert_eq!(r.json()["delivered"], 1);
    assert_eq!(
        survivor.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#""still here""#
    );
    let r = api.post_json("/api/topics/nobody/disconnect", &json!({})).await;
    assert_eq!(r.json()["closed"], 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_through_the_api_turns_readiness_off_and_stops_the_node() {
    // The delay keeps everything up long enough to look at the draining node.
    let node = TestNode::start_with(|c| c.shutdown.drain_delay_ms = 500).await.unwrap();
    let api = Api::new(&node);
    let (mut c, _) = wire(&node, "/ws").await;
    let r = api.call("POST", "/api/drain", &[], b"").await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["already_draining"], false);
    let ready = api.get("/readyz").await;
    assert_eq!((ready.status, ready.json()["reason"].clone()), (503, json!("draining")));
    assert_eq!(
        api.call("POST", "/api/drain", &[], b"").await.json()["already_draining"],
        true
    );
    assert_eq!(c.expect_close(WAIT).await.unwrap().0, 1001);
    tokio::time::timeout(Duration::from_secs(10), node.node.stopped())
        .await
        .expect("the node stops after a drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_topics_page_without_trouble() {
    use std::sync::Arc;

    use herald_broker::{Outbox, OutboxLimits, Subscriber, SubscriberMode};
    use tokio_util::sync::CancellationToken;

    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    // Subscribed straight into the broker: 100k WebSocket subscriptions would test the
    // sessions, not the listing.
    let broker = &node.node.state().broker;
    let outbox = Arc::new(Outbox::new(OutboxLimits::default(), CancellationToken::new()));
    for i in 0..100_000u32 {
        let sub = Subscriber {
            conn: u64::MAX,
            outbox: outbox.clone(),
            encoding: SubscriberMode::Json.encoding(),
            echo: true,
            gate: None,
        };
        broker.subscribe(&format!("big/{i:06}"), sub);
    }
    let started = std::time::Instant::now();
    let v = api.get("/api/topics?limit=1000&cursor=big/049999").await.json();
    let took = started.elapsed();
    assert_eq!(v["total"], 100_000);
    let page = v["topics"].as_array().unwrap();
    assert_eq!((page.len(), page[0]["topic"].clone()), (1000, json!("big/050000")));
    assert_eq!(v["next_cursor"], "big/050999");
    assert!(took < Duration::from_secs(2), "a page of 100k topics took {took:?}");
    for i in 0..100_000u32 {
        broker.unsubscribe(&format!("big/{i:06}"), u64::MAX);
    }
    assert_eq!(api.get("/api/topics").await.json()["total"], 0);
    node.shutdown().await;
}
