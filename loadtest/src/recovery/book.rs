//! One recovering subscriber's bookkeeping, per topic it holds: the position to resubscribe
//! from (`since`), the offsets it received (distinct, duplicate, out of order) and, after
//! each reconnect, when it caught up with live messages.
//!
//! The rules (docs/loadtest.md, "Recovery mode"):
//! - The position is the highest offset received in the current epoch; before any message,
//!   the ack's `positions` entry. A resubscribe that recovered keeps it (the ack's position
//!   is only trusted where the client has nothing better: first subscribe, or
//!   `recovered: false`).
//! - Completeness: a topic's *segment* starts at the position of the first ack (offset P)
//!   and ends at the stream's final head H after the run drained (or, unknown, the highest
//!   offset seen). Exactly H − P distinct offsets must have arrived. An offset at or below
//!   P, or one seen before, is a duplicate; one below the highest seen that fills a gap is
//!   out of order. A new epoch closes the segment and opens one at the new position.
//! - Replay latency: from the start of a reconnect (µs on the run's clock) to the arrival of
//!   the first message of the topic stamped (published) at or after that start.
//!
//! It does no I/O; `scenario/recovery.rs` feeds it.

use std::collections::HashMap;

use super::wire::{Ack, Position};

/// Highest offsets below the current one whose arrival is remembered one by one.
const WINDOW: u64 = 64;

/// How one arriving offset counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetArrival {
    /// Above everything seen so far (`skipped` offsets in between are missing so far).
    New { skipped: u64 },
    /// Fills an earlier gap (or too far below to tell: counted as such).
    OutOfOrder,
    /// At or below the segment start, or seen before.
    Duplicate,
}

/// Offsets of one topic received by one subscriber, and where it resubscribes from.
#[derive(Debug, Clone)]
pub struct TopicBook {
    epoch: String,
    /// Segment start P: offsets up to it were never owed.
    floor: u64,
    /// Highest offset seen (or the floor): the `since` offset.
    last: u64,
    /// Bit i set: offset `last - i` has arrived (or is at or below the floor).
    window: u64,
    /// Distinct offsets of the current segment received.
    distinct: u64,
    /// Closed segments (epoch changes): owed and received.
    closed_owed: u64,
    closed_distinct: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub epoch_changes: u64,
}

impl TopicBook {
    /// Starts at a position (the first ack's).
    pub fn new(at: &Position) -> Self {
        Self {
            epoch: at.epoch.clone(),
            floor: at.offset,
            last: at.offset,
            window: u64::MAX,
            distinct: 0,
            closed_owed: 0,
            closed_distinct: 0,
            duplicates: 0,
            out_of_order: 0,
            epoch_changes: 0,
        }
    }

    /// Where to resubscribe from.
    pub fn position(&self) -> Position {
        Position {
            offset: self.last,
            epoch: self.epoch.clone(),
        }
    }

    /// Closes the current segment and opens one at `at` (a new epoch).
    fn restart(&mut self, at: Position) {
        self.closed_owed += self.last - self.floor;
        self.closed_distinct += self.distinct;
        self.epoch_changes += 1;
        *self = Self {
            closed_owed: self.closed_owed,
            closed_distinct: self.closed_distinct,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            epoch_changes: self.epoch_changes,
            ..Self::new(&at)
        };
    }

    /// A resubscribe's answer for this topic: `recovered` (None when the ack did not say)
    /// and the ack's position. Only a loss lets the ack's position replace ours.
    pub fn on_resubscribed(&mut self, recovered: Option<bool>, at: Option<&Position>) {
        if recovered == Some(true) {
            return;
        }
        let Some(at) = at else { return };
        if at.epoch != self.epoch {
            self.restart(at.clone());
        } else if at.offset > self.last {
            // History was trimmed past our position: what lies between is lost (it stays
            // owed, so it shows as missing).
            self.note(at.offset, false);
        }
    }

