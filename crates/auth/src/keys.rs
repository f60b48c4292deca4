//! Verification keys: where they come from (configuration, files), which algorithms each
//! accepts, and the immutable [`KeySet`] a [`Verifier`](crate::Verifier) swaps on reload.
//!
//! Sources, all chosen by the operator, never by a token:
//! - an HS shared secret, inline or from a file (trailing newline ignored), at least
//!   [`MIN_HS_SECRET_LEN`] bytes (RFC 7518 §3.2); it only ever verifies HS256/384/512;
//! - a PEM public key file: RSA (RS256 by default) or EC (P-256: ES256, P-384: ES384),
//!   detected from the PEM; Ed25519 (EdDSA); a private key or certificate is refused;
//! - a JWKS file: RSA, EC and OKP keys with a `kid`; a key's `alg` pins its algorithm,
//!   `use: "enc"` keys are skipped, `oct` (symmetric) keys are refused, so a JWKS can never
//!   turn into an HS secret.
//!
//! Accepted algorithms are pinned per key: `jwt_algorithms` if given (each key keeps those
//! of its type; a key left with none is an error), else the defaults above. A token's
//! `alg` only chooses among these. RSA keys under 2048 bits are refused.
//! Keys with a `kid` are indexed by (configured issuer, `kid`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, Validation};
use serde_json::Value;
use thiserror::Error;

/// Shortest HS secret accepted, in bytes.
pub const MIN_HS_SECRET_LEN: usize = 32;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Where the keys come from and what tokens must say (the gateway maps `[auth]` into this).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyConfig {
    /// Inline HS secret (`auth.jwt_hs256_secret`).
    pub hs_secret: Option<String>,
    /// File holding the HS secret; reloaded when it changes.
    pub hs_secret_file: Option<PathBuf>,
    /// PEM public key; reloaded when it changes.
    pub public_key_file: Option<PathBuf>,
    /// JWKS file; reloaded when it changes.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` (`None` or empty: not checked).
    pub issuer: Option<String>,
    /// Required member of `aud` (`None` or empty: not checked).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in milliseconds.
    pub leeway_ms: u64,
    /// Accepted algorithms (`HS256`, `RS256`, `ES256`, ...); empty: each key's defaults.
    pub algorithms: Vec<String>,
}

/// Why the keys could not be loaded. Shown to operators (logs, start-up errors): names files
/// and reasons, never key material.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("give the HS secret inline or in a file, not both")]
    TwoSecrets,
    #[error("the HS secret{origin} is {len} bytes; at least {MIN_HS_SECRET_LEN} are required (RFC 7518 §3.2)")]
    ShortSecret { origin: String, len: usize },
    #[error("{path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadJwks { path: PathBuf, reason: String },
    #[error("unknown JWT algorithm {0:?} (expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)")]
    UnknownAlgorithm(String),
    #[error("{what}: none of its algorithms ({key_algs}) is in jwt_algorithms")]
    NoAlgorithmForKey { what: String, key_algs: String },
    #[error("jwt_algorithms lists {0} but no configured key can verify it")]
    AlgorithmWithoutKey(String),
    #[error("no JWT crypto provider is available in this build")]
    NoCryptoProvider,
}

/// One verification key and the algorithms it accepts.
#[derive(Debug)]
pub(crate) struct VerifyKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

impl VerifyKey {
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// The raw bytes of every configured key file, compared to detect a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sources {
    secret_file: Option<Vec<u8>>,
    pem: Option<Vec<u8>>,
    jwks: Option<Vec<u8>>,
}

impl Sources {
    /// Reads every configured file.
    pub fn read(cfg: &KeyConfig) -> Result<Self, KeyError> {
        let read = |p: &Option<PathBuf>| -> Result<Option<Vec<u8>>, KeyError> {
            p.as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|source| KeyError::Read {
                        path: p.clone(),
                        source,
                    })
                })
                .transpose()
        };
        Ok(Self {
            secret_file: read(&cfg.hs_secret_file)?,
            pem: read(&cfg.public_key_file)?,
            jwks: read(&cfg.jwks_file)?,
        })
    }
}

