//! Broker-core costs without sockets: registry churn, encode-once fan-out to many local
//! subscribers, and the outbox hand-off between publishers and a connection's writer.
//!
//! Fan-out is measured with `iter_custom`: the timed section is `DRAIN_EVERY` calls of
//! `Broker::fan_out`; between such sections, untimed, every outbox is emptied with
//! `take_batch` (what a writer does), so no push ever meets a full outbox and every
//! measured delivery is a real queueing. Throughput is in deliveries (subscribers reached).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_benches::{broker, drain, json_payload, outbox, subscribe_many};
use herald_broker::{Registry, Subscriber, SubscriberMode, TakenBatch};

/// Fan-outs per timed section; bounds what an outbox holds between drains.
const DRAIN_EVERY: u64 = 16;

/// Size of the published JSON value (`data`) in the fan-out benches.
const FANOUT_PAYLOAD: usize = 64;

fn registry(c: &mut Criterion) {
    let mut g = c.benchmark_group("registry/subscribe_unsubscribe");
    g.throughput(Throughput::Elements(1));
    let sub = Subscriber {
        conn: 0,
        outbox: outbox(),
        encoding: SubscriberMode::Json.encoding(),
        echo: true,
        gate: None,
    };

    // The topic exists only during the cycle: creates and removes the topic entry.
    let reg = Registry::new();
    g.bench_function("new_topic", |b| {
        b.iter(|| {
            black_box(reg.subscribe(black_box("chat/room-1"), sub.clone()));
            black_box(reg.unsubscribe(black_box("chat/room-1"), 0));
        })
    });

    // The topic keeps 1000 other subscribers: adds to and removes from its map.
    let reg = Registry::new();
    for conn in 1..=1000 {
        reg.subscribe("chat/room-1", Subscriber { conn, ..sub.clone() });
    }
    g.bench_function("busy_topic_1k", |b| {
        b.iter(|| {
            black_box(reg.subscribe(black_box("chat/room-1"), sub.clone()));
            black_box(reg.unsubscribe(black_box("chat/room-1"), 0));
        })
    });
    g.finish();
}

fn fan_out_group(c: &mut Criterion, name: &str, mode: fn(usize) -> SubscriberMode) {
    let mut g = c.benchmark_group(name);
    for n in [1_000usize, 10_000] {
        let broker = broker();
        let topic = "prices/ABC";
        let outboxes = subscribe_many(&broker, topic, n, mode);
        let payload = json_payload(FANOUT_PAYLOAD);
        let mut batch = TakenBatch::default();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let k = (iters - done).min(DRAIN_EVERY);
                    let start = Instant::now();
                    for _ in 0..k {
                        black_box(broker.fan_out(black_box(topic), &payload, None));
                    }
                    timed += start.elapsed();
                    done += k;
                    let taken = drain(&outboxes, &mut batch);
                    assert_eq!(taken as u64, k * n as u64, "every fan-out reached every subscriber");
                }
                timed
            })
        });
    }
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    fan_out_group(c, "fan_out/json", |_| SubscriberMode::Json);
    // Every other subscriber is raw: the message is encoded twice (once per wire format).
    fan_out_group(c, "fan_out/mixed", |i| {
        if i % 2 == 0 {
            SubscriberMode::Json
        } else {
            SubscriberMode::Raw
        }
    });
}

fn outbox_push_take(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbox/push_take_batch");
    // A pre-framed 64-byte delivery, shared as every subscriber's outbox would hold it.
    let frame = Bytes::from(vec![0x81u8; 66]);
    for per_batch in [1usize, 64] {
        let ob = outbox();
        let mut batch = TakenBatch::default();
        g.throughput(Throughput::Elements(per_batch as u64));
        g.bench_function(BenchmarkId::from_parameter(per_batch), |b| {
            b.iter(|| {
                let now = Instant::now();
                for _ in 0..per_batch {
                    black_box(ob.push(frame.clone(), now));
                }
                ob.take_batch(&mut batch);
                black_box(batch.frames.len());
                batch.clear();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, registry, fan_out, outbox_push_take);
criterion_main!(benches);
