//! The hot receive path of a subscriber connection.
//!
//! One task per connection: read as much as the socket has into the connection's buffer,
//! take the clock once for the whole batch, walk the frames in place, read only the stamp
//! of each delivery (`payload::parse_delivery`: no JSON parser, no allocation), classify its
//! sequence, and add the batch to the shared counters and histogram with one atomic add and
//! one uncontended lock. Pings are answered inline (the task owns the whole socket).
//!
//! It does not decide when to stop: the scenario cancels `stop`, and the task then sends
//! Close 1000 and returns what it counted. [`pump`] is the loop itself, reusable across
//! connections: recovery mode (`scenario/recovery.rs`) runs it once per connection of a
//! subscriber with a deadline (the next drop) and the history bookkeeping in [`SubState`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::conn::Conn;
use super::frame::{self, Parsed, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use crate::payload;
use crate::recovery::{wire, Book};
use crate::stats::{Arrival, Clock, SeqTracker, Shared};

/// What a subscriber counted over the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubOutcome {
    /// Deliveries carrying a load-test stamp of this run (duplicates included).
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Messages without our stamp, or stamped for a topic or publisher this subscriber
    /// does not know: another run or another client is using the topics.
    pub foreign: u64,
    /// Error frames from the node.
    pub errors: u64,
    /// Why the connection ended before the run stopped it, if it did.
    pub ended_early: Option<String>,
}

impl SubOutcome {
    /// Adds another subscriber's counts (not its `ended_early`).
    pub fn add(&mut self, o: &SubOutcome) {
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.foreign += o.foreign;
        self.errors += o.errors;
    }
}

/// What the receive loop needs to know about the run.
#[derive(Clone)]
pub struct RecvCtx {
    pub shared: Arc<Shared>,
    pub clock: Clock,
    pub publishers: usize,
}

/// Why [`pump`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// `stop` was cancelled: the connection is still open.
    Stopped,
    /// The deadline passed: the connection is still open.
    Deadline,
    /// The node ended the subscription with `recovery_overflow` (recovery mode only).
    Overflow,
    /// The connection is gone or unusable; why.
    Lost(String),
}

/// What a subscriber keeps across its connections: counts, sequence state, and in recovery
/// mode the history bookkeeping.
pub struct SubState {
    pub out: SubOutcome,
    seqs: SeqTracker,
    latencies: Vec<u64>,
    /// Offsets, `since` positions and replay timing (recovery mode).
    pub history: Option<Book>,
}

impl SubState {
    /// `topics` is the number of topics the subscriber holds.
    pub fn new(topics: usize, publishers: usize, history: Option<Book>) -> Self {
        Self {
            out: SubOutcome::default(),
            seqs: SeqTracker::new(topics, publishers),
            latencies: Vec::new(),
            history,
        }
    }
}

/// Runs the receive loop until `stop` or the connection ends. `topics` are this
/// subscriber's topic indices, sorted. Give each subscriber its own child token: waiting on
/// a token shared by thousands of tasks would make them contend on its lock.
pub async fn receive(mut conn: Conn, id: usize, topics: Vec<u32>, ctx: RecvCtx, stop: CancellationToken) -> SubOutcome {
    let mut st = SubState::new(topics.len(), ctx.publishers, None);
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    match pump(&mut conn, id, &topics, &ctx, &mut st, cancelled, None).await {
        Ended::Stopped | Ended::Deadline | Ended::Overflow => {
            conn.wr.push_close(1000);
            let _ = conn.flush_frames().await;
        }
        Ended::Lost(why) => st.out.ended_early = Some(why),
    }
    st.out
}

