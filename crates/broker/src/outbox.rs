//! A connection's outbox: the bounded queue between publishers (any task, any thread) and
//! the connection's single writer task.
//!
//! Entries are complete, pre-framed WebSocket frames (`Bytes` shared with every other
//! subscriber of the same message), so pushing is a refcount increment plus a short,
//! never-awaited mutex. The queue is bounded by frame count and by bytes; when a push would
//! pass either bound the [`SlowConsumerPolicy`] decides: drop the new frame (and count it),
//! or close the connection with 1013. Either way the publisher returns at once.
//!
//! Control frames (pongs, the close frame) bypass the data bounds and go first. After a
//! close is requested no more frames are accepted; the writer sends the close frame and
//! stops. The writer takes the whole queue at once (`take_batch`), which is what makes its
//! writes batched.
//!
//! Direct sends: a connection whose writer is idle need not be woken for a frame. The
//! broker's flusher (`flusher.rs`) writes the queue straight to the attached socket
//! ([`DirectSocket`]) without waiting, under this outbox's lock, so it never interleaves
//! with the writer: the writer marks the time it holds a taken batch (`writing`), and a
//! direct send happens only when nothing is in flight, no control frame or close waits,
//! and the socket takes bytes now. Whatever it cannot send (a full socket, a frame cut
//! short) is left queued for the writer, which is woken for it; a frame cut short is
//! finished first (`TakenBatch::head_skip`).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What to do when a subscriber's outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Drop the message for this subscriber only and count it.
    #[default]
    Drop,
    /// Close the connection with 1013 ("try again later") and a reason.
    Disconnect,
}

/// Answers (pongs, acks, errors) a connection may have waiting before it counts as a slow
/// consumer of its own replies.
pub const MAX_CONTROL_FRAMES: usize = 256;

/// Bounds of one outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
    pub policy: SlowConsumerPolicy,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_frames: 1024,
            max_bytes: 4 << 20,
            policy: SlowConsumerPolicy::Drop,
        }
    }
}

/// The close the writer must send before it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: String,
    /// Why, as a `herald_connections_closed_total` reason (`slow_consumer`, `kicked`, ...),
    /// so the close is counted under the right reason whoever asked for it.
    pub label: &'static str,
}

/// Result of offering a data frame to an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// Full, policy `Drop`: this frame was discarded.
    Dropped,
    /// Full, policy `Disconnect`: the connection is being closed with 1013.
    Disconnected,
    /// The connection is closing or gone; nothing was queued.
    Closed,
}

/// The write side of a connection's socket, for direct sends.
pub trait DirectSocket: Send + Sync {
    /// Writes as much of `bufs` as the socket takes now, without waiting: the bytes written,
    /// or `WouldBlock` when it takes none.
    fn try_send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// Frames gathered into one direct send.
const DIRECT_IOV: usize = 128;

#[derive(Default)]
struct State {
    frames: VecDeque<(Bytes, Instant)>,
    bytes: usize,
    control: Vec<Bytes>,
    close: Option<CloseRequest>,
    /// The close request has been handed to the writer.
    close_taken: bool,
    /// Bytes of the head frame a direct send already wrote (the rest must go next).
    head_sent: usize,
    /// The writer holds a taken batch it has not finished writing.
    writing: bool,
    /// Waiting in the flusher's list for a direct send.
    listed: bool,
    socket: Option<Arc<dyn DirectSocket>>,
}

impl State {
    /// Drops the queued data frames, but not a head frame already partly written: a frame
    /// cannot be cut short.
    fn discard_queued(&mut self) {
        if self.head_sent > 0 {
            self.frames.truncate(1);
            self.bytes = self.frames.front().map_or(0, |f| f.0.len());
        } else {
            self.frames.clear();
            self.bytes = 0;
        }
    }
}

/// What the writer takes in one go.
#[derive(Default)]
pub struct TakenBatch {
    /// Control frames (pongs, pings) to send before the data.
    pub control: Vec<Bytes>,
    /// Data frames with the instant they were queued.
    pub frames: VecDeque<(Bytes, Instant)>,
    /// Set once: send this close frame after the data and stop.
    pub close: Option<CloseRequest>,
    /// When non-zero, a direct send already wrote this many bytes of `frames[0]` (and
    /// counted it): its rest goes first, before the control frames.
    pub head_skip: usize,
}

impl TakenBatch {
    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.frames.is_empty() && self.close.is_none()
    }
    /// Empties the batch but keeps its buffers for the next `take_batch`.
    pub fn clear(&mut self) {
        self.control.clear();
        self.frames.clear();
        self.close = None;
        self.head_skip = 0;
    }
}

/// See the module docs.
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limits: OutboxLimits,
    /// Cancelled when the slow-consumer policy disconnects the connection, so a writer
    /// blocked on a stalled socket gives up at once.
    cancel: CancellationToken,
}

