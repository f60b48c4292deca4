//! How many sockets a listener may hold, and the refusal when it is full: the accept loop
//! asks [`SocketBudget::admit`] before it hands a new TCP connection to hyper, and a
//! connection that does not fit is answered at once and closed, so clients never wait in
//! the listen backlog: with a canned 503 ([`SocketBudget::refusal_response`]), or on a TLS
//! listener, whose client is in its TLS handshake, with a plaintext TLS fatal
//! `internal_error` alert (`tls::REFUSAL_ALERT`). Either way the refusal is counted by
//! reason (`herald_connections_rejected_total`).
//!
//! The public listener has two bounds. Handshakes in flight (accepted, not yet upgraded or
//! closed) are capped by `limits.max_pending_handshakes`, because each may make hyper buffer
//! up to `limits.max_request_head_bytes`. Handshakes and upgraded sessions together are
//! capped by the file-descriptor budget (`fd_budget.rs`); sessions alone by the smaller of
//! that budget and `limits.max_connections` (the slot `node.rs` reserves before a 101). The
//! admin listener has one bound, `admin.max_connections`.
//!
//! After a burst of handshakes has gone, the allocator is asked to give freed pages back to
//! the system (glibc keeps them otherwise; see docs/operations.md).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use herald_broker::BrokerMetrics;
use prometheus::{IntCounterVec, IntGauge};

use crate::config::Config;
use crate::fd_budget::FdBudget;

/// Handshakes in flight at once that count as a burst worth trimming the heap after.
const BURST: usize = 256;

/// Which listener a budget guards (decides metric and labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Public,
    Admin,
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many handshakes in flight (public) or connections (admin).
    Served,
    /// Public sockets (handshakes and sessions) at the descriptor budget.
    Sockets,
}

/// See the module docs. Shared by the accept loop (permits) and the session slots.
pub struct SocketBudget {
    side: Side,
    /// Connections hyper serves now: not yet upgraded, on the public side.
    served: AtomicUsize,
    max_served: usize,
    /// Upgraded WebSocket sessions (public side only).
    sessions: AtomicUsize,
    max_sessions: usize,
    /// Served connections and sessions together.
    max_total: usize,
    rejected: IntCounterVec,
    /// `herald_pending_handshakes` on the public side.
    gauge: Option<IntGauge>,
    /// Set when `served` passed [`BURST`]; cleared by the trim once it is back to zero.
    burst: AtomicBool,
    served_full: &'static [u8],
    sockets_full: &'static [u8],
}

/// One admitted connection; dropping it (or [`ServePermit::hand_over`]) frees its place.
/// hyper's connection task holds it; each request carries a clone of its `Arc` in its
/// extensions, so an upgrade can hand the place over to the session slot it takes.
pub struct ServePermit {
    budget: Arc<SocketBudget>,
    released: AtomicBool,
}

impl ServePermit {
    /// Frees the connection's place now (idempotent): it became a session, which its
    /// session slot counts, and must not count twice while the 101 waits for the relay.
    pub fn hand_over(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let b = &self.budget;
        let before = b.served.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &b.gauge {
            g.dec();
        }
        if before == 1 && b.burst.swap(false, Ordering::AcqRel) {
            release_freed_memory();
        }
    }
}

impl Drop for ServePermit {
    fn drop(&mut self) {
        self.hand_over();
    }
}

impl SocketBudget {
    /// The public listener's budget; also holds the session limit in force.
    pub fn public(fds: &FdBudget, config: &Config, metrics: &BrokerMetrics) -> Arc<Self> {
        let max_sessions = config.limits.max_connections.min(fds.public_sockets);
        metrics.connection_limit.set(max_sessions as i64);
        Arc::new(Self {
            side: Side::Public,
            served: AtomicUsize::new(0),
            max_served: config.limits.max_pending_handshakes,
            sessions: AtomicUsize::new(0),
            max_sessions,
            max_total: fds.public_sockets,
            rejected: metrics.connections_rejected.clone(),
            gauge: Some(metrics.pending_handshakes.clone()),
            burst: AtomicBool::new(false),
            served_full: canned(
                "handshake_limit",
                "this node has too many connections handshaking; try again shortly",
            ),
            sockets_full: canned(
                "connection_limit",
                "this node is at its connection limit; try another node or later",
            ),
        })
    }

    /// The admin listener's budget: `admin.max_connections`.
    pub fn admin(config: &Config, metrics: &BrokerMetrics) -> Arc<Self> {
        let full = canned(
            "connection_limit",
            "the admin listener is at its connection limit (admin.max_connections)",
        );
        Arc::new(Self {
            side: Side::Admin,
            served: AtomicUsize::new(0),
            max_served: config.admin.max_connections,
            sessions: AtomicUsize::new(0),
            max_sessions: 0,
            max_total: config.admin.max_connections,
            rejected: metrics.admin_rejected.clone(),
            gauge: None,
            burst: AtomicBool::new(false),
            served_full: full,
            sockets_full: full,
        })
    }

