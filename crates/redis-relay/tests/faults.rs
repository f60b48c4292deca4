//! The relay under Redis faults, each against a real `redis-server` that the test kills,
//! restarts on the same port or pauses with SIGSTOP: the relay reports Down within its
//! heartbeat bounds, fails publications while down (never acknowledges them), reconnects
//! with backoff, resubscribes every topic and delivers again, without restarting anything.
//! The tests run in parallel (each with its own Redis); the longest is the 30 s outage.

mod support;

use std::time::{Duration, Instant};

use herald_broker::{PublishTicket, Relay, RelayError, RelayState};
use support::{fast, init_logs, wait_until, within, Node, RedisServer};

const LIMIT: Duration = Duration::from_secs(5);

fn unrelayed(n: &Node) -> u64 {
    n.metrics.dropped.with_label_values(&["relay_unavailable"]).get()
}

/// Both nodes listen to `topic`; waits until Redis sees both subscriptions.
async fn subscribed_pair(redis: &RedisServer, a: &Node, b: &Node, topic: &str) {
    wait_until(LIMIT, "both relays up", || a.is_up() && b.is_up()).await;
    a.join(topic);
    b.join(topic);
    let channel = format!("herald:{topic}");
    wait_until(LIMIT, "both subscribed", || redis.numsub(&channel) == 2).await;
}

/// A -> B and B -> A still work on `topic`.
async fn delivery_works(a: &Node, b: &Node, topic: &str, tag: &str) {
    let (na, nb) = (a.sink.texts(topic).len(), b.sink.texts(topic).len());
    a.publish(topic, &format!("{tag}-a"))
        .outcome()
        .await
        .expect("A publishes");
    b.publish(topic, &format!("{tag}-b"))
        .outcome()
        .await
        .expect("B publishes");
    wait_until(LIMIT, "cross delivery", || {
        a.sink.texts(topic).len() == na + 1 && b.sink.texts(topic).len() == nb + 1
    })
    .await;
    assert_eq!(b.sink.texts(topic).last().unwrap(), &format!("{tag}-a"));
    assert_eq!(a.sink.texts(topic).last().unwrap(), &format!("{tag}-b"));
}

/// Publishing while down fails at once. An immediate refusal is counted by the broker
/// (which sees every `PublishTicket::Done(Err)`), not by the relay, so it is counted once.
/// The relay is Down as soon as either connection is; publishing is refused once the
/// publish connection's own failure was noticed (a heartbeat or a failed pipeline later).
async fn publish_fails_while_down(n: &Node) {
    wait_until(LIMIT, "publish link down", || !n.relay.publish_link_up()).await;
    let before = unrelayed(n);
    match n.publish("any", "lost") {
        PublishTicket::Done(Err(RelayError::Unavailable(_))) => {}
        PublishTicket::Done(other) => panic!("expected Unavailable, got {other:?}"),
        PublishTicket::Pending(_) => panic!("a publish while down must fail at once"),
    }
    assert_eq!(unrelayed(n), before, "immediate refusals are the broker's to count");
}

