//! Token verification against real keys (fixtures generated with openssl, see
//! `fixtures/README.md`), signed here with `jsonwebtoken::encode`.

use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_auth::{AuthError, KeyConfig, KeyError, Verifier};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef-herald";
const NOW_S: u64 = 1_800_000_000;
const NOW_MS: u64 = NOW_S * 1000;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn private(name: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(name)).unwrap();
    if name.starts_with("ec") {
        EncodingKey::from_ec_pem(&pem).unwrap()
    } else {
        EncodingKey::from_rsa_pem(&pem).unwrap()
    }
}

fn claims() -> Value {
    json!({"sub": "alice", "exp": NOW_S + 60, "subscribe": ["user.alice.>"], "publish": ["chat.*"]})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, key).unwrap()
}

fn hs(alg: Algorithm, claims: &Value) -> String {
    sign(alg, None, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(), claims)
}

fn secret_cfg() -> KeyConfig {
    KeyConfig {
        hs_secret: Some(SECRET.into()),
        ..Default::default()
    }
}

fn pem_cfg(name: &str) -> KeyConfig {
    KeyConfig {
        public_key_file: Some(fixture(name)),
        ..Default::default()
    }
}

fn jwks_cfg(path: PathBuf) -> KeyConfig {
    KeyConfig {
        jwks_file: Some(path),
        ..Default::default()
    }
}

#[test]
fn hs256_384_512_with_inline_and_file_secret() {
    let v = Verifier::new(secret_cfg()).unwrap();
    assert!(v.has_keys());
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let c = v.verify_at(&hs(alg, &claims()), NOW_MS).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.exp_ms, Some((NOW_S + 60) * 1000));
        assert_eq!(c.subscribe, vec!["user.alice.>".to_string()]);
        assert_eq!(c.publish, vec!["chat.*".to_string()]);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let v = Verifier::new(KeyConfig {
        hs_secret_file: Some(file),
        ..Default::default()
    })
    .unwrap();
    assert!(v.verify_at(&hs(Algorithm::HS256, &claims()), NOW_MS).is_ok());
    // The wall-clock entry point works too.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let live = json!({"sub": "bob", "exp": now + 60});
    assert_eq!(v.verify(&hs(Algorithm::HS256, &live)).unwrap().sub, "bob");
}

#[test]
fn rs256_and_es256_from_pem() {
    let rs = Verifier::new(pem_cfg("rsa1.pub.pem")).unwrap();
    assert!(rs
        .verify_at(&sign(Algorithm::RS256, None, &private("rsa1.key"), &claims()), NOW_MS)
        .is_ok());
    // Signed by another RSA key.
    let other = sign(Algorithm::RS256, None, &private("rsa2.key"), &claims());
    assert_eq!(rs.verify_at(&other, NOW_MS), Err(AuthError::BadSignature));
    // RS384 is not pinned by default for an RSA key.
    let rs384 = sign(Algorithm::RS384, None, &private("rsa1.key"), &claims());
    assert_eq!(rs.verify_at(&rs384, NOW_MS), Err(AuthError::AlgorithmNotAllowed));

    let es = Verifier::new(pem_cfg("ec1.pub.pem")).unwrap();
    assert!(es
        .verify_at(&sign(Algorithm::ES256, None, &private("ec1.key"), &claims()), NOW_MS)
        .is_ok());
    let rs_on_ec = sign(Algorithm::RS256, None, &private("rsa1.key"), &claims());
    assert_eq!(es.verify_at(&rs_on_ec, NOW_MS), Err(AuthError::AlgorithmNotAllowed));
}

