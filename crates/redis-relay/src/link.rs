//! What the two connection tasks (`publish_link`, `supervisor`) have in common: why a
//! connection ended ([`LinkError`]) and the reconnect loop's bookkeeping ([`Retry`]:
//! jittered backoff, and logging that warns once per outage instead of once per attempt).
//!
//! Neither owns a connection; each task drives its own with these.

use std::time::Duration;

use redis::RedisError;
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::RedisRelayConfig;
use crate::shared::Link;

/// Why a connection ended or never started.
#[derive(Debug, Error)]
pub(crate) enum LinkError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("connection lost")]
    Lost,
    /// An error reply that leaves the connection unusable for its purpose (sharded
    /// pub/sub: an ACL refusal of SSUBSCRIBE, a non-TCP address).
    #[error("redis: {0}")]
    Server(String),
    /// The server's replies could not be matched to our requests.
    #[error("redis protocol: {0}")]
    Protocol(&'static str),
    /// The pub/sub connection answers PING but did not deliver this node's canary.
    #[error("subscribed but silent: {0}")]
    Silent(&'static str),
    #[error("shutting down")]
    Shutdown,
}

/// Errors after which a connection cannot be trusted any more (as opposed to an error
/// reply from Redis, e.g. an ACL refusal, which leaves the connection usable).
pub(crate) fn is_connection_failure(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// One link's reconnect loop state. See the module docs.
pub(crate) struct Retry {
    link: Link,
    backoff: Backoff,
    /// A connection that lived this long resets the backoff.
    long_enough: Duration,
    /// Attempts that failed since the link was last up: the first is a warning, the rest
    /// debug.
    failures: u32,
    /// When the current connection came up.
    since: Option<Instant>,
    /// The link was up at least once (so coming up again is a reconnect).
    was_up: bool,
}

impl Retry {
    pub(crate) fn new(link: Link, cfg: &RedisRelayConfig) -> Self {
        Self {
            link,
            backoff: Backoff::new(cfg.reconnect_backoff_min, cfg.reconnect_backoff_max),
            long_enough: cfg.reconnect_backoff_max,
            failures: 0,
            since: None,
            was_up: false,
        }
    }

    /// The connection is up; returns whether this is a reconnect (not the first one).
    pub(crate) fn up(&mut self) -> bool {
        self.failures = 0;
        self.since = Some(Instant::now());
        std::mem::replace(&mut self.was_up, true)
    }

    /// Attempts that failed since the link was last up.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// The connection ended, or an attempt failed, with `error`.
    pub(crate) fn failed(&mut self, error: &LinkError, url: &str) {
        // A connection that lived long enough resets the backoff, unless it ended silent:
        // a path that stays silent must not be retried at full speed forever.
        let lived = self.since.take().is_some_and(|t| t.elapsed() >= self.long_enough);
        if lived && !matches!(error, LinkError::Silent(_)) {
            self.backoff.reset();
        }
        let link = self.link.as_str();
        if self.failures == 0 {
            tracing::warn!(%error, url, link, "redis relay connection down; reconnecting");
        } else {
            tracing::debug!(%error, failures = self.failures, link, "redis relay reconnect failed");
        }
        self.failures = self.failures.saturating_add(1);
    }

    /// Sleeps the next backoff delay; `false` when cancelled meanwhile.
    pub(crate) async fn pause(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.backoff.next_delay();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
