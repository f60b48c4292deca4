//! Gateway nodes for tests: started in the test's own runtime on 127.0.0.1:0 with a
//! configuration a test can adjust, alone or joined through an in-process hub; plus a
//! tiny HTTP/1.1 client for the admin endpoints (`/metrics`, `/readyz`, `/api/...`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use herald_broker::{MemoryHub, MemoryRelay, Relay};
use herald_gateway::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A configuration for tests: loopback, ephemeral ports, a known node id.
pub fn test_config(node_id: &str) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    c.admin.listen = "127.0.0.1:0".into();
    c.node_id = node_id.into();
    c.shutdown.close_window_ms = 0;
    c.shutdown.grace_ms = 5_000;
    c.log.level = "warn".into();
    c
}

/// A running node.
pub struct TestNode {
    pub node: Node,
}

impl TestNode {
    /// A single node with test defaults.
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// A single node; `adjust` edits the configuration first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Result<Self> {
        let mut c = test_config(&format!("test-{:06x}", rand::random::<u32>() & 0xff_ffff));
        adjust(&mut c);
        c.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Self::start_config(c, None).await
    }

    /// A node with a full configuration and an optional relay.
    pub async fn start_config(c: Config, relay: Option<Arc<dyn Relay>>) -> Result<Self> {
        let node = Node::start_with_relay(c, relay).await.context("starting node")?;
        Ok(Self { node })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.node.ws_addr()
    }
    pub fn admin_addr(&self) -> SocketAddr {
        self.node.admin_addr()
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws_addr(), path)
    }

    /// The node's `/metrics` text.
    pub async fn metrics_text(&self) -> Result<String> {
        let (status, body) = http_request(self.admin_addr(), "GET", "/metrics", &[], b"").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// The value of one sample, e.g. `herald_messages_delivered_total` or
    /// `herald_connections_closed_total{reason="too_big"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        Ok(parse_metric(&self.metrics_text().await?, sample))
    }

    /// Polls one sample until it is at least `at_least` and returns it; fails after 5 s.
    /// For counters that move just after what a client sees: a connection's close is
    /// counted when its session ends, a moment after its close frame left.
    pub async fn metric_reaches(&self, sample: &str, at_least: f64) -> Result<f64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(sample).await?;
            if v >= at_least {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{sample} is {v} after 5 s, not at least {at_least}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Drains the node and waits until it has stopped.
    pub async fn shutdown(self) {
        self.node.shutdown().await
    }
}

/// Reads one sample's value from Prometheus text; 0 when absent.
pub fn parse_metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Nodes joined by an in-process hub (fast cluster tests without Redis).
pub struct MemoryCluster {
    pub hub: Arc<MemoryHub>,
    pub nodes: Vec<TestNode>,
}

