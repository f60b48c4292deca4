//! Who a connection is: the node's JWT [`Verifier`] and permission [`Policy`] (from
//! `herald-auth`), turned into a [`ConnIdentity`] for a token (upgrade header, `?token=`,
//! the `auth` and `refresh` ops) or for an anonymous connection. Every refusal is counted
//! in `herald_auth_failures_total{reason}`.
//!
//! It also keeps the keys fresh: [`run_key_reload`] re-reads the key files every
//! `auth.key_reload_interval_ms` and at once on SIGHUP, logs the outcome and counts it;
//! invalid new files leave the old keys in use.
//!
//! It does not check permissions (the core does, once per request) and does not run the
//! expiry timers (the session's writer does).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_auth::{AuthError, Permissions, Policy, Verifier};
use herald_broker::BrokerMetrics;
use tokio_util::sync::CancellationToken;

use crate::config::AuthConfig;
use crate::core::ConnIdentity;

/// Why the identity could not be set up (start-up; `Config::validate` reports the same).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("auth: {0}")]
    Keys(#[from] herald_auth::KeyError),
    #[error("auth: {0}")]
    Patterns(#[from] herald_auth::PatternError),
}

/// Why a token was not accepted where one already identifies the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Token(#[from] AuthError),
    #[error("the new token is for another user")]
    SubjectChanged,
}

impl RefreshError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(e) => e.reason(),
            Self::SubjectChanged => "subject_changed",
        }
    }
}

/// See the module docs.
pub struct Identity {
    verifier: Verifier,
    policy: Policy,
    leeway_ms: u64,
    /// `token_expired` goes out this long before the expiry.
    pub expiry_notice: Duration,
    /// A connection that did not refresh is closed this long after its expiry.
    pub expiry_grace: Duration,
    reload_interval: Duration,
    metrics: Arc<BrokerMetrics>,
}

/// Now, in milliseconds since the epoch (the clock tokens are dated by).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Identity {
    pub fn new(cfg: &AuthConfig, metrics: Arc<BrokerMetrics>) -> Result<Self, IdentityError> {
        let verifier = Verifier::new(cfg.key_config())?;
        let policy = Policy::new(&cfg.policy_config())?;
        Ok(Self {
            verifier,
            policy,
            leeway_ms: cfg.jwt_leeway_ms,
            expiry_notice: Duration::from_millis(cfg.expiry_notice_ms),
            expiry_grace: Duration::from_millis(cfg.expiry_grace_ms),
            reload_interval: Duration::from_millis(cfg.key_reload_interval_ms.max(1)),
            metrics,
        })
    }

    /// No key is configured: the public listener is open to anyone (unless `anonymous_*`
    /// narrows it).
    pub fn is_open(&self) -> bool {
        !self.verifier.has_keys()
    }

    /// The permissions of a connection without a token.
    pub fn anonymous_permissions(&self) -> Arc<Permissions> {
        self.policy.anonymous()
    }

    pub fn anonymous(&self) -> ConnIdentity {
        ConnIdentity::anonymous(self.policy.anonymous())
    }

    /// Verifies `token` and derives the connection's identity from its claims. Counted
    /// when refused.
    pub fn authenticate(&self, token: &str) -> Result<ConnIdentity, AuthError> {
        let result = self.verifier.verify(token).and_then(|claims| {
            let permissions = self
                .policy
                .for_claims(&claims)
                .map_err(|e| AuthError::InvalidClaim(e.to_string()))?;
            Ok(ConnIdentity {
                user: Some(Arc::from(claims.sub.as_str())),
                permissions,
                // The verifier accepts a token until `exp` + leeway: so does the session.
                expires_ms: claims.exp_ms.map(|e| e.saturating_add(self.leeway_ms)),
            })
        });
        if let Err(e) = &result {
            self.count_failure(e.reason());
        }
        result
    }

    /// A `refresh` for a connection of `user`: the new token must verify and name the same
    /// user.
    pub fn refresh(&self, user: Option<&str>, token: &str) -> Result<ConnIdentity, RefreshError> {
        let identity = self.authenticate(token)?;
        if identity.user.as_deref() != user {
            self.count_failure("subject_changed");
            return Err(RefreshError::SubjectChanged);
        }
        Ok(identity)
    }

    fn count_failure(&self, reason: &str) {
        self.metrics.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Re-reads the key files if they changed; logs and counts the outcome.
    pub fn reload_keys(&self, why: &str) {
        match self.verifier.reload_if_changed() {
            Ok(true) => {
                self.metrics.auth_key_reloads.with_label_values(&["reloaded"]).inc();
                tracing::info!(trigger = why, "JWT keys reloaded");
            }
            Ok(false) => tracing::debug!(trigger = why, "JWT key files unchanged"),
            Err(e) => {
                self.metrics.auth_key_reloads.with_label_values(&["failed"]).inc();
                tracing::warn!(trigger = why, error = %e, "JWT key files are invalid; the previous keys stay in use");
            }
        }
    }

    /// True when key files are configured (reloading them is worth a task).
    pub fn has_key_files(&self) -> bool {
        self.verifier.has_key_files()
    }
}

/// Reloads the key files every `key_reload_interval_ms` and on SIGHUP until `stop`.
pub async fn run_key_reload(identity: Arc<Identity>, stop: CancellationToken) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; JWT keys reload on the interval only");
            None
        }
    };
    let mut tick = tokio::time::interval(identity.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => "interval",
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "sighup",
        };
        identity.reload_keys(why);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_verifier_reason_is_a_preregistered_label() {
        for r in herald_auth::AuthError::REASONS {
            assert!(
                herald_broker::metrics::AUTH_FAILURE_REASONS.contains(&r),
                "{r} missing from AUTH_FAILURE_REASONS"
            );
        }
    }
}
