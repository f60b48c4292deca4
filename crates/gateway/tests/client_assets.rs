//! What the browser client relies on, over real sockets: the embedded client files
//! (`/client/herald.js`, `/client/herald.d.ts`: content, caching headers, ETag and 304,
//! HEAD, the CORS preflight) and JSON heartbeats (`/ws?heartbeat=json`: the welcome's
//! `ping_interval_ms`, `{"type":"ping"}` every interval, `{"op":"pong"}` never answered but
//! keeping the connection alive).

mod common;

use std::time::{Duration, Instant};

use common::request;
use herald_testkit::node::TestNode;
use herald_testkit::wire::WireClient;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);

fn on_disk(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/js/");
    std::fs::read(format!("{path}{name}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_files_are_served_with_cache_and_cors_headers() {
    let node = TestNode::start().await.unwrap();
    let addr = node.ws_addr();

    let r = request(addr, "GET", "/client/herald.js", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, on_disk("herald.js"), "the embedded file is the one on disk");
    assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let etag = r.header("etag").expect("an ETag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong ETag: {etag}");

    // The same tag every time; revalidation answers 304 with no body, for the exact tag, a
    // list holding it, its weak form and `*`.
    let again = request(addr, "GET", "/client/herald.js", &[], b"").await.unwrap();
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let listed = format!("\"nope\", {etag}");
    let weak = format!("W/{etag}");
    for tag in [etag.as_str(), listed.as_str(), weak.as_str(), "*"] {
        let r = request(addr, "GET", "/client/herald.js", &[("If-None-Match", tag)], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 304, "If-None-Match: {tag}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }
    let stale = request(addr, "GET", "/client/herald.js", &[("If-None-Match", "\"old\"")], b"")
        .await
        .unwrap();
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, on_disk("herald.js"));

    // HEAD: the headers of a GET, no body.
    let head = request(addr, "HEAD", "/client/herald.js", &[], b"").await.unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert_eq!(
        head.header("content-length").map(|l| l.parse::<usize>().unwrap()),
        Some(on_disk("herald.js").len())
    );

    // The CORS preflight.
    let pre = request(
        addr,
        "OPTIONS",
        "/client/herald.js",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "cache-control"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert_eq!(pre.header("access-control-allow-methods"), Some("GET, HEAD, OPTIONS"));
    assert_eq!(pre.header("access-control-allow-headers"), Some("cache-control"));
    assert_eq!(pre.header("access-control-expose-headers"), Some("ETag"));

    let post = request(addr, "POST", "/client/herald.js", &[], b"x").await.unwrap();
    common::assert_error(&post, 405, "method_not_allowed");

    let dts = request(addr, "GET", "/client/herald.d.ts", &[], b"").await.unwrap();
    assert_eq!(dts.status, 200);
    assert_eq!(dts.body, on_disk("herald.d.ts"));
    assert_eq!(dts.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_ne!(dts.header("etag"), Some(etag.as_str()));

    let missing = request(addr, "GET", "/client/other.js", &[], b"").await.unwrap();
    common::assert_error(&missing, 404, "not_found");

    // Plain HTTP, not WebSocket refusals.
    let refused = node
        .metric(r#"herald_connections_rejected_total{reason="bad_request"}"#)
        .await
        .unwrap();
    assert_eq!(refused, 0.0, "client files are not counted as rejected upgrades");
    node.shutdown().await;
}

async fn heartbeat_node() -> TestNode {
    TestNode::start_with(|c| {
        c.heartbeat.ping_interval_ms = 200;
        c.heartbeat.idle_timeout_ms = 700;
    })
    .await
    .unwrap()
}

async fn json_heartbeat_client(node: &TestNode) -> WireClient {
    let mut c = WireClient::connect(node.ws_addr(), "/ws?heartbeat=json").await.unwrap();
    let welcome: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["ping_interval_ms"], 200, "{welcome}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_heartbeats_arrive_every_interval_whatever_the_traffic() {
    let node = heartbeat_node().await;
    let mut c = json_heartbeat_client(&node).await;
    // Busy both ways: a request every 50 ms, each answered. The JSON pings still come.
    let started = Instant::now();
    let (mut pings, mut pongs, mut ws_pings) = (0, 0, 0);
    let mut n = 0u32;
    while started.elapsed() < Duration::from_millis(1100) {
        n += 1;
        c.send_text(&format!(r#"{{"op":"ping","id":{n}}}"#)).await.unwrap();
        let until = Instant::now() + Duration::from_millis(50);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let Ok(f) = c.read_frame(left).await else { break };
            match f.opcode {
                9 => ws_pings += 1,
                1 => {
                    let v: Value = serde_json::from_str(&f.text()).unwrap();
                    match v["type"].as_str() {
                        Some("ping") => {
                            assert_eq!(f.payload, br#"{"type":"ping"}"#);
                            pings += 1;
                        }
                        Some("pong") => pongs += 1,
                        _ => panic!("unexpected frame {v}"),
                    }
                }
                op => panic!("unexpected opcode {op}"),
            }
        }
    }
    assert!((4..=7).contains(&pings), "{pings} JSON pings in 1.1 s at 200 ms");
    assert_eq!(ws_pings, 0, "no WebSocket ping on a JSON-heartbeat connection");
    assert!(pongs > 10, "requests were answered meanwhile ({pongs})");

    // The plain connection keeps WebSocket pings and a welcome without the field.
    let mut plain = WireClient::connect(node.ws_addr(), "/ws?heartbeat=ws").await.unwrap();
    let welcome: Value = serde_json::from_str(&plain.read_text(WAIT).await.unwrap()).unwrap();
    assert!(welcome.get("ping_interval_ms").is_none(), "{welcome}");
    let f = plain.read_frame(WAIT).await.unwrap();
    assert_eq!(f.opcode, 9, "a silent plain client is pinged the WebSocket way");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_answering_pongs_stays_and_a_silent_one_is_closed() {
    let node = heartbeat_node().await;
    let mut answering = json_heartbeat_client(&node).await;
    let mut silent = json_heartbeat_client(&node).await;
    let silent_task = tokio::spawn(async move {
        let started = Instant::now();
        let close = silent.expect_close(Duration::from_secs(3)).await.unwrap();
        (close, started.elapsed())
    });
    // Only pongs, for three idle timeouts: never closed, and a pong (with an id or not) is
    // never answered: every text frame is a ping.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(2100) {
        let f = answering.read_frame(Duration::from_secs(1)).await.unwrap();
        assert_eq!(f.opcode, 1, "only JSON pings reach a client that only pongs");
        assert_eq!(f.payload, br#"{"type":"ping"}"#);
        pings += 1;
        let pong = if pings % 2 == 0 {
            r#"{"op":"pong"}"#
        } else {
            r#"{"op":"pong","id":7}"#
        };
        answering.send_text(pong).await.unwrap();
    }
    assert!(pings >= 8, "{pings}");
    // Still up, and still answering requests: a pong's id got no answer, so the next
    // answer is this ping's.
    answering.send_text(r#"{"op":"ping","id":"last"}"#).await.unwrap();
    loop {
        let v: Value = serde_json::from_str(&answering.read_text(WAIT).await.unwrap()).unwrap();
        if v["type"] == "ping" {
            continue;
        }
        assert_eq!(v, serde_json::json!({"type":"pong","id":"last"}));
        break;
    }
    let ((code, reason), after) = silent_task.await.unwrap();
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    assert!(after < Duration::from_millis(1500), "closed after {after:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_heartbeat_mode_is_refused_with_400() {
    let node = TestNode::start().await.unwrap();
    for q in [
        "/ws?heartbeat=bogus",
        "/ws?heartbeat=",
        "/ws?heartbeat=JSON",
        "/raw/t?heartbeat=json",
        "/raw/t?heartbeat=bogus",
    ] {
        let refused = WireClient::try_connect(node.ws_addr(), q)
            .await
            .unwrap()
            .err()
            .unwrap_or_else(|| panic!("{q} was upgraded"));
        assert_eq!(refused.status, 400, "{q}");
        let body: Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(body["code"], "invalid_parameter", "{body}");
        assert!(body["message"].as_str().unwrap().contains("heartbeat"), "{body}");
    }
    node.shutdown().await;
}
