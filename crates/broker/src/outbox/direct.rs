//! Direct sends: a connection whose writer is idle need not be woken for a frame. The
//! broker's flusher (`flusher.rs`) writes the queue straight to the attached socket
//! ([`DirectSocket`]) without waiting, under the outbox's lock, so it never interleaves
//! with the writer: the writer marks the time it holds a taken batch (`writing`), and a
//! direct send happens only when nothing is in flight, no control frame or close waits,
//! and the socket takes bytes now. A direct send is bounded: gathers of at most
//! [`DIRECT_IOV`] frames, while the socket takes them whole, until [`DIRECT_MAX_BYTES`] were
//! sent, so the outbox's lock (which a fan-out to this connection waits for) is held for a
//! bounded copy. Whatever it does not send (a full socket, a frame cut short, frames past
//! the bound) is left queued for the writer, which is woken for it; a frame cut short is
//! finished first (`TakenBatch::head_skip`).

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Outbox;

/// The write side of a connection's socket, for direct sends.
pub trait DirectSocket: Send + Sync {
    /// Writes as much of `bufs` as the socket takes now, without waiting: the bytes written,
    /// or `WouldBlock` when it takes none.
    fn try_send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// Frames gathered into one system call of a direct send.
const DIRECT_IOV: usize = 128;

/// Bytes one direct send writes at most (one frame more, when a single frame is larger).
/// Large enough that a flood's gathered frames (a default outbox of 1,024 frames of a few
/// hundred bytes) go out in one flush, as a writer's batch
/// would (handing the rest to the writer costs it a wake-up and a poll per flush); small
/// enough that the lock is held for a bounded copy (about a hundred microseconds).
pub const DIRECT_MAX_BYTES: usize = 1 << 20;

impl Outbox {
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
        // Whole gathers while the socket takes them all, up to the byte bound.
        let mut budget = DIRECT_MAX_BYTES;
        let mut first = true;
        while !st.frames.is_empty() && st.head_sent == 0 {
            let (sent, gathered) = {
                let mut slices = [IoSlice::new(&[]); DIRECT_IOV];
                let mut n = 0;
                let mut gathered = 0;
                for (f, _) in st.frames.iter().take(DIRECT_IOV) {
                    // The first frame of a flush goes whatever its size; then the bound.
                    if !(first && n == 0) && gathered + f.len() > budget {
                        break;
                    }
                    slices[n] = IoSlice::new(f);
                    gathered += f.len();
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                (socket.try_send(&slices[..n]), gathered)
            };
            first = false;
            // A full socket is the writer's to wait for; another error (or a socket that
            // takes nothing) is the writer's to find and report.
            let mut written = match sent {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            let whole = written == gathered;
            budget = budget.saturating_sub(written);
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
                if st.data_waiter {
                    st.data_waiter = false;
                    self.drained.notify_waiters();
                }
            }
            if !whole {
                // The socket is full for now.
                break;
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
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::outbox::{OutboxLimits, PushOutcome, TakenBatch};
    use crate::testing::{read_exactly, socket_pair};

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
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

    #[test]
    fn a_direct_send_is_bounded_and_leaves_the_rest_to_the_writer() {
        let limits = OutboxLimits {
            max_frames: 1 << 16,
            max_bytes: 64 << 20,
            ..OutboxLimits::default()
        };
        let ob = Outbox::new(limits, CancellationToken::new());
        let (sock, mut peer) = socket_pair();
        ob.attach(sock);
        let now = Instant::now();
        // Small frames: several gathers of DIRECT_IOV, then the byte bound.
        let frame = 1000;
        let n = DIRECT_MAX_BYTES / frame + 50;
        for i in 0..n {
            let (_, listed) = ob.push_listed(Bytes::from(vec![b'a' + (i % 26) as u8; frame]), now);
            assert_eq!(listed, i == 0);
        }
        let mut sent = 0;
        ob.flush_now(|_, _| sent += 1);
        assert_eq!(sent, DIRECT_MAX_BYTES / frame, "up to the byte bound, in whole frames");
        assert!(sent > DIRECT_IOV, "more than one gather while the socket takes them");
        assert_eq!(ob.queued().0, n - sent, "the rest waits for the writer");
        let mut b = TakenBatch::default();
        ob.take_batch(&mut b);
        assert_eq!(b.frames.len(), n - sent);
        assert_eq!(read_exactly(&mut peer, sent * frame).len(), sent * frame);
    }
}
