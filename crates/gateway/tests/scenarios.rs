//! The classic real-time scenarios, end to end over TCP with our Rust client
//! (`herald-client`) and an independent one (tokio-tungstenite): raw echo, a chat room, a
//! backend-driven ticker, per-publisher ordering, slow consumers, and a clean stop.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald_client::{Client, RawClient, RawFrame};
use herald_testkit::node::TestNode;
use herald_testkit::wire::WireClient;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as TMessage;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_echo_round_trip() {
    let node = TestNode::start().await.unwrap();
    let mut c = RawClient::connect(&node.url("/raw/echo-1")).await.unwrap();
    c.send_text("hello").await.unwrap();
    assert_eq!(c.next_timeout(WAIT).await.unwrap(), RawFrame::Text("hello".into()));
    c.send_binary(vec![0u8, 1, 2, 255]).await.unwrap();
    assert_eq!(c.next_timeout(WAIT).await.unwrap().as_bytes(), &[0u8, 1, 2, 255]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_room_everyone_gets_every_message_including_their_own() {
    let node = TestNode::start().await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = Client::connect(&node.url("/ws")).await.unwrap();
        c.subscribe(&["room"]).await.unwrap();
        clients.push(c);
    }
    for (i, c) in clients.iter().enumerate() {
        c.publish("room", &json!({"from": i, "text": format!("hi from {i}")}))
            .await
            .unwrap();
    }
    for c in clients.iter_mut() {
        let mut from = Vec::new();
        for _ in 0..3 {
            let m = c.next_message_timeout(WAIT).await.unwrap();
            assert_eq!(m.topic, "room");
            let v: serde_json::Value = m.json().unwrap();
            from.push(v["from"].as_u64().unwrap());
        }
        assert_eq!(from, vec![0, 1, 2], "publish order, own message included");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticker_driven_by_a_backend_arrives_in_order() {
    let node = TestNode::start().await.unwrap();
    let mut sub = Client::connect(&node.url("/ws?topics=ticker")).await.unwrap();
    let backend = Client::connect(&node.url("/ws")).await.unwrap();
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for seq in 0..10u32 {
            tick.tick().await;
            backend
                .publish("ticker", &json!({"seq": seq, "price": 100 + seq}))
                .await
                .unwrap();
        }
    });
    for seq in 0..10u64 {
        let m = sub.next_message_timeout(WAIT).await.unwrap();
        let v: serde_json::Value = m.json().unwrap();
        assert_eq!(v["seq"].as_u64(), Some(seq));
    }
    publisher.await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_secs(3),
        "paced by the publisher: {took:?}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publishers_messages_arrive_in_order_at_every_subscriber() {
    // Order is the point, not the drop policy: room for the whole run in every outbox.
    let node = TestNode::start_with(|c| c.outbox.max_frames = 10_000).await.unwrap();
    let mut subs = Vec::new();
    for i in 0..4 {
        // Two JSON subscribers and two raw ones.
        if i % 2 == 0 {
            subs.push(Err(Client::connect(&node.url("/ws?topics=seq")).await.unwrap()));
        } else {
            subs.push(Ok(RawClient::connect(&node.url("/raw/seq")).await.unwrap()));
        }
    }
    let publisher = Client::connect(&node.url("/ws")).await.unwrap();
    // Paced in bursts: the point is order, not the drop policy (an unpaced flood may pass a
    // subscriber's outbox bound, and then drops are the documented behaviour).
    const N: u64 = 2000;
    for i in 0..N {
        publisher.publish_nowait("seq", &i.to_string()).await.unwrap();
        if i % 200 == 199 {
            publisher.ping().await.unwrap();
        }
    }
    publisher.ping().await.unwrap();
    for s in subs.iter_mut() {
        for i in 0..N {
            let got: u64 = match s {
                Err(c) => c.next_message_timeout(WAIT).await.unwrap().data_json().parse().unwrap(),
                Ok(r) => match r.next_timeout(WAIT).await.unwrap() {
                    RawFrame::Text(t) => t.parse().unwrap(),
                    other => panic!("unexpected {other:?}"),
                },
            };
            assert_eq!(got, i);
        }
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_client_tokio_tungstenite() {
    let node = TestNode::start().await.unwrap();
    let (mut a, _) = tokio_tungstenite::connect_async(node.url("/ws")).await.unwrap();
    let welcome = a.next().await.unwrap().unwrap();
    let w: serde_json::Value = serde_json::from_str(welcome.to_text().unwrap()).unwrap();
    assert_eq!(w["type"], "welcome");
    assert!(w["node"].as_str().is_some() && w["connection"].as_str().is_some());
    a.send(TMessage::text(r#"{"op":"subscribe","topics":["tt"],"id":"s1"}"#))
        .await
        .unwrap();
    let ack: serde_json::Value = serde_json::from_str(a.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(ack, json!({"type":"ack","id":"s1"}));
    // A raw tungstenite client publishes binary; the JSON subscriber gets base64.
    let (mut r, _) = tokio_tungstenite::connect_async(node.url("/raw/tt?echo=false"))
        .await
        .unwrap();
    r.send(TMessage::binary(vec![1u8, 2, 3])).await.unwrap();
    let m: serde_json::Value = serde_json::from_str(a.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(
        m,
        json!({"type":"message","topic":"tt","data":"AQID","encoding":"base64"})
    );
    // Ping/pong at the WebSocket level, and a clean close handshake.
    a.send(TMessage::Ping(b"hb".to_vec().into())).await.unwrap();
    match a.next().await.unwrap().unwrap() {
        TMessage::Pong(p) => assert_eq!(&p[..], b"hb"),
        other => panic!("unexpected {other:?}"),
    }
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = a.next().await {}
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_never_slows_the_publisher_or_others() {
    // 20,000 publishes as fast as one connection can: past the default publish rate limits.
    let node = TestNode::start_with(|c| {
        c.limits.publish_per_second = 0;
        c.limits.publish_bytes_per_second = 0;
    })
    .await
    .unwrap();
    let limits = node.node.state().config.outbox_limits();
    // The stalled client subscribes and then never reads again.
    let mut stalled = WireClient::connect(node.ws_addr(), "/ws?topics=flood").await.unwrap();
    let _ = stalled.read_text(WAIT).await.unwrap();
    let mut healthy = Client::connect(&node.url("/ws?topics=flood")).await.unwrap();
    let publisher = Client::connect(&node.url("/ws")).await.unwrap();
    let payload = format!("\"{}\"", "x".repeat(1000));
    const N: usize = 20_000;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = received.clone();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            healthy.next_message_timeout(WAIT).await.unwrap();
            n += 1;
            seen.store(n, std::sync::atomic::Ordering::Relaxed);
        }
        n
    });
    let started = Instant::now();
    // Bursts of 500 with a round trip between them: a healthy reader keeps up, the stalled
    // one falls behind by the whole flood.
    for burst in 0..N / 500 {
        for _ in 0..500 {
            publisher.publish_nowait("flood", &payload).await.unwrap();
        }
        publisher.ping().await.unwrap_or_else(|e| panic!("burst {burst}: {e}"));
        // A healthy reader keeps up: wait until it is within one burst, however slow this
        // machine is, so only the stalled subscriber's outbox can overflow.
        let sent = (burst + 1) * 500;
        let deadline = Instant::now() + WAIT;
        while received.load(std::sync::atomic::Ordering::Relaxed) + 500 < sent {
            assert!(Instant::now() < deadline, "healthy subscriber stuck at burst {burst}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let publish_time = started.elapsed();
    assert_eq!(reader.await.unwrap(), N, "the healthy subscriber got everything");
    assert!(
        publish_time < Duration::from_secs(20),
        "publisher was not held up: {publish_time:?}"
    );
    let dropped = node
        .metric(r#"herald_messages_dropped_total{reason="slow_consumer"}"#)
        .await
        .unwrap();
    assert!(dropped > 0.0, "drops were counted");
    // The node keeps the stalled connection's queue bounded.
    let info = node
        .node
        .state()
        .connections
        .outboxes()
        .iter()
        .map(|o| o.queued())
        .max_by_key(|q| q.1)
        .unwrap();
    assert!(
        info.0 <= limits.max_frames && info.1 <= limits.max_bytes + 2000,
        "bounded: {info:?}"
    );
    drop(stalled);
    node.shutdown().await;
}

/// A big binary message numbered `i`: its index, then bytes that depend on it and on their
/// position, so a frame cut, shifted or spliced with another is caught.
fn numbered(i: u32, len: usize) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.extend((4..len).map(|k| (k as u32).wrapping_mul(31).wrapping_add(i) as u8));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_big_frame_whole_and_in_order() {
    // Messages far larger than the socket buffers, to a reader that pauses: direct sends to
    // an idle connection get cut short by a full socket and its writer must finish each
    // frame before anything else (ADR 003).
    const LEN: usize = 200 * 1024;
    const N: u32 = 60;
    let node = TestNode::start_with(|c| {
        c.limits.max_message_bytes = 256 * 1024;
        c.outbox.max_bytes = 64 << 20;
        // 12 MB in about a second: over the default byte rate, which would drop some.
        c.limits.publish_bytes_per_second = 0;
    })
    .await
    .unwrap();
    let mut sub = WireClient::connect(node.ws_addr(), "/raw/big").await.unwrap();
    let publisher = RawClient::connect(&node.url("/raw/big?echo=false")).await.unwrap();
    let sending = tokio::spawn(async move {
        for i in 0..N {
            publisher.send_binary(numbered(i, LEN)).await.unwrap();
            // Spaced, so the subscriber's writer goes idle between messages now and then.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        publisher
    });
    for i in 0..N {
        if i < 20 {
            // Slow at first: the socket fills up behind the reader.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let f = sub.read_frame(WAIT).await.unwrap();
        assert_eq!((f.fin, f.opcode), (true, 2), "message {i}");
        assert_eq!(f.payload.len(), LEN, "message {i}");
        assert!(f.payload == numbered(i, LEN), "message {i} arrived whole and in order");
    }
    let publisher = sending.await.unwrap();
    // Counters are flushed a moment after the write; never more than once per frame.
    let deadline = Instant::now() + WAIT;
    loop {
        let sent = node.metric(r#"herald_frames_sent_total{kind="binary"}"#).await.unwrap();
        assert!(sent <= f64::from(N), "counted twice: {sent}");
        if sent == f64::from(N) {
            break;
        }
        assert!(Instant::now() < deadline, "only {sent} of {N} frames counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(publisher);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_closes_a_slow_consumer_with_1013() {
    let node = TestNode::start_with(|c| {
        c.outbox.max_frames = 16;
        c.outbox.slow_consumer = "disconnect".into();
    })
    .await
    .unwrap();
    // A live but slow client: it keeps reading, pausing 1 ms every 10 frames.
    let mut slow = WireClient::connect(node.ws_addr(), "/ws?topics=firehose")
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let f = slow
                .read_frame(Duration::from_secs(20))
                .await
                .expect("a close frame, not a cut socket");
            if f.opcode == 8 {
                return f.close().unwrap();
            }
            n += 1;
            if n.is_multiple_of(10) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let publisher = Client::connect(&node.url("/ws")).await.unwrap();
    let payload = format!("\"{}\"", "y".repeat(4000));
    for _ in 0..20_000 {
        if reader.is_finished() || publisher.publish_nowait("firehose", &payload).await.is_err() {
            break;
        }
    }
    let (code, reason) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("slow consumer"), "{reason}");
    let mut counted = 0.0;
    for _ in 0..100 {
        counted = node
            .metric(r#"herald_connections_closed_total{reason="slow_consumer"}"#)
            .await
            .unwrap();
        if counted >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, 1.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_with_1001_and_leaves_no_task() {
    let node = TestNode::start().await.unwrap();
    let mut a = Client::connect(&node.url("/ws?topics=x")).await.unwrap();
    let mut r = WireClient::connect(node.ws_addr(), "/raw/x").await.unwrap();
    let state = node.node.state().clone();
    tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .expect("stops within the grace period");
    assert_eq!(r.expect_close(WAIT).await.unwrap().0, 1001);
    let info = a.closed().await;
    assert_eq!(info.code, 1001, "{info:?}");
    while a.next_event_timeout(Duration::from_millis(100)).await.is_ok() {}
    assert!(
        state.sessions.is_empty() && state.tasks.is_empty(),
        "no task left behind"
    );
    assert_eq!(state.connections.len(), 0);
}
