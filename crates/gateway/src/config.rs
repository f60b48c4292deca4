//! The node's typed configuration and how it is loaded: built-in defaults < TOML file
//! (`--config`) < environment (`HERALD_<SECTION>__<KEY>`) < CLI flags.
//!
//! Every value has a documented default (docs/configuration.md lists them all), so an
//! empty configuration is a complete single-node broker. [`Config::validate`] reports every
//! problem at once; the binary exits with status 64 when there are any. Unknown keys in
//! the file are errors (typos must not be silently ignored); unknown `HERALD_*` variables
//! are logged as warnings, since the environment is shared with other programs.
//!
//! Durations are whole milliseconds (`*_ms`) so that they read the same in TOML and in the
//! environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use herald_broker::{OutboxLimits, SlowConsumerPolicy};
use herald_protocol::TopicRules;
use serde::{Deserialize, Serialize};

/// The whole configuration tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Public listener: WebSocket endpoints and `/healthz`.
    pub listen: String,
    /// This node's id, shown in the welcome frame and carried in relay envelopes.
    /// Empty means generated at start (`<hostname>-<random>`).
    pub node_id: String,
    pub admin: AdminConfig,
    pub relay: RelayConfig,
    pub redis: RedisConfig,
    pub limits: LimitsConfig,
    pub heartbeat: HeartbeatConfig,
    pub outbox: OutboxConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    /// Identity (JWT), topic permissions and the Origin allow-list (docs/security.md).
    pub auth: AuthConfig,
    /// Optional TLS on the public listener.
    pub tls: TlsConfig,
    /// Load balancers in front of the node, whose word on the client address is taken.
    pub proxy: ProxyConfig,
    /// Topics that keep history (`[[history]]` entries, first match wins); none by
    /// default.
    pub history: Vec<HistoryEntry>,
    /// The built-in demo: pages under `/demo/` and the node's system topics (off by default).
    pub demo: DemoConfig,
    /// What `/readyz` requires besides being started and not draining.
    pub readiness: ReadinessConfig,
}

/// `[readiness]`: what `/readyz` answers while the relay is down (docs/operations.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadinessConfig {
    /// `true`: a relay that is down (or, sharded, has a shard down) makes the node unready
    /// (503 `relay_down`). `false` (default): the node stays ready, reported `degraded`.
    pub require_relay: bool,
}

/// `[demo]`: the demo pages and the node's own system messages (docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve `/demo/` and publish on `time_topic` and `stats_topic`.
    pub enabled: bool,
    /// The node publishes its clock here every `interval_ms` (reserved: clients may not).
    pub time_topic: String,
    /// The node publishes its figures here every `interval_ms` (reserved: clients may not).
    pub stats_topic: String,
    /// The chat page's topic; it keeps history (200 messages, 1 h) unless a `[[history]]`
    /// rule already matches it.
    pub chat_topic: String,
    /// How often the system messages go out (100 to 60000).
    pub interval_ms: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            time_topic: "herald.time".into(),
            stats_topic: "herald.stats".into(),
            chat_topic: "demo.chat".into(),
            interval_ms: 1000,
        }
    }
}

/// The longest history TTL: a year (Redis refuses expiry times past what its clock can add).
pub const MAX_HISTORY_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// One `[[history]]` entry: the topics matching `topics` keep their last `size` messages
/// for `ttl_ms` (docs/protocol.md, "History and recovery").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryEntry {
    /// A topic pattern (`*` one segment, `>` the trailing ones).
    pub topics: String,
    /// Messages kept per topic (Redis trims approximately, so a few more may stay).
    pub size: usize,
    /// Messages older than this are not replayed; a topic nobody published to for this
    /// long loses its stream (and the next message starts a new epoch).
    pub ttl_ms: u64,
    /// Send each new subscriber the topic's most recent message at once.
    pub latest_on_subscribe: bool,
    /// Payload bytes kept per topic by a node's memory history (the memory relay); 0: no
    /// byte bound. Redis is bounded by `size` and its own `maxmemory`.
    pub max_bytes: usize,
}

