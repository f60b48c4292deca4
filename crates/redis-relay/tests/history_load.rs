//! Redis history under pressure, each once a bug found in review: large history reads must
//! not hold up or break the publish connection (they have their own), and an append with
//! an extreme TTL must never be stored without being published.

mod support;

use std::time::{Duration, Instant};

use herald_broker::history::MAX_READ;
use herald_broker::PublishTicket;
use herald_protocol::Payload;
use support::{fast, init_logs, policy, wait_until, within, Node, RedisServer};

const LIMIT: Duration = Duration::from_secs(20);

async fn up(redis: &RedisServer, name: &str) -> Node {
    let n = Node::start(fast(&redis.url(), name));
    wait_until(LIMIT, "relay up", || n.is_up()).await;
    n
}

/// `ttl_ms = 9223372036854775807` (i64::MAX, the largest TOML integer, a natural "keep
/// forever") passes the gateway's validation (only `>= 1000` is checked). The append script
/// then fails at `PEXPIRE` *after* `HINCRBY` and `XADD` ran: Redis scripts do not roll back,
/// so the message is stored with an offset, never PUBLISHed, and answered `Err`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_extreme_ttl_never_stores_a_message_without_publishing_it() {
    init_logs();
    let redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    a.join("h");
    wait_until(LIMIT, "subscribed", || redis.numsub("herald:h") == 1).await;
    let p = policy(100, Duration::from_millis(i64::MAX as u64));
    let mut answers = Vec::new();
    for i in 0..3 {
        let got = within(LIMIT, "append answered", a.append("h", &format!("m{i}"), &p).outcome()).await;
        answers.push(format!("{got:?}"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let xlen: i64 = redis.query(redis::cmd("XLEN").arg("herald:{h}:s"));
    let offset: Option<String> = redis.query(redis::cmd("HGET").arg("herald:{h}:m").arg("offset"));
    let delivered = a.sink.texts("h").len();
    eprintln!("answers: {answers:#?}\nXLEN={xlen} meta offset={offset:?} delivered live={delivered}");
    assert!(
        answers.iter().all(|a| a.starts_with("Ok")) || (xlen == 0 && delivered == 0),
        "an append answered Err must not be stored; got answers {answers:?}, XLEN {xlen}, \
         meta offset {offset:?}, {delivered} delivered live"
    );
}

/// History reads share the publish connection: a publish queued behind a few large reads
/// waits for their replies (head-of-line), and past `command_timeout` (1 s) the pipeline
/// times out, the publish connection is torn down and the publish is answered `Err`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_history_reads_do_not_hold_up_or_break_publishing() {
    init_logs();
    let redis = RedisServer::start();
    let a = up(&redis, "node-a").await;
    let p = policy(1000, Duration::from_secs(3600));
    let big = "x".repeat(16 * 1024);
    // 1000 messages of 60 KiB in topic "big" (under max_payload_bytes = 64 KiB).
    for chunk in 0..10 {
        let tickets: Vec<PublishTicket> = (0..100)
            .map(|i| {
                a.history().append(
                    "big",
                    &Payload::text(format!("{chunk}-{i}-{big}")),
                    herald_broker::broker::now_micros(),
                    None,
                    &p,
                )
            })
            .collect();
        for t in tickets {
            within(LIMIT, "append", t.outcome()).await.expect("append ok");
        }
    }
    // Baseline: a plain publish round trip.
    let t0 = Instant::now();
    within(LIMIT, "publish", a.publish("plain", "before").outcome())
        .await
        .expect("publish ok");
    let baseline = t0.elapsed();
    // 16 concurrent full reads (history_read_concurrency), as after a rolling restart
    // when many clients resubscribe with `since`, or a relink filling many topics.
    let n: usize = 4;
    let reads: Vec<_> = (0..n).map(|_| a.history().read("big", 0, MAX_READ, &p)).collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t1 = Instant::now();
    let appended = a.append("h", "appended during reads", &p);
    let got = within(LIMIT, "publish", a.publish("plain", "during reads").outcome()).await;
    let during = t1.elapsed();
    let appended = within(LIMIT, "append", appended.outcome()).await;
    let mut read_errs = Vec::new();
    for r in reads {
        if let Err(e) = within(LIMIT, "read", r.outcome()).await {
            read_errs.push(e.to_string());
        }
    }
    eprintln!("publish baseline {baseline:?}; during reads {during:?} -> {got:?}; failed reads {read_errs:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored: i64 = redis.query(redis::cmd("XLEN").arg("herald:{h}:s"));
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        wait_until(Duration::from_secs(6), "reconnect", || {
            a.metrics.relay_link_reconnects.with_label_values(&["publish"]).get() > 0
        }),
    )
    .await;
    eprintln!(
        "publish link reconnects: {}",
        a.metrics.relay_link_reconnects.with_label_values(&["publish"]).get()
    );
    eprintln!("append during reads answered {appended:?}; entries in herald:{{h}}:s afterwards: {stored}");
    assert!(
        got.is_ok(),
        "a publish failed because history reads hogged its connection: {got:?}"
    );
    assert!(appended.is_ok(), "an append during reads: {appended:?}");
    assert!(read_errs.is_empty(), "{read_errs:?}");
    assert_eq!(
        a.metrics.relay_link_reconnects.with_label_values(&["publish"]).get(),
        0,
        "reads never replace the publish connection"
    );
    // Redis serves one command at a time: a publish still waits for the reads Redis is
    // busy with (printed above), but it is answered within the command timeout.
    let _ = during;
}
