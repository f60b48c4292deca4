//! Fuzzes the JSON protocol v1 request decoder (`herald_protocol::decode_request`): every
//! text frame a client sends on `/ws` goes through it.
//!
//! Invariants checked, beyond "no panic":
//! - what borrows from the frame (`data`, `id`, topics without escapes) points into it;
//! - an accepted request has valid topics, `data` is one JSON value, `id` is a JSON number
//!   or string; re-encoded canonically, it decodes to the same request (identity);
//! - an error keeps only an `id` read from the frame, and a (UTF-8) frame that is not JSON
//!   is answered `invalid_json`, whatever else is wrong with it.

#![no_main]

use std::borrow::Cow;

use herald_protocol::server_msg::ErrorCode;
use herald_protocol::{decode_request, validate_topic, ClientRequest, TopicRules};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

fn inside(part: &str, whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fn is_json(text: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(text).is_ok()
}

/// The request written back as canonical JSON.
fn encode(req: &ClientRequest<'_>) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let id = req.id().map(|i| format!(",\"id\":{i}")).unwrap_or_default();
    let list = |ts: &[Cow<'_, str>]| ts.iter().map(|t| q(t)).collect::<Vec<_>>().join(",");
    match req {
        ClientRequest::Subscribe { topics, .. } => {
            format!("{{\"op\":\"subscribe\",\"topics\":[{}]{id}}}", list(topics))
        }
        ClientRequest::Unsubscribe { topics, .. } => {
            format!("{{\"op\":\"unsubscribe\",\"topics\":[{}]{id}}}", list(topics))
        }
        ClientRequest::Publish { topic, data, .. } => {
            format!("{{\"op\":\"publish\",\"topic\":{},\"data\":{data}{id}}}", q(topic))
        }
        ClientRequest::Ping { .. } => format!("{{\"op\":\"ping\"{id}}}"),
        ClientRequest::Auth { token, .. } => format!("{{\"op\":\"auth\",\"token\":{}{id}}}", q(token)),
        ClientRequest::Refresh { token, .. } => format!("{{\"op\":\"refresh\",\"token\":{}{id}}}", q(token)),
    }
}

fuzz_target!(|data: &[u8]| {
    let rules = TopicRules::default();
    // The decoder's input is a text frame's payload, which the reader has checked to be
    // UTF-8; other bytes must not crash it, but the JSON-ness promises are about UTF-8
    // (serde_json skips strings it ignores without validating them).
    let utf8 = std::str::from_utf8(data).is_ok();
    match decode_request(data, rules) {
        Ok(req) => {
            assert!(!utf8 || is_json(data));
            if let Some(id) = req.id() {
                assert!(inside(id, data));
                // One JSON value (not `Value`: `1e9999` is a JSON number, echoed as sent).
                assert!(serde_json::from_str::<IgnoredAny>(id).is_ok(), "id {id}");
                assert!(id.starts_with('"') || id.starts_with('-') || id.as_bytes()[0].is_ascii_digit());
            }
            let topics: Vec<&Cow<'_, str>> = match &req {
                ClientRequest::Subscribe { topics, .. } | ClientRequest::Unsubscribe { topics, .. } => {
                    assert!(!topics.is_empty());
                    topics.iter().collect()
                }
                ClientRequest::Publish { topic, data: d, .. } => {
                    assert!(inside(d, data));
                    assert!(serde_json::from_str::<IgnoredAny>(d).is_ok(), "data is one JSON value");
                    vec![topic]
                }
                ClientRequest::Ping { .. } => vec![],
                ClientRequest::Auth { token, .. } | ClientRequest::Refresh { token, .. } => {
                    assert!(!token.is_empty());
                    if let Cow::Borrowed(b) = token {
                        assert!(inside(b, data));
                    }
                    vec![]
                }
            };
            for t in topics {
                assert!(validate_topic(t, rules).is_ok());
                if let Cow::Borrowed(b) = t {
                    assert!(inside(b, data));
                }
            }
            let again = encode(&req);
            let back = decode_request(again.as_bytes(), rules).expect("canonical form decodes");
            assert_eq!(back, req, "decode(encode(decode(x))) == decode(x)");
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            if let Some(id) = e.id {
                assert!(inside(id, data));
            }
            // Not the converse: serde_json refuses a key it must decode that has a lone
            // surrogate escape (`"\\ude00"`), which the grammar allows, as invalid JSON.
            assert!(
                !utf8 || is_json(data) || e.code == ErrorCode::InvalidJson,
                "text that is not JSON is invalid_json ({:?}: {})",
                e.code,
                e.message
            );
        }
    }
});
