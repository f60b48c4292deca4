//! The generator's tokens on the wire: a plain TCP listener stands in for a node, captures
//! each upgrade request and answers 401, and the captured tokens are verified with
//! `herald-auth` (signature, `sub`, the topics each client needs).

use std::time::Duration;

use herald_auth::{KeyConfig, Verifier};
use herald_loadtest::{run, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "0123456789abcdef0123456789abcdef-loadtest";

/// Accepts `n` connections and returns the head of each request.
async fn capture(listener: TcpListener, n: usize) -> Vec<String> {
    let mut heads = Vec::new();
    for _ in 0..n {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let k = s.read(&mut chunk).await.unwrap();
            assert!(k > 0, "client closed before its request head");
            buf.extend_from_slice(&chunk[..k]);
        }
        s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        heads.push(String::from_utf8(buf).unwrap());
    }
    heads
}

async fn tokens_of(extra: &[&str], find: fn(&str) -> Option<String>) -> Vec<herald_auth::Claims> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(capture(listener, 2));
    let mut argv = vec![
        "herald-loadtest",
        "idle",
        "--url",
        &url,
        "-s",
        "2",
        "-t",
        "2",
        "--topic-prefix",
        "jt.",
        "-d",
        "100ms",
        "--settle",
        "0s",
        "--quiet",
        "--jwt-secret",
        SECRET,
    ];
    argv.extend_from_slice(extra);
    let cfg = Config::from_args(argv).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), run(cfg, Default::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        report.connections.failed.get("http 401").copied(),
        Some(2),
        "{:?}",
        report.connections.failed
    );
    let heads = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    let v = Verifier::new(KeyConfig {
        hs_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap();
    let mut claims: Vec<_> = heads
        .iter()
        .map(|h| {
            v.verify(&find(h).expect("a token in the request"))
                .expect("a valid token")
        })
        .collect();
    claims.sort_by(|a, b| a.sub.cmp(&b.sub));
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_the_authorization_header() {
    let claims = tokens_of(&["--jwt-sub-prefix", "bench-"], |h| {
        h.lines()
            .find_map(|l| l.strip_prefix("Authorization: Bearer "))
            .map(str::to_owned)
    })
    .await;
    assert_eq!(claims[0].sub, "bench-s0");
    assert_eq!(claims[1].sub, "bench-s1");
    for c in &claims {
        assert_eq!(c.subscribe.len(), 1);
        assert!(c.subscribe[0].starts_with("jt."), "{:?}", c.subscribe);
        assert!(c.exp_ms.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_the_query() {
    let claims = tokens_of(&["--jwt-via", "query", "--jwt-claims", r#"{"publish":["x.y"]}"#], |h| {
        let target = h.lines().next()?.split(' ').nth(1)?;
        target
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_owned)
    })
    .await;
    assert_eq!(claims[0].sub, "lt-s0");
    assert_eq!(claims[0].publish, vec!["x.y".to_string()]);
}
