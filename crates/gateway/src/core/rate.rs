//! Per-connection publish rate limits: two token buckets, one counting messages and one
//! counting payload bytes, checked by the core once per publish from a WebSocket connection
//! (JSON or raw; HTTP publishes from the admin API are not limited here).
//!
//! Each bucket is a GCRA ("generic cell rate algorithm", the token bucket written as one
//! timestamp): it keeps the *theoretical arrival time* `tat` at which the bucket would be
//! full again. A publish costing `c` is admitted when `max(tat, now) + c·T - now <= burst·T`
//! (`T` the time one unit of rate buys), and then moves `tat` on by `c·T`. That is the same
//! as a bucket of `burst` tokens refilled at `rate` per second, in one `u64` per bucket.
//!
//! Why not `governor`: its limiter is built to be shared between threads (an atomic
//! compare-and-swap loop per check) and every limiter instance carries its own quota and
//! clock, so two of them per connection would cost several times this state. The session
//! owns its connection, so plain fields suffice; the parameters ([`RateLimits`]) live once
//! in the core. The state ([`RateState`], 40 bytes) is allocated at a connection's first
//! publish, so subscribers that never publish pay only the 8-byte `None` in their `Conn`,
//! and nothing at all is allocated or checked when both limits are 0.
//!
//! Time is the node's coarse clock (`clock::coarse_ms`, 20 ms steps; no system call per
//! publish): within one step the buckets do not refill, across steps they refill by the
//! elapsed time, so the long-run rate is exact and the burst bounds any step.
//!
//! "Over the limit" for the close: a connection is over while refusals keep coming; a
//! stretch of [`QUIET_MS`] without a refusal ends it. A connection over for
//! `publish_overlimit_close_ms` is closed by its session with 1008.

use crate::clock::coarse_ms;
use crate::config::LimitsConfig;

/// A refusal-free stretch this long ends an over-limit period.
pub const QUIET_MS: u64 = 1000;

const NS_PER_S: u128 = 1_000_000_000;

/// One bucket's parameters: a rate per second and a burst (both > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    rate: u64,
    burst: u64,
}

impl Bucket {
    fn new(rate: u64, burst: u64) -> Option<Self> {
        (rate > 0).then_some(Self {
            rate,
            burst: burst.max(1),
        })
    }

    /// Nanoseconds that `units` of this bucket's rate take.
    fn span(&self, units: u64) -> u64 {
        u64::try_from(u128::from(units) * NS_PER_S / u128::from(self.rate)).unwrap_or(u64::MAX)
    }

    /// The new `tat` if a publish costing `cost` is admitted at `now` (ns), else `None`.
    fn admit(&self, tat: u64, now: u64, cost: u64) -> Option<u64> {
        let next = tat.max(now).saturating_add(self.span(cost));
        (next - now <= self.span(self.burst)).then_some(next)
    }
}

/// The configured limits (see `limits.publish_*` in docs/configuration.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// Close a connection over the limit this long (ms); 0: never.
    close_after_ms: u64,
}

impl RateLimits {
    pub fn from_config(l: &LimitsConfig) -> Self {
        Self {
            messages: Bucket::new(u64::from(l.publish_per_second), u64::from(l.publish_burst)),
            bytes: Bucket::new(l.publish_bytes_per_second, l.publish_bytes_burst),
            close_after_ms: l.publish_overlimit_close_ms,
        }
    }

    /// True when neither limit is set: publishes are not checked at all.
    pub fn is_off(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }

    /// Checks (and on success takes) one publish of `bytes` payload bytes against `state`
    /// (allocated on first use).
    pub fn check(&self, state: &mut Option<Box<RateState>>, bytes: usize) -> Verdict {
        if self.is_off() {
            return Verdict::Admitted;
        }
        let ms = coarse_ms();
        let s = state.get_or_insert_with(|| Box::new(RateState::new(ms)));
        self.check_at(s, bytes as u64, ms)
    }

    fn check_at(&self, s: &mut RateState, bytes: u64, ms: u64) -> Verdict {
        // Relative to the state's own epoch: keeps the nanosecond values far from overflow.
        let now = ms.saturating_sub(s.epoch_ms).saturating_mul(1_000_000);
        let msg = match self.messages {
            Some(b) => b.admit(s.msg_tat, now, 1),
            None => Some(s.msg_tat),
        };
        let byte = match self.bytes {
            Some(b) => b.admit(s.byte_tat, now, bytes),
            None => Some(s.byte_tat),
        };
        if let (Some(m), Some(b)) = (msg, byte) {
            s.msg_tat = m;
            s.byte_tat = b;
            return Verdict::Admitted;
        }
        let rel = ms.saturating_sub(s.epoch_ms);
        // `over_since` is 0 while not over (the state's epoch is before any refusal).
        if s.over_since == 0 || rel.saturating_sub(s.last_refused) > QUIET_MS {
            s.over_since = rel.max(1);
        }
        s.last_refused = rel;
        let over_ms = rel - s.over_since.min(rel);
        if self.close_after_ms > 0 && over_ms >= self.close_after_ms {
            Verdict::Close { over_ms }
        } else {
            Verdict::Limited
        }
    }
}