    /// Moves `last` up to `offset`; `arrived` marks the offset itself as received.
    fn note(&mut self, offset: u64, arrived: bool) -> u64 {
        let shift = offset - self.last;
        self.window = if shift >= WINDOW { 0 } else { self.window << shift };
        if arrived {
            self.window |= 1;
        }
        self.last = offset;
        shift - 1
    }

    /// A message of this topic arrived.
    pub fn arrive(&mut self, offset: u64, epoch: &[u8]) -> OffsetArrival {
        if epoch != self.epoch.as_bytes() {
            // The stream's past was lost under us: the new epoch starts before this one.
            let epoch = String::from_utf8_lossy(epoch).into_owned();
            self.restart(Position {
                offset: offset.saturating_sub(1),
                epoch,
            });
        }
        if offset > self.last {
            self.distinct += 1;
            return OffsetArrival::New {
                skipped: self.note(offset, true),
            };
        }
        let back = self.last - offset;
        if offset <= self.floor {
            self.duplicates += 1;
            return OffsetArrival::Duplicate;
        }
        if back < WINDOW {
            let bit = 1u64 << back;
            if self.window & bit != 0 {
                self.duplicates += 1;
                return OffsetArrival::Duplicate;
            }
            self.window |= bit;
        }
        self.distinct += 1;
        self.out_of_order += 1;
        OffsetArrival::OutOfOrder
    }

    /// The account at the end of the run, against the stream's final head (if known).
    pub fn account(&self, head: Option<&Position>) -> Account {
        let end = match head {
            Some(h) if h.epoch == self.epoch => h.offset.max(self.last),
            _ => self.last,
        };
        let owed = self.closed_owed + (end - self.floor);
        let received = self.closed_distinct + self.distinct;
        Account {
            owed,
            received,
            missing: owed.saturating_sub(received),
            behind_head: end - self.last,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            epoch_changes: self.epoch_changes,
            head_known: head.is_some_and(|h| h.epoch == self.epoch),
        }
    }
}

/// What one (subscriber, topic) pair owed and received; adds up over pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Account {
    /// Distinct offsets owed: H − P per segment.
    pub owed: u64,
    /// Distinct offsets received.
    pub received: u64,
    pub missing: u64,
    /// H − highest offset seen: the tail that never arrived.
    pub behind_head: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub epoch_changes: u64,
    /// The final head was known (same epoch); otherwise `owed` ends at the highest seen.
    pub head_known: bool,
}

impl Account {
    /// Whether every owed offset arrived exactly once, in order.
    pub fn complete(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.out_of_order == 0
    }
}

/// Why an ack could not start or continue the bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("the subscribe ack gave no position for {0}: the topic has no history (add a [[history]] entry)")]
    NoHistory(String),
}

/// All of one subscriber's topics (by slot, the order of its sorted topic indices), plus
/// its replay timing.
#[derive(Debug, Clone)]
pub struct Book {
    pub names: Vec<String>,
    pub topics: Vec<TopicBook>,
    /// `recovered: false` answers (or a resubscribe ack that did not say).
    pub not_recovered: u64,
    /// Start of the reconnect being timed (µs on the run's clock) and, per slot, whether
    /// that topic has caught up.
    catching_up: Option<(u64, Vec<bool>)>,
    /// Replay latencies, µs: one per (reconnect, topic) that caught up.
    pub replay_us: Vec<u64>,
    /// (reconnect, topic) pairs that had not caught up when the next drop or the end came.
    pub unmeasured: u64,
}

