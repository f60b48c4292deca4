//! The session's writer task: the only code that writes to the socket.
//!
//! It takes everything queued in the outbox at once and writes it as one batch: control
//! frames first, then data frames, gathered into vectored writes of up to
//! [`MAX_IOV`] frames each, then a single flush. Frames are pre-built (header included) and
//! shared with other subscribers, so the batch is written without copying or encoding.
//!
//! Between batches it keeps the heartbeat: every `ping_interval` in which the reader saw no
//! frame, it pings; after `idle_timeout` of silence it closes with 1001. A batch that cannot
//! be written within `write_timeout` means the peer stalled: the connection is dropped.
//! When the slow-consumer policy disconnects the client while a write is in flight, the
//! write is abandoned (the peer is not reading, a close frame could not reach it anyway).
//! After writing a close frame the writer stops: it never sends a second one.

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::{BrokerMetrics, Outbox, TakenBatch};
use herald_protocol::ws_frame::{close_frame, ping_frame};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::sync::CancellationToken;

use super::Exit;
use crate::config::Config;

/// Frames gathered into one `writev` call.
const MAX_IOV: usize = 128;

/// The writer's share of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl WriterConfig {
    pub fn from_config(c: &Config) -> Self {
        Self {
            ping_interval: c.ping_interval(),
            idle_timeout: c.idle_timeout(),
            write_timeout: c.write_timeout(),
        }
    }
}

/// Sent-frame counts for one batch, by the kind index of `FRAME_KINDS`.
#[derive(Default)]
struct SentCounts {
    frames: [u64; 5],
    bytes: [u64; 5],
}

impl SentCounts {
    fn add(&mut self, frame: &[u8]) {
        let i = match frame.first().map(|b| b & 0x0f) {
            Some(0x1) => 0,
            Some(0x2) => 1,
            Some(0x9) => 2,
            Some(0xA) => 3,
            _ => 4,
        };
        self.frames[i] += 1;
        self.bytes[i] += frame.len() as u64;
    }

    fn flush(&mut self, m: &BrokerMetrics) {
        for (i, kind) in herald_broker::metrics::FRAME_KINDS.iter().enumerate() {
            if self.frames[i] > 0 {
                m.frames_out.with_label_values(&[kind]).inc_by(self.frames[i]);
                m.bytes_out.with_label_values(&[kind]).inc_by(self.bytes[i]);
            }
        }
        *self = SentCounts::default();
    }
}

/// The `i`-th frame of a batch: control frames first, then data frames.
fn nth_frame(batch: &TakenBatch, i: usize) -> &[u8] {
    match batch.control.get(i) {
        Some(f) => f,
        None => &batch.frames[i - batch.control.len()].0,
    }
}

/// Writes the whole batch with as few `writev` calls as the kernel allows, then flushes.
async fn write_batch(w: &mut OwnedWriteHalf, batch: &TakenBatch) -> std::io::Result<()> {
    let total = batch.control.len() + batch.frames.len();
    let mut next = 0;
    while next < total {
        let n = (total - next).min(MAX_IOV);
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        for (k, slot) in slices.iter_mut().take(n).enumerate() {
            *slot = IoSlice::new(nth_frame(batch, next + k));
        }
        next += n;
        let mut bufs = &mut slices[..n];
        while !bufs.is_empty() {
            let written = w.write_vectored(bufs).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, written);
        }
    }
    w.flush().await
}

/// Runs until the connection must end; returns why.
pub async fn run(
    mut w: OwnedWriteHalf,
    outbox: Arc<Outbox>,
    urgent: CancellationToken,
    cfg: WriterConfig,
    seen: Arc<AtomicBool>,
    metrics: Arc<BrokerMetrics>,
) -> Exit {
    let mut batch = TakenBatch::default();
    let mut sent = SentCounts::default();
    let latency = metrics.frame_write_latency.local();
    let mut next_beat = Instant::now() + cfg.ping_interval;
    let mut silent_for = Duration::ZERO;

    loop {
        outbox.take_batch(&mut batch);
        if batch.control.is_empty() && batch.frames.is_empty() && batch.close.is_none() {
            tokio::select! {
                _ = outbox.wait() => {}
                _ = tokio::time::sleep_until(next_beat.into()) => {}
            }
        } else {
            let written = tokio::select! {
                biased;
                _ = urgent.cancelled() => return Exit::silent("slow_consumer"),
                r = tokio::time::timeout(cfg.write_timeout, write_batch(&mut w, &batch)) => r,
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "write failed");
                    return Exit::silent("client_gone");
                }
                Err(_) => return Exit::silent("slow_consumer"),
            }
            let now = Instant::now();
            for f in &batch.control {
                sent.add(f);
            }
            for (f, queued) in &batch.frames {
                sent.add(f);
                latency.observe(now.saturating_duration_since(*queued).as_secs_f64());
            }
            sent.flush(&metrics);
            latency.flush();
            if let Some(close) = batch.close.take() {
                let frame = close_frame(close.code, &close.reason);
                sent.add(&frame);
                sent.flush(&metrics);
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    w.write_all(&frame).await?;
                    w.flush().await?;
                    w.shutdown().await
                })
                .await;
                // Reached only when the close came from outside the session (slow-consumer
                // policy, admin API); a close the session asked for is labelled there.
                let label = if close.code == 1013 { "slow_consumer" } else { "kicked" };
                return Exit::new(close.code, close.reason, label);
            }
            batch.clear();
        }

        let now = Instant::now();
        if now >= next_beat {
            next_beat = now + cfg.ping_interval;
            if seen.swap(false, Ordering::Relaxed) {
                silent_for = Duration::ZERO;
            } else {
                silent_for += cfg.ping_interval;
            }
            if silent_for >= cfg.idle_timeout {
                // Mark the outbox closed so publishers stop queueing, then close directly.
                outbox.close(1001, "idle timeout", true);
                let frame = close_frame(1001, "idle timeout");
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    w.write_all(&frame).await?;
                    w.shutdown().await
                })
                .await;
                return Exit::new(1001, "idle timeout", "idle_timeout");
            }
            if !silent_for.is_zero() {
                outbox.push_control(ping_frame(b""));
            }
        }
    }
}
