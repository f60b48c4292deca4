//! Permissions over real sockets: the defaults (no key: open; a key: anonymous may do only
//! what `anonymous_*` allows), forbidden and allowed subscribes and publishes in JSON and
//! raw mode, by URL (HTTP 403 before the upgrade) and by op (error `forbidden` naming the
//! topic, nothing subscribed or published, counted), user-scoped topics (`user.{sub}.>`),
//! a token's own claims, and HTTP publishes that connection permissions do not govern.

mod auth_support;

use std::time::Duration;

use auth_support::*;
use herald_testkit::node::TestNode;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_anonymous_may_do_everything() {
    let node = TestNode::start().await.unwrap();
    let mut a = ws(node.ws_addr(), "/ws?topics=any.topic", &[]).await;
    let ack = ask(&mut a, json!({"op":"publish","topic":"any.topic","data":1,"id":1})).await;
    assert_eq!(ack, json!({"type":"ack","id":1}));
    let m = json_frame(&mut a).await;
    assert_eq!(m["topic"], "any.topic");
    let mut raw = ws(node.ws_addr(), "/raw/other", &[]).await;
    raw.send_text("hi").await.unwrap();
    assert_eq!(raw.read_text(WAIT).await.unwrap(), "hi");
    // No key: a token cannot be verified, so one is refused rather than ignored.
    let (status, body) = refused(
        node.ws_addr(),
        &format!("/ws?token={}", hs(&claims("u", 60, json!({})))),
        &[],
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_allowed_in_json_mode() {
    let node = TestNode::start_with(|c| {
        hs_node(c);
        c.auth.anonymous_subscribe = vec!["public.>".into()];
    })
    .await
    .unwrap();
    let addr = node.ws_addr();
    // By URL: one forbidden topic refuses the upgrade.
    let (status, body) = refused(addr, "/ws?topics=public.a,secret", &[]).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("\"secret\""), "{body}");

    let mut a = ws(addr, "/ws?topics=public.a", &[]).await;
    // By op: all or nothing, the refused topic named.
    let err = ask(&mut a, json!({"op":"subscribe","topics":["public.b","secret"],"id":1})).await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_i64()),
        (Some("forbidden"), Some(1)),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("subscribe \"secret\""),
        "{err}"
    );
    http_publish(&node, "public.b", json!("not subscribed")).await;
    http_publish(&node, "public.a", json!("subscribed")).await;
    // HTTP publishes are not subject to connection permissions: this one arrives.
    let m = json_frame(&mut a).await;
    assert_eq!(
        (m["topic"].as_str(), m["data"].as_str()),
        (Some("public.a"), Some("subscribed")),
        "{m}"
    );
    // Anonymous may not publish: refused, named, and nobody gets it.
    let err = ask(&mut a, json!({"op":"publish","topic":"public.a","data":1,"id":2})).await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_i64()),
        (Some("forbidden"), Some(2)),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("publish \"public.a\""),
        "{err}"
    );
    send(&mut a, json!({"op":"publish","topic":"public.a","data":2})).await;
    let err = json_frame(&mut a).await;
    assert_eq!(err["code"], "forbidden", "a publish without an id is refused too");
    assert!(a.read_text(QUIET).await.is_err(), "nothing was published");
    // The connection stays usable.
    assert_eq!(ask(&mut a, json!({"op":"ping","id":3})).await["type"], "pong");
    assert_eq!(
        node.metric("herald_forbidden_total{action=\"subscribe\"}")
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(
        node.metric("herald_forbidden_total{action=\"publish\"}").await.unwrap(),
        2.0
    );
    assert_eq!(
        node.metric("herald_messages_published_total{source=\"websocket\"}")
            .await
            .unwrap(),
        0.0
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_read_only_and_publishing() {
    let node = TestNode::start_with(|c| {
        hs_node(c);
        c.auth.anonymous_subscribe = vec!["feed.*".into()];
    })
    .await
    .unwrap();
    let addr = node.ws_addr();
    let (status, _) = refused(addr, "/raw/secret", &[]).await;
    assert_eq!(status, 403);
    // A read-only raw subscriber receives; a frame from it closes it with 1008.
    let mut reader = ws(addr, "/raw/feed.a", &[]).await;
    let writer_token = hs(&claims(
        "pub",
        300,
        json!({"publish": ["feed.*"], "subscribe": ["feed.*"]}),
    ));
    let mut writer = ws(addr, &format!("/raw/feed.a?token={writer_token}"), &[]).await;
    writer.send_text("tick").await.unwrap();
    assert_eq!(reader.read_text(WAIT).await.unwrap(), "tick");
    assert_eq!(writer.read_text(WAIT).await.unwrap(), "tick", "echo");
    reader.send_text("nope").await.unwrap();
    assert_eq!(
        reader.expect_close(WAIT).await.unwrap(),
        (1008, "publish not allowed".into())
    );
    assert!(
        writer.read_text(QUIET).await.is_err(),
        "the refused frame was not published"
    );
    node.metric_reaches("herald_connections_closed_total{reason=\"forbidden\"}", 1.0)
        .await
        .unwrap();
    assert_eq!(
        node.metric("herald_forbidden_total{action=\"publish\"}").await.unwrap(),
        1.0
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_scoped_topics_and_token_claims() {
    let node = TestNode::start_with(|c| {
        hs_node(c);
        c.auth.authenticated_subscribe = vec!["user.{sub}.>".into(), "lobby".into()];
        c.auth.authenticated_publish = vec!["user.{sub}.>".into()];
    })
    .await
    .unwrap();
    let addr = node.ws_addr();
    let alice = hs(&claims("alice", 300, json!({"subscribe": ["extra.*"]})));
    let bob = hs(&claims("bob", 300, json!({})));
    let bearer = |t: &str| format!("Bearer {t}");

    let mut a = ws(
        addr,
        "/ws?topics=user.alice.inbox,lobby,extra.x",
        &[("Authorization", &bearer(&alice))],
    )
    .await;
    let (status, body) = refused(addr, "/ws?topics=user.bob.inbox", &[("Authorization", &bearer(&alice))]).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = refused(addr, "/ws?topics=extra.x", &[("Authorization", &bearer(&bob))]).await;
    assert_eq!(status, 403, "alice's own claim is not bob's");
    let err = ask(&mut a, json!({"op":"subscribe","topics":["user.bob.inbox"],"id":1})).await;
    assert_eq!(err["code"], "forbidden");
    let err = ask(&mut a, json!({"op":"publish","topic":"user.bob.inbox","data":1,"id":2})).await;
    assert_eq!(err["code"], "forbidden");

    // Bob publishes to his own topic; alice publishes to hers and gets it.
    let mut b = ws(addr, "/ws?topics=user.bob.inbox", &[("Authorization", &bearer(&bob))]).await;
    let ack = ask(
        &mut b,
        json!({"op":"publish","topic":"user.bob.inbox","data":"b","id":1}),
    )
    .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(json_frame(&mut b).await["data"], "b");
    let ack = ask(
        &mut a,
        json!({"op":"publish","topic":"user.alice.inbox","data":"a","id":3}),
    )
    .await;
    assert_eq!(ack, json!({"type":"ack","id":3}));
    let m = json_frame(&mut a).await;
    assert_eq!(
        (m["topic"].as_str(), m["data"].as_str()),
        (Some("user.alice.inbox"), Some("a"))
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_judged_in_order_around_an_auth() {
    // Everything sent before reading anything: refusals and acks come back in request
    // order, and the `auth` in the middle applies to the requests after it only.
    let node = TestNode::start_with(|c| {
        hs_node(c);
        c.auth.anonymous_subscribe = vec!["public.>".into()];
    })
    .await
    .unwrap();
    let token = hs(&claims(
        "alice",
        60,
        json!({"subscribe": ["chat.>"], "publish": ["chat.>"]}),
    ));
    let mut c = ws(node.ws_addr(), "/ws", &[]).await;
    for req in [
        json!({"op":"publish","topic":"chat.a","data":1,"id":1}),
        json!({"op":"subscribe","topics":["chat.a"],"id":2}),
        json!({"op":"subscribe","topics":["public.a"],"id":3}),
        json!({"op":"auth","token":token,"id":4}),
        json!({"op":"subscribe","topics":["chat.a"],"id":5}),
        json!({"op":"publish","topic":"chat.a","data":2,"id":6}),
        json!({"op":"publish","topic":"public.a","data":3,"id":7}),
    ] {
        send(&mut c, req).await;
    }
    let mut answers = Vec::new();
    while answers.len() < 8 {
        let v = json_frame(&mut c).await;
        if v["type"] == "message" {
            assert_eq!(
                (v["topic"].as_str(), v["data"].as_i64()),
                (Some("chat.a"), Some(2)),
                "{v}"
            );
            continue;
        }
        // No `id`: the anonymous subscription the token's permissions drop, told first.
        answers.push((
            v["id"].as_i64().unwrap_or(0),
            v["code"].as_str().unwrap_or("ack").to_owned(),
        ));
    }
    let want = [
        (1, "forbidden"),
        (2, "forbidden"),
        (3, "ack"),
        (0, "forbidden"),
        (4, "ack"),
        (5, "ack"),
        (6, "ack"),
        // The token's permissions replace the anonymous ones: no `public.>` publish.
        (7, "forbidden"),
    ];
    let got: Vec<(i64, &str)> = answers.iter().map(|(i, c)| (*i, c.as_str())).collect();
    assert_eq!(got, want);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_tokens_are_refused_before_the_upgrade() {
    let node = TestNode::start_with(hs_node).await.unwrap();
    let addr = node.ws_addr();
    let huge = format!("{}.{}.{}", "a".repeat(8 * 1024), "b".repeat(8 * 1024), "c");
    for token in [huge.as_str(), "....", "a.b.c", "%00"] {
        let (status, body) = refused(addr, &format!("/ws?token={token}"), &[]).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{token:.40}: {body}"
        );
        assert!(!body.to_string().contains("aaaaaaaa"), "the token is not echoed");
    }
    // The node still serves a good token afterwards.
    let good = hs(&claims("bob", 60, json!({"subscribe": ["x"]})));
    let _c = ws(addr, &format!("/ws?topics=x&token={good}"), &[]).await;
    node.shutdown().await;
}
