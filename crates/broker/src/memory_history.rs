//! [`MemoryStreams`]: topic history in this process's memory, for the memory relay (a
//! single node, or the members of an in-process hub).
//!
//! One ring per topic with history, in a sharded map: a `VecDeque` of stored messages
//! (payloads share the published `Bytes`), bounded by the policy's message count and byte
//! size, trimmed oldest first. Messages older than the TTL are dropped when the stream is
//! next touched and by [`MemoryStreams::sweep`], which the node runs about once a second
//! (one task for all topics, none per topic); a stream that holds nothing and saw no
//! publish for a TTL is removed, and the next message starts a new epoch at offset 1.
//! Epochs are new at every start of the process: a restarted node's history is gone,
//! and its clients are told so (`recovered: false`).
//!
//! Appending holds the topic's ring lock while the caller delivers the message (see
//! `relay.rs`), so two publishers to one topic are numbered and delivered in the same
//! order; other topics are not held up (their rings have their own locks).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use herald_protocol::{Payload, StreamPos};

use crate::broker::now_micros;
use crate::history::{HistoryPage, StoredMessage, StreamPolicy, MAX_READ};

/// Bytes counted per stored message on top of its payload (offset, time, the deque slot,
/// the payload's handle): what the memory gauge adds per message.
pub const MESSAGE_OVERHEAD: usize = 48;

/// One topic's stream.
struct Ring {
    epoch: Arc<str>,
    /// The last offset given out (0: none yet).
    last: u64,
    messages: VecDeque<StoredMessage>,
    /// Payload bytes held plus [`MESSAGE_OVERHEAD`] per message.
    bytes: usize,
    /// When the last message was appended (or the stream created), microseconds.
    touched_micros: u64,
    ttl: Duration,
    /// Removed from the map: a caller that finds it dead starts over.
    dead: bool,
}

/// What a sweep or a change did to the totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamTotals {
    pub streams: i64,
    pub messages: i64,
    pub bytes: i64,
}

/// See the module docs.
pub struct MemoryStreams {
    streams: DashMap<Arc<str>, Arc<Mutex<Ring>>>,
    /// This process's part of every epoch.
    process_epoch: String,
    /// Numbers the streams created by this process (the rest of the epoch).
    created: AtomicU64,
    messages: AtomicI64,
    bytes: AtomicI64,
}

