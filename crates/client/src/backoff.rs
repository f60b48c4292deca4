//! The delays between a [`ResumingClient`](crate::ResumingClient)'s reconnect attempts:
//! exponential, bounded, with full jitter (see [`ReconnectOptions`]).
//!
//! Pure arithmetic plus one random draw; the waiting itself happens in the resume task so
//! it can be cut short by a close.

use std::time::Duration;

use crate::options::ReconnectOptions;

/// The attempts of one reconnect episode.
#[derive(Debug)]
pub(crate) struct Backoff {
    opts: ReconnectOptions,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(opts: ReconnectOptions) -> Self {
        Self { opts, attempt: 0 }
    }

    /// The delay before the next attempt, or `None` once `max_attempts` are used up.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        if self.opts.max_attempts.is_some_and(|max| self.attempt >= max) {
            return None;
        }
        let ceiling = ceiling(&self.opts, self.attempt);
        self.attempt += 1;
        Some(full_jitter(ceiling))
    }

    /// Attempts made so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// `min(max_backoff, initial_backoff * 2^attempt)`, without overflow.
pub(crate) fn ceiling(opts: &ReconnectOptions, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    opts.initial_backoff
        .checked_mul(factor)
        .unwrap_or(opts.max_backoff)
        .min(opts.max_backoff)
}

/// A uniformly random delay in `[0, ceiling]`.
fn full_jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(initial_ms: u64, max_ms: u64, max_attempts: Option<u32>) -> ReconnectOptions {
        ReconnectOptions {
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
            max_attempts,
        }
    }

    #[test]
    fn ceilings_double_up_to_the_maximum() {
        let o = opts(100, 1_000, None);
        let ms: Vec<u128> = (0..6).map(|n| ceiling(&o, n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(ceiling(&o, u32::MAX), Duration::from_secs(1));
        let huge = opts(u64::MAX / 2, u64::MAX, None);
        assert_eq!(ceiling(&huge, 40), Duration::from_millis(u64::MAX));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling_and_attempts_are_bounded() {
        let mut b = Backoff::new(opts(10, 40, Some(50)));
        let delays: Vec<Duration> = std::iter::from_fn(|| b.next_delay()).collect();
        assert_eq!((delays.len(), b.attempts()), (50, 50));
        for (n, d) in delays.iter().enumerate() {
            assert!(*d <= ceiling(&b.opts, n as u32), "attempt {n}: {d:?}");
        }
        // Jitter: 46 draws in [0, 40 ms] are not all equal.
        assert!(delays[4..].iter().any(|d| *d != delays[4]));
    }
}
