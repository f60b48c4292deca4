//! The gap-filling hook: `RelaySink::relinked` is called once the pub/sub connection is
//! back *and* every topic is resubscribed *and* the publish connection (which history reads
//! use) is up (after a Redis restart, after Redis killed the pub/sub connection), never on
//! the first connection, and never while a topic's subscription is still missing, so a
//! broker reading history from it misses nothing published after the call.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{fast, init_logs, wait_until, Node, RedisServer};

const LIMIT: Duration = Duration::from_secs(10);

/// What a `relinked` call saw: `PUBSUB NUMSUB` of each topic (asked from inside the call,
/// on a connection of the test's own), and whether the publish connection, which the
/// broker's history reads use, was up.
type Seen = Arc<Mutex<Vec<(Vec<i64>, bool)>>>;

/// A node listening to `topics`, and what every `relinked` call saw.
async fn watched(redis: &RedisServer, topics: &'static [&'static str]) -> (Node, Seen) {
    let n = Node::start(fast(&redis.url(), "node-b"));
    for t in topics {
        n.join(t);
    }
    wait_until(LIMIT, "subscribed", || {
        n.is_up() && topics.iter().all(|t| redis.numsub(&format!("herald:{t}")) == 1)
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (url, log, relay) = (redis.url(), seen.clone(), n.relay.clone());
    n.sink.on_relink(move || {
        let mut c = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        let counts: Vec<i64> = topics
            .iter()
            .map(|t| {
                let v: Vec<(String, i64)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(format!("herald:{t}"))
                    .query(&mut c)
                    .unwrap();
                v[0].1
            })
            .collect();
        log.lock().unwrap().push((counts, relay.publish_link_up()));
    });
    (n, seen)
}

const TOPICS: &[&str] = &["g1", "g2", "g3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relinked_after_a_redis_restart_once_every_topic_is_resubscribed() {
    init_logs();
    let mut redis = RedisServer::start();
    let (n, seen) = watched(&redis, TOPICS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(n.sink.relinks(), 0, "the first connection is no relink");

    redis.restart();
    wait_until(LIMIT, "relinked", || n.sink.relinks() == 1).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [(vec![1, 1, 1], true)],
        "every topic subscribed, and history readable, when called"
    );
    assert!(n.relay.pubsub_link_up());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(n.sink.relinks(), 1, "once per reconnect");

    redis.restart();
    wait_until(LIMIT, "relinked again", || n.sink.relinks() == 2).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(seen.lock().unwrap()[1], (vec![1, 1, 1], true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relinked_after_the_pubsub_connection_is_killed() {
    init_logs();
    let redis = RedisServer::start();
    let (n, seen) = watched(&redis, TOPICS).await;
    let before = redis.pubsub_client_ids();
    let killed: i64 = redis.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
    assert_eq!(killed, 1);
    wait_until(LIMIT, "relinked", || n.sink.relinks() == 1).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [(vec![1, 1, 1], true)],
        "every topic subscribed when called"
    );
    assert_ne!(redis.pubsub_client_ids(), before, "a new pub/sub connection");
    assert!(n.relay.publish_link_up(), "the publish connection was not touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_connection_failure_is_no_relink() {
    init_logs();
    let redis = RedisServer::start();
    let (n, _) = watched(&redis, TOPICS).await;
    let killed: i64 = redis.query(
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes"),
    );
    assert!(killed >= 1, "the publish connection");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_until(LIMIT, "publish link back", || n.relay.publish_link_up()).await;
    assert_eq!(n.sink.relinks(), 0, "subscriptions never broke: nothing to fill");
}