/// An immutable set of keys, indexed for one lookup per token.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    /// The HS secret: the only key HS tokens are checked against.
    pub secret: Option<VerifyKey>,
    /// Public keys without a `kid` (the PEM file, kid-less JWKS entries).
    pub unnamed: Vec<VerifyKey>,
    /// Public keys with a `kid`, by (configured issuer, kid).
    pub named: HashMap<(Option<String>, String), VerifyKey>,
    /// Union of the algorithms of all keys, each with its prepared `Validation`.
    pub validations: Vec<(Algorithm, Validation)>,
}

impl KeySet {
    pub fn is_empty(&self) -> bool {
        self.secret.is_none() && self.unnamed.is_empty() && self.named.is_empty()
    }

    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations.iter().find(|(a, _)| *a == alg).map(|(_, v)| v)
    }

    /// Builds the set from the configuration and the files' bytes.
    pub fn build(cfg: &KeyConfig, src: &Sources) -> Result<Self, KeyError> {
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err(KeyError::NoCryptoProvider);
        }
        let pinned = cfg
            .algorithms
            .iter()
            .map(|a| Algorithm::from_str(a.trim()).map_err(|_| KeyError::UnknownAlgorithm(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let pin = |what: &str, defaults: &[Algorithm], family_all: &[Algorithm]| -> Result<Vec<Algorithm>, KeyError> {
            if pinned.is_empty() {
                return Ok(defaults.to_vec());
            }
            let v: Vec<Algorithm> = family_all.iter().copied().filter(|a| pinned.contains(a)).collect();
            if v.is_empty() {
                return Err(KeyError::NoAlgorithmForKey {
                    what: what.into(),
                    key_algs: names(family_all),
                });
            }
            Ok(v)
        };
        let mut set = KeySet::default();

        let inline = cfg.hs_secret.as_deref().filter(|s| !s.is_empty());
        let secret: Option<(Vec<u8>, String)> = match (inline, &src.secret_file) {
            (Some(_), Some(_)) => return Err(KeyError::TwoSecrets),
            (Some(s), None) => Some((s.as_bytes().to_vec(), String::new())),
            (None, Some(bytes)) => {
                let mut b = bytes.clone();
                while matches!(b.last(), Some(b'\n' | b'\r')) {
                    b.pop();
                }
                let path = cfg.hs_secret_file.as_deref().unwrap_or(Path::new("?"));
                Some((b, format!(" in {}", path.display())))
            }
            (None, None) => None,
        };
        if let Some((bytes, origin)) = secret {
            if bytes.len() < MIN_HS_SECRET_LEN {
                return Err(KeyError::ShortSecret {
                    origin,
                    len: bytes.len(),
                });
            }
            let hs = AlgorithmFamily::Hmac.algorithms();
            set.secret = Some(VerifyKey {
                key: DecodingKey::from_secret(&bytes).map_err(|_| KeyError::ShortSecret { origin, len: 0 })?,
                algorithms: pin("the HS secret", hs, hs)?,
            });
        }

        if let (Some(path), Some(bytes)) = (&cfg.public_key_file, &src.pem) {
            let bad = |reason: String| KeyError::BadPem {
                path: path.clone(),
                reason,
            };
            let (key, defaults, family) = pem_key(bytes).map_err(bad)?;
            let what = format!("the key in {}", path.display());
            set.unnamed.push(VerifyKey {
                key,
                algorithms: pin(&what, &defaults, &family)?,
            });
        }

        if let (Some(path), Some(bytes)) = (&cfg.jwks_file, &src.jwks) {
            let bad = |reason: String| KeyError::BadJwks {
                path: path.clone(),
                reason,
            };
            let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
            let keys = doc
                .get("keys")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no \"keys\" array".into()))?;
            let mut usable = 0;
            for (i, jwk) in keys.iter().enumerate() {
                let Some((kid, (key, defaults, family))) = jwk_key(jwk).map_err(|r| bad(format!("key {i}: {r}")))?
                else {
                    continue;
                };
                let algorithms = match pin("", &defaults, &family) {
                    Ok(a) => a,
                    // A JWKS may publish keys for algorithms this node does not accept.
                    Err(_) => continue,
                };
                usable += 1;
                let vk = VerifyKey { key, algorithms };
                match kid {
                    Some(kid) => {
                        let k = (cfg.issuer.clone().filter(|s| !s.is_empty()), kid.clone());
                        if set.named.insert(k, vk).is_some() {
                            return Err(bad(format!("two keys have kid {kid:?}")));
                        }
                    }
                    None => set.unnamed.push(vk),
                }
            }
            if usable == 0 {
                return Err(bad(
                    "no usable signature key (RSA, EC or OKP, allowed by jwt_algorithms)".into(),
                ));
            }
        }

        let all = set
            .secret
            .iter()
            .chain(set.unnamed.iter())
            .chain(set.named.values())
            .flat_map(|k| k.algorithms.iter().copied());
        for alg in all {
            if set.validation(alg).is_none() {
                set.validations.push((alg, validation(alg)));
            }
        }
        if !set.is_empty() {
            if let Some(a) = pinned.iter().find(|a| set.validation(**a).is_none()) {
                return Err(KeyError::AlgorithmWithoutKey(format!("{a:?}")));
            }
        }
        Ok(set)
    }
}

