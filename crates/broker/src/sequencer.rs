//! The order a history topic's messages are delivered in on this node: [`Sequence`], one
//! per history topic in the registry, under the topic's lock.
//!
//! Every message of a history topic reaches the broker from the relay with its offset
//! (the node's own publications too, see `history.rs`). The sequence delivers offset
//! `last + 1` at once and holds anything further ahead: a gap means the relay missed
//! messages (its subscription to Redis broke while other nodes published, or a message is
//! still in flight on another path). The first gap starts a fill: the broker reads the
//! missing offsets from history and hands them in with [`Sequence::offer`] like any other
//! message, after which the held ones follow in order. A duplicate (an offset delivered
//! already) is dropped. So local subscribers see each topic's offsets once and in order.
//!
//! What cannot be filled (history trimmed or expired past the gap, a read failing again
//! and again, or more than [`MAX_HELD`] messages held) is skipped: the held messages are
//! delivered, the loss is counted (`herald_history_gaps_total{outcome="lost"}`) and
//! logged. A new epoch (the stream's past was lost) restarts the sequence at the new
//! message.

use std::collections::BTreeMap;

use herald_protocol::{Payload, StreamPos};

use crate::registry::ConnId;

/// Messages held behind a gap, at most; past it the gap is given up.
pub const MAX_HELD: usize = 10_000;
/// Payload bytes held behind a gap, at most; past it the gap is given up.
pub const MAX_HELD_BYTES: usize = 32 << 20;

/// One message of a history topic on its way to local subscribers.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub pos: StreamPos,
    pub payload: Payload,
    /// The publishing connection, when it published on this node and must not get it back.
    pub skip_conn: Option<ConnId>,
}

/// What [`Sequence::offer`] did besides delivering.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    /// The offset was delivered already: dropped.
    pub duplicate: bool,
    /// A gap opened and nothing fills it yet: read history after this offset.
    pub fill_after: Option<u64>,
    /// Messages given up as lost (the hold overflowed).
    pub lost: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Sequence {
    epoch: Option<String>,
    /// The last offset delivered (meaningful once `epoch` is known).
    last: u64,
    held: BTreeMap<u64, Sequenced>,
    held_bytes: usize,
    /// A fill is running.
    filling: bool,
    /// Where the stream stood when a replay read it, before any message was delivered
    /// here: where a relink's fill starts then (it is not taken as delivered, so a late
    /// live copy of an earlier offset still reaches the plain subscribers).
    hint: Option<StreamPos>,
}

impl Sequence {
    /// The epoch and last offset delivered, once a message (or a position) was seen.
    pub fn position(&self) -> Option<StreamPos> {
        self.epoch.as_ref().map(|e| StreamPos {
            offset: self.last,
            epoch: e.clone(),
        })
    }

    pub fn is_filling(&self) -> bool {
        self.filling
    }

    /// Learns where the stream is without a message (a subscriber's read of the head),
    /// when nothing was delivered yet: later offsets up to `pos.offset` are then known to
    /// be in history, and a gap after it can be filled.
    pub fn learn(&mut self, pos: &StreamPos) {
        if self.epoch.is_none() {
            self.hint = Some(pos.clone());
        }
    }

    /// Offers one message: delivered through `deliver` (with whatever held messages it
    /// unblocks, in order), held behind a gap, or dropped as a duplicate.
    pub fn offer(&mut self, msg: Sequenced, mut deliver: impl FnMut(&Sequenced)) -> Offered {
        let mut out = Offered::default();
        match &self.epoch {
            Some(e) if *e == msg.pos.epoch => {}
            _ => {
                // First message, or a new epoch: the past is gone, start from here.
                self.epoch = Some(msg.pos.epoch.clone());
                self.last = msg.pos.offset.saturating_sub(1);
                self.held.clear();
                self.held_bytes = 0;
                self.hint = None;
            }
        }
        let offset = msg.pos.offset;
        if offset <= self.last || self.held.contains_key(&offset) {
            out.duplicate = true;
            return out;
        }
        if offset == self.last + 1 {
            deliver(&msg);
            self.last = offset;
            self.release(&mut deliver);
            return out;
        }
        self.held_bytes += msg.payload.len();
        self.held.insert(offset, msg);
        if self.held.len() > MAX_HELD || self.held_bytes > MAX_HELD_BYTES {
            out.lost = self.give_up(&mut deliver);
        } else if !self.filling {
            self.filling = true;
            out.fill_after = Some(self.last);
        }
        out
    }

