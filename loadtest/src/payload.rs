//! The load-test payload: a fixed-layout ASCII stamp inside a JSON string, so publishers
//! write it in place and subscribers read it at fixed offsets without a JSON parser.
//!
//! A published `data` value is a JSON string of exactly `--payload-size` bytes, quotes
//! included:
//!
//! ```text
//! "t=000001234567;s=0000000042;p=00003;k=000017;................"
//!   t: scheduled send time, µs since the run's clock epoch (12 digits)
//!   s: sequence number of this (publisher, topic) pair, from 0 (10 digits)
//!   p: publisher index (5 digits)      k: topic index (6 digits)
//!   then '.' padding up to the payload size
//! ```
//!
//! Only digits, letters, `=`, `;` and `.` appear, so the text is valid JSON without escapes
//! and a node delivers it byte for byte. This module owns the layout only; framing and I/O
//! live in `client/`.

/// Digits of each field.
const T_DIGITS: usize = 12;
const S_DIGITS: usize = 10;
const P_DIGITS: usize = 5;
const K_DIGITS: usize = 6;

/// Offsets of each field's first digit inside the stamp (after the opening quote).
const T_OFF: usize = 2;
const S_OFF: usize = T_OFF + T_DIGITS + 3;
const P_OFF: usize = S_OFF + S_DIGITS + 3;
const K_OFF: usize = P_OFF + P_DIGITS + 3;

/// Length of the stamp without quotes or padding.
pub const STAMP_LEN: usize = K_OFF + K_DIGITS + 1;
/// Smallest `--payload-size`: the stamp plus two quotes.
pub const MIN_PAYLOAD: usize = STAMP_LEN + 2;
/// Largest publisher index the layout can carry.
pub const MAX_PUBLISHERS: usize = 99_999;
/// Largest topic count the layout can carry.
pub const MAX_TOPICS: usize = 999_999;
/// Largest sequence number before it wraps (a run never gets near it).
pub const MAX_SEQ: u64 = 9_999_999_999;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Scheduled send time, µs since the run's epoch.
    pub t_us: u64,
    pub seq: u64,
    pub publisher: u32,
    pub topic: u32,
}

/// A reusable `data` value (JSON string, quotes included) whose stamp is rewritten in place
/// for every message: publishing allocates nothing per message.
#[derive(Debug, Clone)]
pub struct Template {
    bytes: Vec<u8>,
}

impl Template {
    /// `size` is the whole JSON value's length; it is raised to [`MIN_PAYLOAD`].
    pub fn new(size: usize) -> Self {
        let size = size.max(MIN_PAYLOAD);
        let mut bytes = vec![b'.'; size];
        bytes[0] = b'"';
        bytes[size - 1] = b'"';
        let skeleton = b"t=000000000000;s=0000000000;p=00000;k=000000;";
        bytes[1..1 + STAMP_LEN].copy_from_slice(skeleton);
        Self { bytes }
    }

    /// Writes `stamp` and returns the JSON value.
    #[inline]
    pub fn stamp(&mut self, stamp: &Stamp) -> &[u8] {
        let b = &mut self.bytes[1..];
        put_digits(&mut b[T_OFF..T_OFF + T_DIGITS], stamp.t_us);
        put_digits(&mut b[S_OFF..S_OFF + S_DIGITS], stamp.seq);
        put_digits(&mut b[P_OFF..P_OFF + P_DIGITS], stamp.publisher as u64);
        put_digits(&mut b[K_OFF..K_OFF + K_DIGITS], stamp.topic as u64);
        &self.bytes
    }

    /// The JSON value as last stamped.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Fixed-width decimal, most significant digit first; wraps silently past the width.
#[inline]
fn put_digits(out: &mut [u8], mut v: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

#[inline]
fn get_digits(b: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &d in b {
        let x = d.wrapping_sub(b'0');
        if x > 9 {
            return None;
        }
        v = v * 10 + x as u64;
    }
    Some(v)
}

/// Reads a stamp from the start of `s` (the string's content, after the opening quote).
/// `None` for anything that is not a load-test payload.
#[inline]
pub fn parse(s: &[u8]) -> Option<Stamp> {
    if s.len() < STAMP_LEN
        || s[0] != b't'
        || s[1] != b'='
        || s[S_OFF - 3..S_OFF] != *b";s="
        || s[P_OFF - 3..P_OFF] != *b";p="
        || s[K_OFF - 3..K_OFF] != *b";k="
        || s[STAMP_LEN - 1] != b';'
    {
        return None;
    }
    Some(Stamp {
        t_us: get_digits(&s[T_OFF..T_OFF + T_DIGITS])?,
        seq: get_digits(&s[S_OFF..S_OFF + S_DIGITS])?,
        publisher: get_digits(&s[P_OFF..P_OFF + P_DIGITS])? as u32,
        topic: get_digits(&s[K_OFF..K_OFF + K_DIGITS])? as u32,
    })
}

/// The frame body prefix of a delivery on the JSON protocol, up to the topic name.
pub const DELIVERY_HEAD: &[u8] = br#"{"type":"message","topic":""#;
/// What follows the topic name when `data` is a string.
pub const DELIVERY_DATA: &[u8] = br#"","data":""#;

/// Finds the stamp in a JSON-protocol delivery `{"type":"message","topic":"T","data":"..."}`
/// without parsing JSON: topic names never contain a quote (see the protocol's topic
/// grammar), so the data starts after the first quote past the head.
#[inline]
pub fn parse_delivery(frame: &[u8]) -> Option<Stamp> {
    let rest = frame.strip_prefix(DELIVERY_HEAD)?;
    let q = rest.iter().position(|&b| b == b'"')?;
    let data = rest[q..].strip_prefix(DELIVERY_DATA)?;
    parse(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_keep_the_size() {
        let mut t = Template::new(256);
        let s = Stamp {
            t_us: 123_456_789,
            seq: 42,
            publisher: 7,
            topic: 31_337,
        };
        let v = t.stamp(&s).to_vec();
        assert_eq!(v.len(), 256);
        assert_eq!(&v[..MIN_PAYLOAD], br#""t=000123456789;s=0000000042;p=00007;k=031337;."#);
        assert!(serde_json::from_slice::<String>(&v).is_ok());
        assert_eq!(parse(&v[1..]), Some(s));
        let frame = [DELIVERY_HEAD, b"lt.a/b", &DELIVERY_DATA[..9], &v, b"}"].concat();
        assert_eq!(parse_delivery(&frame), Some(s));
    }

    #[test]
    fn small_sizes_are_raised_and_foreign_text_is_refused() {
        assert_eq!(Template::new(1).bytes().len(), MIN_PAYLOAD);
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(b"t=00000000000x;s=0000000042;p=00007;k=031337;"), None);
        assert_eq!(
            parse_delivery(br#"{"type":"message","topic":"a","data":{"x":1}}"#),
            None
        );
        assert_eq!(parse_delivery(br#"{"type":"ack","id":1}"#), None);
    }
}