impl Default for HistoryEntry {
    fn default() -> Self {
        Self {
            topics: String::new(),
            size: 1000,
            ttl_ms: 600_000,
            latest_on_subscribe: false,
            max_bytes: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`, `/api/`.
    pub listen: String,
    /// Bearer keys with full access to `/api/`. Empty (and no `publish_keys`): no auth, and
    /// the listener must be loopback.
    pub api_keys: Vec<String>,
    /// Largest request body the admin API reads, in bytes (a whole batch). A larger
    /// `Content-Length` is refused with 413 before any of the body is read; a chunked body
    /// is cut off at this size. Each message's data is further capped by
    /// `limits.max_message_bytes`.
    pub max_body_bytes: usize,
    /// Connections the admin listener serves at once; over it a new connection gets a
    /// canned 503 and is closed. Its file descriptors are kept out of the public budget
    /// (docs/operations.md, "File descriptors"), so a flood on the admin port cannot starve
    /// the probes or the relay.
    pub max_connections: usize,
    /// Bytes all admin request bodies being received may hold together. A body that cannot
    /// take its bytes from this budget at once gets 503 `overloaded` with `Retry-After`.
    pub max_pending_body_bytes: usize,
    /// Bearer keys that may only publish (`POST /api/publish`, `/api/publish/batch`,
    /// `/api/topics/{topic}/publish`, `/api/broadcast`); any other endpoint answers them
    /// 403 `forbidden`. Like `api_keys`, any key here closes every `/api/` endpoint to
    /// requests without a key, and allows a non-loopback `listen`.
    pub publish_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// `memory` (single node, the default), `redis` (cluster through Redis pub/sub, over
    /// one Redis or sharded over several) or `redis-cluster` (Redis Cluster sharded
    /// pub/sub, seeds in `redis.urls`).
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis server for `relay.kind = "redis"`.
    pub url: String,
    /// Several independent Redis servers to shard topics over (each topic on one of
    /// them, by rendezvous hashing of its name). When given, replaces `url`. Every node
    /// must list the same set; the order does not matter. With `relay.kind =
    /// "redis-cluster"`: seed nodes of the Redis Cluster (any of its nodes; `url` when empty).
    pub urls: Vec<String>,
    /// `relay.kind = "redis-cluster"`: how often the slot map is read while everything is
    /// up (also at once on a redirect, a slot moved away, a lost master; every 250 ms while
    /// a slot is unserved).
    pub cluster_refresh_ms: u64,
    /// Prefix of every Redis channel: a topic `t` travels on `<prefix>t`.
    pub channel_prefix: String,
    /// Heartbeat PING period on the relay's connections.
    pub heartbeat_interval_ms: u64,
    /// A PING unanswered this long marks Redis down.
    pub heartbeat_timeout_ms: u64,
    /// Reconnect backoff bounds (exponential with full jitter).
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// How long a topic's channel stays subscribed after its last local subscriber left.
    pub unsubscribe_delay_ms: u64,
    /// Publications waiting for Redis; beyond it a publish fails at once.
    pub publish_queue: usize,
    /// Consecutive history appends run as one script call, at most (1 to 256).
    pub history_append_batch: usize,
    /// History reads in flight on the reads' connection at once.
    pub history_read_concurrency: usize,
    /// History reads waiting for their turn; beyond it a read fails at once.
    pub history_read_queue: usize,
    /// How often the node sends itself a canary through Redis (0: never). A pub/sub
    /// connection that answers PING but delivers nothing is caught by it.
    pub canary_interval_ms: u64,
    /// A canary not back this long after Redis accepted it: the pub/sub connection is
    /// replaced (and every topic resubscribed).
    pub canary_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest client message in bytes, whole message across fragments (over it: close 1009).
    pub max_message_bytes: usize,
    /// Topics one connection may hold at once.
    pub max_subscriptions: usize,
    /// WebSocket connections this node accepts; over it the upgrade gets HTTP 503.
    pub max_connections: usize,
    /// Longest topic name in bytes.
    pub max_topic_length: usize,
    /// Time allowed to send the HTTP upgrade request headers after connecting.
    pub handshake_timeout_ms: u64,
    /// A `/ws` connection with no subscription must send its first request within this
    /// time (close 1008). 0 disables.
    pub first_message_timeout_ms: u64,
    /// A batch of frames not written within this time means the peer stalled: the
    /// connection is dropped.
    pub write_timeout_ms: u64,
    /// Largest request head (request line and headers) on either listener, which is what
    /// hyper may buffer per connection before the request is complete; over it: 431.
    pub max_request_head_bytes: usize,
    /// Public connections accepted but not yet upgraded (or closed) at once. Each may buffer
    /// up to `max_request_head_bytes`, so this caps the memory of handshakes in flight;
    /// over it a new connection gets a canned 503 and is closed.
    pub max_pending_handshakes: usize,
    /// Publishes per second one connection may make (token bucket); 0 turns it off.
    pub publish_per_second: u32,
    /// Publishes one connection may make at once above the rate (the bucket's size).
    pub publish_burst: u32,
    /// Payload bytes per second one connection may publish; 0 turns it off.
    pub publish_bytes_per_second: u64,
    /// Payload bytes one connection may publish at once above the byte rate.
    pub publish_bytes_burst: u64,
    /// A connection that keeps publishing over its limits this long is closed with 1008.
    pub publish_overlimit_close_ms: u64,
    /// WebSocket connections one client IP (an IPv6 client: its /64) may hold at once;
    /// over it the upgrade gets 429. 0 turns it off.
    pub connections_per_ip: u32,
    /// New WebSocket connections one client IP (IPv6: /64) may open per second (a bucket of
    /// as many, refilled continuously); over it the upgrade gets 429. 0 turns it off.
    pub connects_per_ip_per_second: u32,
    /// Client addresses or CIDR ranges the per-IP limits do not apply to. Loopback by
    /// default: local tools and load generators open thousands of connections from it.
    pub per_ip_exempt: Vec<String>,
    /// Listen backlog of the public and admin listeners (the kernel caps it at
    /// `net.core.somaxconn`); 1024 to 65535.
    pub listen_backlog: u32,
    /// Live messages held per subscription while it replays history; past it the
    /// subscription ends with `recovery_overflow`.
    pub replay_buffer: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256/384/512 tokens (prefer the `_file` key or the environment
    /// variable `HERALD_AUTH__JWT_HS256_SECRET`, so the secret need not sit in the TOML).
    pub jwt_hs256_secret: String,
    /// File holding the shared secret (trailing newline ignored); reloaded when it changes.
    pub jwt_hs256_secret_file: String,
    /// PEM public key (RSA for RS256, EC P-256 for ES256); reloaded when it changes.
    pub jwt_public_key_file: String,
    /// JWKS file (several keys, picked by `kid`); reloaded when it changes.
    pub jwt_jwks_file: String,
    /// Required `iss` claim; empty: not checked.
    pub jwt_issuer: String,
    /// Required `aud` claim; empty: not checked.
    pub jwt_audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway_ms: u64,
    /// Algorithms accepted; empty: those of the configured keys (HS256/384/512 for the
    /// secret, RS256 for an RSA key, ES256 for a P-256 key).
    pub jwt_algorithms: Vec<String>,
    /// How often the key files are checked for changes (SIGHUP reloads at once).
    pub key_reload_interval_ms: u64,
    /// Topic patterns connections without a token may subscribe to / publish on.
    pub anonymous_subscribe: Vec<String>,
    pub anonymous_publish: Vec<String>,
    /// Topic patterns any connection with a valid token may subscribe to / publish on
    /// (besides its token's own `subscribe`/`publish` claims); `{sub}` is the user id.
    pub authenticated_subscribe: Vec<String>,
    pub authenticated_publish: Vec<String>,
    /// Origins allowed to open WebSockets (`https://app.example.com`,
    /// `https://*.example.com`); empty: any.
    pub allowed_origins: Vec<String>,
    /// Upgrades without an `Origin` header (non-browser clients) are allowed.
    pub allow_missing_origin: bool,
    /// How long before a token expires the connection is sent `token_expired`.
    pub expiry_notice_ms: u64,
    /// How long after expiry a connection that did not refresh is closed (1008).
    pub expiry_grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain for the public listener; empty (with `key_file`): plain TCP.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// How often the two files are checked for changes (SIGHUP reloads at once); 0: on
    /// SIGHUP only, else at least 100.
    pub reload_interval_ms: u64,
}

/// Default: nothing trusted, no PROXY header, no `X-Forwarded-For`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Addresses or CIDR ranges (`10.0.0.0/8`, `127.0.0.1`) of trusted load balancers.
    /// Only their word on the client address is taken.
    pub trusted: Vec<String>,
    /// Trusted peers send a PROXY protocol header (v1 or v2) first.
    pub proxy_protocol: bool,
    /// Take the client address from `X-Forwarded-For` of trusted peers.
    pub forwarded_for: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// The node pings each client this often when it has not heard from it.
    pub ping_interval_ms: u64,
    /// A client silent this long (no frame, no pong) is closed with 1001.
    pub idle_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Frames a connection may have queued.
    pub max_frames: usize,
    /// Bytes a connection may have queued.
    pub max_bytes: usize,
    /// `drop` (drop the message for that subscriber, count it) or `disconnect` (close 1013).
    pub slow_consumer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After a drain starts (`/readyz` is 503), keep accepting this long so load balancers
    /// notice.
    pub drain_delay_ms: u64,
    /// Spread the 1001 closes of existing clients over this window.
    pub close_window_ms: u64,
    /// Hard deadline for everything after the close window.
    pub grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `herald_gateway=debug,info`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            node_id: String::new(),
            admin: AdminConfig::default(),
            relay: RelayConfig::default(),
            redis: RedisConfig::default(),
            limits: LimitsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            outbox: OutboxConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            proxy: ProxyConfig::default(),
            history: Vec::new(),
            demo: DemoConfig::default(),
            readiness: ReadinessConfig::default(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            api_keys: Vec::new(),
            max_body_bytes: 1 << 20,
            max_connections: 256,
            max_pending_body_bytes: 64 << 20,
            publish_keys: Vec::new(),
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { kind: "memory".into() }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            urls: Vec::new(),
            channel_prefix: "herald:".into(),
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 1000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5000,
            unsubscribe_delay_ms: 500,
            publish_queue: 65536,
            history_append_batch: 64,
            history_read_concurrency: 16,
            history_read_queue: 4096,
            canary_interval_ms: 5000,
            canary_timeout_ms: 3000,
            cluster_refresh_ms: herald_redis::CLUSTER_REFRESH_INTERVAL.as_millis() as u64,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_subscriptions: 256,
            max_connections: 100_000,
            max_topic_length: 128,
            handshake_timeout_ms: 10_000,
            first_message_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            max_request_head_bytes: 32 * 1024,
            max_pending_handshakes: 2048,
            publish_per_second: 1000,
            publish_burst: 2000,
            publish_bytes_per_second: 4 << 20,
            publish_bytes_burst: 8 << 20,
            publish_overlimit_close_ms: 10_000,
            connections_per_ip: 1000,
            connects_per_ip_per_second: 100,
            per_ip_exempt: vec!["127.0.0.0/8".into(), "::1".into()],
            listen_backlog: 4096,
            replay_buffer: 10_000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_hs256_secret: String::new(),
            jwt_hs256_secret_file: String::new(),
            jwt_public_key_file: String::new(),
            jwt_jwks_file: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_leeway_ms: 1000,
            jwt_algorithms: Vec::new(),
            key_reload_interval_ms: 1000,
            anonymous_subscribe: Vec::new(),
            anonymous_publish: Vec::new(),
            authenticated_subscribe: Vec::new(),
            authenticated_publish: Vec::new(),
            allowed_origins: Vec::new(),
            allow_missing_origin: true,
            expiry_notice_ms: 30_000,
            expiry_grace_ms: 10_000,
        }
    }
}

impl AuthConfig {
    /// True when a JWT key is configured (then anonymous connections may do only what
    /// `anonymous_*` allows).
    pub fn has_key(&self) -> bool {
        !(self.jwt_hs256_secret.is_empty()
            && self.jwt_hs256_secret_file.is_empty()
            && self.jwt_public_key_file.is_empty()
            && self.jwt_jwks_file.is_empty())
    }

