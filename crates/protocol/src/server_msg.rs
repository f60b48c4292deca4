//! Encoding JSON protocol v1 answers and deliveries (node to client), and decoding them on
//! the client side.
//!
//! Every encoder returns a complete WebSocket text frame (see `ws_frame`), built in one
//! allocation. A delivery is encoded once per message and per wire format and then shared:
//! [`json_delivery`] for `/ws` subscribers, [`raw_delivery`] for `/raw` subscribers.
//!
//! How payload kinds cross formats (documented in docs/protocol.md):
//! - JSON data reaches `/ws` subscribers as `data` verbatim, and `/raw` subscribers as a text
//!   frame holding the JSON text, except that a JSON string is delivered unquoted.
//! - Raw text reaches `/ws` subscribers as a JSON string `data`.
//! - Raw binary reaches `/ws` subscribers as base64 in `data` with `"encoding":"base64"`.

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::StreamPos;
use crate::payload::{Payload, PayloadKind};
use crate::ws_frame::{binary_frame, encode_frame, text_frame, OP_TEXT};

/// Error codes carried in `{"type":"error","code":...}` frames. The snake_case names are
/// part of the public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    InvalidJson,
    /// Valid JSON, but not a request object.
    InvalidMessage,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an unusable value.
    InvalidField,
    /// `op` names no known operation.
    UnknownOp,
    /// A topic name breaks the grammar or the length limit.
    InvalidTopic,
    /// Subscribing would pass the per-connection subscription limit.
    TooManySubscriptions,
    /// A binary frame arrived on the JSON protocol.
    BinaryNotSupported,
    /// The message could not be relayed to the other nodes: it reached this node's
    /// subscribers only, and was not acknowledged.
    RelayUnavailable,
    /// Reserved: the node is shutting down and no longer accepts publishes.
    ShuttingDown,
    /// Reserved: the node failed for a reason that is not the client's fault.
    Internal,
    /// The token is missing where one is required, malformed, badly signed, expired or
    /// not yet valid.
    Unauthorized,
    /// The connection's permissions do not allow this subscribe or publish.
    Forbidden,
    /// The connection publishes faster than its limits allow; the message was dropped.
    RateLimited,
    /// The connection's token expires soon: send `refresh` with a new one.
    TokenExpired,
    /// While a subscription replayed history, live messages piled up past the node's
    /// buffer: the subscription ended (resubscribe with `since` to continue).
    RecoveryOverflow,
    /// History lost messages a replaying subscription still needed (trimmed, expired or
    /// reset while it replayed): the subscription ended.
    RecoveryLost,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::UnknownOp => "unknown_op",
            Self::InvalidTopic => "invalid_topic",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::RelayUnavailable => "relay_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::TokenExpired => "token_expired",
            Self::RecoveryOverflow => "recovery_overflow",
            Self::RecoveryLost => "recovery_lost",
        }
    }

    /// Every code, for docs and metric label pre-registration.
    pub const ALL: [ErrorCode; 17] = [
        Self::InvalidJson,
        Self::InvalidMessage,
        Self::MissingField,
        Self::InvalidField,
        Self::UnknownOp,
        Self::InvalidTopic,
        Self::TooManySubscriptions,
        Self::BinaryNotSupported,
        Self::RelayUnavailable,
        Self::ShuttingDown,
        Self::Internal,
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::TokenExpired,
        Self::RecoveryOverflow,
        Self::RecoveryLost,
    ];
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serialises")
}

/// `{"type":"welcome","node":"..","connection":".."}`
pub fn welcome(node: &str, connection: &str) -> Bytes {
    let body = format!(
        r#"{{"type":"welcome","node":{},"connection":{}}}"#,
        json_string(node),
        json_string(connection)
    );
    text_frame(body.as_bytes())
}

/// `{"type":"welcome",..,"ping_interval_ms":N}`: the welcome of a `/ws?heartbeat=json`
/// connection, telling the client how often `{"type":"ping"}` arrives.
pub fn welcome_json_heartbeat(node: &str, connection: &str, ping_interval_ms: u64) -> Bytes {
    let body = format!(
        r#"{{"type":"welcome","node":{},"connection":{},"ping_interval_ms":{ping_interval_ms}}}"#,
        json_string(node),
        json_string(connection)
    );
    text_frame(body.as_bytes())
}

