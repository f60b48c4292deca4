//! Fuzzes token handling (`herald_auth::Verifier::verify_at`): whatever a client sends as
//! `?token=`, `Authorization: Bearer` or in an `auth`/`refresh` op.
//!
//! Two shapes of input, chosen by the first byte:
//! - any text as the token (the shape checks, base64, header JSON, `alg`, `kid`);
//! - a token built from fuzzed header and claims JSON and *signed with the configured HS
//!   secret*, so the claim checks behind the signature are reached too.
//!
//! Invariants checked, beyond "no panic":
//! - unsigned input never verifies (the fuzzer does not know a key);
//! - a signed token verifies only with an HS algorithm named in its header, never when its
//!   header claims RS256/ES256 (key confusion) or `none`;
//! - an accepted token has a `sub` of 1..=256 bytes without control characters, and is not
//!   expired at `NOW` given the leeway.

#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_auth::{KeyConfig, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzzing-secret-of-at-least-32-bytes!!";
const NOW_MS: u64 = 1_800_000_000_000;
const LEEWAY_MS: u64 = 1000;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("herald-fuzz-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, include_str!("../../crates/auth/tests/fixtures/jwks.json")).unwrap();
        Verifier::new(KeyConfig {
            hs_secret: Some(SECRET.into()),
            jwks_file: Some(jwks),
            leeway_ms: LEEWAY_MS,
            ..Default::default()
        })
        .expect("fixture keys load")
    })
}

fn check_accepted(claims: &herald_auth::Claims) {
    assert!(!claims.sub.is_empty() && claims.sub.len() <= 256, "sub {:?}", claims.sub);
    assert!(!claims.sub.chars().any(char::is_control), "sub {:?}", claims.sub);
    if let Some(exp) = claims.exp_ms {
        assert!(NOW_MS < exp.saturating_add(LEEWAY_MS), "expired token accepted: exp {exp}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let v = verifier();
    if mode % 2 == 0 {
        let token = String::from_utf8_lossy(rest);
        if let Ok(c) = v.verify_at(&token, NOW_MS) {
            panic!("an unsigned input verified: {token:?} -> {c:?}");
        }
        return;
    }
    // Header and claims JSON, split at the first 0xff byte (or a default header).
    let (header, claims) = match rest.iter().position(|b| *b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], rest),
    };
    let alg = match (mode >> 1) % 3 {
        0 => Algorithm::HS256,
        1 => Algorithm::HS384,
        _ => Algorithm::HS512,
    };
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &EncodingKey::from_secret(SECRET.as_bytes()).expect("an HMAC key"), alg)
        .expect("HMAC signs anything");
    let token = format!("{input}.{signature}");
    if let Ok(c) = v.verify_at(&token, NOW_MS) {
        let named: serde_json::Value = serde_json::from_slice(header).expect("an accepted header is JSON");
        let named = named["alg"].as_str().unwrap_or_default();
        let signed = format!("{alg:?}");
        assert_eq!(named, signed, "verified under a header naming another algorithm");
        check_accepted(&c);
    }
});
