//! `history-append`: appends per second through the Redis relay's append script (one
//! `EVALSHA` per run of up to `append_batch` consecutive appends: per message the offset,
//! `XADD` and `PUBLISH`, per topic and run the meta read and the `PEXPIRE`s), pipelined,
//! against one `redis-server`, and what one retained message costs Redis in memory.
//!
//! Starts its own `redis-server` (no persistence) on a free loopback port, unless `--url`
//! names one (which it then `FLUSHALL`s: never point it at a Redis that matters). One
//! relay appends `messages` payloads of `payload` bytes to `topics` topics with at most
//! `window` appends unanswered, as a busy node would (the relay batches whatever is queued
//! into pipelines of up to 512). With `--subscribe` the node also listens to its topics, so
//! every append comes back through pub/sub and is decoded and delivered (into a counter),
//! as on a real node. Then: `FLUSHALL`, `INFO memory` `used_memory`, `memory_messages`
//! appends to one topic with `size = memory_messages`, `used_memory` again; the difference
//! divided by the count is Redis's memory per retained message.
//!
//! Bounded: a fixed number of appends, a 60 s deadline for each phase; loopback only.
//!
//! ```text
//! cargo run --release -p herald-benches --bin history-append -- \
//!     [--messages 300000] [--payload 256] [--window 16384] [--topics 1] [--subscribe] \
//!     [--memory-messages 100000] [--url redis://127.0.0.1:6399/] [--append-batch 64]
//! ```

use std::collections::VecDeque;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use herald_broker::{BrokerMetrics, History, PublishTicket, Relay, RelaySink, StreamPolicy};
use herald_protocol::{ControlMessage, Envelope, Payload};
use herald_redis::{RedisRelay, RedisRelayConfig};
use tokio_util::sync::CancellationToken;

struct Args {
    messages: u64,
    payload: usize,
    window: usize,
    topics: usize,
    subscribe: bool,
    memory_messages: u64,
    url: Option<String>,
    /// `RedisRelayConfig::append_batch_max` (1: one script run per message).
    append_batch: usize,
}

fn args() -> Args {
    let mut a = Args {
        messages: 300_000,
        payload: 256,
        window: 16_384,
        topics: 1,
        subscribe: false,
        memory_messages: 100_000,
        url: None,
        append_batch: RedisRelayConfig::default().append_batch_max,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--messages" => a.messages = value().parse().expect("--messages N"),
            "--payload" => a.payload = value().parse().expect("--payload BYTES"),
            "--window" => a.window = value().parse().expect("--window N"),
            "--topics" => a.topics = value().parse().expect("--topics N"),
            "--memory-messages" => a.memory_messages = value().parse().expect("--memory-messages N"),
            "--url" => a.url = Some(value()),
            "--append-batch" => a.append_batch = value().parse().expect("--append-batch N"),
            "--subscribe" => a.subscribe = true,
            other => panic!("unknown argument {other}"),
        }
    }
    a.window = a.window.max(1);
    a.topics = a.topics.max(1);
    a
}

/// A `redis-server` child, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Server, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("herald-history-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server (is it installed?)");
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server(child), url)
}

/// Counts deliveries; listens to the topics it is told.
struct Sink {
    topics: Vec<Arc<str>>,
    delivered: AtomicU64,
}

impl RelaySink for Sink {
    fn deliver(&self, _envelope: Envelope) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
    fn has_interest(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| &**t == topic)
    }
    fn interested_topics(&self) -> Vec<Arc<str>> {
        self.topics.clone()
    }
    fn control(&self, _message: ControlMessage) {}
}

fn info_field(conn: &mut redis::Connection, section: &str, field: &str) -> f64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
        .trim()
        .parse()
        .unwrap()
}

fn redis_cpu(conn: &mut redis::Connection) -> f64 {
    info_field(conn, "cpu", "used_cpu_user") + info_field(conn, "cpu", "used_cpu_sys")
}

