//! Recovery mode (`--drop-every`) against real nodes started in this process: subscribers
//! drop their connections on a schedule, resubscribe with `since`, and the report proves
//! (by offset) that nothing was lost, duplicated or reordered.

use std::time::Duration;

use herald_gateway::config::HistoryEntry;
use herald_loadtest::{run, Config, Report};
use herald_testkit::node::TestNode;

/// A node whose `lt.>` topics (the generator's default prefix) keep history.
async fn history_node() -> TestNode {
    TestNode::start_with(|c| {
        c.history = vec![HistoryEntry {
            topics: "lt.>".into(),
            size: 100_000,
            ttl_ms: 600_000,
            ..Default::default()
        }];
    })
    .await
    .unwrap()
}

/// Everything came back: by offset (each pair got H − P distinct offsets, once, in order)
/// and by the payloads' own sequence numbers.
fn assert_recovered(r: &Report, pairs: u64, owed_per_pair_sum: u64) {
    let rc = r.recovery.as_ref().expect("a recovery section");
    assert!(rc.drops > 0, "subscribers were dropped: {rc:?}");
    assert_eq!(rc.reconnects, rc.drops, "every drop came back");
    assert!(rc.reconnect_failures.is_empty(), "{:?}", rc.reconnect_failures);
    assert_eq!((rc.pairs, rc.complete_pairs), (pairs, pairs));
    assert!(rc.heads_known, "{:?}", rc.head_probe_error);
    assert_eq!(
        rc.owed, owed_per_pair_sum,
        "owed = published per topic × its subscribers"
    );
    assert_eq!((rc.received, rc.missing, rc.behind_head), (rc.owed, 0, 0));
    assert_eq!((rc.duplicates, rc.out_of_order), (0, 0));
    assert_eq!(
        (rc.not_recovered, rc.overflows, rc.no_history, rc.epoch_changes),
        (0, 0, 0, 0)
    );
    assert_eq!(rc.completeness, 1.0);
    let replay = rc.replay_us.expect("replay latency measured");
    assert!(replay.samples > 0 && replay.p50 <= replay.p99 && replay.p99 <= replay.max);
    let m = r.messages.as_ref().unwrap();
    assert_eq!((m.lost, m.duplicates, m.out_of_order, m.foreign), (0, 0, 0, 0));
    assert_eq!(m.received, m.expected);
    assert!(r.connections.ended_early.is_empty(), "{:?}", r.connections.ended_early);
    assert!(r.passed());
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["recovery"]["missing"], 0);
    assert_eq!(json["recovery"]["drops"], rc.drops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_subscribers_get_every_message_once() {
    let node = history_node().await;
    let url = node.url("/ws");
    let cfg = config(&[
        "fanout",
        "--url",
        &url,
        "-s",
        "20",
        "-r",
        "500",
        "-d",
        "3s",
        "--settle",
        "100ms",
        "--drop-every",
        "400ms",
        "--away",
        "50ms",
    ]);
    let r = run_ok(cfg).await;
    let published = r.messages.as_ref().unwrap().published;
    assert!(published > 1000, "{published}");
    assert_recovered(&r, 20, published * 20);
    // 20 subscribers, each connection living 320-480 ms, over 3 s: about 7 drops each.
    let rc = r.recovery.as_ref().unwrap();
    assert!((80..=200).contains(&rc.drops), "{}", rc.drops);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_topics_per_subscriber_resubscribe_with_since_for_each() {
    let node = history_node().await;
    let url = node.url("/ws");
    let cfg = config(&[
        "many-topics",
        "--url",
        &url,
        "-s",
        "12",
        "-p",
        "2",
        "-t",
        "4",
        "--topics-per-subscriber",
        "2",
        "-r",
        "400",
        "-d",
        "2s",
        "--settle",
        "100ms",
        "--drop-every",
        "300ms",
        "--away",
        "0s",
    ]);
    let r = run_ok(cfg).await;
    let m = r.messages.as_ref().unwrap();
    // Offsets owed add up to the stamp-based expectation: Σ published × subscribers.
    assert_recovered(&r, 24, m.expected);
    node.shutdown().await;
}

fn config(args: &[&str]) -> Config {
    let mut argv = vec!["herald-loadtest"];
    argv.extend_from_slice(args);
    argv.push("--quiet");
    Config::from_args(argv).expect("valid arguments")
}

async fn run_ok(cfg: Config) -> Report {
    let report = tokio::time::timeout(Duration::from_secs(60), run(cfg, Default::default()))
        .await
        .expect("the run stops by itself")
        .expect("the run succeeds");
    eprintln!("{}", report.render());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_without_history_are_reported_not_waited_for() {
    let node = TestNode::start().await.unwrap();
    let url = node.url("/ws");
    let cfg = config(&[
        "fanout",
        "--url",
        &url,
        "-s",
        "3",
        "-r",
        "100",
        "-d",
        "500ms",
        "--settle",
        "0s",
        "--drain",
        "200ms",
        "--drop-every",
        "200ms",
    ]);
    let r = run_ok(cfg).await;
    let rc = r.recovery.as_ref().expect("a recovery section");
    assert_eq!(rc.no_history, 3, "{rc:?}");
    assert_eq!(rc.drops, 0);
    assert!(!r.passed());
    assert!(
        r.warnings.iter().any(|w| w.contains("has no history")),
        "{:?}",
        r.warnings
    );
    assert!(r.render().contains("no history 3"));
    node.shutdown().await;
}
