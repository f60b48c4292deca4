//! Identity and permission costs (issue 11), per operation: verifying one token per
//! algorithm (done once per connection or `auth`/`refresh` op, never per message), and one
//! permission check (done once per subscribe or publish request, never per delivery),
//! against a set of ten patterns and against the open-mode "everything" set.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use herald_auth::{KeyConfig, PatternSet, Verifier};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const SECRET: &str = "0123456789abcdef0123456789abcdef-herald";
const NOW_S: u64 = 1_800_000_000;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/auth/tests/fixtures")
        .join(name)
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let claims = serde_json::json!({
        "sub": "user-42", "exp": NOW_S + 3600, "iss": "bench",
        "subscribe": ["user.user-42.>", "prices.*"], "publish": ["chat.room-1"]
    });
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth/verify");
    let cases = [
        (
            "HS256",
            KeyConfig {
                hs_secret: Some(SECRET.into()),
                ..Default::default()
            },
            token(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()),
        ),
        (
            "RS256",
            KeyConfig {
                public_key_file: Some(fixture("rsa1.pub.pem")),
                ..Default::default()
            },
            token(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa1.key")).unwrap()).unwrap(),
            ),
        ),
        (
            "ES256",
            KeyConfig {
                public_key_file: Some(fixture("ec1.pub.pem")),
                ..Default::default()
            },
            token(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&std::fs::read(fixture("ec1.key")).unwrap()).unwrap(),
            ),
        ),
    ];
    for (name, cfg, t) in cases {
        let v = Verifier::new(KeyConfig {
            issuer: Some("bench".into()),
            ..cfg
        })
        .unwrap();
        v.verify_at(&t, NOW_S * 1000).expect("valid token");
        g.bench_function(name, |b| b.iter(|| v.verify_at(black_box(&t), NOW_S * 1000).unwrap()));
    }
    g.finish();
}

fn permission(c: &mut Criterion) {
    let patterns = [
        "user.user-42.>",
        "prices.*",
        "chat.room-1",
        "chat.room-2",
        "game.*.moves",
        "game.*.chat",
        "sensor.>",
        "news.sport.*",
        "news.tech.*",
        "lobby",
    ];
    let set = PatternSet::compile(&patterns, None).unwrap();
    let all = PatternSet::everything();
    let mut g = c.benchmark_group("auth/permission_check");
    g.bench_function("10_patterns/allowed", |b| {
        b.iter(|| set.matches(black_box("game.g-17.moves")))
    });
    g.bench_function("10_patterns/refused", |b| {
        b.iter(|| set.matches(black_box("game.g-17.admin")))
    });
    g.bench_function("10_patterns/deep_allowed", |b| {
        b.iter(|| set.matches(black_box("user.user-42.inbox.a.b.c")))
    });
    g.bench_function("everything", |b| b.iter(|| all.matches(black_box("game.g-17.moves"))));
    g.bench_function("compile_10_patterns", |b| {
        b.iter(|| PatternSet::compile(black_box(&patterns), None).unwrap())
    });
    g.finish();
}

criterion_group!(benches, verify, permission);
criterion_main!(benches);
