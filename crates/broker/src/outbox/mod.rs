//! A connection's outbox: the bounded queue between publishers (any task, any thread) and
//! the connection's writer task.
//!
//! Entries are complete, pre-framed WebSocket frames (`Bytes` shared with every other
//! subscriber of the same message), so pushing is a refcount increment plus a short,
//! never-awaited mutex. The queue is bounded by frame count and by bytes, counting what the
//! writer has taken and not yet written too, so the bound is what one connection may hold;
//! when a push would pass either bound the [`SlowConsumerPolicy`] decides: drop the new
//! frame (and count it), or close the connection with 1013. Either way the publisher
//! returns at once.
//!
//! Control frames (answers, pongs, the close frame) bypass the data bounds and go first.
//! Answers are the reader's to pace: [`Outbox::push_control`] returns the backlog and the
//! reader stops reading while it is at [`CONTROL_HIGH_WATER`] ([`Outbox::control_room`]
//! wakes it when the writer takes them), so a client that pipelines thousands of requests
//! is served at the speed it reads, and only one whose socket stops taking bytes is
//! dropped (by the writer's write timeout). After a close is requested no more frames are
//! accepted; the writer sends the close frame and stops. The writer takes the whole queue
//! at once (`take_batch`), which is what makes its writes batched.
//!
//! Direct sends to the socket of an idle writer are `direct.rs`'s part of this type.

mod direct;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::direct::DirectSocket;

/// What to do when a subscriber's outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Drop the message for this subscriber only and count it.
    #[default]
    Drop,
    /// Close the connection with 1013 ("try again later") and a reason.
    Disconnect,
}

/// Answers waiting to be taken by the writer at which the reader stops reading requests
/// until the writer takes them (backpressure on a client that pipelines).
pub const CONTROL_HIGH_WATER: usize = 128;

