//! Batched appends against a real `redis-server`: consecutive appends of a pipeline are
//! stored by one run of the append script (fewer `EVALSHA` calls than messages), yet every
//! message keeps its own answer and position, appends to several topics and plain
//! publications reach Redis in exactly the order they were accepted (seen by a raw
//! subscriber), a message Redis refuses fails alone, its batch neighbours stored, and a
//! batch that finds a topic's past lost or contradicted starts one new epoch for it.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{PublishTicket, RelayError};
use herald_protocol::{envelope, StreamPos, TopicRules};
use herald_redis::RedisRelayConfig;
use support::{fast, init_logs, policy, wait_until, within, Node, RedisServer};

const LIMIT: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

async fn up(_redis: &RedisServer, config: RedisRelayConfig) -> Node {
    let n = Node::start(config);
    wait_until(LIMIT, "relay up", || n.is_up()).await;
    n
}

async fn outcome(t: PublishTicket) -> Result<Option<StreamPos>, RelayError> {
    within(LIMIT, "publish answered", t.outcome()).await
}

/// `INFO commandstats` calls of `EVALSHA` so far.
fn evalsha_calls(redis: &RedisServer) -> u64 {
    let info: String = redis.query(redis::cmd("INFO").arg("commandstats"));
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

/// A raw `PSUBSCRIBE herald:*` from outside the node: every (topic, text, position) Redis
/// published, in the order it published them.
fn raw_subscriber(redis: &RedisServer) -> mpsc::Receiver<(String, String, Option<StreamPos>)> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut conn = redis.client();
    std::thread::spawn(move || {
        let mut ps = conn.as_pubsub();
        ps.psubscribe("herald:*").unwrap();
        ps.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        ready_tx.send(()).unwrap();
        while let Ok(msg) = ps.get_message() {
            let bytes: Vec<u8> = msg.get_payload().unwrap();
            let Ok(e) = envelope::decode(Bytes::from(bytes), TopicRules::default()) else {
                continue; // the control channel
            };
            let text = String::from_utf8(e.payload.bytes.to_vec()).unwrap();
            if tx.send((e.topic.to_string(), text, e.stream)).is_err() {
                break;
            }
        }
    });
    ready_rx.recv_timeout(LIMIT).expect("raw subscriber ready");
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_appends_keep_queue_order_across_topics_and_publications() {
    init_logs();
    let redis = RedisServer::start();
    let node = up(
        &redis,
        RedisRelayConfig {
            append_batch_max: 5,
            ..fast(&redis.url(), "node-a")
        },
    )
    .await;
    let raw = raw_subscriber(&redis);
    let p = policy(10_000, HOUR);
    let calls0 = evalsha_calls(&redis);
    // Writes held for a while: everything below queues up and goes out in a few large
    // pipelines, so runs of appends are batched (and cut at each publication).
    redis.pause_writes(300);
    let mut sent = Vec::new(); // (topic, text, is an append)
    let mut tickets = Vec::new();
    for i in 0..300 {
        let (topic, append) = match i % 7 {
            0 | 2 | 3 => ("x", true),
            1 | 4 => ("y", true),
            5 => ("plain", false),
            _ => ("z", true),
        };
        let text = format!("{topic}-{i}");
        tickets.push(if append {
            node.append(topic, &text, &p)
        } else {
            node.publish(topic, &text)
        });
        sent.push((topic, text, append));
    }
    let mut next = std::collections::HashMap::new();
    let mut epochs = std::collections::HashMap::new();
    for ((topic, text, append), t) in sent.iter().zip(tickets) {
        let got = outcome(t).await.unwrap_or_else(|e| panic!("{text}: {e}"));
        if !append {
            assert_eq!(got, None, "{text}: a publication has no position");
            continue;
        }
        let pos = got.unwrap_or_else(|| panic!("{text}: an append has a position"));
        let want = next.entry(*topic).or_insert(1u64);
        assert_eq!(pos.offset, *want, "{text}: offsets per topic in the order accepted");
        *want += 1;
        let epoch = epochs.entry(*topic).or_insert_with(|| pos.epoch.clone());
        assert_eq!(&pos.epoch, epoch, "{text}: one epoch per topic");
    }
    let appends = sent.iter().filter(|s| s.2).count() as u64;
    let calls = evalsha_calls(&redis) - calls0;
    assert!(
        calls < appends / 2,
        "{appends} appends went out in {calls} script runs: they were not batched"
    );
    // Redis published them in exactly the order they were accepted, each with the position
    // its ticket was given.
    let mut order = Vec::new();
    while order.len() < sent.len() {
        order.push(
            raw.recv_timeout(LIMIT)
                .expect("every publication seen by the raw subscriber"),
        );
    }
    let seen: Vec<(&str, &str)> = order.iter().map(|(t, x, _)| (t.as_str(), x.as_str())).collect();
    let want: Vec<(&str, &str)> = sent.iter().map(|(t, x, _)| (*t, x.as_str())).collect();
    assert_eq!(seen, want, "the queue order");
    let mut next = std::collections::HashMap::new();
    for ((topic, text, append), (_, _, stream)) in sent.iter().zip(&order) {
        if *append {
            let want = next.entry(*topic).or_insert(1u64);
            let s = stream
                .as_ref()
                .unwrap_or_else(|| panic!("{text}: published with a position"));
            assert_eq!(
                (s.offset, &s.epoch),
                (*want, &epochs[topic]),
                "{text}: the envelope's position"
            );
            *want += 1;
        } else {
            assert_eq!(stream, &None, "{text}");
        }
    }
    let page = node.read("x", 0, 1000, &p).await;
    assert_eq!(page.messages.len() as u64, next["x"] - 1, "every append to x is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_redis_refuses_fails_alone_in_its_batch() {
    init_logs();
    let redis = RedisServer::start();
    let node = up(&redis, fast(&redis.url(), "node-a")).await;
    let p = policy(10_000, HOUR);
    // The meta key of "bad" is a string: the script's HGET of it fails with WRONGTYPE.
    let meta = node.relay.config().meta_key("bad");
    let _: () = redis.query(redis::cmd("SET").arg(&meta).arg("not a hash"));
    let calls0 = evalsha_calls(&redis);
    redis.pause_writes(300);
    let sent: Vec<(&str, PublishTicket)> = (0..60)
        .map(|i| {
            let topic = if i % 3 == 1 { "bad" } else { "good" };
            (topic, node.append(topic, &format!("{topic}-{i}"), &p))
        })
        .collect();
    let mut next = 1;
    for (topic, t) in sent {
        match (topic, outcome(t).await) {
            ("good", Ok(Some(pos))) => {
                assert_eq!(pos.offset, next, "good: offsets in order, none skipped");
                next += 1;
            }
            ("bad", Err(RelayError::Unavailable(e))) => {
                assert!(e.contains("WRONGTYPE"), "bad: Redis's own reason, got {e}");
            }
            (topic, other) => panic!("{topic}: {other:?}"),
        }
    }
    let calls = evalsha_calls(&redis) - calls0;
    assert!(
        calls < 30,
        "60 appends went out in {calls} script runs: they were not batched"
    );
    let page = node.read("good", 0, 1000, &p).await;
    assert_eq!(page.messages.len(), 40, "every good append is stored");
    let ttl: i64 = redis.query(redis::cmd("PTTL").arg(node.relay.config().stream_key("good")));
    assert!(ttl > 0, "the stored topic got its TTL");
    let ttl: i64 = redis.query(redis::cmd("PTTL").arg(&meta));
    assert_eq!(ttl, -1, "the refused topic's key was left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_finds_its_past_lost_or_contradicted_starts_one_new_epoch() {
    init_logs();
    let redis = RedisServer::start();
    let node = up(&redis, fast(&redis.url(), "node-a")).await;
    let p = policy(10_000, HOUR);
    let cfg = node.relay.config();
    for (topic, damage) in [("lost", "meta evicted"), ("behind", "meta behind its stream")] {
        let mut old = None;
        for i in 0..5 {
            let pos = outcome(node.append(topic, &format!("old-{i}"), &p))
                .await
                .unwrap()
                .unwrap();
            old = Some(pos.epoch);
        }
        let old = old.unwrap();
        if damage == "meta evicted" {
            let _: () = redis.query(redis::cmd("DEL").arg(cfg.meta_key(topic)));
        } else {
            let _: () = redis.query(redis::cmd("HSET").arg(cfg.meta_key(topic)).arg("offset").arg(1));
        }
        redis.pause_writes(200);
        let tickets: Vec<_> = (0..20).map(|i| node.append(topic, &format!("new-{i}"), &p)).collect();
        let mut epoch = None;
        for (i, t) in tickets.into_iter().enumerate() {
            let pos = outcome(t).await.unwrap().unwrap();
            assert_eq!(pos.offset, i as u64 + 1, "{damage}: the new stream counts from 1");
            assert_ne!(pos.epoch, old, "{damage}: a new epoch");
            assert_eq!(
                pos.epoch,
                *epoch.get_or_insert_with(|| pos.epoch.clone()),
                "{damage}: one new epoch"
            );
        }
        let page = node.read(topic, 0, 1000, &p).await;
        let texts: Vec<String> = page
            .messages
            .iter()
            .map(|m| String::from_utf8(m.payload.bytes.to_vec()).unwrap())
            .collect();
        assert_eq!(
            texts,
            (0..20).map(|i| format!("new-{i}")).collect::<Vec<_>>(),
            "{damage}"
        );
    }
}
