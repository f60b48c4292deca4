//! Request bodies: reading them within a size bound and a deadline, and telling what their
//! `Content-Type` says.
//!
//! An oversize body is refused before it is read whole: a `Content-Length` over the bound
//! is answered with 413 at once (not one body byte read, and curl's `Expect: 100-continue`
//! never gets its 100), and a chunked body is cut off by `http_body_util::Limited` as soon
//! as it passes the bound. Either way the connection is closed after the answer so the
//! unread rest is never parsed as a request. A body that trickles in slower than
//! [`BODY_TIMEOUT`] gets 408.
//!
//! JSON parsing of the publish shapes lives with the handlers; this file only delivers
//! bytes and media types.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Request};

use super::error::ApiError;

/// Longest time a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the whole body of `req`, refusing more than `limit` bytes.
pub async fn read(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::BodyRead("Content-Length is not a number".into()))?;
        if len > limit as u64 {
            return Err(ApiError::BodyTooLarge { limit });
        }
    }
    let body = Limited::new(req.into_body(), limit);
    match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => Err(ApiError::RequestTimeout(BODY_TIMEOUT.as_secs())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::BodyTooLarge { limit }),
        Ok(Err(e)) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// What a `Content-Type` header says about a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    /// No `Content-Type` header.
    Absent,
    /// `application/json` or any `application/*+json`.
    Json,
    /// `text/*`; `charset` is the lower-cased parameter, if any.
    Text { charset: Option<String> },
    /// Anything else (`application/octet-stream`, `application/x-www-form-urlencoded`...).
    Other(String),
}

/// Classifies the request's `Content-Type`.
pub fn media(headers: &HeaderMap) -> Media {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Media::Absent;
    };
    let value = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim().to_owned();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        return Media::Json;
    }
    if essence.starts_with("text/") {
        let charset = parts.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim() == "charset").then(|| v.trim().trim_matches('"').to_owned())
        });
        return Media::Text { charset };
    }
    Media::Other(essence)
}

/// For endpoints whose body is a JSON document: JSON or no `Content-Type`, else 415.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match media(headers) {
        Media::Json | Media::Absent => Ok(()),
        Media::Text { .. } => Err(unsupported("text/*")),
        Media::Other(m) => Err(unsupported(&m)),
    }
}

fn unsupported(media: &str) -> ApiError {
    ApiError::UnsupportedMediaType(format!(
        "this endpoint takes application/json, not {media}; to publish a raw body use POST /api/topics/{{topic}}/publish"
    ))
}

/// `part` (a sub-slice of `whole`, e.g. a `RawValue` parsed out of it) as `Bytes` sharing
/// `whole`'s buffer: the published payload is the request's own bytes, never a copy.
pub fn slice_of(whole: &Bytes, part: &str) -> Bytes {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    debug_assert!(start + part.len() <= whole.len());
    whole.slice(start..start + part.len())
}

/// Maps a serde_json error on a request body to the API's codes: broken JSON is
/// `invalid_json`, well-formed JSON of the wrong shape is `invalid_field`.
pub fn json_error(e: serde_json::Error, shape: &str) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::InvalidJson(e.to_string()),
        Category::Data => ApiError::InvalidField(format!("the body must be {shape}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn ct(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn classifies_media_types() {
        assert_eq!(media(&HeaderMap::new()), Media::Absent);
        assert_eq!(media(&ct("application/json; charset=utf-8")), Media::Json);
        assert_eq!(media(&ct("application/cloudevents+json")), Media::Json);
        assert_eq!(media(&ct("text/plain")), Media::Text { charset: None });
        assert_eq!(
            media(&ct("Text/Plain; Charset=\"UTF-8\"")),
            Media::Text {
                charset: Some("utf-8".into())
            }
        );
        assert_eq!(
            media(&ct("application/octet-stream")),
            Media::Other("application/octet-stream".into())
        );
        assert!(require_json(&ct("application/x-www-form-urlencoded")).is_err());
        assert!(require_json(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn slices_share_the_buffer() {
        let whole = Bytes::from_static(b"{\"data\":[1,2]}");
        let s = std::str::from_utf8(&whole).unwrap();
        let part = &s[8..13];
        let b = slice_of(&whole, part);
        assert_eq!(&b[..], b"[1,2]");
        assert_eq!(b.as_ptr(), whole[8..].as_ptr());
    }
}
