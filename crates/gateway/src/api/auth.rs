//! API key check for `/api/`: `Authorization: Bearer <key>` against `admin.api_keys`.
//!
//! With no key configured every request passes; `Config::validate` then refuses a
//! non-loopback `admin.listen`, so an open API is reachable from this host only. With keys,
//! the presented key is compared with *every* configured key, each in constant time
//! (`subtle`), and the results are combined without branching, so the time taken does not
//! say how many leading bytes matched or which key was close. What can leak is whether the
//! presented key has the same length as some configured key; keys are at least 16
//! characters (checked at start-up), so knowing the length does not help guess one.
//!
//! `/metrics`, `/healthz` and `/readyz` are not checked here: probes and scrapers stay
//! open (see `admin.rs`).

use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use subtle::{Choice, ConstantTimeEq};

use super::error::ApiError;

/// Passes when no key is configured or the request carries one of `keys`.
pub fn check(keys: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    let presented = bearer(headers).ok_or(ApiError::MissingKey)?;
    if matches_any(keys, presented) {
        Ok(())
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
        assert_eq!(check(&[], &headers(None)), Ok(()));
    }

    #[test]
    fn keys_are_checked() {
        let keys = vec!["0123456789abcdef".to_owned(), "fedcba9876543210-two".to_owned()];
        assert_eq!(check(&keys, &headers(None)), Err(ApiError::MissingKey));
        assert_eq!(check(&keys, &headers(Some("Basic abc"))), Err(ApiError::MissingKey));
        assert_eq!(check(&keys, &headers(Some("Bearer "))), Err(ApiError::MissingKey));
        assert_eq!(
            check(&keys, &headers(Some("Bearer 0123456789abcdeX"))),
            Err(ApiError::WrongKey)
        );
        assert_eq!(
            check(&keys, &headers(Some("Bearer 0123456789abcdef0"))),
            Err(ApiError::WrongKey)
        );
        assert_eq!(check(&keys, &headers(Some("Bearer 0123456789abcdef"))), Ok(()));
        assert_eq!(check(&keys, &headers(Some("bearer  fedcba9876543210-two "))), Ok(()));
    }
}
