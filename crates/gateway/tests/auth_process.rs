//! The `herald` binary's side of identity: the start-up warning when no JWT key is
//! configured, SIGHUP reloading a rotated JWKS at once (the periodic check is set to an
//! hour, so only the signal can explain the change), and a bad `[auth]` configuration
//! refused at start with exit status 64.

mod auth_support;

use std::time::{Duration, Instant};

use auth_support::*;
use herald_testkit::fleet::{signal, HeraldProcess, NodeSpec, TempDir};
use jsonwebtoken::Algorithm;
use serde_json::json;

fn bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_herald").into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_is_announced_and_sighup_reloads_the_keys() {
    let dir = TempDir::new("auth-process").unwrap();
    let open = HeraldProcess::start(&bin(), NodeSpec::new("open", &[]).unwrap(), &dir)
        .await
        .unwrap();
    assert!(
        open.log_text().contains("the public listener is open to anyone"),
        "{}",
        open.log_text()
    );
    open.terminate().unwrap();

    let jwks = dir.join("jwks.json");
    std::fs::copy(fixture("jwks-rsa2.json"), &jwks).unwrap();
    let jwks_path = jwks.display().to_string();
    let spec = NodeSpec::new(
        "keyed",
        &[
            ("HERALD_AUTH__JWT_JWKS_FILE", jwks_path.as_str()),
            ("HERALD_AUTH__KEY_RELOAD_INTERVAL_MS", "3600000"),
            ("HERALD_AUTH__AUTHENTICATED_SUBSCRIBE", ">"),
        ],
    )
    .unwrap();
    let addr = spec.ws_addr();
    let node = HeraldProcess::start(&bin(), spec, &dir).await.unwrap();
    assert!(!node.log_text().contains("open to anyone"), "{}", node.log_text());
    let rsa1 = with_key(Algorithm::RS256, "rsa1", Some("rsa1"), &claims("u", 300, json!({})));
    let path = format!("/ws?token={rsa1}");
    assert_eq!(refused(addr, &path, &[]).await.0, 401);
    std::fs::copy(fixture("jwks.json"), &jwks).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(refused(addr, &path, &[]).await.0, 401, "no reload before the signal");
    signal(node.pid().unwrap(), libc::SIGHUP).unwrap();
    let deadline = Instant::now() + WAIT;
    while try_ws(addr, &path, &[]).await.is_err() {
        assert!(Instant::now() < deadline, "SIGHUP did not reload:\n{}", node.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.log_text().contains("JWT keys reloaded"), "{}", node.log_text());
    node.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_auth_configuration_is_refused_at_start() {
    for env in [
        vec![
            ("HERALD_AUTH__JWT_HS256_SECRET", SECRET),
            ("HERALD_AUTH__JWT_HS256_SECRET_FILE", "/etc/hostname"),
        ],
        vec![("HERALD_AUTH__JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem")],
        vec![
            ("HERALD_AUTH__JWT_HS256_SECRET", SECRET),
            ("HERALD_AUTH__AUTHENTICATED_SUBSCRIBE", "a..b"),
        ],
        vec![("HERALD_AUTH__ANONYMOUS_SUBSCRIBE", "user.{sub}")],
    ] {
        let out = tokio::process::Command::new(bin())
            .arg("--print-config")
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{env:?}: {stderr}");
        assert!(stderr.contains("auth"), "{env:?}: {stderr}");
    }
}
