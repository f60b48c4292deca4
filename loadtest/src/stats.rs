//! Counting what a run carried, cheaply enough not to become the bottleneck.
//!
//! - [`Clock`]: one monotonic epoch per run; payload timestamps are µs since it.
//! - [`Shared`]: counters every task adds to once per *batch* (not per message), in
//!   cache-line-padded stripes so subscribers on different threads do not contend, plus
//!   striped HDR latency histograms (1 µs to 1 h, 3 significant digits) locked once per
//!   read batch.
//! - [`SeqTracker`]: per subscriber, per (topic, publisher): the next expected sequence and a
//!   64-message window of what arrived below it, telling duplicates from late arrivals in
//!   16 bytes per pair and no allocation per message.
//!
//! It does not decide what the numbers mean; `report.rs` does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Number of stripes; more than the threads a generator usually runs.
const STRIPES: usize = 16;

/// The run's time base.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self { epoch: Instant::now() }
    }
    /// µs since the epoch.
    #[inline]
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
    /// µs since the epoch of an instant.
    #[inline]
    pub fn us_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A latency histogram in µs, 1 µs to 1 h.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[repr(align(128))]
struct Stripe {
    delivered: AtomicU64,
    /// Messages a subscriber saw skipped (a later one of the stream arrived first): lost,
    /// unless they turn up late.
    skipped: AtomicU64,
    /// Skipped messages that did turn up.
    late: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Counters and histograms shared by every task of a run.
pub struct Shared {
    stripes: Box<[Stripe]>,
    /// Messages published (acknowledged by the write or by HTTP 2xx).
    pub published: AtomicU64,
    /// Deliveries the published messages owe: the sum of each one's topic's subscribers.
    pub expected: AtomicU64,
    /// Error frames or non-2xx answers to publishers.
    pub publish_errors: AtomicU64,
    /// Connections established so far (for the live line).
    pub connected: AtomicU64,
    /// Outstanding deliveries the publishers' window stopped waiting for (see
    /// `publisher::wait_for_window`).
    pub written_off: AtomicU64,
}

impl Shared {
    pub fn new() -> Self {
        let stripes = (0..STRIPES)
            .map(|_| Stripe {
                delivered: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                late: AtomicU64::new(0),
                latency: Mutex::new(histogram()),
            })
            .collect();
        Self {
            stripes,
            published: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            written_off: AtomicU64::new(0),
        }
    }

    /// Adds one read batch of a subscriber: `n` deliveries with these latencies (µs).
    #[inline]
    pub fn record_batch(&self, who: usize, n: u64, latencies: &[u64]) {
        let s = &self.stripes[who % STRIPES];
        s.delivered.fetch_add(n, Ordering::Relaxed);
        if !latencies.is_empty() {
            let mut h = s.latency.lock().unwrap_or_else(|e| e.into_inner());
            for &l in latencies {
                h.saturating_record(l.max(1));
            }
        }
    }

    /// Adds what a subscriber's read batch revealed about missing messages.
    #[inline]
    pub fn record_gaps(&self, who: usize, skipped: u64, late: u64) {
        let s = &self.stripes[who % STRIPES];
        if skipped > 0 {
            s.skipped.fetch_add(skipped, Ordering::Relaxed);
        }
        if late > 0 {
            s.late.fetch_add(late, Ordering::Relaxed);
        }
    }

    /// Deliveries known to be missing so far (skipped and not turned up): the publishers'
    /// window does not wait for them.
    pub fn missing(&self) -> u64 {
        let (skipped, late) = self.stripes.iter().fold((0, 0), |(s, l), x| {
            (
                s + x.skipped.load(Ordering::Relaxed),
                l + x.late.load(Ordering::Relaxed),
            )
        });
        skipped.saturating_sub(late)
    }

    /// Deliveries received so far (including duplicates).
    pub fn delivered(&self) -> u64 {
        self.stripes.iter().map(|s| s.delivered.load(Ordering::Relaxed)).sum()
    }

    /// All latencies recorded so far, merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for s in self.stripes.iter() {
            let h = s.latency.lock().unwrap_or_else(|e| e.into_inner());
            all.add(&*h).expect("same bounds");
        }
        all
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a histogram, in µs, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            samples: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

/// What one arriving message was, relative to its (topic, publisher) stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one, or a later one after `skipped` missing ones (lost, or late).
    InOrder { skipped: u64 },
    /// One that was skipped earlier and arrived late; or one so late (more than 64 behind)
    /// that the window no longer tells.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// Sequence state of one subscriber for `slots × publishers` streams.
pub struct SeqTracker {
    publishers: usize,
    /// Per stream: next expected sequence, and bit i = "next-1-i has arrived".
    state: Vec<(u64, u64)>,
}

impl SeqTracker {
    pub fn new(slots: usize, publishers: usize) -> Self {
        Self {
            publishers,
            state: vec![(0, 0); slots * publishers],
        }
    }

    /// Classifies message `seq` of stream (`slot`, `publisher`); the caller checks bounds.
    #[inline]
    pub fn arrive(&mut self, slot: usize, publisher: usize, seq: u64) -> Arrival {
        let (next, window) = &mut self.state[slot * self.publishers + publisher];
        if seq >= *next {
            let shift = seq - *next + 1;
            *window = if shift >= 64 { 0 } else { *window << shift };
            *window |= 1;
            *next = seq + 1;
            Arrival::InOrder { skipped: shift - 1 }
        } else {
            let back = *next - 1 - seq;
            if back >= 64 {
                return Arrival::OutOfOrder;
            }
            let bit = 1u64 << back;
            if *window & bit != 0 {
                Arrival::Duplicate
            } else {
                *window |= bit;
                Arrival::OutOfOrder
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Arrival::*;

    #[test]
    fn tells_duplicates_from_late_arrivals() {
        let mut t = SeqTracker::new(2, 3);
        const IN: Arrival = InOrder { skipped: 0 };
        assert_eq!(t.arrive(0, 1, 0), IN);
        assert_eq!(t.arrive(0, 1, 1), IN);
        assert_eq!(t.arrive(0, 1, 1), Duplicate);
        assert_eq!(t.arrive(0, 1, 4), InOrder { skipped: 2 });
        assert_eq!(t.arrive(0, 1, 2), OutOfOrder);
        assert_eq!(t.arrive(0, 1, 2), Duplicate);
        assert_eq!(t.arrive(0, 1, 0), Duplicate);
        assert_eq!(t.arrive(1, 1, 0), IN); // another stream is independent
        assert_eq!(t.arrive(0, 2, 0), IN);
        assert_eq!(t.arrive(0, 1, 200), InOrder { skipped: 195 });
        assert_eq!(t.arrive(0, 1, 3), OutOfOrder); // beyond the window
        assert_eq!(t.arrive(0, 1, 199), OutOfOrder);
        assert_eq!(t.arrive(0, 1, 199), Duplicate);
    }

    #[test]
    fn striped_counters_and_histograms_merge() {
        let s = Shared::new();
        s.record_batch(0, 2, &[100, 200]);
        s.record_batch(17, 1, &[0]);
        assert_eq!(s.delivered(), 3);
        let p = Percentiles::of(&s.latency()).unwrap();
        assert_eq!(p.samples, 3);
        assert_eq!(p.p50, 100);
        assert!(p.max >= 200 && p.max < 201);
        assert!(Percentiles::of(&histogram()).is_none());
    }
}
