//! The session's writer task: it writes everything the connection sends, except data frames
//! the broker's flusher sends directly while the writer is idle (ADR 003).
//!
//! It takes everything queued in the outbox at once and writes it as one batch: control
//! frames first, then data frames, gathered into vectored writes of up to [`MAX_IOV`]
//! frames each. The batch is first offered to the socket without waiting, which in the
//! common case sends it whole with no future or allocation; only a full socket makes the
//! writer wait. While the writer is idle the broker's flusher may send data frames to the
//! socket directly (see the outbox); the writer attaches the socket for that when it
//! starts and detaches it before it ends. Frames are pre-built (header included) and
//! shared with other subscribers, so the batch is written without copying or encoding.
//!
//! Between batches it keeps every timer of the connection: the heartbeat (every
//! `ping_interval` in which the reader saw no frame, it pings; on `/ws?heartbeat=json` it
//! sends the text frame `{"type":"ping"}` every interval instead, whatever the traffic;
//! after `idle_timeout` of silence it closes with 1001), the first-message deadline (1008) and the token's expiry
//! (`expiry_notice` before it an error frame `token_expired`, `expiry_grace` after it a
//! close 1008 "token expired"; a `refresh` moves the expiry, and the ack it sends wakes
//! the writer to re-arm). During a drain the
//! node's drain task closes connections one by one across the close window. A batch that cannot
//! be written within `write_timeout` means the peer stalled: the connection is dropped.
//! When the slow-consumer policy disconnects the client while a write is in flight, the
//! write is abandoned (the peer is not reading, a close frame could not reach it anyway).
//! After writing a close frame the writer stops: it never sends a second one. Between
//! batches it spends a unit of tokio's cooperative budget, so a writer that always finds
//! more to send still yields to other tasks on its worker.

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::{BrokerMetrics, Outbox, TakenBatch};
use herald_protocol::ws_frame::{close_frame, ping_frame};
use prometheus::local::LocalHistogram;
use tokio_util::sync::CancellationToken;

use super::counts::{kind_of, FrameCounts};
use super::socket::Socket;
use super::{Exit, SessionFlags};
use crate::clock::coarse_ms;
use crate::config::Config;
use crate::identity::now_ms;
use herald_protocol::server_msg::{self, ErrorCode};

/// Frames gathered into one `writev` call.
const MAX_IOV: usize = 128;

/// The writer's share of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// Close (1008) a connection that neither subscribed nor sent a request by then.
    pub first_message_timeout: Option<Duration>,
}

impl WriterConfig {
    pub fn from_config(c: &Config) -> Self {
        Self {
            ping_interval: c.ping_interval(),
            idle_timeout: c.idle_timeout(),
            write_timeout: c.write_timeout(),
            first_message_timeout: c.first_message_timeout(),
        }
    }
}

/// Sent-frame counts plus the write-latency histogram, flushed together.
struct SentCounts {
    counts: FrameCounts,
    latency: LocalHistogram,
}

impl SentCounts {
    fn add(&mut self, frame: &[u8]) {
        self.counts
            .add(kind_of(frame.first().copied().unwrap_or(0x8)), frame.len());
    }

    // The latency first: a reader that sees the frame counters move finds the latency
    // observations of those frames already there.
    fn maybe_flush(&mut self) {
        if self.counts.flush_due() {
            self.latency.flush();
            self.counts.maybe_flush();
        }
    }

    fn flush(&mut self) {
        if self.counts.is_pending() {
            self.latency.flush();
            self.counts.flush();
        }
    }
}

/// The `i`-th frame of a batch: control frames first, then data frames; but the rest of a
/// data frame a direct send began comes before everything.
fn nth_frame(batch: &TakenBatch, i: usize) -> &[u8] {
    let lead = usize::from(batch.head_skip > 0);
    if i < lead {
        return &batch.frames[0].0[batch.head_skip..];
    }
    match batch.control.get(i - lead) {
        Some(f) => f,
        None => &batch.frames[i - batch.control.len()].0,
    }
}

