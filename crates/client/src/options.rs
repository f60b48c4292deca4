//! Tunables of a client connection, with defaults that suit tests and interactive use.
//!
//! The load generator raises the buffers; tests lower the timeouts. Nothing here changes
//! the wire protocol.

use std::time::Duration;

/// Options for [`Client::connect_with`](crate::Client::connect_with) and
/// [`RawClient::connect_with`](crate::RawClient::connect_with).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline for TCP connect, the HTTP upgrade and (JSON protocol) the welcome frame.
    /// Default: 10 s.
    pub connect_timeout: Duration,
    /// Deadline for a request to be answered (`subscribe`, `publish`, `ping`) and for
    /// `close` to see the node's Close reply. Default: 10 s.
    pub request_timeout: Duration,
    /// Capacity of the incoming event queue. When it is full the reader stops reading the
    /// socket (TCP back-pressure reaches the node) until the application catches up; answers
    /// to requests queue behind it. Default: 4096.
    pub event_buffer: usize,
    /// Capacity of the outgoing frame queue; senders wait when it is full. Default: 1024.
    pub send_buffer: usize,
    /// Largest frame the client accepts from the node. Default: 64 MiB.
    pub max_frame_size: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            event_buffer: 4096,
            send_buffer: 1024,
            max_frame_size: 64 << 20,
        }
    }
}