    /// A place for a newly accepted connection, or why there is none (already counted).
    pub fn admit(self: &Arc<Self>) -> Result<ServePermit, Refusal> {
        let served = self.served.fetch_add(1, Ordering::AcqRel);
        let refusal = if served >= self.max_served {
            Some(Refusal::Served)
        } else if served + self.sessions.load(Ordering::Acquire) >= self.max_total {
            Some(Refusal::Sockets)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.served.fetch_sub(1, Ordering::AcqRel);
            self.rejected.with_label_values(&[self.reason(r)]).inc();
            return Err(r);
        }
        if let Some(g) = &self.gauge {
            g.inc();
        }
        if served + 1 >= BURST {
            self.burst.store(true, Ordering::Release);
        }
        Ok(ServePermit {
            budget: self.clone(),
            released: AtomicBool::new(false),
        })
    }

    /// The metric label of a refusal.
    fn reason(&self, r: Refusal) -> &'static str {
        match (self.side, r) {
            (Side::Admin, _) => "connection_limit",
            (Side::Public, Refusal::Served) => "handshake_limit",
            (Side::Public, Refusal::Sockets) => "socket_limit",
        }
    }

    /// The whole HTTP/1.1 response a refused connection gets (on a plain listener; a TLS
    /// listener sends `tls::REFUSAL_ALERT` instead).
    pub fn refusal_response(&self, r: Refusal) -> &'static [u8] {
        match r {
            Refusal::Served => self.served_full,
            Refusal::Sockets => self.sockets_full,
        }
    }

    /// Counts a request head hyper cut off at `limits.max_request_head_bytes` (431).
    pub fn head_too_large(&self) {
        self.rejected.with_label_values(&["head_too_large"]).inc();
    }

    /// Takes a session place; `false` at the session limit.
    pub fn try_session(&self) -> bool {
        let before = self.sessions.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_sessions {
            self.sessions.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back a place taken by [`SocketBudget::try_session`].
    pub fn end_session(&self) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
    }

    /// The WebSocket session limit in force.
    pub fn session_limit(&self) -> usize {
        self.max_sessions
    }

    /// Sockets (served and sessions together) this listener may hold.
    pub fn socket_limit(&self) -> usize {
        self.max_total
    }
}

/// A 503 with a JSON body, built once per budget (the strings are fixed), leaked so the
/// accept loop can write it without allocating.
fn canned(code: &str, message: &str) -> &'static [u8] {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    let text = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    Box::leak(text.into_boxed_str()).as_bytes()
}

/// Asks the allocator to return freed memory to the system, off the async workers. glibc
/// keeps what a burst of connections freed in its arenas (resident) until asked; other
/// allocators need nothing.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        let trim = || unsafe {
            libc::malloc_trim(0);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(trim);
            }
            Err(_) => trim(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(pending: usize, sockets: usize, sessions: usize) -> (Arc<SocketBudget>, BrokerMetrics) {
        let metrics = BrokerMetrics::new();
        let mut c = Config::default();
        c.limits.max_pending_handshakes = pending;
        c.limits.max_connections = sessions;
        let fds = FdBudget {
            limit: 0,
            reserve: 0,
            public_sockets: sockets,
        };
        (SocketBudget::public(&fds, &c, &metrics), metrics)
    }

    #[test]
    fn handshakes_and_sessions_share_the_socket_budget() {
        let (b, m) = budget(3, 3, 100);
        assert_eq!(b.session_limit(), 3, "the descriptor budget lowers max_connections");
        let p1 = b.admit().unwrap();
        let _p2 = b.admit().unwrap();
        assert!(b.try_session());
        assert_eq!(b.admit().err(), Some(Refusal::Sockets), "2 handshakes + 1 session = 3");
        drop(p1);
        let _p3 = b.admit().unwrap();
        assert!(b.try_session());
        assert!(b.try_session());
        assert!(!b.try_session(), "3 sessions at most");
        let (few, _) = budget(1, 10, 100);
        let _p = few.admit().unwrap();
        assert_eq!(few.admit().err(), Some(Refusal::Served));
        let rejected = |r| m.connections_rejected.with_label_values(&[r]).get();
        assert_eq!((rejected("handshake_limit"), rejected("socket_limit")), (0, 1));
        let text = std::str::from_utf8(b.refusal_response(Refusal::Sockets)).unwrap();
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(
            text.ends_with('}') && text.contains("\"code\":\"connection_limit\""),
            "{text}"
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{text}");
    }
}