#[test]
fn jwks_picks_by_kid() {
    let v = Verifier::new(jwks_cfg(fixture("jwks.json"))).unwrap();
    for (kid, key, alg) in [
        ("rsa1", "rsa1.key", Algorithm::RS256),
        ("rsa2", "rsa2.key", Algorithm::RS256),
        ("ec1", "ec1.key", Algorithm::ES256),
    ] {
        let t = sign(alg, Some(kid), &private(key), &claims());
        assert!(v.verify_at(&t, NOW_MS).is_ok(), "{kid}");
    }
    // Right key, wrong kid: the kid's key does not verify it.
    let wrong = sign(Algorithm::RS256, Some("rsa1"), &private("rsa2.key"), &claims());
    assert_eq!(v.verify_at(&wrong, NOW_MS), Err(AuthError::BadSignature));
    let unknown = sign(Algorithm::RS256, Some("nope"), &private("rsa1.key"), &claims());
    assert_eq!(v.verify_at(&unknown, NOW_MS), Err(AuthError::UnknownKey));
    let no_kid = sign(Algorithm::RS256, None, &private("rsa1.key"), &claims());
    assert_eq!(v.verify_at(&no_kid, NOW_MS), Err(AuthError::UnknownKey));
    // The EC key's kid with an RSA algorithm.
    let mismatched = sign(Algorithm::RS256, Some("ec1"), &private("rsa1.key"), &claims());
    assert_eq!(v.verify_at(&mismatched, NOW_MS), Err(AuthError::AlgorithmNotAllowed));
}

#[test]
fn time_issuer_audience() {
    let v = Verifier::new(KeyConfig {
        issuer: Some("https://id.example".into()),
        audience: Some("herald".into()),
        leeway_ms: 2_000,
        ..secret_cfg()
    })
    .unwrap();
    let base = json!({"sub": "u", "iss": "https://id.example", "aud": "herald", "exp": NOW_S, "nbf": NOW_S - 10});
    let t = hs(Algorithm::HS256, &base);
    assert!(v.verify_at(&t, NOW_MS + 1_999).is_ok(), "within the leeway");
    assert_eq!(v.verify_at(&t, NOW_MS + 2_000), Err(AuthError::Expired));
    assert!(v.verify_at(&t, NOW_MS - 12_000).is_ok(), "nbf within the leeway");
    assert_eq!(v.verify_at(&t, NOW_MS - 12_001), Err(AuthError::NotYetValid));
    let mut wrong_iss = base.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    assert_eq!(
        v.verify_at(&hs(Algorithm::HS256, &wrong_iss), NOW_MS - 5_000),
        Err(AuthError::WrongIssuer)
    );
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = json!(["other"]);
    assert_eq!(
        v.verify_at(&hs(Algorithm::HS256, &wrong_aud), NOW_MS - 5_000),
        Err(AuthError::WrongAudience)
    );
    let no_sub = json!({"iss": "https://id.example", "aud": "herald"});
    assert_eq!(
        v.verify_at(&hs(Algorithm::HS256, &no_sub), NOW_MS),
        Err(AuthError::MissingSubject)
    );
    // Zero leeway: expired at exp exactly.
    let strict = Verifier::new(secret_cfg()).unwrap();
    let t = hs(Algorithm::HS256, &json!({"sub": "u", "exp": NOW_S}));
    assert!(strict.verify_at(&t, NOW_MS - 1).is_ok());
    assert_eq!(strict.verify_at(&t, NOW_MS), Err(AuthError::Expired));
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let v = Verifier::new(secret_cfg()).unwrap();
    let t = hs(Algorithm::HS256, &claims());
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","publish":[">"]}"#);
    assert_eq!(v.verify_at(&parts.join("."), NOW_MS), Err(AuthError::BadSignature));
}

#[test]
fn alg_none_is_refused() {
    let v = Verifier::new(secret_cfg()).unwrap();
    let body = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","publish":[">"]}"#);
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE","typ":"JWT"}"#,
    ] {
        let t = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(header));
        assert_eq!(v.verify_at(&t, NOW_MS), Err(AuthError::AlgorithmNotAllowed), "{header}");
    }
}

#[test]
fn hs_token_signed_with_the_public_key_is_refused() {
    let pem = std::fs::read(fixture("rsa1.pub.pem")).unwrap();
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&pem).unwrap(),
        &claims(),
    );
    let pem_only = Verifier::new(pem_cfg("rsa1.pub.pem")).unwrap();
    assert_eq!(pem_only.verify_at(&forged, NOW_MS), Err(AuthError::AlgorithmNotAllowed));
    let jwks_only = Verifier::new(jwks_cfg(fixture("jwks.json"))).unwrap();
    let forged_kid = sign(
        Algorithm::HS256,
        Some("rsa1"),
        &EncodingKey::from_secret(&pem).unwrap(),
        &claims(),
    );
    assert_eq!(
        jwks_only.verify_at(&forged_kid, NOW_MS),
        Err(AuthError::AlgorithmNotAllowed)
    );
    // With a secret configured too, an HS token is checked against the secret only.
    let both = Verifier::new(KeyConfig {
        public_key_file: Some(fixture("rsa1.pub.pem")),
        ..secret_cfg()
    })
    .unwrap();
    assert_eq!(both.verify_at(&forged, NOW_MS), Err(AuthError::BadSignature));
    assert!(both.verify_at(&hs(Algorithm::HS256, &claims()), NOW_MS).is_ok());
}