/// Control frames past which a connection is closed as a slow consumer of its own replies.
/// The reader pauses long before (at [`CONTROL_HIGH_WATER`]), so this is a guard against a
/// producer that does not pace itself, never the fate of a client that reads.
pub const MAX_CONTROL_FRAMES: usize = 8 * CONTROL_HIGH_WATER;

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
    /// Data frames and bytes of the batch the writer holds (taken, not yet written): they
    /// count against the bounds until its next take.
    /// (u32: a batch is bounded by `max_frames` and `max_bytes` plus one frame; kept small
    /// because every connection has an outbox.)
    taken_frames: u32,
    taken_bytes: u32,
    /// Waiting in the flusher's list for a direct send.
    listed: bool,
    /// A history replay waits for data frames to leave (`data_room`).
    pub(crate) data_waiter: bool,
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
    /// Wakes a reader paused at [`CONTROL_HIGH_WATER`] when the writer takes answers.
    room: Notify,
    /// Wakes a history replay waiting in [`Outbox::data_room`] when data frames leave.
    pub(crate) drained: Notify,
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
            room: Notify::new(),
            drained: Notify::new(),
            limits,
            cancel,
        }
    }

    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// The token the slow-consumer policy cancels (the writer's "give up now").
    pub fn urgent(&self) -> CancellationToken {
        self.cancel.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // mutation is a single push/pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slow-consumer close: queued data discarded, 1013 requested, the writer and a
    /// paused reader woken, and `urgent` cancelled so a writer blocked on the socket gives up.
    fn give_up(&self, mut st: std::sync::MutexGuard<'_, State>, reason: &str) {
        st.discard_queued();
        st.close = Some(CloseRequest {
            code: 1013,
            reason: reason.into(),
            label: "slow_consumer",
        });
        drop(st);
        self.notify.notify_one();
        self.room.notify_one();
        self.drained.notify_waiters();
        self.cancel.cancel();
    }

    /// Offers a data frame queued at `at`. Never blocks on the consumer.
    pub fn push(&self, frame: Bytes, at: Instant) -> PushOutcome {
        self.offer(frame, at, false, true).0
    }

    /// Like [`Outbox::push`], but when the writer is idle and a socket is attached the
    /// writer is not woken: the second value is true and the caller must hand this outbox
    /// to [`Outbox::flush_now`] (the flusher does) or [`Outbox::wake`] it.
    pub fn push_listed(&self, frame: Bytes, at: Instant) -> (PushOutcome, bool) {
        self.offer(frame, at, true, true)
    }

    /// Like [`Outbox::push`], but a full outbox refuses the frame (`Dropped`) whatever the
    /// slow-consumer policy: a history replay waits for room and offers it again, and
    /// must never get its subscriber disconnected for its own frames.
    pub fn push_or_refuse(&self, frame: Bytes, at: Instant) -> PushOutcome {
        self.offer(frame, at, false, false).0
    }

    fn offer(&self, frame: Bytes, at: Instant, may_list: bool, policy: bool) -> (PushOutcome, bool) {
        let mut st = self.lock();
        if st.close.is_some() {
            return (PushOutcome::Closed, false);
        }
        let len = frame.len();
        // One frame larger than the byte bound is still accepted into an empty queue;
        // otherwise a single big message could never reach anyone.
        // What the writer took and has not written yet is still this connection's.
        let frames = st.frames.len() + st.taken_frames as usize;
        let bytes = st.bytes + st.taken_bytes as usize;
        let full = frames >= self.limits.max_frames || (frames > 0 && bytes + len > self.limits.max_bytes);
        if full {
            if !policy {
                return (PushOutcome::Dropped, false);
            }
            return match self.limits.policy {
                SlowConsumerPolicy::Drop => (PushOutcome::Dropped, false),
                SlowConsumerPolicy::Disconnect => {
                    self.give_up(st, "slow consumer: outbox full");
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

    /// Queues a control frame (a pong, ping, ack or error answer) and returns how many
    /// wait now: 0 once a close was requested (the frame is ignored, and the reader
    /// should take no more requests). The reader paces
    /// itself with the count (see [`CONTROL_HIGH_WATER`]); past [`MAX_CONTROL_FRAMES`] the
    /// connection is closed with 1013, so no producer can grow the node's memory.
    pub fn push_control(&self, frame: Bytes) -> usize {
        let mut st = self.lock();
        if st.close.is_some() {
            return 0;
        }
        if st.control.len() >= MAX_CONTROL_FRAMES {
            st.control.clear();
            self.give_up(st, "slow consumer: replies not read");
            return 0;
        }
        st.control.push(frame);
        let waiting = st.control.len();
        drop(st);
        self.notify.notify_one();
        waiting
    }

    /// Wakes the writer with nothing new to send, so it recomputes its timers (a new
    /// token expiry, say). Unlike [`Outbox::wake`] it leaves the flush listing alone.
    pub fn nudge_writer(&self) {
        self.notify.notify_one();
    }

    /// Control frames waiting for the writer.
    pub fn control_backlog(&self) -> usize {
        self.lock().control.len()
    }

    /// Waits until the backlog is under [`CONTROL_HIGH_WATER`] or a close was requested.
    /// Cancel-safe.
    pub async fn control_room(&self) {
        loop {
            let room = self.room.notified();
            {
                let st = self.lock();
                if st.control.len() < CONTROL_HIGH_WATER || st.close.is_some() {
                    return;
                }
            }
            room.await;
        }
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
        // A reader paused for room must see the close (and stop taking requests), and so
        // must a replay waiting for the queue to drain.
        self.room.notify_one();
        self.drained.notify_waiters();
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
        let answers = !st.control.is_empty();
        std::mem::swap(&mut st.frames, &mut batch.frames);
        std::mem::swap(&mut st.control, &mut batch.control);
        st.taken_frames = u32::try_from(batch.frames.len()).unwrap_or(u32::MAX);
        st.taken_bytes = u32::try_from(std::mem::take(&mut st.bytes)).unwrap_or(u32::MAX);
        batch.head_skip = std::mem::take(&mut st.head_sent);
        if st.close.is_some() && !st.close_taken {
            st.close_taken = true;
            batch.close = st.close.clone();
        }
        st.writing = !batch.is_empty();
        let drained = std::mem::take(&mut st.data_waiter);
        drop(st);
        if answers {
            self.room.notify_one();
        }
        if drained {
            self.drained.notify_waiters();
        }
    }

    /// Waits until at most `frames` data frames and `bytes` bytes are this connection's
    /// (queued, or taken by the writer and not written yet); `false` once a close was
    /// requested. A history replay paces itself with it, so a long replay is sent in
    /// chunks as the outbox drains rather than queued whole. Cancel-safe.
    pub async fn data_room(&self, frames: usize, bytes: usize) -> bool {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let mut st = self.lock();
                if st.close.is_some() {
                    return false;
                }
                let f = st.frames.len() + st.taken_frames as usize;
                let b = st.bytes + st.taken_bytes as usize;
                if f <= frames && b <= bytes {
                    return true;
                }
                st.data_waiter = true;
            }
            drained.await;
        }
    }

    /// Waits until something may be queued. Spurious wake-ups are possible.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Frames and bytes queued now, not counting a batch the writer holds (for
    /// inspection and tests).
    pub fn queued(&self) -> (usize, usize) {
        let st = self.lock();
        (st.frames.len(), st.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            ob.push(frame(1), now),
            PushOutcome::Dropped,
            "the batch the writer holds still counts"
        );
        b.clear();
        ob.take_batch(&mut b); // the writer is done with it: empty take
        assert_eq!(ob.push(frame(1), now), PushOutcome::Queued);
    }

    #[test]
    fn the_byte_bound_counts_the_taken_batch() {
        let ob = Outbox::new(
            OutboxLimits {
                max_frames: 100,
                max_bytes: 100,
                policy: SlowConsumerPolicy::Drop,
            },
            CancellationToken::new(),
        );
        let now = Instant::now();
        assert_eq!(ob.push(frame(60), now), PushOutcome::Queued);
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        assert_eq!(ob.push(frame(60), now), PushOutcome::Dropped, "60 held + 60 > 100");
        assert_eq!(ob.push(frame(40), now), PushOutcome::Queued);
    }

    #[tokio::test]
    async fn a_reader_waits_for_room_and_is_woken_when_answers_are_taken() {
        let ob = Arc::new(Outbox::new(OutboxLimits::default(), CancellationToken::new()));
        for i in 1..=CONTROL_HIGH_WATER {
            assert_eq!(ob.push_control(frame(1)), i);
        }
        let waiter = tokio::spawn({
            let ob = ob.clone();
            async move { ob.control_room().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "at the high-water mark: paused");
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by the take")
            .unwrap();
        assert!(!ob.is_closing(), "pacing is not a slow-consumer close");
    }

    #[test]
    fn unread_replies_are_bounded_too() {
        let cancel = CancellationToken::new();
        let ob = Outbox::new(OutboxLimits::default(), cancel.clone());
        for _ in 0..MAX_CONTROL_FRAMES {
            ob.push_control(frame(100));
        }
        // Only a producer that ignores the high-water mark gets this far.
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
}
