//! Tunables of a client connection, with defaults that suit tests and interactive use.
//!
//! The load generator raises the buffers; tests lower the timeouts. Nothing here changes
//! the wire protocol. [`ReconnectOptions`] only matters to a
//! [`ResumingClient`](crate::ResumingClient); a plain client never reconnects.

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
    /// How a [`ResumingClient`](crate::ResumingClient) retries after losing its connection.
    pub reconnect: ReconnectOptions,
}

/// Exponential backoff with full jitter between reconnect attempts: before attempt `n`
/// (0 for the first) the client waits a random delay in `[0, min(max_backoff,
/// initial_backoff * 2^n)]`, so clients dropped together (a node restart) do not come back
/// together, from the very first retry.
#[derive(Debug, Clone)]
pub struct ReconnectOptions {
    /// The ceiling of the first delay; it doubles with each failed attempt. Default: 200 ms.
    pub initial_backoff: Duration,
    /// The largest ceiling a delay can reach. Default: 10 s.
    pub max_backoff: Duration,
    /// Attempts after one loss before giving up (the client then ends with
    /// `ResumeEvent::Closed`); `None` retries forever. Attempts restart from the first delay
    /// after every successful reconnect. Default: `None`.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            event_buffer: 4096,
            send_buffer: 1024,
            max_frame_size: 64 << 20,
            reconnect: ReconnectOptions::default(),
        }
    }
}
