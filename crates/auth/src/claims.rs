//! The claims Herald reads from a token, and their checks.
//!
//! Only a token whose signature was verified reaches [`Claims::from_verified`]: nothing here
//! selects a key. Registered claims: `sub` (required, 1..=[`MAX_SUB_LEN`] bytes, no control
//! characters), `exp` and `nbf` (NumericDate, seconds, fractions allowed; checked with a
//! leeway in milliseconds), `iss` and `aud` (checked when configured; `aud` may be a string
//! or an array). Herald's own: `subscribe` and `publish`, arrays of topic patterns (at most
//! [`MAX_TOKEN_PATTERNS`] each, grammar checked here so a bad one fails the token, not a
//! later request). Unknown claims are ignored.

use serde_json::{Map, Value};

use crate::permissions::{check_token_patterns, MAX_TOKEN_PATTERNS};
use crate::verifier::AuthError;

/// Longest `sub` accepted, in bytes.
pub const MAX_SUB_LEN: usize = 256;

/// What a verified token grants: the identity and its own topic patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user id (`sub`).
    pub sub: String,
    /// `exp` in milliseconds since the epoch (`None`: the token does not expire).
    pub exp_ms: Option<u64>,
    /// The token's `subscribe` patterns (read literally: `{sub}` is not substituted).
    pub subscribe: Vec<String>,
    /// The token's `publish` patterns.
    pub publish: Vec<String>,
}

/// What the claims are checked against.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClaimRules<'a> {
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub leeway_ms: u64,
}

impl Claims {
    /// Reads and checks the claims of a token whose signature has been verified.
    pub(crate) fn from_verified(
        map: &Map<String, Value>,
        rules: &ClaimRules<'_>,
        now_ms: u64,
    ) -> Result<Self, AuthError> {
        let exp_ms = numeric_date_ms(map, "exp")?;
        let nbf_ms = numeric_date_ms(map, "nbf")?;
        if let Some(exp) = exp_ms {
            if now_ms >= exp.saturating_add(rules.leeway_ms) {
                return Err(AuthError::Expired);
            }
        }
        if let Some(nbf) = nbf_ms {
            if now_ms.saturating_add(rules.leeway_ms) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        if let Some(want) = rules.issuer {
            match map.get("iss") {
                Some(Value::String(iss)) if iss == want => {}
                _ => return Err(AuthError::WrongIssuer),
            }
        }
        if let Some(want) = rules.audience {
            let ok = match map.get("aud") {
                Some(Value::String(a)) => a == want,
                Some(Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::WrongAudience);
            }
        }
        let sub = match map.get("sub") {
            None | Some(Value::Null) => return Err(AuthError::MissingSubject),
            Some(Value::String(s)) if s.is_empty() => return Err(AuthError::MissingSubject),
            Some(Value::String(s)) if s.len() > MAX_SUB_LEN => {
                return Err(AuthError::InvalidClaim(format!(
                    "sub is longer than {MAX_SUB_LEN} bytes"
                )))
            }
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                return Err(AuthError::InvalidClaim("sub holds control characters".into()))
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(AuthError::InvalidClaim("sub must be a string".into())),
        };
        let subscribe = patterns(map, "subscribe")?;
        let publish = patterns(map, "publish")?;
        Ok(Self {
            sub,
            exp_ms,
            subscribe,
            publish,
        })
    }
}

/// A NumericDate claim in milliseconds; absent or `null` is `None`.
fn numeric_date_ms(map: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(s) = n.as_u64() {
                return Ok(Some(s.saturating_mul(1000)));
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some((f * 1000.0).min(u64::MAX as f64) as u64)),
                _ => Err(AuthError::InvalidClaim(format!(
                    "{name} must be a non-negative number of seconds"
                ))),
            }
        }
        Some(_) => Err(AuthError::InvalidClaim(format!("{name} must be a number of seconds"))),
    }
}

