//! The two Lua scripts behind topic history ([`APPEND`], [`READ`]), their SHA1 names, and
//! how they are loaded and recognised when Redis has forgotten them.
//!
//! Each script runs atomically inside Redis, so allocating an offset, storing the message
//! and publishing it cannot interleave with another node's append to the same topic: that
//! is what makes offsets agree on every node and the delivery order on every node the
//! offset order. Both scripts name their keys in `KEYS` (the topic's stream and meta keys,
//! which share a hash tag, see `RedisRelayConfig::stream_key`), so they can run on a Redis
//! Cluster too (an append batch once it is split so that its topics share a slot). One run
//! of [`APPEND`] stores and publishes a batch of messages (up to
//! `RedisRelayConfig::append_batch_max`): the fixed cost of an `EVALSHA`, the meta read
//! and the TTL renewal are paid once per batch, not once per message.
//!
//! Loading: `publish_link` sends `SCRIPT LOAD` for both on every new publish connection
//! (after a Redis restart the script cache is empty), and commands name the scripts by SHA1
//! with `EVALSHA`. A `NOSCRIPT` reply (`SCRIPT FLUSH`, a failover to a server that never
//! saw the script) makes the caller load the script again and retry those commands once;
//! a message is never dropped, and never acknowledged, because of it.
//!
//! This file owns the Lua text and nothing else; what the node sends and how it reads the
//! replies is in `publisher` (appends) and `history` (reads). The keys and every field are
//! documented in `docs/cluster.md`.

use std::sync::LazyLock;

use redis::aio::MultiplexedConnection;
use redis::{RedisError, ServerErrorKind, Value};
use sha1::{Digest, Sha1};

/// A Lua script and the SHA1 Redis knows it by.
pub(crate) struct Script {
    pub(crate) name: &'static str,
    pub(crate) source: String,
    /// Lower-case hex SHA1 of `source`, what `EVALSHA` takes.
    pub(crate) sha: String,
}

impl Script {
    fn new(name: &'static str, source: impl Into<String>) -> Self {
        let source = source.into();
        let digest = Sha1::digest(source.as_bytes());
        let sha = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self { name, source, sha }
    }

    /// `SCRIPT LOAD`s the script on `conn`'s server; an error when Redis refuses it or
    /// names it differently (which would mean every `EVALSHA` misses).
    pub(crate) async fn load(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&self.source)
            .query_async(conn)
            .await?;
        if sha != self.sha {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "SCRIPT LOAD returned an unexpected SHA1",
                format!("{} is {sha}, expected {}", self.name, self.sha),
            )));
        }
        Ok(())
    }
}

/// Whether a reply (of a pipeline with `ignore_errors`) is Redis's `NOSCRIPT`.
pub(crate) fn is_noscript_reply(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

/// Whether a command failed with `NOSCRIPT`.
pub(crate) fn is_noscript(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript)
}

