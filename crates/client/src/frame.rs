//! Decoding the frames a node sends on `/ws`, on the client side: one pass of serde over
//! the text, borrowing what it can.
//!
//! `herald_protocol::server_msg::ServerMessage` describes the same frames for the node's
//! own needs; the client decodes its own superset because only a client reads what acks
//! and deliveries carry for history topics (`offset`, `epoch`, `recovered`, `positions`).
//! Unknown fields are ignored, so a newer node does not break an older client.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::history::StreamPos;

/// One node-to-client frame; every field but `type` is optional.
#[derive(Debug, Deserialize)]
pub(crate) struct NodeFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub topic: Option<Cow<'a, str>>,
    /// Present (even as JSON `null`) on `message` frames.
    #[serde(borrow, default, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub encoding: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub connection: Option<String>,
    /// A history topic's message offset (deliveries, publish acks).
    #[serde(default)]
    pub offset: Option<u64>,
    /// A history topic's stream epoch (deliveries, publish acks).
    #[serde(default)]
    pub epoch: Option<String>,
    /// Subscribe acks: per topic of `since`, whether nothing was lost.
    #[serde(default)]
    pub recovered: Option<HashMap<String, bool>>,
    /// Subscribe acks: per history topic, where the stream stands.
    #[serde(default)]
    pub positions: Option<HashMap<String, StreamPos>>,
}

impl NodeFrame<'_> {
    /// `offset` and `epoch` together, when the frame has both.
    pub fn position(&self) -> Option<StreamPos> {
        match (self.offset, &self.epoch) {
            (Some(offset), Some(epoch)) => Some(StreamPos {
                offset,
                epoch: epoch.clone(),
            }),
            _ => None,
        }
    }
}

/// Marks a field that was present, so `"data": null` is `Some(null)`, not `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Decodes one text frame from the node.
pub(crate) fn decode(text: &[u8]) -> Result<NodeFrame<'_>, serde_json::Error> {
    serde_json::from_slice(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_history_fields() {
        let f = decode(br#"{"type":"message","topic":"a","offset":42,"epoch":"k3","data":null}"#).unwrap();
        assert_eq!((f.kind.as_ref(), f.data.map(|d| d.get())), ("message", Some("null")));
        assert_eq!(f.position(), Some(StreamPos::new(42, "k3")));

        let f = decode(
            br#"{"type":"ack","id":1,"recovered":{"a":false},"positions":{"a":{"offset":57,"epoch":"k3"},"b":{"offset":0,"epoch":"z"}}}"#,
        )
        .unwrap();
        assert!(!f.recovered.unwrap()["a"]);
        assert_eq!(f.positions.unwrap()["b"], StreamPos::new(0, "z"));

        // A topic with an escape still decodes; a message without history has no position.
        let f = decode(br#"{"type":"message","topic":"a\u0062","data":1,"future":[1]}"#).unwrap();
        assert_eq!((f.topic.as_deref(), f.position()), (Some("ab"), None));
        // An offset without an epoch is no position.
        assert_eq!(decode(br#"{"type":"ack","id":1,"offset":3}"#).unwrap().position(), None);
    }
}