impl Default for MemoryStreams {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(ring: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    // Every mutation keeps the ring consistent step by step; a poisoned lock is usable.
    ring.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStreams {
    pub fn new() -> Self {
        use rand::Rng;
        let process_epoch: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(10)
            .map(char::from)
            .collect();
        Self {
            streams: DashMap::new(),
            process_epoch,
            created: AtomicU64::new(0),
            messages: AtomicI64::new(0),
            bytes: AtomicI64::new(0),
        }
    }

    fn new_epoch(&self) -> Arc<str> {
        let n = self.created.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.process_epoch).into()
    }

    /// The ring of `topic`, created (empty, new epoch) when missing, locked and alive.
    fn ring(&self, topic: &str, policy: &StreamPolicy) -> (Arc<Mutex<Ring>>, u64) {
        let now = now_micros();
        loop {
            let ring = match self.streams.get(topic) {
                Some(r) => r.value().clone(),
                None => self
                    .streams
                    .entry(Arc::from(topic))
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(Ring {
                            epoch: self.new_epoch(),
                            last: 0,
                            messages: VecDeque::new(),
                            bytes: 0,
                            touched_micros: now,
                            ttl: policy.ttl,
                            dead: false,
                        }))
                    })
                    .value()
                    .clone(),
            };
            if !lock(&ring).dead {
                return (ring, now);
            }
            std::thread::yield_now();
        }
    }

    /// Drops what the TTL and the bounds no longer allow; returns the change in totals.
    fn trim(&self, r: &mut Ring, now: u64, policy: Option<&StreamPolicy>) {
        let ttl = r.ttl.as_micros() as u64;
        let (mut gone, mut freed) = (0i64, 0usize);
        while let Some(m) = r.messages.front() {
            let expired = now.saturating_sub(m.published_at_micros) > ttl;
            let over = policy.is_some_and(|p| {
                r.messages.len() > p.size || (p.max_bytes > 0 && r.bytes > p.max_bytes && r.messages.len() > 1)
            });
            if !expired && !over {
                break;
            }
            let m = r.messages.pop_front().expect("front exists");
            let b = m.payload.len() + MESSAGE_OVERHEAD;
            r.bytes -= b;
            freed += b;
            gone += 1;
        }
        if gone > 0 {
            self.messages.fetch_sub(gone, Ordering::Relaxed);
            self.bytes.fetch_sub(freed as i64, Ordering::Relaxed);
        }
    }

    /// Appends a message to `topic`'s stream and calls `deliver` with its position while the
    /// stream is still locked (see the module docs); returns the position.
    pub fn append(
        &self,
        topic: &str,
        payload: &Payload,
        published_at_micros: u64,
        policy: &StreamPolicy,
        deliver: impl FnOnce(&StreamPos),
    ) -> StreamPos {
        let (ring, now) = self.ring(topic, policy);
        let mut r = lock(&ring);
        r.ttl = policy.ttl;
        if r.messages.is_empty() && r.last > 0 && now.saturating_sub(r.touched_micros) > policy.ttl.as_micros() as u64 {
            // Expired as a whole but not swept yet: the past is gone, so is the epoch.
            r.epoch = self.new_epoch();
            r.last = 0;
        }
        r.last += 1;
        r.touched_micros = now;
        let b = payload.len() + MESSAGE_OVERHEAD;
        r.bytes += b;
        let offset = r.last;
        r.messages.push_back(StoredMessage {
            offset,
            published_at_micros,
            payload: payload.clone(),
        });
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(b as i64, Ordering::Relaxed);
        self.trim(&mut r, now, Some(policy));
        let pos = StreamPos {
            offset: r.last,
            epoch: r.epoch.to_string(),
        };
        deliver(&pos);
        pos
    }

    /// Up to `limit` (at most [`MAX_READ`]) messages after `after`, and the head.
    pub fn read(&self, topic: &str, after: u64, limit: usize, policy: &StreamPolicy) -> HistoryPage {
        let (ring, now) = self.ring(topic, policy);
        let mut r = lock(&ring);
        self.trim(&mut r, now, None);
        let head = StreamPos {
            offset: r.last,
            epoch: r.epoch.to_string(),
        };
        let limit = limit.min(MAX_READ);
        let messages = match r.messages.front() {
            Some(first) if after < r.last => {
                // Offsets in the ring are contiguous.
                let skip = after.saturating_sub(first.offset - 1) as usize;
                r.messages.iter().skip(skip).take(limit).cloned().collect()
            }
            _ => Vec::new(),
        };
        HistoryPage { head, messages }
    }

    /// The most recent message (if any) and the head.
    pub fn latest(&self, topic: &str, policy: &StreamPolicy) -> HistoryPage {
        let (ring, now) = self.ring(topic, policy);
        let mut r = lock(&ring);
        self.trim(&mut r, now, None);
        HistoryPage {
            head: StreamPos {
                offset: r.last,
                epoch: r.epoch.to_string(),
            },
            messages: r.messages.back().cloned().into_iter().collect(),
        }
    }

    /// Drops expired messages everywhere and removes streams that hold nothing and saw no
    /// publish for a TTL. Takes each stream's lock in turn, briefly.
    pub fn sweep(&self) -> StreamTotals {
        let now = now_micros();
        let rings: Vec<(Arc<str>, Arc<Mutex<Ring>>)> = self
            .streams
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (topic, ring) in rings {
            let mut r = lock(&ring);
            self.trim(&mut r, now, None);
            if r.messages.is_empty() && now.saturating_sub(r.touched_micros) > r.ttl.as_micros() as u64 {
                r.dead = true;
                drop(r);
                self.streams.remove_if(&topic, |_, v| Arc::ptr_eq(v, &ring));
            }
        }
        self.totals()
    }

    /// Streams, messages and bytes held now.
    pub fn totals(&self) -> StreamTotals {
        StreamTotals {
            streams: self.streams.len() as i64,
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(size: usize, max_bytes: usize, ttl_ms: u64) -> StreamPolicy {
        StreamPolicy {
            size,
            max_bytes,
            ttl: Duration::from_millis(ttl_ms),
            latest_on_subscribe: false,
        }
    }

    fn text(s: &str) -> Payload {
        Payload::text(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn offsets_count_from_one_and_reads_page() {
        let s = MemoryStreams::new();
        let p = policy(100, 0, 60_000);
        let empty = s.read("t", 0, 10, &p);
        assert_eq!(empty.head.offset, 0);
        assert!(empty.continues(0, &empty.head.epoch));
        for i in 1..=5u64 {
            let mut seen = None;
            let pos = s.append("t", &text(&i.to_string()), now_micros(), &p, |p| seen = Some(p.clone()));
            assert_eq!(pos.offset, i);
            assert_eq!(seen, Some(pos.clone()));
            assert_eq!(pos.epoch, empty.head.epoch, "reading created the stream and its epoch");
        }
        let page = s.read("t", 2, 2, &p);
        assert_eq!(page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![3, 4]);
        assert!(page.continues(2, &page.head.epoch));
        assert!(!page.continues(2, "another epoch"));
        assert_eq!(s.read("t", 5, 10, &p).messages.len(), 0);
        assert!(s.read("t", 5, 10, &p).continues(5, &page.head.epoch));
        assert!(
            !s.read("t", 9, 10, &p).continues(9, &page.head.epoch),
            "ahead of the head"
        );
        assert_eq!(s.latest("t", &p).messages[0].offset, 5);
        assert_eq!(s.totals().messages, 5);
    }

    #[test]
    fn bounded_by_count_and_bytes_and_trimming_is_a_loss() {
        let s = MemoryStreams::new();
        let p = policy(3, 0, 60_000);
        for i in 0..10 {
            s.append("t", &text(&format!("m{i}")), now_micros(), &p, |_| {});
        }
        let page = s.read("t", 0, 100, &p);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert!(!page.continues(0, &page.head.epoch), "1..7 were trimmed");
        assert!(page.continues(7, &page.head.epoch));
        let b = policy(1000, 2 * (100 + MESSAGE_OVERHEAD), 60_000);
        for _ in 0..10 {
            s.append("u", &text(&"x".repeat(100)), now_micros(), &b, |_| {});
        }
        assert_eq!(s.read("u", 0, 100, &b).messages.len(), 2);
        assert_eq!(s.totals().messages, 5);
        assert_eq!(
            s.totals().bytes as usize,
            3 * (2 + MESSAGE_OVERHEAD) + 2 * (100 + MESSAGE_OVERHEAD)
        );
    }

    #[test]
    fn ttl_expires_messages_then_the_stream_and_its_epoch() {
        let s = MemoryStreams::new();
        let p = policy(100, 0, 30);
        let old = now_micros() - 1_000_000;
        s.append("t", &text("old"), old, &p, |_| {});
        let first = s.append("t", &text("new"), now_micros(), &p, |_| {});
        let page = s.read("t", 0, 10, &p);
        assert_eq!(page.messages.len(), 1, "the old message is past its TTL");
        assert!(!page.continues(0, &first.epoch));
        std::thread::sleep(Duration::from_millis(60));
        let totals = s.sweep();
        assert_eq!(totals, StreamTotals::default(), "empty and idle for a TTL: removed");
        let again = s.append("t", &text("again"), now_micros(), &p, |_| {});
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch, "a lost past means a new epoch");
    }
}