fn patterns(map: &Map<String, Value>, name: &str) -> Result<Vec<String>, AuthError> {
    let list = match map.get(name) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(v)) => v,
        Some(_) => {
            return Err(AuthError::InvalidClaim(format!(
                "{name} must be an array of topic patterns"
            )))
        }
    };
    if list.len() > MAX_TOKEN_PATTERNS {
        return Err(AuthError::InvalidClaim(format!(
            "{name} holds {} patterns, the limit is {MAX_TOKEN_PATTERNS}",
            list.len()
        )));
    }
    let out = list
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| AuthError::InvalidClaim(format!("{name} must be an array of strings")))?;
    check_token_patterns(&out).map_err(|e| AuthError::InvalidClaim(format!("{name}: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value, rules: &ClaimRules<'_>, now_ms: u64) -> Result<Claims, AuthError> {
        Claims::from_verified(v.as_object().unwrap(), rules, now_ms)
    }

    #[test]
    fn times_with_leeway_in_ms() {
        let r = ClaimRules {
            leeway_ms: 500,
            ..Default::default()
        };
        let c = json!({"sub": "u", "exp": 100, "nbf": 50});
        assert_eq!(read(c.clone(), &r, 99_000).unwrap().exp_ms, Some(100_000));
        assert!(read(c.clone(), &r, 100_499).is_ok());
        assert_eq!(read(c.clone(), &r, 100_500), Err(AuthError::Expired));
        assert!(read(c.clone(), &r, 49_500).is_ok());
        assert_eq!(read(c, &r, 49_499), Err(AuthError::NotYetValid));
        let frac = json!({"sub": "u", "exp": 100.25});
        assert_eq!(read(frac, &r, 0).unwrap().exp_ms, Some(100_250));
        assert!(matches!(
            read(json!({"sub":"u","exp":"soon"}), &r, 0),
            Err(AuthError::InvalidClaim(_))
        ));
        assert!(matches!(
            read(json!({"sub":"u","nbf":-1}), &r, 0),
            Err(AuthError::InvalidClaim(_))
        ));
    }

    #[test]
    fn subject_issuer_audience_patterns() {
        let r = ClaimRules {
            issuer: Some("me"),
            audience: Some("herald"),
            leeway_ms: 0,
        };
        let ok = json!({"sub":"u","iss":"me","aud":["x","herald"],"subscribe":["a.*"],"publish":[]});
        let c = read(ok, &r, 0).unwrap();
        assert_eq!(c.subscribe, vec!["a.*".to_string()]);
        assert_eq!(
            read(json!({"sub":"u","iss":"you","aud":"herald"}), &r, 0),
            Err(AuthError::WrongIssuer)
        );
        assert_eq!(
            read(json!({"sub":"u","aud":"herald"}), &r, 0),
            Err(AuthError::WrongIssuer)
        );
        assert_eq!(
            read(json!({"sub":"u","iss":"me","aud":"other"}), &r, 0),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            read(json!({"iss":"me","aud":"herald"}), &r, 0),
            Err(AuthError::MissingSubject)
        );
        assert_eq!(
            read(json!({"sub":"","iss":"me","aud":"herald"}), &r, 0),
            Err(AuthError::MissingSubject)
        );
        let none = ClaimRules::default();
        assert!(matches!(
            read(json!({"sub":7}), &none, 0),
            Err(AuthError::InvalidClaim(_))
        ));
        assert!(matches!(
            read(json!({"sub":"x".repeat(257)}), &none, 0),
            Err(AuthError::InvalidClaim(_))
        ));
        assert!(matches!(
            read(json!({"sub":"a\nb"}), &none, 0),
            Err(AuthError::InvalidClaim(_))
        ));
        assert!(matches!(
            read(json!({"sub":"u","publish":"a"}), &none, 0),
            Err(AuthError::InvalidClaim(_))
        ));
        assert!(matches!(
            read(json!({"sub":"u","publish":[1]}), &none, 0),
            Err(AuthError::InvalidClaim(_))
        ));
        assert!(matches!(
            read(json!({"sub":"u","publish":["a..b"]}), &none, 0),
            Err(AuthError::InvalidClaim(_))
        ));
        let many: Vec<String> = (0..257).map(|i| format!("t{i}")).collect();
        assert!(matches!(
            read(json!({"sub":"u","subscribe":many}), &none, 0),
            Err(AuthError::InvalidClaim(_))
        ));
    }
}
