//! Reconnect delays: exponential growth with "full jitter" (each delay is uniform in
//! `0..=bound`, the bound doubling from `min` up to `max`).
//!
//! Full jitter spreads the reconnects of a whole fleet of nodes over the window instead of
//! having them hit a freshly restarted Redis in lockstep. This file owns only the arithmetic;
//! the supervisor decides when to sleep and when to [`Backoff::reset`].

use std::time::Duration;

use rand::Rng;

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// Failed attempts since the last reset; the bound is `min * 2^attempt`, capped.
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The current upper bound of the delay, before jitter.
    pub(crate) fn bound(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay: uniform in `0..=bound`; then the bound grows.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let bound = self.bound();
        self.attempt = self.attempt.saturating_add(1);
        let micros = bound.as_micros().min(u64::MAX as u128) as u64;
        Duration::from_micros(rand::rng().random_range(0..=micros))
    }

    /// After a connection that lived long enough: start again from `min`.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_below_the_bound() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut bounds = Vec::new();
        for _ in 0..10 {
            let bound = b.bound();
            let d = b.next_delay();
            assert!(d <= bound, "{d:?} > {bound:?}");
            bounds.push(bound.as_millis());
        }
        assert_eq!(bounds, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.bound(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_actually_varies() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 10, "full jitter should spread delays: {delays:?}");
    }

    #[test]
    fn survives_many_attempts_and_odd_bounds() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(1));
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_millis(10));
        }
        assert_eq!(b.bound(), Duration::from_millis(10), "max below min is raised to min");
    }
}
