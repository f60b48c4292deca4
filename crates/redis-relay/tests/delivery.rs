//! The relay's happy path against a real `redis-server`: two relays ("node A", "node B")
//! with fake brokers deliver to each other both ways and never to themselves, keep the
//! order of 1000 messages, follow local interest with SUBSCRIBE / UNSUBSCRIBE (checked from
//! Redis's side with PUBSUB NUMSUB and INFO commandstats), and count and skip garbage.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::envelope::encode;
use herald_protocol::Payload;
use support::{fast, init_logs, wait_until, within, Node, RedisServer};

const LIMIT: Duration = Duration::from_secs(5);

/// Starts A and B, both listening to `topic`, and waits until Redis sees both.
async fn pair(redis: &RedisServer, topic: &str) -> (Node, Node) {
    let a = Node::start(fast(&redis.url(), "node-a"));
    let b = Node::start(fast(&redis.url(), "node-b"));
    wait_until(LIMIT, "both relays up", || a.is_up() && b.is_up()).await;
    a.join(topic);
    b.join(topic);
    let channel = format!("herald:{topic}");
    wait_until(LIMIT, "both subscribed", || redis.numsub(&channel) == 2).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivers_both_ways_and_never_to_itself() {
    init_logs();
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "chat").await;

    for i in 0..10 {
        a.publish("chat", &format!("from-a-{i}"))
            .outcome()
            .await
            .expect("A's publish reached Redis");
    }
    b.publish("chat", "from-b")
        .outcome()
        .await
        .expect("B's publish reached Redis");
    wait_until(LIMIT, "B got A's messages", || b.sink.count() == 10).await;
    wait_until(LIMIT, "A got B's message", || a.sink.count() == 1).await;
    // Give a self-delivery every chance to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        a.sink.texts("chat"),
        ["from-b"],
        "A must not receive its own publications"
    );
    assert_eq!(b.sink.count(), 10, "B must not receive its own publication");
    let env = &b.sink.delivered()[0];
    assert_eq!(env.origin, "node-a");
    assert!(env.published_at_micros > 0);
    assert_eq!(a.metrics.relay_messages.with_label_values(&["out"]).get(), 10);
    assert_eq!(b.metrics.relay_messages.with_label_values(&["out"]).get(), 1);
    assert_eq!(a.metrics.relay_up.get(), 1);

    // A node that stops takes its subscription with it.
    within(LIMIT, "A shuts down", a.relay.shutdown()).await;
    wait_until(LIMIT, "A's subscription is gone", || redis.numsub("herald:chat") == 1).await;
    assert_eq!(a.metrics.relay_up.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keeps_the_order_of_one_publisher() {
    init_logs();
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "ordered").await;
    b.join("other");
    let started = Instant::now();
    // Publish without waiting, so the messages travel in shared pipelines.
    let tickets: Vec<_> = (0..1000)
        .map(|i| {
            (
                a.publish("ordered", &i.to_string()),
                a.publish("other", &format!("x{i}")),
            )
        })
        .collect();
    for (t1, t2) in tickets {
        t1.outcome().await.unwrap();
        t2.outcome().await.unwrap();
    }
    wait_until(LIMIT, "1000 messages arrived", || b.sink.texts("ordered").len() == 1000).await;
    let got: Vec<u32> = b.sink.texts("ordered").iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(got, (0..1000).collect::<Vec<_>>(), "order of one publisher is kept");
    println!("1000 ordered messages A->B in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribes_and_unsubscribes_with_local_interest() {
    init_logs();
    let redis = RedisServer::start();
    let a = Node::start(support::fast(&redis.url(), "node-a"));
    wait_until(LIMIT, "relay up", || a.is_up()).await;
    assert_eq!(redis.numsub("herald:room"), 0);

    a.join("room");
    let took = wait_until(Duration::from_secs(2), "NUMSUB 0 -> 1", || {
        redis.numsub("herald:room") == 1
    })
    .await;
    println!("subscribed after {took:?}");

    a.leave("room");
    let took = wait_until(Duration::from_secs(2), "NUMSUB 1 -> 0", || {
        redis.numsub("herald:room") == 0
    })
    .await;
    println!("unsubscribed after {took:?}");
    assert!(
        took >= Duration::from_millis(400),
        "unsubscribe waits out the churn delay, took {took:?}"
    );

    // Churn shorter than the delay keeps the channel: no UNSUBSCRIBE/SUBSCRIBE pair.
    a.join("room");
    wait_until(LIMIT, "resubscribed", || redis.numsub("herald:room") == 1).await;
    let before = redis.subscribe_calls();
    for _ in 0..5 {
        a.leave("room");
        tokio::time::sleep(Duration::from_millis(30)).await;
        a.join("room");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(redis.numsub("herald:room"), 1);
    assert_eq!(redis.subscribe_calls(), before, "churn caused no new SUBSCRIBE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_joins_cost_one_subscribe() {
    init_logs();
    let redis = RedisServer::start();
    let a = Arc::new(Node::start(support::fast(&redis.url(), "node-a")));
    wait_until(LIMIT, "relay up", || a.is_up()).await;
    let before = redis.subscribe_calls();

    // 10k "clients" on 4 tasks each hint the relay about the one topic.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..2500 {
                    a.join("popular");
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    wait_until(LIMIT, "subscribed", || redis.numsub("herald:popular") == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        redis.subscribe_calls() - before,
        1,
        "10k joins must cost exactly one SUBSCRIBE"
    );

    // Many topics at once share one SUBSCRIBE too.
    let before = redis.subscribe_calls();
    for i in 0..200 {
        a.join(&format!("t{i}"));
    }
    wait_until(LIMIT, "all subscribed", || redis.numsub("herald:t199") == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        redis.subscribe_calls() - before,
        1,
        "one SUBSCRIBE for a burst of 200 topics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_is_counted_skipped_and_harmless() {
    init_logs();
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, "g").await;

    let good = encode("node-x", 1, "g", &Payload::text("fine"));
    let mut wrong_version = good.to_vec();
    wrong_version[0] = 9;
    let garbage: Vec<Vec<u8>> = vec![
        wrong_version,
        good[..good.len() - 6].to_vec(),               // truncated inside the topic
        b"\x00\x01\x02random bytes \xff\xfe".to_vec(), // random bytes
        Vec::new(),                                    // empty
        encode("node-x", 1, "g", &Payload::json(&b"{nope"[..])).to_vec(), // bad JSON
        encode("node-x", 1, "other", &Payload::text("x")).to_vec(), // wrong channel
    ];
    for g in &garbage {
        redis.publish_raw("herald:g", g);
    }
    a.publish("g", "after the garbage").outcome().await.unwrap();
    wait_until(LIMIT, "the good message still flows", || b.sink.count() == 1).await;
    assert_eq!(b.sink.texts("g"), ["after the garbage"]);
    wait_until(LIMIT, "garbage counted on A", || {
        a.metrics.relay_invalid.get() == garbage.len() as u64
    })
    .await;
    assert_eq!(b.metrics.relay_invalid.get(), garbage.len() as u64);
    assert_eq!(a.sink.count(), 0);
    assert!(a.is_up() && b.is_up(), "garbage does not break the connection");

    // A well-formed envelope from a foreign node id is delivered like any other.
    redis.publish_raw("herald:g", &good);
    wait_until(LIMIT, "foreign envelope delivered", || {
        a.sink.count() == 1 && b.sink.count() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payloads_over_the_limit_are_refused_before_decoding() {
    init_logs();
    let redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "node-a"));
    let b = Node::start(herald_redis::RedisRelayConfig {
        max_payload_bytes: 1000,
        ..fast(&redis.url(), "node-b")
    });
    wait_until(LIMIT, "both relays up", || a.is_up() && b.is_up()).await;
    b.join_confirmed("big").outcome().await.unwrap();

    let at_limit = "x".repeat(1000);
    a.publish("big", &"y".repeat(1001)).outcome().await.unwrap();
    a.publish("big", &at_limit).outcome().await.unwrap();
    // Over the limit and malformed: refused by its size, counted once.
    let mut raw = encode("node-x", 1, "big", &Payload::json(vec![b'['; 5000])).to_vec();
    redis.publish_raw("herald:big", &raw);
    raw.truncate(raw.len() - 4001);
    redis.publish_raw("herald:big", &raw); // 999 bytes of broken JSON: too small to refuse by size
    a.publish("big", "after").outcome().await.unwrap();

    wait_until(LIMIT, "the rest delivered", || b.sink.texts("big").len() == 2).await;
    assert_eq!(b.sink.texts("big"), [at_limit, "after".to_owned()]);
    wait_until(LIMIT, "refusals counted", || b.metrics.relay_invalid.get() == 3).await;
}
