//! How the admin API refuses: API keys (missing, wrong, right; probes stay open), bad
//! bodies, oversize bodies refused before they are read, unknown routes and wrong methods.
//! Every answer is also checked against docs/openapi.yaml.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, request, send_raw, Api, KEY};
use herald_testkit::node::TestNode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_api_route_but_not_the_probes() {
    let node = TestNode::start_with(|c| c.admin.api_keys = vec!["another-key-0123456789".into(), KEY.into()])
        .await
        .unwrap();
    let open = Api::new(&node);
    let authed = Api::with_key(&node, KEY);
    let wrong = Api::with_key(&node, "test-key-0123456789abcdeX");

    let r = open.post_json("/api/publish", &json!({"topic": "t", "data": 1})).await;
    assert_error(&r, 401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"herald\""));
    let r = wrong.post_json("/api/publish", &json!({"topic": "t", "data": 1})).await;
    assert_error(&r, 401, "unauthorized");
    assert!(r.header("www-authenticate").unwrap().contains("invalid_token"));
    let r = open
        .call("GET", "/api/node", &[("Authorization", "Basic dXNlcjpwYXNz")], b"")
        .await;
    assert_error(&r, 401, "unauthorized");
    // Unknown routes do not tell an unauthenticated caller what exists.
    assert_error(
        &request(node.admin_addr(), "GET", "/api/secret", &[], b"")
            .await
            .unwrap(),
        401,
        "unauthorized",
    );

    let r = authed
        .post_json("/api/publish", &json!({"topic": "t", "data": 1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(authed.get("/api/node").await.status, 200);
    assert_eq!(
        Api::with_key(&node, "another-key-0123456789")
            .get("/api/node")
            .await
            .status,
        200
    );
    for probe in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(open.get(probe).await.status, 200, "{probe} needs no key");
    }
    let auth_failures = node.metric("herald_http_requests_total{status=\"4xx\"}").await.unwrap();
    assert_eq!(auth_failures, 4.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_4xx_with_a_code() {
    let node = TestNode::start_with(|c| c.limits.max_message_bytes = 64).await.unwrap();
    let api = Api::new(&node);
    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        ("/api/publish", "application/json", b"{not json", 400, "invalid_json"),
        ("/api/publish", "application/json", b"", 400, "invalid_json"),
        ("/api/publish", "application/json", b"[1,2]", 400, "invalid_field"),
        (
            "/api/publish",
            "application/json",
            br#"{"data":1}"#,
            400,
            "missing_field",
        ),
        (
            "/api/publish",
            "application/json",
            br#"{"topic":"t"}"#,
            400,
            "missing_field",
        ),
        (
            "/api/publish",
            "application/json",
            br#"{"topic":["t"],"data":1}"#,
            400,
            "invalid_field",
        ),
        (
            "/api/publish",
            "application/json",
            br#"{"topic":"a*b","data":1}"#,
            400,
            "invalid_topic",
        ),
        (
            "/api/publish",
            "application/json",
            br#"{"topic":"","data":1}"#,
            400,
            "invalid_topic",
        ),
        (
            "/api/publish",
            "text/plain",
            br#"{"topic":"t","data":1}"#,
            415,
            "unsupported_media_type",
        ),
        (
            "/api/publish",
            "application/x-www-form-urlencoded",
            b"topic=t&data=1",
            415,
            "unsupported_media_type",
        ),
        (
            "/api/publish/batch",
            "application/json",
            br#"{"messages":{}}"#,
            400,
            "invalid_field",
        ),
        (
            "/api/broadcast",
            "application/json",
            br#"{"topics":"t","data":1}"#,
            400,
            "invalid_field",
        ),
        (
            "/api/connections/1/close",
            "application/json",
            br#"{"code":"x"}"#,
            400,
            "invalid_field",
        ),
    ];
    for (path, ct, body, status, code) in cases {
        let r = api.post(path, ct, body).await;
        assert_eq!(
            r.status,
            *status,
            "{path} {:?}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        assert_error(&r, *status, code);
    }
    // No Content-Type on a JSON endpoint is read as JSON.
    let r = api
        .call("POST", "/api/publish", &[], br#"{"topic":"t","data":1}"#)
        .await;
    assert_eq!(r.status, 200);
    // A message's data over limits.max_message_bytes.
    let big = json!({"topic": "t", "data": "x".repeat(100)});
    assert_error(&api.post_json("/api/publish", &big).await, 413, "message_too_large");
    assert_error(
        &api.post("/api/topics/t/publish", "text/plain", &[b'x'; 65]).await,
        413,
        "body_too_large",
    );
    assert_eq!(
        api.post("/api/topics/t/publish", "text/plain", &[b'x'; 64])
            .await
            .status,
        200
    );
    // Paging parameters.
    assert_error(&api.get("/api/topics?limit=0").await, 400, "invalid_parameter");
    assert_error(&api.get("/api/topics?limit=5000").await, 400, "invalid_parameter");
    assert_error(&api.get("/api/connections?cursor=abc").await, 400, "invalid_parameter");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_are_refused_before_they_are_read() {
    let node = TestNode::start_with(|c| c.admin.max_body_bytes = 1024).await.unwrap();
    let addr = node.admin_addr();
    // A Content-Length over the limit and no body at all: the answer must come at once.
    let started = Instant::now();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    );
    let r = send_raw(addr, &head, b"", Duration::from_secs(2)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );
    assert_error(&r, 413, "body_too_large");
    assert_eq!(r.header("connection"), Some("close"));
    common::openapi::check("POST", "/api/publish", &r);

    // The same with curl's `Expect: 100-continue`: 413 instead of 100.
    let head = format!(
        "POST /api/publish/batch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    );
    let r = send_raw(addr, &head, b"", Duration::from_secs(2)).await.unwrap();
    assert_error(&r, 413, "body_too_large");

    // Chunked, so no Content-Length: cut off while streaming.
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = format!("800\r\n{}\r\n", "x".repeat(0x800));
    let r = send_raw(addr, &head, chunk.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap();
    assert_error(&r, 413, "body_too_large");

    // Exactly at the limit is fine.
    let data = "y".repeat(1024 - r#"{"topic":"t","data":""}"#.len());
    let body = json!({"topic": "t", "data": data}).to_string();
    assert_eq!(body.len(), 1024);
    let r = Api::new(&node)
        .post("/api/publish", "application/json", body.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The node still serves.
    assert_eq!(Api::new(&node).get("/api/node").await.status, 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_404_and_wrong_methods_405_with_allow() {
    let node = TestNode::start().await.unwrap();
    let api = Api::new(&node);
    for path in ["/api/nope", "/api", "/api/node/", "/nope", "/api/connections/abc"] {
        assert_error(&api.get(path).await, 404, "not_found");
    }
    let cases = [
        ("GET", "/api/publish", "POST"),
        ("DELETE", "/api/publish/batch", "POST"),
        ("PUT", "/api/node", "GET, HEAD"),
        ("POST", "/api/topics", "GET, HEAD"),
        ("POST", "/api/topics/a", "GET, HEAD"),
        ("GET", "/api/topics/a/publish", "POST"),
        ("GET", "/api/drain", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
        ("DELETE", "/readyz", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let r = api.call(method, path, &[], b"").await;
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    let head = api.call("HEAD", "/api/node", &[], b"").await;
    assert_eq!(head.status, 200);
    node.shutdown().await;
}