/// A `Validation` that checks only the signature and the algorithm: the claims are
/// checked by `claims.rs` (millisecond leeway, precise errors).
fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

fn names(algs: &[Algorithm]) -> String {
    algs.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
}

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

type Typed = (DecodingKey, Vec<Algorithm>, Vec<Algorithm>);

/// A PEM public key, its default algorithms and those its type could use.
fn pem_key(bytes: &[u8]) -> Result<Typed, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not a PEM file (not UTF-8)".to_string())?;
    let label = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
        })
        .ok_or_else(|| "not a PEM file (no BEGIN line)".to_string())?;
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        l if l.contains("PRIVATE") => return Err("holds a private key; give the public key only".into()),
        l => {
            return Err(format!(
                "holds a {l:?}; expected \"PUBLIC KEY\" (RSA, EC P-256/P-384 or Ed25519)"
            ))
        }
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        if let DecodingKeyKind::SecretOrDer(der) = key.kind() {
            check_rsa_bits(pkcs1_modulus_bits(der).ok_or("RSA key is not valid PKCS#1")?)?;
        }
        return Ok((key, vec![Algorithm::RS256], RSA_ALGS.to_vec()));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        let point_len = key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
        let alg = match point_len {
            65 => Algorithm::ES256,
            97 => Algorithm::ES384,
            _ => return Err("EC key is not an uncompressed P-256 or P-384 point".into()),
        };
        check_usable(&key, alg)?;
        return Ok((key, vec![alg], vec![alg]));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        check_usable(&key, Algorithm::EdDSA)?;
        return Ok((key, vec![Algorithm::EdDSA], vec![Algorithm::EdDSA]));
    }
    Err("not an RSA, EC or Ed25519 public key".into())
}

