//! The client's error type and the record of how a connection ended.
//!
//! One `thiserror` enum covers every layer a caller can fail in (connecting, the HTTP
//! upgrade, the WebSocket stream, a request the node refused), so integration tests can
//! match on exactly what went wrong: a node's close code, an error frame's `code`, a refused
//! upgrade's HTTP status. Library errors (fastwebsockets, hyper) are mapped here and never
//! leak into the public API.

use fastwebsockets::WebSocketError;
use thiserror::Error;

/// How a connection ended: the close code and reason the node sent, or a local code.
///
/// Local codes follow RFC 6455 section 7.4.1: `1005` when the node's Close frame carried no
/// code, `1006` when the connection ended without a Close frame (EOF, reset, protocol
/// error); then `reason` describes the failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (for example 1000 normal, 1001 going away, 1013 try again later).
    pub code: u16,
    /// The close reason, possibly empty.
    pub reason: String,
}

impl CloseInfo {
    /// The node sent a Close frame without a status code.
    pub const NO_STATUS: u16 = 1005;
    /// The connection ended without a Close frame.
    pub const ABNORMAL: u16 = 1006;

    /// A connection that ended without a Close frame, for `why`.
    pub(crate) fn abnormal(why: impl Into<String>) -> Self {
        Self {
            code: Self::ABNORMAL,
            reason: why.into(),
        }
    }

    /// Reads a Close frame's payload: a big-endian code, then a UTF-8 reason.
    pub(crate) fn from_payload(payload: &[u8]) -> Self {
        match payload {
            [hi, lo, reason @ ..] => Self {
                code: u16::from_be_bytes([*hi, *lo]),
                reason: String::from_utf8_lossy(reason).into_owned(),
            },
            _ => Self {
                code: Self::NO_STATUS,
                reason: String::new(),
            },
        }
    }
}

impl std::fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.code, self.reason)
    }
}

/// Everything a client operation can fail with.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Connecting or talking to the socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The caller passed something the client cannot use (a `wss://` URL, invalid JSON data).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The HTTP upgrade did not produce a valid WebSocket (bad headers, wrong accept key).
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// The node answered the upgrade request with a status other than 101 (for example
    /// 404 for an unknown path, 503 while draining).
    #[error("the node refused the upgrade with HTTP status {status}")]
    Rejected {
        /// The HTTP status code of the response.
        status: u16,
    },
    /// The node broke the WebSocket or JSON protocol (no welcome, an unexpected answer).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// An operation did not complete within its deadline.
    #[error("timed out")]
    Timeout,
    /// The connection is closed; `code` and `reason` say how (see [`CloseInfo`]).
    #[error("connection closed with code {code}: {reason:?}")]
    Closed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The node answered a request with an error frame.
    #[error("node error {code}: {message}")]
    Server {
        /// The snake_case error code, e.g. `invalid_topic`.
        code: String,
        /// The human-readable message.
        message: String,
    },
}

impl From<CloseInfo> for ClientError {
    fn from(c: CloseInfo) -> Self {
        Self::Closed {
            code: c.code,
            reason: c.reason,
        }
    }
}

impl From<WebSocketError> for ClientError {
    fn from(e: WebSocketError) -> Self {
        match e {
            WebSocketError::IoError(io) => Self::Io(io),
            WebSocketError::InvalidStatusCode(status) => Self::Rejected { status },
            WebSocketError::InvalidUpgradeHeader
            | WebSocketError::InvalidConnectionHeader
            | WebSocketError::HTTPError(_) => Self::Handshake(e.to_string()),
            other => Self::Protocol(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_payloads() {
        let c = CloseInfo::from_payload(b"\x03\xf5slow consumer");
        assert_eq!(
            c,
            CloseInfo {
                code: 1013,
                reason: "slow consumer".into()
            }
        );
        assert_eq!(CloseInfo::from_payload(b"").code, CloseInfo::NO_STATUS);
        let e: ClientError = c.into();
        assert!(matches!(e, ClientError::Closed { code: 1013, .. }));
    }
}
