//! Redis Cluster topology: which master serves which hash slot ([`Topology`]), the slot of a
//! key or channel ([`key_slot`]), and reading the map from a cluster node (`CLUSTER SLOTS`).
//!
//! This file owns the slot arithmetic and the parsing of the cluster's answer; it holds no
//! connection state and decides nothing about what to do when the map changes (that is
//! `cluster`).

use std::collections::HashMap;
use std::sync::Arc;

use redis::Value;

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// No master serves the slot (a map with a hole, while a failover is under way).
const NONE: u16 = u16::MAX;

/// The slot of `key` as Redis computes it: CRC16/XMODEM of the hash tag (the bytes between
/// the first `{` and the first `}` after it, when not empty) or of the whole key, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// One master: where to reach it and its name (`host:port`, the `shard` label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Master {
    pub host: String,
    pub port: u16,
}

impl Master {
    /// `host:port` (`[v6]:port` for an IPv6 address): the `shard` label, and the authority
    /// of its URL.
    pub fn name(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The slot map: for each slot, the index of its master in `masters`.
#[derive(Debug, Clone)]
pub struct Topology {
    masters: Vec<Master>,
    owner: Arc<[u16]>,
}

impl Topology {
    /// A map in which no slot is served.
    pub fn empty() -> Self {
        Self {
            masters: Vec::new(),
            owner: vec![NONE; SLOTS].into(),
        }
    }

    /// Builds the map from slot ranges `(first, last, master)`. Later ranges win.
    pub fn from_ranges(ranges: &[(u16, u16, Master)]) -> Self {
        let mut masters: Vec<Master> = Vec::new();
        let mut index: HashMap<Master, u16> = HashMap::new();
        let mut owner = vec![NONE; SLOTS];
        for (first, last, m) in ranges {
            let i = *index.entry(m.clone()).or_insert_with(|| {
                masters.push(m.clone());
                (masters.len() - 1) as u16
            });
            let (a, b) = (usize::from(*first), usize::from(*last).min(SLOTS - 1));
            if a <= b {
                owner[a..=b].iter_mut().for_each(|o| *o = i);
            }
        }
        Self {
            masters,
            owner: owner.into(),
        }
    }

    /// The masters that serve at least one slot, in the order first seen.
    pub fn masters(&self) -> &[Master] {
        &self.masters
    }

    /// The index (into [`masters`](Self::masters)) of the master serving `slot`.
    pub fn owner_index(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&NONE) | None => None,
            Some(&i) => Some(usize::from(i)),
        }
    }

    /// The master serving `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&Master> {
        match self.owner.get(usize::from(slot)) {
            Some(&NONE) | None => None,
            Some(&i) => self.masters.get(usize::from(i)),
        }
    }

    /// Slots no master serves.
    pub fn uncovered(&self) -> usize {
        self.owner.iter().filter(|&&o| o == NONE).count()
    }

    /// Whether both maps give every slot the same master.
    pub fn same_as(&self, other: &Topology) -> bool {
        (0..SLOTS as u16).all(|s| self.owner(s) == other.owner(s))
    }

    /// Parses a `CLUSTER SLOTS` reply: `[[first, last, [host, port, id, ...], replicas...], ...]`.
    /// An empty host (a node that does not know its own address) is `fallback_host`.
    pub fn from_cluster_slots(reply: &Value, fallback_host: &str) -> Result<Self, String> {
        let Value::Array(entries) = reply else {
            return Err(format!("CLUSTER SLOTS answered {reply:?}"));
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for e in entries {
            let Value::Array(fields) = e else {
                return Err("a CLUSTER SLOTS entry is not an array".into());
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(node))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err("a CLUSTER SLOTS entry lacks its range or master".into());
            };
            // Empty: the node does not know its own address; `?`: Redis 7's unknown endpoint.
            let host = match node.first() {
                Some(Value::BulkString(h)) if !h.is_empty() && h != b"?" => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) if !h.is_empty() && h != "?" => h.clone(),
                _ => fallback_host.to_owned(),
            };
            let port = match node.get(1) {
                Some(Value::Int(p)) if (1..=65535).contains(p) => *p as u16,
                _ => return Err("a CLUSTER SLOTS master has no valid port".into()),
            };
            if !(0..SLOTS as i64).contains(first) || !(0..SLOTS as i64).contains(last) || first > last {
                return Err(format!("CLUSTER SLOTS range {first}-{last} is out of bounds"));
            }
            ranges.push((*first as u16, *last as u16, Master { host, port }));
        }
        Ok(Self::from_ranges(&ranges))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(key_slot(b"herald:{room}"), 15960);
        assert_eq!(key_slot(b"herald:{room}:s"), 15960);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{}x"), key_slot(b"{}x"));
        assert_eq!(
            key_slot(b"a{}b"),
            crc16::State::<crc16::XMODEM>::calculate(b"a{}b") % 16384
        );
    }

    #[test]
    fn cluster_slots_replies_parse() {
        let node = |p: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(8191), node(7001), node(7004)]),
            Value::Array(vec![Value::Int(8192), Value::Int(16383), node(7002)]),
        ]);
        let t = Topology::from_cluster_slots(&reply, "x").unwrap();
        assert_eq!(t.masters().len(), 2);
        assert_eq!(t.owner(0).unwrap().port, 7001);
        assert_eq!(t.owner(8192).unwrap().name(), "127.0.0.1:7002");
        assert_eq!(t.uncovered(), 0);
        let holed = Topology::from_ranges(&[(
            0,
            10,
            Master {
                host: "h".into(),
                port: 1,
            },
        )]);
        assert_eq!(holed.uncovered(), SLOTS - 11);
        assert!(holed.owner(11).is_none());
        assert!(!holed.same_as(&t));
        assert!(Topology::from_cluster_slots(&Value::Int(1), "x").is_err());
        let unknown = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Array(vec![Value::BulkString(b"?".to_vec()), Value::Int(7001)]),
        ])]);
        let t = Topology::from_cluster_slots(&unknown, "10.0.0.9").unwrap();
        assert_eq!(t.masters()[0].name(), "10.0.0.9:7001");
        let v6 = Master {
            host: "::1".into(),
            port: 7000,
        };
        assert_eq!(v6.name(), "[::1]:7000");
    }
}
