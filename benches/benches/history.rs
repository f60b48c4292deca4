//! What topic history costs per publish, without sockets: the whole `Broker::publish`
//! path (policy lookup, for a history topic the memory ring append, the offset sequence and
//! the fan-out with the position in the frame) for
//! - a topic without history on a broker with no `[[history]]` entries (today's path),
//! - the same topic when other topics have history (the price of the rules for topics
//!   that do not use them),
//! - a history topic,
//!
//! each to 1,000 JSON subscribers, and the ring append alone (a history topic nobody
//! listens to: the CPU a publish spends on history). Timed like the fan-out benches in
//! `broker.rs`: sections of `DRAIN_EVERY` publishes, outboxes drained untimed in between.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_benches::{drain, json_payload, subscribe_many};
use herald_broker::{
    Broker, BrokerMetrics, Encodings, HistoryRules, MemoryRelay, Source, StreamPolicy, SubscriberMode, TakenBatch,
};

const DRAIN_EVERY: u64 = 16;
const SUBSCRIBERS: usize = 1_000;

fn policy() -> StreamPolicy {
    StreamPolicy {
        size: 1000,
        max_bytes: 16 << 20,
        ttl: Duration::from_secs(600),
        latest_on_subscribe: false,
    }
}

fn broker_with(rules: HistoryRules) -> Arc<Broker> {
    Broker::with_history(
        "bench",
        Arc::new(MemoryRelay::standalone("bench")),
        Arc::new(BrokerMetrics::new()),
        Encodings::default(),
        rules,
    )
}

fn publish_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    let cases: [(&str, HistoryRules, &str); 3] = [
        ("no_history_rules", HistoryRules::none(), "prices.ABC"),
        (
            "other_topics_have_history",
            HistoryRules::none().with(|t| t.starts_with("chat."), policy()),
            "prices.ABC",
        ),
        (
            "history_topic",
            HistoryRules::none().with(|t| t.starts_with("prices."), policy()),
            "prices.ABC",
        ),
    ];
    for (name, rules, topic) in cases {
        let broker = broker_with(rules);
        let outboxes = subscribe_many(&broker, topic, SUBSCRIBERS, |_| SubscriberMode::Json);
        let payload = json_payload(64);
        let mut batch = TakenBatch::default();
        g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
        g.bench_function(BenchmarkId::new(name, SUBSCRIBERS), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let k = (iters - done).min(DRAIN_EVERY);
                    let start = Instant::now();
                    for _ in 0..k {
                        black_box(broker.publish(black_box(topic), payload.clone(), None, Source::Http));
                    }
                    timed += start.elapsed();
                    done += k;
                    let taken = drain(&outboxes, &mut batch);
                    assert_eq!(
                        taken as u64,
                        k * SUBSCRIBERS as u64,
                        "every publish reached every subscriber"
                    );
                }
                timed
            })
        });
    }
    g.finish();
}

fn ring_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(1));
    for size in [256usize, 4096] {
        let broker = broker_with(HistoryRules::none().with(|_| true, policy()));
        let payload = json_payload(size);
        g.bench_function(BenchmarkId::new("memory_append_no_subscriber", size), |b| {
            b.iter(|| black_box(broker.publish(black_box("log.a"), payload.clone(), None, Source::Http)))
        });
    }
    g.finish();
}

criterion_group!(benches, publish_paths, ring_append);
criterion_main!(benches);