/// The JSON heartbeat `{"type":"ping"}` as a complete text frame (15-byte payload).
const JSON_PING_FRAME: &[u8] = b"\x81\x0f{\"type\":\"ping\"}";

/// The JSON heartbeat frame: static bytes, shared by every connection (no allocation).
pub fn json_ping() -> Bytes {
    Bytes::from_static(JSON_PING_FRAME)
}

/// `{"type":"ack","id":..}` echoing the raw id.
pub fn ack(id: &str) -> Bytes {
    encode_frame(OP_TEXT, &[br#"{"type":"ack","id":"#, id.as_bytes(), b"}"])
}

/// `"offset":N,"epoch":"E"` (no braces), the position fields of frames and answers.
fn position_fields(pos: &StreamPos) -> String {
    format!(r#""offset":{},"epoch":{}"#, pos.offset, json_string(&pos.epoch))
}

/// The ack of a publish: `{"type":"ack","id":..}`, with `"offset"` and `"epoch"` for a
/// message of a history topic.
pub fn publish_ack(id: &str, pos: Option<&StreamPos>) -> Bytes {
    match pos {
        None => ack(id),
        Some(p) => text_frame(format!(r#"{{"type":"ack","id":{id},{}}}"#, position_fields(p)).as_bytes()),
    }
}

/// The ack of a subscribe: `{"type":"ack","id":..}`, with `"recovered":{topic:bool}` for the
/// topics given in `since` and `"positions":{topic:{"offset":..,"epoch":..}}` for its
/// history topics, when there are any. `id` is the raw id.
pub fn subscribe_ack(id: &str, recovered: &[(&str, bool)], positions: &[(&str, &StreamPos)]) -> Bytes {
    if recovered.is_empty() && positions.is_empty() {
        return ack(id);
    }
    let mut body = format!(r#"{{"type":"ack","id":{id}"#);
    if !recovered.is_empty() {
        body.push_str(r#","recovered":{"#);
        for (i, (t, r)) in recovered.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&json_string(t));
            body.push(':');
            body.push_str(if *r { "true" } else { "false" });
        }
        body.push('}');
    }
    if !positions.is_empty() {
        body.push_str(r#","positions":{"#);
        for (i, (t, p)) in positions.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&json_string(t));
            body.push_str(":{");
            body.push_str(&position_fields(p));
            body.push('}');
        }
        body.push('}');
    }
    body.push('}');
    text_frame(body.as_bytes())
}

/// `{"type":"error","code":"..","topic":"..","message":".."}`: an error about one
/// subscription, not about a request.
pub fn topic_error(code: ErrorCode, topic: &str, message: &str) -> Bytes {
    let body = format!(
        r#"{{"type":"error","code":"{}","topic":{},"message":{}}}"#,
        code.as_str(),
        json_string(topic),
        json_string(message)
    );
    text_frame(body.as_bytes())
}

/// `{"type":"pong"}` or `{"type":"pong","id":..}`.
pub fn pong(id: Option<&str>) -> Bytes {
    match id {
        Some(id) => encode_frame(OP_TEXT, &[br#"{"type":"pong","id":"#, id.as_bytes(), b"}"]),
        None => text_frame(br#"{"type":"pong"}"#),
    }
}

/// `{"type":"error","id":..,"code":"..","message":".."}` (`id` omitted when unknown).
pub fn error(id: Option<&str>, code: ErrorCode, message: &str) -> Bytes {
    let body = match id {
        Some(id) => format!(
            r#"{{"type":"error","id":{id},"code":"{}","message":{}}}"#,
            code.as_str(),
            json_string(message)
        ),
        None => format!(
            r#"{{"type":"error","code":"{}","message":{}}}"#,
            code.as_str(),
            json_string(message)
        ),
    };
    text_frame(body.as_bytes())
}

/// The frame a `/ws` subscriber receives for a message on `topic`.
/// `topic` must be valid (so it needs no JSON escaping).
pub fn json_delivery(topic: &str, payload: &Payload) -> Bytes {
    json_delivery_at(topic, payload, None)
}

/// [`json_delivery`] of a message with a stream position (history topics): `"offset"` and
/// `"epoch"` follow the topic.
pub fn json_delivery_at(topic: &str, payload: &Payload, pos: Option<&StreamPos>) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"message","topic":""#;
    let fields = pos.map(|p| format!(r#"",{},"data":"#, position_fields(p)));
    let data_key: &[u8] = match &fields {
        Some(f) => f.as_bytes(),
        None => br#"","data":"#,
    };
    match payload.kind {
        PayloadKind::Json => encode_frame(OP_TEXT, &[HEAD, topic.as_bytes(), data_key, &payload.bytes, b"}"]),
        PayloadKind::Text => {
            // The bytes were checked to be UTF-8 on the way in; a lossy view never allocates then.
            let text = String::from_utf8_lossy(&payload.bytes);
            let quoted = json_string(&text);
            encode_frame(OP_TEXT, &[HEAD, topic.as_bytes(), data_key, quoted.as_bytes(), b"}"])
        }
        PayloadKind::Binary => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&payload.bytes);
            encode_frame(
                OP_TEXT,
                &[
                    HEAD,
                    topic.as_bytes(),
                    data_key,
                    b"\"",
                    b64.as_bytes(),
                    br#"","encoding":"base64"}"#,
                ],
            )
        }
    }
}

/// The frame a `/raw` subscriber receives for a message.
pub fn raw_delivery(payload: &Payload) -> Bytes {
    match payload.kind {
        PayloadKind::Text => text_frame(&payload.bytes),
        PayloadKind::Binary => binary_frame(&payload.bytes),
        PayloadKind::Json => {
            if payload.bytes.first() == Some(&b'"') {
                if let Ok(s) = serde_json::from_slice::<String>(&payload.bytes) {
                    return text_frame(s.as_bytes());
                }
            }
            text_frame(&payload.bytes)
        }
    }
}

/// `{"op":"publish","topic":..,"data":..}` with an optional numeric id: what a client sends.
/// `data` must be JSON text; `topic` must be valid.
pub fn publish_request(topic: &str, data: &[u8], id: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + topic.len() + data.len());
    out.extend_from_slice(br#"{"op":"publish","topic":""#);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(br#"","data":"#);
    out.extend_from_slice(data);
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.push(b'}');
    out
}

/// A node-to-client message as a client sees it; borrowed from the frame.
#[derive(Debug, Deserialize)]
pub struct ServerMessage<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(borrow, default)]
    pub topic: Option<&'a str>,
    /// Present (even as JSON `null`) on `message` frames.
    #[serde(borrow, default, deserialize_with = "crate::client_msg::present")]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub encoding: Option<&'a str>,
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub code: Option<&'a str>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub connection: Option<String>,
}

/// Decodes a node-to-client frame (client side).
pub fn decode_server(text: &[u8]) -> Result<ServerMessage<'_>, serde_json::Error> {
    serde_json::from_slice(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(f: &Bytes) -> &str {
        let h = crate::ws_frame::header_len(f.len() - 2);
        std::str::from_utf8(&f[h..]).unwrap()
    }

    #[test]
    fn encodes_answers() {
        assert_eq!(body(&ack("7")), r#"{"type":"ack","id":7}"#);
        assert_eq!(body(&pong(None)), r#"{"type":"pong"}"#);
        assert_eq!(body(&pong(Some("\"p\""))), r#"{"type":"pong","id":"p"}"#);
        assert_eq!(
            body(&error(Some("3"), ErrorCode::UnknownOp, "no \"fly\"")),
            r#"{"type":"error","id":3,"code":"unknown_op","message":"no \"fly\""}"#
        );
        assert_eq!(
            body(&error(None, ErrorCode::InvalidJson, "bad")),
            r#"{"type":"error","code":"invalid_json","message":"bad"}"#
        );
        assert_eq!(&json_ping()[..], &text_frame(br#"{"type":"ping"}"#)[..]);
        let w: serde_json::Value = serde_json::from_str(body(&welcome_json_heartbeat("n1", "c9", 25))).unwrap();
        assert_eq!(w["ping_interval_ms"], 25);
        assert_eq!(w["connection"], "c9");
        let w: serde_json::Value = serde_json::from_str(body(&welcome("n1", "c9"))).unwrap();
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["connection"], "c9");
    }

    #[test]
    fn deliveries_cross_formats() {
        let j = Payload::json(&br#"{"x":1}"#[..]);
        assert_eq!(
            body(&json_delivery("t", &j)),
            r#"{"type":"message","topic":"t","data":{"x":1}}"#
        );
        assert_eq!(body(&raw_delivery(&j)), r#"{"x":1}"#);
        let s = Payload::json(&br#""he said \"hi\"""#[..]);
        assert_eq!(body(&raw_delivery(&s)), r#"he said "hi""#);
        let t = Payload::text(&b"line\n\"q\""[..]);
        assert_eq!(
            body(&json_delivery("t", &t)),
            r#"{"type":"message","topic":"t","data":"line\n\"q\""}"#
        );
        assert_eq!(raw_delivery(&t)[0], 0x81);
        let b = Payload::binary(&[0u8, 255, 1][..]);
        assert_eq!(
            body(&json_delivery("t", &b)),
            r#"{"type":"message","topic":"t","data":"AP8B","encoding":"base64"}"#
        );
        assert_eq!(&raw_delivery(&b)[..], &[0x82, 3, 0, 255, 1]);
    }

    #[test]
    fn client_side_decode() {
        let m = decode_server(br#"{"type":"message","topic":"a","data":[1,2]}"#).unwrap();
        assert_eq!(
            (m.kind, m.topic, m.data.unwrap().get()),
            ("message", Some("a"), "[1,2]")
        );
        let m = decode_server(br#"{"type":"message","topic":"a","data":null}"#).unwrap();
        assert_eq!(m.data.map(|d| d.get()), Some("null"), "null data is data");
        let req = publish_request("a", b"{\"n\":1}", Some(5));
        assert_eq!(req, br#"{"op":"publish","topic":"a","data":{"n":1},"id":5}"#);
    }
}

#[cfg(test)]
mod position_tests {
    use super::*;

    fn body(frame: &Bytes) -> serde_json::Value {
        // Server frames are unmasked; the payload follows a 2- or 4-byte header here.
        let at = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[at..]).unwrap()
    }

    #[test]
    fn frames_with_positions() {
        let pos = StreamPos {
            offset: 42,
            epoch: "e\"1".into(),
        };
        for p in [
            Payload::json(&br#"{"a":1}"#[..]),
            Payload::text(&b"hi"[..]),
            Payload::binary(&[1u8, 2][..]),
        ] {
            let v = body(&json_delivery_at("room", &p, Some(&pos)));
            assert_eq!(v["offset"], 42);
            assert_eq!(v["epoch"], "e\"1");
            assert_eq!(v["topic"], "room");
            assert_eq!(
                body(&json_delivery_at("room", &p, None)),
                body(&json_delivery("room", &p))
            );
            assert!(body(&json_delivery("room", &p)).get("offset").is_none());
        }
        let v = body(&publish_ack("7", Some(&pos)));
        assert_eq!((v["id"].clone(), v["offset"].clone()), (7.into(), 42.into()));
        assert_eq!(body(&publish_ack("7", None)), body(&ack("7")));
        let v = body(&subscribe_ack("\"x\"", &[("a", true), ("b", false)], &[("a", &pos)]));
        assert_eq!(v["id"], "x");
        assert_eq!(v["recovered"]["a"], true);
        assert_eq!(v["recovered"]["b"], false);
        assert_eq!(v["positions"]["a"]["offset"], 42);
        let v = body(&topic_error(ErrorCode::RecoveryOverflow, "a", "m"));
        assert_eq!(
            (v["code"].clone(), v["topic"].clone()),
            ("recovery_overflow".into(), "a".into())
        );
    }
}
