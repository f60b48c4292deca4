//! The publishing side of the admin API over real HTTP against real nodes: single, batch,
//! broadcast and raw-body publishes reaching `/ws` and `/raw` subscribers, on one node and
//! across an in-process cluster of three, and the relay-down answer. Every response is
//! also checked against docs/openapi.yaml (`common::Api`).

mod common;

use std::time::Duration;

use common::{assert_error, Api, WAIT};
use herald_client::{Client, RawClient, RawFrame};
use herald_testkit::node::{MemoryCluster, TestNode};
use serde_json::{json, Value};

/// Waits until `topic` has `n` local subscribers (raw clients subscribe just after the
/// upgrade answer, so a test must not publish before that).
async fn wait_subscribers(api: &Api, topic: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = api.get(&format!("/api/topics/{topic}")).await.json();
        if v["subscribers"].as_u64() == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} never reached {n} subscribers: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn nothing_arrives(c: &mut Client) {
    assert!(
        c.next_message_timeout(Duration::from_millis(300)).await.is_err(),
        "a message arrived that should not have"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_ws_and_raw_subscribers_on_one_node() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    let mut a = Client::connect(&node.url("/ws?topics=news")).await.unwrap();
    let mut b = Client::connect(&node.url("/ws?topics=news")).await.unwrap();
    let mut r = RawClient::connect(&node.url("/raw/news")).await.unwrap();
    wait_subscribers(&api, "news", 3).await;

    let resp = api
        .post_json(
            "/api/publish",
            &json!({"topic": "news", "data": {"headline": "hi", "n": [1, 2]}}),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"accepted": true, "topic": "news", "delivered": 3, "dropped": 0, "relayed": false, "relay": "standalone"})
    );
    for c in [&mut a, &mut b] {
        let m = c.next_message_timeout(WAIT).await.unwrap();
        assert_eq!(m.topic, "news");
        assert_eq!(m.data_json(), r#"{"headline":"hi","n":[1,2]}"#, "data verbatim");
    }
    assert_eq!(
        r.next_timeout(WAIT).await.unwrap(),
        RawFrame::Text(r#"{"headline":"hi","n":[1,2]}"#.into())
    );
    // null is data too (checked on the raw subscriber: herald-client's decoder reads a
    // `"data":null` delivery as a frame without data).
    let body = br#"{"data": null, "topic": "news"}"#;
    let resp = api.post("/api/publish", "application/json", body).await;
    assert_eq!((resp.status, resp.json()["delivered"].clone()), (200, json!(3)));
    assert_eq!(r.next_timeout(WAIT).await.unwrap(), RawFrame::Text("null".into()));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_crosses_a_cluster_and_reports_a_relay_outage() {
    let cluster = MemoryCluster::start(3).await.unwrap();
    let mut subs = Vec::new();
    for n in &cluster.nodes {
        subs.push(Client::connect(&n.url("/ws?topics=orders")).await.unwrap());
    }
    let api = Api::new(&cluster.nodes[0]);
    let resp = api
        .post_json("/api/publish", &json!({"topic": "orders", "data": 1}))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(
        (v["delivered"].clone(), v["relayed"].clone(), v["relay"].clone()),
        (json!(1), json!(true), json!("ok"))
    );
    for s in subs.iter_mut() {
        assert_eq!(s.next_message_timeout(WAIT).await.unwrap().data_json(), "1");
    }

    cluster.hub.set_up(false);
    let before = cluster.nodes[0]
        .metric("herald_messages_dropped_total{reason=\"relay_unavailable\"}")
        .await
        .unwrap();
    let resp = api
        .post_json("/api/publish", &json!({"topic": "orders", "data": 2}))
        .await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("1"));
    let v = resp.json();
    assert_eq!(v["code"], "relay_unavailable");
    assert_eq!(v["accepted"], false);
    assert_eq!(v["relayed"], false);
    assert_eq!(v["delivered"], 1, "the local subscriber got it: {v}");
    assert!(v["message"].as_str().unwrap().contains("1 local subscriber"), "{v}");
    assert_eq!(subs[0].next_message_timeout(WAIT).await.unwrap().data_json(), "2");
    nothing_arrives(&mut subs[1]).await;
    nothing_arrives(&mut subs[2]).await;
    let after = cluster.nodes[0]
        .metric("herald_messages_dropped_total{reason=\"relay_unavailable\"}")
        .await
        .unwrap();
    assert_eq!(after - before, 1.0);

    // A batch during the outage: each item is reported as not relayed.
    let resp = api
        .post_json(
            "/api/publish/batch",
            &json!({"messages": [{"topic": "orders", "data": 3}]}),
        )
        .await;
    assert_eq!(resp.status, 207);
    let item = &resp.json()["results"][0];
    assert_eq!(
        (item["status"].clone(), item["code"].clone()),
        (json!(503), json!("relay_unavailable"))
    );

    cluster.hub.set_up(true);
    let resp = api
        .post_json("/api/publish", &json!({"topic": "orders", "data": 4}))
        .await;
    assert_eq!(resp.status, 200);
    for s in subs.iter_mut().skip(1) {
        assert_eq!(
            s.next_message_timeout(WAIT).await.unwrap().data_json(),
            "4",
            "3 never crossed"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reports_each_item_and_publishes_the_good_ones_in_order() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    let mut a = Client::connect(&node.url("/ws?topics=a")).await.unwrap();
    let mut b = Client::connect(&node.url("/ws?topics=b")).await.unwrap();
    let resp = api
        .post_json(
            "/api/publish/batch",
            &json!({"messages": [
                {"topic": "a", "data": 1},
                {"topic": "bad topic", "data": 2},
                {"topic": "a"},
                {"topic": "b", "data": {"x": true}},
                7,
                {"topic": 5, "data": 1},
                {"topic": "a", "data": 3},
            ]}),
        )
        .await;
    assert_eq!(resp.status, 207, "{}", resp.text());
    let v = resp.json();
    assert_eq!((v["accepted"].clone(), v["failed"].clone()), (json!(3), json!(4)));
    let summary: Vec<(u64, Value, Value)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].as_u64().unwrap(), r["code"].clone(), r["topic"].clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (200, Value::Null, json!("a")),
            (400, json!("invalid_topic"), json!("bad topic")),
            (400, json!("missing_field"), json!("a")),
            (200, Value::Null, json!("b")),
            (400, json!("invalid_field"), Value::Null),
            (400, json!("invalid_field"), Value::Null),
            (200, Value::Null, json!("a")),
        ]
    );
    assert_eq!(a.next_message_timeout(WAIT).await.unwrap().data_json(), "1");
    assert_eq!(a.next_message_timeout(WAIT).await.unwrap().data_json(), "3");
    assert_eq!(b.next_message_timeout(WAIT).await.unwrap().data_json(), r#"{"x":true}"#);
    nothing_arrives(&mut a).await;

    // All good: 200.
    let ok = api
        .post_json(
            "/api/publish/batch",
            &json!({"messages": [{"topic": "b", "data": "x"}]}),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["results"][0]["delivered"], 1);
    // The batch as a whole is wrong: nothing published.
    assert_error(
        &api.post_json("/api/publish/batch", &json!({})).await,
        400,
        "missing_field",
    );
    assert_error(
        &api.post_json("/api/publish/batch", &json!({"messages": []})).await,
        400,
        "invalid_field",
    );
    let many: Vec<Value> = (0..1001).map(|i| json!({"topic": "b", "data": i})).collect();
    assert_error(
        &api.post_json("/api/publish/batch", &json!({"messages": many})).await,
        400,
        "invalid_field",
    );
    assert_eq!(b.next_message_timeout(WAIT).await.unwrap().data_json(), r#""x""#);
    nothing_arrives(&mut b).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_sends_one_payload_to_many_topics() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    let mut subs = Vec::new();
    for t in ["eu", "us", "asia"] {
        subs.push(Client::connect(&node.url(&format!("/ws?topics={t}"))).await.unwrap());
    }
    let resp = api
        .post_json(
            "/api/broadcast",
            &json!({"topics": ["eu", "us", "asia", "nobody"], "data": {"alert": 1}}),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["accepted"], 4);
    let delivered: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["delivered"].as_u64().unwrap())
        .collect();
    assert_eq!(delivered, vec![1, 1, 1, 0]);
    for (s, t) in subs.iter_mut().zip(["eu", "us", "asia"]) {
        let m = s.next_message_timeout(WAIT).await.unwrap();
        assert_eq!((m.topic.as_str(), m.data_json()), (t, r#"{"alert":1}"#));
    }
    let resp = api
        .post_json(
            "/api/broadcast",
            &json!({"topics": ["eu", "eu", "no way", 3], "data": 2}),
        )
        .await;
    assert_eq!(resp.status, 207);
    let codes: Vec<Value> = resp.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].clone())
        .collect();
    assert_eq!(
        codes,
        vec![
            Value::Null,
            json!("invalid_field"),
            json!("invalid_topic"),
            json!("invalid_field")
        ]
    );
    assert_eq!(subs[0].next_message_timeout(WAIT).await.unwrap().data_json(), "2");
    nothing_arrives(&mut subs[0]).await;
    assert_error(
        &api.post_json("/api/broadcast", &json!({"topics": ["eu"]})).await,
        400,
        "missing_field",
    );
    assert_error(
        &api.post_json("/api/broadcast", &json!({"data": 1})).await,
        400,
        "missing_field",
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_body_publish_lets_the_content_type_decide() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    let mut ws = Client::connect(&node.url("/ws?topics=files/in")).await.unwrap();
    let mut raw = RawClient::connect(&node.url("/raw/files/in")).await.unwrap();
    wait_subscribers(&api, "files/in", 2).await;
    let path = "/api/topics/files/in/publish";

    let resp = api.post(path, "text/plain; charset=utf-8", "héllo".as_bytes()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        (resp.json()["kind"].clone(), resp.json()["delivered"].clone()),
        (json!("text"), json!(2))
    );
    assert_eq!(ws.next_message_timeout(WAIT).await.unwrap().data_json(), r#""héllo""#);
    assert_eq!(raw.next_timeout(WAIT).await.unwrap(), RawFrame::Text("héllo".into()));

    let bytes = [0u8, 159, 146, 150, 255];
    for ct in [
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "image/png",
    ] {
        let resp = api.post(path, ct, &bytes).await;
        assert_eq!(
            (resp.status, resp.json()["kind"].clone()),
            (200, json!("binary")),
            "{ct}"
        );
        let m = ws.next_message_timeout(WAIT).await.unwrap();
        assert_eq!(m.encoding.as_deref(), Some("base64"));
        assert_eq!(m.payload_bytes().unwrap(), bytes);
        assert_eq!(raw.next_timeout(WAIT).await.unwrap().as_bytes(), bytes);
    }
    // No Content-Type at all: binary.
    let resp = api.call("POST", path, &[], b"abc").await;
    assert_eq!(resp.json()["kind"], "binary");
    assert_eq!(
        raw.next_timeout(WAIT).await.unwrap(),
        RawFrame::Binary(b"abc".to_vec().into())
    );
    let _ = ws.next_message_timeout(WAIT).await.unwrap();

    let resp = api.post(path, "application/json", b" {\"k\": [1, 2]}\n").await;
    assert_eq!(resp.json()["kind"], "json");
    assert_eq!(
        ws.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#"{"k": [1, 2]}"#
    );
    assert_eq!(
        raw.next_timeout(WAIT).await.unwrap(),
        RawFrame::Text(r#"{"k": [1, 2]}"#.into())
    );

    assert_error(&api.post(path, "application/json", b"{nope").await, 400, "invalid_json");
    assert_error(&api.post(path, "text/plain", &[0xff, 0xfe]).await, 400, "invalid_utf8");
    assert_error(
        &api.post(path, "text/plain; charset=latin1", b"x").await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &api.post("/api/topics/a%20b/publish", "text/plain", b"x").await,
        400,
        "invalid_topic",
    );
    nothing_arrives(&mut ws).await;
    node.shutdown().await;
}