    /// The verifier's share.
    pub fn key_config(&self) -> herald_auth::KeyConfig {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
        herald_auth::KeyConfig {
            hs_secret: text(&self.jwt_hs256_secret),
            hs_secret_file: path(&self.jwt_hs256_secret_file),
            public_key_file: path(&self.jwt_public_key_file),
            jwks_file: path(&self.jwt_jwks_file),
            issuer: text(&self.jwt_issuer),
            audience: text(&self.jwt_audience),
            leeway_ms: self.jwt_leeway_ms,
            algorithms: self.jwt_algorithms.clone(),
        }
    }

    /// The permission policy's share.
    pub fn policy_config(&self) -> herald_auth::PolicyConfig {
        herald_auth::PolicyConfig {
            open: !self.has_key(),
            anonymous_subscribe: self.anonymous_subscribe.clone(),
            anonymous_publish: self.anonymous_publish.clone(),
            authenticated_subscribe: self.authenticated_subscribe.clone(),
            authenticated_publish: self.authenticated_publish.clone(),
        }
    }

    /// Problems with the `[auth]` section: the keys are loaded (so an unreadable or invalid
    /// key file, or both a secret and a secret file, fails at start) and the patterns
    /// compiled.
    fn problems(&self, p: &mut Vec<String>) {
        if let Err(e) = herald_auth::Verifier::new(self.key_config()) {
            p.push(format!("auth: {e}"));
        }
        if let Err(e) = herald_auth::Policy::new(&self.policy_config()) {
            p.push(format!("auth: {e}"));
        }
        if self.key_reload_interval_ms == 0 {
            p.push("auth.key_reload_interval_ms: must be greater than 0".into());
        }
        if self.expiry_notice_ms > 24 * 3600 * 1000 || self.expiry_grace_ms > 24 * 3600 * 1000 {
            p.push("auth.expiry_notice_ms, auth.expiry_grace_ms: at most 86400000 (a day)".into());
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            reload_interval_ms: 1000,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_frames: 1024,
            max_bytes: 4 << 20,
            slow_consumer: "drop".into(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay_ms: 0,
            close_window_ms: 1000,
            grace_ms: 10_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Everything wrong with a configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// Overrides from the command line (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
}

impl Config {
    /// Loads the layers. `env` is the process environment (passed in so tests control it).
    /// Returns the config and warnings (unknown `HERALD_*` variables).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(vec![format!(
                    "config file {} does not exist",
                    path.display()
                )]));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
        }
        let known = known_keys();
        let mut warnings = Vec::new();
        let mut history_env: Option<Vec<HistoryEntry>> = None;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("HERALD_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if key == "history" {
                // A list of tables: JSON in the environment (`[{"topics":"chat.>"}]`).
                match serde_json::from_str::<Vec<HistoryEntry>>(&value) {
                    Ok(h) => history_env = Some(h),
                    Err(e) => {
                        return Err(ConfigError(vec![format!(
                            "HERALD_HISTORY: expected a JSON array of history entries ({e})"
                        )]))
                    }
                }
                continue;
            }
            match known.get(&key) {
                Some(true) => {
                    let list: Vec<String> = value
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect();
                    builder = builder
                        .set_override(key, list)
                        .map_err(|e| ConfigError(vec![e.to_string()]))?;
                }
                Some(false) => {
                    builder = builder
                        .set_override(key, value)
                        .map_err(|e| ConfigError(vec![e.to_string()]))?;
                }
                None => warnings.push(format!(
                    "ignoring environment variable {name}: no configuration key `{key}`"
                )),
            }
        }
        if let Some(l) = &cli.listen {
            builder = builder
                .set_override("listen", l.as_str())
                .map_err(|e| ConfigError(vec![e.to_string()]))?;
        }
        if let Some(l) = &cli.admin_listen {
            builder = builder
                .set_override("admin.listen", l.as_str())
                .map_err(|e| ConfigError(vec![e.to_string()]))?;
        }
        let built = builder.build().map_err(|e| ConfigError(vec![e.to_string()]))?;
        let mut cfg: Config = match built.clone().try_deserialize() {
            Ok(c) => c,
            Err(e) => {
                // serde stops at the first problem; walk the merged tree to list them all.
                let mut problems = built
                    .try_deserialize::<serde_json::Value>()
                    .map(|v| structural_problems(&v))
                    .unwrap_or_default();
                if problems.is_empty() {
                    problems.push(e.to_string());
                }
                return Err(ConfigError(problems));
            }
        };
        if let Some(h) = history_env {
            cfg.history = h;
        }
        cfg.validate()?;
        Ok((cfg, warnings))
    }

    /// Checks every value; lists every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let listen = self.listen.parse::<SocketAddr>();
        if listen.is_err() {
            p.push(format!("listen: {:?} is not an address like 0.0.0.0:8080", self.listen));
        }
        match self.admin.listen.parse::<SocketAddr>() {
            Err(_) => p.push(format!(
                "admin.listen: {:?} is not an address like 127.0.0.1:9090",
                self.admin.listen
            )),
            // Any key closes every `/api/` endpoint (publish-only keys reach the publish
            // endpoints alone), so either list makes a non-loopback listener safe.
            Ok(a) if !a.ip().is_loopback() && self.admin.api_keys.is_empty() && self.admin.publish_keys.is_empty() => {
                p.push(format!(
                    "admin.listen: {a} is not a loopback address; set admin.api_keys (or admin.publish_keys) before exposing the admin API"
                ))
            }
            Ok(_) => {}
        }
        if self.admin.api_keys.iter().any(|k| k.len() < 16) {
            p.push("admin.api_keys: every key must be at least 16 characters".into());
        }
        self.validate_abuse(&mut p);
        if self.node_id.len() > 64
            || self
                .node_id
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(c)))
        {
            p.push("node_id: at most 64 characters of ASCII letters, digits and - _ . :".into());
        }
        match self.relay.kind.as_str() {
            "memory" => {}
            "redis" if self.redis.urls.is_empty() => {
                if !(self.redis.url.starts_with("redis://") || self.redis.url.starts_with("rediss://")) {
                    p.push(format!(
                        "redis.url: {:?} must start with redis:// or rediss://",
                        mask_url_password(&self.redis.url)
                    ));
                }
            }
            "redis" => {
                if self.redis.urls.len() > herald_redis::MAX_SHARDS {
                    p.push(format!(
                        "redis.urls: at most {} Redis servers, got {}",
                        herald_redis::MAX_SHARDS,
                        self.redis.urls.len()
                    ));
                }
                let mut names = Vec::new();
                for (i, url) in self.redis.urls.iter().enumerate() {
                    // Only the shard's name goes into a message: a URL may carry a password.
                    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                        p.push(format!("redis.urls[{i}]: must start with redis:// or rediss://"));
                        continue;
                    }
                    match herald_redis::shard_name(url) {
                        Ok(name) if names.contains(&name) => {
                            p.push(format!("redis.urls[{i}]: {name} is listed twice"));
                        }
                        Ok(name) => names.push(name),
                        Err(e) => p.push(format!("redis.urls[{i}]: not a usable Redis URL ({e})")),
                    }
                }
            }
            "redis-cluster" => {
                let seeds: Vec<&String> = if self.redis.urls.is_empty() {
                    vec![&self.redis.url]
                } else {
                    self.redis.urls.iter().collect()
                };
                if seeds.len() > herald_redis::MAX_SHARDS {
                    p.push(format!(
                        "redis.urls: at most {} seed nodes, got {}",
                        herald_redis::MAX_SHARDS,
                        seeds.len()
                    ));
                }
                for (i, url) in seeds.iter().enumerate() {
                    if !url.starts_with("redis://") {
                        p.push(format!(
                            "redis.urls[{i}]: a Redis Cluster seed must start with redis://"
                        ));
                    } else if let Err(e) = herald_redis::shard_name(url) {
                        p.push(format!("redis.urls[{i}]: not a usable Redis URL ({e})"));
                    }
                }
                if self.redis.cluster_refresh_ms == 0 {
                    p.push("redis.cluster_refresh_ms: must be positive".into());
                }
            }
            other => p.push(format!(
                "relay.kind: {other:?} is not one of \"memory\", \"redis\", \"redis-cluster\""
            )),
        }
        if self.redis.channel_prefix.len() > 64 {
            p.push("redis.channel_prefix: at most 64 bytes".into());
        }
        for (name, v) in [
            ("redis.heartbeat_interval_ms", self.redis.heartbeat_interval_ms),
            ("redis.heartbeat_timeout_ms", self.redis.heartbeat_timeout_ms),
            ("redis.reconnect_min_ms", self.redis.reconnect_min_ms),
            ("redis.publish_queue", self.redis.publish_queue as u64),
            (
                "redis.history_read_concurrency",
                self.redis.history_read_concurrency as u64,
            ),
            ("redis.history_read_queue", self.redis.history_read_queue as u64),
            ("redis.canary_timeout_ms", self.redis.canary_timeout_ms),
            ("admin.max_body_bytes", self.admin.max_body_bytes as u64),
            ("admin.max_connections", self.admin.max_connections as u64),
            (
                "limits.max_pending_handshakes",
                self.limits.max_pending_handshakes as u64,
            ),
            ("limits.max_message_bytes", self.limits.max_message_bytes as u64),
            ("limits.max_subscriptions", self.limits.max_subscriptions as u64),
            ("limits.max_connections", self.limits.max_connections as u64),
            ("limits.max_topic_length", self.limits.max_topic_length as u64),
            ("limits.handshake_timeout_ms", self.limits.handshake_timeout_ms),
            ("limits.write_timeout_ms", self.limits.write_timeout_ms),
            ("heartbeat.ping_interval_ms", self.heartbeat.ping_interval_ms),
            ("outbox.max_frames", self.outbox.max_frames as u64),
            ("outbox.max_bytes", self.outbox.max_bytes as u64),
            ("shutdown.grace_ms", self.shutdown.grace_ms),
        ] {
            if v == 0 {
                p.push(format!("{name}: must be greater than 0"));
            }
        }
        if self.redis.reconnect_max_ms < self.redis.reconnect_min_ms {
            p.push("redis.reconnect_max_ms: must be at least redis.reconnect_min_ms".into());
        }
        if !(1..=256).contains(&self.redis.history_append_batch) {
            p.push("redis.history_append_batch: 1 to 256".into());
        }
        if self.redis.unsubscribe_delay_ms > 1500 {
            p.push("redis.unsubscribe_delay_ms: at most 1500 (a channel must be gone within 2 s)".into());
        }
        if self.limits.max_message_bytes > 64 << 20 {
            p.push("limits.max_message_bytes: at most 67108864 (64 MiB)".into());
        }
        if self.admin.max_body_bytes > 256 << 20 {
            p.push("admin.max_body_bytes: at most 268435456 (256 MiB)".into());
        }
        if self.admin.max_pending_body_bytes < self.admin.max_body_bytes {
            p.push("admin.max_pending_body_bytes: must be at least admin.max_body_bytes".into());
        }
        if self.admin.max_connections > 4096 {
            p.push("admin.max_connections: at most 4096 (they are reserved file descriptors)".into());
        }
        if !(8192..=1 << 20).contains(&self.limits.max_request_head_bytes) {
            p.push("limits.max_request_head_bytes: at least 8192 and at most 1048576 (1 MiB)".into());
        }
        if self.limits.max_topic_length > 1024 {
            p.push("limits.max_topic_length: at most 1024".into());
        }
        if self.heartbeat.idle_timeout_ms <= self.heartbeat.ping_interval_ms {
            p.push("heartbeat.idle_timeout_ms: must be greater than heartbeat.ping_interval_ms".into());
        }
        if !matches!(self.outbox.slow_consumer.as_str(), "drop" | "disconnect") {
            p.push(format!(
                "outbox.slow_consumer: {:?} is not one of \"drop\", \"disconnect\"",
                self.outbox.slow_consumer
            ));
        }
        for (name, list) in [
            ("proxy.trusted", &self.proxy.trusted),
            ("limits.per_ip_exempt", &self.limits.per_ip_exempt),
        ] {
            if let Err(e) = crate::client_ip::parse_nets(list) {
                p.push(format!("{name}: {e}"));
            }
        }
        if (self.proxy.proxy_protocol || self.proxy.forwarded_for) && self.proxy.trusted.is_empty() {
            p.push(
                "proxy.trusted: proxy.proxy_protocol and proxy.forwarded_for apply to trusted peers only; list them"
                    .into(),
            );
        }
        if self.log.level.trim().is_empty() {
            p.push("log.level: must not be empty".into());
        }
        self.auth.problems(&mut p);
        match (self.tls.cert_file.is_empty(), self.tls.key_file.is_empty()) {
            (true, true) => {}
            (false, false) => {
                if let Err(e) = crate::tls::check_files(&self.tls) {
                    p.push(format!("tls: {e}"));
                }
            }
            _ => p.push("tls.cert_file, tls.key_file: set both (TLS) or neither (plain TCP)".into()),
        }
        let reload = self.tls.reload_interval_ms;
        if reload != 0 && reload < crate::tls::MIN_RELOAD_INTERVAL_MS {
            p.push(format!(
                "tls.reload_interval_ms: 0 (on SIGHUP only) or at least {} (two file reads per poll), is {reload}",
                crate::tls::MIN_RELOAD_INTERVAL_MS
            ));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(p))
        }
    }

    /// The rules of the abuse defences: admin key scopes, publish rate limits, the Origin
    /// allow-list, the listen backlog.
    fn validate_abuse(&self, p: &mut Vec<String>) {
        if self.admin.publish_keys.iter().any(|k| k.len() < 16) {
            p.push("admin.publish_keys: every key must be at least 16 characters".into());
        }
        if self.admin.publish_keys.iter().any(|k| self.admin.api_keys.contains(k)) {
            p.push("admin.publish_keys: a key must not also be in admin.api_keys".into());
        }
        let l = &self.limits;
        if l.publish_per_second > 0 && l.publish_burst == 0 {
            p.push("limits.publish_burst: must be at least 1 when limits.publish_per_second is set".into());
        }
        if l.publish_bytes_per_second > 0 && l.publish_bytes_burst < l.max_message_bytes as u64 {
            p.push(
                "limits.publish_bytes_burst: must be at least limits.max_message_bytes (or the largest message could never be published)"
                    .into(),
            );
        }
        if !(1024..=65535).contains(&l.listen_backlog) {
            p.push("limits.listen_backlog: at least 1024 and at most 65535".into());
        }
        if let Err(errors) = crate::origin::OriginPolicy::from_config(&self.auth) {
            p.extend(errors.iter().map(|e| format!("auth.allowed_origins: {e}")));
        }
        self.validate_history(p);
        if self.demo.enabled {
            self.validate_demo(p);
        }
    }

    fn validate_demo(&self, p: &mut Vec<String>) {
        let d = &self.demo;
        for (key, topic) in [
            ("time_topic", &d.time_topic),
            ("stats_topic", &d.stats_topic),
            ("chat_topic", &d.chat_topic),
        ] {
            if let Err(e) = herald_protocol::validate_topic(topic, self.topic_rules()) {
                p.push(format!("demo.{key}: {e}"));
            }
        }
        if d.time_topic == d.stats_topic {
            p.push("demo.stats_topic: must differ from demo.time_topic".into());
        }
        if d.chat_topic == d.time_topic || d.chat_topic == d.stats_topic {
            p.push("demo.chat_topic: must differ from the system topics (time_topic, stats_topic)".into());
        }
        if !(100..=60_000).contains(&d.interval_ms) {
            p.push("demo.interval_ms: at least 100 and at most 60000".into());
        }
    }

    fn validate_history(&self, p: &mut Vec<String>) {
        for (i, h) in self.history.iter().enumerate() {
            let at = format!("history[{i}]");
            if h.topics.is_empty() {
                p.push(format!("{at}.topics: a topic pattern is required"));
            } else if h.topics.contains("{sub}") {
                p.push(format!(
                    "{at}.topics: {{sub}} has no meaning here (history is per topic, not per user)"
                ));
            } else if let Err(e) = herald_auth::PatternSet::compile(&[h.topics.as_str()], None) {
                p.push(format!("{at}.topics: {e}"));
            }
            if h.size == 0 || h.size > 1_000_000 {
                p.push(format!("{at}.size: at least 1 and at most 1000000 messages"));
            }
            if !(1000..=MAX_HISTORY_TTL_MS).contains(&h.ttl_ms) {
                p.push(format!(
                    "{at}.ttl_ms: at least 1000 and at most {MAX_HISTORY_TTL_MS} (365 days)"
                ));
            }
        }
        if !self.history.is_empty() && self.limits.replay_buffer == 0 {
            p.push("limits.replay_buffer: at least 1 when topics keep history".into());
        }
    }

    /// The effective configuration as TOML (`herald --print-config`). API keys are masked,
    /// and a comment says so (the masked text is not a usable key).
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.admin.api_keys = shown.admin.api_keys.iter().map(|_| "********".to_owned()).collect();
        shown.admin.publish_keys = shown.admin.publish_keys.iter().map(|_| "********".to_owned()).collect();
        if !shown.auth.jwt_hs256_secret.is_empty() {
            shown.auth.jwt_hs256_secret = "********".into();
        }
        let redis_secret = std::iter::once(&self.redis.url)
            .chain(&self.redis.urls)
            .any(|u| mask_url_password(u) != *u);
        shown.redis.url = mask_url_password(&shown.redis.url);
        shown.redis.urls = shown.redis.urls.iter().map(|u| mask_url_password(u)).collect();
        let text = toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"));
        if self.admin.api_keys.is_empty()
            && self.admin.publish_keys.is_empty()
            && self.auth.jwt_hs256_secret.is_empty()
            && !redis_secret
        {
            text
        } else {
            format!("# keys and secrets are masked; supply the real ones to reuse this file.\n{text}")
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated")
    }
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.listen.parse().expect("validated")
    }
    pub fn topic_rules(&self) -> TopicRules {
        TopicRules {
            max_len: self.limits.max_topic_length,
        }
    }
    pub fn outbox_limits(&self) -> OutboxLimits {
        OutboxLimits {
            max_frames: self.outbox.max_frames,
            max_bytes: self.outbox.max_bytes,
            policy: if self.outbox.slow_consumer == "disconnect" {
                SlowConsumerPolicy::Disconnect
            } else {
                SlowConsumerPolicy::Drop
            },
        }
    }
    pub fn handshake_timeout(&self) -> Duration {
        ms(self.limits.handshake_timeout_ms)
    }
    pub fn first_message_timeout(&self) -> Option<Duration> {
        (self.limits.first_message_timeout_ms > 0).then(|| ms(self.limits.first_message_timeout_ms))
    }
    pub fn write_timeout(&self) -> Duration {
        ms(self.limits.write_timeout_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        ms(self.heartbeat.ping_interval_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        ms(self.heartbeat.idle_timeout_ms)
    }
    pub fn close_window(&self) -> Duration {
        ms(self.shutdown.close_window_ms)
    }
    pub fn drain_delay(&self) -> Duration {
        ms(self.shutdown.drain_delay_ms)
    }
    pub fn grace(&self) -> Duration {
        ms(self.shutdown.grace_ms)
    }
}

/// Unknown keys and values of the wrong type anywhere in a merged configuration tree,
/// compared with the shape of the defaults. Strings from the environment count as numbers
/// or booleans when they parse as such (that is how they are deserialised).
fn structural_problems(value: &serde_json::Value) -> Vec<String> {
    use serde_json::Value as V;
    fn walk(path: &str, got: &V, want: &V, out: &mut Vec<String>) {
        match (got, want) {
            (V::Object(g), V::Object(w)) => {
                for (k, v) in g {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match w.get(k) {
                        Some(wv) => walk(&p, v, wv, out),
                        None => out.push(format!("{p}: unknown key")),
                    }
                }
            }
            (V::String(s), V::Number(n)) => {
                let ok = if n.is_u64() {
                    s.trim().parse::<u64>().is_ok()
                } else {
                    s.trim().parse::<f64>().is_ok()
                };
                if !ok {
                    out.push(format!("{path}: {s:?} is not a whole number"));
                }
            }
            (V::String(s), V::Bool(_)) if s.parse::<bool>().is_err() => {
                out.push(format!("{path}: {s:?} is not true or false"));
            }
            (V::Number(n), V::Number(w)) if w.is_u64() && !n.is_u64() => {
                out.push(format!("{path}: {n} is not a whole number of at least 0"));
            }
            (V::Array(items), V::Array(_)) => {
                if let Some(bad) = items.iter().find(|i| !i.is_string()) {
                    out.push(format!("{path}: every item must be a string, found {bad}"));
                }
            }
            (V::String(_), V::String(_)) | (V::Number(_), V::Number(_)) | (V::Bool(_), V::Bool(_)) => {}
            (V::String(_), V::Bool(_)) => {}
            (g, w) => out.push(format!("{path}: expected {}, found {g}", kind(w))),
        }
    }
    fn kind(v: &V) -> &'static str {
        match v {
            V::Object(_) => "a table",
            V::Array(_) => "a list",
            V::String(_) => "a string",
            V::Number(_) => "a number",
            V::Bool(_) => "true or false",
            V::Null => "a value",
        }
    }
    let want = serde_json::to_value(Config::default()).expect("serialisable");
    let mut out = Vec::new();
    walk("", value, &want, &mut out);
    out
}

