//! The hot receive path of a subscriber connection.
//!
//! One task per connection: read as much as the socket has into the connection's buffer,
//! take the clock once for the whole batch, walk the frames in place, read only the stamp
//! of each delivery (`payload::parse_delivery`: no JSON parser, no allocation), classify its
//! sequence, and add the batch to the shared counters and histogram with one atomic add and
//! one uncontended lock. Pings are answered inline (the task owns the whole socket).
//!
//! It does not decide when to stop: the scenario cancels `stop`, and the task then sends
//! Close 1000 and returns what it counted.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use super::frame::{self, Parsed, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use crate::payload;
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

/// What the receive loop needs to know about the run.
#[derive(Clone)]
pub struct RecvCtx {
    pub shared: Arc<Shared>,
    pub clock: Clock,
    pub publishers: usize,
}

/// Runs the receive loop until `stop` or the connection ends. `topics` are this
/// subscriber's topic indices, sorted. Give each subscriber its own child token: waiting on
/// a token shared by thousands of tasks would make them contend on its lock.
pub async fn receive(mut conn: Conn, id: usize, topics: Vec<u32>, ctx: RecvCtx, stop: CancellationToken) -> SubOutcome {
    debug_assert!(topics.windows(2).all(|w| w[0] < w[1]));
    let mut out = SubOutcome::default();
    let mut seqs = SeqTracker::new(topics.len(), ctx.publishers);
    let mut latencies: Vec<u64> = Vec::new();
    // Created once: re-polling a registered waiter is cheap, creating one per read is not.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let now = ctx.clock.now_us();
        let mut batch = 0u64;
        let (mut skipped, mut late) = (0u64, 0u64);
        let mut closing = false;
        loop {
            let f = match frame::parse(conn.rbuf.data()) {
                Ok(Parsed::Frame(f)) => f,
                Ok(Parsed::Need(n)) => {
                    conn.rbuf.reserve_frame(n);
                    break;
                }
                Err(e) => {
                    out.ended_early = Some(e.to_string());
                    closing = true;
                    break;
                }
            };
            let body = &conn.rbuf.data()[f.payload_start..f.payload_end];
            match f.opcode {
                OP_TEXT => match payload::parse_delivery(body) {
                    Some(st) => {
                        let slot = topics.binary_search(&st.topic);
                        match slot {
                            Ok(slot) if (st.publisher as usize) < ctx.publishers => {
                                batch += 1;
                                latencies.push(now.saturating_sub(st.t_us));
                                match seqs.arrive(slot, st.publisher as usize, st.seq) {
                                    Arrival::InOrder { skipped: k } => skipped += k,
                                    Arrival::OutOfOrder => {
                                        out.out_of_order += 1;
                                        late += 1;
                                    }
                                    Arrival::Duplicate => out.duplicates += 1,
                                }
                            }
                            _ => out.foreign += 1,
                        }
                    }
                    None if body.starts_with(payload::DELIVERY_HEAD) => out.foreign += 1,
                    None if body.starts_with(br#"{"type":"error""#) => out.errors += 1,
                    None => {}
                },
                OP_PING => conn.wr.push(OP_PONG, &[body]),
                OP_CLOSE => {
                    let code = (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]));
                    let reason = body.get(2..).map(String::from_utf8_lossy).unwrap_or_default();
                    out.ended_early = Some(match code {
                        Some(c) => format!("closed by the node: {c} {reason}").trim_end().to_owned(),
                        None => "closed by the node".to_owned(),
                    });
                    conn.wr.push(OP_CLOSE, &[&body[..body.len().min(2)]]);
                    closing = true;
                }
                _ => {}
            }
            conn.rbuf.consume(f.payload_end);
            if closing {
                break;
            }
        }
        if batch > 0 {
            out.received += batch;
            ctx.shared.record_batch(id, batch, &latencies);
            latencies.clear();
            if skipped + late > 0 {
                ctx.shared.record_gaps(id, skipped, late);
            }
        }
        if conn.flush_frames().await.is_err() && out.ended_early.is_none() {
            out.ended_early = Some("write failed".into());
            closing = true;
        }
        if closing {
            return out;
        }
        let read = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = conn.rbuf.fill(&mut conn.stream) => r,
        };
        match read {
            Ok(0) => {
                out.ended_early = Some("connection closed without a close frame".into());
                return out;
            }
            Ok(_) => {}
            Err(e) => {
                out.ended_early = Some(format!("read failed: {e}"));
                return out;
            }
        }
    }
    conn.wr.push_close(1000);
    let _ = conn.flush_frames().await;
    out
}
