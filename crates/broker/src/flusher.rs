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

/// The list of outboxes waiting for a direct send, shared by the fan-outs and the flushers.
#[derive(Default)]
pub struct FlushQueue {
    /// First listed, first sent: a connection listed long ago has gathered the most.
    list: Mutex<VecDeque<Arc<Outbox>>>,
    notify: Notify,
    /// Flushers running; changed only under the list's lock, so a fan-out that finds none
    /// there cannot leave outboxes behind a flusher that has just stopped.
    running: AtomicUsize,
}

impl FlushQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Outbox>>> {
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
        if self.running.load(Ordering::Relaxed) == 0 {
            drop(list);
            for ob in listed.drain(..) {
                ob.wake();
            }
            return;
        }
        list.extend(listed.drain(..));
        drop(list);
        self.notify.notify_one();
    }

    /// Outboxes listed now (for tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs one flusher until `stop` is cancelled. Spawn one per runtime worker.
    pub async fn run(self: Arc<Self>, metrics: Arc<BrokerMetrics>, stop: CancellationToken) {
        let _running = Running::start(&self);
        let mut tally = Tally::new(&metrics);
        let mut chunk: Vec<Arc<Outbox>> = Vec::new();
        loop {
            let more = {
                let mut list = self.lock();
                let n = list.len().min(CHUNK);
                chunk.extend(list.drain(..n));
                !list.is_empty()
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
    }
}

/// One running flusher. Dropped however the flusher ends (stopped, aborted with its
/// runtime, or a panic), the last one hands everything still listed to the writers.
struct Running<'a>(&'a FlushQueue);

impl<'a> Running<'a> {
    fn start(queue: &'a FlushQueue) -> Self {
        let list = queue.lock();
        queue.running.fetch_add(1, Ordering::Relaxed);
        drop(list);
        Self(queue)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let queue = self.0;
        let left = {
            let mut list = queue.lock();
            if queue.running.fetch_sub(1, Ordering::Relaxed) == 1 {
                std::mem::take(&mut *list)
            } else {
                VecDeque::new()
            }
        };
        for ob in left {
            ob.wake();
        }
        // Another flusher may still be parked with work listed after our last take.
        queue.notify.notify_one();
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
        // The latency first: a reader that sees the frame counters move finds the latency
        // observations of those frames already there.
        self.latency.flush();
        for k in 0..2 {
            if self.frames[k] > 0 {
                self.frames_total[k].inc_by(self.frames[k]);
                self.bytes_total[k].inc_by(self.bytes[k]);
            }
        }
        self.frames = [0; 2];
        self.bytes = [0; 2];
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use herald_protocol::server_msg::json_delivery;
    use herald_protocol::Payload;

    use super::*;
    use crate::outbox::OutboxLimits;
    use crate::registry::Subscriber;
    use crate::relay::MemoryRelay;
    use crate::testing::{read_exactly, socket_pair};
    use crate::{Broker, Source};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fan_out_reaches_idle_subscribers_with_no_writer_running() {
        let metrics = Arc::new(BrokerMetrics::new());
        let broker = Broker::new("n1", Arc::new(MemoryRelay::standalone("n1")), metrics.clone());
        let stop = CancellationToken::new();
        let flusher = tokio::spawn(broker.flusher(stop.clone()));
        while !broker.flush_queue().is_running() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        let mut peers = Vec::new();
        let mut outboxes = Vec::new();
        for id in 0..3 {
            let ob = Arc::new(Outbox::new(OutboxLimits::default(), CancellationToken::new()));
            let (sock, peer) = socket_pair();
            ob.attach(sock);
            let sub = Subscriber {
                conn: id,
                outbox: ob.clone(),
                encoding: crate::EncodingId::JSON,
                echo: true,
                gate: None,
            };
            broker.subscribe("t", sub);
            peers.push(peer);
            outboxes.push(ob);
        }
        let expected = json_delivery("t", &Payload::json(Bytes::from_static(b"42")));
        for _ in 0..2 {
            broker.publish("t", Payload::json(Bytes::from_static(b"42")), None, Source::Http);
        }
        // No writer task exists here: only the flusher can have sent these.
        let whole = [&expected[..], &expected[..]].concat();
        for peer in &mut peers {
            let got = tokio::task::block_in_place(|| read_exactly(peer, whole.len()));
            assert_eq!(got, whole);
        }
        for ob in &outboxes {
            assert_eq!(ob.queued(), (0, 0));
        }
        // Counted once per chunk, right after its sends.
        let sent = || metrics.frames_out.with_label_values(&["text"]).get();
        for _ in 0..5000 {
            if sent() >= 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(sent(), 6);
        assert_eq!(metrics.frame_write_latency.get_sample_count(), 6);

        // Without a flusher, frames wait for the writers (none here) and nothing is listed.
        stop.cancel();
        flusher.await.unwrap();
        assert!(!broker.flush_queue().is_running());
        broker.publish("t", Payload::json(Bytes::from_static(b"42")), None, Source::Http);
        assert!(broker.flush_queue().is_empty());
        for ob in &outboxes {
            assert_eq!(ob.queued(), (1, expected.len()));
        }
    }
}