fn process_cpu() -> Duration {
    // SAFETY: a zeroed rusage is a valid value of this plain C struct, and getrusage only
    // writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Appends `n` messages round-robin over `topics`, at most `window` unanswered; panics on
/// any refusal (a benchmark that drops messages measures nothing).
async fn run(history: &dyn History, topics: &[Arc<str>], payload: &Payload, n: u64, window: usize, p: &StreamPolicy) {
    let mut inflight: VecDeque<PublishTicket> = VecDeque::with_capacity(window);
    for i in 0..n {
        if inflight.len() == window {
            inflight.pop_front().unwrap().outcome().await.expect("append");
        }
        let topic = &topics[i as usize % topics.len()];
        inflight.push_back(history.append(topic, payload, herald_broker::broker::now_micros(), None, p));
    }
    for t in inflight {
        t.outcome().await.expect("append");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let (_server, url) = match &a.url {
        Some(u) => (None, u.clone()),
        None => {
            let (s, u) = start_redis();
            (Some(s), u)
        }
    };
    let mut admin = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut admin).unwrap();
    let topics: Vec<Arc<str>> = (0..a.topics).map(|i| Arc::from(format!("bench.{i}"))).collect();
    let sink = Arc::new(Sink {
        topics: if a.subscribe { topics.clone() } else { Vec::new() },
        delivered: AtomicU64::new(0),
    });
    let relay = RedisRelay::start(
        RedisRelayConfig {
            append_batch_max: a.append_batch,
            ..RedisRelayConfig::new(&url, "bench")
        },
        Arc::new(BrokerMetrics::new()),
        CancellationToken::new(),
    )
    .expect("start the relay");
    relay.attach(Arc::downgrade(&sink) as Weak<dyn RelaySink>);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !relay.publish_link_up() || (a.subscribe && !relay.pubsub_link_up()) {
        assert!(Instant::now() < deadline, "relay did not come up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // subscriptions settle
    let history = relay.history().expect("the redis relay keeps history");
    let payload = Payload::binary(vec![b'x'; a.payload]);
    let policy = StreamPolicy {
        size: 10_000,
        max_bytes: 0,
        ttl: Duration::from_secs(600),
        latest_on_subscribe: false,
    };

    // Warm-up: connections, script cache, allocator.
    run(history, &topics, &payload, 20_000, a.window, &policy).await;
    let delivered0 = sink.delivered.load(Ordering::Relaxed);
    let (cpu0, rcpu0) = (process_cpu(), redis_cpu(&mut admin));
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(60),
        run(history, &topics, &payload, a.messages, a.window, &policy),
    )
    .await
    .expect("the measured run took over 60 s");
    let elapsed = started.elapsed();
    let (cpu, rcpu) = (process_cpu() - cpu0, redis_cpu(&mut admin) - rcpu0);
    if a.subscribe {
        let want = delivered0 + a.messages;
        let deadline = Instant::now() + Duration::from_secs(60);
        while sink.delivered.load(Ordering::Relaxed) < want {
            assert!(Instant::now() < deadline, "deliveries did not arrive");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let per_sec = a.messages as f64 / elapsed.as_secs_f64();
    println!(
        "appends: {} x {} B, {} topic(s), window {}, append batch {}, subscribed: {}",
        a.messages, a.payload, a.topics, a.window, a.append_batch, a.subscribe
    );
    println!(
        "  {:.0} appends/s ({:.2} s); node CPU {:.2} µs/append; redis CPU {:.2} µs/append",
        per_sec,
        elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / a.messages as f64,
        rcpu * 1e6 / a.messages as f64
    );

    // Memory per retained message.
    if a.memory_messages > 0 {
        let _: () = redis::cmd("FLUSHALL").query(&mut admin).unwrap();
        let _: () = redis::cmd("MEMORY").arg("PURGE").query(&mut admin).unwrap_or(());
        let before = info_field(&mut admin, "memory", "used_memory");
        let size = StreamPolicy {
            size: a.memory_messages as usize,
            ..policy.clone()
        };
        let one = [Arc::from("bench.memory")];
        run(history, &one, &payload, a.memory_messages, a.window, &size).await;
        let after = info_field(&mut admin, "memory", "used_memory");
        let len: u64 = redis::cmd("XLEN")
            .arg("herald:{bench.memory}:s")
            .query(&mut admin)
            .unwrap();
        println!(
            "memory: {} messages of {} B retained (XLEN {len}): used_memory {:.1} MiB -> {:.1} MiB, {:.1} B per message",
            a.memory_messages,
            a.payload,
            before / 1048576.0,
            after / 1048576.0,
            (after - before) / len as f64
        );
    }
    relay.shutdown().await;
}