/// Every leaf key of the tree (`admin.listen`, ...), mapped to whether it is a list. Public
/// so that deployment checks can hold environment files to the same reference.
/// `url` with the password of its user part (`scheme://user:password@host`) replaced by
/// `********`; unchanged when it has none.
fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = rest[..at].find(':') else {
        return url.to_owned();
    };
    format!("{}{}:********{}", &url[..scheme_end], &rest[..colon], &rest[at..])
}

pub fn known_keys() -> BTreeMap<String, bool> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, bool>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Array(_) => {
                out.insert(prefix.to_owned(), true);
            }
            _ => {
                out.insert(prefix.to_owned(), false);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        &serde_json::to_value(Config::default()).expect("serialisable"),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid_and_complete() {
        let (c, w) = Config::load(None, env(&[]), &CliOverrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert!(w.is_empty());
        assert_eq!(c.listen, "0.0.0.0:8080");
        assert_eq!(c.admin.listen, "127.0.0.1:9090");
        assert_eq!(c.relay.kind, "memory");
    }

    #[test]
    fn layers_in_order() {
        let mut f = tempfile();
        writeln!(f.1, "listen = \"127.0.0.1:1000\"\nnode_id = \"007\"\n[limits]\nmax_subscriptions = 5\nmax_connections = 9\n[relay]\nkind = \"redis\"").unwrap();
        let (c, w) = Config::load(
            Some(&f.0),
            env(&[
                ("HERALD_LIMITS__MAX_SUBSCRIPTIONS", "7"),
                ("HERALD_ADMIN__API_KEYS", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb"),
                ("HERALD_REDIS__URL", "redis://127.0.0.1:7000/"),
                ("HERALD_NOPE", "1"),
                ("PATH", "/bin"),
            ]),
            &CliOverrides {
                listen: Some("127.0.0.1:2000".into()),
                admin_listen: None,
            },
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:2000", "CLI beats file");
        assert_eq!(c.node_id, "007", "strings stay strings");
        assert_eq!(c.limits.max_subscriptions, 7, "env beats file");
        assert_eq!(c.limits.max_connections, 9, "file beats default");
        assert_eq!(c.admin.api_keys, vec!["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]);
        assert_eq!(c.relay.kind, "redis");
        assert_eq!(c.redis.url, "redis://127.0.0.1:7000/");
        assert_eq!(w.len(), 1, "unknown HERALD_ variable warned about: {w:?}");
        f.1.flush().unwrap();
    }

    #[test]
    fn redis_urls_come_as_a_comma_separated_list_and_are_checked_without_leaking_passwords() {
        let load = |urls: &str| {
            Config::load(
                None,
                env(&[("HERALD_RELAY__KIND", "redis"), ("HERALD_REDIS__URLS", urls)]),
                &CliOverrides::default(),
            )
        };
        let (c, _) = load("redis://10.0.0.2:6379/, redis://10.0.0.3:6379/").unwrap();
        assert_eq!(c.redis.urls, vec!["redis://10.0.0.2:6379/", "redis://10.0.0.3:6379/"]);
        let text = load("redis://:hunter2@10.0.0.2:6379/,redis://:hunter2@10.0.0.2:6379")
            .unwrap_err()
            .to_string();
        assert!(text.contains("redis.urls[1]: 10.0.0.2:6379 is listed twice"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let text = load("redis://10.0.0.2:6379/,http://:hunter2@10.0.0.3/")
            .unwrap_err()
            .to_string();
        assert!(text.contains("redis.urls[1]: must start with redis://"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        // A different database on the same server is another shard.
        assert!(load("redis://10.0.0.2:6379/0,redis://10.0.0.2:6379/1").is_ok());
    }

    #[test]
    fn a_redis_cluster_takes_its_seeds_from_the_urls_or_the_url() {
        let load = |vars: &[(&str, &str)]| {
            let mut all = vec![("HERALD_RELAY__KIND", "redis-cluster")];
            all.extend_from_slice(vars);
            Config::load(None, env(&all), &CliOverrides::default())
        };
        let (c, _) = load(&[("HERALD_REDIS__URLS", "redis://10.0.0.2:7000/,redis://10.0.0.3:7000/")]).unwrap();
        assert_eq!(c.relay.kind, "redis-cluster");
        assert_eq!(c.redis.urls.len(), 2);
        assert_eq!(c.redis.cluster_refresh_ms, 5000);
        assert!(load(&[("HERALD_REDIS__URL", "redis://10.0.0.2:7000/")]).is_ok());
        let text = load(&[("HERALD_REDIS__URLS", "rediss://:hunter2@10.0.0.2:7000/")])
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("redis.urls[0]: a Redis Cluster seed must start with redis://"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let text = load(&[("HERALD_REDIS__CLUSTER_REFRESH_MS", "0")])
            .unwrap_err()
            .to_string();
        assert!(text.contains("redis.cluster_refresh_ms: must be positive"), "{text}");
    }

    #[test]
    fn redis_passwords_are_masked_in_the_printed_configuration() {
        assert_eq!(mask_url_password("redis://:pw@h:1/"), "redis://:********@h:1/");
        assert_eq!(mask_url_password("redis://u:p@ss@h:1/2"), "redis://u:********@h:1/2");
        assert_eq!(mask_url_password("redis://u@h:1/"), "redis://u@h:1/");
        assert_eq!(mask_url_password("redis://h:1/"), "redis://h:1/");
        let mut c = Config::default();
        c.redis.url = "redis://:hunter2@10.0.0.1:6379/".into();
        c.redis.urls = vec!["redis://app:hunter3@10.0.0.2:6379/".into()];
        let text = c.to_toml();
        assert!(!text.contains("hunter"), "{text}");
        assert!(text.contains("redis://app:********@10.0.0.2:6379/"), "{text}");
        assert!(text.starts_with("# keys and secrets are masked"), "{text}");
    }

    #[test]
    fn every_problem_is_listed() {
        let cli = CliOverrides {
            listen: Some("nowhere".into()),
            admin_listen: Some("0.0.0.0:9090".into()),
        };
        let e = Config::load(
            None,
            env(&[
                ("HERALD_RELAY__KIND", "carrier-pigeon"),
                ("HERALD_OUTBOX__SLOW_CONSUMER", "wait"),
            ]),
            &cli,
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in ["listen:", "admin.listen:", "relay.kind:", "outbox.slow_consumer:"] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        assert_eq!(e.0.len(), 4, "{text}");
    }

    #[test]
    fn type_and_key_errors_are_listed_together() {
        let mut f = tempfile();
        writeln!(
            f.1,
            "listen = 5\nbogus = 1\n[limits]\nmax_subscriptions = \"many\"\nmax_connectons = 3"
        )
        .unwrap();
        let e = Config::load(
            Some(&f.0),
            env(&[("HERALD_HEARTBEAT__PING_INTERVAL_MS", "soon")]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "bogus: unknown key",
            "limits.max_connectons: unknown key",
            "limits.max_subscriptions: \"many\"",
            "heartbeat.ping_interval_ms: \"soon\"",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let mut f = tempfile();
        writeln!(f.1, "[limits]\nmax_subscriptons = 5").unwrap();
        let e = Config::load(Some(&f.0), env(&[]), &CliOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("max_subscriptons"), "{e}");
    }

    #[test]
    fn print_config_round_trips_and_masks_keys() {
        let mut c = Config::default();
        c.admin.api_keys = vec!["secretsecretsecret".into()];
        let text = c.to_toml();
        assert!(!text.contains("secretsecretsecret"));
        let back: Config = toml::from_str(&Config::default().to_toml()).unwrap();
        assert_eq!(back, Config::default());
    }

    #[test]
    fn resource_limits_come_from_the_environment_and_are_checked() {
        let (c, w) = Config::load(
            None,
            env(&[
                ("HERALD_LIMITS__MAX_REQUEST_HEAD_BYTES", "16384"),
                ("HERALD_LIMITS__MAX_PENDING_HANDSHAKES", "10"),
                ("HERALD_ADMIN__MAX_CONNECTIONS", "8"),
                ("HERALD_ADMIN__MAX_PENDING_BODY_BYTES", "2097152"),
            ]),
            &CliOverrides::default(),
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.limits.max_request_head_bytes, 16384);
        assert_eq!(c.limits.max_pending_handshakes, 10);
        assert_eq!(c.admin.max_connections, 8);
        assert_eq!(c.admin.max_pending_body_bytes, 2 << 20);
        let e = Config::load(
            None,
            env(&[
                ("HERALD_LIMITS__MAX_REQUEST_HEAD_BYTES", "4096"),
                ("HERALD_LIMITS__MAX_PENDING_HANDSHAKES", "0"),
                ("HERALD_ADMIN__MAX_CONNECTIONS", "0"),
                ("HERALD_ADMIN__MAX_PENDING_BODY_BYTES", "1000"),
            ]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "limits.max_request_head_bytes",
            "limits.max_pending_handshakes",
            "admin.max_connections",
            "admin.max_pending_body_bytes",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn demo_comes_from_the_environment_and_is_validated() {
        let (c, w) = Config::load(
            None,
            env(&[("HERALD_DEMO__ENABLED", "true"), ("HERALD_DEMO__INTERVAL_MS", "250")]),
            &CliOverrides::default(),
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert!(c.demo.enabled);
        assert_eq!(c.demo.interval_ms, 250);
        assert_eq!(c.demo.time_topic, "herald.time");
        // Off, the [demo] keys are not checked: a user who never set them is not told.
        let off = Config::load(
            None,
            env(&[
                ("HERALD_DEMO__INTERVAL_MS", "50"),
                ("HERALD_LIMITS__MAX_TOPIC_LENGTH", "8"),
            ]),
            &CliOverrides::default(),
        );
        assert!(off.is_ok(), "{:?}", off.err().map(|e| e.to_string()));
        let err = Config::load(
            None,
            env(&[
                ("HERALD_DEMO__ENABLED", "true"),
                ("HERALD_DEMO__INTERVAL_MS", "50"),
                ("HERALD_DEMO__STATS_TOPIC", "bad topic"),
                ("HERALD_DEMO__CHAT_TOPIC", "herald.time"),
            ]),
            &CliOverrides::default(),
        )
        .unwrap_err()
        .to_string();
        for needle in ["demo.interval_ms", "demo.stats_topic", "demo.chat_topic"] {
            assert!(err.contains(needle), "{needle} missing in {err}");
        }
    }

    /// docs/configuration.md names every key's environment variable, so no key goes
    /// undocumented.
    #[test]
    fn every_key_is_in_the_configuration_reference() {
        let doc = include_str!("../../../docs/configuration.md");
        for key in known_keys().keys() {
            let var = format!("`HERALD_{}`", key.to_ascii_uppercase().replace('.', "__"));
            assert!(doc.contains(&var), "docs/configuration.md does not list {var} ({key})");
        }
    }

    fn tempfile() -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!(
            "herald-cfg-{}-{}.toml",
            std::process::id(),
            rand::random::<u64>()
        ));
        let f = std::fs::File::create(&path).unwrap();
        (path, f)
    }
}