impl Outbox {
    pub fn new(limits: OutboxLimits, cancel: CancellationToken) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limits,
            cancel,
        }
    }

    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // mutation is a single push/pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers a data frame queued at `at`. Never blocks on the consumer.
    pub fn push(&self, frame: Bytes, at: Instant) -> PushOutcome {
        self.offer(frame, at, false).0
    }

    /// Like [`Outbox::push`], but when the writer is idle and a socket is attached the
    /// writer is not woken: the second value is true and the caller must hand this outbox
    /// to [`Outbox::flush_now`] (the flusher does) or [`Outbox::wake`] it.
    pub fn push_listed(&self, frame: Bytes, at: Instant) -> (PushOutcome, bool) {
        self.offer(frame, at, true)
    }

    fn offer(&self, frame: Bytes, at: Instant, may_list: bool) -> (PushOutcome, bool) {
        let mut st = self.lock();
        if st.close.is_some() {
            return (PushOutcome::Closed, false);
        }
        let len = frame.len();
        // One frame larger than the byte bound is still accepted into an empty queue;
        // otherwise a single big message could never reach anyone.
        let full = st.frames.len() >= self.limits.max_frames
            || (!st.frames.is_empty() && st.bytes + len > self.limits.max_bytes);
        if full {
            return match self.limits.policy {
                SlowConsumerPolicy::Drop => (PushOutcome::Dropped, false),
                SlowConsumerPolicy::Disconnect => {
                    st.discard_queued();
                    st.close = Some(CloseRequest {
                        code: 1013,
                        reason: "slow consumer: outbox full".into(),
                        label: "slow_consumer",
                    });
                    drop(st);
                    self.notify.notify_one();
                    self.cancel.cancel();
                    (PushOutcome::Disconnected, false)
                }
            };
        }
        let was_empty = st.frames.is_empty() && st.control.is_empty();
        st.bytes += len;
        st.frames.push_back((frame, at));
        if may_list && was_empty && !st.writing && !st.listed && st.socket.is_some() {
            st.listed = true;
            return (PushOutcome::Queued, true);
        }
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
        (PushOutcome::Queued, false)
    }

    /// Wakes the writer (for an outbox [`Outbox::push_listed`] listed that will not be
    /// flushed directly).
    pub fn wake(&self) {
        self.lock().listed = false;
        self.notify.notify_one();
    }

    /// Sends what is queued straight to the attached socket, without waiting, when the
    /// writer is idle; wakes the writer for whatever is left. `on_sent` sees each frame
    /// the send began, once, with how long it waited in the queue.
    pub fn flush_now(&self, mut on_sent: impl FnMut(&[u8], Duration)) {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.listed = false;
        if st.frames.is_empty() || st.writing {
            // Nothing to do, or the writer has a batch in flight and takes the rest next.
            return;
        }
        let socket = match &st.socket {
            Some(s) if st.close.is_none() && st.control.is_empty() && st.head_sent == 0 => s,
            _ => {
                drop(guard);
                self.notify.notify_one();
                return;
            }
        };
        // Like the writer: whole gathers while the socket takes them all.
        while !st.frames.is_empty() && st.head_sent == 0 {
            let sent = {
                let mut slices = [IoSlice::new(&[]); DIRECT_IOV];
                let n = st.frames.len().min(DIRECT_IOV);
                for (slot, (f, _)) in slices.iter_mut().zip(st.frames.iter()) {
                    *slot = IoSlice::new(f);
                }
                socket.try_send(&slices[..n])
            };
            // A full socket is the writer's to wait for; another error (or a socket that
            // takes nothing) is the writer's to find and report.
            let mut written = match sent {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            let now = Instant::now();
            while written > 0 {
                let Some((f, at)) = st.frames.front() else { break };
                on_sent(f, now.saturating_duration_since(*at));
                let len = f.len();
                if written < len {
                    st.head_sent = written;
                    break;
                }
                written -= len;
                st.bytes -= len;
                st.frames.pop_front();
            }
        }
        let rest = !st.frames.is_empty();
        drop(guard);
        if rest {
            self.notify.notify_one();
        }
    }

    /// Attaches the connection's socket for direct sends (the writer does, when it starts).
    pub fn attach(&self, socket: Arc<dyn DirectSocket>) {
        self.lock().socket = Some(socket);
    }

    /// Detaches the socket (the writer does, before it ends).
    pub fn detach(&self) {
        self.lock().socket = None;
    }

    /// Queues a control frame (a pong, ping, ack or error answer). Ignored once a close was
    /// requested. Answers are bounded too: a client that keeps sending requests (or pings)
    /// but never reads the answers is a slow consumer of its own replies, and is closed
    /// with 1013 once [`MAX_CONTROL_FRAMES`] are waiting, so it cannot grow the node's
    /// memory.
    pub fn push_control(&self, frame: Bytes) {
        let mut st = self.lock();
        if st.close.is_some() {
            return;
        }
        if st.control.len() >= MAX_CONTROL_FRAMES {
            st.discard_queued();
            st.control.clear();
            st.close = Some(CloseRequest {
                code: 1013,
                reason: "slow consumer: replies not read".into(),
                label: "slow_consumer",
            });
            drop(st);
            self.notify.notify_one();
            self.cancel.cancel();
            return;
        }
        st.control.push(frame);
        drop(st);
        self.notify.notify_one();
    }

    /// Asks the writer to send what is queued, then a close frame, then stop; counted as
    /// `kicked` (an operator's close). The first request wins; later ones are ignored. With
    /// `discard_queued` the queued data is dropped first.
    pub fn close(&self, code: u16, reason: impl Into<String>, discard_queued: bool) {
        self.close_as(code, reason, discard_queued, "kicked")
    }

    /// Like [`Outbox::close`], counted under `label` (a `CLOSE_REASONS` value).
    pub fn close_as(&self, code: u16, reason: impl Into<String>, discard_queued: bool, label: &'static str) {
        let mut st = self.lock();
        if st.close.is_some() {
            return;
        }
        if discard_queued {
            st.discard_queued();
        }
        st.close = Some(CloseRequest {
            code,
            reason: reason.into(),
            label,
        });
        drop(st);
        self.notify.notify_one();
    }

    /// True once a close has been requested.
    pub fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Moves everything queued into `batch` (which must be empty), swapping buffers so
    /// neither side allocates in the steady state.
    /// The writer owns the socket from a non-empty take until its next, empty, one.
    pub fn take_batch(&self, batch: &mut TakenBatch) {
        let mut st = self.lock();
        std::mem::swap(&mut st.frames, &mut batch.frames);
        std::mem::swap(&mut st.control, &mut batch.control);
        st.bytes = 0;
        batch.head_skip = std::mem::take(&mut st.head_sent);
        if st.close.is_some() && !st.close_taken {
            st.close_taken = true;
            batch.close = st.close.clone();
        }
        st.writing = !batch.is_empty();
    }

    /// Waits until something may be queued. Spurious wake-ups are possible.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Frames and bytes queued now (for inspection and tests).
    pub fn queued(&self) -> (usize, usize) {
        let st = self.lock();
        (st.frames.len(), st.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{read_exactly, socket_pair};

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn bounded_by_count_with_drop_policy() {
        let ob = Outbox::new(
            OutboxLimits {
                max_frames: 2,
                max_bytes: 1 << 20,
                policy: SlowConsumerPolicy::Drop,
            },
            CancellationToken::new(),
        );
        let now = Instant::now();
        assert_eq!(ob.push(frame(1), now), PushOutcome::Queued);
        assert_eq!(ob.push(frame(1), now), PushOutcome::Queued);
        assert_eq!(ob.push(frame(1), now), PushOutcome::Dropped);
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        assert_eq!(b.frames.len(), 2);
        b.clear();
        assert_eq!(ob.push(frame(1), now), PushOutcome::Queued);
    }

    #[test]
    fn unread_replies_are_bounded_too() {
        let cancel = CancellationToken::new();
        let ob = Outbox::new(OutboxLimits::default(), cancel.clone());
        for _ in 0..MAX_CONTROL_FRAMES {
            ob.push_control(frame(100));
        }
        assert!(!ob.is_closing());
        ob.push_control(frame(100));
        assert!(ob.is_closing() && cancel.is_cancelled());
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        assert!(b.control.is_empty(), "the backlog is released");
        assert_eq!(b.close.map(|c| (c.code, c.label)), Some((1013, "slow_consumer")));
    }

    #[test]
    fn bounded_by_bytes_but_one_big_frame_passes() {
        let ob = Outbox::new(
            OutboxLimits {
                max_frames: 100,
                max_bytes: 10,
                policy: SlowConsumerPolicy::Drop,
            },
            CancellationToken::new(),
        );
        let now = Instant::now();
        assert_eq!(ob.push(frame(50), now), PushOutcome::Queued);
        assert_eq!(ob.push(frame(1), now), PushOutcome::Dropped);
        assert_eq!(ob.queued(), (1, 50));
    }

    #[test]
    fn disconnect_policy_closes_with_1013_and_cancels() {
        let cancel = CancellationToken::new();
        let ob = Outbox::new(
            OutboxLimits {
                max_frames: 1,
                max_bytes: 100,
                policy: SlowConsumerPolicy::Disconnect,
            },
            cancel.clone(),
        );
        let now = Instant::now();
        assert_eq!(ob.push(frame(1), now), PushOutcome::Queued);
        assert_eq!(ob.push(frame(1), now), PushOutcome::Disconnected);
        assert!(cancel.is_cancelled());
        assert_eq!(ob.push(frame(1), now), PushOutcome::Closed);
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        assert!(b.frames.is_empty());
        assert_eq!(b.close.as_ref().map(|c| c.code), Some(1013));
        b.clear();
        ob.take_batch(&mut b);
        assert!(b.close.is_none(), "the close is handed out once");
    }

    #[test]
    fn an_idle_outbox_is_listed_once_and_flushed_straight_to_its_socket() {
        let ob = Outbox::new(OutboxLimits::default(), CancellationToken::new());
        let now = Instant::now();
        assert_eq!(
            ob.push_listed(frame(3), now),
            (PushOutcome::Queued, false),
            "no socket yet"
        );
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        b.clear();
        ob.take_batch(&mut b); // the writer's empty take: idle again

        let (sock, mut peer) = socket_pair();
        ob.attach(sock);
        assert_eq!(
            ob.push_listed(Bytes::from_static(b"one"), now),
            (PushOutcome::Queued, true)
        );
        assert_eq!(
            ob.push_listed(Bytes::from_static(b"two"), now),
            (PushOutcome::Queued, false)
        );
        let mut seen = Vec::new();
        ob.flush_now(|f, _| seen.push(f.to_vec()));
        assert_eq!(seen, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(ob.queued(), (0, 0));
        assert_eq!(read_exactly(&mut peer, 6), b"onetwo");
        // Idle again: the next frame is listed again.
        assert_eq!(ob.push_listed(frame(1), now), (PushOutcome::Queued, true));
    }

    #[test]
    fn the_writer_keeps_the_socket_while_it_holds_a_batch_or_answers_wait() {
        let ob = Outbox::new(OutboxLimits::default(), CancellationToken::new());
        let (sock, _peer) = socket_pair();
        ob.attach(sock);
        let now = Instant::now();
        // A batch in flight: no listing, and a flush sends nothing.
        assert_eq!(ob.push(frame(1), now), PushOutcome::Queued);
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        assert_eq!(ob.push_listed(frame(2), now), (PushOutcome::Queued, false));
        ob.flush_now(|_, _| panic!("the writer holds the socket"));
        assert_eq!(ob.queued(), (1, 2));
        b.clear();
        ob.take_batch(&mut b);
        b.clear();
        ob.take_batch(&mut b);
        assert!(b.is_empty());

        // A listed frame with an answer queued after it: the writer sends both, answer first.
        assert_eq!(ob.push_listed(frame(3), now), (PushOutcome::Queued, true));
        ob.push_control(frame(4));
        ob.flush_now(|_, _| panic!("an answer waits: the writer's turn"));
        ob.take_batch(&mut b);
        assert_eq!((b.control.len(), b.frames.len()), (1, 1));
        b.clear();
        ob.take_batch(&mut b);

        // After a close request nothing more is sent directly.
        assert_eq!(ob.push_listed(frame(5), now), (PushOutcome::Queued, true));
        ob.close(1000, "", false);
        ob.flush_now(|_, _| panic!("closing: the writer sends what is left, then the close"));
        ob.detach();
        assert_eq!(ob.push_listed(frame(6), now), (PushOutcome::Closed, false));
    }

    #[test]
    fn a_frame_cut_short_is_finished_first_and_survives_a_discard() {
        let limits = OutboxLimits {
            max_bytes: 64 << 20,
            ..OutboxLimits::default()
        };
        let ob = Outbox::new(limits, CancellationToken::new());
        let (sock, mut peer) = socket_pair();
        ob.attach(sock);
        // Far more than a loopback socket buffers while the peer does not read.
        let big = Bytes::from((0..16 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let now = Instant::now();
        assert_eq!(ob.push_listed(big.clone(), now), (PushOutcome::Queued, true));
        let mut began = 0;
        ob.flush_now(|f, _| {
            assert_eq!(f.len(), big.len());
            began += 1;
        });
        assert_eq!(began, 1, "counted once, when the send began");
        assert_eq!(ob.push(frame(7), now), PushOutcome::Queued);
        ob.close(1001, "going away", true);
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        assert!(
            b.head_skip > 0 && b.head_skip < big.len(),
            "cut short at {}",
            b.head_skip
        );
        assert_eq!(
            b.frames.len(),
            1,
            "the discard kept the frame already begun, and only it"
        );
        assert_eq!(b.close.as_ref().map(|c| c.code), Some(1001));
        // What the peer got is exactly the frame's beginning.
        let got = read_exactly(&mut peer, b.head_skip);
        assert_eq!(&got[..], &big[..b.head_skip]);
    }
}
