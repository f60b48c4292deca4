//! Keyset paging for the list endpoints (`GET /api/topics`, `GET /api/connections`).
//!
//! A page is the `limit` smallest keys greater than the `cursor` (the last key of the
//! previous page), in ascending order. The node may hold 100k topics, so nothing sorts or
//! collects them all: [`Smallest`] keeps a bounded max-heap of `limit + 1` entries while the
//! caller streams every key through it, O(n log limit) time and O(limit) memory per page.
//! The extra entry tells whether another page follows. Keys added or removed between two
//! requests are seen or not, as with any live listing; no key is ever returned twice.

use std::collections::BinaryHeap;

use super::error::ApiError;
use crate::query::param;

/// Entries per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// The `limit` and `cursor` query parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageParams {
    pub limit: usize,
    pub cursor: Option<String>,
}

impl PageParams {
    /// Parses `limit` (1..=1000, default 100) and `cursor` from a query string.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let limit = match param(query, "limit") {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| ApiError::InvalidParameter(format!("`limit` must be a number from 1 to {MAX_LIMIT}")))?,
        };
        let cursor = match param(query, "cursor") {
            None => None,
            Some(Ok(c)) if c.is_empty() => None,
            Some(Ok(c)) => Some(c),
            Some(Err(())) => {
                return Err(ApiError::InvalidParameter(
                    "`cursor` is not valid percent-encoded UTF-8".into(),
                ))
            }
        };
        Ok(Self { limit, cursor })
    }
}

/// Collects the `limit` smallest items whose key is above a cursor (see the module docs).
pub struct Smallest<T: Ord> {
    heap: BinaryHeap<T>,
    keep: usize,
}

impl<T: Ord> Smallest<T> {
    pub fn new(limit: usize) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(limit + 2),
            keep: limit + 1,
        }
    }

    /// Offers one item; the caller has already skipped items at or below the cursor.
    pub fn offer(&mut self, item: T) {
        if self.heap.len() < self.keep {
            self.heap.push(item);
        } else if let Some(mut top) = self.heap.peek_mut() {
            if item < *top {
                *top = item;
            }
        }
    }

    /// The page in ascending order, and whether more items follow it.
    pub fn finish(self) -> (Vec<T>, bool) {
        let limit = self.keep - 1;
        let mut items = self.heap.into_sorted_vec();
        let more = items.len() > limit;
        items.truncate(limit);
        (items, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        assert_eq!(
            PageParams::parse(None).unwrap(),
            PageParams {
                limit: 100,
                cursor: None
            }
        );
        let p = PageParams::parse(Some("limit=5&cursor=chat%2Fa")).unwrap();
        assert_eq!(p.limit, 5);
        assert_eq!(p.cursor.as_deref(), Some("chat/a"));
        for bad in ["limit=0", "limit=1001", "limit=x", "limit=-1", "cursor=%zz"] {
            assert!(PageParams::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_cover_everything_once_in_order() {
        let all: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 1000).collect();
        let mut seen = Vec::new();
        let mut cursor: Option<u64> = None;
        loop {
            let mut s = Smallest::new(33);
            for &x in &all {
                if cursor.is_none_or(|c| x > c) {
                    s.offer(x);
                }
            }
            let (page, more) = s.finish();
            cursor = page.last().copied();
            seen.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }
}
