//! Edges of topic history found in review, each once a real bug: a dead subscription after
//! `recovery_overflow`, offset 0 in a lost epoch, a history publish counted twice, history
//! trimmed or reset while a slow subscriber replays (never a silent gap: the replay goes
//! on, or the subscription ends with `recovery_lost`), and `since` at `u64::MAX`.

mod history_support;

use std::time::Duration;

use herald_gateway::config::HistoryEntry;
use herald_gateway::Config;
use herald_testkit::node::TestNode;
use history_support::*;
use serde_json::{json, Value};

fn entry(c: &mut Config, e: HistoryEntry) {
    c.history.push(e);
    c.limits.publish_per_second = 0;
    c.limits.publish_bytes_per_second = 0;
}

/// Finding: after `recovery_overflow` the subscriber entry keeps its failed gate, so the
/// connection still "holds" the topic; a plain resubscribe (no `since`) is acked but is a
/// no-op, and the subscription stays dead forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_after_overflow_a_plain_resubscribe_is_acked_but_delivers_nothing() {
    let node = TestNode::start_with(|c| {
        entry(
            c,
            HistoryEntry {
                topics: "flood".into(),
                size: 100_000,
                ..Default::default()
            },
        );
        c.outbox.max_frames = 16;
        c.limits.replay_buffer = 50;
    })
    .await
    .unwrap();
    let mut pubr = client(&node, "/ws").await;
    let mut epoch = String::new();
    let pad = "x".repeat(4096);
    for n in 1..=4000u64 {
        send(
            &mut pubr,
            json!({"op":"publish","topic":"flood","data":{"n":n,"pad":pad},"id":n}),
        )
        .await;
        if n.is_multiple_of(200) {
            let (a, _) = until_answer(&mut pubr, n).await;
            epoch = a["epoch"].as_str().unwrap().to_owned();
        }
    }
    let mut sub = client(&node, "/ws").await;
    send(
        &mut sub,
        json!({"op":"subscribe","topics":["flood"],"since":{"flood":{"offset":0,"epoch":epoch}},"id":1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 4001..=4200u64 {
        send(&mut pubr, json!({"op":"publish","topic":"flood","data":{"n":n}})).await;
    }
    node.metric_reaches("herald_history_replays_total{outcome=\"overflow\"}", 1.0)
        .await
        .unwrap();
    // Drain everything up to and after the overflow error.
    let mut saw_overflow = false;
    while let Ok(t) = sub.read_text(Duration::from_millis(500)).await {
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["code"] == "recovery_overflow" {
            saw_overflow = true;
        }
    }
    assert!(saw_overflow);
    // A plain resubscribe: acked...
    send(&mut sub, json!({"op":"subscribe","topics":["flood"],"id":2})).await;
    let (ack, _) = until_answer(&mut sub, 2).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    println!("plain resubscribe ack: {ack}");
    let closed_before = node
        .metric("herald_messages_dropped_total{reason=\"closed\"}")
        .await
        .unwrap();
    // ...then live messages.
    for n in 4201..=4205u64 {
        publish(&mut pubr, "flood", n, 10_000 + n).await;
    }
    let mut live = Vec::new();
    while let Ok(t) = sub.read_text(Duration::from_millis(1000)).await {
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "message" {
            live.push(v["offset"].as_u64().unwrap());
        }
    }
    let closed_after = node
        .metric("herald_messages_dropped_total{reason=\"closed\"}")
        .await
        .unwrap();
    println!("dropped{{closed}} went {closed_before} -> {closed_after} for 5 publishes to a live connection");
    assert_eq!(
        live,
        vec![4201, 4202, 4203, 4204, 4205],
        "live messages after the acked resubscribe"
    );
    node.shutdown().await;
}

/// Finding: `since` with offset 0 in an epoch that is gone says `recovered: true`, although
/// the old epoch's messages were never seen by the client (protocol: another epoch = false).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_offset_zero_in_a_lost_epoch_is_not_recovered() {
    let node = TestNode::start_with(|c| {
        entry(
            c,
            HistoryEntry {
                topics: "e".into(),
                size: 100,
                ttl_ms: 1000,
                ..Default::default()
            },
        );
    })
    .await
    .unwrap();
    // A client that has seen nothing yet remembers the position the ack gives it.
    let mut first = client(&node, "/ws").await;
    send(&mut first, json!({"op":"subscribe","topics":["e"],"id":1})).await;
    let (ack, _) = until_answer(&mut first, 1).await;
    let old_epoch = ack["positions"]["e"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(ack["positions"]["e"]["offset"], 0);
    drop(first); // its connection drops
    let mut pubr = client(&node, "/ws").await;
    for n in 1..=3 {
        let a = publish(&mut pubr, "e", n, n).await;
        assert_eq!(
            a["epoch"],
            old_epoch.as_str(),
            "published in the epoch the client was given"
        );
    }
    // The client stays away longer than the TTL: the stream expires, a new epoch starts.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let a = publish(&mut pubr, "e", 4, 4).await;
    assert_ne!(a["epoch"], old_epoch.as_str(), "a new epoch: {a}");
    let mut again = client(&node, "/ws").await;
    send(
        &mut again,
        json!({"op":"subscribe","topics":["e"],"since":{"e":{"offset":0,"epoch":old_epoch}},"id":2}),
    )
    .await;
    let (ack, _) = until_answer(&mut again, 2).await;
    println!("resubscribe ack: {ack}");
    assert_eq!(
        ack["recovered"]["e"], false,
        "messages 1..3 of the old epoch were never seen by this client and are gone: {ack}"
    );
    node.shutdown().await;
}

/// Finding: a message of a history topic counts twice in herald_messages_published_total
/// on its origin node (once by its source, once as `relay` when the relay hands it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_history_publish_counts_once() {
    let node = TestNode::start_with(|c| {
        entry(
            c,
            HistoryEntry {
                topics: "h".into(),
                size: 100,
                ..Default::default()
            },
        );
    })
    .await
    .unwrap();
    let mut sub = client(&node, "/ws").await;
    send(&mut sub, json!({"op":"subscribe","topics":["h"],"id":1})).await;
    until_answer(&mut sub, 1).await;
    let mut pubr = client(&node, "/ws").await;
    publish(&mut pubr, "h", 1, 1).await;
    let ws = node
        .metric("herald_messages_published_total{source=\"websocket\"}")
        .await
        .unwrap();
    let relay = node
        .metric("herald_messages_published_total{source=\"relay\"}")
        .await
        .unwrap();
    println!("published websocket={ws} relay={relay}");
    assert_eq!((ws, relay), (1.0, 0.0), "one publication on a single node");
    node.shutdown().await;
}

/// Finding: a replay paced by a slow subscriber does not check that each later history
/// page continues the previous one: when history is trimmed meanwhile, the replay jumps
/// over the trimmed offsets (and drops the held live copies of some of them) after the
/// ack said `recovered: true` — a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_history_trimmed_during_a_paced_replay_is_a_silent_gap() {
    let node = TestNode::start_with(|c| {
        entry(
            c,
            HistoryEntry {
                topics: "g".into(),
                size: 2000,
                max_bytes: 0,
                ..Default::default()
            },
        );
        c.outbox.max_frames = 16;
    })
    .await
    .unwrap();
    let mut pubr = client(&node, "/ws").await;
    let mut epoch = String::new();
    let pad = "p".repeat(16 * 1024);
    for n in 1..=2000u64 {
        send(
            &mut pubr,
            json!({"op":"publish","topic":"g","data":{"n":n,"pad":pad},"id":n}),
        )
        .await;
        if n.is_multiple_of(200) {
            let (a, _) = until_answer(&mut pubr, n).await;
            epoch = a["epoch"].as_str().unwrap().to_owned();
        }
    }
    let mut sub = client(&node, "/ws").await;
    send(
        &mut sub,
        json!({"op":"subscribe","topics":["g"],"since":{"g":{"offset":0,"epoch":epoch}},"id":1}),
    )
    .await;
    let (ack, _) = until_answer(&mut sub, 1).await;
    assert_eq!(ack["recovered"]["g"], true, "everything is there: {ack}");
    // The subscriber is slow for a moment; the replay waits for its outbox while 3000
    // live messages arrive (held by the gate, well under replay_buffer) and history
    // trims 1..3000.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 2001..=5000u64 {
        send(&mut pubr, json!({"op":"publish","topic":"g","data":{"n":n},"id":n})).await;
    }
    until_answer(&mut pubr, 5000).await;
    let mut got: Vec<u64> = Vec::new();
    let mut lost_at = None;
    while got.last() != Some(&5000) {
        match sub.read_text(Duration::from_secs(5)).await {
            Ok(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message" {
                    got.push(v["offset"].as_u64().unwrap());
                } else if v["code"] == "recovery_lost" {
                    assert_eq!(v["topic"], "g");
                    lost_at = Some(got.last().copied().unwrap_or(0));
                    break;
                }
            }
            Err(e) => panic!("after {} messages (last {:?}): {e}", got.len(), got.last()),
        }
    }
    let gaps: Vec<(u64, u64)> = got
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(gaps.is_empty(), "recovered: true, yet the replay jumped {gaps:?}");
    if let Some(last) = lost_at {
        // Told, not silent: resubscribing says what the client must know.
        send(
            &mut sub,
            json!({"op":"subscribe","topics":["g"],"since":{"g":{"offset":last,"epoch":epoch}},"id":9}),
        )
        .await;
        let (ack, _) = until_answer(&mut sub, 9).await;
        assert_eq!(ack["recovered"]["g"], false, "{ack}");
    }
    node.shutdown().await;
}

