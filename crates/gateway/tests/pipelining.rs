//! Clients that pipeline: many requests in one write, answers read as they come. Every
//! answer arrives, in request order; the reader is paused (backpressure) rather than the
//! client being closed; only a client whose socket stops taking bytes is dropped.

use std::time::Duration;

use herald_protocol::ws_frame::masked_client_frame;
use herald_testkit::node::TestNode;
use herald_testkit::wire::WireClient;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;

const WAIT: Duration = Duration::from_secs(10);

/// Reads server frames (unmasked) off a raw half: text payloads, or the close code.
struct FrameReader {
    buf: Vec<u8>,
    half: OwnedReadHalf,
}

enum Got {
    Text(String),
    Close(u16),
}

impl FrameReader {
    async fn next(&mut self) -> Got {
        loop {
            if let Some((len, frame)) = parse(&self.buf) {
                self.buf.drain(..len);
                return frame;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.half.read(&mut chunk))
                .await
                .expect("the node keeps answering")
                .expect("read");
            assert!(n > 0, "connection closed without a close frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn parse(b: &[u8]) -> Option<(usize, Got)> {
    if b.len() < 2 {
        return None;
    }
    let (len, head) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if b.len() < head + len {
        return None;
    }
    let payload = &b[head..head + len];
    let got = match b[0] & 0x0f {
        0x8 => Got::Close(u16::from_be_bytes([payload[0], payload[1]])),
        _ => Got::Text(String::from_utf8(payload.to_vec()).unwrap()),
    };
    Some((head + len, got))
}

async fn pipelined(node: &TestNode, requests: Vec<String>) -> Vec<Value> {
    let mut c = WireClient::connect(node.ws_addr(), "/ws").await.unwrap();
    let welcome = c.read_text(WAIT).await.unwrap();
    assert!(welcome.contains("welcome"));
    let (rest, r, mut w) = c.into_split();
    let n = requests.len();
    let mut all = Vec::new();
    for (i, req) in requests.iter().enumerate() {
        all.extend(masked_client_frame(0x81, req.as_bytes(), [1, 2, 3, (i % 251) as u8]));
    }
    // One write of everything, while the answers are read as they come.
    let writer = tokio::spawn(async move {
        w.write_all(&all).await.unwrap();
        w
    });
    let mut reader = FrameReader { buf: rest, half: r };
    let mut answers = Vec::with_capacity(n);
    while answers.len() < n {
        match reader.next().await {
            Got::Text(t) => answers.push(serde_json::from_str(&t).unwrap()),
            Got::Close(code) => panic!("closed with {code} after {} answers", answers.len()),
        }
    }
    let _w = writer.await.unwrap();
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_pipelined_publishes_are_all_acknowledged_in_order() {
    // Room for the whole burst in the subscriber's outbox: this test is about the
    // publisher's answers, not the slow-consumer policy.
    let node = TestNode::start_with(|c| {
        c.outbox.max_frames = 8192;
        // Thousands of publishes at once: past the default per-connection publish rate.
        c.limits.publish_per_second = 0;
    })
    .await
    .unwrap();
    let mut sub = WireClient::connect(node.ws_addr(), "/ws?topics=flush").await.unwrap();
    sub.read_text(WAIT).await.unwrap();
    let n = 5_000;
    // The subscriber reads as it goes, like the publisher: it got every one, in order.
    let receiver = tokio::spawn(async move {
        for i in 0..n {
            let m: Value = serde_json::from_str(&sub.read_text(WAIT).await.unwrap()).unwrap();
            assert_eq!(m["data"]["n"], i);
        }
    });
    let requests = (0..n)
        .map(|i| format!(r#"{{"op":"publish","topic":"flush","data":{{"n":{i}}},"id":{i}}}"#))
        .collect();
    let answers = pipelined(&node, requests).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &serde_json::json!({"type":"ack","id":i}), "answer {i}");
    }
    receiver.await.unwrap();
    for sample in [
        r#"herald_connections_closed_total{reason="slow_consumer"}"#,
        r#"herald_messages_dropped_total{reason="slow_consumer"}"#,
    ] {
        assert_eq!(node.metric(sample).await.unwrap(), 0.0, "{sample}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_pings_and_mixed_requests_get_every_answer_in_order() {
    let node = TestNode::start().await.unwrap();
    let mut requests = Vec::new();
    for i in 0..10_000 {
        requests.push(match i % 4 {
            0 => format!(r#"{{"op":"ping","id":{i}}}"#),
            1 => format!(r#"{{"op":"subscribe","topics":["t{}"],"id":{i}}}"#, i % 7),
            2 => format!(r#"{{"op":"unsubscribe","topics":["t{}"],"id":{i}}}"#, i % 5),
            _ => format!(r#"{{"op":"nonsense","id":{i}}}"#),
        });
    }
    let answers = pipelined(&node, requests).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["id"], i, "answer {i} out of order: {a}");
        let kind = match i % 4 {
            0 => "pong",
            1 | 2 => "ack",
            _ => "error",
        };
        assert_eq!(a["type"], kind, "{a}");
    }
    node.shutdown().await;
}

/// A node with a 1 s write timeout, and a client of it that floods pings and never reads:
/// the node, and the task writing the flood (to abort).
async fn never_reading_client() -> (TestNode, tokio::task::JoinHandle<()>) {
    let node = TestNode::start_with(|c| c.limits.write_timeout_ms = 1_000)
        .await
        .unwrap();
    let mut c = WireClient::connect(node.ws_addr(), "/ws").await.unwrap();
    c.read_text(WAIT).await.unwrap();
    let (_rest, _r, mut w) = c.into_split();
    let ping = masked_client_frame(0x81, br#"{"op":"ping","id":1}"#, [9, 9, 9, 9]);
    let flood = tokio::spawn(async move {
        let _keep_reading_half = _r;
        let chunk: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 1000).collect();
        for _ in 0..10_000 {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    (node, flood)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_paused_and_dropped_only_when_its_socket_stalls() {
    // Pings whose answers are never read: the node stops reading (TCP pushes back on the
    // flood), its own socket to the client fills, and only then, after the write timeout,
    // is the client dropped as a slow consumer. Memory stays bounded meanwhile.
    let (node, flood) = never_reading_client().await;
    let started = std::time::Instant::now();
    // A while into the flood: still connected (paused, not closed), answers bounded.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let state = node.node.state().clone();
    assert_eq!(state.connections.len(), 1, "paused, not disconnected");
    let queued: usize = state.connections.outboxes().iter().map(|o| o.control_backlog()).sum();
    assert!(
        queued <= 2 * herald_broker::CONTROL_HIGH_WATER,
        "answers stayed bounded: {queued}"
    );
    let closed = node
        .metric_reaches(r#"herald_connections_closed_total{reason="slow_consumer"}"#, 1.0)
        .await
        .unwrap();
    assert_eq!(closed, 1.0);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "dropped by the write timeout, not for unread answers: {:?}",
        started.elapsed()
    );
    flood.abort();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_client_closed_by_the_node_ends_without_spinning() {
    let (node, flood) = never_reading_client().await;
    // The reader pauses at the high-water mark; then an operator closes the connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = node.node.state().clone();
    let outboxes = state.connections.outboxes();
    assert_eq!(outboxes.len(), 1);
    outboxes[0].close(4000, "closed by the node operator", true);
    // The session must end (the writer gives up on the stalled socket), not spin.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while !state.connections.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the session never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flood.abort();
    node.shutdown().await;
}
