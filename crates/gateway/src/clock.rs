//! A coarse clock for hot paths: a millisecond counter that one node task advances every
//! 20 ms. Connection readers use it to decide when to flush their local metric counters
//! without reading the system clock per frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

static COARSE_MS: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the ticker started (0 before).
#[inline]
pub fn coarse_ms() -> u64 {
    COARSE_MS.load(Ordering::Relaxed)
}

/// Advances the clock until `cancel` fires. Several nodes in one process may each run
/// one; the value only ever moves forward.
pub async fn run_ticker(cancel: CancellationToken) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                COARSE_MS.fetch_max(start.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            }
        }
    }
}
