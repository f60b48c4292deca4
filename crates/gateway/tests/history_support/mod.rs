//! What the history tests share: a JSON-protocol client over a raw WebSocket
//! (`WireClient`), its request and answer helpers. Each test binary uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use herald_testkit::node::TestNode;
use herald_testkit::wire::WireClient;
use serde_json::{json, Value};

/// Longest wait for any one frame.
pub const WAIT: Duration = Duration::from_secs(15);

/// Connects to `path` and reads the welcome.
pub async fn client(node: &TestNode, path: &str) -> WireClient {
    let mut c = WireClient::connect(node.ws_addr(), path).await.unwrap();
    let w = json_frame(&mut c).await;
    assert_eq!(w["type"], "welcome");
    c
}

pub async fn json_frame(c: &mut WireClient) -> Value {
    serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap()
}

pub async fn send(c: &mut WireClient, v: Value) {
    c.send_text(&v.to_string()).await.unwrap();
}

/// Reads frames until the answer with `id`, collecting the frames before it.
pub async fn until_answer(c: &mut WireClient, id: u64) -> (Value, Vec<Value>) {
    let mut msgs = Vec::new();
    loop {
        let v = json_frame(c).await;
        if v["id"] == id {
            return (v, msgs);
        }
        msgs.push(v);
    }
}

/// Publishes `{"n": n}` with `id` and returns the ack (which must be one).
pub async fn publish(c: &mut WireClient, topic: &str, n: u64, id: u64) -> Value {
    send(c, json!({"op":"publish","topic":topic,"data":{"n":n},"id":id})).await;
    let (ack, _) = until_answer(c, id).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

pub fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["offset"].as_u64().expect("offset")).collect()
}
