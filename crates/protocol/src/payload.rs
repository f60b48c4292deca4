//! A published message's body and its kind, shared by every wire format.
//!
//! The body is kept exactly as the publisher sent it: JSON text for JSON-protocol and HTTP
//! publishes, UTF-8 text or arbitrary bytes for raw-mode publishes. Each subscriber's wire
//! format is derived from it once per message (see `server_msg` and `ws_frame`).

use bytes::Bytes;

/// What the bytes of a [`Payload`] are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadKind {
    /// A complete, valid JSON value (the `data` of a JSON publish).
    Json = 0,
    /// UTF-8 text from a raw text frame or a `text/*` HTTP body.
    Text = 1,
    /// Arbitrary bytes from a raw binary frame or a binary HTTP body.
    Binary = 2,
}

impl PayloadKind {
    /// Inverse of `as u8`, for the relay envelope.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Json),
            1 => Some(Self::Text),
            2 => Some(Self::Binary),
            _ => None,
        }
    }

    /// Lower-case name used in docs, logs and the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
            Self::Binary => "binary",
        }
    }
}

/// A message body. Cloning is a reference-count increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub kind: PayloadKind,
    pub bytes: Bytes,
}

impl Payload {
    /// JSON text that the caller has already validated.
    pub fn json(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: PayloadKind::Json,
            bytes: bytes.into(),
        }
    }
    /// UTF-8 text that the caller has already validated.
    pub fn text(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: PayloadKind::Text,
            bytes: bytes.into(),
        }
    }
    /// Arbitrary bytes.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: PayloadKind::Binary,
            bytes: bytes.into(),
        }
    }
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}
