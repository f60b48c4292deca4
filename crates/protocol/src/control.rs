//! Control messages between nodes: what one node asks every other node to do, as opposed to
//! a publication ([`crate::envelope`]) that is fanned out to subscribers. Today there is one:
//! close every connection of a user (`POST /api/users/{user}/disconnect`).
//!
//! The encoding is a small JSON object (`{"v":1,"origin":..,"kind":"disconnect_user",..}`):
//! control traffic is rare (an operator's request), so readability beats compactness, and a
//! node ignores kinds it does not know (a newer node may send more). Relays carry these on a
//! channel of their own that no topic can name (see `docs/cluster.md`). Decoding validates
//! everything a receiver acts on: a close code in 4000-4999 or 1008, a reason that fits a
//! close frame, a non-empty user.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Version of the control encoding.
pub const CONTROL_VERSION: u8 = 1;

/// Longest close reason in bytes: a close frame's payload is at most 125 bytes, 2 of which
/// are the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// Longest user id a control message may name.
pub const MAX_USER_BYTES: usize = 256;

/// What a node asks the others to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Close every connection whose user (`sub`) is `user` with `code` and `reason`.
    DisconnectUser { user: String, code: u16, reason: String },
}

/// A control message as it travels: who sent it (so the sender skips its own) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlEnvelope {
    pub v: u8,
    pub origin: String,
    #[serde(flatten)]
    pub message: ControlMessage,
}

/// Why a control message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControlError {
    #[error("malformed control message: {0}")]
    Malformed(String),
    #[error("unsupported control message version {0}")]
    Version(u8),
    #[error("invalid control message: {0}")]
    Invalid(&'static str),
}

/// True for a close code a node may be asked to close with: the application range
/// 4000-4999, or 1008 (policy violation).
pub fn valid_close_code(code: u16) -> bool {
    (4000..=4999).contains(&code) || code == 1008
}

impl ControlMessage {
    /// Checks what a receiver would act on.
    pub fn validate(&self) -> Result<(), ControlError> {
        match self {
            Self::DisconnectUser { user, code, reason } => {
                if user.is_empty() || user.len() > MAX_USER_BYTES {
                    return Err(ControlError::Invalid("user must be 1..=256 bytes"));
                }
                if !valid_close_code(*code) {
                    return Err(ControlError::Invalid("close code must be 4000-4999 or 1008"));
                }
                if reason.len() > MAX_CLOSE_REASON {
                    return Err(ControlError::Invalid("close reason is longer than 123 bytes"));
                }
                Ok(())
            }
        }
    }
}

/// Encodes `message` from node `origin`.
pub fn encode_control(origin: &str, message: &ControlMessage) -> Bytes {
    let env = ControlEnvelope {
        v: CONTROL_VERSION,
        origin: origin.to_owned(),
        message: message.clone(),
    };
    Bytes::from(serde_json::to_vec(&env).expect("a control message always serialises"))
}

/// Decodes and validates a control message.
pub fn decode_control(buf: &[u8]) -> Result<ControlEnvelope, ControlError> {
    #[derive(Deserialize)]
    struct Head {
        v: u8,
    }
    let head: Head = serde_json::from_slice(buf).map_err(|e| ControlError::Malformed(e.to_string()))?;
    if head.v != CONTROL_VERSION {
        return Err(ControlError::Version(head.v));
    }
    let env: ControlEnvelope = serde_json::from_slice(buf).map_err(|e| ControlError::Malformed(e.to_string()))?;
    env.message.validate()?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let m = ControlMessage::DisconnectUser {
            user: "alice".into(),
            code: 4001,
            reason: "banned".into(),
        };
        let b = encode_control("n1", &m);
        let env = decode_control(&b).unwrap();
        assert_eq!((env.origin.as_str(), env.message), ("n1", m));
        assert!(matches!(decode_control(b"{"), Err(ControlError::Malformed(_))));
        assert!(matches!(
            decode_control(br#"{"v":2,"origin":"n","kind":"x"}"#),
            Err(ControlError::Version(2))
        ));
        assert!(matches!(
            decode_control(br#"{"v":1,"origin":"n","kind":"reboot"}"#),
            Err(ControlError::Malformed(_))
        ));
        let bad = |user: &str, code: u16, reason: &str| {
            let m = ControlMessage::DisconnectUser {
                user: user.into(),
                code,
                reason: reason.into(),
            };
            decode_control(&encode_control("n", &m)).is_err()
        };
        assert!(bad("", 4000, ""));
        assert!(bad("u", 1000, ""));
        assert!(bad("u", 5000, ""));
        assert!(bad("u", 4000, &"r".repeat(124)));
        assert!(!bad("u", 1008, &"r".repeat(123)));
    }
}
