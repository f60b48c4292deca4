//! `confirm_interest` against a real `redis-server`: once it resolves `Ok`, a message
//! another node publishes to the topic reaches this node, also on a topic that was fresh a
//! moment ago (the defect this fixes: the first messages after a subscribe acknowledgement
//! were lost while the SUBSCRIBE waited out the batch window). It answers at once when the
//! topic is subscribed already, fails at once while Redis is down, never answers `Ok` for a
//! channel that is being unsubscribed, and keeps the batching (one subscription per node
//! however many join).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::RelayError;
use support::{fast, init_logs, wait_until, within, Node, RedisServer};

const LIMIT: Duration = Duration::from_secs(5);

async fn up_pair(redis: &RedisServer) -> (Node, Node) {
    let a = Node::start(fast(&redis.url(), "node-a"));
    let b = Node::start(fast(&redis.url(), "node-b"));
    wait_until(LIMIT, "both relays up", || a.is_up() && b.is_up()).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirmed_fresh_topic_gets_the_very_next_publish() {
    init_logs();
    let redis = RedisServer::start();
    let (a, b) = up_pair(&redis).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let topic = format!("fresh-{i}");
        let started = Instant::now();
        within(LIMIT, "confirm", b.join_confirmed(&topic).outcome())
            .await
            .expect("confirmed");
        slowest = slowest.max(started.elapsed());
        // Immediately: no wait for anything but the confirmation.
        a.publish(&topic, &format!("m-{i}"))
            .outcome()
            .await
            .expect("A publishes");
    }
    wait_until(LIMIT, "B got every first message", || b.sink.count() == 20).await;
    for i in 0..20 {
        assert_eq!(b.sink.texts(&format!("fresh-{i}")), [format!("m-{i}")]);
    }
    println!("slowest confirmation of a fresh topic: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(250),
        "a fresh topic is confirmed within a round trip or two: {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscribed_topic_is_confirmed_at_once() {
    init_logs();
    let redis = RedisServer::start();
    let (_a, b) = up_pair(&redis).await;
    b.join_confirmed("room").outcome().await.unwrap();
    assert_eq!(redis.numsub("herald:room"), 1, "confirmed means Redis has it");
    for _ in 0..3 {
        assert!(
            matches!(b.join_confirmed("room"), herald_broker::Ticket::Done(Ok(()))),
            "already subscribed: answered without waiting"
        );
    }
}

fn refused_at_once(t: herald_broker::InterestTicket) {
    match t {
        herald_broker::Ticket::Done(Err(RelayError::Unavailable(_))) => {}
        herald_broker::Ticket::Done(other) => panic!("expected Unavailable, got {other:?}"),
        herald_broker::Ticket::Pending(_) => panic!("a confirmation while down must fail at once"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_fails_at_once_while_redis_is_down() {
    init_logs();
    // Down from the start.
    let port = RedisServer::unused_port();
    let early = Node::start(fast(&format!("redis://127.0.0.1:{port}/"), "node-early"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    refused_at_once(early.join_confirmed("t"));

    // Down after being up; a confirmation that was waiting when it went down is answered
    // too (not left hanging for the whole outage).
    let mut redis = RedisServer::start();
    let b = Node::start(fast(&redis.url(), "node-b"));
    wait_until(LIMIT, "up", || b.is_up()).await;
    b.join_confirmed("t").outcome().await.unwrap();
    redis.kill();
    wait_until(LIMIT, "pub/sub link down", || !b.relay.pubsub_link_up()).await;
    refused_at_once(b.join_confirmed("t"));
    refused_at_once(b.join_confirmed("other"));

    // Back: confirmations work again, and the topics from before are subscribed.
    redis.restart();
    wait_until(LIMIT, "up again", || b.is_up()).await;
    within(LIMIT, "confirm after the outage", b.join_confirmed("t").outcome())
        .await
        .unwrap();
    assert_eq!(redis.numsub("herald:t"), 1);

    // Shutting down: refused at once.
    b.relay.shutdown().await;
    refused_at_once(b.join_confirmed("t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_confirmation_is_answered_when_redis_goes_away() {
    init_logs();
    let mut redis = RedisServer::start();
    let config = herald_redis::RedisRelayConfig {
        // A long window, so the confirmation is surely still waiting when Redis dies.
        subscribe_batch_window: Duration::from_secs(2),
        subscribe_confirm_window: Duration::from_secs(2),
        ..fast(&redis.url(), "node-b")
    };
    let b = Node::start(config);
    wait_until(LIMIT, "up", || b.is_up()).await;
    let ticket = b.join_confirmed("t");
    assert!(matches!(ticket, herald_broker::Ticket::Pending(_)));
    redis.kill();
    let got = within(LIMIT, "an answer, not a hang", ticket.outcome()).await;
    assert!(matches!(got, Err(RelayError::Unavailable(_))), "{got:?}");
}

/// Subscribe, unsubscribe, subscribe again just around the moment the delayed UNSUBSCRIBE
/// is decided, with a confirmation each time, then publish: every message arrives. With a
/// short `unsubscribe_delay` the re-subscribe lands before, during and after the decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirmation_raced_with_an_unsubscribe_loses_nothing() {
    init_logs();
    let redis = RedisServer::start();
    let delay = Duration::from_millis(40);
    let config = |node: &str| herald_redis::RedisRelayConfig {
        unsubscribe_delay: delay,
        subscribe_batch_window: Duration::from_millis(5),
        ..fast(&redis.url(), node)
    };
    let a = Node::start(config("node-a"));
    let b = Node::start(config("node-b"));
    wait_until(LIMIT, "both relays up", || a.is_up() && b.is_up()).await;
    let rounds = 60;
    for i in 0..rounds {
        b.join_confirmed("race").outcome().await.expect("first confirmation");
        b.leave("race");
        // 0..=59 ms after the leave: the decision falls at ~45 ms (window + delay).
        tokio::time::sleep(Duration::from_millis(i)).await;
        within(LIMIT, "re-confirmation", b.join_confirmed("race").outcome())
            .await
            .expect("re-confirmed");
        a.publish("race", &format!("r-{i}"))
            .outcome()
            .await
            .expect("A publishes");
        wait_until(LIMIT, "B got it", || b.sink.texts("race").len() == i as usize + 1).await;
    }
    let want: Vec<String> = (0..rounds).map(|i| format!("r-{i}")).collect();
    assert_eq!(b.sink.texts("race"), want, "no message lost to a racing UNSUBSCRIBE");
    tokio::time::sleep(delay * 3).await;
    assert_eq!(redis.numsub("herald:race"), 1, "still subscribed while B listens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_confirmed_joins_are_one_subscription_per_node() {
    init_logs();
    let redis = RedisServer::start();
    let (a, b) = up_pair(&redis).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let before = redis.subscribe_calls();
    let tasks: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .flat_map(|n| (0..4).map(move |_| n.clone()))
        .map(|n| {
            tokio::spawn(async move {
                let tickets: Vec<_> = (0..250).map(|_| n.join_confirmed("popular")).collect();
                for t in tickets {
                    t.outcome().await.expect("confirmed");
                }
            })
        })
        .collect();
    for t in tasks {
        within(LIMIT, "every confirmation", t).await.unwrap();
    }
    assert_eq!(redis.numsub("herald:popular"), 2, "one subscription per node");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        redis.subscribe_calls() - before,
        2,
        "one SUBSCRIBE per node for 1000 joins each"
    );
    a.publish("popular", "hello").outcome().await.unwrap();
    wait_until(LIMIT, "delivered", || b.sink.texts("popular") == ["hello"]).await;
}