/// One connection's buckets and over-limit tracking. Times are relative to `epoch_ms`
/// (the coarse clock at the first publish): buckets in ns, the rest in ms.
#[derive(Debug)]
pub struct RateState {
    epoch_ms: u64,
    msg_tat: u64,
    byte_tat: u64,
    /// Start of the current over-limit period, 0 when none (relative ms, at least 1).
    over_since: u64,
    last_refused: u64,
}

impl RateState {
    fn new(epoch_ms: u64) -> Self {
        Self {
            epoch_ms,
            msg_tat: 0,
            byte_tat: 0,
            over_since: 0,
            last_refused: 0,
        }
    }
}

/// What the limits say about one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// Not published; the connection stays.
    Limited,
    /// Not published, and the connection has been over its limit for `over_ms`: close it.
    Close {
        over_ms: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_s: u32, burst: u32, bytes_s: u64, bytes_burst: u64, close_ms: u64) -> RateLimits {
        RateLimits::from_config(&LimitsConfig {
            publish_per_second: per_s,
            publish_burst: burst,
            publish_bytes_per_second: bytes_s,
            publish_bytes_burst: bytes_burst,
            publish_overlimit_close_ms: close_ms,
            ..Default::default()
        })
    }

    #[test]
    fn zero_limits_check_nothing_and_allocate_nothing() {
        let l = limits(0, 10, 0, 10, 1000);
        assert!(l.is_off());
        let mut state = None;
        for _ in 0..10_000 {
            assert_eq!(l.check(&mut state, 1 << 20), Verdict::Admitted);
        }
        assert!(state.is_none());
    }

    #[test]
    fn the_message_bucket_allows_the_burst_then_the_rate() {
        let l = limits(100, 10, 0, 0, 0);
        let mut s = RateState::new(5_000);
        let at = |s: &mut RateState, ms: u64| l.check_at(s, 1, 5_000 + ms);
        for _ in 0..10 {
            assert_eq!(at(&mut s, 0), Verdict::Admitted);
        }
        assert_eq!(at(&mut s, 0), Verdict::Limited, "burst spent");
        // 100/s: one token per 10 ms.
        assert_eq!(at(&mut s, 9), Verdict::Limited);
        assert_eq!(at(&mut s, 10), Verdict::Admitted);
        assert_eq!(at(&mut s, 10), Verdict::Limited);
        // A long pause refills the burst, not more.
        let n = (0..50).filter(|_| at(&mut s, 10_000) == Verdict::Admitted).count();
        assert_eq!(n, 10);
        // Over a second at full pressure: the rate, plus nothing.
        let mut admitted = 0;
        for ms in (10_020..=11_000).step_by(20) {
            admitted += (0..100).filter(|_| at(&mut s, ms) == Verdict::Admitted).count();
        }
        assert!((99..=101).contains(&admitted), "{admitted}");
    }

    #[test]
    fn the_byte_bucket_counts_payload_bytes_and_both_must_pass() {
        let l = limits(1000, 1000, 1000, 4000, 0);
        let mut s = RateState::new(0);
        assert_eq!(l.check_at(&mut s, 3000, 0), Verdict::Admitted);
        assert_eq!(l.check_at(&mut s, 1001, 0), Verdict::Limited);
        // A refused publish takes nothing from either bucket.
        assert_eq!(l.check_at(&mut s, 1000, 0), Verdict::Admitted);
        assert_eq!(l.check_at(&mut s, 1, 0), Verdict::Limited);
        assert_eq!(
            l.check_at(&mut s, 0, 1000),
            Verdict::Admitted,
            "a second buys 1000 bytes"
        );
        assert_eq!(l.check_at(&mut s, 1000, 1000), Verdict::Admitted);
        assert_eq!(l.check_at(&mut s, 1, 1000), Verdict::Limited);
    }

    #[test]
    fn a_connection_over_its_limit_long_enough_is_closed_and_a_quiet_stretch_forgives() {
        let l = limits(10, 1, 0, 0, 3000);
        let mut s = RateState::new(100);
        assert_eq!(l.check_at(&mut s, 1, 100), Verdict::Admitted);
        // Flooding at 1000/s: a tenth of a percent get through, the rest is over.
        let mut closed_at = None;
        for ms in 101..10_000 {
            match l.check_at(&mut s, 1, ms) {
                Verdict::Close { over_ms } => {
                    closed_at = Some((ms, over_ms));
                    break;
                }
                Verdict::Admitted | Verdict::Limited => {}
            }
        }
        let (ms, over) = closed_at.expect("closed");
        assert_eq!(over, 3000);
        assert_eq!(ms, 3101);
        // Another connection pauses for more than QUIET_MS every 2.5 s: never closed.
        let mut s = RateState::new(0);
        let mut t = 0;
        while t < 20_000 {
            for ms in t..t + 1400 {
                assert!(!matches!(l.check_at(&mut s, 1, ms), Verdict::Close { .. }));
            }
            t += 1400 + QUIET_MS + 100;
        }
    }
}
