//! Per client IP limits on the public WebSocket endpoints: at most
//! `limits.connections_per_ip` open connections and `limits.connects_per_ip_per_second` new
//! ones per second for one client address (after PROXY protocol and `X-Forwarded-For`,
//! `client_ip.rs`). Over either, the upgrade is answered 429 `too_many_connections` with a
//! `Retry-After`, before anything is registered, and counted in
//! `herald_ip_refusals_total{reason="concurrent"|"rate"}` (no per-address label).
//!
//! Keys: an IPv4 address, or the /64 network of an IPv6 address (one subscriber line gets a
//! /64 and can pick any address in it). Addresses in `limits.per_ip_exempt` (loopback by
//! default: local tools and load tests) are not limited.
//!
//! Both tables stay bounded by the traffic of the last moments: the concurrent count of a
//! key is removed when it drops to zero (the [`IpSlot`] a session holds gives its place back
//! exactly once, on drop), and the rate limiter (governor's keyed GCRA) forgets keys whose
//! bucket is full again, swept every second by [`run_cleanup`].

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::{Response, StatusCode};
use ipnet::IpNet;
use prometheus::{IntCounter, IntGauge};
use tokio_util::sync::CancellationToken;

use crate::client_ip::parse_nets;
use crate::config::Config;
use crate::http_server::{json_error, Body};

/// How long a client refused at the concurrent limit is told to wait: a place frees when
/// one of its own connections closes, which the node cannot predict.
const CONCURRENT_RETRY_S: u64 = 5;

/// How often forgotten rate entries are swept.
const CLEANUP_EVERY: Duration = Duration::from_secs(1);

/// The key of one client: an IPv4 address, or an IPv6 /64, as 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(u128);

impl IpKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => Self(u128::from(v6) & !((1u128 << 64) - 1)),
        }
    }
}

/// Why a client IP may not open another connection now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpRefusal {
    #[error("too many connections from your address (at most {max} at once)")]
    Concurrent { max: u32 },
    #[error("too many new connections from your address (at most {per_second} per second)")]
    Rate { per_second: u32, retry_after_s: u64 },
}

impl IpRefusal {
    /// The `reason` label of `herald_ip_refusals_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Concurrent { .. } => "concurrent",
            Self::Rate { .. } => "rate",
        }
    }

    /// The 429 the upgrade request gets.
    pub fn response(&self) -> Response<Body> {
        let retry = match self {
            Self::Concurrent { .. } => CONCURRENT_RETRY_S,
            Self::Rate { retry_after_s, .. } => *retry_after_s,
        };
        let mut r = json_error(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", &self.to_string());
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(retry));
        r
    }
}

/// See the module docs.
pub struct IpLimits {
    /// 0: no concurrent limit.
    max_concurrent: u32,
    /// Open connections per key; a key is present only while its count is above zero.
    active: DashMap<IpKey, u32>,
    per_second: u32,
    rate: Option<DefaultKeyedRateLimiter<IpKey>>,
    exempt: Vec<IpNet>,
    concurrent_refusals: IntCounter,
    rate_refusals: IntCounter,
    /// `herald_connections_rejected_total{reason="ip_limit"}`.
    rejected: IntCounter,
    entries: IntGauge,
}

/// One connection's place in its client IP's concurrent count; dropping it gives the place
/// back. A session holds it for its whole life (`session::Prepared`).
pub struct IpSlot {
    limits: Arc<IpLimits>,
    key: IpKey,
}

impl std::fmt::Debug for IpSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IpSlot").field(&self.key).finish()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.limits.release(self.key);
    }
}

impl IpLimits {
    /// The limits of a validated configuration.
    pub fn new(c: &Config, metrics: &herald_broker::BrokerMetrics) -> Arc<Self> {
        let per_second = c.limits.connects_per_ip_per_second;
        Arc::new(Self {
            max_concurrent: c.limits.connections_per_ip,
            active: DashMap::new(),
            per_second,
            rate: NonZeroU32::new(per_second).map(|n| RateLimiter::keyed(Quota::per_second(n))),
            exempt: parse_nets(&c.limits.per_ip_exempt).unwrap_or_default(),
            concurrent_refusals: metrics.ip_refusals.with_label_values(&["concurrent"]),
            rate_refusals: metrics.ip_refusals.with_label_values(&["rate"]),
            rejected: metrics.connections_rejected.with_label_values(&["ip_limit"]),
            entries: metrics.ip_limit_entries.clone(),
        })
    }

