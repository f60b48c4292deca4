//! Every Herald metric, spelled in one place. The gateway, the broker and the relays all
//! record into one [`BrokerMetrics`] that owns a Prometheus registry; `/metrics` renders it.
//!
//! Names carry the `herald_` prefix. Labels are small closed sets (source, reason, kind,
//! code): never a topic or a connection, so cardinality cannot grow with traffic.
//! Label values are resolved once here, so recording is a plain counter operation. Hot
//! paths (per frame) accumulate in task-local counters and flush periodically (see the
//! gateway's session code); per-message counters are incremented once per message.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Where a publication came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A JSON-protocol client on `/ws`.
    Websocket,
    /// A raw-mode client on `/raw/{topic}`.
    Raw,
    /// The admin HTTP API.
    Http,
    /// Another node, through the relay.
    Relay,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Websocket, Source::Raw, Source::Http, Source::Relay];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Websocket => "websocket",
            Self::Raw => "raw",
            Self::Http => "http",
            Self::Relay => "relay",
        }
    }
}

/// Why a connection ended; the label of `herald_connections_closed_total`.
pub const CLOSE_REASONS: &[&str] = &[
    "client_close",
    "client_gone",
    "protocol_error",
    "invalid_utf8",
    "too_big",
    "idle_timeout",
    "first_message_timeout",
    "slow_consumer",
    "shutdown",
    "kicked",
    "rate_limited",
    "io_error",
    "internal",
    "tls_error",
    "unauthorized",
    "token_expired",
    "forbidden",
];

/// Why a connection attempt was refused before the upgrade.
pub const REJECT_REASONS: &[&str] = &[
    "connection_limit",
    "bad_request",
    "origin_not_allowed",
    "not_ready",
    "socket_limit",
    "handshake_limit",
    "head_too_large",
    "ip_limit",
    "unauthorized",
    "forbidden",
];

/// Why a token was refused: the label of `herald_auth_failures_total`. The verifier's
/// reasons (`herald_auth::AuthError::reason`, a gateway test keeps the lists in step) and
/// the gateway's own: `subject_changed` (a refresh for another user).
pub const AUTH_FAILURE_REASONS: &[&str] = &[
    "malformed",
    "algorithm_not_allowed",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "missing_subject",
    "invalid_claim",
    "too_long",
    "subject_changed",
];

/// What a permission refusal refused: the label of `herald_forbidden_total`.
pub const FORBIDDEN_ACTIONS: &[&str] = &["subscribe", "publish"];

/// Why a connection from a trusted proxy was closed for its PROXY protocol header.
pub const PROXY_HEADER_ERRORS: &[&str] = &["missing", "malformed", "too_large", "timeout", "closed"];

/// Why the admin listener refused a connection or a request before handling it.
pub const ADMIN_REJECT_REASONS: &[&str] = &["connection_limit", "head_too_large", "body_budget"];

/// Why a message did not reach a subscriber (or the cluster).
pub const DROP_REASONS: &[&str] = &["slow_consumer", "closed", "relay_unavailable", "recovery_overflow"];

/// Frame kinds for the frame and byte counters.
pub const FRAME_KINDS: &[&str] = &["text", "binary", "ping", "pong", "close"];

/// Latency buckets from 10 µs to ~5 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0,
    ]
}

