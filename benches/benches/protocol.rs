//! Wire-format costs, per message: parsing a client frame, decoding a client request,
//! encoding a delivery for `/ws` and `/raw` subscribers (done once per message, not per
//! subscriber), and the relay envelope. Throughput is in bytes of the input (the frame's
//! payload, the request frame, the delivered payload).

use std::hint::black_box;

use bytes::Bytes;
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use herald_benches::{json_object, json_string, masked_frame, text, PAYLOAD_SIZES};
use herald_protocol::server_msg::{json_delivery, raw_delivery};
use herald_protocol::ws_parse::parse_client_frame;
use herald_protocol::{decode_request, envelope, Payload, TopicRules};

fn parse_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_parse/text_frame");
    for len in PAYLOAD_SIZES {
        let wire = BytesMut::from(&masked_frame(0x1, &text(len))[..]);
        g.throughput(Throughput::Bytes(len as u64));
        // The buffer is consumed by parsing; a fresh copy per iteration is set up untimed.
        g.bench_with_input(BenchmarkId::from_parameter(len), &wire, |b, w| {
            b.iter_batched_ref(
                || w.clone(),
                |buf| {
                    parse_client_frame(buf, 64 * 1024)
                        .expect("valid frame")
                        .expect("complete frame")
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let rules = TopicRules::default();
    let mut publish_1k = br#"{"op":"publish","topic":"chat/room-1","data":"#.to_vec();
    publish_1k.extend_from_slice(&json_object(1024));
    publish_1k.extend_from_slice(br#","id":3}"#);
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "subscribe",
            br#"{"op":"subscribe","topics":["chat/room-1","prices/ABC"],"id":1}"#.to_vec(),
        ),
        (
            "publish_small",
            br#"{"op":"publish","topic":"chat/room-1","data":{"text":"hi"},"id":3}"#.to_vec(),
        ),
        ("publish_1KiB", publish_1k),
    ];
    let mut g = c.benchmark_group("decode_request");
    for (name, frame) in &cases {
        decode_request(frame, rules).expect("fixture is a valid request");
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), frame, |b, f| {
            b.iter(|| decode_request(black_box(f), rules).map(|r| black_box(r.id().is_some())))
        });
    }
    g.finish();
}

/// (group, payload kind, payload of n bytes, encoder taking the topic and the payload)
type DeliveryCase = (
    &'static str,
    &'static str,
    fn(usize) -> Payload,
    fn(&str, &Payload) -> Bytes,
);

fn deliveries(c: &mut Criterion) {
    let topic = "chat/room-1";
    let cases: [DeliveryCase; 4] = [
        (
            "json_delivery",
            "json",
            |n| Payload::json(json_object(n)),
            json_delivery,
        ),
        ("json_delivery", "raw_text", |n| Payload::text(text(n)), json_delivery),
        (
            "raw_delivery",
            "raw_text",
            |n| Payload::text(text(n)),
            |_, p| raw_delivery(p),
        ),
        (
            "raw_delivery",
            "json_string",
            |n| Payload::json(json_string(n)),
            |_, p| raw_delivery(p),
        ),
    ];
    for (group, kind, build, encode) in cases {
        let mut g = c.benchmark_group(format!("{group}/{kind}"));
        for len in PAYLOAD_SIZES {
            let payload = build(len);
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_with_input(BenchmarkId::from_parameter(len), &payload, |b, p| {
                b.iter(|| encode(black_box(topic), black_box(p)))
            });
        }
        g.finish();
    }
}

fn envelopes(c: &mut Criterion) {
    let rules = TopicRules::default();
    let origin = "herald-node-1-a1b2c3";
    let topic = "chat/room-1";
    let mut g = c.benchmark_group("envelope");
    for len in PAYLOAD_SIZES {
        let payload = Payload::json(json_object(len));
        let wire = envelope::encode(origin, 1_700_000_000_000_000, topic, &payload);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("encode", len), &payload, |b, p| {
            b.iter(|| envelope::encode(black_box(origin), 1_700_000_000_000_000, black_box(topic), black_box(p)))
        });
        // decode validates the topic and the JSON payload, as a receiving node does.
        g.bench_with_input(BenchmarkId::new("decode", len), &wire, |b, w| {
            b.iter(|| envelope::decode(black_box(w.clone()), rules).expect("valid envelope"))
        });
    }
    g.finish();
}

criterion_group!(benches, parse_frames, decode, deliveries, envelopes);
criterion_main!(benches);
