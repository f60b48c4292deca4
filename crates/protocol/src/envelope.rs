//! The relay envelope: how one published message travels between nodes (through Redis
//! pub/sub or the in-process relay), byte by byte.
//!
//! Two versions share one prefix, so [`peek_origin`] reads both at the same fixed offsets
//! without decoding anything:
//! ```text
//! offset  size  field (both versions)
//! 0       1     version: 1, or 2; other values are refused
//! 1       1     payload kind: 0 JSON, 1 text, 2 binary
//! 2       8     publish time, microseconds since the Unix epoch, big-endian u64
//! 10      1     origin node id length N (1..=255)
//! 11      N     origin node id, UTF-8
//! 11+N    2     topic length T, big-endian u16
//! 13+N    T     topic, ASCII (already validated by the publishing node)
//! ```
//! Version 1 then ends with the payload:
//! ```text
//! 13+N+T  rest  payload bytes, exactly as published
//! ```
//! Version 2 adds a flags byte and, when flag bit 0 is set, the message's stream position
//! (topics with history):
//! ```text
//! 13+N+T  1     flags: bit 0 = stream position follows, bit 1 = origin connection
//!               follows; every other bit must be 0
//! if bit 0:
//! +0      8     offset, big-endian u64
//! +8      1     epoch length E (0..=255)
//! +9      E     epoch, UTF-8
//! if bit 1:
//! +0      8     the publishing connection's number on the origin node, big-endian u64
//! then    rest  payload bytes, exactly as published
//! ```
//! The origin connection is written only for a message of a history topic whose publisher
//! does not want its own messages back (`/raw/{topic}?echo=false`): on a cluster the
//! origin node delivers such a message from the relay, like every other node, and needs
//! to know whom to skip. Bit 1 may only be set together with bit 0.
//! [`encode`] writes version 1 whenever there is no stream position, so nodes of the
//! previous release (which know only version 1) keep understanding every message that has
//! none during a rolling upgrade; only messages that carry a position need version 2.
//! Unknown flag bits are refused rather than skipped: a later flag may change how the rest
//! is laid out, and guessing would hand a client a corrupted payload.
//!
//! The payload is the rest of the buffer (Redis delivers a message whole, so it carries no
//! length of its own). The receiving node drops envelopes whose origin is itself, so a node
//! never delivers its own publication twice, and re-validates kind, topic, flags and (for
//! JSON and text) the payload before any of it reaches a client: garbage in the channel is
//! counted and skipped.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::payload::{Payload, PayloadKind};
use crate::topic::{validate_topic, TopicRules};

/// The version written for messages without a stream position; every release reads it.
pub const ENVELOPE_VERSION: u8 = 1;
/// The version written for messages with a stream position (see the module docs).
pub const ENVELOPE_VERSION_STREAM: u8 = 2;
/// Version 2 flag: a stream position follows the flags byte.
const FLAG_STREAM: u8 = 0x01;
/// Version 2 flag: the origin connection's number follows (after the stream position).
const FLAG_ORIGIN_CONN: u8 = 0x02;
/// Every flag this code understands; any other bit is refused.
const KNOWN_FLAGS: u8 = FLAG_STREAM | FLAG_ORIGIN_CONN;
/// The shortest possible envelope: version 1 with a 1-byte origin, an empty topic and no
/// payload.
const MIN_LEN: usize = 13;

/// A decoded envelope; `payload` and `topic` share the received buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub origin: String,
    pub published_at_micros: u64,
    pub topic: String,
    pub payload: Payload,
    /// The message's place in its topic's stream, for topics with history (version 2).
    pub stream: Option<StreamPos>,
    /// The publishing connection on the origin node, when it asked not to get its own
    /// messages back (version 2, with `stream` only).
    pub origin_conn: Option<u64>,
}

/// A message's place in its topic's stream: the offset (1 for the first message) and the
/// epoch of the stream it was counted in (a new epoch means the past was lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPos {
    pub offset: u64,
    pub epoch: String,
}

/// Why an envelope was refused (decoding) or cannot be written (encoding).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    #[error("envelope is truncated")]
    Truncated,
    #[error("unsupported envelope version {0}")]
    Version(u8),
    #[error("unknown payload kind {0}")]
    Kind(u8),
    #[error("unknown envelope flags {0:#04x}")]
    Flags(u8),
    #[error("origin node id is empty, longer than 255 bytes or not UTF-8")]
    Origin,
    #[error("topic is invalid: {0}")]
    Topic(String),
    #[error("stream epoch is longer than 255 bytes or not UTF-8")]
    Epoch,
    #[error("an origin connection needs a stream position")]
    OriginConn,
    #[error("payload is not valid {0}")]
    Payload(&'static str),
}

