//! Tokens over real sockets: every token source (`Authorization: Bearer`, `?token=`, the
//! `auth` op) on `/ws` and `/raw/{topic}`; HS256, RS256, ES256 and JWKS keys; the refusals
//! (expired, not yet valid, wrong issuer, wrong audience, bad signature, `alg: none`,
//! HS/RS key confusion) as HTTP 401 before the upgrade, or as an `unauthorized` error and
//! close 1008 in the `auth` op; a JWKS file rotated while the node runs; the failure
//! metrics.

mod auth_support;

use std::time::{Duration, Instant};

use auth_support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_testkit::node::{http_request, TestNode};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

fn chat_for_tokens(c: &mut herald_gateway::Config) {
    hs_node(c);
    c.auth.authenticated_subscribe = vec!["chat.>".into()];
    c.auth.authenticated_publish = vec!["chat.>".into()];
}

async fn api_get(node: &TestNode, path: &str) -> Value {
    let (status, body) = http_request(node.admin_addr(), "GET", path, &[], b"").await.unwrap();
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_source_on_ws_and_raw() {
    let node = TestNode::start_with(chat_for_tokens).await.unwrap();
    let addr = node.ws_addr();
    let token = hs(&claims("alice", 300, json!({})));
    let bearer = format!("Bearer {token}");

    // Header and query parameter, on /ws and /raw.
    let mut a = ws(addr, "/ws?topics=chat.a", &[("Authorization", &bearer)]).await;
    let _b = ws(addr, &format!("/ws?topics=chat.b&token={token}"), &[]).await;
    let _c = ws(addr, "/raw/chat.c", &[("authorization", &format!("bearer {token}"))]).await;
    let _d = ws(addr, &format!("/raw/chat.d?token={token}"), &[]).await;
    let list = api_get(&node, "/api/connections").await;
    let users: Vec<Value> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].clone())
        .collect();
    assert_eq!(users, vec![json!("alice"); 4], "{list}");
    let one = list["connections"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api_get(&node, &format!("/api/connections/{one}")).await["user"],
        "alice"
    );

    // The token is the user's: publish where allowed.
    let ack = ask(&mut a, json!({"op":"publish","topic":"chat.a","data":1,"id":1})).await;
    assert_eq!(ack, json!({"type":"ack","id":1}));

    // Without a token (a key is configured): anonymous may do nothing.
    let (status, body) = refused(addr, "/ws?topics=chat.a", &[]).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, body) = refused(addr, "/raw/chat.a", &[]).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");

    // The auth op: anonymous until it arrives, then the user's.
    let mut e = ws(addr, "/ws", &[]).await;
    let list = api_get(&node, "/api/connections?limit=100").await;
    let anon = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["user"].is_null())
        .count();
    assert_eq!(anon, 1, "the new connection shows user null: {list}");
    let err = ask(&mut e, json!({"op":"subscribe","topics":["chat.e"],"id":1})).await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_i64()),
        (Some("forbidden"), Some(1)),
        "{err}"
    );
    assert!(err["message"].as_str().unwrap().contains("chat.e"), "{err}");
    let ack = ask(&mut e, json!({"op":"auth","token":token,"id":"t"})).await;
    assert_eq!(ack, json!({"type":"ack","id":"t"}));
    let ack = ask(&mut e, json!({"op":"subscribe","topics":["chat.e"],"id":2})).await;
    assert_eq!(ack, json!({"type":"ack","id":2}));
    let list = api_get(&node, "/api/connections?limit=100").await;
    assert!(
        list["connections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["user"] == "alice"),
        "{list}"
    );

    // Another scheme is not ours: ignored, so the connection is anonymous, or the user of
    // its `?token=`.
    let mut basic = ws(addr, "/ws", &[("Authorization", "Basic abc")]).await;
    let err = ask(&mut basic, json!({"op":"subscribe","topics":["chat.x"],"id":1})).await;
    assert_eq!(err["code"], "forbidden", "anonymous: {err}");
    let mut basic = ws(addr, &format!("/ws?token={token}"), &[("Authorization", "Basic abc")]).await;
    let ack = ask(&mut basic, json!({"op":"subscribe","topics":["chat.x"],"id":1})).await;
    assert_eq!(ack, json!({"type":"ack","id":1}), "the ?token= counts");

    // Unusable header or parameter.
    for (path, headers) in [
        ("/ws", vec![("Authorization", "Bearer ")]),
        ("/ws", vec![("Authorization", "Bearerx.y.z")]),
        ("/ws?token=", vec![]),
        ("/ws?token=not-a-jwt", vec![]),
    ] {
        let (status, body) = refused(addr, path, &headers).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}: {body}"
        );
    }
    assert!(
        node.metric("herald_connections_rejected_total{reason=\"unauthorized\"}")
            .await
            .unwrap()
            >= 4.0
    );
    assert!(
        node.metric("herald_connections_rejected_total{reason=\"forbidden\"}")
            .await
            .unwrap()
            >= 2.0
    );
    assert!(
        node.metric("herald_auth_failures_total{reason=\"malformed\"}")
            .await
            .unwrap()
            >= 1.0
    );
    node.shutdown().await;
}

