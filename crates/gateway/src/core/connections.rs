//! The node's table of open connections and their slots: how many may be open at once,
//! which number the next one gets, and what the admin API and the drain know about each.
//!
//! It does not run connections (that is `session/`) and does not route messages (that is
//! the broker): it only counts and lists them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use herald_broker::{ConnId, Outbox};
use std::sync::Arc;

/// What the admin API and the drain know about one open connection.
pub struct ConnInfo {
    pub outbox: Arc<Outbox>,
    pub peer: SocketAddr,
    pub mode: &'static str,
    pub opened: Instant,
}

/// See the module docs.
pub struct Connections {
    table: DashMap<ConnId, ConnInfo>,
    /// Most connections open at once (the configured limit, or less when the process
    /// has fewer file descriptors).
    max: usize,
    open: AtomicUsize,
    next: AtomicU64,
}

impl Connections {
    pub fn new(max: usize) -> Self {
        Self {
            table: DashMap::new(),
            max,
            open: AtomicUsize::new(0),
            next: AtomicU64::new(0),
        }
    }

    /// The limit in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a slot, or `false` at the limit. Every `true` must be matched by one
    /// [`Connections::release_slot`].
    pub(crate) fn take_slot(&self) -> bool {
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(crate) fn release_slot(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn next_id(&self) -> ConnId {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn insert(&self, id: ConnId, info: ConnInfo) {
        self.table.insert(id, info);
    }

    pub(crate) fn remove(&self, id: ConnId) {
        self.table.remove(&id);
    }

    /// Open connections (registered in the table).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Calls `f` with `id`'s entry, if it is open.
    pub fn with<R>(&self, id: ConnId, f: impl FnOnce(&ConnInfo) -> R) -> Option<R> {
        self.table.get(&id).map(|e| f(e.value()))
    }

    /// Calls `f` for every open connection, one shard's read lock at a time; `f` must not
    /// block or touch this table.
    pub fn for_each(&self, mut f: impl FnMut(ConnId, &ConnInfo)) {
        for e in self.table.iter() {
            f(*e.key(), e.value());
        }
    }

    /// Every open connection's outbox (the drain closes them).
    pub fn outboxes(&self) -> Vec<Arc<Outbox>> {
        self.table.iter().map(|e| e.value().outbox.clone()).collect()
    }
}
