//! Herald's wire formats, with no I/O: topic names, the JSON protocol v1 spoken on `/ws`,
//! pre-framed WebSocket server frames, the envelope that carries a message between
//! nodes, and the control messages nodes send each other. Everything here is a pure function over bytes so it can be fuzzed, benchmarked
//! and reused by the gateway, the client and the load generator alike.
//!
//! Deliberately absent: sockets, tasks, configuration. Limits (topic length, message size)
//! are passed in by callers.

pub mod client_msg;
pub mod control;
pub mod envelope;
pub mod payload;
pub mod server_msg;
pub mod topic;
pub mod ws_frame;
pub mod ws_parse;

pub use client_msg::{decode_request, ClientRequest, RequestError, RequestId};
pub use control::{decode_control, encode_control, ControlEnvelope, ControlError, ControlMessage};
pub use envelope::{Envelope, EnvelopeError, StreamPos, ENVELOPE_VERSION, ENVELOPE_VERSION_STREAM};
pub use payload::{Payload, PayloadKind};
pub use topic::{validate_topic, TopicError, TopicRules};