/// See the module docs.
pub struct BrokerMetrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_opened: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub connections_rejected: IntCounterVec,
    pub subscriptions: IntGauge,
    pub topics: IntGauge,
    pub frames_in: IntCounterVec,
    pub frames_out: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub published: IntCounterVec,
    pub delivered: IntCounter,
    pub dropped: IntCounterVec,
    pub client_errors: IntCounterVec,
    /// Publishes from WebSocket connections refused by their rate limits, by mode
    /// (`json`, `raw`).
    pub rate_limited: IntCounterVec,
    pub frame_write_latency: Histogram,
    pub fanout_duration: Histogram,
    pub relay_up: IntGauge,
    pub relay_reconnects: IntCounter,
    /// Re-established relay connections by link (`publish`, `pubsub`), for relays whose
    /// connections fail and reconnect independently (the Redis relay). A link's first
    /// connection is not counted.
    pub relay_link_reconnects: IntCounterVec,
    /// Each relay shard's state by shard name: 1 up, 0 down (one shard, `"0"`, for an
    /// unsharded relay). Kept by the gateway from `Relay::shards`.
    pub relay_shard_up: IntGaugeVec,
    /// Canaries (a node's own probe through its relay) that did not come back in time, or
    /// that Redis said nobody received: the pub/sub connection is then replaced.
    pub relay_canary_failures: IntCounter,
    /// Canaries sent (each a PUBLISH to the node's own canary channel).
    pub relay_canaries: IntCounter,
    pub relay_messages: IntCounterVec,
    pub relay_invalid: IntCounter,
    pub relay_latency: Histogram,
    pub http_requests: IntCounterVec,
    /// Time to answer one admin-listener request (HTTP publishes include the relay's answer).
    pub http_request_duration: Histogram,
    pub draining: IntGauge,
    /// Refusals on the admin listener that happen before a route runs (so they are not in
    /// `http_requests`): connection cap, oversized head, body byte budget.
    pub admin_rejected: IntCounterVec,
    /// The WebSocket session limit in force: `limits.max_connections`, or less when the
    /// file-descriptor limit leaves fewer sockets.
    pub connection_limit: IntGauge,
    /// Public connections accepted and not yet upgraded (or closed): the handshakes whose
    /// buffers the node holds now.
    pub pending_handshakes: IntGauge,
    /// Bytes of admin request bodies being received now (`admin.max_pending_body_bytes`).
    pub admin_body_bytes: IntGauge,
    /// Upgrades refused at a client IP's limit, by which limit (`concurrent`, `rate`).
    pub ip_refusals: IntCounterVec,
    /// Keys in the per-IP tables (open-connection counts and rate buckets).
    pub ip_limit_entries: IntGauge,
    /// PROXY protocol headers accepted from trusted proxies.
    pub proxy_headers: IntCounter,
    /// Connections from trusted proxies closed for their PROXY protocol header, by reason.
    pub proxy_header_errors: IntCounterVec,
    /// Always 1; the `version` label says which build runs (one series per process).
    pub build_info: IntGaugeVec,
    /// Tokens refused (upgrade, `auth`, `refresh`), by reason.
    pub auth_failures: IntCounterVec,
    /// Subscribes and publishes refused by permissions, by action.
    pub forbidden: IntCounterVec,
    /// JWT key file reloads, by outcome (`reloaded`, `failed`).
    pub auth_key_reloads: IntCounterVec,
    /// History replays of subscriptions, by outcome (`completed`, `overflow`, `abandoned`,
    /// `failed`).
    pub history_replays: IntCounterVec,
    /// Messages sent to subscribers from history (replays and latest values).
    pub history_replayed: IntCounter,
    /// Gaps in a history topic's delivery on this node, by outcome: `filled` (read back
    /// from history), `lost` (offsets given up: trimmed, expired, unreadable).
    pub history_gaps: IntCounterVec,
    /// Offsets skipped as lost by the gap filling.
    pub history_lost: IntCounter,
    /// Messages of history topics received twice (dropped).
    pub history_duplicates: IntCounter,
    /// Topic streams held in this node's memory (memory relay).
    pub history_streams: IntGauge,
    /// Messages held in this node's memory history.
    pub history_messages: IntGauge,
    /// Bytes held in this node's memory history (payloads plus a fixed overhead each).
    pub history_bytes: IntGauge,
}

/// The outcomes of `herald_history_replays_total`.
pub const REPLAY_OUTCOMES: &[&str] = &["completed", "overflow", "lost", "abandoned", "failed"];

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    r.register(Box::new(v.clone())).expect("unique metric");
    for value in values {
        v.with_label_values(&[value]);
    }
    v
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets())).expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn build_info(r: &Registry) -> IntGaugeVec {
    let g = IntGaugeVec::new(
        Opts::new("herald_build_info", "Always 1; labelled with the running version."),
        &["version"],
    )
    .expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    g
}

