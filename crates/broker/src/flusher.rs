//! The flusher: direct sends to connections whose writer is idle.
//!
//! A fan-out that finds a subscriber's writer idle queues the frame without waking the
//! writer task and lists the outbox here instead (one list entry per connection at most:
//! the outbox remembers it is listed). Flusher tasks (one per runtime worker, so sends
//! spread over cores like writer tasks do) take the list in chunks and write each listed
//! outbox's queue to its socket at once (`Outbox::flush_now`). Whatever a socket does not
//! take goes back to that connection's writer.
//!
//! Why: at a low message rate every delivery would otherwise wake one writer task, poll
//! it, arm its timer and park it again, which costs more than the send itself. Under a
//! flood the list fills with each connection once while publishers keep queueing behind it,
//! so a direct send carries a whole batch, as the writer's would. A flusher yields between
//! chunks, which both keeps other tasks served and lets a round's publishes gather.
//!
//! When no flusher runs (a broker outside the gateway, or after shutdown) listed outboxes
//! are handed to their writers, so nothing waits here unseen.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::local::LocalHistogram;
use prometheus::IntCounter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::{BrokerMetrics, FRAME_KINDS};
use crate::outbox::Outbox;

/// Outboxes one flusher takes before yielding.
const CHUNK: usize = 128;

#[derive(Default)]
struct List {
    /// First listed, first sent: a connection listed long ago has gathered the most.
    outboxes: VecDeque<Arc<Outbox>>,
    /// No flusher runs: hand everything to the writers.
    stopped: bool,
}

/// The list of outboxes waiting for a direct send, shared by the fan-outs and the flushers.
#[derive(Default)]
pub struct FlushQueue {
    list: Mutex<List>,
    notify: Notify,
    running: AtomicUsize,
}

impl FlushQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, List> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while at least one flusher runs (fan-outs list outboxes only then).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed) > 0
    }

    /// Moves `listed` onto the list (leaving it empty), or wakes their writers when no
    /// flusher runs.
    pub fn enqueue(&self, listed: &mut Vec<Arc<Outbox>>) {
        if listed.is_empty() {
            return;
        }
        let mut list = self.lock();
        if list.stopped || self.running.load(Ordering::Relaxed) == 0 {
            drop(list);
            for ob in listed.drain(..) {
                ob.wake();
            }
            return;
        }
        list.outboxes.extend(listed.drain(..));
        drop(list);
        self.notify.notify_one();
    }

    /// Outboxes listed now (for tests).
    pub fn len(&self) -> usize {
        self.lock().outboxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs one flusher until `stop` is cancelled. Spawn one per runtime worker.
    pub async fn run(self: Arc<Self>, metrics: Arc<BrokerMetrics>, stop: CancellationToken) {
        {
            let mut list = self.lock();
            list.stopped = false;
            self.running.fetch_add(1, Ordering::Relaxed);
        }
        let mut tally = Tally::new(&metrics);
        let mut chunk: Vec<Arc<Outbox>> = Vec::new();
        loop {
            let more = {
                let mut list = self.lock();
                let n = list.outboxes.len().min(CHUNK);
                chunk.extend(list.outboxes.drain(..n));
                !list.outboxes.is_empty()
            };
            if chunk.is_empty() {
                tokio::select! {
                    _ = self.notify.notified() => continue,
                    _ = stop.cancelled() => break,
                }
            }
            if more {
                // Another flusher (on another worker) can take the next chunk meanwhile.
                self.notify.notify_one();
            }
            for ob in chunk.drain(..) {
                ob.flush_now(|frame, waited| tally.add(frame, waited));
            }
            tally.flush();
            tokio::task::yield_now().await;
        }
        let left = {
            let mut list = self.lock();
            if self.running.fetch_sub(1, Ordering::Relaxed) == 1 {
                list.stopped = true;
                std::mem::take(&mut list.outboxes)
            } else {
                VecDeque::new()
            }
        };
        for ob in left {
            ob.wake();
        }
        // Another flusher may still be parked with work listed after our last take.
        self.notify.notify_one();
    }
}

/// What direct sends wrote, added to the shared metrics once per chunk.
struct Tally {
    frames: [u64; 2],
    bytes: [u64; 2],
    frames_total: [IntCounter; 2],
    bytes_total: [IntCounter; 2],
    latency: LocalHistogram,
}

impl Tally {
    fn new(m: &BrokerMetrics) -> Self {
        // Data frames only: text (JSON and raw text) and binary (raw binary).
        Self {
            frames: [0; 2],
            bytes: [0; 2],
            frames_total: [0, 1].map(|i| m.frames_out.with_label_values(&[FRAME_KINDS[i]])),
            bytes_total: [0, 1].map(|i| m.bytes_out.with_label_values(&[FRAME_KINDS[i]])),
            latency: m.frame_write_latency.local(),
        }
    }

    fn add(&mut self, frame: &[u8], waited: Duration) {
        let k = usize::from(frame.first().is_some_and(|b| b & 0x0f != 0x1));
        self.frames[k] += 1;
        self.bytes[k] += frame.len() as u64;
        self.latency.observe(waited.as_secs_f64());
    }

    fn flush(&mut self) {
        for k in 0..2 {
            if self.frames[k] > 0 {
                self.frames_total[k].inc_by(self.frames[k]);
                self.bytes_total[k].inc_by(self.bytes[k]);
            }
        }
        self.frames = [0; 2];
        self.bytes = [0; 2];
        self.latency.flush();
    }
}
