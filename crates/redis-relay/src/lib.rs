//! Herald's relay over Redis pub/sub: [`RedisRelay`] implements `herald_broker::Relay`, so
//! several `herald` nodes sharing one Redis form one broker.
//!
//! This crate owns the Redis side only: connections, channels, PUBLISH pipelines,
//! SUBSCRIBE bookkeeping, heartbeats and reconnects. It does not own the envelope format
//! (`herald_protocol::envelope`), local fan-out (the broker, reached through
//! `RelaySink`), metric names (`herald_broker::metrics`) or configuration files (the
//! gateway maps its `[redis]` section onto [`RedisRelayConfig`]).
//!
//! # Shape
//! - Topic `t` travels on channel `{channel_prefix}t` (default `herald:t`) as one envelope
//!   (version, kind, publish time, origin node id, topic, payload; see
//!   `herald_protocol::envelope` for the byte layout): version 1 for topics without
//!   history, version 2 (with the message's offset and epoch) for topics with history.
//! - Topic history (`History`, see `history` and `scripts`): appends run through a Lua
//!   script (one `EVALSHA` per run of up to `append_batch_max` consecutive appends) that,
//!   for each message, allocates the next offset in the topic's meta hash, `XADD`s the
//!   message to the topic's Redis Stream, renews both keys' TTL and PUBLISHes the version 2
//!   envelope, atomically, so offsets agree on every node and every node, the appending one
//!   included, receives a topic's messages in offset order. Appends share the publish queue
//!   and pipelines with PUBLISHes, in queue order, each with its own answer. Reads
//!   (`XRANGE`, at most `MAX_READ` entries) are a second script, run from a task of their
//!   own, bounded in number. Keys and scripts are documented in `docs/cluster.md`.
//! - After the pub/sub connection was re-established and every topic resubscribed,
//!   `RelaySink::relinked` tells the broker to fill the gap from history.
//! - `Relay::publish` (and `History::append`) never blocks: it encodes the envelope and
//!   pushes it into a bounded queue (full: `Overloaded`; publish connection down:
//!   `Unavailable` at once). The publisher task sends the queue as pipelines on a
//!   multiplexed connection, in queue order, and answers each publication when Redis has
//!   replied.
//! - A dedicated pub/sub connection is read by its own task; envelopes larger than
//!   `max_payload_bytes` are refused from their header, the rest go to one of K delivery
//!   workers (K = cores) chosen by topic hash, which decode, validate and call
//!   `RelaySink::deliver`. Per-topic order is kept end to end.
//! - `Relay::interest_changed` marks a topic dirty; the supervisor reconciles dirty topics
//!   with `RelaySink::has_interest` after a 20 ms window (one SUBSCRIBE with many
//!   channels), and unsubscribes a topic `unsubscribe_delay` (500 ms) after its last local
//!   subscriber left. 10k subscribers joining one topic cost one SUBSCRIBE.
//! - `Relay::confirm_interest` answers `Ok` once the live pub/sub connection's SUBSCRIBE
//!   for the topic was answered by Redis (at once when it already was), so a subscribe
//!   acknowledged after it is a cluster-wide promise; `Unavailable` at once while the
//!   pub/sub connection is down. While a confirmation waits the batch window shrinks to
//!   `subscribe_confirm_window` (2 ms). A topic is withdrawn from the confirmed set before
//!   the supervisor decides to unsubscribe it, so no confirmation is answered `Ok` for a
//!   channel about to be dropped (see `subscriptions`, "The confirmation race").
//! - Faults: the two connections fail and reconnect independently. Each is PINGed every
//!   `heartbeat_interval` and must answer within `heartbeat_timeout`, which catches a hung
//!   Redis (SIGSTOP) or a half-open socket. A failed or timed-out PUBLISH pipeline replaces
//!   only the publish connection (subscriptions and inbound delivery go on); a pub/sub
//!   failure (stream ended, PING failed) replaces only the pub/sub connection and
//!   resubscribes every topic from `RelaySink::interested_topics`. Each reconnects with
//!   exponential backoff and full jitter (100 ms .. 5 s). The relay is Up
//!   (`herald_relay_up` 1) only while both are up; `herald_relay_reconnects_total` counts
//!   the relay turning Up again (with several shards, each shard's recovery counts once), `herald_relay_link_reconnects_total{link}` each
//!   connection's reconnects (first connections are not counted).
//! - Liveness beyond PING: every `canary_interval` the supervisor PUBLISHes a numbered
//!   canary to this node's own channel (`{channel_prefix}#canary:{node_id}`) and expects
//!   it back on the pub/sub connection within `canary_timeout` (longer while the reader is
//!   busy with a backlog); a connection that answers PING but delivers nothing (or whose
//!   subscriptions Redis no longer has: the PUBLISH reaches nobody) is replaced like a
//!   failed one (`herald_relay_canary_failures_total`).
//!
//! # Why RESP2 `aio::PubSub` rather than RESP3 push messages
//! redis 1.8.1 offers both. We use a dedicated RESP2 pub/sub connection because:
//! - the library's RESP3 path couples pub/sub with its `ConnectionManager`, whose automatic
//!   reconnect/resubscribe is exactly what fails silently (a long outage exhausts the
//!   retries and the subscription is never restored; response timeouts do not reconnect).
//!   With `aio::PubSub` nothing happens behind our back: the stream ends when the socket
//!   dies, and the supervisor owns reconnecting, resubscribing and the Up/Down state;
//! - inbound traffic (possibly heavy) does not share a socket, and so a queue, with our
//!   PUBLISH pipelines and heartbeat, so neither delays the other;
//! - it works with any Redis (and proxies) that speak RESP2, and needs no `HELLO 3`.
//!
//! The cost is a second connection per node, which is negligible.
//!
//! # Back-pressure on the inbound path
//! `deliver` never blocks (it pushes into bounded per-connection outboxes, where the
//! slow-consumer policy applies), so a worker queue is full only while the node's CPUs
//! cannot keep up with what Redis sends. Then the reader *waits* for room instead of
//! dropping: redis-rs has already read the message off the socket into its unbounded
//! channel, so dropping would save no memory in Redis and would lose a message the node can
//! deliver a few milliseconds later, and no existing `dropped{reason}` describes it
//! honestly (`slow_consumer` means one subscriber's outbox, `closed` a closing
//! connection, `relay_invalid` a malformed message). The wait is therefore a bounded queue
//! per worker plus redis-rs's buffer in front of the reader; while the reader waits longer
//! than 100 ms a (rate-limited) warning says the node is falling behind. Heartbeats are
//! answered by the library's connection driver, not by our reader, so a busy reader never
//! makes a healthy Redis look dead.
//!
//! # What is and is not guaranteed
//! - Publications of one node reach Redis in the order `publish` accepted them, and each
//!   topic is delivered in Redis order on every receiving node: one publisher's messages
//!   to one topic arrive in publish order everywhere.
//! - A publication answered `Ok` was accepted by Redis. One answered `Err` was not
//!   acknowledged; when a connection breaks mid-pipeline Redis may still have executed part
//!   of it, so an `Err` can, rarely, have reached some nodes (at most once, never twice).
//! - Redis pub/sub is at-most-once: messages published while a node is disconnected are
//!   lost for that node (on topics with history the broker reads them back after
//!   `relinked`). Ordering between different publishers is Redis's arrival order (on topics
//!   with history: the offset order, the same on every node).
//! - Once `confirm_interest` answered `Ok`, what other nodes publish to the topic reaches
//!   this node until its pub/sub connection fails (then the gap above applies).
//! - Not authenticated: envelopes are not signed. A version 1 envelope naming this node as
//!   origin is skipped as our own echo, so whoever can PUBLISH on the relay's channels can
//!   suppress a message on one chosen node, but the same client can already forge any
//!   message, from any origin, to every node, which is worse. Tagging envelopes (a keyed
//!   MAC with a per-process or per-cluster key) would only move the problem to key
//!   distribution and cost every message a MAC; the boundary is Redis itself: give the
//!   relay's Redis user (ACL) sole PUBLISH rights on `{channel_prefix}*`, and keep other
//!   applications off those channels.

mod backoff;
mod cluster;
mod cluster_hooks;
mod config;
mod history;
mod inbound;
mod link;
mod owned_sink;
mod publish_link;
mod publisher;
mod pubsub_conn;
mod relay;
mod scripts;
mod sharded;
mod sharded_pubsub;
mod shared;
mod subscriptions;
mod supervisor;
mod topology;

pub use cluster::{ClusterRelay, CLUSTER_REFRESH_INTERVAL};
pub use cluster_hooks::ClusterHooks;
pub use config::{RedisRelayConfig, RelayStartError, APPEND_BATCH_LIMIT};
pub use relay::RedisRelay;
pub use sharded::{shard_name, ShardRouter, ShardedRelay, MAX_SHARDS};
pub use topology::{key_slot, Master, Topology, SLOTS};