/// Kill Redis, keep it down for `outage`, restart it on the same port: both nodes go Down,
/// come back Up, resubscribe and deliver again.
async fn outage(outage: Duration) {
    let mut redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "node-a"));
    let b = Node::start(fast(&redis.url(), "node-b"));
    subscribed_pair(&redis, &a, &b, "r").await;
    delivery_works(&a, &b, "r", "before").await;

    redis.kill();
    let down = wait_until(LIMIT, "both Down", || !a.is_up() && !b.is_up()).await;
    println!("killed: Down after {down:?}");
    assert_eq!(a.metrics.relay_up.get(), 0);
    publish_fails_while_down(&a).await;
    tokio::time::sleep(outage.saturating_sub(down)).await;
    assert_eq!(a.relay.state(), RelayState::Down);

    redis.restart();
    let up = wait_until(LIMIT, "both Up again", || a.is_up() && b.is_up()).await;
    println!("restarted: Up after {up:?}");
    wait_until(LIMIT, "resubscribed", || redis.numsub("herald:r") == 2).await;
    delivery_works(&a, &b, "r", "after").await;
    assert_eq!(a.metrics.relay_reconnects.get(), 1);
    assert_eq!(b.metrics.relay_reconnects.get(), 1);
    assert_eq!(a.metrics.relay_up.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survives_a_one_second_outage() {
    init_logs();
    outage(Duration::from_secs(1)).await;
}

/// The reconnect backoff is capped at 500 ms by `fast`, so the 30 s outage costs 30 s of
/// wall time (in parallel with the other tests) and stays in the default test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survives_a_thirty_second_outage() {
    init_logs();
    outage(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notices_a_hung_redis_and_recovers() {
    init_logs();
    let mut redis = RedisServer::start();
    // Production-like heartbeat bounds: 1 s interval, 1 s timeout.
    let config = |node: &str| herald_redis::RedisRelayConfig {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(1),
        ..fast(&redis.url(), node)
    };
    let a = Node::start(config("node-a"));
    let b = Node::start(config("node-b"));
    subscribed_pair(&redis, &a, &b, "h").await;
    delivery_works(&a, &b, "h", "before").await;

    redis.pause();
    let paused_at = Instant::now();
    let down = wait_until(LIMIT, "both Down", || !a.is_up() && !b.is_up()).await;
    println!("SIGSTOP: Down after {down:?}");
    assert!(
        down <= Duration::from_secs(3),
        "interval + timeout (+1 s slack) bound the detection: {down:?}"
    );
    publish_fails_while_down(&a).await;
    publish_fails_while_down(&b).await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(paused_at.elapsed())).await;
    assert!(!a.is_up(), "still down while Redis is paused");

    redis.resume();
    let up = wait_until(LIMIT, "both Up again", || a.is_up() && b.is_up()).await;
    println!("SIGCONT: Up after {up:?}");
    wait_until(LIMIT, "resubscribed", || redis.numsub("herald:h") == 2).await;
    delivery_works(&a, &b, "h", "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_without_redis_and_connects_later() {
    init_logs();
    let port = RedisServer::unused_port();
    let a = Node::start(fast(&format!("redis://127.0.0.1:{port}/"), "node-a"));
    a.join("early");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.relay.state(), RelayState::Down);
    publish_fails_while_down(&a).await;

    let redis = RedisServer::start_on(port);
    wait_until(LIMIT, "Up once Redis appears", || a.is_up()).await;
    wait_until(LIMIT, "interest from before is subscribed", || {
        redis.numsub("herald:early") == 1
    })
    .await;
    assert_eq!(
        a.metrics.relay_reconnects.get(),
        0,
        "a first connection is not a reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_fails_queued_publications() {
    init_logs();
    let mut redis = RedisServer::start();
    let config = herald_redis::RedisRelayConfig {
        heartbeat_interval: Duration::from_secs(5),
        command_timeout: Duration::from_secs(2),
        ..fast(&redis.url(), "node-a")
    };
    let a = Node::start(config);
    wait_until(LIMIT, "Up", || a.is_up()).await;

    // Redis hangs; the first two publications are stuck in flight (one pipeline each, the
    // most the publisher sends ahead), the rest queue behind them.
    redis.pause();
    let first = a.publish("t", "in flight");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = a.publish("t", "in flight too");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued: Vec<_> = (0..10).map(|i| a.publish("t", &format!("queued-{i}"))).collect();
    let started = Instant::now();
    within(Duration::from_secs(4), "shutdown", a.relay.shutdown()).await;
    println!("shutdown with a hung Redis took {:?}", started.elapsed());
    for q in queued {
        assert_eq!(q.outcome().await, Err(RelayError::ShuttingDown));
    }
    for t in [first, second] {
        assert!(
            matches!(t.outcome().await, Err(RelayError::Unavailable(_))),
            "never acknowledged"
        );
    }
    assert!(matches!(
        a.publish("t", "late"),
        PublishTicket::Done(Err(RelayError::ShuttingDown))
    ));
    // 10 queued + 2 in flight, failed by the relay; the immediate refusal of "late" is the
    // broker's to count.
    assert_eq!(unrelayed(&a), 12);
}
