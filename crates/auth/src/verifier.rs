//! Token verification: from a compact JWS string to verified [`Claims`], and key reloads.
//!
//! Order of checks, so nothing a token says is acted on before its signature is verified:
//! 1. length cap ([`MAX_TOKEN_LEN`]) and shape (three base64url parts), before decoding;
//! 2. the header's `alg` must be one the configured keys accept (`none` never is); its
//!    `kid` may pick among the *configured* keys, looked up by (configured issuer, kid);
//!    `jku`, `x5u`, `jwk` and the like are ignored (a token never names a key source);
//!    a `crit` header is refused (no extension is understood);
//! 3. an HS token is checked only against the configured secret, never against PEM or
//!    JWKS bytes (no HS/RS confusion); public-key tokens only against public keys;
//! 4. the signature (jsonwebtoken, pure-Rust `rust_crypto` backend);
//! 5. only then the claims (`claims.rs`): `exp`/`nbf` with a millisecond leeway,
//!    `iss`/`aud` when configured, `sub`, `subscribe`/`publish`.
//!
//! Reloads swap the whole key set at once (`arc-swap`): a verification in flight keeps the
//! set it started with, and readers never wait for a reload.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::claims::{ClaimRules, Claims};
use crate::keys::{KeyConfig, KeyError, KeySet, Sources, VerifyKey};

/// Longest token accepted, in bytes; a longer one is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused. The `Display` text may be sent to the client: it holds no
/// secret, no key material and nothing of the token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("token signing key is unknown")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token has no subject (sub)")]
    MissingSubject,
    #[error("token claim is invalid: {0}")]
    InvalidClaim(String),
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
}

impl AuthError {
    /// Stable snake_case label for metrics (`reason`) and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingSubject => "missing_subject",
            AuthError::InvalidClaim(_) => "invalid_claim",
            AuthError::TooLong => "too_long",
        }
    }

    /// Every `reason()` label, for pre-registering metric series.
    pub const REASONS: [&'static str; 11] = [
        "malformed",
        "algorithm_not_allowed",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "missing_subject",
        "invalid_claim",
        "too_long",
    ];
}

/// The parts of a JOSE header Herald looks at.
#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// Verifies tokens against the configured keys; reloads them when their files change.
/// Share it in an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Verifier {
    cfg: KeyConfig,
    keys: ArcSwap<KeySet>,
    /// The file contents last seen by a (re)load, valid or not: a file that stays invalid
    /// is reported once per change, not at every check. Locked only by reloads.
    seen: Mutex<Sources>,
}

impl Verifier {
    /// Loads the configured keys. No key at all is valid (open mode: `has_keys()` is
    /// false and every token is refused with `UnknownKey`).
    pub fn new(mut cfg: KeyConfig) -> Result<Self, KeyError> {
        cfg.issuer = cfg.issuer.filter(|s| !s.is_empty());
        cfg.audience = cfg.audience.filter(|s| !s.is_empty());
        cfg.hs_secret = cfg.hs_secret.filter(|s| !s.is_empty());
        let src = Sources::read(&cfg)?;
        let keys = KeySet::build(&cfg, &src)?;
        Ok(Self {
            cfg,
            keys: ArcSwap::from_pointee(keys),
            seen: Mutex::new(src),
        })
    }

    /// True when at least one key is configured.
    pub fn has_keys(&self) -> bool {
        !self.keys.load().is_empty()
    }

    /// True when some key file is configured (so periodic reloads are worth running).
    pub fn has_key_files(&self) -> bool {
        self.cfg.hs_secret_file.is_some() || self.cfg.public_key_file.is_some() || self.cfg.jwks_file.is_some()
    }

    /// Verifies `token` at the current time.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.verify_at(token, now_ms)
    }

    /// Verifies `token` as of `now_ms` (milliseconds since the epoch). Never panics,
    /// whatever the input.
    pub fn verify_at(&self, token: &str, now_ms: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Malformed);
        };
        let header_bytes = URL_SAFE_NO_PAD.decode(h64).map_err(|_| AuthError::Malformed)?;
        let header: RawHeader = serde_json::from_slice(&header_bytes).map_err(|_| AuthError::Malformed)?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        let alg: Algorithm = header.alg.parse().map_err(|_| AuthError::AlgorithmNotAllowed)?;
        let keys = self.keys.load();
        if keys.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        let validation = keys.validation(alg).ok_or(AuthError::AlgorithmNotAllowed)?;
        let candidates = self.candidates(&keys, alg, header.kid.as_deref())?;
        let mut last = AuthError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    let rules = ClaimRules {
                        issuer: self.cfg.issuer.as_deref(),
                        audience: self.cfg.audience.as_deref(),
                        leeway_ms: self.cfg.leeway_ms,
                    };
                    return Claims::from_verified(&data.claims, &rules, now_ms);
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => AuthError::BadSignature,
                        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
                            AuthError::AlgorithmNotAllowed
                        }
                        ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                            AuthError::Malformed
                        }
                        _ => AuthError::BadSignature,
                    };
                    if last == AuthError::Malformed {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// The configured keys a token with `alg` and `kid` may be checked against.
    fn candidates<'k>(
        &self,
        keys: &'k KeySet,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<&'k VerifyKey>, AuthError> {
        if alg.family() == AlgorithmFamily::Hmac {
            return match &keys.secret {
                Some(k) if k.allows(alg) => Ok(vec![k]),
                _ => Err(AuthError::AlgorithmNotAllowed),
            };
        }
        if let Some(kid) = kid {
            if let Some(k) = keys.named.get(&(self.cfg.issuer.clone(), kid.to_owned())) {
                return if k.allows(alg) {
                    Ok(vec![k])
                } else {
                    Err(AuthError::AlgorithmNotAllowed)
                };
            }
        }
        let unnamed: Vec<&VerifyKey> = keys.unnamed.iter().filter(|k| k.allows(alg)).collect();
        if unnamed.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        Ok(unnamed)
    }

    /// Re-reads the key files; when any changed, builds the new key set and swaps it in.
    /// `Ok(true)`: new keys in use; `Ok(false)`: nothing changed; `Err`: the new files are
    /// invalid (or unreadable) and the old keys stay in use.
    pub fn reload_if_changed(&self) -> Result<bool, KeyError> {
        if !self.has_key_files() {
            return Ok(false);
        }
        let src = Sources::read(&self.cfg)?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == src {
            return Ok(false);
        }
        // The lock is held through the build (no await, milliseconds at most) so two
        // concurrent reloads cannot store their sets out of order.
        *seen = src.clone();
        let keys = KeySet::build(&self.cfg, &src)?;
        self.keys.store(Arc::new(keys));
        Ok(true)
    }
}
