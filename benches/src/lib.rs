//! Fixtures shared by Herald's criterion benches (`benches/protocol.rs`, `benches/broker.rs`):
//! payloads of an exact size, masked client frames, brokers with N subscribers that each own
//! an outbox, and the drain that keeps those outboxes from filling between measured
//! iterations.
//!
//! It holds no measurement code (that lives in the bench targets) and nothing the product
//! uses: the package is `publish = false` and only exists to benchmark the real crates.

use std::sync::Arc;

use herald_broker::{
    Broker, BrokerMetrics, MemoryRelay, Outbox, OutboxLimits, SlowConsumerPolicy, Subscriber, SubscriberMode,
    TakenBatch,
};
use herald_protocol::Payload;
use tokio_util::sync::CancellationToken;

/// Payload sizes the encode benches sweep: a ticker update, a chat line, a small document.
pub const PAYLOAD_SIZES: [usize; 3] = [64, 256, 4096];

/// A JSON object of exactly `len` bytes (`len >= 12`): `{"d":"xxx…"}`.
pub fn json_object(len: usize) -> Vec<u8> {
    assert!(len >= 12, "a JSON object fixture needs at least 12 bytes");
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(br#"{"d":""#);
    v.resize(len - 2, b'x');
    v.extend_from_slice(br#""}"#);
    v
}

/// A JSON string of exactly `len` bytes (`len >= 2`): `"xxx…"`.
pub fn json_string(len: usize) -> Vec<u8> {
    assert!(len >= 2, "a JSON string fixture needs at least 2 bytes");
    let mut v = vec![b'x'; len];
    v[0] = b'"';
    v[len - 1] = b'"';
    v
}

/// ASCII text of exactly `len` bytes, with a quote and a newline so JSON escaping has work.
pub fn text(len: usize) -> Vec<u8> {
    let mut v = vec![b't'; len];
    if len >= 2 {
        v[len / 2] = b'"';
        v[len - 1] = b'\n';
    }
    v
}

/// A final client frame with `opcode` carrying `payload`, masked as a client must send it.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    herald_protocol::ws_frame::masked_client_frame(0x80 | opcode, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// A JSON payload of `len` bytes (see [`json_object`]).
pub fn json_payload(len: usize) -> Payload {
    Payload::json(json_object(len))
}

/// Outbox bounds far above what one measured batch queues, so no push is ever refused.
/// The benches still drain between batches; these bounds only guard against a miscount.
pub fn roomy_limits() -> OutboxLimits {
    OutboxLimits {
        max_frames: 1 << 16,
        max_bytes: 1 << 30,
        policy: SlowConsumerPolicy::Drop,
    }
}

/// A single-node broker (standalone in-process relay, real metrics).
pub fn broker() -> Arc<Broker> {
    Broker::new(
        "bench",
        Arc::new(MemoryRelay::standalone("bench")),
        Arc::new(BrokerMetrics::new()),
    )
}

/// An outbox as a session would own it, with [`roomy_limits`].
pub fn outbox() -> Arc<Outbox> {
    Arc::new(Outbox::new(roomy_limits(), CancellationToken::new()))
}

/// Subscribes `n` connections (ids 1..=n) to `topic`, each with its own outbox; `mode`
/// picks each connection's wire format from its index. Returns the outboxes.
pub fn subscribe_many(
    broker: &Broker,
    topic: &str,
    n: usize,
    mode: impl Fn(usize) -> SubscriberMode,
) -> Vec<Arc<Outbox>> {
    (0..n)
        .map(|i| {
            let ob = outbox();
            broker.subscribe(
                topic,
                Subscriber {
                    conn: i as u64 + 1,
                    outbox: ob.clone(),
                    encoding: mode(i).encoding(),
                    echo: true,
                    gate: None,
                },
            );
            ob
        })
        .collect()
}

/// Empties every outbox the way a writer does (`take_batch`, then reuse the batch);
/// returns the number of frames taken.
pub fn drain(outboxes: &[Arc<Outbox>], batch: &mut TakenBatch) -> usize {
    let mut taken = 0;
    for ob in outboxes {
        ob.take_batch(batch);
        taken += batch.frames.len() + batch.control.len();
        batch.clear();
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_have_the_exact_size_and_are_valid() {
        for len in PAYLOAD_SIZES {
            assert_eq!(json_object(len).len(), len);
            assert_eq!(json_string(len).len(), len);
            assert_eq!(text(len).len(), len);
            serde_json::from_slice::<serde_json::Value>(&json_object(len)).unwrap();
            serde_json::from_slice::<String>(&json_string(len)).unwrap();
        }
    }

    #[test]
    fn masked_frames_parse_back() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let payload = text(len);
            let mut buf = bytes::BytesMut::from(&masked_frame(0x2, &payload)[..]);
            let f = herald_protocol::ws_parse::parse_client_frame(&mut buf, 1 << 20)
                .unwrap()
                .unwrap();
            assert_eq!((f.opcode, &f.payload[..]), (0x2, &payload[..]));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn fan_out_reaches_every_outbox_and_drain_empties_them() {
        let b = broker();
        let obs = subscribe_many(&b, "t", 10, |i| {
            if i % 2 == 0 {
                SubscriberMode::Json
            } else {
                SubscriberMode::Raw
            }
        });
        let out = b.fan_out("t", &json_payload(64), None);
        assert_eq!(out.delivered, 10);
        let mut batch = TakenBatch::default();
        assert_eq!(drain(&obs, &mut batch), 10);
        assert_eq!(drain(&obs, &mut batch), 0);
    }
}
