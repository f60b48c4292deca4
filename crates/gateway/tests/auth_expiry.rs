//! Token expiry over real sockets: the `token_expired` notice before the expiry, the close
//! 1008 "token expired" at expiry plus grace without a refresh, a refresh before expiry
//! that keeps the connection and whose narrower permissions drop held subscriptions (each
//! with a `forbidden` error naming it), and the terminal refusals of a refresh: another
//! user, a bad token, an already expired token.

mod auth_support;

use std::time::{Duration, Instant};

use auth_support::*;
use herald_testkit::node::TestNode;
use serde_json::json;

const NOTICE_MS: u64 = 1500;
const GRACE_MS: u64 = 300;

async fn node() -> TestNode {
    TestNode::start_with(|c| {
        hs_node(c);
        c.auth.expiry_notice_ms = NOTICE_MS;
        c.auth.expiry_grace_ms = GRACE_MS;
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_refresh_the_connection_closes_at_expiry_plus_grace() {
    let node = node().await;
    let exp_s = now_s() + 2;
    let token = hs(&json!({"sub": "alice", "exp": exp_s, "subscribe": [">"]}));
    let mut c = ws(node.ws_addr(), &format!("/ws?topics=t&token={token}"), &[]).await;
    let notice = json_frame(&mut c).await;
    assert_eq!(
        (notice["type"].as_str(), notice["code"].as_str()),
        (Some("error"), Some("token_expired")),
        "{notice}"
    );
    assert!(notice.get("id").is_none());
    assert!(now_ms() + NOTICE_MS + 100 >= exp_s * 1000, "the notice came early");
    let (code, reason) = c.expect_close(Duration::from_secs(5)).await.unwrap();
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    let at = now_ms();
    assert!(
        at >= exp_s * 1000 + GRACE_MS,
        "closed {} ms before expiry + grace",
        exp_s * 1000 + GRACE_MS - at
    );
    assert!(at <= exp_s * 1000 + GRACE_MS + 1000, "closed late");
    node.metric_reaches("herald_connections_closed_total{reason=\"token_expired\"}", 1.0)
        .await
        .unwrap();
    assert_eq!(
        node.metric("herald_client_errors_total{code=\"token_expired\"}")
            .await
            .unwrap(),
        1.0
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_before_expiry_keeps_the_connection_and_its_permissions_follow() {
    let node = node().await;
    let exp_s = now_s() + 2;
    let first = hs(&json!({"sub": "alice", "exp": exp_s, "subscribe": ["a.*", "b.*"]}));
    let mut c = ws(
        node.ws_addr(),
        "/ws?topics=a.x,b.x",
        &[("Authorization", &format!("Bearer {first}"))],
    )
    .await;
    let notice = json_frame(&mut c).await;
    assert_eq!(notice["code"], "token_expired", "{notice}");

    // The new token allows only a.*: b.x is dropped, with a forbidden error naming it.
    let second = hs(&claims("alice", 120, json!({"subscribe": ["a.*"]})));
    send(&mut c, json!({"op":"refresh","token":second,"id":"r1"})).await;
    let dropped = json_frame(&mut c).await;
    assert_eq!(dropped["code"], "forbidden", "{dropped}");
    assert_eq!(dropped["topic"], "b.x", "{dropped}");
    assert!(dropped.get("id").is_none(), "{dropped}");
    assert!(dropped["message"].as_str().unwrap().contains("\"b.x\""), "{dropped}");
    assert_eq!(json_frame(&mut c).await, json!({"type":"ack","id":"r1"}));

    // Past the old expiry and grace: still open, and only a.x is delivered.
    let wait_until = exp_s * 1000 + GRACE_MS + 500;
    tokio::time::sleep(Duration::from_millis(wait_until.saturating_sub(now_ms()))).await;
    http_publish(&node, "b.x", json!("dropped")).await;
    http_publish(&node, "a.x", json!("kept")).await;
    let m = json_frame(&mut c).await;
    assert_eq!(
        (m["topic"].as_str(), m["data"].as_str()),
        (Some("a.x"), Some("kept")),
        "{m}"
    );
    assert_eq!(ask(&mut c, json!({"op":"ping","id":1})).await["type"], "pong");
    let err = ask(&mut c, json!({"op":"subscribe","topics":["b.y"],"id":2})).await;
    assert_eq!(err["code"], "forbidden");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_for_another_user_a_bad_or_an_expired_token_ends_the_connection() {
    let node = node().await;
    let alice = hs(&claims("alice", 120, json!({})));
    let cases = [
        // `auth` on an authenticated connection is a refresh: same rules.
        (
            "auth",
            hs(&claims("bob", 120, json!({}))),
            "unauthorized",
            "unauthorized: the new token is for another user",
        ),
        (
            "refresh",
            "x.y.z".to_owned(),
            "unauthorized",
            "unauthorized: token is malformed",
        ),
        (
            "refresh",
            hs(&claims("alice", -5, json!({}))),
            "token_expired",
            "token expired",
        ),
    ];
    for (op, token, code, reason) in cases {
        let mut c = ws(node.ws_addr(), &format!("/ws?token={alice}"), &[]).await;
        let err = ask(&mut c, json!({"op":op,"token":token,"id":9})).await;
        assert_eq!(
            (err["code"].as_str(), err["id"].as_i64()),
            (Some(code), Some(9)),
            "{op}: {err}"
        );
        let started = Instant::now();
        assert_eq!(c.expect_close(WAIT).await.unwrap(), (1008, reason.to_owned()), "{op}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(
        node.metric("herald_auth_failures_total{reason=\"subject_changed\"}")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        node.metric("herald_auth_failures_total{reason=\"expired\"}")
            .await
            .unwrap(),
        1.0
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_connection_gets_no_notice_and_is_closed_at_expiry_plus_grace() {
    let node = node().await;
    let exp_s = now_s() + 2;
    let token = hs(&json!({"sub": "alice", "exp": exp_s, "subscribe": [">"]}));
    let mut c = ws(node.ws_addr(), &format!("/raw/feed?token={token}"), &[]).await;
    // The first frame is the close: raw mode has no error frames.
    let f = c.read_frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!(f.close(), Some((1008, "token expired".into())), "{f:?}");
    assert!(now_ms() >= exp_s * 1000 + GRACE_MS);
    node.shutdown().await;
}
