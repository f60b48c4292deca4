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
//! All bodies being received share one byte budget ([`BodyBudget`],
//! `admin.max_pending_body_bytes`), which the admin listener puts into each request's
//! extensions: a body declared with `Content-Length` takes its whole length up front, a
//! chunked one takes each chunk as it arrives, and one that cannot get its bytes at once is
//! answered 503 `overloaded` with `Retry-After` (counted in
//! `herald_admin_rejected_total{reason="body_budget"}`). The bytes go back when reading ends;
//! the handler that parses them runs at once after. A request without a budget in its
//! extensions (unit tests) is not budgeted.
//!
//! JSON parsing of the publish shapes lives with the handlers; this file only delivers
//! bytes and media types.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Request};
use prometheus::{IntCounter, IntGauge};

use super::error::ApiError;

/// Longest time a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bursts of body bytes at least this large are followed by a heap trim once all bodies
/// are read (glibc keeps freed buffers resident otherwise).
const TRIM_AFTER: usize = 16 << 20;

/// The bytes all admin request bodies being received may hold together. Cloned into each
/// admin request's extensions by the node.
#[derive(Clone)]
pub struct BodyBudget {
    inner: Arc<BudgetInner>,
}

struct BudgetInner {
    max: usize,
    taken: AtomicUsize,
    /// Set when `taken` passed [`TRIM_AFTER`]; cleared by the trim when it is back to zero.
    burst: AtomicBool,
    rejected: IntCounter,
    gauge: IntGauge,
}

/// Bytes taken from a [`BodyBudget`]; dropping it gives them back.
struct Taken {
    budget: Arc<BudgetInner>,
    bytes: usize,
}

impl BodyBudget {
    /// `max` bytes; refusals go to `rejected`, the bytes taken now to `gauge`.
    pub fn new(max: usize, rejected: IntCounter, gauge: IntGauge) -> Self {
        Self {
            inner: Arc::new(BudgetInner {
                max,
                taken: AtomicUsize::new(0),
                burst: AtomicBool::new(false),
                rejected,
                gauge,
            }),
        }
    }

    fn take(&self, bytes: usize) -> Result<Taken, ApiError> {
        let mut taken = Taken {
            budget: self.inner.clone(),
            bytes: 0,
        };
        taken.grow(bytes)?;
        Ok(taken)
    }
}

impl Taken {
    /// Takes `more` bytes, or refuses (and counts) without taking any.
    fn grow(&mut self, more: usize) -> Result<(), ApiError> {
        let b = &self.budget;
        let before = b.taken.fetch_add(more, Ordering::AcqRel);
        if before + more > b.max {
            b.taken.fetch_sub(more, Ordering::AcqRel);
            b.rejected.inc();
            return Err(ApiError::Overloaded { retry_after_secs: 1 });
        }
        if before + more >= TRIM_AFTER {
            b.burst.store(true, Ordering::Release);
        }
        b.gauge.add(more as i64);
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        let b = &self.budget;
        let before = b.taken.fetch_sub(self.bytes, Ordering::AcqRel);
        b.gauge.sub(self.bytes as i64);
        if before == self.bytes && b.burst.swap(false, Ordering::AcqRel) {
            crate::socket_budget::release_freed_memory();
        }
    }
}

/// Reads the whole body of `req`, refusing more than `limit` bytes, within the request's
/// [`BodyBudget`] if it has one.
pub async fn read(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = match req.headers().get(CONTENT_LENGTH) {
        None => None,
        Some(len) => {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| ApiError::BodyRead("Content-Length is not a number".into()))?;
            if len > limit as u64 {
                return Err(ApiError::BodyTooLarge { limit });
            }
            Some(len as usize)
        }
    };
    let budget = req.extensions().get::<BodyBudget>().cloned();
    // A declared length is taken whole before a byte is read: the 503 comes at once.
    let mut taken = match (&budget, declared) {
        (Some(b), Some(len)) => Some(b.take(len)?),
        (Some(b), None) => Some(b.take(0)?),
        (None, _) => None,
    };
    let mut body = req.into_body();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    let collect = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BodyRead(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if buf.len() + data.len() > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            if let Some(t) = taken.as_mut() {
                // Beyond what was declared (or all of a chunked body): take as it comes.
                let have = t.bytes;
                let need = buf.len() + data.len();
                if need > have {
                    t.grow(need - have)?;
                }
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) => Err(ApiError::RequestTimeout(BODY_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok(buf.freeze()),
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