#[test]
fn pinned_algorithms() {
    let v = Verifier::new(KeyConfig {
        algorithms: vec!["HS256".into()],
        ..secret_cfg()
    })
    .unwrap();
    assert!(v.verify_at(&hs(Algorithm::HS256, &claims()), NOW_MS).is_ok());
    assert_eq!(
        v.verify_at(&hs(Algorithm::HS512, &claims()), NOW_MS),
        Err(AuthError::AlgorithmNotAllowed)
    );
    let e = Verifier::new(KeyConfig {
        algorithms: vec!["RS256".into()],
        ..secret_cfg()
    })
    .unwrap_err();
    assert!(matches!(e, KeyError::NoAlgorithmForKey { .. }), "{e}");
    let e = Verifier::new(KeyConfig {
        algorithms: vec!["HS256".into(), "ES256".into()],
        ..secret_cfg()
    })
    .unwrap_err();
    assert!(matches!(e, KeyError::AlgorithmWithoutKey(_)), "{e}");
    let e = Verifier::new(KeyConfig {
        algorithms: vec!["none".into()],
        ..secret_cfg()
    })
    .unwrap_err();
    assert!(matches!(e, KeyError::UnknownAlgorithm(_)), "{e}");
    // RS384 allowed for the RSA key when pinned.
    let v = Verifier::new(KeyConfig {
        algorithms: vec!["RS384".into()],
        ..pem_cfg("rsa1.pub.pem")
    })
    .unwrap();
    let t = sign(Algorithm::RS384, None, &private("rsa1.key"), &claims());
    assert!(v.verify_at(&t, NOW_MS).is_ok());
}

