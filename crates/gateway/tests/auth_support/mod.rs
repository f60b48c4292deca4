//! Shared by the `auth_*` test binaries: tokens minted with `jsonwebtoken` from the
//! `herald-auth` fixtures (`crates/auth/tests/fixtures`, openssl-generated test keys), node
//! configurations with each kind of key, and small WebSocket helpers over the raw test peer
//! (exact close codes and error frames).

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_gateway::Config;
use herald_testkit::wire::{Refused, WireClient};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(5);

/// The HS secret the nodes of these tests trust (at least 32 bytes).
pub const SECRET: &str = "0123456789abcdef0123456789abcdef-herald-gw";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../auth/tests/fixtures")
        .join(name)
}

pub fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Publishes `data` to `topic` through the node's admin API (not subject to connection
/// permissions) and expects 200.
pub async fn http_publish(node: &herald_testkit::node::TestNode, topic: &str, data: Value) {
    let body = json!({"topic": topic, "data": data}).to_string();
    let (status, _) = herald_testkit::node::http_request(
        node.admin_addr(),
        "POST",
        "/api/publish",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
}

/// Claims for `sub`, valid for `ttl_s` seconds, with extra members from `extra`.
pub fn claims(sub: &str, ttl_s: i64, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "exp": (now_s() as i64 + ttl_s)});
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

pub fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, key).unwrap()
}

/// An HS256 token with [`SECRET`].
pub fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        claims,
    )
}

/// A token signed with a fixture's private key (`rsa1`, `rsa2`, `ec1`).
pub fn with_key(alg: Algorithm, key: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(fixture(&format!("{key}.key"))).unwrap();
    let k = if key.starts_with("ec") {
        EncodingKey::from_ec_pem(&pem).unwrap()
    } else {
        EncodingKey::from_rsa_pem(&pem).unwrap()
    };
    sign(alg, kid, &k, claims)
}

/// A node trusting [`SECRET`], with no leeway (tests control time to the second).
pub fn hs_node(c: &mut Config) {
    c.auth.jwt_hs256_secret = SECRET.into();
    c.auth.jwt_leeway_ms = 0;
}

/// Connects to `path` with optional extra headers.
pub async fn try_ws(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<WireClient, Refused> {
    WireClient::try_connect_with(addr, path, headers).await.unwrap()
}

/// Connects, expecting a 101; on `/ws` reads the welcome.
pub async fn ws(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> WireClient {
    let mut c = match try_ws(addr, path, headers).await {
        Ok(c) => c,
        Err(r) => panic!("{path}: refused with {}: {}", r.status, r.body),
    };
    if path.starts_with("/ws") {
        let w = json_frame(&mut c).await;
        assert_eq!(w["type"], "welcome", "{w}");
    }
    c
}

/// The refusal of an upgrade that must not succeed: status and parsed body.
pub async fn refused(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    match try_ws(addr, path, headers).await {
        Ok(_) => panic!("{path}: upgraded, expected a refusal"),
        Err(r) => (
            r.status,
            serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("not JSON: {}", r.body)),
        ),
    }
}

/// The next text frame as JSON (skipping pings).
pub async fn json_frame(c: &mut WireClient) -> Value {
    let t = c.read_text(WAIT).await.unwrap();
    serde_json::from_str(&t).unwrap()
}

/// Sends a request object.
pub async fn send(c: &mut WireClient, v: Value) {
    c.send_text(&v.to_string()).await.unwrap();
}

/// Sends a request and returns the next frame (its answer).
pub async fn ask(c: &mut WireClient, v: Value) -> Value {
    send(c, v).await;
    json_frame(c).await
}
