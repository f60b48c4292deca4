//! Topic history in Redis against a real `redis-server`: offsets allocated by the append
//! script agree across nodes and every node (the appending one included) gets each
//! topic's messages in offset order; reads page, are bounded by `MAX_READ` and report
//! losses (trimmed, evicted, expired, flushed, Redis restarted without persistence) so
//! that `HistoryPage::continues` says false; `NOSCRIPT` after `SCRIPT FLUSH` is survived
//! without losing or reordering an append; an append while Redis is away is refused, never
//! acknowledged.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use herald_broker::history::MAX_READ;
use herald_broker::{PublishTicket, RelayError, Ticket};
use herald_protocol::{Payload, StreamPos};
use support::{fast, init_logs, policy, wait_until, within, Node, RedisServer};

const LIMIT: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

async fn up(redis: &RedisServer, name: &str) -> Node {
    let n = Node::start(fast(&redis.url(), name));
    wait_until(LIMIT, "relay up", || n.is_up()).await;
    n
}

async fn position(t: PublishTicket) -> StreamPos {
    within(LIMIT, "append answered", t.outcome())
        .await
        .expect("append accepted")
        .expect("an append has a position")
}

/// Appends `n` texts `{tag}-{i}` without waiting between them (one pipeline after the
/// other, as under load) and returns their positions in order.
async fn append_many(node: &Node, topic: &str, tag: &str, n: usize, p: &herald_broker::StreamPolicy) -> Vec<StreamPos> {
    let tickets: Vec<_> = (0..n).map(|i| node.append(topic, &format!("{tag}-{i}"), p)).collect();
    let mut out = Vec::with_capacity(n);
    for t in tickets {
        out.push(position(t).await);
    }
    out
}

fn offsets(page: &herald_broker::HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.offset).collect()
}