/// Reads and counts deliveries on `conn` until `cancelled` completes, `deadline` passes,
/// or the connection ends. Counts accumulate in `st`, so a subscriber that reconnects
/// keeps one account. `cancelled` is created once per subscriber: re-polling a registered
/// waiter is cheap, creating one per read is not.
pub async fn pump(
    conn: &mut Conn,
    id: usize,
    topics: &[u32],
    ctx: &RecvCtx,
    st: &mut SubState,
    mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    deadline: Option<Instant>,
) -> Ended {
    debug_assert!(topics.windows(2).all(|w| w[0] < w[1]));
    let timer = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timer);
    let out = &mut st.out;
    loop {
        let now = ctx.clock.now_us();
        let mut batch = 0u64;
        let (mut skipped, mut late) = (0u64, 0u64);
        let mut ended = None;
        loop {
            let f = match frame::parse(conn.rbuf.data()) {
                Ok(Parsed::Frame(f)) => f,
                Ok(Parsed::Need(n)) => {
                    conn.rbuf.reserve_frame(n);
                    break;
                }
                Err(e) => {
                    ended = Some(Ended::Lost(e.to_string()));
                    break;
                }
            };
            let body = &conn.rbuf.data()[f.payload_start..f.payload_end];
            match f.opcode {
                OP_TEXT => {
                    let (stamp, offset) = match &st.history {
                        // A history topic's frames carry offset and epoch before `data`.
                        None => match payload::parse_delivery(body) {
                            Some(s) => (Some(s), None),
                            None => (wire::parse_delivery(body).stamp(), None),
                        },
                        Some(_) => match wire::parse_delivery(body) {
                            wire::Parsed::History(d) => (Some(d.stamp), Some((d.offset, d.epoch))),
                            wire::Parsed::Plain(s) => (Some(s), None),
                            wire::Parsed::Other => (None, None),
                        },
                    };
                    match stamp {
                        Some(stamp) => match topics.binary_search(&stamp.topic) {
                            Ok(slot) if (stamp.publisher as usize) < ctx.publishers => {
                                batch += 1;
                                st.latencies.push(now.saturating_sub(stamp.t_us));
                                match st.seqs.arrive(slot, stamp.publisher as usize, stamp.seq) {
                                    Arrival::InOrder { skipped: k } => skipped += k,
                                    Arrival::OutOfOrder => {
                                        out.out_of_order += 1;
                                        late += 1;
                                    }
                                    Arrival::Duplicate => out.duplicates += 1,
                                }
                                if let (Some(book), Some((offset, epoch))) = (&mut st.history, offset) {
                                    book.arrive(slot, offset, epoch, stamp.t_us, now);
                                }
                            }
                            _ => out.foreign += 1,
                        },
                        None if body.starts_with(payload::DELIVERY_HEAD) => out.foreign += 1,
                        None if body.starts_with(br#"{"type":"error""#) => {
                            out.errors += 1;
                            if st.history.is_some() && contains(body, b"\"recovery_overflow\"") {
                                ended = Some(Ended::Overflow);
                            }
                        }
                        None => {}
                    }
                }
                OP_PING => conn.wr.push(OP_PONG, &[body]),
                OP_CLOSE => {
                    let code = (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]));
                    let reason = body.get(2..).map(String::from_utf8_lossy).unwrap_or_default();
                    ended = Some(Ended::Lost(match code {
                        Some(c) => format!("closed by the node: {c} {reason}").trim_end().to_owned(),
                        None => "closed by the node".to_owned(),
                    }));
                    conn.wr.push(OP_CLOSE, &[&body[..body.len().min(2)]]);
                }
                _ => {}
            }
            conn.rbuf.consume(f.payload_end);
            if ended.is_some() {
                break;
            }
        }
        if batch > 0 {
            out.received += batch;
            ctx.shared.record_batch(id, batch, &st.latencies);
            st.latencies.clear();
            if skipped + late > 0 {
                ctx.shared.record_gaps(id, skipped, late);
            }
        }
        if conn.flush_frames().await.is_err() && ended.is_none() {
            ended = Some(Ended::Lost("write failed".into()));
        }
        if let Some(e) = ended {
            return e;
        }
        let read = tokio::select! {
            biased;
            _ = &mut cancelled => return Ended::Stopped,
            _ = &mut timer => return Ended::Deadline,
            r = conn.rbuf.fill(&mut conn.stream) => r,
        };
        match read {
            Ok(0) => return Ended::Lost("connection closed without a close frame".into()),
            Ok(_) => {}
            Err(e) => return Ended::Lost(format!("read failed: {e}")),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
