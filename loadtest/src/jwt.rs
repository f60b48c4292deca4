//! Minting JWTs for the generator's clients (`--jwt-secret` or `--jwt-key`), so runs can
//! measure a node with authentication on.
//!
//! Each client gets its own token: `sub` = `--jwt-sub-prefix` + `s<i>` (subscriber) or
//! `p<i>` (publisher), `exp` far enough past the run, and the topics it needs: a
//! subscriber's `subscribe` lists its topics, a publisher's `publish` is `<prefix>>` when
//! the topic prefix ends with `.`, else every topic name. `--jwt-claims` (a JSON object)
//! is merged over these. Tokens are minted before the connection phase starts (`open_all`),
//! so signing cost (RS256 is ~1 ms per token here) never lands in the measured setup times,
//! and nothing here runs on the message path.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Map, Value};

/// Signing algorithm for `--jwt-key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum JwtAlg {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

/// Where the token travels on the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JwtVia {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `?token=<token>` on the URL.
    Query,
}

/// The checked token plan (from the command line).
#[derive(Debug, Clone, Serialize)]
pub struct JwtPlan {
    /// HS256 secret (never serialised into reports).
    #[serde(skip)]
    pub secret: Option<String>,
    /// PEM private key file.
    pub key_file: Option<std::path::PathBuf>,
    pub alg: JwtAlg,
    pub sub_prefix: String,
    /// Extra claims merged over the defaults.
    pub claims: Map<String, Value>,
    pub via: JwtVia,
}

impl JwtPlan {
    /// Builds a plan from the flags; `None` when no token is wanted.
    pub fn from_flags(
        secret: Option<String>,
        key_file: Option<std::path::PathBuf>,
        alg: Option<JwtAlg>,
        sub_prefix: String,
        claims: Option<String>,
        via: JwtVia,
    ) -> Result<Option<Self>> {
        if secret.is_none() && key_file.is_none() {
            ensure!(
                alg.is_none() && claims.is_none(),
                "--jwt-alg and --jwt-claims need --jwt-secret or --jwt-key"
            );
            return Ok(None);
        }
        ensure!(
            !(secret.is_some() && key_file.is_some()),
            "give --jwt-secret or --jwt-key, not both"
        );
        ensure!(
            secret.is_none() || alg.is_none(),
            "--jwt-secret signs HS256; --jwt-alg is for --jwt-key"
        );
        let claims = match claims {
            None => Map::new(),
            Some(s) => match serde_json::from_str::<Value>(&s).context("--jwt-claims is not JSON")? {
                Value::Object(m) => m,
                _ => bail!("--jwt-claims must be a JSON object"),
            },
        };
        ensure!(
            !sub_prefix.is_empty() || claims.contains_key("sub"),
            "--jwt-sub-prefix is empty"
        );
        Ok(Some(Self {
            secret,
            key_file,
            alg: alg.unwrap_or(JwtAlg::Rs256),
            sub_prefix,
            claims,
            via,
        }))
    }
}

/// Signs one token per client.
pub struct Minter {
    plan: JwtPlan,
    key: EncodingKey,
    alg: Algorithm,
    exp: u64,
    /// Publishers' `publish` claim, the same for all.
    publish: Vec<String>,
}

