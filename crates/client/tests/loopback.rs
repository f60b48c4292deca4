//! End-to-end tests of the client against tiny in-test servers on 127.0.0.1:0: a
//! fastwebsockets + hyper server driven by a per-test script, and a hand-written HTTP
//! responder for handshake edge cases (bad accept key, refused upgrade, a welcome frame in
//! the same packet as the 101 response).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use herald_client::{accept_key, Client, ClientError, ClientOptions, Event, RawClient, RawFrame, StreamPos};
use herald_protocol::ws_frame::{close_frame, text_frame};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Ws = WebSocket<TokioIo<Upgraded>>;
const T: Duration = Duration::from_secs(5);

/// Accepts one WebSocket connection and runs `script` on it with the request target.
async fn serve_one<F, Fut>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(Ws, String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let target = req.uri().to_string();
            let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send((fut, target));
            }
            async move { Ok::<Response<_>, Infallible>(resp) }
        });
        tokio::spawn(
            http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades(),
        );
        let (fut, target) = rx.await.unwrap();
        script(fut.await.unwrap(), target).await;
    });
    (base, task)
}

async fn send(ws: &mut Ws, text: &str) {
    ws.write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
        .await
        .unwrap();
}

async fn welcome(ws: &mut Ws) {
    send(ws, r#"{"type":"welcome","node":"n1","connection":"c7"}"#).await;
}

/// The next frame, which must be a text frame holding a JSON request.
async fn read_json(ws: &mut Ws) -> Value {
    let f = ws.read_frame().await.unwrap();
    assert_eq!(f.opcode, OpCode::Text);
    serde_json::from_slice(&f.payload).unwrap()
}

#[tokio::test]
async fn json_protocol_round_trip() {
    let (base, server) = serve_one(|mut ws, target| async move {
        assert_eq!(target, "/ws?topics=x");
        welcome(&mut ws).await;

        let req = read_json(&mut ws).await;
        assert_eq!((&req["op"], &req["topics"]), (&json!("subscribe"), &json!(["a", "b"])));
        send(&mut ws, &format!(r#"{{"type":"ack","id":{}}}"#, req["id"])).await;
        send(&mut ws, r#"{"type":"message","topic":"a","data":{"n":1}}"#).await;
        send(
            &mut ws,
            r#"{"type":"message","topic":"b","data":"AP8B","encoding":"base64"}"#,
        )
        .await;

        let req = read_json(&mut ws).await;
        assert_eq!(
            (&req["op"], &req["topic"], &req["data"]),
            (&json!("publish"), &json!("a"), &json!({"k": [1]}))
        );
        send(&mut ws, &format!(r#"{{"type":"ack","id":{}}}"#, req["id"])).await;

        let req = read_json(&mut ws).await;
        assert_eq!(req["op"], "ping");
        send(&mut ws, &format!(r#"{{"type":"pong","id":{}}}"#, req["id"])).await;

        let req = read_json(&mut ws).await;
        assert_eq!(req["topic"], "bad topic");
        let answer = format!(
            r#"{{"type":"error","id":{},"code":"invalid_topic","message":"no"}}"#,
            req["id"]
        );
        send(&mut ws, &answer).await;

        // A nowait publish has no id; answer with an unsolicited error.
        let req = read_json(&mut ws).await;
        assert_eq!((req.get("id"), &req["data"]), (None, &json!(7)));
        send(
            &mut ws,
            r#"{"type":"error","code":"relay_unavailable","message":"redis down"}"#,
        )
        .await;

        // A heartbeat ping must be answered with a pong carrying the same payload.
        ws.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"hb")))
            .await
            .unwrap();
        let f = ws.read_frame().await.unwrap();
        assert_eq!((f.opcode, &f.payload[..]), (OpCode::Pong, &b"hb"[..]));

        ws.write_frame(Frame::close(1013, b"slow consumer")).await.unwrap();
    })
    .await;

    let mut c = Client::connect(&format!("{base}/ws?topics=x")).await.unwrap();
    assert_eq!((c.node(), c.connection_id()), ("n1", "c7"));
    c.subscribe(&["a", "b"]).await.unwrap();

    let m = c.next_message_timeout(T).await.unwrap();
    assert_eq!((m.topic.as_str(), m.data_json()), ("a", r#"{"n":1}"#));
    assert_eq!(&m.frame[..], br#"{"type":"message","topic":"a","data":{"n":1}}"#);
    let m = c.next_message_timeout(T).await.unwrap();
    assert_eq!(
        (m.encoding.as_deref(), m.payload_bytes().unwrap()),
        (Some("base64"), vec![0, 255, 1])
    );

    c.publish("a", &json!({"k": [1]})).await.unwrap();
    assert!(c.ping().await.unwrap() < T);
    match c.publish_json("bad topic", "1").await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!((code.as_str(), message.as_str()), ("invalid_topic", "no"))
        }
        other => panic!("{other:?}"),
    }
    c.publish_nowait("a", "7").await.unwrap();
    match c.next_event_timeout(T).await.unwrap() {
        Event::Error { id: None, code, .. } => assert_eq!(code, "relay_unavailable"),
        other => panic!("{other:?}"),
    }

    match c.next_event_timeout(T).await.unwrap() {
        Event::Closed(info) => assert_eq!((info.code, info.reason.as_str()), (1013, "slow consumer")),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.close_reason().unwrap().code, 1013);
    assert!(matches!(
        c.subscribe(&["a"]).await,
        Err(ClientError::Closed { code: 1013, .. })
    ));
    assert!(c.next_message().await.is_none());
    server.await.unwrap();
}

#[tokio::test]
async fn history_positions_round_trip() {
    let (base, server) = serve_one(|mut ws, _| async move {
        welcome(&mut ws).await;
        let req = read_json(&mut ws).await;
        assert_eq!(req["topics"], json!(["a", "b"]));
        assert_eq!(req["since"], json!({"a": {"offset": 41, "epoch": "k3"}}));
        let ack = format!(
            r#"{{"type":"ack","id":{},"recovered":{{"a":false}},"positions":{{"a":{{"offset":30,"epoch":"k4"}},"b":{{"offset":0,"epoch":"zz"}}}}}}"#,
            req["id"]
        );
        send(&mut ws, &ack).await;
        send(&mut ws, r#"{"offset":31,"type":"message","epoch":"k4","topic":"a","data":[1]}"#).await;
        send(&mut ws, r#"{"type":"message","topic":"c","data":2}"#).await;

        // A plain subscribe sends no since; its ack has no history fields.
        let req = read_json(&mut ws).await;
        assert_eq!((req.get("since"), &req["topics"]), (None, &json!(["c"])));
        send(&mut ws, &format!(r#"{{"type":"ack","id":{}}}"#, req["id"])).await;

        for answer in [r#","offset":43,"epoch":"k4""#, ""] {
            let req = read_json(&mut ws).await;
            assert_eq!(req["op"], "publish");
            send(&mut ws, &format!(r#"{{"type":"ack","id":{}{answer}}}"#, req["id"])).await;
        }
        let _ = ws.read_frame().await;
    })
    .await;

    let c = Client::connect(&format!("{base}/ws")).await.unwrap();
    let since = HashMap::from([("a".to_owned(), StreamPos::new(41, "k3"))]);
    let ack = c.subscribe_since(&["a", "b"], &since).await.unwrap();
    assert_eq!(ack.recovered, HashMap::from([("a".to_owned(), false)]));
    assert_eq!(ack.positions["a"], StreamPos::new(30, "k4"));
    assert_eq!(ack.positions["b"], StreamPos::new(0, "zz"));
    let (h, mut events) = c.into_split();
    let m = events.next_message_timeout(T).await.unwrap();
    assert_eq!((m.topic.as_str(), m.position), ("a", Some(StreamPos::new(31, "k4"))));
    let m = events.next_message_timeout(T).await.unwrap();
    assert_eq!((m.topic.as_str(), m.position), ("c", None));

    h.subscribe(&["c"]).await.unwrap();
    assert_eq!(h.publish("a", &json!(1)).await.unwrap(), Some(StreamPos::new(43, "k4")));
    assert_eq!(h.publish_json("c", "1").await.unwrap(), None);
    drop((h, events));
    server.await.unwrap();
}

#[tokio::test]
async fn client_close_and_drop_send_close_frames() {
    let (base, server) = serve_one(|mut ws, _| async move {
        welcome(&mut ws).await;
        let f = ws.read_frame().await.unwrap(); // auto-close echoes it
        assert_eq!((f.opcode, &f.payload[..]), (OpCode::Close, &b"\x03\xe8done"[..]));
    })
    .await;
    let c = Client::connect(&format!("{base}/ws")).await.unwrap();
    c.close(1000, "done").await.unwrap();
    assert_eq!(c.close_reason().unwrap().code, 1000);
    server.await.unwrap();

    let (base, server) = serve_one(|mut ws, _| async move {
        welcome(&mut ws).await;
        let f = ws.read_frame().await.unwrap();
        assert_eq!((f.opcode, &f.payload[..2]), (OpCode::Close, &b"\x03\xe8"[..]));
    })
    .await;
    drop(Client::connect(&format!("{base}/ws")).await.unwrap());
    tokio::time::timeout(T, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn close_instead_of_welcome_and_request_timeouts() {
    let (base, server) = serve_one(|mut ws, _| async move {
        ws.write_frame(Frame::close(1013, b"at capacity")).await.unwrap();
    })
    .await;
    match Client::connect(&format!("{base}/ws")).await {
        Err(ClientError::Closed { code, reason }) => assert_eq!((code, reason.as_str()), (1013, "at capacity")),
        other => panic!("{:?}", other.err()),
    }
    server.await.unwrap();

    let (base, server) = serve_one(|mut ws, _| async move {
        welcome(&mut ws).await;
        let _ = read_json(&mut ws).await; // never answered
        let _ = ws.read_frame().await;
    })
    .await;
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let c = Client::connect_with(&format!("{base}/ws"), opts).await.unwrap();
    assert!(matches!(c.subscribe(&["a"]).await, Err(ClientError::Timeout)));
    drop(c);
    server.await.unwrap();
}

#[tokio::test]
async fn raw_client_round_trip() {
    let (base, server) = serve_one(|mut ws, target| async move {
        assert_eq!(target, "/raw/t?echo=false");
        for _ in 0..2 {
            let f = ws.read_frame().await.unwrap();
            ws.write_frame(Frame::new(true, f.opcode, None, f.payload))
                .await
                .unwrap();
        }
        ws.write_frame(Frame::close(1001, b"going away")).await.unwrap();
    })
    .await;
    let mut c = RawClient::connect(&format!("{base}/raw/t?echo=false")).await.unwrap();
    c.send_text("héllo").await.unwrap();
    c.send_binary(vec![0u8, 1, 2]).await.unwrap();
    assert_eq!(c.next_timeout(T).await.unwrap(), RawFrame::Text("héllo".into()));
    assert_eq!(c.next_timeout(T).await.unwrap().as_bytes(), &[0, 1, 2]);
    assert!(matches!(
        c.next_timeout(T).await,
        Err(ClientError::Closed { code: 1001, .. })
    ));
    assert_eq!(c.close_reason().unwrap().reason, "going away");
    server.await.unwrap();
}

/// Serves one hand-written HTTP response built from the request's Sec-WebSocket-Key, then
/// runs `after` on the socket.
async fn fake_http<F, Fut>(respond: fn(&str) -> Vec<u8>, after: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(tcp.read(&mut b).await.unwrap(), 1);
            req.push(b[0]);
        }
        let req = String::from_utf8(req).unwrap();
        let key = req
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-key: ")
                    .or_else(|| l.strip_prefix("Sec-WebSocket-Key: "))
            })
            .unwrap();
        tcp.write_all(&respond(key.trim())).await.unwrap();
        after(tcp).await;
    });
    (base, task)
}

fn switching(accept: &str) -> Vec<u8> {
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn handshake_checks() {
    // A wrong accept key is refused.
    let (base, _server) = fake_http(|_| switching("s3pPLMBiTxaxKbxPwo+xOo4SkWk="), |_| async {}).await;
    assert!(matches!(
        Client::connect(&format!("{base}/ws")).await,
        Err(ClientError::Handshake(_))
    ));

    // A refused upgrade reports its status.
    let (base, _server) = fake_http(
        |_| b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec(),
        |_| async {},
    )
    .await;
    assert!(matches!(
        Client::connect(&format!("{base}/ws")).await,
        Err(ClientError::Rejected { status: 503 })
    ));

    // The welcome frame arriving in the same write as the 101 response is not lost.
    let (base, server) = fake_http(
        |key| {
            let mut out = switching(&accept_key(key));
            out.extend_from_slice(&text_frame(br#"{"type":"welcome","node":"n9","connection":"c1"}"#));
            out
        },
        |mut tcp| async move {
            tcp.write_all(&close_frame(1001, "bye")).await.unwrap();
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await; // the client's masked Close reply
            assert_eq!(rest[0], 0x88);
        },
    )
    .await;
    let c = Client::connect(&format!("{base}/ws")).await.unwrap();
    assert_eq!(c.node(), "n9");
    let info = tokio::time::timeout(T, c.closed()).await.unwrap();
    assert_eq!((info.code, info.reason.as_str()), (1001, "bye"));
    drop(c);
    server.await.unwrap();
}