/// Fills `slices` with frames `first..` of the batch, skipping `skip` bytes of frame
/// `first`; returns how many slices were filled.
fn fill_slices<'a>(batch: &'a TakenBatch, first: usize, skip: usize, slices: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
    let total = batch.control.len() + batch.frames.len();
    let n = (total - first).min(MAX_IOV);
    for (k, slot) in slices.iter_mut().take(n).enumerate() {
        let f = nth_frame(batch, first + k);
        *slot = IoSlice::new(if k == 0 { &f[skip..] } else { f });
    }
    n
}

/// Where a partially written batch stands: the next frame and the bytes of it already sent.
#[derive(Clone, Copy, Default)]
struct Cursor {
    frame: usize,
    skip: usize,
}

impl Cursor {
    /// Moves past `written` bytes.
    fn advance(&mut self, batch: &TakenBatch, mut written: usize) {
        while written > 0 {
            let left = nth_frame(batch, self.frame).len() - self.skip;
            if written >= left {
                written -= left;
                self.frame += 1;
                self.skip = 0;
            } else {
                self.skip += written;
                written = 0;
            }
        }
    }
}

/// Writes what the socket takes right now, without waiting. In the common case (a socket
/// with room) this sends the whole batch with no future, allocation or task switch.
fn try_write_now(w: &Socket, batch: &TakenBatch, cursor: &mut Cursor) -> std::io::Result<()> {
    let total = batch.control.len() + batch.frames.len();
    while cursor.frame < total {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let n = fill_slices(batch, cursor.frame, cursor.skip, &mut slices);
        match w.try_write(&slices[..n]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => cursor.advance(batch, written),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the rest of the batch, waiting for the socket as needed.
async fn write_rest(w: &Socket, batch: &TakenBatch, cursor: &mut Cursor) -> std::io::Result<()> {
    let total = batch.control.len() + batch.frames.len();
    while cursor.frame < total {
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let n = fill_slices(batch, cursor.frame, cursor.skip, &mut slices);
            w.write_some(&slices[..n]).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        cursor.advance(batch, written);
    }
    // TLS: the records the socket did not take yet are part of the batch.
    w.flush().await
}

/// After the slow-consumer policy fired mid-write: finish the frame in flight (a frame
/// cannot be cut short) and send the 1013 close, giving a slow but live client a second to
/// take them; a stalled one is simply dropped.
async fn last_words(w: &Socket, batch: &TakenBatch, cursor: Cursor, outbox: &Outbox) -> Exit {
    // The close request came with this batch, or after it.
    let close = batch.close.clone().or_else(|| {
        let mut later = TakenBatch::default();
        outbox.take_batch(&mut later);
        later.close
    });
    let (code, reason) = close
        .map(|c| (c.code, c.reason))
        .unwrap_or((1013, "slow consumer".into()));
    let total = batch.control.len() + batch.frames.len();
    // The frame in flight was begun by this writer (`skip`), or by a direct send before the
    // batch was taken (the head's rest, not yet touched by the writer).
    let begun = cursor.skip > 0 || (cursor.frame == 0 && batch.head_skip > 0);
    let rest: &[u8] = if begun && cursor.frame < total {
        &nth_frame(batch, cursor.frame)[cursor.skip..]
    } else {
        &[]
    };
    let frame = close_frame(code, &reason);
    let sent = tokio::time::timeout(Duration::from_secs(1), async {
        w.write_all(rest).await?;
        w.write_all(&frame).await?;
        w.shutdown_write().await
    })
    .await;
    match sent {
        Ok(Ok(())) => Exit::new(code, reason, "slow_consumer"),
        _ => Exit::silent("slow_consumer"),
    }
}

/// The socket attached to the outbox for direct sends while the writer runs; detached
/// however the writer ends, so the outbox does not keep the socket open.
struct Attached<'a>(&'a Outbox);

impl<'a> Attached<'a> {
    /// A TLS socket is not attached: its flushes wake the writer (ADR 005).
    fn new(outbox: &'a Outbox, socket: Arc<Socket>) -> Self {
        if socket.direct_sends() {
            outbox.attach(socket);
        }
        Self(outbox)
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.detach();
    }
}

/// The connection's timers, as deadlines.
struct Timers {
    next_beat: Instant,
    /// Until the client engages (first request or subscription).
    first_deadline: Option<Instant>,
}

/// `at_ms` (epoch milliseconds) on the monotonic clock, `now_ms` being now; a millisecond
/// late rather than early, so a wake-up never finds its deadline not quite reached.
fn instant_of(at_ms: u64, now_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms) + 1)
}

