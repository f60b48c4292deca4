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
//! GET and HEAD are served, OPTIONS gets 204, other methods 405. `/demo/config.js` is the
//! one file made at run time: the node's `[demo]` topic names, which the pages import.

use std::sync::OnceLock;

use bytes::Bytes;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use hyper::{HeaderMap, Method, Response, StatusCode};

use crate::http_server::{json_error, Body};

/// One file: embedded, or made once at start-up ([`demo_config`]).
pub struct Asset {
    pub content_type: &'static str,
    pub bytes: Bytes,
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    const fn new(content_type: &'static str, bytes: &'static [u8]) -> Self {
        Self {
            content_type,
            bytes: Bytes::from_static(bytes),
            etag: OnceLock::new(),
        }
    }

    /// The strong ETag: `"<length>-<FNV-1a 64 of the bytes>"`, computed once.
    pub fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in self.bytes.iter() {
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

/// The embedded demo file for `name` (the path after `/demo/`; empty is the index).
/// `config.js` is not among them: it is the node's own ([`demo_config`]).
pub fn demo_asset(name: &str) -> Option<&'static Asset> {
    let name = if name.is_empty() { "index.html" } else { name };
    DEMO.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}

/// `/demo/config.js`: an ES module whose default export holds the node's `[demo]` topic
/// names (`time_topic`, `stats_topic`, `chat_topic`), so the pages follow the configuration.
pub fn demo_config(time_topic: &str, stats_topic: &str, chat_topic: &str) -> Asset {
    let names = serde_json::json!({
        "time_topic": time_topic,
        "stats_topic": stats_topic,
        "chat_topic": chat_topic,
    });
    let body = format!("// The node's [demo] topic names (made by the node at start-up).\nexport default {names};\n");
    Asset {
        content_type: JS,
        bytes: Bytes::from(body),
        etag: OnceLock::new(),
    }
}

/// Whether the `If-None-Match` lines match `etag`: `*`, or any entry of any line's list,
/// compared weakly (RFC 9110 §13.1.2: `W/"x"` matches `"x"`). Several lines form one list.
pub fn none_match<'a>(lines: impl IntoIterator<Item = &'a str>, etag: &str) -> bool {
    lines.into_iter().any(|line| {
        line.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
    })
}

/// Answers a request for `asset`; `cors` adds the cross-origin headers (`/client/`).
pub fn serve(method: &Method, headers: &HeaderMap, asset: &Asset, cors: bool) -> Response<Body> {
    if method == Method::OPTIONS {
        let mut r = Response::new(Body::default());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        if cors {
            add_cors(h);
            // A preflight may announce request headers (a fetch with Cache-Control, say):
            // any is fine, these files are public.
            if let Some(asked) = headers.get("access-control-request-headers") {
                h.insert("access-control-allow-headers", asked.clone());
            }
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
    let lines = headers.get_all(IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok());
    let matched = none_match(lines, etag.to_str().unwrap_or(""));
    let (status, body) = if matched {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if method == Method::HEAD {
        (StatusCode::OK, Bytes::new())
    } else {
        (StatusCode::OK, asset.bytes.clone())
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
    // Scripts on other origins may read the ETag (to revalidate themselves).
    h.insert("access-control-expose-headers", HeaderValue::from_static("ETag"));
}

/// `/demo` → `demo/` (308: the method is kept). Relative, so that behind a proxy serving
/// the node under a path prefix (`/herald/demo`) the browser stays under it.
pub fn demo_redirect() -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    r.headers_mut().insert(LOCATION, HeaderValue::from_static("demo/"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let a = "\"a\"";
        assert!(none_match(["\"a\""], a));
        assert!(none_match(["W/\"a\""], a));
        assert!(none_match(["\"x\", W/\"a\""], a));
        assert!(none_match(["*"], a));
        assert!(none_match(["\"x\"", "\"y\", \"a\""], a), "a later header line");
        assert!(!none_match(["W/*"], a), "W/* is not a wildcard");
        assert!(!none_match(["\"b\""], a));
        assert!(!none_match([""], a));
        assert!(!none_match([], a));
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
        assert!(demo_asset("config.js").is_none(), "the node's own, not embedded");
    }

    #[test]
    fn demo_config_exports_the_names_escaped() {
        let c = demo_config("t.time", "t.stats", "room\"x");
        let text = std::str::from_utf8(&c.bytes).unwrap();
        let json = text
            .split("export default ")
            .nth(1)
            .unwrap()
            .trim_end()
            .trim_end_matches(';');
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"time_topic": "t.time", "stats_topic": "t.stats", "chat_topic": "room\"x"})
        );
        assert_eq!(c.content_type, JS);
    }
}