impl BrokerMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, "herald");
            let _ = r.register(Box::new(pc));
        }
        let error_codes: Vec<&str> = herald_protocol::server_msg::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        let sources: Vec<&str> = Source::ALL.iter().map(|s| s.as_str()).collect();
        Self {
            connections: gauge(&r, "herald_connections", "Open WebSocket connections."),
            connections_opened: counter_vec(
                &r,
                "herald_connections_opened_total",
                "WebSocket connections accepted, by mode.",
                "mode",
                &["json", "raw"],
            ),
            connections_closed: counter_vec(
                &r,
                "herald_connections_closed_total",
                "WebSocket connections ended, by reason.",
                "reason",
                CLOSE_REASONS,
            ),
            connections_rejected: counter_vec(
                &r,
                "herald_connections_rejected_total",
                "Connection attempts refused before the upgrade, by reason.",
                "reason",
                REJECT_REASONS,
            ),
            subscriptions: gauge(
                &r,
                "herald_subscriptions",
                "Topic subscriptions held by local connections.",
            ),
            topics: gauge(&r, "herald_topics", "Topics with at least one local subscriber."),
            frames_in: counter_vec(
                &r,
                "herald_frames_received_total",
                "WebSocket frames received from clients, by kind.",
                "kind",
                FRAME_KINDS,
            ),
            frames_out: counter_vec(
                &r,
                "herald_frames_sent_total",
                "WebSocket frames written to clients, by kind.",
                "kind",
                FRAME_KINDS,
            ),
            bytes_in: counter_vec(
                &r,
                "herald_bytes_received_total",
                "WebSocket payload bytes received from clients, by frame kind.",
                "kind",
                FRAME_KINDS,
            ),
            bytes_out: counter_vec(
                &r,
                "herald_bytes_sent_total",
                "Bytes written to clients (frames including headers), by frame kind.",
                "kind",
                FRAME_KINDS,
            ),
            published: counter_vec(
                &r,
                "herald_messages_published_total",
                "Messages published on this node or received from the relay, by source.",
                "source",
                &sources,
            ),
            delivered: counter(
                &r,
                "herald_messages_delivered_total",
                "Messages queued to a local subscriber (one per subscriber).",
            ),
            dropped: counter_vec(
                &r,
                "herald_messages_dropped_total",
                "Messages that did not reach a subscriber or the cluster, by reason.",
                "reason",
                DROP_REASONS,
            ),
            client_errors: counter_vec(
                &r,
                "herald_client_errors_total",
                "Error frames sent to clients, by error code.",
                "code",
                &error_codes,
            ),
            rate_limited: counter_vec(
                &r,
                "herald_rate_limited_total",
                "Publishes from WebSocket connections refused (not published) by their rate limits, by mode.",
                "mode",
                &["json", "raw"],
            ),
            frame_write_latency: histogram(
                &r,
                "herald_frame_write_latency_seconds",
                "Time from a frame entering an outbox to its write to the socket.",
            ),
            fanout_duration: histogram(
                &r,
                "herald_fanout_duration_seconds",
                "Time to queue one message to every local subscriber.",
            ),
            relay_up: gauge(
                &r,
                "herald_relay_up",
                "1 when the relay to other nodes is connected (or not needed), else 0.",
            ),
            relay_reconnects: counter(
                &r,
                "herald_relay_reconnects_total",
                "Times the relay reconnected to its backend.",
            ),
            relay_link_reconnects: counter_vec(
                &r,
                "herald_relay_link_reconnects_total",
                "Times one relay connection was re-established, by link (publish, pubsub).",
                "link",
                &["publish", "pubsub"],
            ),
            relay_shard_up: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "herald_relay_shard_up",
                        "1 when this relay shard (one Redis) is connected, else 0, by shard.",
                    ),
                    &["shard"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            relay_canary_failures: counter(
                &r,
                "herald_relay_canary_failures_total",
                "Relay canaries that did not come back (the pub/sub connection was replaced).",
            ),
            relay_canaries: counter(
                &r,
                "herald_relay_canaries_total",
                "Relay canaries sent (the node's own probe through its relay).",
            ),
            relay_messages: counter_vec(
                &r,
                "herald_relay_messages_total",
                "Messages sent to (out) and received from (in) the relay.",
                "direction",
                &["in", "out"],
            ),
            relay_invalid: counter(
                &r,
                "herald_relay_invalid_messages_total",
                "Relay messages refused as malformed and skipped.",
            ),
            relay_latency: histogram(
                &r,
                "herald_relay_latency_seconds",
                "From the publish timestamp on the origin node to local fan-out here.",
            ),
            http_requests: counter_vec(
                &r,
                "herald_http_requests_total",
                "Admin listener requests (API, probes, scrapes), by status class.",
                "status",
                &["2xx", "4xx", "5xx"],
            ),
            http_request_duration: histogram(
                &r,
                "herald_http_request_duration_seconds",
                "Time to answer one admin listener request, from routing to the response.",
            ),
            draining: gauge(&r, "herald_draining", "1 while the node drains before stopping."),
            admin_rejected: counter_vec(
                &r,
                "herald_admin_rejected_total",
                "Admin listener connections or requests refused before routing, by reason.",
                "reason",
                ADMIN_REJECT_REASONS,
            ),
            connection_limit: gauge(
                &r,
                "herald_connection_limit",
                "WebSocket sessions this node accepts (max_connections, or less under the fd limit).",
            ),
            pending_handshakes: gauge(
                &r,
                "herald_pending_handshakes",
                "Public connections accepted and not yet upgraded or closed.",
            ),
            admin_body_bytes: gauge(
                &r,
                "herald_admin_body_bytes",
                "Bytes of admin request bodies being received now.",
            ),
            ip_refusals: counter_vec(
                &r,
                "herald_ip_refusals_total",
                "WebSocket upgrades refused (429) at a client IP's limit, by limit.",
                "reason",
                &["concurrent", "rate"],
            ),
            ip_limit_entries: gauge(
                &r,
                "herald_ip_limit_entries",
                "Client keys held by the per-IP limit tables (counts and rate buckets).",
            ),
            proxy_headers: counter(
                &r,
                "herald_proxy_protocol_headers_total",
                "PROXY protocol headers accepted from trusted proxies.",
            ),
            proxy_header_errors: counter_vec(
                &r,
                "herald_proxy_protocol_errors_total",
                "Connections from trusted proxies closed for a missing or bad PROXY header, by reason.",
                "reason",
                PROXY_HEADER_ERRORS,
            ),
            build_info: build_info(&r),
            auth_failures: counter_vec(
                &r,
                "herald_auth_failures_total",
                "Tokens refused (on the upgrade, in auth or refresh), by reason.",
                "reason",
                AUTH_FAILURE_REASONS,
            ),
            forbidden: counter_vec(
                &r,
                "herald_forbidden_total",
                "Subscribes and publishes refused by the connection's permissions, by action.",
                "action",
                FORBIDDEN_ACTIONS,
            ),
            auth_key_reloads: counter_vec(
                &r,
                "herald_auth_key_reloads_total",
                "JWT key file reloads after a change, by outcome (a failure keeps the old keys).",
                "outcome",
                &["reloaded", "failed"],
            ),
            history_replays: counter_vec(
                &r,
                "herald_history_replays_total",
                "History replays of subscriptions (since, latest value, position), by outcome.",
                "outcome",
                REPLAY_OUTCOMES,
            ),
            history_replayed: counter(
                &r,
                "herald_history_replayed_total",
                "Messages sent to subscribers from history (replays and latest values).",
            ),
            history_gaps: counter_vec(
                &r,
                "herald_history_gaps_total",
                "Gaps in a history topic's delivery on this node, by outcome (filled from history, lost).",
                "outcome",
                &["filled", "lost"],
            ),
            history_lost: counter(
                &r,
                "herald_history_lost_total",
                "Offsets of history topics skipped by gap filling because history no longer held them.",
            ),
            history_duplicates: counter(
                &r,
                "herald_history_duplicates_total",
                "Messages of history topics that reached this node twice (the second is dropped).",
            ),
            history_streams: gauge(
                &r,
                "herald_history_streams",
                "Topic streams held in this node's memory history (memory relay).",
            ),
            history_messages: gauge(
                &r,
                "herald_history_messages",
                "Messages held in this node's memory history (memory relay).",
            ),
            history_bytes: gauge(
                &r,
                "herald_history_bytes",
                "Bytes held in this node's memory history: payloads plus a fixed per-message overhead.",
            ),
            registry: r,
        }
    }

    /// The registry, for collectors that other layers add.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