/// One JWKS entry: `None` when it is not a signature key (`use: "enc"`).
fn jwk_key(jwk: &Value) -> Result<Option<(Option<String>, Typed)>, String> {
    let s = |name: &str| jwk.get(name).and_then(Value::as_str);
    let need = |name: &str| s(name).ok_or_else(|| format!("missing {name:?}"));
    if s("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let kid = s("kid").map(str::to_owned);
    let (key, defaults, family) = match need("kty")? {
        "RSA" => {
            let n = URL_SAFE_NO_PAD
                .decode(need("n")?)
                .map_err(|_| "\"n\" is not base64url")?;
            let e = URL_SAFE_NO_PAD
                .decode(need("e")?)
                .map_err(|_| "\"e\" is not base64url")?;
            let bits = n.iter().position(|b| *b != 0).map(|i| (n.len() - i) * 8).unwrap_or(0);
            check_rsa_bits(bits)?;
            if e.is_empty() || e.len() > 8 {
                return Err("bad RSA exponent".into());
            }
            (
                DecodingKey::from_rsa_raw_components(&n, &e),
                vec![Algorithm::RS256],
                RSA_ALGS.to_vec(),
            )
        }
        "EC" => {
            let alg = match need("crv")? {
                "P-256" => Algorithm::ES256,
                "P-384" => Algorithm::ES384,
                c => return Err(format!("unsupported curve {c:?}")),
            };
            let key = DecodingKey::from_ec_components(need("x")?, need("y")?).map_err(|_| "bad EC coordinates")?;
            check_usable(&key, alg)?;
            (key, vec![alg], vec![alg])
        }
        "OKP" if s("crv") == Some("Ed25519") => {
            let key = DecodingKey::from_ed_components(need("x")?).map_err(|_| "bad Ed25519 key")?;
            check_usable(&key, Algorithm::EdDSA)?;
            (key, vec![Algorithm::EdDSA], vec![Algorithm::EdDSA])
        }
        "oct" => return Err("symmetric (oct) keys are not accepted from a JWKS".into()),
        k => return Err(format!("unsupported key type {k:?}")),
    };
    match s("alg") {
        None => Ok(Some((kid, (key, defaults, family)))),
        Some(a) => {
            let alg = Algorithm::from_str(a).map_err(|_| format!("unknown alg {a:?}"))?;
            if !family.contains(&alg) {
                return Err(format!("alg {a:?} does not fit a {} key", need("kty")?));
            }
            Ok(Some((kid, (key, vec![alg], vec![alg]))))
        }
    }
}

fn check_rsa_bits(bits: usize) -> Result<(), String> {
    if bits < MIN_RSA_BITS {
        return Err(format!("RSA key has {bits} bits, at least {MIN_RSA_BITS} are required"));
    }
    Ok(())
}

/// Builds a verifier for `key` once, so a key the crypto backend refuses fails the load,
/// not every token.
fn check_usable(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    // A zero signature of the wrong length: a usable key answers "no", a broken one errors.
    match jsonwebtoken::crypto::verify("AA", b"x", key, alg) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("key not usable for {alg:?}: {e}")),
    }
}

/// Bit length of the modulus of a PKCS#1 `RSAPublicKey` (SEQUENCE { INTEGER n, INTEGER e }).
fn pkcs1_modulus_bits(der: &[u8]) -> Option<usize> {
    fn header(b: &[u8], tag: u8) -> Option<(usize, &[u8])> {
        if *b.first()? != tag {
            return None;
        }
        let first = *b.get(1)? as usize;
        let (len, skip) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let body = b.get(skip..skip.checked_add(len)?)?;
        Some((len, body))
    }
    let (_, seq) = header(der, 0x30)?;
    let (_, n) = header(seq, 0x02)?;
    let first = n.iter().position(|b| *b != 0)?;
    let top = n[first];
    Some((n.len() - first - 1) * 8 + (8 - top.leading_zeros() as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs1_bits() {
        // SEQUENCE { INTEGER 0x00 0x80 .. (257 bytes => 2048 bits), INTEGER 65537 }
        let mut n = vec![0x00, 0x80];
        n.extend(std::iter::repeat_n(0x11, 255));
        let mut int = vec![0x02, 0x82, 0x01, 0x01];
        int.extend(&n);
        int.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut der = vec![0x30, 0x82, (int.len() >> 8) as u8, int.len() as u8];
        der.extend(int);
        assert_eq!(pkcs1_modulus_bits(&der), Some(2048));
        assert_eq!(pkcs1_modulus_bits(&[0x30, 0x01]), None);
        assert_eq!(pkcs1_modulus_bits(&[]), None);
    }
}
