//! What a relay running on one Redis Cluster master ("member", see `cluster`) and its
//! `ClusterRelay` tell each other ([`ClusterHooks`]): the member reports signs that the slot
//! map moved (a redirect, a lost connection) and the topics Redis dropped on its own (a
//! slot left the master); the cluster answers which slots the member's master serves, so
//! the member can pick a canary channel on one of its own slots.
//!
//! This file owns only the hand-over; reading the map and acting on it is `cluster`'s.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Evicted topics remembered at most; past it the cluster re-announces every topic.
const MAX_EVICTED: usize = 65_536;

/// The part one cluster shares with all its members.
#[derive(Default)]
pub(crate) struct HintBoard {
    wake: Notify,
    evicted: Mutex<Evicted>,
}

#[derive(Default)]
struct Evicted {
    topics: HashSet<Box<str>>,
    overflowed: bool,
}

impl HintBoard {
    /// Waits for the next hint (a permit is kept if one came while nobody waited).
    pub(crate) async fn wait(&self) {
        self.wake.notified().await;
    }

    /// The topics evicted since the last call, or `None` when too many were to remember
    /// them one by one (then every topic should be re-announced).
    pub(crate) fn take_evicted(&self) -> Option<Vec<Box<str>>> {
        let mut e = self.evicted.lock().unwrap_or_else(|p| p.into_inner());
        let overflowed = std::mem::take(&mut e.overflowed);
        let topics: Vec<Box<str>> = e.topics.drain().collect();
        (!overflowed).then_some(topics)
    }
}

/// One member's hooks: the shared board plus the question only the cluster can answer.
pub struct ClusterHooks {
    board: Arc<HintBoard>,
    owns_slot: Box<dyn Fn(u16) -> bool + Send + Sync>,
}

impl ClusterHooks {
    pub(crate) fn new(board: Arc<HintBoard>, owns_slot: Box<dyn Fn(u16) -> bool + Send + Sync>) -> Self {
        Self { board, owns_slot }
    }

    /// The slot map may have moved: the cluster reads it again soon.
    pub fn hint(&self) {
        self.board.wake.notify_one();
    }

    /// Redis dropped `topic`'s channel on this master on its own: the cluster re-announces
    /// it to its owner once it has read the map again.
    pub fn evicted(&self, topic: &str) {
        {
            let mut e = self.board.evicted.lock().unwrap_or_else(|p| p.into_inner());
            if e.topics.len() < MAX_EVICTED {
                e.topics.insert(topic.into());
            } else {
                e.overflowed = true;
            }
        }
        self.hint();
    }

    /// Whether this member's master serves `slot` in the map in use.
    pub fn owns_slot(&self, slot: u16) -> bool {
        (self.owns_slot)(slot)
    }
}

impl fmt::Debug for ClusterHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterHooks").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_handed_over_once_and_bounded() {
        let board = Arc::new(HintBoard::default());
        let hooks = ClusterHooks::new(board.clone(), Box::new(|s| s < 10));
        assert!(hooks.owns_slot(3) && !hooks.owns_slot(10));
        hooks.evicted("a");
        hooks.evicted("a");
        hooks.evicted("b");
        let mut got = board.take_evicted().unwrap();
        got.sort();
        assert_eq!(got, vec![Box::from("a"), Box::from("b")]);
        assert_eq!(board.take_evicted().unwrap(), Vec::<Box<str>>::new());
        for i in 0..=MAX_EVICTED {
            hooks.evicted(&format!("t{i}"));
        }
        assert_eq!(board.take_evicted(), None, "too many: re-announce everything");
        assert_eq!(board.take_evicted().unwrap(), Vec::<Box<str>>::new());
    }
}
