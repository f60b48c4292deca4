//! Control messages through a real `redis-server`: what node A sends on the control channel
//! reaches node B (and not A), still does after a Redis restart (both resubscribe it), and garbage on the control
//! channel is counted and skipped.

mod support;

use std::time::Duration;

use herald_broker::Relay;
use herald_protocol::ControlMessage;
use support::{fast, init_logs, wait_until, Node, RedisServer};

const LIMIT: Duration = Duration::from_secs(5);

fn kick(user: &str) -> ControlMessage {
    ControlMessage::DisconnectUser {
        user: user.into(),
        code: 4001,
        reason: "bye".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_messages_reach_the_other_nodes_only() {
    init_logs();
    let mut redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "node-a"));
    let b = Node::start(fast(&redis.url(), "node-b"));
    wait_until(LIMIT, "both relays up", || a.is_up() && b.is_up()).await;
    // Both listen to the control channel without any topic interest.
    wait_until(LIMIT, "both on the control channel", || {
        redis.numsub("herald:#control") == 2
    })
    .await;

    a.relay.send_control(&kick("alice")).outcome().await.expect("sent");
    wait_until(LIMIT, "B got it", || b.sink.controls().len() == 1).await;
    assert_eq!(b.sink.controls(), vec![kick("alice")]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        a.sink.controls().is_empty(),
        "a node never receives its own control message"
    );

    // Garbage and invalid messages on the control channel are counted and skipped.
    let invalid_before = b.metrics.relay_invalid.get();
    redis.publish_raw("herald:#control", b"not json");
    redis.publish_raw(
        "herald:#control",
        br#"{"v":1,"origin":"x","kind":"disconnect_user","user":"u","code":1000,"reason":""}"#,
    );
    wait_until(LIMIT, "garbage counted", || {
        b.metrics.relay_invalid.get() >= invalid_before + 2
    })
    .await;
    assert_eq!(b.sink.controls().len(), 1);

    // After a Redis restart both resubscribe the control channel.
    redis.restart();
    wait_until(Duration::from_secs(15), "back on the control channel", || {
        a.is_up() && b.is_up() && redis.numsub("herald:#control") == 2
    })
    .await;
    // The publish connection learns of the restart on its first failed PUBLISH: retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while a.relay.send_control(&kick("bob")).outcome().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never sent after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until(LIMIT, "B got the second", || b.sink.controls().len() == 2).await;
    assert_eq!(b.sink.controls()[1], kick("bob"));
}