impl Minter {
    /// Loads the key and checks it signs; `lifetime` is how long tokens must stay valid.
    pub fn new(plan: JwtPlan, topic_prefix: &str, topics: u32, lifetime: Duration) -> Result<Self> {
        let (key, alg) = match (&plan.secret, &plan.key_file) {
            (Some(s), _) => (EncodingKey::from_secret(s.as_bytes())?, Algorithm::HS256),
            (None, Some(path)) => {
                let pem = std::fs::read(path).with_context(|| format!("--jwt-key {}", path.display()))?;
                match plan.alg {
                    JwtAlg::Rs256 => (
                        EncodingKey::from_rsa_pem(&pem).context("--jwt-key is not an RSA private key (PEM)")?,
                        Algorithm::RS256,
                    ),
                    JwtAlg::Es256 => (
                        EncodingKey::from_ec_pem(&pem).context("--jwt-key is not a P-256 private key (PKCS#8 PEM)")?,
                        Algorithm::ES256,
                    ),
                }
            }
            (None, None) => bail!("no JWT key"),
        };
        let publish = if topic_prefix.ends_with('.') {
            vec![format!("{topic_prefix}>")]
        } else if topics <= 256 {
            (0..topics).map(|i| crate::topics::name(topic_prefix, i)).collect()
        } else {
            bail!(
                "publishers' tokens: more than 256 topics need a --topic-prefix ending in '.' \
                 (publish claim \"<prefix>>\") or your own --jwt-claims"
            );
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let m = Self {
            plan,
            key,
            alg,
            exp: (now + lifetime + Duration::from_secs(3600)).as_secs(),
            publish,
        };
        m.mint(false, 0, &[]).context("signing a test token")?;
        Ok(m)
    }

    /// Where the token goes.
    pub fn via(&self) -> JwtVia {
        self.plan.via
    }

    /// The token of client `index` (a publisher when `publisher`) subscribing to `topics`.
    pub fn mint(&self, publisher: bool, index: usize, topics: &[String]) -> Result<String> {
        let mut claims = Map::new();
        let kind = if publisher { 'p' } else { 's' };
        claims.insert("sub".into(), format!("{}{kind}{index}", self.plan.sub_prefix).into());
        claims.insert("exp".into(), self.exp.into());
        if publisher {
            claims.insert("publish".into(), self.publish.clone().into());
        } else {
            claims.insert("subscribe".into(), topics.to_vec().into());
        }
        for (k, v) in &self.plan.claims {
            claims.insert(k.clone(), v.clone());
        }
        Ok(encode(&Header::new(self.alg), &claims, &self.key)?)
    }

    /// Mints tokens for a list of clients, before they connect.
    pub fn mint_all<'a>(&self, publisher: bool, topics: impl Iterator<Item = &'a [String]>) -> Result<Vec<Arc<str>>> {
        topics
            .enumerate()
            .map(|(i, t)| self.mint(publisher, i, t).map(Arc::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_tokens_carry_sub_topics_and_extra_claims() {
        let plan = JwtPlan::from_flags(
            Some("s".repeat(32)),
            None,
            None,
            "lt-".into(),
            Some(r#"{"iss":"bench"}"#.into()),
            JwtVia::Header,
        )
        .unwrap()
        .unwrap();
        let m = Minter::new(plan, "lt.ab.", 10, Duration::from_secs(60)).unwrap();
        let t = m.mint(false, 3, &["lt.ab.1".to_string()]).unwrap();
        let body = t.split('.').nth(1).unwrap();
        use base64::Engine;
        let v: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        assert_eq!(v["sub"], "lt-s3");
        assert_eq!(v["subscribe"], serde_json::json!(["lt.ab.1"]));
        assert_eq!(v["iss"], "bench");
        let p = m.mint(true, 0, &[]).unwrap();
        let v: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["publish"], serde_json::json!(["lt.ab.>"]));
    }

    #[test]
    fn flag_combinations() {
        let none = JwtPlan::from_flags(None, None, None, "x".into(), None, JwtVia::Header).unwrap();
        assert!(none.is_none());
        assert!(JwtPlan::from_flags(None, None, Some(JwtAlg::Es256), "x".into(), None, JwtVia::Header).is_err());
        assert!(JwtPlan::from_flags(
            Some("s".into()),
            Some("k".into()),
            None,
            "x".into(),
            None,
            JwtVia::Header
        )
        .is_err());
        assert!(JwtPlan::from_flags(
            Some("s".into()),
            None,
            None,
            "x".into(),
            Some("[1]".into()),
            JwtVia::Header
        )
        .is_err());
    }
}