/// Encodes a version 1 envelope (no stream position) in one allocation. The caller has
/// validated `origin` (1..=255 bytes) and `topic`; use [`encode_with_stream`] to have them
/// checked.
pub fn encode(origin: &str, published_at_micros: u64, topic: &str, payload: &Payload) -> Bytes {
    debug_assert!(!origin.is_empty() && origin.len() <= 255);
    let origin = &origin.as_bytes()[..origin.len().min(255)];
    let mut b = BytesMut::with_capacity(MIN_LEN + origin.len() + topic.len() + payload.len());
    put_prefix(
        &mut b,
        ENVELOPE_VERSION,
        payload.kind,
        published_at_micros,
        origin,
        topic,
    );
    b.put_slice(&payload.bytes);
    b.freeze()
}

/// Encodes an envelope that may carry a stream position: version 1 when `stream` is
/// `None` (readable by every release, see the module docs), version 2 otherwise. Checks
/// what the byte layout can hold: origin 1..=255 bytes, topic at most 65535, epoch at most
/// 255.
pub fn encode_with_stream(
    origin: &str,
    published_at_micros: u64,
    topic: &str,
    payload: &Payload,
    stream: Option<&StreamPos>,
    origin_conn: Option<u64>,
) -> Result<Bytes, EnvelopeError> {
    if origin.is_empty() || origin.len() > 255 {
        return Err(EnvelopeError::Origin);
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(EnvelopeError::Topic(format!(
            "{} bytes do not fit the envelope",
            topic.len()
        )));
    }
    let Some(pos) = stream else {
        if origin_conn.is_some() {
            return Err(EnvelopeError::OriginConn);
        }
        return Ok(encode(origin, published_at_micros, topic, payload));
    };
    if pos.epoch.len() > 255 {
        return Err(EnvelopeError::Epoch);
    }
    let len = MIN_LEN + origin.len() + topic.len() + 1 + 9 + pos.epoch.len() + 8 + payload.len();
    let mut b = BytesMut::with_capacity(len);
    put_prefix(
        &mut b,
        ENVELOPE_VERSION_STREAM,
        payload.kind,
        published_at_micros,
        origin.as_bytes(),
        topic,
    );
    b.put_u8(FLAG_STREAM | if origin_conn.is_some() { FLAG_ORIGIN_CONN } else { 0 });
    b.put_u64(pos.offset);
    b.put_u8(pos.epoch.len() as u8);
    b.put_slice(pos.epoch.as_bytes());
    if let Some(c) = origin_conn {
        b.put_u64(c);
    }
    b.put_slice(&payload.bytes);
    Ok(b.freeze())
}

/// The part both versions share, up to and including the topic.
fn put_prefix(b: &mut BytesMut, version: u8, kind: PayloadKind, at: u64, origin: &[u8], topic: &str) {
    b.put_u8(version);
    b.put_u8(kind as u8);
    b.put_u64(at);
    b.put_u8(origin.len() as u8);
    b.put_slice(origin);
    b.put_u16(topic.len() as u16);
    b.put_slice(topic.as_bytes());
}

/// Reads only the origin node id (of a version 1 or 2 envelope), so a node can skip its
/// own envelopes cheaply: the origin sits at the same offset in both versions.
pub fn peek_origin(buf: &[u8]) -> Option<&[u8]> {
    if !matches!(buf.first(), Some(&(ENVELOPE_VERSION | ENVELOPE_VERSION_STREAM))) {
        return None;
    }
    let n = *buf.get(10)? as usize;
    buf.get(11..11 + n)
}

/// The payload's length, from the header alone (no UTF-8 or JSON checks, no copy), so a
/// receiver can refuse an oversized message before paying for decoding it. `Err` when the
/// header itself is malformed.
pub fn payload_len(buf: &[u8]) -> Result<usize, EnvelopeError> {
    Ok(buf.len() - layout(buf)?.payload_at)
}

/// Where the fields of an envelope are, after the structural checks (lengths, version,
/// kind, flags) and before the content checks.
struct Layout {
    kind: PayloadKind,
    published_at_micros: u64,
    origin: Range<usize>,
    topic: Range<usize>,
    stream: Option<(u64, Range<usize>)>,
    origin_conn: Option<u64>,
    payload_at: usize,
}

/// `len` bytes at `at`, or `Truncated`.
fn span(buf: &[u8], at: usize, len: usize) -> Result<Range<usize>, EnvelopeError> {
    let end = at.checked_add(len).ok_or(EnvelopeError::Truncated)?;
    if buf.len() < end {
        return Err(EnvelopeError::Truncated);
    }
    Ok(at..end)
}