/// Appends a batch of messages (one or more, to one or more topics) to their topics'
/// streams and publishes them, in the order given. For each message, step by step:
/// 1. the meta hash holds the stream's `epoch` and last `offset`; when it is there,
///    `HINCRBY offset 1` allocates the next offset and the message is `XADD`ed as entry
///    `<offset>-0` with `MAXLEN ~ size`. The meta's epoch is read (`HGET`) once per topic
///    and batch: the script runs atomically, so after its first message of a topic the
///    script itself is the only writer of that topic's keys and knows the epoch;
/// 2. when there is no meta (a new stream, or its past was lost: expired, evicted,
///    flushed, Redis restarted without persistence), or when the stream contradicts it
///    (the `XADD` is refused because the stream already holds a larger id, or the key has
///    another type), the stream starts over: the old stream key is deleted, the meta is
///    written with the node's epoch candidate for that topic and offset 1, and the message
///    is entry `1-0` (within one batch this can happen only to a topic's first message:
///    after it, the stream ends at the meta's offset);
/// 3. `PUBLISH` on the topic's channel of the version 2 envelope: the node's head (up to
///    and including the flags byte), the offset (u64 big-endian), the epoch length and
///    epoch, the origin connection (8 bytes or nothing) and the payload;
/// 4. its answer is `{offset, epoch}`, or an error reply when Redis refused one of its
///    commands (a wrong key type, an ACL, out of memory): then that message alone fails,
///    exactly as one script run per message would (the next message of its topic reads
///    the meta again).
///
/// Then each topic with a stored message gets the policy's TTL on both keys (`PEXPIRE`,
/// once per batch), so a stream nobody publishes to for a TTL disappears whole and comes
/// back with a new epoch. Returns the answers, one per message, in order.
///
/// `KEYS`: per topic `j` (1-based), `KEYS[2j-1]` its stream and `KEYS[2j]` its meta. The
/// two keys of a topic share a hash tag (one slot), so a batch whose topics are all in one
/// hash slot can run on a Redis Cluster; the publisher groups the keys per topic so that a
/// batch can be split by slot (issue 14).
///
/// `ARGV`: 1 the number of topics `T`; then per topic 4: channel, epoch candidate, size
/// (MAXLEN), TTL in ms; then per message 6: topic number `j`, publish time in µs, payload
/// kind (0 JSON, 1 text, 2 binary), envelope head, origin connection, payload.
pub(crate) static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new("append", APPEND_SOURCE));

/// [`APPEND`] for Redis Cluster sharded pub/sub: the same script with `SPUBLISH`, so the
/// message goes out on the shard channel (which shares the keys' hash tag, so their slot).
pub(crate) static APPEND_SHARDED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "append-sharded",
        APPEND_SOURCE.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',"),
    )
});

/// The append script for `cfg`'s kind of pub/sub.
pub(crate) fn append_for(cfg: &crate::config::RedisRelayConfig) -> &'static Script {
    if cfg.sharded_pubsub {
        &APPEND_SHARDED
    } else {
        &APPEND
    }
}

