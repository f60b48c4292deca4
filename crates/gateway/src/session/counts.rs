//! Frame and byte counts by frame kind, kept per connection task and added to the shared
//! counters at most once per coarse-clock tick (20 ms) or every 1024 frames, so neither the
//! reader nor the writer touches a shared atomic per frame. The labelled counters are
//! resolved once per connection (a label lookup is a hash-map lookup under a lock).

use herald_broker::metrics::FRAME_KINDS;
use prometheus::{IntCounter, IntCounterVec};

use crate::clock::coarse_ms;

/// Index into `FRAME_KINDS` of a frame with opcode `op` (continuations count as binary).
pub fn kind_of(op: u8) -> usize {
    match op & 0x0f {
        0x1 => 0,
        0x0 | 0x2 => 1,
        0x9 => 2,
        0xA => 3,
        _ => 4,
    }
}

/// See the module docs.
pub struct FrameCounts {
    frames: [u64; 5],
    bytes: [u64; 5],
    pending: u32,
    last_flush_ms: u64,
    frames_total: [IntCounter; 5],
    bytes_total: [IntCounter; 5],
}

impl FrameCounts {
    /// Counts into `frames` and `bytes` (the `_in` or the `_out` pair).
    pub fn new(frames: &IntCounterVec, bytes: &IntCounterVec) -> Self {
        Self {
            frames: [0; 5],
            bytes: [0; 5],
            pending: 0,
            last_flush_ms: 0,
            frames_total: std::array::from_fn(|i| frames.with_label_values(&[FRAME_KINDS[i]])),
            bytes_total: std::array::from_fn(|i| bytes.with_label_values(&[FRAME_KINDS[i]])),
        }
    }

    pub fn add(&mut self, kind: usize, len: usize) {
        self.frames[kind] += 1;
        self.bytes[kind] += len as u64;
        self.pending += 1;
    }

    /// True when something was counted but not yet flushed.
    pub fn is_pending(&self) -> bool {
        self.pending > 0
    }

    /// True when [`FrameCounts::maybe_flush`] would flush now.
    pub fn flush_due(&self) -> bool {
        self.pending >= 1024 || coarse_ms() != self.last_flush_ms
    }

    /// Flushes if the coarse clock moved since the last flush, or 1024 frames wait.
    /// Returns whether it flushed.
    pub fn maybe_flush(&mut self) -> bool {
        let now = coarse_ms();
        if self.pending >= 1024 || now != self.last_flush_ms {
            self.flush();
            self.last_flush_ms = now;
            return true;
        }
        false
    }

    pub fn flush(&mut self) {
        if self.pending == 0 {
            return;
        }
        for i in 0..5 {
            if self.frames[i] > 0 {
                self.frames_total[i].inc_by(self.frames[i]);
                self.bytes_total[i].inc_by(self.bytes[i]);
            }
        }
        self.frames = [0; 5];
        self.bytes = [0; 5];
        self.pending = 0;
    }
}
