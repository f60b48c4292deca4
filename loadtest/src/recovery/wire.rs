//! The history part of the JSON protocol as the recovery mode needs it (wire contract in
//! docs/protocol.md): reading `offset` and `epoch` out of a delivery frame without a JSON
//! parser (keys in any order), reading a subscribe ack's `recovered` and `positions`, and
//! writing a subscribe request with `since`.
//!
//! Deliveries are on the hot path: [`parse_delivery`] walks the frame's top-level keys
//! once, accepting only numbers and escape-free strings as values (which is all a
//! load-test delivery holds), and hands the `data` string to [`payload::parse`]. Acks and
//! requests are set-up work and use `serde_json`.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::payload::{self, Stamp};

/// A stream position: the last offset a client has, in the stream's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// A delivery of a history topic carrying a load-test stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    pub offset: u64,
    pub epoch: &'a [u8],
    pub stamp: Stamp,
}

/// What a delivery frame was, for the receive loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A stamped delivery with its offset and epoch.
    History(Delivery<'a>),
    /// A stamped delivery without offset or epoch (the topic has no history).
    Plain(Stamp),
    /// Not a stamped delivery of this shape.
    Other,
}

impl Parsed<'_> {
    /// The stamp, whether or not the delivery had a position.
    pub fn stamp(&self) -> Option<Stamp> {
        match self {
            Self::History(d) => Some(d.stamp),
            Self::Plain(s) => Some(*s),
            Self::Other => None,
        }
    }
}

/// Reads `{"type":"message","topic":T,"offset":N,"epoch":E,"data":"<stamp>..."}` with the
/// keys after `type` in any order. Topic, epoch and our data never contain a quote or a
/// backslash, so a string value ends at the next quote.
pub fn parse_delivery(frame: &[u8]) -> Parsed<'_> {
    const HEAD: &[u8] = br#"{"type":"message""#;
    let Some(mut rest) = frame.strip_prefix(HEAD) else {
        return Parsed::Other;
    };
    let (mut offset, mut epoch, mut stamp) = (None, None, None);
    loop {
        match rest.first() {
            Some(b',') => rest = &rest[1..],
            Some(b'}') => break,
            _ => return Parsed::Other,
        }
        let Some(key) = rest.strip_prefix(b"\"") else {
            return Parsed::Other;
        };
        let Some(k_end) = key.iter().position(|&b| b == b'"') else {
            return Parsed::Other;
        };
        let (name, after) = (&key[..k_end], &key[k_end + 1..]);
        let Some(value) = after.strip_prefix(b":") else {
            return Parsed::Other;
        };
        match value.first() {
            Some(b'"') => {
                let s = &value[1..];
                let Some(end) = s.iter().position(|&b| b == b'"' || b == b'\\') else {
                    return Parsed::Other;
                };
                if s[end] == b'\\' {
                    return Parsed::Other;
                }
                match name {
                    b"epoch" => epoch = Some(&s[..end]),
                    b"data" => stamp = payload::parse(s),
                    _ => {}
                }
                rest = &s[end + 1..];
            }
            Some(b'0'..=b'9') => {
                let end = value.iter().position(|b| !b.is_ascii_digit()).unwrap_or(value.len());
                if name == b"offset" {
                    offset = std::str::from_utf8(&value[..end]).ok().and_then(|t| t.parse().ok());
                }
                rest = &value[end..];
            }
            _ => return Parsed::Other,
        }
    }
    match (stamp, offset, epoch) {
        (Some(stamp), Some(offset), Some(epoch)) => Parsed::History(Delivery { offset, epoch, stamp }),
        (Some(stamp), None, None) => Parsed::Plain(stamp),
        _ => Parsed::Other,
    }
}

/// The history fields of a subscribe ack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    /// Per topic given in `since`: whether nothing was lost.
    pub recovered: HashMap<String, bool>,
    /// Per history topic of the request: where the replay starts, or the head.
    pub positions: HashMap<String, Position>,
}

/// Parses a subscribe ack (`None`: not an ack, or malformed history fields).
pub fn parse_ack(text: &[u8]) -> Option<Ack> {
    let v: Value = serde_json::from_slice(text).ok()?;
    if v.get("type")?.as_str()? != "ack" {
        return None;
    }
    let mut ack = Ack::default();
    if let Some(r) = v.get("recovered") {
        for (t, b) in r.as_object()? {
            ack.recovered.insert(t.clone(), b.as_bool()?);
        }
    }
    if let Some(p) = v.get("positions") {
        for (t, pos) in p.as_object()? {
            let position = Position {
                offset: pos.get("offset")?.as_u64()?,
                epoch: pos.get("epoch")?.as_str()?.to_owned(),
            };
            ack.positions.insert(t.clone(), position);
        }
    }
    Some(ack)
}

