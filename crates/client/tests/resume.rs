//! Tests of `ResumingClient` against a scripted in-test server on 127.0.0.1:0 that accepts
//! any number of WebSocket connections and hands each to the test, which plays the node:
//! it checks the resubscribe frames (`since`), answers with `recovered`/`positions`, drops
//! connections, or refuses them to exercise the backoff.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use herald_client::{ClientError, ClientOptions, ReconnectOptions, ResumeEvent, ResumingClient, StreamPos};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

type Ws = WebSocket<TokioIo<Upgraded>>;
const T: Duration = Duration::from_secs(5);

/// A server that upgrades every connection and hands it to the test; with `refuse` set it
/// closes new TCP connections at once instead, recording when each came.
struct Server {
    base: String,
    conns: mpsc::UnboundedReceiver<Ws>,
    refuse: Arc<AtomicBool>,
    refused: Arc<Mutex<Vec<Instant>>>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("ws://{}", listener.local_addr().unwrap());
        let (tx, conns) = mpsc::unbounded_channel();
        let refuse = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (r, rs) = (refuse.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                if r.load(Ordering::SeqCst) {
                    rs.lock().unwrap().push(Instant::now());
                    drop(tcp);
                    continue;
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (up_tx, up_rx) = oneshot::channel();
                    let up_tx = Mutex::new(Some(up_tx));
                    let svc = service_fn(move |mut req: Request<Incoming>| {
                        let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
                        if let Some(t) = up_tx.lock().unwrap().take() {
                            let _ = t.send(fut);
                        }
                        async move { Ok::<Response<_>, Infallible>(resp) }
                    });
                    tokio::spawn(
                        http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .with_upgrades(),
                    );
                    if let Ok(fut) = up_rx.await {
                        let mut ws = fut.await.unwrap();
                        ws.set_auto_close(true);
                        let _ = tx.send(ws);
                    }
                });
            }
        });
        Server {
            base,
            conns,
            refuse,
            refused,
        }
    }

    /// The next connection, welcomed as connection `conn`.
    async fn next(&mut self, conn: &str) -> Ws {
        let mut ws = tokio::time::timeout(T, self.conns.recv()).await.unwrap().unwrap();
        send(
            &mut ws,
            &format!(r#"{{"type":"welcome","node":"n1","connection":"{conn}"}}"#),
        )
        .await;
        ws
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
        .await
        .unwrap();
}

async fn read_json(ws: &mut Ws) -> Value {
    let f = tokio::time::timeout(T, ws.read_frame()).await.unwrap().unwrap();
    assert_eq!(f.opcode, OpCode::Text);
    serde_json::from_slice(&f.payload).unwrap()
}

/// Reads a subscribe request and returns it with its topics sorted.
async fn read_subscribe(ws: &mut Ws) -> Value {
    let mut req = read_json(ws).await;
    assert_eq!(req["op"], "subscribe");
    let mut topics: Vec<String> = serde_json::from_value(req["topics"].clone()).unwrap();
    topics.sort();
    req["topics"] = json!(topics);
    req
}

async fn ack(ws: &mut Ws, req: &Value, extra: &str) {
    send(ws, &format!(r#"{{"type":"ack","id":{}{extra}}}"#, req["id"])).await;
}

async fn message(ws: &mut Ws, topic: &str, offset: u64, epoch: &str) {
    let frame =
        format!(r#"{{"type":"message","topic":"{topic}","offset":{offset},"epoch":"{epoch}","data":{offset}}}"#);
    send(ws, &frame).await;
}

fn fast(max_attempts: Option<u32>) -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(3),
        reconnect: ReconnectOptions {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(40),
            max_attempts,
        },
        ..Default::default()
    }
}

/// The data (the offset) of the next message, which must be on `topic`.
async fn next_offset(c: &mut ResumingClient, topic: &str) -> u64 {
    let m = c.next_message_timeout(T).await.unwrap();
    assert_eq!(m.topic, topic);
    assert_eq!(m.position.as_ref().map(|p| p.offset), m.json::<u64>().ok());
    m.json().unwrap()
}

#[tokio::test]
async fn a_dropped_connection_is_resumed_with_since() {
    let mut server = Server::start().await;
    let base = server.base.clone();
    let (mut c, mut ws) = tokio::join!(
        async {
            ResumingClient::connect_with(&format!("{base}/ws"), fast(None))
                .await
                .unwrap()
        },
        server.next("c1"),
    );

    // First connection: "a" gets messages, "b" (history) none, "plain" has no history.
    let (sub, ()) = tokio::join!(c.subscribe(&["a", "b", "plain"]), async {
        let req = read_subscribe(&mut ws).await;
        assert_eq!((&req["topics"], req.get("since")), (&json!(["a", "b", "plain"]), None));
        let positions = r#","positions":{"a":{"offset":5,"epoch":"E"},"b":{"offset":0,"epoch":"E"}}"#;
        ack(&mut ws, &req, positions).await;
        message(&mut ws, "a", 6, "E").await;
        message(&mut ws, "a", 7, "E").await;
    });
    sub.unwrap();
    assert_eq!(c.position("b"), Some(StreamPos::new(0, "E")), "taken from the ack");
    assert_eq!((next_offset(&mut c, "a").await, next_offset(&mut c, "a").await), (6, 7));
    assert_eq!(c.position("a"), Some(StreamPos::new(7, "E")));

    // The node drops the connection without a Close frame.
    drop(ws);
    match c.next_event_timeout(T).await.unwrap() {
        ResumeEvent::Disconnected(info) => assert_eq!(info.code, 1006),
        other => panic!("{other:?}"),
    }
    // A publish while disconnected waits for the new connection.
    let h = c.handle();
    let publish = tokio::spawn(async move { h.publish("a", &json!("p")).await });

    let mut ws = server.next("c2").await;
    let req = read_subscribe(&mut ws).await;
    assert_eq!(req["topics"], json!(["a", "b", "plain"]));
    assert_eq!(
        req["since"],
        json!({"a": {"offset": 7, "epoch": "E"}, "b": {"offset": 0, "epoch": "E"}})
    );
    let answer =
        r#","recovered":{"a":true,"b":false},"positions":{"a":{"offset":7,"epoch":"E"},"b":{"offset":0,"epoch":"F"}}"#;
    ack(&mut ws, &req, answer).await;
    // The publish arrives on the new connection, after the resubscribe.
    let req = read_json(&mut ws).await;
    assert_eq!((&req["op"], &req["data"]), (&json!("publish"), &json!("p")));
    ack(&mut ws, &req, r#","offset":9,"epoch":"E""#).await;
    assert_eq!(publish.await.unwrap().unwrap(), Some(StreamPos::new(9, "E")));

    message(&mut ws, "a", 7, "E").await; // a duplicate: dropped
    message(&mut ws, "a", 8, "E").await;
    send(&mut ws, r#"{"type":"message","topic":"plain","data":0}"#).await;

    match c.next_event_timeout(T).await.unwrap() {
        ResumeEvent::Resubscribed {
            node,
            connection,
            recovered,
        } => {
            assert_eq!((node.as_str(), connection.as_str()), ("n1", "c2"));
            assert_eq!(recovered, HashMap::from([("a".into(), true), ("b".into(), false)]));
        }
        other => panic!("{other:?}"),
    }
    match c.next_event_timeout(T).await.unwrap() {
        ResumeEvent::Lost { topic } => assert_eq!(topic, "b"),
        other => panic!("{other:?}"),
    }
    assert_eq!(next_offset(&mut c, "a").await, 8);
    let m = c.next_message_timeout(T).await.unwrap();
    assert_eq!((m.topic.as_str(), m.position), ("plain", None));
    let stats = c.stats();
    assert_eq!((stats.reconnects, stats.duplicates_dropped), (1, 1));
    assert_eq!(c.connection().unwrap().connection_id(), "c2");

    // Lost again before any message of b's new epoch: its position is the new stream's.
    drop(ws);
    assert!(matches!(
        c.next_event_timeout(T).await.unwrap(),
        ResumeEvent::Disconnected(_)
    ));
    let mut ws = server.next("c3").await;
    let req = read_subscribe(&mut ws).await;
    assert_eq!(
        req["since"],
        json!({"a": {"offset": 8, "epoch": "E"}, "b": {"offset": 0, "epoch": "F"}})
    );
    ack(&mut ws, &req, r#","recovered":{"a":true,"b":true}"#).await;
    message(&mut ws, "b", 1, "F").await;
    assert!(matches!(
        c.next_event_timeout(T).await.unwrap(),
        ResumeEvent::Resubscribed { .. }
    ));
    assert_eq!(next_offset(&mut c, "b").await, 1);
    assert_eq!(c.position("b"), Some(StreamPos::new(1, "F")));
    assert_eq!(c.stats().reconnects, 2);
}

#[tokio::test]
async fn a_user_close_does_not_reconnect() {
    let mut server = Server::start().await;
    let base = server.base.clone();
    let (c, mut ws) = tokio::join!(
        async {
            ResumingClient::connect_with(&format!("{base}/ws"), fast(None))
                .await
                .unwrap()
        },
        server.next("c1"),
    );
    let (closed, ()) = tokio::join!(c.close(4000, "done"), async {
        let f = ws.read_frame().await.unwrap(); // auto-close echoes it
        assert_eq!((f.opcode, &f.payload[..]), (OpCode::Close, &b"\x0f\xa0done"[..]));
    });
    closed.unwrap();
    let (h, mut events) = c.into_split();
    match events.next_event_timeout(T).await.unwrap() {
        ResumeEvent::Closed(info) => assert_eq!(info.code, 4000),
        other => panic!("{other:?}"),
    }
    assert!(events.next_event().await.is_none());
    assert!(h.is_closed());
    assert!(matches!(
        h.publish("a", &json!(1)).await,
        Err(ClientError::Closed { .. })
    ));
    // Ten times the largest backoff: no second connection came.
    assert!(tokio::time::timeout(Duration::from_millis(400), server.conns.recv())
        .await
        .is_err());
    assert_eq!(h.stats().reconnects, 0);
}

#[tokio::test]
async fn a_close_while_reconnecting_stops_the_attempts() {
    let mut server = Server::start().await;
    let base = server.base.clone();
    let (mut c, ws) = tokio::join!(
        async {
            ResumingClient::connect_with(&format!("{base}/ws"), fast(None))
                .await
                .unwrap()
        },
        server.next("c1"),
    );
    server.refuse.store(true, Ordering::SeqCst);
    drop(ws);
    assert!(matches!(
        c.next_event_timeout(T).await.unwrap(),
        ResumeEvent::Disconnected(_)
    ));
    // Let a few attempts fail, then close: the attempts stop.
    while server.refused.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.close(1000, "bye").await.unwrap();
    match c.next_event_timeout(T).await.unwrap() {
        ResumeEvent::Closed(info) => assert_eq!((info.code, info.reason.as_str()), (1000, "bye")),
        other => panic!("{other:?}"),
    }
    // At most one connect already in the listener's backlog; retrying would make ~10.
    let after_close = server.refused.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.refused.lock().unwrap().len() <= after_close + 1);
    assert!(c.is_closed());
}

#[tokio::test]
async fn backoff_is_bounded_and_reconnecting_gives_up() {
    let mut server = Server::start().await;
    let base = server.base.clone();
    let (mut c, ws) = tokio::join!(
        async {
            ResumingClient::connect_with(&format!("{base}/ws"), fast(Some(6)))
                .await
                .unwrap()
        },
        server.next("c1"),
    );
    server.refuse.store(true, Ordering::SeqCst);
    let lost_at = Instant::now();
    drop(ws);
    assert!(matches!(
        c.next_event_timeout(T).await.unwrap(),
        ResumeEvent::Disconnected(_)
    ));
    match c.next_event_timeout(T).await.unwrap() {
        ResumeEvent::Closed(info) => assert!(
            info.reason.contains("gave up reconnecting after 6 attempts"),
            "{info:?}"
        ),
        other => panic!("{other:?}"),
    }
    let refused = server.refused.lock().unwrap().clone();
    assert_eq!(refused.len(), 6, "one connection per attempt");
    // Each wait is at most max_backoff (40 ms) plus a failed handshake; uncapped, the
    // ceilings would double to 1.28 s.
    let mut prev = lost_at;
    for (n, at) in refused.iter().enumerate() {
        let gap = at.duration_since(prev);
        assert!(gap < Duration::from_millis(190), "attempt {n} came after {gap:?}");
        prev = *at;
    }
    assert!(matches!(c.subscribe(&["a"]).await, Err(ClientError::Closed { .. })));
}

#[tokio::test]
async fn subscriptions_refused_or_overflowed() {
    let mut server = Server::start().await;
    let base = server.base.clone();
    let (mut c, mut ws) = tokio::join!(
        async {
            ResumingClient::connect_with(&format!("{base}/ws"), fast(None))
                .await
                .unwrap()
        },
        server.next("c1"),
    );
    // A refused subscribe leaves the set.
    let (sub, ()) = tokio::join!(c.subscribe(&["x"]), async {
        let req = read_subscribe(&mut ws).await;
        let refusal = format!(
            r#"{{"type":"error","id":{},"code":"forbidden","message":"no"}}"#,
            req["id"]
        );
        send(&mut ws, &refusal).await;
    });
    assert!(matches!(sub, Err(ClientError::Server { ref code, .. }) if code == "forbidden"));
    assert!(c.topics().is_empty());

    let (sub, ()) = tokio::join!(c.subscribe(&["a"]), async {
        let req = read_subscribe(&mut ws).await;
        ack(&mut ws, &req, r#","positions":{"a":{"offset":2,"epoch":"E"}}"#).await;
        message(&mut ws, "a", 3, "E").await;
        send(
            &mut ws,
            r#"{"type":"error","code":"recovery_overflow","topic":"a","message":"too far behind"}"#,
        )
        .await;
    });
    sub.unwrap();
    // Subscribing a topic again is a no-op: nothing reaches the node.
    c.subscribe(&["a"]).await.unwrap();
    assert_eq!(next_offset(&mut c, "a").await, 3);
    match c.next_event_timeout(T).await.unwrap() {
        ResumeEvent::Error { code, topic, .. } => {
            assert_eq!((code.as_str(), topic.as_deref()), ("recovery_overflow", Some("a")))
        }
        other => panic!("{other:?}"),
    }
    // The client resumes the ended subscription from the last offset it delivered.
    let req = read_subscribe(&mut ws).await;
    assert_eq!(
        (&req["topics"], &req["since"]),
        (&json!(["a"]), &json!({"a": {"offset": 3, "epoch": "E"}}))
    );
    ack(
        &mut ws,
        &req,
        r#","recovered":{"a":false},"positions":{"a":{"offset":10,"epoch":"E"}}"#,
    )
    .await;
    message(&mut ws, "a", 11, "E").await;
    // The loss is reported by the resubscribe's own task: before or after the message.
    let (mut lost, mut offsets) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        match c.next_event_timeout(T).await.unwrap() {
            ResumeEvent::Lost { topic } => lost.push(topic),
            ResumeEvent::Message(m) => offsets.push(m.position.unwrap().offset),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((lost, offsets), (vec!["a".to_owned()], vec![11]));
    assert_eq!(c.stats().duplicates_dropped, 0);
}

#[test]
fn a_topics_query_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let r = rt.block_on(ResumingClient::connect("ws://127.0.0.1:1/ws?token=t&topics=a"));
    assert!(matches!(r, Err(ClientError::InvalidInput(_))));
}
