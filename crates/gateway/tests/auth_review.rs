//! Regressions of a security review of identity handling (each failed before its fix):
//!
//! - an `auth` (or `refresh`) op without an `id` moves the expiry, but nothing wakes the
//!   writer to re-arm its timer: the `token_expired` notice and the close 1008 come only
//!   at the writer's next heartbeat wake-up (up to `heartbeat.ping_interval_ms` late);
//! - with a key configured and nothing allowed to anonymous connections, an
//!   unauthenticated connection that only pings outlives the first-message deadline and
//!   holds its slot for as long as it keeps pinging;
//! - an `Authorization` header with another scheme (a proxy's `Basic`) makes the upgrade
//!   401 even with a valid `?token=`.

mod auth_support;

use std::time::{Duration, Instant};

use auth_support::*;
use herald_testkit::node::TestNode;
use serde_json::json;

const GRACE_MS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_op_without_id_arms_the_expiry_timer_at_once() {
    let node = TestNode::start_with(|c| {
        hs_node(c);
        c.auth.anonymous_subscribe = vec!["public.>".into()];
        c.auth.expiry_notice_ms = 1500;
        c.auth.expiry_grace_ms = GRACE_MS;
        // A slow heartbeat makes the missed re-arm visible.
        c.heartbeat.ping_interval_ms = 8_000;
        c.heartbeat.idle_timeout_ms = 20_000;
    })
    .await
    .unwrap();
    let mut c = ws(node.ws_addr(), "/ws", &[]).await;
    let exp_ms = (now_ms() / 1000 + 2) * 1000;
    let token = hs(&json!({"sub": "alice", "exp": exp_ms / 1000, "subscribe": [">"]}));
    // No `id`: no ack is queued, so nothing goes through the outbox.
    send(&mut c, json!({"op":"auth","token":token})).await;
    let sent = Instant::now();
    let f = c.read_frame(Duration::from_secs(10)).await.unwrap();
    let first = sent.elapsed();
    assert!(
        f.close().is_none(),
        "first frame {first:?} after the auth op (expiry + grace was {} ms away) is the close, \
         with no token_expired notice before it: {f:?}",
        (exp_ms + GRACE_MS).saturating_sub(now_ms() - first.as_millis() as u64)
    );
    assert!(
        first < Duration::from_millis(1000),
        "token_expired notice (due at once) arrived {first:?} after the auth op"
    );
    let (code, reason) = c.expect_close(Duration::from_secs(10)).await.unwrap();
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    let late = now_ms().saturating_sub(exp_ms + GRACE_MS);
    assert!(late < 1000, "closed {late} ms after expiry + grace");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_connection_that_may_do_nothing_cannot_hold_a_slot_by_pinging() {
    let node = TestNode::start_with(|c| {
        hs_node(c);
        // Key configured, no anonymous_* lists: anonymous connections may do nothing.
        c.limits.first_message_timeout_ms = 500;
    })
    .await
    .unwrap();
    let mut c = ws(node.ws_addr(), "/ws", &[]).await;
    assert_eq!(ask(&mut c, json!({"op":"ping","id":1})).await["type"], "pong");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Expected: closed 1008 for not authenticating within the deadline. Actual: still up.
    send(&mut c, json!({"op":"ping","id":2})).await;
    if let Ok(t) = c.read_text(Duration::from_secs(1)).await {
        panic!("an anonymous connection allowed nothing is still served past the deadline: {t}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basic_authorization_header_does_not_hide_a_valid_query_token() {
    let node = TestNode::start_with(hs_node).await.unwrap();
    let token = hs(&claims("alice", 300, json!({"subscribe": [">"]})));
    // e.g. a reverse proxy protected by basic auth forwards its Authorization header.
    let r = try_ws(
        node.ws_addr(),
        &format!("/ws?topics=t&token={token}"),
        &[("Authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    if let Err(r) = r {
        panic!("refused with {}: {}", r.status, r.body);
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_expiry_a_connection_may_only_refresh() {
    let node = TestNode::start_with(|c| {
        hs_node(c);
        c.auth.jwt_leeway_ms = 0;
        c.auth.expiry_notice_ms = 100;
        c.auth.expiry_grace_ms = 5_000;
    })
    .await
    .unwrap();
    let exp_s = now_ms() / 1000 + 2;
    let token = hs(&json!({"sub": "alice", "exp": exp_s, "subscribe": [">"], "publish": [">"]}));
    let mut c = ws(node.ws_addr(), "/ws", &[]).await;
    assert_eq!(
        ask(&mut c, json!({"op":"auth","token":token,"id":1})).await["type"],
        "ack"
    );
    assert_eq!(
        ask(&mut c, json!({"op":"subscribe","topics":["a"],"id":2})).await["type"],
        "ack"
    );
    // Past the expiry, inside the grace: the notice came, and new requests are refused.
    while now_ms() < exp_s * 1000 + 50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut refused = 0;
    send(&mut c, json!({"op":"publish","topic":"a","data":1,"id":3})).await;
    send(&mut c, json!({"op":"subscribe","topics":["b"],"id":4})).await;
    while refused < 2 {
        let v = json_frame(&mut c).await;
        if v["code"] == "token_expired" && v["id"].is_number() {
            refused += 1;
        } else {
            assert!(v["code"] == "token_expired" && v["id"].is_null(), "unexpected {v}");
        }
    }
    // A refresh brings it back.
    let fresh = hs(&json!({"sub": "alice", "exp": now_ms() / 1000 + 60, "subscribe": [">"], "publish": [">"]}));
    assert_eq!(
        ask(&mut c, json!({"op":"refresh","token":fresh,"id":5})).await["type"],
        "ack"
    );
    assert_eq!(
        ask(&mut c, json!({"op":"subscribe","topics":["b"],"id":6})).await["type"],
        "ack"
    );
    node.shutdown().await;
}