/// `{"op":"subscribe","topics":[...],"since":{...},"id":ID}`; `since` only for the topics
/// that have a position (and left out when none has).
pub fn subscribe_request(topics: &[&str], since: &[(&str, &Position)], id: u64) -> String {
    let mut req = Map::new();
    req.insert("op".into(), "subscribe".into());
    req.insert("topics".into(), topics.to_vec().into());
    if !since.is_empty() {
        let mut s = Map::new();
        for (t, p) in since {
            let mut pos = Map::new();
            pos.insert("offset".into(), p.offset.into());
            pos.insert("epoch".into(), p.epoch.clone().into());
            s.insert((*t).to_owned(), pos.into());
        }
        req.insert("since".into(), s.into());
    }
    req.insert("id".into(), id.into());
    Value::Object(req).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Template;

    fn stamped() -> (Stamp, String) {
        let s = Stamp {
            t_us: 77,
            seq: 5,
            publisher: 1,
            topic: 3,
        };
        let data = String::from_utf8(Template::new(64).stamp(&s).to_vec()).unwrap();
        (s, data)
    }

    #[test]
    fn reads_offset_and_epoch_in_any_key_order() {
        let (s, data) = stamped();
        let orders = [
            format!(r#"{{"type":"message","topic":"lt.a","offset":42,"epoch":"k3j9","data":{data}}}"#),
            format!(r#"{{"type":"message","data":{data},"epoch":"k3j9","topic":"lt.a","offset":42}}"#),
            format!(r#"{{"type":"message","offset":42,"topic":"lt.a","data":{data},"epoch":"k3j9"}}"#),
        ];
        for f in &orders {
            assert_eq!(
                parse_delivery(f.as_bytes()),
                Parsed::History(Delivery {
                    offset: 42,
                    epoch: b"k3j9",
                    stamp: s
                }),
                "{f}"
            );
        }
        let plain = format!(r#"{{"type":"message","topic":"lt.a","data":{data}}}"#);
        assert_eq!(parse_delivery(plain.as_bytes()), Parsed::Plain(s));
        assert_eq!(parse_delivery(orders[1].as_bytes()).stamp(), Some(s));
        assert_eq!(parse_delivery(b"{}").stamp(), None);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let (_, data) = stamped();
        for f in [
            r#"{"type":"ack","id":1}"#.to_owned(),
            r#"{"type":"message","topic":"a","offset":1,"epoch":"e","data":{"x":1}}"#.to_owned(),
            r#"{"type":"message","topic":"a","offset":1,"epoch":"e","data":"hello"}"#.to_owned(),
            format!(r#"{{"type":"message","topic":"a","offset":1,"data":{data}}}"#), // no epoch
            format!(r#"{{"type":"message","topic":"a\"b","offset":1,"epoch":"e","data":{data}}}"#),
            format!(r#"{{"type":"message","topic":"a","offset":1,"epoch":"e","data":{data}"#), // cut
        ] {
            assert_eq!(parse_delivery(f.as_bytes()), Parsed::Other, "{f}");
        }
    }

    #[test]
    fn reads_acks_and_writes_since() {
        let ack = parse_ack(
            br#"{"type":"ack","id":1,"recovered":{"a":true,"b":false},"positions":{"a":{"offset":57,"epoch":"k3"},"b":{"offset":0,"epoch":"zz"}}}"#,
        )
        .unwrap();
        assert_eq!(ack.recovered.get("b"), Some(&false));
        assert_eq!(
            ack.positions["a"],
            Position {
                offset: 57,
                epoch: "k3".into()
            }
        );
        assert_eq!(parse_ack(br#"{"type":"ack","id":1}"#), Some(Ack::default()));
        assert_eq!(parse_ack(br#"{"type":"pong","id":1}"#), None);
        assert_eq!(
            parse_ack(br#"{"type":"ack","positions":{"a":{"offset":-1,"epoch":"x"}}}"#),
            None
        );

        let p = Position {
            offset: 41,
            epoch: "k\"3".into(),
        };
        let req = subscribe_request(&["a", "b"], &[("a", &p)], 7);
        let v: Value = serde_json::from_str(&req).unwrap();
        assert_eq!(v["since"]["a"]["offset"], 41);
        assert_eq!(v["since"]["a"]["epoch"], "k\"3");
        assert_eq!(v["topics"], serde_json::json!(["a", "b"]));
        assert_eq!(v["id"], 7);
        let v: Value = serde_json::from_str(&subscribe_request(&["a"], &[], 1)).unwrap();
        assert!(v.get("since").is_none());
    }
}
