//! Fuzzes the relay envelope decoder (`envelope::decode`, `payload_len`, `peek_origin`):
//! bytes from the Redis channel are untrusted.
//!
//! Invariants checked, beyond "no panic":
//! - `peek_origin` returns a slice of the input at offset 11, and the decoded origin when
//!   `decode` accepts;
//! - `payload_len` fails exactly as `decode` does on a malformed header, and otherwise gives
//!   the decoded payload's length; the payload is the input's tail;
//! - an accepted envelope re-encodes to the same bytes (byte identity, except a version 2
//!   envelope without a stream position, which is written as version 1) and decodes again
//!   to the same value.

#![no_main]

use bytes::Bytes;
use herald_protocol::envelope::{decode, encode_with_stream, payload_len, peek_origin};
use herald_protocol::TopicRules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rules = TopicRules::default();
    let origin = peek_origin(data);
    if let Some(o) = origin {
        assert_eq!(o.as_ptr(), data[11..].as_ptr(), "origin at offset 11");
        assert_eq!(o.len(), usize::from(data[10]));
    }
    let len = payload_len(data);
    let decoded = decode(Bytes::copy_from_slice(data), rules);
    let e = match (&len, decoded) {
        (Err(le), Err(de)) => {
            // `decode` refuses at least whatever the header check refuses.
            assert_eq!(le, &de);
            return;
        }
        (Ok(_), Err(_)) => return, // content (UTF-8, topic, JSON) refused
        (Err(le), Ok(_)) => panic!("payload_len refused ({le}) what decode accepted"),
        (Ok(_), Ok(e)) => e,
    };
    let n = len.unwrap();
    assert_eq!(e.payload.len(), n);
    assert_eq!(&e.payload.bytes[..], &data[data.len() - n..]);
    assert_eq!(origin, Some(e.origin.as_bytes()));
    let again = encode_with_stream(
        &e.origin,
        e.published_at_micros,
        &e.topic,
        &e.payload,
        e.stream.as_ref(),
    )
    .expect("what decodes, encodes");
    if !(data[0] == 2 && e.stream.is_none()) {
        assert_eq!(&again[..], data, "byte identity");
    }
    assert_eq!(decode(again, rules).expect("re-encoded decodes"), e);
});
