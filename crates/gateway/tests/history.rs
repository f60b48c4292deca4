//! Topic history on one node (memory relay), end to end over real sockets: offsets and
//! epochs on frames and acks, resubscribing with `since` after a drop (replay, then live,
//! no gap and no duplicate, publishes during the replay included), trimmed history and a
//! foreign epoch as `recovered: false`, the latest value on subscribe, and the bounded
//! hold of a replaying subscription (`recovery_overflow`).

mod history_support;

use std::time::Duration;

use herald_gateway::config::HistoryEntry;
use herald_gateway::Config;
use herald_testkit::node::TestNode;
use herald_testkit::wire::WireClient;
use history_support::*;
use serde_json::{json, Value};

fn history(c: &mut Config, topics: &str, size: usize, latest: bool) {
    c.history.push(HistoryEntry {
        topics: topics.into(),
        size,
        latest_on_subscribe: latest,
        ..Default::default()
    });
    c.limits.publish_per_second = 0;
    c.limits.publish_bytes_per_second = 0;
}

async fn messages(c: &mut WireClient, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = match c.read_text(WAIT).await {
            Ok(t) => serde_json::from_str::<Value>(&t).unwrap(),
            Err(e) => panic!("after {} messages ({:?}): {e}", out.len(), out.last()),
        };
        assert_eq!(v["type"], "message", "{v}");
        out.push(v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_epochs_and_positions_on_frames_and_acks() {
    let node = TestNode::start_with(|c| history(c, "h.>", 100, false)).await.unwrap();
    let mut sub = client(&node, "/ws").await;
    send(&mut sub, json!({"op":"subscribe","topics":["h.a","plain"],"id":1})).await;
    let (ack, _) = until_answer(&mut sub, 1).await;
    assert_eq!(ack["type"], "ack");
    let epoch = ack["positions"]["h.a"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(ack["positions"]["h.a"]["offset"], 0, "nothing published yet");
    assert!(ack["positions"].get("plain").is_none(), "no history, no position");
    assert!(ack.get("recovered").is_none(), "no since, no recovered");
    let mut pubr = client(&node, "/ws").await;
    for n in 1..=3 {
        let a = publish(&mut pubr, "h.a", n, 100 + n).await;
        assert_eq!(a["offset"], n);
        assert_eq!(a["epoch"], epoch.as_str());
    }
    let a = publish(&mut pubr, "plain", 9, 200).await;
    assert!(a.get("offset").is_none(), "{a}");
    let got = messages(&mut sub, 4).await;
    assert_eq!(offsets(&got[..3]), vec![1, 2, 3]);
    assert!(got
        .iter()
        .take(3)
        .all(|m| m["epoch"] == epoch.as_str() && m["topic"] == "h.a"));
    assert_eq!(got[3]["topic"], "plain");
    assert!(got[3].get("offset").is_none());
    // The HTTP publish answer carries the position too.
    let (status, body) = herald_testkit::node::http_request(
        node.admin_addr(),
        "POST",
        "/api/publish",
        &[("content-type", "application/json")],
        json!({"topic":"h.a","data":4}).to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["offset"].clone(), v["epoch"].clone()),
        (json!(4), json!(epoch)),
        "{v}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_with_since_replays_what_was_missed_then_live() {
    let node = TestNode::start_with(|c| history(c, "room.*", 10_000, false))
        .await
        .unwrap();
    let mut pubr = client(&node, "/ws").await;
    let mut first = client(&node, "/ws?topics=room.1").await;
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = publish(&mut pubr, "room.1", n, n).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let seen = messages(&mut first, 5).await;
    assert_eq!(offsets(&seen), vec![1, 2, 3, 4, 5]);
    drop(first); // the connection drops; publishing goes on
    for n in 6..=20 {
        publish(&mut pubr, "room.1", n, n).await;
    }
    let mut again = client(&node, "/ws").await;
    send(
        &mut again,
        json!({"op":"subscribe","topics":["room.1"],"since":{"room.1":{"offset":5,"epoch":epoch}},"id":7}),
    )
    .await;
    // Publishes racing the replay: none lost, none twice, in order.
    let racer = tokio::spawn(async move {
        for n in 21..=40 {
            publish(&mut pubr, "room.1", n, n).await;
        }
        pubr
    });
    let (ack, before) = until_answer(&mut again, 7).await;
    assert!(before.is_empty(), "the ack comes first: {before:?}");
    assert_eq!(ack["recovered"]["room.1"], true, "{ack}");
    let got = messages(&mut again, 35).await;
    assert_eq!(offsets(&got), (6..=40).collect::<Vec<_>>());
    assert_eq!(got[0]["data"]["n"], 6);
    let mut pubr = racer.await.unwrap();
    publish(&mut pubr, "room.1", 41, 41).await;
    assert_eq!(offsets(&messages(&mut again, 1).await), vec![41]);
    node.metric_reaches("herald_history_replays_total{outcome=\"completed\"}", 1.0)
        .await
        .unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_races_a_steady_publisher_without_gap_or_duplicate() {
    let node = TestNode::start_with(|c| {
        history(c, "big", 20_000, false);
        // A small outbox: the replay must be paced by it, not queued whole.
        c.outbox.max_frames = 256;
    })
    .await
    .unwrap();
    let mut pubr = client(&node, "/ws").await;
    let mut epoch = String::new();
    for n in 1..=3000u64 {
        send(&mut pubr, json!({"op":"publish","topic":"big","data":n,"id":n})).await;
        if n.is_multiple_of(500) {
            let (a, _) = until_answer(&mut pubr, n).await;
            epoch = a["epoch"].as_str().unwrap().to_owned();
        }
    }
    let mut sub = client(&node, "/ws").await;
    send(
        &mut sub,
        json!({"op":"subscribe","topics":["big"],"since":{"big":{"offset":0,"epoch":epoch}},"id":1}),
    )
    .await;
    let racer = tokio::spawn(async move {
        for n in 3001..=4000u64 {
            send(&mut pubr, json!({"op":"publish","topic":"big","data":n})).await;
            if n.is_multiple_of(50) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        pubr
    });
    let (ack, _) = until_answer(&mut sub, 1).await;
    assert_eq!(ack["recovered"]["big"], true, "{ack}");
    let got = messages(&mut sub, 4000).await;
    assert_eq!(offsets(&got), (1..=4000).collect::<Vec<_>>());
    racer.await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_and_another_epoch_say_not_recovered() {
    let node = TestNode::start_with(|c| history(c, "t.*", 5, false)).await.unwrap();
    let mut pubr = client(&node, "/ws").await;
    let mut epoch = String::new();
    for n in 1..=12 {
        epoch = publish(&mut pubr, "t.a", n, n).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let mut sub = client(&node, "/ws").await;
    send(
        &mut sub,
        json!({"op":"subscribe","topics":["t.a"],"since":{"t.a":{"offset":2,"epoch":epoch}},"id":1}),
    )
    .await;
    let (ack, _) = until_answer(&mut sub, 1).await;
    assert_eq!(ack["recovered"]["t.a"], false, "3..7 were trimmed: {ack}");
    assert_eq!(
        offsets(&messages(&mut sub, 5).await),
        vec![8, 9, 10, 11, 12],
        "what remains"
    );
    // Up to date: recovered, nothing replayed.
    let mut sub2 = client(&node, "/ws").await;
    send(
        &mut sub2,
        json!({"op":"subscribe","topics":["t.a"],"since":{"t.a":{"offset":12,"epoch":epoch}},"id":2}),
    )
    .await;
    assert_eq!(until_answer(&mut sub2, 2).await.0["recovered"]["t.a"], true);
    // Another epoch (a restarted node, say): everything the stream holds, not recovered.
    let mut sub3 = client(&node, "/ws").await;
    send(
        &mut sub3,
        json!({"op":"subscribe","topics":["t.a"],"since":{"t.a":{"offset":11,"epoch":"gone"}},"id":3}),
    )
    .await;
    assert_eq!(until_answer(&mut sub3, 3).await.0["recovered"]["t.a"], false);
    assert_eq!(offsets(&messages(&mut sub3, 5).await), vec![8, 9, 10, 11, 12]);
    publish(&mut pubr, "t.a", 13, 13).await;
    for s in [&mut sub, &mut sub2, &mut sub3] {
        assert_eq!(offsets(&messages(s, 1).await), vec![13], "then live");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_value_on_subscribe() {
    let node = TestNode::start_with(|c| history(c, "price.*", 10, true)).await.unwrap();
    let mut pubr = client(&node, "/ws").await;
    for n in 1..=3 {
        publish(&mut pubr, "price.eur", n, n).await;
    }
    let mut op = client(&node, "/ws").await;
    send(&mut op, json!({"op":"subscribe","topics":["price.eur"],"id":1})).await;
    let (ack, _) = until_answer(&mut op, 1).await;
    assert_eq!(ack["positions"]["price.eur"]["offset"], 3);
    let m = messages(&mut op, 1).await;
    assert_eq!(
        (m[0]["offset"].clone(), m[0]["data"]["n"].clone()),
        (json!(3), json!(3))
    );
    // At connect (`?topics=`), after the welcome.
    let mut q = client(&node, "/ws?topics=price.eur").await;
    assert_eq!(offsets(&messages(&mut q, 1).await), vec![3]);
    publish(&mut pubr, "price.eur", 4, 4).await;
    assert_eq!(offsets(&messages(&mut op, 1).await), vec![4]);
    assert_eq!(offsets(&messages(&mut q, 1).await), vec![4]);
    // A topic without messages yet: nothing to send.
    let mut e = client(&node, "/ws").await;
    send(&mut e, json!({"op":"subscribe","topics":["price.usd"],"id":2})).await;
    assert_eq!(until_answer(&mut e, 2).await.0["positions"]["price.usd"]["offset"], 0);
    publish(&mut pubr, "price.usd", 1, 5).await;
    assert_eq!(offsets(&messages(&mut e, 1).await), vec![1]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_falls_behind_live_ends_with_recovery_overflow() {
    let node = TestNode::start_with(|c| {
        history(c, "flood", 100_000, false);
        c.outbox.max_frames = 16;
        c.limits.replay_buffer = 50;
    })
    .await
    .unwrap();
    let mut pubr = client(&node, "/ws").await;
    let mut epoch = String::new();
    // 16 MB of history: more than the sockets between node and client can buffer.
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
    // The subscriber asks for everything and then reads nothing for a while: the replay
    // waits for its outbox, live messages pile up in the hold.
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
    let mut last = 0;
    let mut overflow = None;
    for _ in 0..1000 {
        let v = json_frame(&mut sub).await;
        match v["type"].as_str() {
            Some("message") => {
                let o = v["offset"].as_u64().unwrap();
                assert_eq!(o, last + 1, "no gap before the end");
                last = o;
            }
            Some("error") if v["code"] == "recovery_overflow" => {
                overflow = Some(v);
                break;
            }
            _ => {}
        }
    }
    let overflow = overflow.expect("the subscription ended with recovery_overflow");
    assert_eq!(overflow["topic"], "flood");
    // Resubscribing from the last offset received continues without a gap.
    send(
        &mut sub,
        json!({"op":"subscribe","topics":["flood"],"since":{"flood":{"offset":last,"epoch":epoch}},"id":2}),
    )
    .await;
    let mut next = last + 1;
    loop {
        let v = json_frame(&mut sub).await;
        if v["type"] == "message" {
            let o = v["offset"].as_u64().unwrap();
            if o < next {
                continue; // sent before the overflow was noticed; the client dedupes by offset
            }
            assert_eq!(o, next);
            next += 1;
            if next > 4200 {
                break;
            }
        }
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_api_pages_oldest_first() {
    let node = TestNode::start_with(|c| history(c, "log.*", 50, false)).await.unwrap();
    let mut pubr = client(&node, "/ws").await;
    for n in 1..=60 {
        publish(&mut pubr, "log.a", n, n).await;
    }
    let get = |path: String| {
        let addr = node.admin_addr();
        async move {
            let (status, body) = herald_testkit::node::http_request(addr, "GET", &path, &[], b"")
                .await
                .unwrap();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    // 1..10 were trimmed (size 50): not complete from 0.
    let (s, p) = get("/api/topics/log.a/history?limit=20".into()).await;
    assert_eq!(s, 200);
    assert_eq!(
        (p["offset"].clone(), p["complete"].clone(), p["more"].clone()),
        (json!(60), json!(false), json!(true))
    );
    assert_eq!(
        offsets(p["messages"].as_array().unwrap()),
        (11..=30).collect::<Vec<_>>()
    );
    assert_eq!(p["messages"][0]["data"]["n"], 11);
    let (_, p2) = get("/api/topics/log.a/history?since=30&limit=20".into()).await;
    assert_eq!(p2["complete"], true);
    assert_eq!(
        offsets(p2["messages"].as_array().unwrap()),
        (31..=50).collect::<Vec<_>>()
    );
    let (_, p3) = get("/api/topics/log.a/history?since=50&limit=20".into()).await;
    assert_eq!(
        (p3["more"].clone(), p3["messages"].as_array().unwrap().len()),
        (json!(false), 10)
    );
    let (_, t) = get("/api/topics/log.a".into()).await;
    assert_eq!(
        (t["offset"].clone(), t["epoch"].clone()),
        (json!(60), p["epoch"].clone())
    );
    assert_eq!(get("/api/topics/other/history".into()).await.0, 404);
    assert_eq!(get("/api/topics/log.a/history?since=x".into()).await.0, 400);
    assert_eq!(get("/api/topics/log.a/history?limit=1001".into()).await.0, 400);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_obeys_the_subscribe_permissions() {
    let node = TestNode::start_with(|c| {
        history(c, ">", 100, true);
        c.auth.jwt_hs256_secret = "history-permissions-test-secret-0123456789".into();
        c.auth.anonymous_subscribe = vec!["public.>".into()];
        c.auth.anonymous_publish = vec![">".into()];
    })
    .await
    .unwrap();
    let mut pubr = client(&node, "/ws").await;
    let epoch = publish(&mut pubr, "secret.a", 1, 1).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    publish(&mut pubr, "public.a", 1, 2).await;
    let mut c = client(&node, "/ws").await;
    send(
        &mut c,
        json!({"op":"subscribe","topics":["secret.a"],"since":{"secret.a":{"offset":0,"epoch":epoch}},"id":1}),
    )
    .await;
    let (err, msgs) = until_answer(&mut c, 1).await;
    assert_eq!(err["code"], "forbidden", "{err}");
    assert!(msgs.is_empty());
    // Neither the replay nor the latest value leaks: only the allowed topic's comes.
    send(&mut c, json!({"op":"subscribe","topics":["public.a"],"id":2})).await;
    let (ack, _) = until_answer(&mut c, 2).await;
    assert_eq!(ack["type"], "ack");
    let m = messages(&mut c, 1).await;
    assert_eq!(m[0]["topic"], "public.a");
    assert!(
        c.read_text(Duration::from_millis(300)).await.is_err(),
        "nothing else arrives"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_stops_a_running_replay() {
    let node = TestNode::start_with(|c| {
        history(c, "u", 100_000, false);
        c.outbox.max_frames = 16;
    })
    .await
    .unwrap();
    let mut pubr = client(&node, "/ws").await;
    let pad = "y".repeat(4096);
    let mut epoch = String::new();
    for n in 1..=3000u64 {
        send(
            &mut pubr,
            json!({"op":"publish","topic":"u","data":{"n":n,"pad":pad},"id":n}),
        )
        .await;
        if n.is_multiple_of(300) {
            epoch = until_answer(&mut pubr, n).await.0["epoch"].as_str().unwrap().to_owned();
        }
    }
    let mut sub = client(&node, "/ws").await;
    send(
        &mut sub,
        json!({"op":"subscribe","topics":["u"],"since":{"u":{"offset":0,"epoch":epoch}},"id":1}),
    )
    .await;
    send(&mut sub, json!({"op":"unsubscribe","topics":["u"],"id":2})).await;
    // Whatever was queued before the unsubscribe may still come; the rest of the 12 MB
    // replay must not.
    let mut after_ack = 0;
    let mut acked = false;
    while let Ok(t) = sub.read_text(Duration::from_millis(500)).await {
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["id"] == 2 {
            acked = true;
        } else if acked && v["type"] == "message" {
            after_ack += 1;
        }
    }
    assert!(acked);
    assert!(
        after_ack < 100,
        "{after_ack} replayed messages after the unsubscribe ack"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_on_history_topics_echo_and_latest() {
    use herald_client::{RawClient, RawFrame};
    let node = TestNode::start_with(|c| history(c, "r.*", 10, true)).await.unwrap();
    let mut quiet = RawClient::connect(&node.url("/raw/r.a?echo=false")).await.unwrap();
    let mut other = RawClient::connect(&node.url("/raw/r.a")).await.unwrap();
    quiet.send_text("one").await.unwrap();
    assert_eq!(other.next_timeout(WAIT).await.unwrap(), RawFrame::Text("one".into()));
    assert!(
        quiet.next_timeout(Duration::from_millis(300)).await.is_err(),
        "echo=false holds for history topics (delivered from the stream)"
    );
    // A new raw subscriber gets the latest value at once.
    let mut late = RawClient::connect(&node.url("/raw/r.a")).await.unwrap();
    assert_eq!(late.next_timeout(WAIT).await.unwrap(), RawFrame::Text("one".into()));
    // And JSON subscribers see the raw publish with its offset.
    let mut j = client(&node, "/ws").await;
    send(&mut j, json!({"op":"subscribe","topics":["r.a"],"id":1})).await;
    until_answer(&mut j, 1).await;
    let m = messages(&mut j, 1).await;
    assert_eq!((m[0]["offset"].clone(), m[0]["data"].clone()), (json!(1), json!("one")));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_resubscribe_publish_and_ping_answer_in_order_and_replay_once() {
    let node = TestNode::start_with(|c| history(c, "p.*", 1000, false)).await.unwrap();
    let mut pubr = client(&node, "/ws").await;
    let mut epoch = String::new();
    for n in 1..=50 {
        epoch = publish(&mut pubr, "p.a", n, n).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    // One write: a resubscribe with since, a publish to the same topic, a ping.
    let mut c = client(&node, "/ws").await;
    let batch = [
        json!({"op":"subscribe","topics":["p.a"],"since":{"p.a":{"offset":20,"epoch":epoch}},"id":1}),
        json!({"op":"publish","topic":"p.a","data":{"n":51},"id":2}),
        json!({"op":"ping","id":3}),
    ];
    for v in &batch {
        c.send_text(&v.to_string()).await.unwrap();
    }
    let mut answers = Vec::new();
    let mut got = Vec::new();
    while got.len() < 31 || answers.len() < 3 {
        let v = json_frame(&mut c).await;
        match v["type"].as_str() {
            Some("message") => {
                assert!(!answers.is_empty(), "a replayed message before the subscribe ack: {v}");
                got.push(v["offset"].as_u64().unwrap());
            }
            _ => answers.push(v),
        }
    }
    assert_eq!(
        answers.iter().map(|a| a["id"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{answers:?}"
    );
    assert_eq!(answers[0]["recovered"]["p.a"], true);
    assert_eq!(answers[1]["offset"], 51, "the pipelined publish got the next offset");
    assert_eq!(
        got,
        (21..=51).collect::<Vec<_>>(),
        "the replay, then its own publish, once"
    );
    assert!(c.read_text(Duration::from_millis(300)).await.is_err(), "nothing twice");
    node.shutdown().await;
}
