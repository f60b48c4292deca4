//! Wire encodings of deliveries, registered by id.
//!
//! A subscriber names the encoding it receives by an [`EncodingId`], a small number that
//! indexes the broker's [`Encodings`] table. Fan-out keeps one slot per id for the message
//! it is delivering, encodes into a slot the first time a subscriber of that id is met,
//! and shares the result (`Bytes`, a refcount) with every other subscriber of that id. So
//! a message costs one encoding per format *in use* among its subscribers, and fan-out
//! never names a format: a new one (MessagePack, SSE) is a new [`DeliveryEncoder`] and a
//! new id, not a new branch in the fan-out loop.
//!
//! This module does not frame anything itself: the encoders it registers by default are
//! the JSON protocol v1 and raw-mode encoders of `herald_protocol::server_msg`.

use bytes::Bytes;
use herald_protocol::server_msg::{json_delivery_at, raw_delivery};
use herald_protocol::{Payload, StreamPos};

/// Most encodings one broker can hold (fan-out keeps a slot per id on its stack).
pub const MAX_ENCODINGS: usize = 8;

/// The number of an encoding in the broker's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncodingId(u8);

impl EncodingId {
    /// JSON protocol v1 (`/ws`): `{"type":"message",...}` text frames.
    pub const JSON: Self = Self(0);
    /// Raw mode (`/raw/{topic}`): the payload itself, text or binary.
    pub const RAW: Self = Self(1);

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// What is being delivered: what every encoder gets. Fields are added here (a stream
/// offset, a pattern that matched) rather than to each encoder's signature.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub topic: &'a str,
    pub payload: &'a Payload,
    /// The message's offset and epoch (history topics).
    pub stream: Option<&'a StreamPos>,
}

/// Turns a delivery into the complete frame a subscriber's socket receives.
pub trait DeliveryEncoder: Send + Sync {
    /// A short name for logs, metrics and the admin API (`json`, `raw`).
    fn name(&self) -> &'static str;
    /// The whole frame, header included; called at most once per message.
    fn encode(&self, delivery: &Delivery<'_>) -> Bytes;
}

struct JsonV1;

impl DeliveryEncoder for JsonV1 {
    fn name(&self) -> &'static str {
        "json"
    }
    fn encode(&self, d: &Delivery<'_>) -> Bytes {
        json_delivery_at(d.topic, d.payload, d.stream)
    }
}

struct Raw;

impl DeliveryEncoder for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }
    fn encode(&self, d: &Delivery<'_>) -> Bytes {
        raw_delivery(d.payload)
    }
}

/// Why an encoding could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    #[error("at most {MAX_ENCODINGS} encodings can be registered")]
    Full,
    #[error("an encoding named {0:?} is registered already")]
    Duplicate(&'static str),
}

/// The broker's table of encodings; [`Encodings::default`] holds JSON v1 and raw.
pub struct Encodings {
    table: Vec<Box<dyn DeliveryEncoder>>,
}

impl Default for Encodings {
    fn default() -> Self {
        let mut e = Self { table: Vec::new() };
        let json = e.register(Box::new(JsonV1)).expect("empty table");
        let raw = e.register(Box::new(Raw)).expect("room for two");
        debug_assert_eq!((json, raw), (EncodingId::JSON, EncodingId::RAW));
        e
    }
}

impl Encodings {
    /// Adds an encoding; its id is the next free number.
    pub fn register(&mut self, encoder: Box<dyn DeliveryEncoder>) -> Result<EncodingId, EncodingError> {
        if self.table.len() >= MAX_ENCODINGS {
            return Err(EncodingError::Full);
        }
        if self.table.iter().any(|e| e.name() == encoder.name()) {
            return Err(EncodingError::Duplicate(encoder.name()));
        }
        self.table.push(encoder);
        Ok(EncodingId((self.table.len() - 1) as u8))
    }

    /// The id of the encoding called `name`.
    pub fn by_name(&self, name: &str) -> Option<EncodingId> {
        self.table
            .iter()
            .position(|e| e.name() == name)
            .map(|i| EncodingId(i as u8))
    }

    /// The name of `id` (`"?"` for an id this table never gave out).
    pub fn name(&self, id: EncodingId) -> &'static str {
        self.table.get(id.index()).map_or("?", |e| e.name())
    }

    /// Encodes `delivery` with `id`.
    ///
    /// # Panics
    /// On an id this table never gave out: subscribers only get ids from here.
    pub fn encode(&self, id: EncodingId, delivery: &Delivery<'_>) -> Bytes {
        self.table[id.index()].encode(delivery)
    }
}

/// One message's frames during one fan-out, at most one per encoding.
#[derive(Default)]
pub struct FrameCache {
    slots: [Option<Bytes>; MAX_ENCODINGS],
}

impl FrameCache {
    /// The frame for `id`, encoded on first use.
    #[inline]
    pub fn get(&mut self, encodings: &Encodings, id: EncodingId, delivery: &Delivery<'_>) -> Bytes {
        self.slots[id.index()]
            .get_or_insert_with(|| encodings.encode(id, delivery))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Upper;
    impl DeliveryEncoder for Upper {
        fn name(&self) -> &'static str {
            "upper"
        }
        fn encode(&self, d: &Delivery<'_>) -> Bytes {
            Bytes::from(d.topic.to_ascii_uppercase())
        }
    }

    #[test]
    fn builtin_ids_and_registration() {
        let mut e = Encodings::default();
        assert_eq!(e.by_name("json"), Some(EncodingId::JSON));
        assert_eq!(e.by_name("raw"), Some(EncodingId::RAW));
        let up = e.register(Box::new(Upper)).unwrap();
        assert_eq!(up.index(), 2);
        assert_eq!(e.name(up), "upper");
        assert_eq!(e.register(Box::new(Upper)), Err(EncodingError::Duplicate("upper")));
        let p = Payload::json(&b"1"[..]);
        let d = Delivery {
            topic: "t",
            payload: &p,
            stream: None,
        };
        let mut cache = FrameCache::default();
        let a = cache.get(&e, up, &d);
        let b = cache.get(&e, up, &d);
        assert_eq!(a.as_ptr(), b.as_ptr(), "encoded once, shared");
        assert_eq!(&a[..], b"T");
    }

    #[test]
    fn the_table_is_bounded() {
        let mut e = Encodings::default();
        let names: [&'static str; MAX_ENCODINGS] = ["a", "b", "c", "d", "e", "f", "g", "h"];
        struct Named(&'static str);
        impl DeliveryEncoder for Named {
            fn name(&self) -> &'static str {
                self.0
            }
            fn encode(&self, _: &Delivery<'_>) -> Bytes {
                Bytes::new()
            }
        }
        let mut added = 0;
        for n in names {
            if e.register(Box::new(Named(n))).is_ok() {
                added += 1;
            }
        }
        assert_eq!(added, MAX_ENCODINGS - 2);
        assert_eq!(e.register(Box::new(Named("z"))), Err(EncodingError::Full));
    }
}
