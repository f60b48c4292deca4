//! The node's table of open connections and their slots: how many may be open at once,
//! which number the next one gets, and what the admin API and the drain know about each.
//!
//! It does not run connections (that is `session/`) and does not route messages (that is
//! the broker): it only counts and lists them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use std::sync::Arc;

use dashmap::DashMap;
use herald_broker::{ConnId, Outbox};

use crate::socket_budget::SocketBudget;

/// What the admin API and the drain know about one open connection.
pub struct ConnInfo {
    pub outbox: Arc<Outbox>,
    pub peer: SocketAddr,
    pub mode: &'static str,
    pub opened: Instant,
    /// The user (the token's `sub`), `None` when anonymous.
    pub user: Option<Arc<str>>,
}

/// Where connection slots come from.
enum Slots {
    /// The node's public socket budget (`socket_budget.rs`): sessions count against the
    /// descriptor budget shared with handshakes.
    Budget(Arc<SocketBudget>),
    /// A plain limit (a core outside a node: tests, embedding).
    Limit { max: usize, open: AtomicUsize },
}

/// See the module docs.
pub struct Connections {
    table: DashMap<ConnId, ConnInfo>,
    slots: Slots,
    next: AtomicU64,
}

impl Connections {
    /// A table with its own limit of `max` open connections.
    pub fn new(max: usize) -> Self {
        Self::from_slots(Slots::Limit {
            max,
            open: AtomicUsize::new(0),
        })
    }

    /// A table whose slots are the sessions of the node's public socket budget.
    pub fn with_budget(budget: Arc<SocketBudget>) -> Self {
        Self::from_slots(Slots::Budget(budget))
    }

    fn from_slots(slots: Slots) -> Self {
        Self {
            table: DashMap::new(),
            slots,
            next: AtomicU64::new(0),
        }
    }

    /// The limit in force (the configured one, or less when the process has fewer file
    /// descriptors).
    pub fn max(&self) -> usize {
        match &self.slots {
            Slots::Budget(b) => b.session_limit(),
            Slots::Limit { max, .. } => *max,
        }
    }

    /// Takes a slot, or `false` at the limit. Every `true` must be matched by one
    /// [`Connections::release_slot`].
    pub(crate) fn take_slot(&self) -> bool {
        match &self.slots {
            Slots::Budget(b) => b.try_session(),
            Slots::Limit { max, open } => {
                let prev = open.fetch_add(1, Ordering::AcqRel);
                if prev >= *max {
                    open.fetch_sub(1, Ordering::AcqRel);
                    return false;
                }
                true
            }
        }
    }

    pub(crate) fn release_slot(&self) {
        match &self.slots {
            Slots::Budget(b) => b.end_session(),
            Slots::Limit { open, .. } => {
                open.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub(crate) fn next_id(&self) -> ConnId {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn insert(&self, id: ConnId, info: ConnInfo) {
        self.table.insert(id, info);
    }

    /// Records `id`'s user (after `auth`).
    pub(crate) fn set_user(&self, id: ConnId, user: Option<Arc<str>>) {
        if let Some(mut e) = self.table.get_mut(&id) {
            e.user = user;
        }
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
