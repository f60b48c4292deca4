//! `[demo]` over real sockets: the pages under `/demo/` (404 when disabled), the node's
//! system messages on `herald.time` and `herald.stats` every interval, those topics closed
//! to client publishes (JSON, raw, admin API), and the chat topic's history rule.

mod common;

use std::time::{Duration, Instant};

use common::request;
use herald_testkit::node::TestNode;
use herald_testkit::wire::WireClient;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);

async fn demo_node() -> TestNode {
    TestNode::start_with(|c| {
        c.demo.enabled = true;
        c.demo.interval_ms = 200;
    })
    .await
    .unwrap()
}

/// The object `/demo/config.js` exports.
fn demo_names(module: &str) -> Value {
    let json = module
        .split("export default ")
        .nth(1)
        .expect("an export default")
        .trim_end()
        .trim_end_matches(';');
    serde_json::from_str(json).unwrap()
}

/// The next frame that is not a `message` (an ack or an error), skipping system messages.
async fn answer(c: &mut WireClient) -> Value {
    loop {
        let v: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
        if v["type"] != "message" {
            return v;
        }
    }
}

async fn json_client(node: &TestNode, path: &str) -> WireClient {
    let mut c = WireClient::connect(node.ws_addr(), path).await.unwrap();
    let welcome: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(welcome["type"], "welcome");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pages_are_404_when_disabled() {
    let node = TestNode::start().await.unwrap();
    for path in [
        "/demo",
        "/demo/",
        "/demo/dashboard.html",
        "/demo/chat.html",
        "/demo/demo.css",
    ] {
        let r = request(node.ws_addr(), "GET", path, &[], b"").await.unwrap();
        common::assert_error(&r, 404, "not_found");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pages_are_served_when_enabled() {
    let node = demo_node().await;
    let addr = node.ws_addr();
    let r = request(addr, "GET", "/demo", &[], b"").await.unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("demo/"),
        "relative: works under a proxy's path prefix"
    );
    // The pages' topic names, from the configuration.
    let r = request(addr, "GET", "/demo/config.js", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    let names = demo_names(&text);
    assert_eq!(
        names,
        serde_json::json!({"time_topic":"herald.time","stats_topic":"herald.stats","chat_topic":"demo.chat"})
    );
    let etag = r.header("etag").expect("an ETag").to_owned();
    let again = request(addr, "GET", "/demo/config.js", &[("If-None-Match", &etag)], b"")
        .await
        .unwrap();
    assert_eq!(again.status, 304);

    let assets = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/");
    for (path, file, kind) in [
        ("/demo/", "index.html", "text/html; charset=utf-8"),
        ("/demo/index.html", "index.html", "text/html; charset=utf-8"),
        ("/demo/dashboard.html", "dashboard.html", "text/html; charset=utf-8"),
        ("/demo/chat.html", "chat.html", "text/html; charset=utf-8"),
        ("/demo/demo.css", "demo.css", "text/css; charset=utf-8"),
        ("/demo/chart.js", "chart.js", "text/javascript; charset=utf-8"),
    ] {
        let r = request(addr, "GET", path, &[], b"").await.unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(kind), "{path}");
        assert_eq!(r.body, std::fs::read(format!("{assets}{file}")).unwrap(), "{path}");
        let etag = r.header("etag").expect("an ETag").to_owned();
        let again = request(addr, "GET", path, &[("If-None-Match", &etag)], b"")
            .await
            .unwrap();
        assert_eq!(again.status, 304, "{path}");
    }
    let r = request(addr, "GET", "/demo/missing.html", &[], b"").await.unwrap();
    common::assert_error(&r, 404, "not_found");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_publishes_time_and_stats_every_interval() {
    let node = demo_node().await;
    let mut c = json_client(&node, "/ws?topics=herald.time,herald.stats").await;
    let started = Instant::now();
    let (mut times, mut stats) = (Vec::new(), Vec::new());
    while started.elapsed() < Duration::from_millis(1500) {
        let v: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
        assert_eq!(v["type"], "message", "{v}");
        match v["topic"].as_str().unwrap() {
            "herald.time" => times.push(v["data"].clone()),
            "herald.stats" => stats.push(v["data"].clone()),
            t => panic!("unexpected topic {t}"),
        }
    }
    // 1.5 s at 200 ms: about 7 of each.
    assert!((4..=10).contains(&times.len()), "{} time frames", times.len());
    assert!((4..=10).contains(&stats.len()), "{} stats frames", stats.len());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for t in &times {
        assert_eq!(t["node"], node.node.node_id());
        let unix_ms = t["unix_ms"].as_u64().unwrap();
        assert!(unix_ms <= now_ms && now_ms - unix_ms < 3000, "{t}");
        let time = t["time"].as_str().unwrap();
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T' && time.as_bytes()[19] == b'.');
    }
    let ms: Vec<u64> = times.iter().map(|t| t["unix_ms"].as_u64().unwrap()).collect();
    for w in ms.windows(2) {
        assert!((50..=800).contains(&(w[1] - w[0])), "intervals {ms:?}");
    }
    for s in &stats {
        assert_eq!(s["node"], node.node.node_id());
        assert!(s["unix_ms"].is_u64(), "{s}");
        assert!(s["connections"].as_i64().unwrap() >= 1, "{s}");
        assert!(s["subscriptions"].as_i64().unwrap() >= 2, "{s}");
        assert!(s["topics"].as_i64().unwrap() >= 2, "{s}");
        assert!(s["messages_in_per_s"].as_f64().unwrap() >= 0.0, "{s}");
        assert!(s["messages_out_per_s"].as_f64().unwrap() >= 0.0, "{s}");
        let lat = &s["fanout_latency_ms"];
        for q in ["p50", "p99"] {
            assert!(lat[q].is_null() || lat[q].as_f64().unwrap() >= 0.0, "{s}");
        }
    }
    // Deliveries to this very client are the node's traffic: some interval saw them.
    assert!(
        stats.iter().any(|s| s["messages_out_per_s"].as_f64().unwrap() > 0.0),
        "{stats:?}"
    );
    assert!(
        stats.iter().any(|s| s["fanout_latency_ms"]["p50"].is_number()),
        "{stats:?}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_may_not_publish_to_the_system_topics() {
    let node = demo_node().await;
    let mut c = json_client(&node, "/ws").await;
    for topic in ["herald.time", "herald.stats"] {
        c.send_text(&format!(r#"{{"op":"publish","topic":"{topic}","data":1,"id":3}}"#))
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], "forbidden", "{v}");
        assert_eq!(v["id"], 3, "{v}");
        assert!(v["message"].as_str().unwrap().contains("reserved"), "{v}");
    }
    // Other topics are open as always.
    c.send_text(r#"{"op":"publish","topic":"herald.other","data":1,"id":4}"#)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"type":"ack","id":4}));

    // Raw mode: closed at the first frame.
    let mut raw = WireClient::connect(node.ws_addr(), "/raw/herald.time").await.unwrap();
    raw.send_text("spoofed").await.unwrap();
    let (code, reason) = raw.expect_close(WAIT).await.unwrap();
    assert_eq!((code, reason.as_str()), (1008, "publish not allowed"));

    // The admin API: 403 forbidden.
    let body = br#"{"topic":"herald.stats","data":{"connections":0}}"#;
    let r = request(
        node.admin_addr(),
        "POST",
        "/api/publish",
        &[("Content-Type", "application/json")],
        body,
    )
    .await
    .unwrap();
    common::assert_error(&r, 403, "forbidden");
    assert!(r.json()["message"].as_str().unwrap().contains("reserved"));
    let r = request(
        node.admin_addr(),
        "POST",
        "/api/topics/herald.time/publish",
        &[("Content-Type", "text/plain")],
        b"x",
    )
    .await
    .unwrap();
    common::assert_error(&r, 403, "forbidden");

    // Batch and broadcast: the system topic's item alone is refused, the others go on.
    let body = br#"{"messages":[{"topic":"herald.time","data":1},{"topic":"ok.a","data":2}]}"#;
    let r = request(
        node.admin_addr(),
        "POST",
        "/api/publish/batch",
        &[("Content-Type", "application/json")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 207, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["results"][0]["status"], 403, "{v}");
    assert_eq!(v["results"][0]["code"], "forbidden", "{v}");
    assert_eq!(v["results"][1]["status"], 200, "{v}");
    let body = br#"{"topics":["ok.b","herald.stats"],"data":3}"#;
    let r = request(
        node.admin_addr(),
        "POST",
        "/api/broadcast",
        &[("Content-Type", "application/json")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 207, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["results"][0]["status"], 200, "{v}");
    assert_eq!(v["results"][1]["status"], 403, "{v}");
    assert_eq!(v["results"][1]["code"], "forbidden", "{v}");

    // Every refusal counted: 2 JSON, 1 raw, 2 admin, 1 batch item, 1 broadcast item.
    let refused = node
        .metric(r#"herald_forbidden_total{action="publish"}"#)
        .await
        .unwrap();
    assert_eq!(refused, 7.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_system_topics_are_the_ones_published_reserved_and_served_to_the_pages() {
    let node = TestNode::start_with(|c| {
        c.demo.enabled = true;
        c.demo.interval_ms = 100;
        c.demo.time_topic = "sys.clock".into();
        c.demo.stats_topic = "sys.figures".into();
        c.demo.chat_topic = "room.lobby".into();
    })
    .await
    .unwrap();
    let r = request(node.ws_addr(), "GET", "/demo/config.js", &[], b"")
        .await
        .unwrap();
    let names = demo_names(std::str::from_utf8(&r.body).unwrap());
    assert_eq!(
        names,
        serde_json::json!({"time_topic":"sys.clock","stats_topic":"sys.figures","chat_topic":"room.lobby"})
    );
    let mut c = json_client(&node, "/ws?topics=sys.clock").await;
    let v: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(v["topic"], "sys.clock", "{v}");
    assert!(v["data"]["unix_ms"].is_number(), "{v}");
    // The new names are reserved; the default ones are ordinary topics now.
    c.send_text(r#"{"op":"publish","topic":"sys.figures","data":1,"id":1}"#)
        .await
        .unwrap();
    let v = answer(&mut c).await;
    assert_eq!(v["code"], "forbidden", "{v}");
    c.send_text(r#"{"op":"publish","topic":"herald.time","data":1,"id":2}"#)
        .await
        .unwrap();
    let v = answer(&mut c).await;
    assert_eq!(v, serde_json::json!({"type":"ack","id":2}));
    // The chat topic keeps history under its new name.
    c.send_text(r#"{"op":"publish","topic":"room.lobby","data":{"name":"a","text":"b"},"id":3}"#)
        .await
        .unwrap();
    let v = answer(&mut c).await;
    assert_eq!(v["offset"], 1, "{v}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_topics_keep_no_history_under_a_catch_all_rule() {
    let node = TestNode::start_with(|c| {
        c.demo.enabled = true;
        c.history = vec![herald_gateway::config::HistoryEntry {
            topics: ">".into(),
            ..Default::default()
        }];
    })
    .await
    .unwrap();
    let r = request(node.admin_addr(), "GET", "/api/topics/herald.time/history", &[], b"")
        .await
        .unwrap();
    common::assert_error(&r, 404, "no_history");
    let r = request(node.admin_addr(), "GET", "/api/topics/other/history", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_topic_keeps_history() {
    let node = demo_node().await;
    let mut c = json_client(&node, "/ws").await;
    c.send_text(r#"{"op":"publish","topic":"demo.chat","data":{"name":"ann","text":"hi"},"id":1}"#)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(v["type"], "ack", "{v}");
    assert_eq!(v["offset"], 1, "the chat topic keeps history: {v}");
    let epoch = v["epoch"].as_str().unwrap().to_owned();
    // A page that comes back catches up with `since`.
    let mut late = json_client(&node, "/ws").await;
    late.send_text(&format!(
        r#"{{"op":"subscribe","topics":["demo.chat"],"since":{{"demo.chat":{{"offset":0,"epoch":"{epoch}"}}}},"id":2}}"#
    ))
    .await
    .unwrap();
    let ack: Value = serde_json::from_str(&late.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    let msg: Value = serde_json::from_str(&late.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(msg["data"], serde_json::json!({"name":"ann","text":"hi"}), "{msg}");
    // Without demo the same topic keeps none.
    let plain = TestNode::start().await.unwrap();
    let mut c = json_client(&plain, "/ws").await;
    c.send_text(r#"{"op":"publish","topic":"demo.chat","data":1,"id":1}"#)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&c.read_text(WAIT).await.unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"type":"ack","id":1}));
    plain.shutdown().await;
    node.shutdown().await;
}
