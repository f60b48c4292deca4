//! What a connection delivers to the application: messages, unsolicited errors, frames the
//! client could not route, and the end of the connection.
//!
//! Answers to the client's own requests (`ack`, `pong`, `error` with a known `id`) never
//! appear here: they go to the request that waits for them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::{ClientError, CloseInfo};
use crate::history::StreamPos;

/// One WebSocket data frame as received, for raw mode and for frames the JSON client does
/// not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// A text frame (UTF-8 checked).
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

impl RawFrame {
    /// The frame's payload bytes, whatever its kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RawFrame::Text(s) => s.as_bytes(),
            RawFrame::Binary(b) => b,
        }
    }
}

/// A `{"type":"message",...}` delivery.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// `data` exactly as the node sent it (JSON text, never re-serialised).
    pub data: Box<RawValue>,
    /// `Some("base64")` when `data` is a base64 string carrying a raw binary publish.
    pub encoding: Option<String>,
    /// The message's `offset` and `epoch` on a topic with history; `None` on other topics.
    pub position: Option<StreamPos>,
    /// The whole frame as received, for byte-exact checks and latency probes.
    pub frame: Bytes,
}

impl Message {
    /// `data` as JSON text.
    pub fn data_json(&self) -> &str {
        self.data.get()
    }

    /// `data` deserialised into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }

    /// The published bytes: base64-decoded when `encoding` is `base64`, the string's UTF-8
    /// when `data` is a JSON string (how raw text publishes arrive), else the JSON text.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, ClientError> {
        let data = self.data.get();
        if self.encoding.as_deref() == Some("base64") {
            let s: String = serde_json::from_str(data)
                .map_err(|e| ClientError::Protocol(format!("base64 data is not a string: {e}")))?;
            return STANDARD
                .decode(s)
                .map_err(|e| ClientError::Protocol(format!("bad base64 data: {e}")));
        }
        if data.starts_with('"') {
            if let Ok(s) = serde_json::from_str::<String>(data) {
                return Ok(s.into_bytes());
            }
        }
        Ok(data.as_bytes().to_vec())
    }
}

/// Something the node sent that no request was waiting for.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message on a subscribed topic.
    Message(Message),
    /// An error frame without an `id`, or with an `id` no request of this client waits for
    /// (for example the answer to a frame sent with `send_text`).
    Error {
        /// The raw JSON of the `id`, when there was one.
        id: Option<String>,
        /// The snake_case error code.
        code: String,
        /// The human-readable message.
        message: String,
        /// The topic the error is about, when the frame names one (`recovery_overflow`).
        topic: Option<String>,
    },
    /// A frame the client could not route: not JSON, an unknown `type`, an `ack` or `pong`
    /// nobody waits for, a binary frame.
    Other(RawFrame),
    /// The connection ended; always the last event.
    Closed(CloseInfo),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(data: &str, encoding: Option<&str>) -> Message {
        Message {
            topic: "t".into(),
            data: RawValue::from_string(data.into()).unwrap(),
            encoding: encoding.map(Into::into),
            position: None,
            frame: Bytes::new(),
        }
    }

    #[test]
    fn payload_bytes_per_kind() {
        assert_eq!(msg(r#"{"a":1}"#, None).payload_bytes().unwrap(), br#"{"a":1}"#);
        assert_eq!(msg(r#""hi\n""#, None).payload_bytes().unwrap(), b"hi\n");
        assert_eq!(msg(r#""AP8B""#, Some("base64")).payload_bytes().unwrap(), [0, 255, 1]);
        assert!(msg("1", Some("base64")).payload_bytes().is_err());
        assert_eq!(msg("[1,2]", None).json::<Vec<u8>>().unwrap(), [1, 2]);
    }
}
