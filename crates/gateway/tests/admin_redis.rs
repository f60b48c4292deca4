//! HTTP publishing through the real Redis relay (a `redis-server` the test owns): the
//! answer waits for Redis's confirmation, a publish while Redis is down is a 503
//! `relay_unavailable` that the local subscriber still got, and the relay metrics (out,
//! in, cross-node latency, relay_up, reconnects) move with that traffic.

mod common;

use std::time::{Duration, Instant};

use common::{Api, WAIT};
use herald_client::Client;
use herald_testkit::node::{parse_metric, RedisCluster};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_through_redis_and_through_an_outage() {
    let mut c = RedisCluster::start(2).await.unwrap();
    let api = Api::new(&c.nodes[0]);
    let mut local = Client::connect(&c.nodes[0].url("/ws?topics=jobs")).await.unwrap();
    let mut remote = Client::connect(&c.nodes[1].url("/ws?topics=jobs")).await.unwrap();
    c.wait_numsub("herald:jobs", 2, WAIT).await.unwrap();
    let (b0, b1) = (
        c.nodes[0].metrics_text().await.unwrap(),
        c.nodes[1].metrics_text().await.unwrap(),
    );

    for i in 0..3 {
        let r = api
            .post_json("/api/publish", &json!({"topic": "jobs", "data": i}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            (v["relayed"].clone(), v["relay"].clone(), v["delivered"].clone()),
            (json!(true), json!("ok"), json!(1))
        );
    }
    for i in 0..3 {
        assert_eq!(
            local.next_message_timeout(WAIT).await.unwrap().data_json(),
            i.to_string()
        );
        assert_eq!(
            remote.next_message_timeout(WAIT).await.unwrap().data_json(),
            i.to_string()
        );
    }
    let (a0, a1) = (
        c.nodes[0].metrics_text().await.unwrap(),
        c.nodes[1].metrics_text().await.unwrap(),
    );
    let d = |b: &str, a: &str, s: &str| parse_metric(a, s) - parse_metric(b, s);
    assert_eq!(d(&b0, &a0, "herald_relay_messages_total{direction=\"out\"}"), 3.0);
    assert_eq!(d(&b1, &a1, "herald_relay_messages_total{direction=\"in\"}"), 3.0);
    assert_eq!(d(&b1, &a1, "herald_relay_latency_seconds_count"), 3.0);
    assert_eq!(d(&b1, &a1, "herald_messages_published_total{source=\"relay\"}"), 3.0);
    assert_eq!(d(&b0, &a0, "herald_messages_published_total{source=\"http\"}"), 3.0);
    assert_eq!(parse_metric(&a0, "herald_relay_up"), 1.0);

    // Redis goes away: once the relay has noticed, a publish is a 503 with the local count.
    c.redis.kill().unwrap();
    let deadline = Instant::now() + WAIT;
    while c.nodes[0].metric("herald_relay_up").await.unwrap() != 0.0 {
        assert!(Instant::now() < deadline, "the relay never noticed Redis was gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = api
        .post_json("/api/publish", &json!({"topic": "jobs", "data": "lost?"}))
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["code"].clone(), v["delivered"].clone()),
        (json!("relay_unavailable"), json!(1))
    );
    assert_eq!(
        local.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#""lost?""#
    );
    let r = api
        .post_json("/api/broadcast", &json!({"topics": ["jobs", "other"], "data": 1}))
        .await;
    assert_eq!((r.status, r.json()["failed"].clone()), (207, json!(2)));
    assert_eq!(local.next_message_timeout(WAIT).await.unwrap().data_json(), "1");

    // Back again: publishes are relayed and the reconnect is counted.
    c.redis.restart().unwrap();
    c.wait_ready(Duration::from_secs(10)).await.unwrap();
    c.wait_numsub("herald:jobs", 2, WAIT).await.unwrap();
    let r = api
        .post_json("/api/publish", &json!({"topic": "jobs", "data": "back"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        remote.next_message_timeout(WAIT).await.unwrap().data_json(),
        r#""back""#
    );
    assert!(c.nodes[0].metric("herald_relay_reconnects_total").await.unwrap() >= 1.0);
    assert_eq!(
        c.nodes[0]
            .metric("herald_messages_dropped_total{reason=\"relay_unavailable\"}")
            .await
            .unwrap(),
        3.0,
        "each refused publication is counted once"
    );
    c.shutdown().await;
}