/// Finding: the gate compares offsets only. When the stream's epoch changes during a
/// replay (memory: the stream expired; Redis: restarted without persistence), the replay
/// ends ("lost the stream meanwhile: live from here") and `take_held(last)` drops every
/// held live message of the NEW epoch whose offset is <= the last OLD offset replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_new_epoch_during_a_replay_loses_its_first_messages() {
    let node = TestNode::start_with(|c| {
        entry(
            c,
            HistoryEntry {
                topics: "x".into(),
                size: 100_000,
                ttl_ms: 1000,
                max_bytes: 0,
                ..Default::default()
            },
        );
        c.outbox.max_frames = 16;
    })
    .await
    .unwrap();
    let mut pubr = client(&node, "/ws").await;
    let mut old = String::new();
    let pad = "p".repeat(16 * 1024);
    for n in 1..=1500u64 {
        send(
            &mut pubr,
            json!({"op":"publish","topic":"x","data":{"n":n,"pad":pad},"id":n}),
        )
        .await;
        if n.is_multiple_of(100) {
            let (a, _) = until_answer(&mut pubr, n).await;
            old = a["epoch"].as_str().unwrap().to_owned();
        }
    }
    let mut sub = client(&node, "/ws").await;
    send(
        &mut sub,
        json!({"op":"subscribe","topics":["x"],"since":{"x":{"offset":0,"epoch":old}},"id":1}),
    )
    .await;
    let (_ack, _) = until_answer(&mut sub, 1).await;
    // The subscriber is slow; meanwhile the stream expires and starts over.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut new = String::new();
    for n in 1..=200u64 {
        let a = publish(&mut pubr, "x", n, 100_000 + n).await;
        new = a["epoch"].as_str().unwrap().to_owned();
    }
    assert_ne!(new, old, "a new epoch");
    let mut new_offsets = Vec::new();
    let mut old_last = 0;
    let mut lost = false;
    while let Ok(t) = sub.read_text(Duration::from_millis(1500)).await {
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "message" {
            if v["epoch"] == new.as_str() {
                new_offsets.push(v["offset"].as_u64().unwrap());
            } else {
                let o = v["offset"].as_u64().unwrap();
                // (The ack may have said recovered: false already: the TTL is short.)
                assert!(
                    old_last == 0 || o == old_last + 1,
                    "the old epoch without a gap: {old_last} then {o}"
                );
                old_last = o;
            }
        } else if v["code"] == "recovery_lost" {
            lost = true;
        }
    }
    // Either every new-epoch message came (nothing of the old one was missing), or the
    // subscription ended with recovery_lost; never new-epoch messages silently missing.
    if lost {
        assert!(new_offsets.is_empty() || new_offsets == (1..=200).collect::<Vec<_>>());
        send(
            &mut sub,
            json!({"op":"subscribe","topics":["x"],"since":{"x":{"offset":old_last,"epoch":old}},"id":2}),
        )
        .await;
        let (ack, _) = until_answer(&mut sub, 2).await;
        // (With a 1 s TTL the new stream may itself be gone by now: no replay is asserted.)
        assert_eq!(ack["recovered"]["x"], false, "{ack}");
    } else {
        assert_eq!(
            new_offsets,
            (1..=200).collect::<Vec<_>>(),
            "every live message of the new epoch"
        );
    }
    node.shutdown().await;
}