impl Book {
    /// From the first subscribe's ack: every topic must have a position.
    pub fn start(names: Vec<String>, ack: &Ack) -> Result<Self, BookError> {
        let topics = names
            .iter()
            .map(|n| {
                ack.positions
                    .get(n)
                    .map(TopicBook::new)
                    .ok_or_else(|| BookError::NoHistory(n.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            names,
            topics,
            not_recovered: 0,
            catching_up: None,
            replay_us: Vec::new(),
            unmeasured: 0,
        })
    }

    /// The `since` entries for a resubscribe.
    pub fn since(&self) -> Vec<(String, Position)> {
        self.names
            .iter()
            .zip(&self.topics)
            .map(|(n, t)| (n.clone(), t.position()))
            .collect()
    }

    /// A reconnect starts at `t_us`: the replay timer of every topic starts.
    pub fn begin_reconnect(&mut self, t_us: u64) {
        self.end_timing();
        self.catching_up = Some((t_us, vec![false; self.topics.len()]));
    }

    /// The connection is gone (drop or end of run): topics not caught up are unmeasured.
    pub fn end_timing(&mut self) {
        if let Some((_, done)) = self.catching_up.take() {
            self.unmeasured += done.iter().filter(|d| !**d).count() as u64;
        }
    }

    /// The resubscribe's ack.
    pub fn on_resubscribed(&mut self, ack: &Ack) {
        for (name, t) in self.names.iter().zip(self.topics.iter_mut()) {
            let recovered = ack.recovered.get(name).copied();
            if recovered != Some(true) {
                self.not_recovered += 1;
            }
            t.on_resubscribed(recovered, ack.positions.get(name));
        }
    }

    /// A delivery of slot `slot`, stamped `sent_us`, read at `now_us`.
    #[inline]
    pub fn arrive(&mut self, slot: usize, offset: u64, epoch: &[u8], sent_us: u64, now_us: u64) -> OffsetArrival {
        if let Some((t_r, done)) = &mut self.catching_up {
            if !done[slot] && sent_us >= *t_r {
                done[slot] = true;
                self.replay_us.push(now_us.saturating_sub(*t_r));
                if done.iter().all(|d| *d) {
                    self.catching_up = None;
                }
            }
        }
        self.topics[slot].arrive(offset, epoch)
    }

    /// Every topic's account against the final heads (by topic name).
    pub fn accounts<'a>(&'a self, heads: &'a HashMap<String, Position>) -> impl Iterator<Item = Account> + 'a {
        self.names
            .iter()
            .zip(&self.topics)
            .map(|(n, t)| t.account(heads.get(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OffsetArrival::*;

    fn pos(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn counts_distinct_duplicate_and_late_offsets() {
        let mut t = TopicBook::new(&pos(10, "e"));
        assert_eq!(t.arrive(11, b"e"), New { skipped: 0 });
        assert_eq!(t.arrive(12, b"e"), New { skipped: 0 });
        assert_eq!(t.arrive(12, b"e"), Duplicate, "the seam sent twice");
        assert_eq!(t.arrive(10, b"e"), Duplicate, "at the start position: never owed");
        assert_eq!(t.arrive(3, b"e"), Duplicate);
        assert_eq!(t.arrive(15, b"e"), New { skipped: 2 });
        assert_eq!(t.arrive(14, b"e"), OutOfOrder);
        assert_eq!(t.arrive(14, b"e"), Duplicate);
        assert_eq!(t.position(), pos(15, "e"), "since = highest seen");
        // Owed 11..=20 (head 20): received 11, 12, 14, 15; missing 13 and 16..=20.
        let a = t.account(Some(&pos(20, "e")));
        assert_eq!((a.owed, a.received, a.missing, a.behind_head), (10, 4, 6, 5));
        assert_eq!((a.duplicates, a.out_of_order), (4, 1));
        assert!(a.head_known && !a.complete());
        // Without the head, the account ends at the highest offset seen.
        let a = t.account(None);
        assert_eq!((a.owed, a.missing, a.head_known), (5, 1, false));
    }

    #[test]
    fn a_clean_stream_is_complete_and_far_gaps_still_count() {
        let mut t = TopicBook::new(&pos(0, "e"));
        for o in 1..=1000 {
            assert_eq!(t.arrive(o, b"e"), New { skipped: 0 });
        }
        let a = t.account(Some(&pos(1000, "e")));
        assert_eq!((a.owed, a.received, a.missing), (1000, 1000, 0));
        assert!(a.complete());
        assert_eq!(t.arrive(1200, b"e"), New { skipped: 199 });
        assert_eq!(
            t.arrive(1001, b"e"),
            OutOfOrder,
            "beyond the window: counted, not told apart"
        );
        assert_eq!(t.account(None).missing, 198);
    }

    #[test]
    fn resubscribing_keeps_our_position_unless_the_node_reports_loss() {
        let mut t = TopicBook::new(&pos(0, "e"));
        t.arrive(1, b"e");
        t.arrive(2, b"e");
        // Recovered: a (wrong) head in positions must not move us past 2.
        t.on_resubscribed(Some(true), Some(&pos(9, "e")));
        assert_eq!(t.position(), pos(2, "e"));
        // Trimmed history (same epoch): resume at the node's position; 3..=5 stay owed.
        t.on_resubscribed(Some(false), Some(&pos(5, "e")));
        assert_eq!(t.position(), pos(5, "e"));
        assert_eq!(t.arrive(6, b"e"), New { skipped: 0 });
        let a = t.account(Some(&pos(6, "e")));
        assert_eq!((a.owed, a.received, a.missing), (6, 3, 3));
        // A new epoch: the old segment closes at 6, the new one starts at the ack's 0.
        t.on_resubscribed(Some(false), Some(&pos(0, "f")));
        assert_eq!(t.position(), pos(0, "f"));
        t.arrive(1, b"f");
        let a = t.account(Some(&pos(1, "f")));
        assert_eq!((a.owed, a.received, a.missing, a.epoch_changes), (7, 4, 3, 1));
        // An epoch change seen in a message (no ack): a segment ending just before it.
        t.arrive(8, b"g");
        assert_eq!(t.position(), pos(8, "g"));
        let a = t.account(Some(&pos(8, "g")));
        assert_eq!((a.owed, a.received, a.epoch_changes), (8, 5, 2));
    }

    #[test]
    fn book_starts_from_positions_builds_since_and_counts_not_recovered() {
        let names = vec!["a".to_owned(), "b".to_owned()];
        let mut ack = Ack::default();
        ack.positions.insert("a".into(), pos(4, "e"));
        assert_eq!(
            Book::start(names.clone(), &ack).unwrap_err(),
            BookError::NoHistory("b".into())
        );
        ack.positions.insert("b".into(), pos(0, "z"));
        let mut b = Book::start(names, &ack).unwrap();
        b.arrive(0, 5, b"e", 0, 0);
        assert_eq!(b.since(), vec![("a".into(), pos(5, "e")), ("b".into(), pos(0, "z"))]);
        let mut re = Ack::default();
        re.recovered.insert("a".into(), true);
        re.recovered.insert("b".into(), false);
        b.on_resubscribed(&re);
        b.on_resubscribed(&Ack::default()); // says nothing: counted as not recovered
        assert_eq!(b.not_recovered, 3);
        let heads: HashMap<String, Position> = [("a".into(), pos(5, "e")), ("b".into(), pos(0, "z"))].into();
        assert!(b.accounts(&heads).all(|a| a.complete()));
    }

    #[test]
    fn replay_latency_runs_from_reconnect_to_the_first_newer_message() {
        let names = vec!["a".to_owned(), "b".to_owned()];
        let mut ack = Ack::default();
        ack.positions.insert("a".into(), pos(0, "e"));
        ack.positions.insert("b".into(), pos(0, "e"));
        let mut b = Book::start(names, &ack).unwrap();
        b.begin_reconnect(1_000);
        b.arrive(0, 1, b"e", 900, 1_500); // replayed: published before the reconnect
        b.arrive(0, 2, b"e", 1_000, 1_700); // the first live one of "a"
        b.arrive(0, 3, b"e", 1_100, 1_800); // already caught up
        assert_eq!(b.replay_us, vec![700]);
        b.begin_reconnect(5_000); // "b" never caught up: unmeasured
        assert_eq!(b.unmeasured, 1);
        b.arrive(1, 1, b"e", 5_200, 5_300);
        b.arrive(0, 4, b"e", 5_001, 5_400);
        assert_eq!(b.replay_us, vec![700, 300, 400]);
        b.end_timing();
        assert_eq!(b.unmeasured, 1, "both caught up");
    }
}
