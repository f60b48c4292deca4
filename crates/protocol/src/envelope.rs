//! The relay envelope: how one published message travels between nodes (through Redis
//! pub/sub or the in-process relay), byte by byte.
//!
//! ```text
//! offset  size  field
//! 0       1     version, currently 1; other values are refused
//! 1       1     payload kind: 0 JSON, 1 text, 2 binary
//! 2       8     publish time, microseconds since the Unix epoch, big-endian u64
//! 10      1     origin node id length N (1..=255)
//! 11      N     origin node id, UTF-8
//! 11+N    2     topic length T, big-endian u16
//! 13+N    T     topic, ASCII (already validated by the publishing node)
//! 13+N+T  rest  payload bytes, exactly as published
//! ```
//! The receiving node drops envelopes whose origin is itself, so a node never delivers its
//! own publication twice, and re-validates kind, topic and (for JSON and text) the payload
//! before any of it reaches a client: garbage in the channel is counted and skipped.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::payload::{Payload, PayloadKind};
use crate::topic::{validate_topic, TopicRules};

/// The version byte this code writes and accepts.
pub const ENVELOPE_VERSION: u8 = 1;

/// A decoded envelope; `payload` and `topic` share the received buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub origin: String,
    pub published_at_micros: u64,
    pub topic: String,
    pub payload: Payload,
    /// The message's place in its topic's stream, for topics with history (version 2).
    pub stream: Option<StreamPos>,
}

/// A message's place in its topic's stream: the offset (1 for the first message) and the
/// epoch of the stream it was counted in (a new epoch means the past was lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPos {
    pub offset: u64,
    pub epoch: String,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    #[error("envelope is truncated")]
    Truncated,
    #[error("unsupported envelope version {0}")]
    Version(u8),
    #[error("unknown payload kind {0}")]
    Kind(u8),
    #[error("origin node id is empty or not UTF-8")]
    Origin,
    #[error("topic is invalid: {0}")]
    Topic(String),
    #[error("payload is not valid {0}")]
    Payload(&'static str),
}

/// Encodes an envelope in one allocation.
pub fn encode(origin: &str, published_at_micros: u64, topic: &str, payload: &Payload) -> Bytes {
    debug_assert!(!origin.is_empty() && origin.len() <= 255);
    let origin = &origin.as_bytes()[..origin.len().min(255)];
    let mut b = BytesMut::with_capacity(13 + origin.len() + topic.len() + payload.len());
    b.put_u8(ENVELOPE_VERSION);
    b.put_u8(payload.kind as u8);
    b.put_u64(published_at_micros);
    b.put_u8(origin.len() as u8);
    b.put_slice(origin);
    b.put_u16(topic.len() as u16);
    b.put_slice(topic.as_bytes());
    b.put_slice(&payload.bytes);
    b.freeze()
}

/// Reads only the origin node id, so a node can skip its own envelopes cheaply.
pub fn peek_origin(buf: &[u8]) -> Option<&[u8]> {
    let n = *buf.get(10)? as usize;
    buf.get(11..11 + n)
}

/// Decodes and validates an envelope. JSON payloads are checked to be one JSON value, text
/// payloads to be UTF-8, so a hostile publisher cannot make a node emit broken frames.
pub fn decode(buf: Bytes, rules: TopicRules) -> Result<Envelope, EnvelopeError> {
    if buf.len() < 13 {
        return Err(EnvelopeError::Truncated);
    }
    if buf[0] != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(buf[0]));
    }
    let kind = PayloadKind::from_u8(buf[1]).ok_or(EnvelopeError::Kind(buf[1]))?;
    let published_at_micros = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
    let n = buf[10] as usize;
    if n == 0 {
        return Err(EnvelopeError::Origin);
    }
    let topic_len_at = 11 + n;
    if buf.len() < topic_len_at + 2 {
        return Err(EnvelopeError::Truncated);
    }
    let origin = std::str::from_utf8(&buf[11..topic_len_at])
        .map_err(|_| EnvelopeError::Origin)?
        .to_owned();
    let t = u16::from_be_bytes([buf[topic_len_at], buf[topic_len_at + 1]]) as usize;
    let topic_at = topic_len_at + 2;
    if buf.len() < topic_at + t {
        return Err(EnvelopeError::Truncated);
    }
    let topic = std::str::from_utf8(&buf[topic_at..topic_at + t])
        .map_err(|_| EnvelopeError::Topic("not UTF-8".into()))?
        .to_owned();
    validate_topic(&topic, rules).map_err(|e| EnvelopeError::Topic(e.to_string()))?;
    let bytes = buf.slice(topic_at + t..);
    match kind {
        PayloadKind::Json => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|_| EnvelopeError::Payload("JSON"))?;
        }
        PayloadKind::Text => {
            std::str::from_utf8(&bytes).map_err(|_| EnvelopeError::Payload("UTF-8"))?;
        }
        PayloadKind::Binary => {}
    }
    Ok(Envelope {
        origin,
        published_at_micros,
        topic,
        payload: Payload { kind, bytes },
        stream: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let p = Payload::json(&br#"{"a":1}"#[..]);
        let b = encode("node-1", 0x0102030405060708, "room", &p);
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 0);
        assert_eq!(&b[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b[10], 6);
        assert_eq!(peek_origin(&b), Some(&b"node-1"[..]));
        let e = decode(b, TopicRules::default()).unwrap();
        assert_eq!(e.origin, "node-1");
        assert_eq!(e.topic, "room");
        assert_eq!(e.payload, p);
    }

    #[test]
    fn refuses_garbage() {
        let r = TopicRules::default();
        let good = encode("n", 1, "t", &Payload::binary(&[1u8, 2][..]));
        assert_eq!(decode(Bytes::from_static(b"hello"), r), Err(EnvelopeError::Truncated));
        let mut v = good.to_vec();
        v[0] = 9;
        assert_eq!(decode(v.into(), r), Err(EnvelopeError::Version(9)));
        let mut v = good.to_vec();
        v[1] = 7;
        assert_eq!(decode(v.into(), r), Err(EnvelopeError::Kind(7)));
        assert_eq!(decode(good.slice(..14), r), Err(EnvelopeError::Truncated));
        let bad_json = encode("n", 1, "t", &Payload::json(&b"{nope"[..]));
        assert_eq!(decode(bad_json, r), Err(EnvelopeError::Payload("JSON")));
        let bad_text = encode("n", 1, "t", &Payload::text(&[0xffu8][..]));
        assert_eq!(decode(bad_text, r), Err(EnvelopeError::Payload("UTF-8")));
        let bad_topic = encode("n", 1, "a b", &Payload::binary(&[][..]));
        assert!(matches!(decode(bad_topic, r), Err(EnvelopeError::Topic(_))));
    }
}
