//! The relay's two connections fail independently, against a real `redis-server`: a
//! PUBLISH that times out (Redis holding writes with `CLIENT PAUSE WRITE`) replaces the
//! publish connection only. The pub/sub connection (same Redis client id), its
//! subscriptions and the inbound path stay, so nothing another node publishes meanwhile is
//! lost, and publishing works again once Redis takes writes.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_broker::RelayError;
use herald_redis::RedisRelayConfig;
use support::{fast, init_logs, wait_until, within, Node, RedisServer};

const LIMIT: Duration = Duration::from_secs(5);

fn link_reconnects(n: &Node, link: &str) -> u64 {
    n.metrics.relay_link_reconnects.with_label_values(&[link]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_timeout_replaces_only_the_publish_connection() {
    init_logs();
    let redis = RedisServer::start();
    // A rides out the pause (its PUBLISH waits); B gives up on PUBLISH after 300 ms.
    let a = Arc::new(Node::start(RedisRelayConfig {
        command_timeout: Duration::from_secs(5),
        heartbeat_timeout: Duration::from_secs(5),
        ..fast(&redis.url(), "node-a")
    }));
    let b = Node::start(RedisRelayConfig {
        command_timeout: Duration::from_millis(300),
        ..fast(&redis.url(), "node-b")
    });
    wait_until(LIMIT, "both relays up", || a.is_up() && b.is_up()).await;
    b.join_confirmed("t").outcome().await.unwrap();
    // Redis lists a connection as `pubsub` once it is subscribed to something.
    a.join_confirmed("elsewhere").outcome().await.unwrap();
    let pubsub_ids = redis.pubsub_client_ids();
    assert_eq!(pubsub_ids.len(), 2, "one pub/sub connection per relay");

    // A publishes all along, before, during and after the pause; each is awaited, so
    // their order is their publish order.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("a-{i}");
                a.publish("t", &text)
                    .outcome()
                    .await
                    .expect("A's publications all succeed");
                acked.push(text);
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    b.publish("t", "b-before").outcome().await.expect("B publishes before");
    tokio::time::sleep(Duration::from_millis(200)).await;

    redis.pause_writes(1500);
    let got = within(LIMIT, "B's publish answered", b.publish("t", "b-during").outcome()).await;
    assert!(matches!(got, Err(RelayError::Unavailable(_))), "{got:?}");
    assert!(b.relay.pubsub_link_up(), "the pub/sub side is not touched");

    // Wait out the pause; B's publish side is back and works.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_until(LIMIT, "B up again", || b.is_up()).await;
    within(LIMIT, "B publishes after", b.publish("t", "b-after").outcome())
        .await
        .expect("B publishes after the pause");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = publisher.await.unwrap();

    wait_until(LIMIT, "B received everything A published", || {
        b.sink.texts("t") == acked
    })
    .await;
    println!("{} messages from A during the test, none lost", acked.len());
    assert!(acked.len() > 20, "A kept publishing through the pause: {}", acked.len());
    assert_eq!(
        redis.pubsub_client_ids(),
        pubsub_ids,
        "no pub/sub connection was replaced"
    );
    assert_eq!(link_reconnects(&b, "pubsub"), 0);
    assert!(link_reconnects(&b, "publish") >= 1, "B replaced its publish connection");
    assert!(
        b.metrics.relay_reconnects.get() >= 1,
        "B was Down while its publish side was"
    );
    assert_eq!(link_reconnects(&a, "pubsub"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_is_up_only_while_both_connections_are() {
    init_logs();
    let mut redis = RedisServer::start();
    let b = Node::start(fast(&redis.url(), "node-b"));
    wait_until(LIMIT, "up", || b.is_up()).await;
    assert!(b.relay.publish_link_up() && b.relay.pubsub_link_up());
    assert_eq!(b.metrics.relay_up.get(), 1);
    redis.kill();
    wait_until(LIMIT, "down", || !b.is_up()).await;
    assert_eq!(b.metrics.relay_up.get(), 0);
    wait_until(LIMIT, "both links down", || {
        !b.relay.publish_link_up() && !b.relay.pubsub_link_up()
    })
    .await;
    redis.restart();
    wait_until(LIMIT, "up again", || b.is_up()).await;
    assert_eq!(b.metrics.relay_up.get(), 1);
    assert_eq!(
        b.metrics.relay_reconnects.get(),
        1,
        "one reconnect of the relay as a whole"
    );
    assert_eq!(link_reconnects(&b, "publish"), 1);
    assert_eq!(link_reconnects(&b, "pubsub"), 1);
}
