//! docs/openapi.yaml against the real node: every documented operation is called and its
//! answers are checked against the document (fields, types, required, enums, undocumented
//! fields, documented headers); the document's references all resolve; the error statuses
//! the API promises are exercised too. The other admin test binaries run the same check
//! on every response they get (`common::Api`).

mod common;

use std::collections::BTreeSet;

use common::openapi::{checked_so_far, spec, template_for};
use common::{send_raw, Api, KEY, WAIT};
use herald_client::Client;
use herald_testkit::node::{MemoryCluster, TestNode};
use serde_json::{json, Value};

fn walk_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| walk_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| walk_refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_and_every_reference_resolves() {
    let s = spec();
    assert!(s["openapi"].as_str().unwrap().starts_with("3."));
    let mut refs = Vec::new();
    walk_refs(s, &mut refs);
    assert!(refs.len() > 50);
    for r in refs {
        let mut cur = s;
        for part in r.trim_start_matches("#/").split('/') {
            cur = &cur[part];
        }
        assert!(!cur.is_null(), "dangling {r}");
    }
}

#[test]
fn paths_map_to_the_most_specific_template() {
    assert_eq!(template_for("/api/publish").as_deref(), Some("/api/publish"));
    assert_eq!(
        template_for("/api/topics/a/b/publish").as_deref(),
        Some("/api/topics/{topic}/publish")
    );
    assert_eq!(template_for("/api/topics/a/b").as_deref(), Some("/api/topics/{topic}"));
    assert_eq!(
        template_for("/api/connections/7/close").as_deref(),
        Some("/api/connections/{id}/close")
    );
    assert_eq!(template_for("/api/connections/7/8"), None);
    assert_eq!(template_for("/api/nope"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_documented() {
    let node = TestNode::start_with(|c| {
        // Long enough for `/readyz` to answer 503 during the drain below.
        c.shutdown.drain_delay_ms = 500;
        c.admin.api_keys = vec![KEY.into()];
        c.admin.max_body_bytes = 4096;
        c.history.push(herald_gateway::config::HistoryEntry {
            topics: "h.>".into(),
            ..Default::default()
        });
    })
    .await
    .unwrap();
    let api = Api::with_key(&node, KEY);
    let sub = Client::connect(&node.url("/ws?topics=t")).await.unwrap();
    let id = sub.connection_id().to_owned();

    // Success paths of every operation.
    api.post_json("/api/publish", &json!({"topic": "t", "data": 1})).await;
    api.post_json("/api/publish/batch", &json!({"messages": [{"topic": "t", "data": 1}]}))
        .await;
    api.post_json(
        "/api/publish/batch",
        &json!({"messages": [{"topic": "t", "data": 1}, {"topic": "t"}]}),
    )
    .await;
    api.post_json("/api/broadcast", &json!({"topics": ["t", "u"], "data": 1}))
        .await;
    api.post_json("/api/broadcast", &json!({"topics": ["t", "t"], "data": 1}))
        .await;
    api.post("/api/topics/t/publish", "text/plain", b"hi").await;
    api.get("/api/node").await;
    api.get("/api/topics?limit=1").await;
    api.get("/api/topics/t").await;
    api.post_json("/api/publish", &json!({"topic": "h.a", "data": {"x": 1}}))
        .await;
    api.post("/api/topics/h.a/publish", "application/octet-stream", &[1, 2])
        .await;
    let page = api.get("/api/topics/h.a/history?since=0&limit=10").await;
    assert_eq!(
        page.json()["messages"].as_array().map(Vec::len),
        Some(2),
        "{}",
        page.text()
    );
    api.get("/api/topics/h.a").await;
    assert_eq!(api.get("/api/topics/t/history").await.status, 404);
    assert_eq!(api.get("/api/topics/h.a/history?limit=0").await.status, 400);
    api.get("/api/connections").await;
    api.get(&format!("/api/connections/{id}")).await;
    api.post_json("/api/topics/nobody/disconnect", &json!({"code": 4000}))
        .await;
    api.post_json("/api/users/nobody/disconnect", &json!({"code": 4000}))
        .await;
    api.get("/metrics").await;
    api.get("/healthz").await;
    api.get("/readyz").await;

    // Errors.
    Api::new(&node).get("/api/node").await; // 401
    api.post_json("/api/publish", &json!({"topic": "t"})).await; // 400
    api.post("/api/publish", "text/plain", b"x").await; // 415
    api.post("/api/topics/t/publish", "text/plain", &[b'x'; 5000]).await; // 413
    api.get("/api/connections/99999").await; // 404
    api.call("GET", "/api/publish", &[], b"").await; // 405
    api.call("POST", "/healthz", &[], b"").await; // 405
    let addr = node.admin_addr();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 99999\r\n\r\n"
    );
    let r = send_raw(addr, &head, b"", WAIT).await.unwrap();
    common::openapi::check("POST", "/api/publish", &r);
    assert_eq!(r.status, 413);

    // Steering last: close the subscriber, then drain.
    api.post_json(
        &format!("/api/connections/{id}/close"),
        &json!({"code": 4000, "reason": "bye"}),
    )
    .await;
    api.call("POST", "/api/drain", &[], b"").await;
    api.get("/readyz").await; // 503 while draining
    node.shutdown().await;

    // relay_unavailable needs a cluster whose relay is down.
    let cluster = MemoryCluster::start(2).await.unwrap();
    cluster.hub.set_up(false);
    let api = Api::new(&cluster.nodes[0]);
    let r = api.post_json("/api/publish", &json!({"topic": "t", "data": 1})).await;
    assert_eq!(r.status, 503);
    let r = api
        .post("/api/topics/t/publish", "application/octet-stream", &[1, 2])
        .await;
    assert_eq!(r.status, 503);
    // The hub is down: the user disconnect is local only and says why.
    let r = api.post_json("/api/users/u/disconnect", &json!({})).await;
    assert_eq!((r.status, r.json()["relayed"].as_bool()), (200, Some(false)));
    assert!(r.json()["relay_error"].is_string(), "{}", r.text());
    cluster.shutdown().await;

    let checked = checked_so_far();
    let mut missing = Vec::new();
    for (template, ops) in spec()["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let success = checked
                .iter()
                .any(|(m, t, s)| m == method && t == template && (200..300).contains(s));
            if !success {
                missing.push(format!("{method} {template}"));
            }
        }
    }
    assert!(missing.is_empty(), "operations never exercised: {missing:?}");
    let statuses: BTreeSet<u16> = checked.iter().map(|(_, _, s)| *s).collect();
    for s in [200, 202, 207, 400, 401, 404, 405, 413, 415, 503] {
        assert!(statuses.contains(&s), "status {s} never checked");
    }
}