#[test]
fn bad_key_configuration_is_an_error() {
    let short = Verifier::new(KeyConfig {
        hs_secret: Some("secret".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(short, KeyError::ShortSecret { len: 6, .. }), "{short}");
    assert!(
        !short.to_string().contains("secret\""),
        "no secret in the message: {short}"
    );
    let private_pem = Verifier::new(pem_cfg("rsa1.key")).unwrap_err();
    assert!(private_pem.to_string().contains("private key"), "{private_pem}");
    let missing = Verifier::new(pem_cfg("nope.pem")).unwrap_err();
    assert!(matches!(missing, KeyError::Read { .. }));
    let dir = tempfile::tempdir().unwrap();
    let oct = dir.path().join("oct.json");
    std::fs::write(
        &oct,
        r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#,
    )
    .unwrap();
    let e = Verifier::new(jwks_cfg(oct)).unwrap_err();
    assert!(e.to_string().contains("oct"), "{e}");
    // No key at all: open mode, every token refused.
    let none = Verifier::new(KeyConfig::default()).unwrap();
    assert!(!none.has_keys());
    assert_eq!(
        none.verify_at(&hs(Algorithm::HS256, &claims()), NOW_MS),
        Err(AuthError::UnknownKey)
    );
}

#[test]
fn malformed_and_oversized_tokens() {
    let v = Verifier::new(secret_cfg()).unwrap();
    for t in ["", "a", "a.b", "a.b.c.d", "!!.b.c", "e30.e30.", "eyJhbGciOjF9.e30.x"] {
        let r = v.verify_at(t, NOW_MS);
        assert!(
            matches!(r, Err(AuthError::Malformed | AuthError::AlgorithmNotAllowed)),
            "{t}: {r:?}"
        );
    }
    assert_eq!(v.verify_at(&"a".repeat(16 * 1024 + 1), NOW_MS), Err(AuthError::TooLong));
    let crit = format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","crit":["exp"]}"#),
        URL_SAFE_NO_PAD.encode("{}")
    );
    assert_eq!(v.verify_at(&crit, NOW_MS), Err(AuthError::Malformed));
    let bad_claims = hs(Algorithm::HS256, &json!({"sub": "u", "publish": ["a..b"]}));
    assert!(matches!(
        v.verify_at(&bad_claims, NOW_MS),
        Err(AuthError::InvalidClaim(_))
    ));
    for e in [
        AuthError::Malformed,
        AuthError::InvalidClaim("x".into()),
        AuthError::TooLong,
    ] {
        assert!(AuthError::REASONS.contains(&e.reason()));
    }
}

#[test]
fn jwks_rotation_and_invalid_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let full: Value = serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    let rsa1_only = json!({"keys": [full["keys"][0].clone()]});
    std::fs::write(&path, rsa1_only.to_string()).unwrap();
    let v = Verifier::new(jwks_cfg(path.clone())).unwrap();
    let t1 = sign(Algorithm::RS256, Some("rsa1"), &private("rsa1.key"), &claims());
    let t2 = sign(Algorithm::RS256, Some("rsa2"), &private("rsa2.key"), &claims());
    assert!(v.verify_at(&t1, NOW_MS).is_ok());
    assert_eq!(v.verify_at(&t2, NOW_MS), Err(AuthError::UnknownKey));
    assert!(!v.reload_if_changed().unwrap(), "unchanged file");

    std::fs::copy(fixture("jwks-rsa2.json"), &path).unwrap();
    assert!(v.reload_if_changed().unwrap());
    assert!(v.verify_at(&t2, NOW_MS).is_ok(), "new key picked up");
    assert_eq!(v.verify_at(&t1, NOW_MS), Err(AuthError::UnknownKey), "old key dropped");

    std::fs::write(&path, "{\"keys\": [").unwrap();
    let e = v.reload_if_changed().unwrap_err();
    assert!(matches!(e, KeyError::BadJwks { .. }), "{e}");
    assert!(v.verify_at(&t2, NOW_MS).is_ok(), "old keys kept");
    assert!(!v.reload_if_changed().unwrap(), "an invalid file is reported once");
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(v.reload_if_changed(), Err(KeyError::Read { .. })));
    assert!(v.verify_at(&t2, NOW_MS).is_ok());
    std::fs::write(&path, rsa1_only.to_string()).unwrap();
    assert!(v.reload_if_changed().unwrap());
    assert!(v.verify_at(&t1, NOW_MS).is_ok());
}

#[test]
fn pem_and_secret_file_reload() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::copy(fixture("rsa1.pub.pem"), &pem).unwrap();
    let v = Verifier::new(KeyConfig {
        public_key_file: Some(pem.clone()),
        ..Default::default()
    })
    .unwrap();
    let t1 = sign(Algorithm::RS256, None, &private("rsa1.key"), &claims());
    let e1 = sign(Algorithm::ES256, None, &private("ec1.key"), &claims());
    assert!(v.verify_at(&t1, NOW_MS).is_ok());
    std::fs::copy(fixture("ec1.pub.pem"), &pem).unwrap();
    assert!(v.reload_if_changed().unwrap());
    assert!(v.verify_at(&e1, NOW_MS).is_ok(), "key type detected again on reload");
    assert_eq!(v.verify_at(&t1, NOW_MS), Err(AuthError::AlgorithmNotAllowed));
}

fn b64_part() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,60}",
        prop::collection::vec(any::<u8>(), 0..60).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        prop::sample::select(vec![
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"RS256","kid":"rsa1"}"#,
            r#"{"alg":"ES256","kid":"ec1"}"#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"sub":"u","exp":1e400}"#,
            r#"{"sub":"u","exp":-5,"nbf":"x"}"#,
            r#"{"sub":"u","subscribe":[">",">"]}"#,
        ])
        .prop_map(|s| URL_SAFE_NO_PAD.encode(s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn verify_never_panics(
        raw in ".{0,200}",
        parts in prop::collection::vec(b64_part(), 3),
        now in any::<u64>(),
    ) {
        static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
        let v = V.get_or_init(|| Verifier::new(KeyConfig {
            hs_secret: Some(SECRET.into()),
            jwks_file: Some(fixture("jwks.json")),
            ..Default::default()
        }).unwrap());
        let _ = v.verify_at(&raw, now);
        let _ = v.verify_at(&parts.join("."), now);
        // A genuine token with a random time never panics either.
        let _ = v.verify_at(&hs(Algorithm::HS256, &claims()), now);
    }
}