impl MemoryCluster {
    pub async fn start(n: usize) -> Result<Self> {
        let hub = MemoryHub::new();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("mem-{i}");
            let relay: Arc<dyn Relay> = Arc::new(MemoryRelay::with_hub(&id, hub.clone()));
            nodes.push(TestNode::start_config(test_config(&id), Some(relay)).await?);
        }
        Ok(Self { hub, nodes })
    }

    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(req.as_bytes()).await?;
        s.write_all(body).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let head_end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of headers")?;
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head.split(' ').nth(1).context("no status")?.parse()?;
        let mut body = buf[head_end + 4..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body)?;
        }
        Ok::<_, anyhow::Error>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .context("http request timed out")?
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end])?.trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Nodes joined through a real `redis-server` that the test owns (and may kill, pause or
/// restart). Heartbeats and backoff are shortened so fault tests run in seconds.
pub struct RedisCluster {
    pub redis: crate::redis::RedisServer,
    pub nodes: Vec<TestNode>,
}

/// A node configuration for a Redis cluster member.
pub fn redis_member_config(node_id: &str, redis_url: &str) -> Config {
    let mut c = test_config(node_id);
    c.relay.kind = "redis".into();
    c.redis.url = redis_url.into();
    c.redis.heartbeat_interval_ms = 250;
    c.redis.heartbeat_timeout_ms = 500;
    c.redis.reconnect_min_ms = 50;
    c.redis.reconnect_max_ms = 500;
    c.redis.unsubscribe_delay_ms = 200;
    c
}

impl RedisCluster {
    /// Starts `redis-server` and `n` nodes, and waits until every relay is up.
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_with(n, |_| {}).await
    }

    /// Like [`RedisCluster::start`]; `adjust` edits each node's configuration first.
    pub async fn start_with(n: usize, adjust: impl Fn(&mut Config)) -> Result<Self> {
        let redis = crate::redis::RedisServer::start()?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = redis_member_config(&format!("node-{i}"), &redis.url());
            adjust(&mut c);
            nodes.push(TestNode::start_config(c, None).await?);
        }
        let cluster = Self { redis, nodes };
        cluster.wait_ready(Duration::from_secs(10)).await?;
        Ok(cluster)
    }

    /// Waits until every node is wholly ready (200 with reason `ready`).
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        wait_nodes_ready(&self.nodes, within).await
    }

    /// Waits until Redis reports `expected` subscribers on `channel`.
    pub async fn wait_numsub(&self, channel: &str, expected: i64, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.redis.pubsub_numsub(channel)?;
            if n == expected {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{channel}: {n} subscribers, expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

/// Waits until each of `nodes` answers `/readyz` with 200 and reason `ready` (a relay
/// that is still down, or a shard of it, leaves a node ready but `degraded`).
pub async fn wait_nodes_ready(nodes: &[TestNode], within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    for n in nodes {
        loop {
            let (status, body) = http_request(n.admin_addr(), "GET", "/readyz", &[], b"").await?;
            let reason = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_owned));
            if status == 200 && reason.as_deref() == Some("ready") {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node {} not ready within {within:?}", n.node.node_id());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Nodes sharding their topics over several independent `redis-server`s
/// (`redis.urls`), each owned by the test. Timings as in [`RedisCluster`].
pub struct ShardedCluster {
    pub redis: Vec<crate::redis::RedisServer>,
    pub nodes: Vec<TestNode>,
}

impl ShardedCluster {
    /// Starts `shards` Redis servers and `n` nodes listing all of them, and waits until
    /// every node is ready with every shard up. `adjust` edits each node's configuration.
    pub async fn start_with(shards: usize, n: usize, adjust: impl Fn(&mut Config)) -> Result<Self> {
        let redis = (0..shards)
            .map(|_| crate::redis::RedisServer::start())
            .collect::<Result<Vec<_>>>()?;
        let urls: Vec<String> = redis.iter().map(|r| r.url()).collect();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = redis_member_config(&format!("node-{i}"), &urls[0]);
            c.redis.urls = urls.clone();
            adjust(&mut c);
            nodes.push(TestNode::start_config(c, None).await?);
        }
        let cluster = Self { redis, nodes };
        cluster.wait_ready(Duration::from_secs(10)).await?;
        Ok(cluster)
    }

    /// Each shard's name as nodes report it (`127.0.0.1:PORT`), in server order.
    pub fn shard_names(&self) -> Vec<String> {
        self.redis.iter().map(|r| r.addr().to_string()).collect()
    }

    /// Waits until every node is wholly ready.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        wait_nodes_ready(&self.nodes, within).await
    }

    /// Waits until shard `shard`'s Redis reports `expected` subscribers on `channel`.
    pub async fn wait_numsub(&self, shard: usize, channel: &str, expected: i64, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.redis[shard].pubsub_numsub(channel)?;
            if n == expected {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("shard {shard}, {channel}: {n} subscribers, expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

/// Nodes on a real Redis Cluster (`relay.kind = "redis-cluster"`, every cluster node a
/// seed), which the test owns: it may kill masters, wait for failovers and move slots.
/// Timings as in [`RedisCluster`], and the slot map is read every second.
pub struct NodesOnRedisCluster {
    pub redis: crate::redis_cluster::RedisCluster,
    pub nodes: Vec<TestNode>,
}

impl NodesOnRedisCluster {
    /// Starts a Redis Cluster of `masters` masters with `replicas` replicas each, then `n`
    /// nodes on it, and waits until every node is ready with every master's relay up.
    /// `adjust` edits each node's configuration.
    pub async fn start_with(masters: usize, replicas: usize, n: usize, adjust: impl Fn(&mut Config)) -> Result<Self> {
        let redis =
            tokio::task::spawn_blocking(move || crate::redis_cluster::RedisCluster::start(masters, replicas)).await??;
        let seeds = redis.seed_urls();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = redis_member_config(&format!("node-{i}"), &seeds[0]);
            c.relay.kind = "redis-cluster".into();
            c.redis.urls = seeds.clone();
            c.redis.cluster_refresh_ms = 1000;
            adjust(&mut c);
            nodes.push(TestNode::start_config(c, None).await?);
        }
        let cluster = Self { redis, nodes };
        cluster.wait_ready(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    /// Waits until every node is wholly ready.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        wait_nodes_ready(&self.nodes, within).await
    }

    /// Waits until the master of `channel`'s slot reports `expected` sharded subscribers.
    pub async fn wait_shard_numsub(&self, channel: &str, expected: i64, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.redis.shard_numsub(channel);
            if matches!(n, Ok(k) if k == expected) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{channel}: {n:?} sharded subscribers, expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}
