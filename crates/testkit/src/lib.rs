//! Test harness for Herald: real processes and nodes on ephemeral loopback ports, with
//! fault injection, so integration tests exercise the system the way operators run it.
//! It owns process and socket plumbing for tests; it holds no production logic.
//!
//! - [`node`]: gateway nodes embedded in the test's runtime on 127.0.0.1:0, alone or as an
//!   in-process cluster; metrics scraping.
//! - [`wire`]: a hand-rolled WebSocket peer that can send what real clients must not
//!   (unmasked frames, reserved bits, fragmented pings, bad UTF-8) and read frames exactly.
//! - [`redis`]: `redis-server` processes on free ports that tests kill, pause and restart.
//! - [`redis_cluster`]: a Redis Cluster (masters and replicas) of such processes, with
//!   failover and slot migration.
//! - [`tcp_proxy`]: a cuttable TCP proxy, to break one node's network path to Redis.
//! - [`fleet`]: `herald` processes that tests stop with SIGTERM and start again on the same
//!   ports, behind a real HAProxy rendered from `deploy/haproxy/haproxy.cfg`.

pub mod fleet;
pub mod node;
pub mod redis;
pub mod redis_cluster;
pub mod tcp_proxy;
pub mod wire;