fn text(m: &herald_broker::StoredMessage) -> String {
    String::from_utf8(m.payload.bytes.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsets_agree_across_nodes_and_every_node_delivers_in_offset_order() {
    init_logs();
    let redis = RedisServer::start();
    let (a, b) = (up(&redis, "node-a").await, up(&redis, "node-b").await);
    for n in [&a, &b] {
        n.join("h");
        n.join("plain");
    }
    wait_until(LIMIT, "both subscribed", || {
        redis.numsub("herald:h") == 2 && redis.numsub("herald:plain") == 2
    })
    .await;
    let p = policy(10_000, HOUR);
    // Enough for many pipelines per node, several in flight at once.
    const N: u64 = 3000;
    let (from_a, from_b) = tokio::join!(
        append_many(&a, "h", "a", N as usize, &p),
        append_many(&b, "h", "b", N as usize, &p)
    );
    let epoch = from_a[0].epoch.clone();
    let all: HashSet<u64> = from_a.iter().chain(&from_b).map(|p| p.offset).collect();
    assert_eq!(all, (1..=2 * N).collect(), "distinct offsets, 1 to 2N");
    assert!(from_a.iter().chain(&from_b).all(|p| p.epoch == epoch), "one epoch");
    for w in [&from_a, &from_b] {
        assert!(
            w.windows(2).all(|p| p[0].offset < p[1].offset),
            "a node's appends keep its order"
        );
    }
    // Which text got which offset, as the appenders were told.
    let mut by_offset = vec![String::new(); 2 * N as usize + 1];
    for (tag, positions) in [("a", &from_a), ("b", &from_b)] {
        for (i, p) in positions.iter().enumerate() {
            by_offset[p.offset as usize] = format!("{tag}-{i}");
        }
    }
    for n in [&a, &b] {
        wait_until(LIMIT, "every append delivered", || n.sink.count() >= 2 * N as usize).await;
        let got: Vec<u64> = n.sink.positions("h").iter().map(|p| p.offset).collect();
        assert_eq!(
            got,
            (1..=2 * N).collect::<Vec<_>>(),
            "{}: offset order",
            n.relay.node_id()
        );
        assert!(n.sink.positions("h").iter().all(|p| p.epoch == epoch));
        assert_eq!(
            n.sink.texts("h"),
            by_offset[1..].to_vec(),
            "the message each offset names"
        );
    }
    // Topics without history keep the old rule: a node never gets its own back.
    a.publish("plain", "v1").outcome().await.unwrap();
    wait_until(LIMIT, "B got the plain message", || b.sink.texts("plain") == ["v1"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        a.sink.texts("plain").is_empty(),
        "own version 1 envelopes are still dropped"
    );
    assert!(b
        .sink
        .delivered()
        .iter()
        .all(|e| e.topic != "plain" || e.stream.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_keys_are_a_stream_and_a_hash_sharing_a_hash_tag() {
    init_logs();
    let redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    let pos = position(a.append("room.{x}", "hi", &policy(100, Duration::from_secs(60)))).await;
    assert_eq!(pos.offset, 1);
    let t: String = redis.query(redis::cmd("TYPE").arg("herald:{room.{x}}:s"));
    assert_eq!(t, "stream");
    let t: String = redis.query(redis::cmd("TYPE").arg("herald:{room.{x}}:m"));
    assert_eq!(t, "hash");
    let meta: std::collections::HashMap<String, String> = redis.query(redis::cmd("HGETALL").arg("herald:{room.{x}}:m"));
    assert_eq!(meta["offset"], "1");
    assert_eq!(meta["epoch"], pos.epoch);
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> = redis.query(redis::cmd("XRANGE").arg("herald:{room.{x}}:s").arg("-").arg("+"));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "1-0");
    let fields: Vec<&str> = entries[0].1.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["t", "k", "p"]);
    assert_eq!(entries[0].1[2].1, b"hi");
    for key in ["herald:{room.{x}}:s", "herald:{room.{x}}:m"] {
        let ttl: i64 = redis.query(redis::cmd("PTTL").arg(key));
        assert!(ttl > 0 && ttl <= 60_000, "{key} carries the TTL: {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_page_in_order_and_never_return_more_than_max_read() {
    init_logs();
    let redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    let p = policy(10_000, HOUR);
    let positions = append_many(&a, "h", "m", 2500, &p).await;
    let epoch = positions[0].epoch.clone();
    let page = a.read("h", 0, 5000, &p).await;
    assert_eq!(
        page.head,
        StreamPos {
            offset: 2500,
            epoch: epoch.clone()
        }
    );
    assert_eq!(
        offsets(&page),
        (1..=MAX_READ as u64).collect::<Vec<_>>(),
        "capped at MAX_READ"
    );
    assert!(page.continues(0, &epoch));
    assert_eq!(text(&page.messages[0]), "m-0");
    let page = a.read("h", 1000, 1000, &p).await;
    assert_eq!(offsets(&page), (1001..=2000).collect::<Vec<_>>());
    assert_eq!(text(&page.messages[999]), "m-1999");
    let page = a.read("h", 2400, 50, &p).await;
    assert_eq!(offsets(&page), (2401..=2450).collect::<Vec<_>>());
    assert!(page.continues(2400, &epoch));
    let page = a.read("h", 2500, 10, &p).await;
    assert!(page.messages.is_empty() && page.continues(2500, &epoch), "caught up");
    assert!(
        !a.read("h", 2600, 10, &p).await.continues(2600, &epoch),
        "ahead of the head"
    );
    assert!(!page.continues(2500, "another epoch"));
    let page = a.read("h", 0, 0, &p).await;
    assert!(page.messages.is_empty());
    assert_eq!(page.head.offset, 2500, "a zero limit still reads the head");
    let latest = within(LIMIT, "latest", a.history().latest("h", &p).outcome())
        .await
        .unwrap();
    assert_eq!(offsets(&latest), [2500]);
    assert_eq!(text(&latest.messages[0]), "m-2499");

    // Every payload kind comes back as it went in, with its publish time.
    let kinds = [
        Payload::json(&br#"{"a":[1,2]}"#[..]),
        Payload::binary(&[0u8, 159, 255][..]),
        Payload::text("é"),
    ];
    for (i, payload) in kinds.iter().enumerate() {
        let at = herald_broker::broker::now_micros() - i as u64;
        let pos = position(a.history().append("kinds", payload, at, None, &p)).await;
        let page = a.read("kinds", pos.offset - 1, 1, &p).await;
        assert_eq!(page.messages[0].payload, *payload);
        assert_eq!(page.messages[0].published_at_micros, at);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reading_a_topic_without_a_stream_gives_it_one() {
    init_logs();
    let redis = RedisServer::start();
    let (a, b) = (up(&redis, "node-a").await, up(&redis, "node-b").await);
    let p = policy(100, Duration::from_secs(30));
    let page = a.read("fresh", 0, 10, &p).await;
    assert_eq!(page.head.offset, 0);
    assert!(page.messages.is_empty() && page.continues(0, &page.head.epoch));
    let ttl: i64 = redis.query(redis::cmd("PTTL").arg("herald:{fresh}:m"));
    assert!(ttl > 0 && ttl <= 30_000, "the new stream expires like any: {ttl}");
    assert_eq!(
        b.read("fresh", 0, 10, &p).await.head,
        page.head,
        "every node sees the same"
    );
    let empty = within(LIMIT, "latest", a.history().latest("fresh", &p).outcome())
        .await
        .unwrap();
    assert!(empty.messages.is_empty());
    let pos = position(b.append("fresh", "first", &p)).await;
    assert_eq!(
        pos,
        StreamPos {
            offset: 1,
            epoch: page.head.epoch.clone()
        },
        "the first message of the epoch the reader was given"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trimming_to_a_small_size_is_reported_as_a_loss() {
    init_logs();
    let redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    let p = policy(10, HOUR);
    let positions = append_many(&a, "small", "m", 1000, &p).await;
    let epoch = &positions[0].epoch;
    let len: usize = redis.query(redis::cmd("XLEN").arg("herald:{small}:s"));
    assert!((10..=200).contains(&len), "trimmed approximately to the size: {len}");
    let page = a.read("small", 0, 1000, &p).await;
    let first = page.messages[0].offset;
    assert!(first > 1);
    assert_eq!(*offsets(&page).last().unwrap(), 1000);
    assert_eq!(
        offsets(&page),
        (first..=1000).collect::<Vec<_>>(),
        "what remains, without holes"
    );
    assert!(!page.continues(0, epoch), "offsets 1..{first} were trimmed");
    assert!(!a.read("small", 5, 10, &p).await.continues(5, epoch));
    assert!(a.read("small", first - 1, 10, &p).await.continues(first - 1, epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_stream_reads_empty_with_its_head_and_an_evicted_meta_starts_over() {
    init_logs();
    let redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    let p = policy(1000, HOUR);
    let epoch = append_many(&a, "ev", "m", 20, &p).await[0].epoch.clone();
    // What `maxmemory-policy volatile-*` or `allkeys-*` may do: one key gone.
    let _: i64 = redis.query(redis::cmd("DEL").arg("herald:{ev}:s"));
    let page = a.read("ev", 5, 100, &p).await;
    assert_eq!(
        page.head,
        StreamPos {
            offset: 20,
            epoch: epoch.clone()
        }
    );
    assert!(page.messages.is_empty());
    assert!(!page.continues(5, &epoch), "the stream is gone: a loss");
    assert!(page.continues(20, &epoch), "a reader that had everything lost nothing");
    let latest = within(LIMIT, "latest", a.history().latest("ev", &p).outcome())
        .await
        .unwrap();
    assert!(latest.messages.is_empty() && latest.head.offset == 20);
    let pos = position(a.append("ev", "after", &p)).await;
    assert_eq!(
        pos,
        StreamPos {
            offset: 21,
            epoch: epoch.clone()
        }
    );
    let page = a.read("ev", 20, 10, &p).await;
    assert_eq!(offsets(&page), [21]);
    assert!(!a.read("ev", 10, 10, &p).await.continues(10, &epoch));

    // The meta gone, the stream still there: the next append starts a new stream.
    let _: i64 = redis.query(redis::cmd("DEL").arg("herald:{ev}:m"));
    let pos = position(a.append("ev", "new", &p)).await;
    assert_eq!(pos.offset, 1);
    assert_ne!(pos.epoch, epoch);
    let len: usize = redis.query(redis::cmd("XLEN").arg("herald:{ev}:s"));
    assert_eq!(len, 1, "the old epoch's entries went with it");
    let page = a.read("ev", 0, 10, &p).await;
    assert_eq!(offsets(&page), [1]);
    assert_eq!(text(&page.messages[0]), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushall_and_a_restart_without_persistence_start_a_new_epoch() {
    init_logs();
    let mut redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    let p = policy(1000, HOUR);
    let first = append_many(&a, "h", "m", 5, &p).await;
    assert_eq!(first[4].offset, 5);
    let _: () = redis.query(&mut redis::cmd("FLUSHALL"));
    let after_flush = position(a.append("h", "x", &p)).await;
    assert_eq!(after_flush.offset, 1);
    assert_ne!(after_flush.epoch, first[0].epoch);
    let page = a.read("h", 5, 10, &p).await;
    assert!(!page.continues(5, &first[0].epoch), "a reader of the old epoch is told");

    redis.restart();
    // Until the relay noticed the restart, an append fails (refused, not acknowledged).
    let mut after_restart = None;
    for _ in 0..200 {
        match a.append("h", "y", &p).outcome().await {
            Ok(pos) => {
                after_restart = pos;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let after_restart = after_restart.expect("appends work again after the restart");
    assert_eq!(after_restart.offset, 1);
    assert_ne!(after_restart.epoch, after_flush.epoch);
    assert_ne!(after_restart.epoch, first[0].epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_expire_with_their_ttl_and_old_messages_are_not_read() {
    init_logs();
    let redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    let short = policy(100, Duration::from_millis(400));
    let epoch = append_many(&a, "brief", "m", 3, &short).await[0].epoch.clone();
    for key in ["herald:{brief}:s", "herald:{brief}:m"] {
        let ttl: i64 = redis.query(redis::cmd("PTTL").arg(key));
        assert!(ttl > 0 && ttl <= 400, "{key}: {ttl}");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let exists: i64 = redis.query(redis::cmd("EXISTS").arg("herald:{brief}:s").arg("herald:{brief}:m"));
    assert_eq!(exists, 0, "both keys expired");
    let page = a.read("brief", 3, 10, &short).await;
    assert_eq!(page.head.offset, 0);
    assert_ne!(page.head.epoch, epoch, "an expired stream comes back in a new epoch");
    assert!(!page.continues(3, &epoch));

    // Messages older than the TTL by their publish time are not read, and are trimmed.
    let p = policy(100, Duration::from_secs(5));
    let old = herald_broker::broker::now_micros() - 10_000_000;
    for i in 0..3 {
        position(
            a.history()
                .append("aged", &Payload::text(format!("old-{i}")), old, None, &p),
        )
        .await;
    }
    append_many(&a, "aged", "new", 2, &p).await;
    let page = a.read("aged", 0, 10, &p).await;
    assert_eq!(offsets(&page), [4, 5]);
    assert!(!page.continues(0, &page.head.epoch), "1..3 expired");
    assert!(page.continues(3, &page.head.epoch));
    let len: usize = redis.query(redis::cmd("XLEN").arg("herald:{aged}:s"));
    assert_eq!(len, 2, "expired messages are trimmed from the front");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn noscript_after_a_script_flush_loses_and_reorders_nothing() {
    init_logs();
    let redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    a.join("h");
    wait_until(LIMIT, "subscribed", || redis.numsub("herald:h") == 1).await;
    let p = policy(10_000, HOUR);
    assert_eq!(position(a.append("h", "first", &p)).await.offset, 1);
    let _: () = redis.query(redis::cmd("SCRIPT").arg("FLUSH"));
    let positions = append_many(&a, "h", "m", 500, &p).await;
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        (2..=501).collect::<Vec<_>>(),
        "every append after the flush, in the order accepted"
    );
    let page = a.read("h", 0, 1000, &p).await;
    assert_eq!(offsets(&page), (1..=501).collect::<Vec<_>>());
    // The read script was flushed too, and came back the same way.
    let _: () = redis.query(redis::cmd("SCRIPT").arg("FLUSH"));
    assert_eq!(a.read("h", 500, 10, &p).await.messages.len(), 1);
    wait_until(LIMIT, "delivered", || a.sink.texts("h").len() == 501).await;
    assert_eq!(
        a.sink.positions("h").iter().map(|p| p.offset).collect::<Vec<_>>(),
        (1..=501).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_and_reads_while_redis_is_away_are_refused_never_acknowledged() {
    init_logs();
    let mut redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    let p = policy(100, HOUR);
    position(a.append("h", "before", &p)).await;

    // Hung: the append is queued, then fails when the pipeline times out.
    redis.pause();
    let t = a.append("h", "while paused", &p);
    assert!(matches!(t, Ticket::Pending(_)), "the link has not noticed yet");
    let got = within(LIMIT, "an answer, not a hang", t.outcome()).await;
    assert!(matches!(got, Err(RelayError::Unavailable(_))), "{got:?}");
    redis.resume();
    wait_until(LIMIT, "publish link back", || a.relay.publish_link_up()).await;
    // Redis may still run the paused append from its socket buffer when it resumes (an
    // `Err` is "not acknowledged", not "not stored"; see the crate docs): 2 or 3.
    let after = position(a.append("h", "after pause", &p)).await.offset;
    assert!((2..=3).contains(&after), "{after}");

    // Down: refused at once.
    redis.kill();
    wait_until(LIMIT, "publish link down", || !a.relay.publish_link_up()).await;
    match a.append("h", "while down", &p) {
        Ticket::Done(Err(RelayError::Unavailable(_))) => {}
        Ticket::Done(other) => panic!("expected Unavailable, got {other:?}"),
        Ticket::Pending(_) => panic!("an append while down must fail at once"),
    }
    match a.history().read("h", 0, 10, &p) {
        Ticket::Done(Err(RelayError::Unavailable(_))) => {}
        Ticket::Done(other) => panic!("expected Unavailable, got {other:?}"),
        Ticket::Pending(_) => panic!("a read while down must fail at once"),
    }
}