/// Finding: `since.offset = u64::MAX` overflows `last + 1` in the replay loop's `behind`
/// check when a live message is held (debug builds panic: the replay task dies, the gate
/// never opens; release builds wrap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_since_u64_max_does_not_kill_the_replay() {
    let node = TestNode::start_with(|c| {
        entry(
            c,
            HistoryEntry {
                topics: "m".into(),
                size: 1000,
                ..Default::default()
            },
        );
    })
    .await
    .unwrap();
    let mut pubr = client(&node, "/ws").await;
    let epoch = publish(&mut pubr, "m", 0, 1).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let spam = tokio::spawn(async move {
        let mut n = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            send(&mut pubr, json!({"op":"publish","topic":"m","data":n})).await;
            if n.is_multiple_of(20) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for id in 1..=20u64 {
        let mut sub = client(&node, "/ws").await;
        send(
            &mut sub,
            json!({"op":"subscribe","topics":["m"],"since":{"m":{"offset":u64::MAX,"epoch":epoch}},"id":id}),
        )
        .await;
        let (ack, _) = until_answer(&mut sub, id).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spam.await.unwrap();
    // Every replay ends (none died on an overflowing offset).
    node.metric_reaches("herald_history_replays_total{outcome=\"completed\"}", 20.0)
        .await
        .unwrap();
    node.shutdown().await;
}
