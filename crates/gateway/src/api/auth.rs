//! API key check for `/api/`: `Authorization: Bearer <key>` against `admin.api_keys` (full
//! access) and `admin.publish_keys` (the publish endpoints only: [`Scope::Publish`]).
//!
//! With no key configured in either list every request passes with full access;
//! `Config::validate` then refuses a non-loopback `admin.listen`, so an open API is
//! reachable from this host only. With any key configured every `/api/` request needs one:
//! publish keys alone close the other endpoints to everyone (403 for a publish key, 401
//! without a key), never leave them open. The presented key is compared with *every*
//! configured key of both lists, each in constant time (`subtle`), and the results are
//! combined without branching, so the time taken does not say how many leading bytes
//! matched, which key was close, or which list it is in. What can leak is whether the
//! presented key has the same length as some configured key; keys are at least 16
//! characters (checked at start-up), so knowing the length does not help guess one.
//!
//! `/metrics`, `/healthz` and `/readyz` are not checked here: probes and scrapers stay
//! open (see `admin.rs`).

use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use subtle::{Choice, ConstantTimeEq};

use super::error::ApiError;
use super::router::Route;

/// What a request's key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every endpoint (an `admin.api_keys` key, or no key configured at all).
    Full,
    /// The publish endpoints only (an `admin.publish_keys` key).
    Publish,
}

impl Scope {
    /// Whether this scope may call `route`; a publish key gets 403 `forbidden` elsewhere.
    pub fn allows(self, route: &Route) -> Result<(), ApiError> {
        let publish = matches!(
            route,
            Route::Publish | Route::PublishBatch | Route::TopicPublish(_) | Route::Broadcast
        );
        if self == Scope::Full || publish {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// The scope of the request's key: full when no key is configured; 401 when keys are
/// configured and the request carries none of them.
pub fn check(full: &[String], publish: &[String], headers: &HeaderMap) -> Result<Scope, ApiError> {
    if full.is_empty() && publish.is_empty() {
        return Ok(Scope::Full);
    }
    let presented = bearer(headers).ok_or(ApiError::MissingKey)?;
    // Both lists always compared whole: the time does not depend on which one matched.
    let (is_full, is_publish) = (matches_any(full, presented), matches_any(publish, presented));
    if is_full {
        Ok(Scope::Full)
    } else if is_publish {
        Ok(Scope::Publish)
    } else {
        Err(ApiError::WrongKey)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Constant-time in the key contents; see the module docs for what the length reveals.
fn matches_any(keys: &[String], presented: &[u8]) -> bool {
    let mut any = Choice::from(0);
    for k in keys {
        any |= k.as_bytes().ct_eq(presented);
    }
    any.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn no_keys_means_open() {
        assert_eq!(check(&[], &[], &headers(None)), Ok(Scope::Full));
    }

    #[test]
    fn publish_keys_get_the_publish_scope_and_close_the_rest() {
        let full = vec!["0123456789abcdef".to_owned()];
        let publish = vec!["publish-only-key-0001".to_owned()];
        let h = headers(Some("Bearer publish-only-key-0001"));
        assert_eq!(check(&full, &publish, &h), Ok(Scope::Publish));
        assert_eq!(check(&[], &publish, &h), Ok(Scope::Publish));
        assert_eq!(check(&[], &publish, &headers(None)), Err(ApiError::MissingKey));
        assert_eq!(
            check(&full, &publish, &headers(Some("Bearer 0123456789abcdef"))),
            Ok(Scope::Full)
        );
        assert_eq!(Scope::Publish.allows(&Route::Publish), Ok(()));
        assert_eq!(Scope::Publish.allows(&Route::TopicPublish("t".into())), Ok(()));
        assert_eq!(Scope::Publish.allows(&Route::Node), Err(ApiError::Forbidden));
        assert_eq!(Scope::Publish.allows(&Route::Drain), Err(ApiError::Forbidden));
        assert_eq!(Scope::Full.allows(&Route::Drain), Ok(()));
    }

    #[test]
    fn keys_are_checked() {
        let keys = vec!["0123456789abcdef".to_owned(), "fedcba9876543210-two".to_owned()];
        assert_eq!(check(&keys, &[], &headers(None)), Err(ApiError::MissingKey));
        assert_eq!(
            check(&keys, &[], &headers(Some("Basic abc"))),
            Err(ApiError::MissingKey)
        );
        assert_eq!(check(&keys, &[], &headers(Some("Bearer "))), Err(ApiError::MissingKey));
        assert_eq!(
            check(&keys, &[], &headers(Some("Bearer 0123456789abcdeX"))),
            Err(ApiError::WrongKey)
        );
        assert_eq!(
            check(&keys, &[], &headers(Some("Bearer 0123456789abcdef0"))),
            Err(ApiError::WrongKey)
        );
        assert_eq!(
            check(&keys, &[], &headers(Some("Bearer 0123456789abcdef"))),
            Ok(Scope::Full)
        );
        assert_eq!(
            check(&keys, &[], &headers(Some("bearer  fedcba9876543210-two "))),
            Ok(Scope::Full)
        );
    }
}