    /// Delivers the held messages that follow `last`.
    fn release(&mut self, deliver: &mut impl FnMut(&Sequenced)) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.last + 1 {
                break;
            }
            let m = entry.remove();
            self.held_bytes -= m.payload.len();
            deliver(&m);
            self.last = m.pos.offset;
        }
    }

    /// The fill found nothing more (history holds no more, or reading failed for good):
    /// whatever is still missing is lost; the held messages are delivered. Returns how
    /// many offsets were skipped.
    pub fn give_up(&mut self, deliver: &mut impl FnMut(&Sequenced)) -> u64 {
        let mut lost = 0;
        while let Some((offset, m)) = self.held.pop_first() {
            self.held_bytes -= m.payload.len();
            lost += offset - self.last - 1;
            deliver(&m);
            self.last = offset;
            self.release(deliver);
        }
        self.filling = false;
        lost
    }

    /// A fill read returned: `more` when the read was full (another read may find more).
    /// Returns `Some(after)` to read again, `None` when the fill is over.
    pub fn fill_step(&mut self, more: bool, deliver: &mut impl FnMut(&Sequenced)) -> (Option<u64>, u64) {
        if self.held.is_empty() && !more {
            self.filling = false;
            return (None, 0);
        }
        if more {
            return (Some(self.last), 0);
        }
        // Nothing more in history, yet something is still missing before the held ones.
        let lost = self.give_up(deliver);
        (None, lost)
    }

    /// Starts a fill without a gap in sight (the relay relinked: other nodes may have
    /// published meanwhile); `None` when a fill runs already or nothing is known yet.
    pub fn start_fill(&mut self) -> Option<u64> {
        if self.filling {
            return None;
        }
        let after = match (&self.epoch, &self.hint) {
            (Some(_), _) => self.last,
            (None, Some(h)) => h.offset,
            (None, None) => return None,
        };
        self.filling = true;
        Some(after)
    }

    /// The offset after which a fill reads next: the last delivered, or the hint.
    pub fn fill_from(&self) -> Option<u64> {
        match (&self.epoch, &self.hint) {
            (Some(_), _) => Some(self.last),
            (None, Some(h)) => Some(h.offset),
            (None, None) => None,
        }
    }

    /// The epoch a fill must read in: the delivered one, or the hint's.
    pub fn fill_epoch(&self) -> Option<&str> {
        self.epoch.as_deref().or(self.hint.as_ref().map(|h| h.epoch.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(offset: u64, epoch: &str) -> Sequenced {
        Sequenced {
            pos: StreamPos {
                offset,
                epoch: epoch.into(),
            },
            payload: Payload::text(bytes::Bytes::from(offset.to_string())),
            skip_conn: None,
        }
    }

    #[test]
    fn in_order_once_with_gaps_filled() {
        let mut s = Sequence::default();
        let mut got = Vec::new();
        let mut d = |m: &Sequenced| got.push(m.pos.offset);
        assert_eq!(s.offer(msg(5, "e"), &mut d), Offered::default());
        assert!(s.offer(msg(5, "e"), &mut d).duplicate);
        assert_eq!(s.offer(msg(8, "e"), &mut d).fill_after, Some(5));
        assert_eq!(s.offer(msg(9, "e"), &mut d).fill_after, None, "one fill at a time");
        assert!(s.is_filling());
        // The fill reads 6 and 7.
        s.offer(msg(6, "e"), &mut d);
        s.offer(msg(7, "e"), &mut d);
        assert_eq!(s.fill_step(false, &mut d), (None, 0));
        assert!(!s.is_filling());
        assert_eq!(got, vec![5, 6, 7, 8, 9]);
    }

    #[test]
    fn what_history_lost_is_skipped_and_counted() {
        let mut s = Sequence::default();
        let mut got = Vec::new();
        let mut d = |m: &Sequenced| got.push(m.pos.offset);
        s.offer(msg(1, "e"), &mut d);
        assert_eq!(s.offer(msg(4, "e"), &mut d).fill_after, Some(1));
        s.offer(msg(2, "e"), &mut d); // the fill found 2, not 3
        assert_eq!(s.fill_step(false, &mut d), (None, 1));
        s.offer(msg(5, "e"), &mut d);
        assert_eq!(got, vec![1, 2, 4, 5]);
    }

    #[test]
    fn a_new_epoch_restarts_and_relink_fills_from_the_last() {
        let mut s = Sequence::default();
        let mut got = Vec::new();
        let mut d = |m: &Sequenced| got.push((m.pos.offset, m.pos.epoch.clone()));
        assert_eq!(s.start_fill(), None, "nothing known yet");
        s.learn(&StreamPos {
            offset: 3,
            epoch: "a".into(),
        });
        assert_eq!(s.fill_from(), Some(3), "a relink would fill after the hint");
        s.offer(msg(2, "a"), &mut d); // a late live copy before the hint still goes out
        s.offer(msg(3, "a"), &mut d);
        s.offer(msg(4, "a"), &mut d);
        assert_eq!(s.start_fill(), Some(4));
        assert_eq!(s.start_fill(), None);
        assert_eq!(s.fill_step(false, &mut d), (None, 0));
        s.offer(msg(1, "b"), &mut d);
        assert_eq!(s.position().unwrap().epoch, "b");
        assert_eq!(
            got,
            vec![
                (2, "a".to_string()),
                (3, "a".to_string()),
                (4, "a".to_string()),
                (1, "b".to_string())
            ]
        );
    }

    #[test]
    fn an_overflowing_hold_is_given_up() {
        let mut s = Sequence::default();
        let mut n = 0u64;
        let mut d = |_: &Sequenced| n += 1;
        s.offer(msg(1, "e"), &mut d);
        let mut lost = 0;
        for o in 3..(3 + MAX_HELD as u64 + 1) {
            lost += s.offer(msg(o, "e"), &mut d).lost;
        }
        assert_eq!(lost, 1, "offset 2 is given up");
        assert!(!s.is_filling());
        assert_eq!(n, 1 + MAX_HELD as u64 + 1);
    }
}