impl Timers {
    fn next_wake(&self, cfg: &WriterConfig, flags: &SessionFlags) -> Instant {
        // The idle deadline follows the client's last frame (coarse clock, 20 ms).
        let silent = Duration::from_millis(coarse_ms().saturating_sub(flags.last_seen_ms.load(Ordering::Relaxed)));
        // At least one coarse tick away, so a deadline seen early through the coarse clock
        // cannot make the writer spin.
        let idle_in = cfg.idle_timeout.saturating_sub(silent).max(Duration::from_millis(20));
        let mut t = self.next_beat.min(Instant::now() + idle_in);
        if let Some(d) = self.first_deadline {
            t = t.min(d);
        }
        let expires = flags.expires_ms.load(Ordering::Relaxed);
        if expires != 0 {
            let now_ms = now_ms();
            let close_at = expires.saturating_add(u64::from(flags.expiry_grace_ms));
            t = t.min(instant_of(close_at, now_ms));
            if flags.expiry_notice_ms > 0 && flags.noticed_ms.load(Ordering::Relaxed) != expires {
                let notice_at = expires.saturating_sub(u64::from(flags.expiry_notice_ms));
                t = t.min(instant_of(notice_at, now_ms));
            }
        }
        t
    }
}

/// Runs until the connection must end; returns why.
pub async fn run(
    w: Arc<Socket>,
    outbox: Arc<Outbox>,
    urgent: CancellationToken,
    cfg: WriterConfig,
    flags: Arc<SessionFlags>,
    metrics: Arc<BrokerMetrics>,
) -> Exit {
    // One async fn, not a wrapper around another: a wrapper's own copies of the arguments
    // would sit in every idle connection's task.
    let attached = Attached::new(&outbox, w.clone());
    let (w, outbox) = (&*w, attached.0);
    let mut batch = TakenBatch::default();
    let mut sent = SentCounts {
        counts: FrameCounts::new(&metrics.frames_out, &metrics.bytes_out),
        latency: metrics.frame_write_latency.local(),
    };
    let start = Instant::now();
    let mut timers = Timers {
        next_beat: start + cfg.ping_interval,
        first_deadline: cfg.first_message_timeout.map(|t| start + t),
    };

    loop {
        outbox.take_batch(&mut batch);
        if batch.is_empty() {
            // Idle: hold no batch buffers while waiting; publish what was counted.
            batch = TakenBatch::default();
            sent.flush();
            if w.pending() {
                // TLS records the reader produced (a key update, an alert) with a full socket.
                // Boxed: rarely taken, and its state must not size every idle writer.
                match Box::pin(tokio::time::timeout(cfg.write_timeout, w.flush())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Exit::silent("client_gone"),
                    Err(_) => return Exit::silent("slow_consumer"),
                }
            }
            // The timer lives only inside this wait: a persistent one would sit in every
            // idle connection's task (the memory budget is tighter than its CPU saving).
            tokio::select! {
                _ = outbox.wait() => {}
                _ = tokio::time::sleep_until(timers.next_wake(&cfg, &flags).into()) => {}
            }
        } else {
            let mut cursor = Cursor::default();
            let written = match try_write_now(w, &batch, &mut cursor) {
                Err(e) => Ok(Err(e)),
                Ok(()) if cursor.frame == batch.control.len() + batch.frames.len() && !w.pending() => Ok(Ok(())),
                Ok(()) => {
                    let waited = tokio::select! {
                        biased;
                        _ = urgent.cancelled() => None,
                        // Boxed, with its timeout: the waiting write's state (an iovec array and
                        // a timer) exists only while a socket is full, not in every idle task.
                        r = Box::pin(tokio::time::timeout(cfg.write_timeout, write_rest(w, &batch, &mut cursor))) => Some(r),
                    };
                    match waited {
                        Some(r) => r,
                        None => {
                            // The slow-consumer policy fired while this socket was full.
                            sent.flush();
                            return Box::pin(last_words(w, &batch, cursor, outbox)).await;
                        }
                    }
                }
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "write failed");
                    sent.flush();
                    return Exit::silent("client_gone");
                }
                Err(_) => {
                    sent.flush();
                    return Exit::silent("slow_consumer");
                }
            }
            let now = Instant::now();
            for f in &batch.control {
                sent.add(f);
            }
            // A head frame a direct send began was counted by it.
            for (f, queued) in batch.frames.iter().skip(usize::from(batch.head_skip > 0)) {
                sent.add(f);
                sent.latency
                    .observe(now.saturating_duration_since(*queued).as_secs_f64());
            }
            sent.maybe_flush();
            if let Some(close) = batch.close.take() {
                let frame = close_frame(close.code, &close.reason);
                sent.add(&frame);
                sent.flush();
                // Boxed: a once-per-connection path, kept out of the idle task's size.
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), async {
                    w.write_all(&frame).await?;
                    w.shutdown_write().await
                }))
                .await;
                return Exit::new(close.code, close.reason, close.label);
            }
            batch.clear();
            // Under sustained load every write may complete at once and this loop would
            // never await: give the runtime its turn when the task's budget is spent, so
            // one busy subscriber cannot pin a worker thread.
            tokio::task::coop::consume_budget().await;
        }
        check_timers(&mut timers, &cfg, &flags, outbox, &metrics);
    }
}