    /// Admits one more connection from `ip`: `Ok(Some(slot))` to hold for the connection's
    /// life, `Ok(None)` when no concurrent limit applies to it, or the refusal (counted).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, IpRefusal> {
        let ip = ip.to_canonical();
        if (self.max_concurrent == 0 && self.rate.is_none()) || self.exempt.iter().any(|n| n.contains(&ip)) {
            return Ok(None);
        }
        let key = IpKey::of(ip);
        if let Some(rate) = &self.rate {
            if let Err(not_until) = rate.check_key(&key) {
                let wait = not_until.wait_time_from(rate.clock().now());
                return Err(self.refused(IpRefusal::Rate {
                    per_second: self.per_second,
                    retry_after_s: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                }));
            }
        }
        if self.max_concurrent == 0 {
            return Ok(None);
        }
        let mut count = self.active.entry(key).or_insert(0);
        if *count >= self.max_concurrent {
            return Err(self.refused(IpRefusal::Concurrent {
                max: self.max_concurrent,
            }));
        }
        *count += 1;
        drop(count);
        Ok(Some(IpSlot {
            limits: self.clone(),
            key,
        }))
    }

    fn refused(&self, r: IpRefusal) -> IpRefusal {
        match r {
            IpRefusal::Concurrent { .. } => self.concurrent_refusals.inc(),
            IpRefusal::Rate { .. } => self.rate_refusals.inc(),
        }
        self.rejected.inc();
        r
    }

    fn release(&self, key: IpKey) {
        if let Entry::Occupied(mut e) = self.active.entry(key) {
            let count = e.get_mut();
            *count = count.saturating_sub(1);
            if *count == 0 {
                e.remove();
            }
        }
    }

    /// Open connections counted for `ip`'s key (tests, inspection).
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.active.get(&IpKey::of(ip)).map_or(0, |c| *c)
    }

    /// Keys held by both tables.
    pub fn entries(&self) -> usize {
        self.active.len() + self.rate.as_ref().map_or(0, |r| r.len())
    }

    /// Forgets rate entries whose bucket is full again and updates the entries gauge.
    pub fn sweep(&self) {
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
        self.entries.set(self.entries() as i64);
    }
}

/// Sweeps `limits` every second until `stop`.
pub async fn run_cleanup(limits: Arc<IpLimits>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CLEANUP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shrink = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        limits.sweep();
        shrink += 1;
        if shrink.is_multiple_of(60) {
            limits.active.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrent: u32, rate: u32) -> Arc<IpLimits> {
        let mut c = Config::default();
        c.limits.connections_per_ip = concurrent;
        c.limits.connects_per_ip_per_second = rate;
        c.limits.per_ip_exempt = vec!["192.0.2.0/24".into()];
        IpLimits::new(&c, &herald_broker::BrokerMetrics::new())
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a = IpKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert!(a == b && a != c);
        assert_eq!(
            IpKey::of("::ffff:198.51.100.1".parse().unwrap()),
            IpKey::of("198.51.100.1".parse().unwrap())
        );
    }

    #[test]
    fn concurrent_places_come_back_and_empty_keys_go() {
        let l = limits(2, 0);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert_eq!(l.admit(ip).err(), Some(IpRefusal::Concurrent { max: 2 }));
        assert!(l.admit("198.51.100.2".parse().unwrap()).unwrap().is_some());
        drop(a);
        let c = l.admit(ip).unwrap();
        assert_eq!(l.open_from(ip), 2);
        drop((c, _b));
        assert_eq!(
            (l.open_from(ip), l.active.len()),
            (0, 0),
            "no entry left for a key at zero"
        );
        for _ in 0..10 {
            assert!(l.admit("192.0.2.7".parse().unwrap()).unwrap().is_none(), "exempt");
        }
    }

    #[test]
    fn the_rate_refusal_says_when_to_retry() {
        let l = limits(0, 3);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.admit(ip).unwrap().is_none());
        }
        let r = l.admit(ip).unwrap_err();
        assert!(
            matches!(
                r,
                IpRefusal::Rate {
                    per_second: 3,
                    retry_after_s: 1
                }
            ),
            "{r:?}"
        );
        let resp = r.response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert!(l.entries() == 1);
    }
}
