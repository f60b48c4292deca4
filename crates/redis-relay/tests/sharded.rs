//! `ShardedRelay` over two real `redis-server`s with a fake broker: each shard subscribes
//! only the topics the router gives it (checked in each Redis), the control channel is on
//! both, one shard down makes the relay degraded and refuses only that shard's topics, and
//! when it returns the broker is asked to fill the gap of that shard's topics only.

mod support;

use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_broker::{BrokerMetrics, Relay, RelayError, RelaySink, RelayState};
use herald_protocol::Payload;
use herald_redis::{ShardRouter, ShardedRelay};
use support::{fast, init_logs, wait_until, FakeSink, RedisServer};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

fn topic_on(router: &ShardRouter, shard: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|t| router.owner(t) == shard)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_shard_carries_its_own_topics_and_relinks_only_them() {
    init_logs();
    let mut redis = [RedisServer::start(), RedisServer::start()];
    let names: Vec<String> = redis.iter().map(|r| format!("127.0.0.1:{}", r.port())).collect();
    let router = ShardRouter::new(&names);
    let metrics = Arc::new(BrokerMetrics::new());
    let relay = ShardedRelay::start(
        vec![fast(&redis[0].url(), "node-a"), fast(&redis[1].url(), "node-a")],
        metrics.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    let sink = Arc::new(FakeSink::default());
    relay.attach(Arc::downgrade(&sink) as Weak<dyn RelaySink>);
    let topics = [topic_on(&router, 0, "g"), topic_on(&router, 1, "g")];
    for t in &topics {
        sink.want(t);
        relay.interest_changed(t);
        assert_eq!(relay.shard_of(t), Some(names[router.owner(t)].as_str().into()));
    }
    wait_until(LIMIT, "up", || relay.state() == RelayState::Up).await;
    for (shard, t) in topics.iter().enumerate() {
        relay.confirm_interest(t).outcome().await.unwrap();
        let channel = format!("herald:{t}");
        wait_until(LIMIT, "subscribed on its shard", || redis[shard].numsub(&channel) == 1).await;
        assert_eq!(redis[1 - shard].numsub(&channel), 0, "{t} on the wrong shard");
    }
    for r in &redis {
        assert_eq!(r.numsub("herald:#control"), 1, "the control channel is on every shard");
    }
    let shards = relay.shards();
    assert_eq!(shards.iter().map(|s| s.name.to_string()).collect::<Vec<_>>(), names);
    // The shards leave the whole relay's gauge to their owner (the gateway derives it).
    assert_eq!(metrics.relay_up.get(), 0);

    // Shard 1 goes: degraded, its topic refused at once, the other's published.
    redis[1].kill();
    wait_until(LIMIT, "degraded", || relay.state() == RelayState::Degraded).await;
    let payload = Payload::text("x".to_owned());
    match relay.publish(&topics[1], &payload, 1).outcome().await {
        Err(RelayError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    relay.publish(&topics[0], &payload, 1).outcome().await.unwrap();
    assert!(relay.confirm_interest(&topics[1]).outcome().await.is_err());

    // Back: resubscribed there, and the gap to fill is shard 1's topic only.
    redis[1].restart();
    wait_until(LIMIT, "relinked", || sink.relinks() >= 1).await;
    assert_eq!(sink.relinked_topic_sets(), vec![vec![topics[1].clone()]]);
    wait_until(LIMIT, "up again", || relay.state() == RelayState::Up).await;
    assert_eq!(redis[1].numsub(&format!("herald:{}", topics[1])), 1);
    relay.publish(&topics[1], &payload, 1).outcome().await.unwrap();

    // Both down: down; shutdown stops every shard.
    redis[0].kill();
    redis[1].kill();
    wait_until(LIMIT, "down", || relay.state() == RelayState::Down).await;
    tokio::time::timeout(LIMIT, relay.shutdown())
        .await
        .expect("every shard stops");
}