/// A node with `adjust`ed keys accepts `good` and refuses each of `bad` with 401 whose
/// message names the reason.
async fn accepts_and_refuses(
    adjust: impl FnOnce(&mut herald_gateway::Config),
    good: &[String],
    bad: &[(&str, String)],
) {
    let node = TestNode::start_with(|c| {
        adjust(c);
        c.auth.authenticated_subscribe = vec![">".into()];
    })
    .await
    .unwrap();
    for t in good {
        let _c = ws(node.ws_addr(), &format!("/ws?topics=x&token={t}"), &[]).await;
    }
    for (why, t) in bad {
        let (status, body) = refused(node.ws_addr(), "/ws", &[("Authorization", &format!("Bearer {t}"))]).await;
        assert_eq!(status, 401, "{why}: {body}");
        assert_eq!(body["code"], "unauthorized", "{why}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{why}: {message}");
    }
    node.shutdown().await;
}

fn unsigned(header: &str, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_refusals_before_the_upgrade() {
    let ok = claims("u", 300, json!({"iss": "issuer-a", "aud": "herald"}));
    let with = |extra: Value| {
        let mut c = ok.clone();
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let other_secret = EncodingKey::from_secret(b"another-secret-another-secret-0123456789").unwrap();
    let bad = vec![
        ("expired", hs(&with(json!({"exp": now_s() - 10})))),
        ("not valid yet", hs(&with(json!({"nbf": now_s() + 300})))),
        ("issuer", hs(&with(json!({"iss": "issuer-b"})))),
        ("audience", hs(&with(json!({"aud": "someone-else"})))),
        ("signature", sign(Algorithm::HS256, None, &other_secret, &ok)),
        ("algorithm", unsigned(r#"{"alg":"none","typ":"JWT"}"#, &ok)),
        (
            "subject",
            hs(&json!({"exp": now_s() + 300, "iss": "issuer-a", "aud": "herald"})),
        ),
    ];
    accepts_and_refuses(
        |c| {
            hs_node(c);
            c.auth.jwt_issuer = "issuer-a".into();
            c.auth.jwt_audience = "herald".into();
        },
        &[hs(&ok)],
        &bad,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_jwks_keys_and_no_key_confusion() {
    let c = claims("u", 300, json!({}));
    // RS256 from a PEM public key; an HS256 token "signed" with that public key's bytes is
    // refused (the HS/RS confusion), and so is a token of another RSA key.
    let pem = std::fs::read(fixture("rsa1.pub.pem")).unwrap();
    let confused = sign(Algorithm::HS256, None, &EncodingKey::from_secret(&pem).unwrap(), &c);
    accepts_and_refuses(
        |cfg| cfg.auth.jwt_public_key_file = fixture("rsa1.pub.pem").display().to_string(),
        &[with_key(Algorithm::RS256, "rsa1", None, &c)],
        &[
            ("algorithm", confused),
            ("signature", with_key(Algorithm::RS256, "rsa2", None, &c)),
            ("algorithm", with_key(Algorithm::ES256, "ec1", None, &c)),
        ],
    )
    .await;
    // ES256 from a PEM public key.
    accepts_and_refuses(
        |cfg| cfg.auth.jwt_public_key_file = fixture("ec1.pub.pem").display().to_string(),
        &[with_key(Algorithm::ES256, "ec1", None, &c)],
        &[("algorithm", with_key(Algorithm::RS256, "rsa1", None, &c))],
    )
    .await;
    // A JWKS: keys picked by kid, RSA and EC.
    accepts_and_refuses(
        |cfg| cfg.auth.jwt_jwks_file = fixture("jwks.json").display().to_string(),
        &[
            with_key(Algorithm::RS256, "rsa1", Some("rsa1"), &c),
            with_key(Algorithm::RS256, "rsa2", Some("rsa2"), &c),
            with_key(Algorithm::ES256, "ec1", Some("ec1"), &c),
        ],
        &[
            ("signature", with_key(Algorithm::RS256, "rsa2", Some("rsa1"), &c)),
            ("algorithm", hs(&c)),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_in_the_auth_op_closes_1008() {
    let node = TestNode::start_with(chat_for_tokens).await.unwrap();
    let mut c = ws(node.ws_addr(), "/ws", &[]).await;
    let expired = hs(&claims("alice", -30, json!({})));
    let err = ask(&mut c, json!({"op":"auth","token":expired,"id":7})).await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str(), err["id"].as_i64()),
        (Some("error"), Some("unauthorized"), Some(7)),
        "{err}"
    );
    assert_eq!(
        c.expect_close(WAIT).await.unwrap(),
        (1008, "unauthorized: token has expired".into())
    );
    // A malformed `auth` request is an ordinary error; the connection stays.
    let mut d = ws(node.ws_addr(), "/ws", &[]).await;
    let err = ask(&mut d, json!({"op":"auth","id":1})).await;
    assert_eq!(err["code"], "missing_field");
    let err = ask(&mut d, json!({"op":"auth","token":"x.y.z","id":2})).await;
    assert_eq!(err["code"], "unauthorized");
    assert_eq!(d.expect_close(WAIT).await.unwrap().0, 1008);
    assert_eq!(
        node.metric("herald_auth_failures_total{reason=\"expired\"}")
            .await
            .unwrap(),
        1.0
    );
    node.metric_reaches("herald_connections_closed_total{reason=\"unauthorized\"}", 2.0)
        .await
        .unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_key_rotated_while_the_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::copy(fixture("jwks-rsa2.json"), &jwks).unwrap();
    let path = jwks.display().to_string();
    let node = TestNode::start_with(|c| {
        c.auth.jwt_jwks_file = path;
        c.auth.key_reload_interval_ms = 50;
        c.auth.anonymous_subscribe = vec![];
        c.auth.authenticated_subscribe = vec![">".into()];
    })
    .await
    .unwrap();
    let c = claims("u", 300, json!({}));
    let rsa1 = with_key(Algorithm::RS256, "rsa1", Some("rsa1"), &c);
    let rsa2 = with_key(Algorithm::RS256, "rsa2", Some("rsa2"), &c);
    let accepted = |t: String| {
        let addr = node.ws_addr();
        async move { try_ws(addr, &format!("/ws?token={t}"), &[]).await.is_ok() }
    };
    assert!(accepted(rsa2.clone()).await);
    assert!(!accepted(rsa1.clone()).await, "rsa1 is not in the file yet");

    // The file gains rsa1: accepted within a few reload intervals, without a restart.
    std::fs::copy(fixture("jwks.json"), &jwks).unwrap();
    let deadline = Instant::now() + WAIT;
    while !accepted(rsa1.clone()).await {
        assert!(Instant::now() < deadline, "rsa1 never accepted after the rotation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted(rsa2.clone()).await);
    assert!(
        node.metric("herald_auth_key_reloads_total{outcome=\"reloaded\"}")
            .await
            .unwrap()
            >= 1.0
    );

    // An invalid file keeps the old keys, and the failure is counted.
    std::fs::write(&jwks, "{ not json").unwrap();
    node.metric_reaches("herald_auth_key_reloads_total{outcome=\"failed\"}", 1.0)
        .await
        .unwrap();
    assert!(accepted(rsa1.clone()).await, "the previous keys stay in use");

    // rsa1 is retired: refused again.
    std::fs::copy(fixture("jwks-rsa2.json"), &jwks).unwrap();
    let deadline = Instant::now() + WAIT;
    while accepted(rsa1.clone()).await {
        assert!(Instant::now() < deadline, "rsa1 still accepted after its removal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted(rsa2).await);
    node.shutdown().await;
}