/// Applies whatever deadline has passed: a close goes through the outbox, so queued
/// frames and the close frame leave in order on the next iteration.
fn check_timers(
    timers: &mut Timers,
    cfg: &WriterConfig,
    flags: &SessionFlags,
    outbox: &Outbox,
    metrics: &BrokerMetrics,
) {
    let now = Instant::now();
    let expires = flags.expires_ms.load(Ordering::Relaxed);
    if expires != 0 {
        let now_ms = now_ms();
        if now_ms >= expires.saturating_add(u64::from(flags.expiry_grace_ms)) {
            outbox.close_as(1008, "token expired", false, "token_expired");
            return;
        }
        let notice_due =
            flags.expiry_notice_ms > 0 && now_ms.saturating_add(u64::from(flags.expiry_notice_ms)) >= expires;
        if notice_due && flags.noticed_ms.load(Ordering::Relaxed) != expires {
            flags.noticed_ms.store(expires, Ordering::Relaxed);
            let message = if now_ms >= expires {
                "the token has expired; send refresh with a new one now".to_owned()
            } else {
                format!(
                    "the token expires in {} ms; send refresh with a new one",
                    expires - now_ms
                )
            };
            let code = ErrorCode::TokenExpired;
            metrics.client_errors.with_label_values(&[code.as_str()]).inc();
            outbox.push_control(server_msg::error(None, code, &message));
        }
    }
    if let Some(deadline) = timers.first_deadline {
        if flags.engaged.load(Ordering::Relaxed) {
            timers.first_deadline = None;
        } else if now >= deadline {
            outbox.close_as(
                1008,
                "no subscription or request within the first-message deadline",
                true,
                "first_message_timeout",
            );
            return;
        }
    }
    let silent = Duration::from_millis(coarse_ms().saturating_sub(flags.last_seen_ms.load(Ordering::Relaxed)));
    if silent >= cfg.idle_timeout {
        outbox.close_as(1001, "idle timeout", true, "idle_timeout");
        return;
    }
    if now >= timers.next_beat {
        timers.next_beat = now + cfg.ping_interval;
        if flags.json_heartbeat {
            // `?heartbeat=json`: every interval whatever the traffic (a browser client
            // judges the link by these alone); one static frame shared by all connections.
            outbox.push_control(server_msg::json_ping());
        } else if silent >= cfg.ping_interval {
            // Ping only a client we have not heard from for a whole interval.
            outbox.push_control(ping_frame(b""));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use herald_broker::{OutboxLimits, PushOutcome, SlowConsumerPolicy};
    use herald_protocol::ws_frame::binary_frame;

    use super::*;

    /// Our side of a real loopback connection as the session's socket, and the peer.
    fn socket_pair() -> (Arc<Socket>, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(ours).unwrap();
        (Arc::new(Socket::new(stream)), peer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_a_direct_send_cut_short_is_finished_before_the_1013_close() {
        let (sock, mut peer) = socket_pair();
        let urgent = CancellationToken::new();
        let limits = OutboxLimits {
            max_frames: 2,
            max_bytes: 64 << 20,
            policy: SlowConsumerPolicy::Disconnect,
        };
        let outbox = Arc::new(Outbox::new(limits, urgent.clone()));
        outbox.attach(sock.clone());
        // A frame far larger than the socket buffers: the direct send is cut short.
        let payload: Vec<u8> = (0..16u32 << 20).map(|i| (i % 253) as u8).collect();
        let big = binary_frame(&payload);
        let now = Instant::now();
        assert_eq!(outbox.push_listed(big.clone(), now), (PushOutcome::Queued, true));
        outbox.flush_now(|_, _| {});
        assert_eq!(outbox.queued().0, 1, "cut short: the head frame waits for the writer");
        // The client falls behind: the slow-consumer policy closes it while the frame is
        // half sent (its rest and the close must still follow, in that order).
        assert_eq!(outbox.push(binary_frame(b"a"), now), PushOutcome::Queued);
        assert_eq!(outbox.push(binary_frame(b"b"), now), PushOutcome::Disconnected);

        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            all
        });
        let cfg = WriterConfig {
            ping_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(10),
            first_message_timeout: None,
        };
        let flags = Arc::new(SessionFlags::default());
        flags.last_seen_ms.store(coarse_ms(), Ordering::Relaxed);
        let exit = run(sock, outbox, urgent, cfg, flags, Arc::new(BrokerMetrics::new())).await;
        assert_eq!(exit, Exit::new(1013, "slow consumer: outbox full", "slow_consumer"));

        let got = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        let close = close_frame(1013, "slow consumer: outbox full");
        assert_eq!(got.len(), big.len() + close.len(), "the whole frame, then the close");
        assert!(got[..big.len()] == big[..], "the frame arrived intact");
        assert_eq!(&got[big.len()..], &close[..]);
    }

    /// Every connection's writer task carries this future while idle: its size is memory per
    /// connection. 904 bytes measured (rustc 1.95, debug, as tests build); the idle TLS
    /// flush unboxed made it 992. If a compiler change moves it, measure again; if a change
    /// to `run` grows it, box the new state on a rarely taken path instead.
    #[test]
    fn the_idle_writer_future_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _enter = rt.enter();
        let (sock, _peer) = socket_pair();
        let urgent = CancellationToken::new();
        let limits = OutboxLimits {
            max_frames: 2,
            max_bytes: 1 << 20,
            policy: SlowConsumerPolicy::Disconnect,
        };
        let outbox = Arc::new(Outbox::new(limits, urgent.clone()));
        let cfg = WriterConfig {
            ping_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(10),
            first_message_timeout: None,
        };
        let flags = Arc::new(SessionFlags::default());
        let writer = run(sock, outbox, urgent, cfg, flags, Arc::new(BrokerMetrics::new()));
        let size = std::mem::size_of_val(&writer);
        assert!(size <= 904, "the writer's future grew to {size} bytes");
    }
}