const APPEND_SOURCE: &str = r#"-- herald history append, batched (see docs/cluster.md)
local nt = tonumber(ARGV[1])
local base = 1 + 4 * nt
local epochs, stored, out = {}, {}, {}
local function append(j, a)
  local s, m, p = KEYS[2 * j - 1], KEYS[2 * j], 4 * j - 2
  local epoch = epochs[j]
  if not epoch then
    epoch = redis.call('HGET', m, 'epoch')
    if not (epoch and #epoch > 0 and #epoch < 256) then epoch = nil end
  end
  local offset = nil
  if epoch then
    offset = redis.call('HINCRBY', m, 'offset', 1)
    local r = redis.pcall('XADD', s, 'MAXLEN', '~', ARGV[p + 2], string.format('%d-0', offset),
      't', ARGV[a + 1], 'k', ARGV[a + 2], 'p', ARGV[a + 5])
    if type(r) == 'table' and r.err then
      offset = nil
    end
  end
  if not offset then
    epoch = ARGV[p + 1]
    offset = 1
    redis.call('DEL', s, m)
    redis.call('HSET', m, 'epoch', epoch, 'offset', 1)
    redis.call('XADD', s, 'MAXLEN', '~', ARGV[p + 2], '1-0',
      't', ARGV[a + 1], 'k', ARGV[a + 2], 'p', ARGV[a + 5])
  end
  epochs[j] = epoch
  redis.call('PUBLISH', ARGV[p],
    ARGV[a + 3] .. struct.pack('>I8', offset) .. string.char(#epoch) .. epoch .. ARGV[a + 4] .. ARGV[a + 5])
  stored[j] = true
  return {offset, epoch}
end
for a = base + 1, #ARGV - 5, 6 do
  local j = tonumber(ARGV[a])
  local ok, r = pcall(append, j, a)
  if ok then
    out[#out + 1] = r
  else
    epochs[j] = nil
    if type(r) == 'table' and r.err then
      out[#out + 1] = r
    else
      out[#out + 1] = {err = 'ERR ' .. tostring(r)}
    end
  end
end
for j = 1, nt do
  if stored[j] then
    redis.call('PEXPIRE', KEYS[2 * j - 1], ARGV[4 * j + 1])
    redis.call('PEXPIRE', KEYS[2 * j], ARGV[4 * j + 1])
  end
end
return out
"#;

/// Reads a topic's head and some of its messages. Step by step:
/// 1. `HMGET` of the meta's `offset` and `epoch`; when there is no (valid) meta, the
///    stream is created empty: any stray stream key is deleted, the meta is written with
///    the node's epoch candidate (`ARGV[1]`) and offset 0 and the TTL (`ARGV[2]`), and
///    `{0, epoch, {}}` is returned, so every reader is given a real position;
/// 2. messages published before the cutoff (`ARGV[3]`, µs: now minus the TTL) are
///    trimmed from the front of the stream (`XTRIM MINID`), looking at no more than 1001
///    entries per call; a message is dropped only from the front, so a page never has a
///    hole in it;
/// 3. `ARGV[4]` = `range`: `XRANGE` from `ARGV[5]` (`<after + 1>-0`) `COUNT ARGV[6]`
///    (at most `MAX_READ`; 0 reads nothing); `latest`: `XREVRANGE + - COUNT 1`. A stream
///    key that is missing (evicted) while the meta is there reads as no message: the
///    node then sees a head ahead of what the stream holds, a loss;
/// 4. returns `{offset, epoch, entries}` (offset as a string).
pub(crate) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "read",
        r#"-- herald history read (see docs/cluster.md)
local s, m = KEYS[1], KEYS[2]
local h = redis.call('HMGET', m, 'offset', 'epoch')
if not h[1] or not h[2] or #h[2] == 0 or #h[2] > 255 then
  redis.call('DEL', s, m)
  redis.call('HSET', m, 'epoch', ARGV[1], 'offset', 0)
  redis.call('PEXPIRE', m, ARGV[2])
  return {'0', ARGV[1], {}}
end
local cutoff = tonumber(ARGV[3])
local batch = 1
for _ = 1, 11 do
  local front = redis.call('XRANGE', s, '-', '+', 'COUNT', batch)
  local n = #front
  if n == 0 then break end
  local keep = nil
  for i = 1, n do
    local f, t = front[i][2], nil
    for j = 1, #f, 2 do
      if f[j] == 't' then t = tonumber(f[j + 1]) end
    end
    if not t or t >= cutoff then
      keep = i
      break
    end
  end
  if keep then
    if keep > 1 then redis.call('XTRIM', s, 'MINID', front[keep][1]) end
    break
  end
  local ms, seq = string.match(front[n][1], '^(%d+)-(%d+)$')
  redis.call('XTRIM', s, 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
  if n < batch then break end
  batch = 100
end
local entries = {}
if ARGV[4] == 'latest' then
  entries = redis.call('XREVRANGE', s, '+', '-', 'COUNT', 1)
elseif tonumber(ARGV[6]) > 0 then
  entries = redis.call('XRANGE', s, ARGV[5], '+', 'COUNT', ARGV[6])
end
return {h[1], h[2], entries}
"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shas_are_lower_case_hex_sha1() {
        assert!(APPEND_SHARDED.source.contains("redis.call('SPUBLISH',"));
        assert!(!APPEND_SHARDED.source.contains("redis.call('PUBLISH',"));
        for s in [&*APPEND, &*APPEND_SHARDED, &*READ] {
            assert_eq!(s.sha.len(), 40);
            assert!(s.sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
        assert_ne!(APPEND.sha, READ.sha);
        // SHA1("abc"), the FIPS 180 test vector.
        assert_eq!(Script::new("t", "abc").sha, "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
