//! Positions in the streams of history topics, as the node reports them: on each delivered
//! message (`offset`, `epoch`), in the ack of a subscribe (`recovered`, `positions`) and in
//! the ack of a publish.
//!
//! Topics without history carry none of this; every field that holds it is optional or an
//! empty map. What the node promises about them is in docs/protocol.md; the wire names
//! are fixed in the "History and recovery" contract of the design.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A position in a history topic's stream: the offset of a message (1 for the first; 0 when
/// the stream has none yet) and the stream's epoch, which changes whenever its past is lost.
/// Two positions compare only within the same epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPos {
    /// The message's offset in the stream.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

impl StreamPos {
    /// A position; `epoch` as the node reported it.
    pub fn new(offset: u64, epoch: impl Into<String>) -> Self {
        Self {
            offset,
            epoch: epoch.into(),
        }
    }

    /// True when `self` is at or before `other` in the same epoch: a message at `self` is
    /// one a client that has seen `other` already has.
    pub fn is_at_or_before(&self, other: &StreamPos) -> bool {
        self.epoch == other.epoch && self.offset <= other.offset
    }
}

/// What the ack of a subscribe says about history topics. Both maps are empty for topics
/// without history (and for nodes without history support).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeAck {
    /// One entry per topic given in `since`: `true` when every message after the given
    /// offset follows, `false` when some were lost (history trimmed or expired past it, or
    /// a different epoch); what history still holds follows anyway, then live messages.
    pub recovered: HashMap<String, bool>,
    /// One entry per history topic of the request: where the replay starts from, or the
    /// stream's head when no `since` was given (offset 0 = no message yet). A client that
    /// has seen no message of the topic remembers this, so its first reconnect recovers too.
    pub positions: HashMap<String, StreamPos>,
}