fn layout(buf: &[u8]) -> Result<Layout, EnvelopeError> {
    if buf.len() < MIN_LEN {
        return Err(EnvelopeError::Truncated);
    }
    let version = buf[0];
    if version != ENVELOPE_VERSION && version != ENVELOPE_VERSION_STREAM {
        return Err(EnvelopeError::Version(version));
    }
    let kind = PayloadKind::from_u8(buf[1]).ok_or(EnvelopeError::Kind(buf[1]))?;
    let published_at_micros = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
    let n = buf[10] as usize;
    if n == 0 {
        return Err(EnvelopeError::Origin);
    }
    let origin = span(buf, 11, n)?;
    let t = span(buf, origin.end, 2)?;
    let topic = span(
        buf,
        t.end,
        u16::from_be_bytes([buf[t.start], buf[t.start + 1]]) as usize,
    )?;
    let mut at = topic.end;
    let mut stream = None;
    let mut origin_conn = None;
    if version == ENVELOPE_VERSION_STREAM {
        let flags = buf[span(buf, at, 1)?.start];
        at += 1;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(EnvelopeError::Flags(flags));
        }
        if flags & FLAG_STREAM != 0 {
            let offset = span(buf, at, 8)?;
            let offset = u64::from_be_bytes(buf[offset].try_into().expect("8 bytes"));
            let e = buf[span(buf, at + 8, 1)?.start] as usize;
            let epoch = span(buf, at + 9, e)?;
            at = epoch.end;
            stream = Some((offset, epoch));
        }
        if flags & FLAG_ORIGIN_CONN != 0 {
            if flags & FLAG_STREAM == 0 {
                return Err(EnvelopeError::OriginConn);
            }
            let c = span(buf, at, 8)?;
            origin_conn = Some(u64::from_be_bytes(buf[c.clone()].try_into().expect("8 bytes")));
            at = c.end;
        }
    }
    Ok(Layout {
        kind,
        published_at_micros,
        origin,
        topic,
        stream,
        origin_conn,
        payload_at: at,
    })
}

