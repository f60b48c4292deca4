//! Files the public listener serves from the binary: the browser client
//! (`/client/herald.js`, `/client/herald.d.ts`, from `clients/js/`) and, with `[demo]`
//! enabled, the demo pages (`/demo/...`, from `crates/gateway/assets/demo/`). All are
//! embedded at build time (`include_bytes!`), so a node needs no files on disk.
//!
//! Each answer carries a strong `ETag` (computed once per file, on first use), answers a
//! matching `If-None-Match` with 304, and `Cache-Control: public, max-age=300`: browsers
//! and CDNs reuse a copy for five minutes and then revalidate (a cheap 304), so a node
//! upgrade reaches pages within minutes without cache-busting URLs. `/client/` files are
//! meant to be loaded cross-origin (`import` from another site's page), hence
//! `Access-Control-Allow-Origin: *` and an OPTIONS preflight answer; they hold no secret.
//! GET and HEAD are served, OPTIONS gets 204, other methods 405.

use std::sync::OnceLock;

use bytes::Bytes;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use hyper::{HeaderMap, Method, Response, StatusCode};

use crate::http_server::{json_error, Body};

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub bytes: &'static [u8],
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    const fn new(content_type: &'static str, bytes: &'static [u8]) -> Self {
        Self {
            content_type,
            bytes,
            etag: OnceLock::new(),
        }
    }

    /// The strong ETag: `"<length>-<FNV-1a 64 of the bytes>"`, computed once.
    pub fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in self.bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            HeaderValue::from_str(&format!("\"{:x}-{h:016x}\"", self.bytes.len())).expect("ASCII")
        })
    }
}

const JS: &str = "text/javascript; charset=utf-8";

static HERALD_JS: Asset = Asset::new(JS, include_bytes!("../../../clients/js/herald.js"));
static HERALD_DTS: Asset = Asset::new(
    "text/plain; charset=utf-8",
    include_bytes!("../../../clients/js/herald.d.ts"),
);

static DEMO: [(&str, Asset); 5] = [
    (
        "index.html",
        Asset::new("text/html; charset=utf-8", include_bytes!("../assets/demo/index.html")),
    ),
    (
        "dashboard.html",
        Asset::new(
            "text/html; charset=utf-8",
            include_bytes!("../assets/demo/dashboard.html"),
        ),
    ),
    (
        "chat.html",
        Asset::new("text/html; charset=utf-8", include_bytes!("../assets/demo/chat.html")),
    ),
    (
        "demo.css",
        Asset::new("text/css; charset=utf-8", include_bytes!("../assets/demo/demo.css")),
    ),
    ("chart.js", Asset::new(JS, include_bytes!("../assets/demo/chart.js"))),
];

/// The `/client/` file at `path`, if any.
pub fn client_asset(path: &str) -> Option<&'static Asset> {
    match path {
        "/client/herald.js" => Some(&HERALD_JS),
        "/client/herald.d.ts" => Some(&HERALD_DTS),
        _ => None,
    }
}

/// The demo file for `name` (the path after `/demo/`; empty is the index).
pub fn demo_asset(name: &str) -> Option<&'static Asset> {
    let name = if name.is_empty() { "index.html" } else { name };
    DEMO.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}

/// Whether an `If-None-Match` value matches `etag`: `*`, or any entry of the list, compared
/// weakly (RFC 9110 §13.1.2: `W/"x"` matches `"x"`).
pub fn none_match(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|tag| {
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag == "*" || tag == etag
    })
}

/// Answers a request for `asset`; `cors` adds the cross-origin headers (`/client/`).
pub fn serve(method: &Method, headers: &HeaderMap, asset: &'static Asset, cors: bool) -> Response<Body> {
    if method == Method::OPTIONS {
        let mut r = Response::new(Body::default());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        if cors {
            add_cors(h);
        }
        return r;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET or HEAD");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        return r;
    }
    let etag = asset.etag();
    let matched = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| none_match(v, etag.to_str().unwrap_or("")));
    let (status, body) = if matched {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if method == Method::HEAD {
        (StatusCode::OK, Bytes::new())
    } else {
        (StatusCode::OK, Bytes::from_static(asset.bytes))
    };
    let mut r = Response::new(Body::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(ETAG, etag.clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if status == StatusCode::OK {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        // HEAD: the length a GET would have (hyper keeps an explicit one on HEAD).
        h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(asset.bytes.len()));
    }
    if cors {
        add_cors(h);
    }
    r
}

fn add_cors(h: &mut HeaderMap) {
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
}

/// `/demo` → `/demo/` (308: the method is kept).
pub fn demo_redirect() -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    r.headers_mut().insert(LOCATION, HeaderValue::from_static("/demo/"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        assert!(none_match("\"a\"", "\"a\""));
        assert!(none_match("W/\"a\"", "\"a\""));
        assert!(none_match("\"x\", W/\"a\"", "\"a\""));
        assert!(none_match("*", "\"a\""));
        assert!(!none_match("\"b\"", "\"a\""));
        assert!(!none_match("", "\"a\""));
    }

    #[test]
    fn etags_are_stable_strong_and_differ_by_content() {
        let a = client_asset("/client/herald.js").unwrap();
        assert_eq!(a.etag(), a.etag());
        let tag = a.etag().to_str().unwrap();
        assert!(tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"));
        let b = demo_asset("").unwrap();
        assert_ne!(a.etag(), b.etag());
        assert!(demo_asset("nope.html").is_none());
        assert_eq!(demo_asset("chart.js").unwrap().content_type, JS);
    }
}
