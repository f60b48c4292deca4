//! Private test harness of the Redis relay tests: a `redis-server` child process on a free
//! loopback port with the fault verbs the tests need (kill, restart on the same port,
//! SIGSTOP, SIGCONT), a fake broker ([`FakeSink`]) that records deliveries and holds an
//! interest set, and a [`Node`] gluing a relay to a fake sink.
//!
//! Deliberately self-contained (no `herald-testkit`): it never uses port 6379 or any Redis
//! it did not start, and it looks at Redis from the outside with the redis crate's
//! blocking client, not through the code under test.
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use herald_broker::{BrokerMetrics, History, HistoryPage, PublishTicket, Relay, RelaySink, StreamPolicy};
use herald_protocol::{Envelope, Payload};
use herald_redis::{RedisRelay, RedisRelayConfig};
use tokio_util::sync::CancellationToken;

/// A `redis-server` on `127.0.0.1:<port>`, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    paused: bool,
    dir: PathBuf,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts a server on a fresh free port and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A port nothing listens on (for "Redis is down at start").
    pub fn unused_port() -> u16 {
        free_port()
    }

    /// Starts a server on a given port (after [`unused_port`](Self::unused_port)).
    pub fn start_on(port: u16) -> Self {
        assert_ne!(port, 6379, "never the system Redis port");
        let dir = std::env::temp_dir().join(format!("herald-redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            port,
            child: None,
            paused: false,
            dir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self
                .try_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server on {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: the sockets close at once, as when the server crashes.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// A new process on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGSTOP: the port still accepts connections (the kernel does), nothing answers.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    fn connection(&self) -> redis::Connection {
        let c = self.try_connection().expect("connect to the test redis");
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c
    }

    /// `PUBSUB NUMSUB channel`.
    pub fn numsub(&self, channel: &str) -> i64 {
        let v: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut self.connection())
            .unwrap();
        v[0].1
    }

    /// How many SUBSCRIBE commands the server executed (`INFO commandstats`).
    pub fn subscribe_calls(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_subscribe:calls="))
            .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
            .unwrap_or(0)
    }

    /// `CLIENT PAUSE ms WRITE`: Redis 7 then holds PUBLISH (and every write) for `ms`, but
    /// still answers PING and delivers to subscribers.
    pub fn pause_writes(&self, ms: u64) {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("WRITE")
            .query(&mut self.connection())
            .unwrap();
    }

    /// The ids of every pub/sub client (`CLIENT LIST TYPE pubsub`), sorted.
    pub fn pubsub_client_ids(&self) -> Vec<u64> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut self.connection())
            .unwrap();
        let mut ids: Vec<u64> = list
            .lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(|id| id.parse().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// PUBLISH arbitrary bytes, as a foreign client would.
    pub fn publish_raw(&self, channel: &str, bytes: &[u8]) {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(bytes)
            .query(&mut self.connection())
            .unwrap();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a [`FakeSink`] runs when `relinked` is called (to look at the world at that
/// moment).
pub type RelinkProbe = Box<dyn Fn() + Send + Sync>;

/// A broker stand-in: an interest set and a log of delivered envelopes.
#[derive(Default)]
pub struct FakeSink {
    interest: Mutex<HashSet<String>>,
    delivered: Mutex<Vec<Envelope>>,
    controls: Mutex<Vec<herald_protocol::ControlMessage>>,
    relinks: std::sync::atomic::AtomicUsize,
    relink_probe: Mutex<Option<RelinkProbe>>,
    /// For each `relinked_topics` call, the interesting topics its filter let through.
    relinked_topics: Mutex<Vec<Vec<String>>>,
}

impl RelaySink for FakeSink {
    fn deliver(&self, envelope: Envelope) {
        self.delivered.lock().unwrap().push(envelope);
    }

    fn has_interest(&self, topic: &str) -> bool {
        self.interest.lock().unwrap().contains(topic)
    }

    fn control(&self, message: herald_protocol::ControlMessage) {
        self.controls.lock().unwrap().push(message);
    }

    fn relinked(&self) {
        if let Some(probe) = &*self.relink_probe.lock().unwrap() {
            probe();
        }
        self.relinks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn relinked_topics(&self, owns: &dyn Fn(&str) -> bool) {
        let mut passed: Vec<String> = self
            .interest
            .lock()
            .unwrap()
            .iter()
            .filter(|t| owns(t))
            .cloned()
            .collect();
        passed.sort();
        self.relinked_topics.lock().unwrap().push(passed);
        self.relinked();
    }

    fn interested_topics(&self) -> Vec<Arc<str>> {
        self.interest
            .lock()
            .unwrap()
            .iter()
            .map(|t| Arc::from(t.as_str()))
            .collect()
    }
}

impl FakeSink {
    /// How often `relinked` was called.
    pub fn relinks(&self) -> usize {
        self.relinks.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// For each `relinked_topics` call so far, the interesting topics it was told to fill.
    pub fn relinked_topic_sets(&self) -> Vec<Vec<String>> {
        self.relinked_topics.lock().unwrap().clone()
    }

    /// Marks `topic` as locally wanted (without telling any relay).
    pub fn want(&self, topic: &str) {
        self.interest.lock().unwrap().insert(topic.to_owned());
    }

    /// Runs `probe` inside every later `relinked` call.
    pub fn on_relink(&self, probe: impl Fn() + Send + Sync + 'static) {
        *self.relink_probe.lock().unwrap() = Some(Box::new(probe));
    }

    /// The stream positions delivered for `topic`, in order.
    pub fn positions(&self, topic: &str) -> Vec<herald_protocol::StreamPos> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.topic == topic)
            .map(|e| {
                e.stream
                    .clone()
                    .expect("a history topic's envelope carries its position")
            })
            .collect()
    }

    /// Control messages received, in order.
    pub fn controls(&self) -> Vec<herald_protocol::ControlMessage> {
        self.controls.lock().unwrap().clone()
    }

    pub fn delivered(&self) -> Vec<Envelope> {
        self.delivered.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    /// The text payloads delivered for `topic`, in order.
    pub fn texts(&self, topic: &str) -> Vec<String> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.topic == topic)
            .map(|e| String::from_utf8(e.payload.bytes.to_vec()).unwrap())
            .collect()
    }
}

/// Settings that make faults show up quickly in tests.
pub fn fast(url: &str, node: &str) -> RedisRelayConfig {
    RedisRelayConfig {
        heartbeat_interval: Duration::from_millis(300),
        heartbeat_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(500),
        reconnect_backoff_min: Duration::from_millis(50),
        reconnect_backoff_max: Duration::from_millis(500),
        ..RedisRelayConfig::new(url, node)
    }
}

/// A relay attached to a fake sink: one "node" of a test cluster.
pub struct Node {
    pub sink: Arc<FakeSink>,
    pub relay: Arc<RedisRelay>,
    pub metrics: Arc<BrokerMetrics>,
}

impl Node {
    pub fn start(config: RedisRelayConfig) -> Self {
        let metrics = Arc::new(BrokerMetrics::new());
        let relay = RedisRelay::start(config, metrics.clone(), CancellationToken::new()).expect("start relay");
        let sink = Arc::new(FakeSink::default());
        let weak: Weak<dyn RelaySink> = Arc::downgrade(&sink) as Weak<dyn RelaySink>;
        relay.attach(weak);
        Self { sink, relay, metrics }
    }

    /// The first local subscriber of `topic` arrives.
    pub fn join(&self, topic: &str) {
        self.sink.interest.lock().unwrap().insert(topic.to_owned());
        self.relay.interest_changed(topic);
    }

    /// The last local subscriber of `topic` leaves.
    pub fn leave(&self, topic: &str) {
        self.sink.interest.lock().unwrap().remove(topic);
        self.relay.interest_changed(topic);
    }

    /// A local subscriber arrives and waits for the relay's confirmation, as the broker
    /// does before acknowledging a subscribe: registered first, hinted, then confirmed.
    pub fn join_confirmed(&self, topic: &str) -> herald_broker::InterestTicket {
        self.join(topic);
        self.relay.confirm_interest(topic)
    }

    pub fn publish(&self, topic: &str, text: &str) -> PublishTicket {
        self.relay.publish(
            topic,
            &Payload::text(text.to_owned()),
            herald_broker::broker::now_micros(),
        )
    }

    pub fn is_up(&self) -> bool {
        self.relay.state() == herald_broker::RelayState::Up
    }

    /// Appends a text message to `topic`'s history (and publishes it).
    pub fn append(&self, topic: &str, text: &str, policy: &StreamPolicy) -> PublishTicket {
        self.history().append(
            topic,
            &Payload::text(text.to_owned()),
            herald_broker::broker::now_micros(),
            None,
            policy,
        )
    }

    pub fn history(&self) -> &dyn History {
        self.relay.history().expect("the redis relay keeps history")
    }

    /// Reads a page, failing the test on an error.
    pub async fn read(&self, topic: &str, after: u64, limit: usize, policy: &StreamPolicy) -> HistoryPage {
        within(
            Duration::from_secs(5),
            "a history read",
            self.history().read(topic, after, limit, policy).outcome(),
        )
        .await
        .expect("history read")
    }
}

/// A history policy: `size` messages, `ttl`.
pub fn policy(size: usize, ttl: Duration) -> StreamPolicy {
    StreamPolicy {
        size,
        max_bytes: 0,
        ttl,
        latest_on_subscribe: false,
    }
}

impl RedisServer {
    /// A blocking connection to this server, from outside the code under test.
    pub fn client(&self) -> redis::Connection {
        self.connection()
    }

    /// Runs `cmd` against this server, from outside the code under test.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.connection()).unwrap()
    }
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns the time it took.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Awaits `f` with a deadline.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