/// Decodes and validates an envelope of either version. JSON payloads are checked to be
/// one JSON value, text payloads to be UTF-8, so a hostile publisher cannot make a node
/// emit broken frames.
pub fn decode(buf: Bytes, rules: TopicRules) -> Result<Envelope, EnvelopeError> {
    let l = layout(&buf)?;
    let origin = std::str::from_utf8(&buf[l.origin])
        .map_err(|_| EnvelopeError::Origin)?
        .to_owned();
    let topic = std::str::from_utf8(&buf[l.topic])
        .map_err(|_| EnvelopeError::Topic("not UTF-8".into()))?
        .to_owned();
    validate_topic(&topic, rules).map_err(|e| EnvelopeError::Topic(e.to_string()))?;
    let stream = match l.stream {
        Some((offset, epoch)) => Some(StreamPos {
            offset,
            epoch: std::str::from_utf8(&buf[epoch])
                .map_err(|_| EnvelopeError::Epoch)?
                .to_owned(),
        }),
        None => None,
    };
    let bytes = buf.slice(l.payload_at..);
    match l.kind {
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
        published_at_micros: l.published_at_micros,
        topic,
        payload: Payload { kind: l.kind, bytes },
        stream,
        origin_conn: l.origin_conn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> StreamPos {
        StreamPos {
            offset,
            epoch: epoch.into(),
        }
    }

    /// Where the payload starts in an encoding with a 1..=255-byte origin `o`, topic `t`
    /// and, for version 2, epoch `e`.
    fn header_len(o: &str, t: &str, e: Option<&str>) -> usize {
        MIN_LEN + o.len() + t.len() + e.map_or(0, |e| 1 + 9 + e.len())
    }

    #[test]
    fn round_trip_and_layout_v1() {
        let p = Payload::json(&br#"{"a":1}"#[..]);
        let b = encode("node-1", 0x0102030405060708, "room", &p);
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 0);
        assert_eq!(&b[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b[10], 6);
        assert_eq!(peek_origin(&b), Some(&b"node-1"[..]));
        assert_eq!(payload_len(&b), Ok(7));
        let e = decode(b, TopicRules::default()).unwrap();
        assert_eq!(e.origin, "node-1");
        assert_eq!(e.topic, "room");
        assert_eq!(e.payload, p);
        assert_eq!(e.stream, None);
    }

    #[test]
    fn without_a_position_encode_with_stream_writes_v1() {
        let p = Payload::text("hi");
        let b = encode_with_stream("n", 5, "t", &p, None, None).unwrap();
        assert_eq!(b, encode("n", 5, "t", &p));
        assert_eq!(b[0], ENVELOPE_VERSION);
    }

    #[test]
    fn round_trip_and_layout_v2() {
        let p = Payload::json(&b"[1,2]"[..]);
        let s = pos(0x1112131415161718, "ep-7");
        let b = encode_with_stream("node-1", 9, "room", &p, Some(&s), None).unwrap();
        assert_eq!(b[0], 2);
        assert_eq!(peek_origin(&b), Some(&b"node-1"[..]), "same offsets as v1");
        let flags_at = 13 + 6 + 4;
        assert_eq!(b[flags_at], 1);
        assert_eq!(
            &b[flags_at + 1..flags_at + 9],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(b[flags_at + 9], 4);
        assert_eq!(&b[flags_at + 10..flags_at + 14], b"ep-7");
        assert_eq!(&b[flags_at + 14..], b"[1,2]");
        assert_eq!(payload_len(&b), Ok(5));
        let e = decode(b, TopicRules::default()).unwrap();
        assert_eq!(
            (e.origin.as_str(), e.published_at_micros, e.topic.as_str()),
            ("node-1", 9, "room")
        );
        assert_eq!(e.payload, p);
        assert_eq!(e.stream, Some(s));
    }

    #[test]
    fn v2_without_flags_and_with_an_empty_epoch_decode() {
        let r = TopicRules::default();
        // Version 2 with no flag set is valid (a later writer may use it for other flags).
        let mut v = encode("n", 1, "t", &Payload::binary(&b"xy"[..])).to_vec();
        v[0] = 2;
        v.insert(13 + 1 + 1, 0);
        let e = decode(v.into(), r).unwrap();
        assert_eq!((e.stream, &e.payload.bytes[..]), (None, &b"xy"[..]));
        let b = encode_with_stream("n", 1, "t", &Payload::binary(&[][..]), Some(&pos(1, "")), None).unwrap();
        assert_eq!(decode(b, r).unwrap().stream, Some(pos(1, "")));
    }

    #[test]
    fn every_truncation_is_refused() {
        let r = TopicRules::default();
        // A JSON object: no proper prefix of it is valid JSON, so every cut is refused,
        // the ones inside the header as truncated.
        let p = Payload::json(&br#"{"k":[1,2,3]}"#[..]);
        let v1 = encode("origin", 7, "a.topic", &p);
        let v2 = encode_with_stream("origin", 7, "a.topic", &p, Some(&pos(42, "epoch")), None).unwrap();
        for (full, header) in [
            (v1, header_len("origin", "a.topic", None)),
            (v2, header_len("origin", "a.topic", Some("epoch"))),
        ] {
            decode(full.clone(), r).unwrap();
            for cut in 0..full.len() {
                let got = decode(full.slice(..cut), r);
                if cut < header {
                    assert_eq!(got, Err(EnvelopeError::Truncated), "v{} cut at {cut}", full[0]);
                    if cut > 0 {
                        assert!(payload_len(&full[..cut]).is_err());
                    }
                } else {
                    assert_eq!(got, Err(EnvelopeError::Payload("JSON")), "v{} cut at {cut}", full[0]);
                }
            }
        }
    }

    #[test]
    fn unknown_flags_and_versions_are_refused() {
        let r = TopicRules::default();
        let b = encode_with_stream("n", 1, "t", &Payload::binary(&[][..]), Some(&pos(1, "e")), None).unwrap();
        let flags_at = 13 + 1 + 1;
        for bit in 2..8 {
            let mut v = b.to_vec();
            v[flags_at] |= 1 << bit;
            let flags = v[flags_at];
            assert_eq!(decode(v.clone().into(), r), Err(EnvelopeError::Flags(flags)));
            assert_eq!(payload_len(&v), Err(EnvelopeError::Flags(flags)));
        }
        for version in [0u8, 3, 9, 255] {
            let mut v = b.to_vec();
            v[0] = version;
            assert_eq!(decode(v.clone().into(), r), Err(EnvelopeError::Version(version)));
            assert_eq!(peek_origin(&v), None);
        }
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
        let mut bad_epoch = encode_with_stream("n", 1, "t", &Payload::binary(&[][..]), Some(&pos(1, "é")), None)
            .unwrap()
            .to_vec();
        let last = bad_epoch.len() - 1;
        bad_epoch[last] = 0xff;
        assert_eq!(decode(bad_epoch.into(), r), Err(EnvelopeError::Epoch));
    }

    #[test]
    fn origin_connection_round_trips_and_needs_a_position() {
        let p = Payload::text(&b"x"[..]);
        let b = encode_with_stream("n", 1, "t", &p, Some(&pos(7, "e")), Some(99)).unwrap();
        assert_eq!(payload_len(&b), Ok(1));
        let e = decode(b.clone(), TopicRules::default()).unwrap();
        assert_eq!(e.origin_conn, Some(99));
        assert_eq!(e.stream, Some(pos(7, "e")));
        assert_eq!(&e.payload.bytes[..], b"x");
        assert_eq!(
            encode_with_stream("n", 1, "t", &p, None, Some(1)),
            Err(EnvelopeError::OriginConn)
        );
        // Bit 1 without bit 0 is refused.
        let mut v = encode_with_stream("n", 1, "t", &p, Some(&pos(7, "e")), None)
            .unwrap()
            .to_vec();
        let flags_at = MIN_LEN + 1 + 1;
        v[flags_at] = 0x02;
        assert_eq!(
            decode(Bytes::from(v), TopicRules::default()),
            Err(EnvelopeError::OriginConn)
        );
        // Truncated connection number.
        let mut v = b.to_vec();
        v.truncate(v.len() - 5);
        assert!(decode(Bytes::from(v), TopicRules::default()).is_err());
    }

    #[test]
    fn encode_with_stream_refuses_what_does_not_fit() {
        let p = Payload::binary(&[][..]);
        assert_eq!(
            encode_with_stream("", 1, "t", &p, None, None),
            Err(EnvelopeError::Origin)
        );
        assert_eq!(
            encode_with_stream(&"o".repeat(256), 1, "t", &p, None, None),
            Err(EnvelopeError::Origin)
        );
        assert!(matches!(
            encode_with_stream("o", 1, &"t".repeat(65536), &p, None, None),
            Err(EnvelopeError::Topic(_))
        ));
        let long = pos(1, &"e".repeat(256));
        assert_eq!(
            encode_with_stream("o", 1, "t", &p, Some(&long), None),
            Err(EnvelopeError::Epoch)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A string of at most `max` bytes (arbitrary Unicode, cut on a char boundary).
        fn utf8(min: usize, max: usize) -> impl Strategy<Value = String> {
            any::<String>()
                .prop_map(move |s| {
                    let mut end = s.len().min(max);
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s[..end].to_owned()
                })
                .prop_filter("long enough", move |s| s.len() >= min)
        }

        fn payload() -> impl Strategy<Value = Payload> {
            prop_oneof![
                any::<Vec<u8>>().prop_map(Payload::binary),
                any::<String>().prop_map(Payload::text),
                (any::<i64>(), any::<String>(), any::<bool>())
                    .prop_map(|(n, s, b)| Payload::json(serde_json::json!({ "n": n, "s": s, "b": [b] }).to_string())),
            ]
        }

        proptest! {
            #[test]
            fn decode_never_panics(bytes in any::<Vec<u8>>()) {
                let _ = peek_origin(&bytes);
                let _ = payload_len(&bytes);
                let _ = decode(bytes.into(), TopicRules::default());
            }

            #[test]
            fn decode_never_panics_on_damaged_envelopes(
                at in any::<proptest::sample::Index>(),
                byte in any::<u8>(),
                cut in any::<proptest::sample::Index>(),
                v2 in any::<bool>(),
            ) {
                let p = Payload::text("payload");
                let s = v2.then(|| pos(3, "epoch"));
                let mut v = encode_with_stream("node", 1, "topic", &p, s.as_ref(), None).unwrap().to_vec();
                let i = at.index(v.len());
                v[i] = byte;
                v.truncate(cut.index(v.len() + 1));
                let _ = payload_len(&v);
                let _ = decode(v.into(), TopicRules::default());
            }

            #[test]
            fn encode_decode_round_trips(
                origin in utf8(1, 255),
                at in any::<u64>(),
                topic in "[A-Za-z0-9_.:/@={}-]{1,128}",
                payload in payload(),
                stream in proptest::option::of((any::<u64>(), utf8(0, 255))),
            ) {
                let stream = stream.map(|(offset, epoch)| StreamPos { offset, epoch });
                let b = encode_with_stream(&origin, at, &topic, &payload, stream.as_ref(), None).unwrap();
                prop_assert_eq!(peek_origin(&b), Some(origin.as_bytes()));
                prop_assert_eq!(payload_len(&b), Ok(payload.len()));
                let e = decode(b, TopicRules::default()).unwrap();
                prop_assert_eq!(e, Envelope { origin, published_at_micros: at, topic, payload, stream, origin_conn: None });
            }
        }
    }
}
