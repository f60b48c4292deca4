//! WebSocket framing for a client (RFC 6455 §5): building masked client frames into a
//! reusable buffer, and parsing the node's unmasked frames in place.
//!
//! Parsing never copies: it reports where a frame's payload lies in the read buffer. It
//! refuses masked server frames and does not reassemble fragmented messages (Herald never
//! fragments; a fragment ends the connection with a clear error). Reading and buffering are
//! in `conn.rs`.

use rand::rngs::SmallRng;
use rand::RngCore;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest server frame accepted; more means a misbehaving peer.
pub const MAX_FRAME: usize = 16 << 20;

/// One parsed frame: where its payload is and how many bytes the whole frame used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub fin: bool,
    pub opcode: u8,
    pub payload_start: usize,
    pub payload_end: usize,
}

/// Why a server frame could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    Masked,
    TooBig(u64),
    Fragmented,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Masked => f.write_str("the node sent a masked frame"),
            Self::TooBig(n) => write!(f, "the node sent a {n}-byte frame (limit {MAX_FRAME})"),
            Self::Fragmented => f.write_str("the node sent a fragmented message (not supported)"),
        }
    }
}

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Frame(FrameRef),
    /// Not enough bytes yet; at least this many are needed in total.
    Need(usize),
}

/// Parses the frame at the start of `buf`.
#[inline]
pub fn parse(buf: &[u8]) -> Result<Parsed, FrameError> {
    if buf.len() < 2 {
        return Ok(Parsed::Need(2));
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if !fin || opcode == OP_CONT {
        return Err(FrameError::Fragmented);
    }
    let (head, len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(Parsed::Need(4));
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as u64)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Parsed::Need(10));
            }
            (10, u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")))
        }
        n => (2, n as u64),
    };
    if len > MAX_FRAME as u64 {
        return Err(FrameError::TooBig(len));
    }
    let end = head + len as usize;
    if buf.len() < end {
        return Ok(Parsed::Need(end));
    }
    Ok(Parsed::Frame(FrameRef {
        fin,
        opcode,
        payload_start: head,
        payload_end: end,
    }))
}

/// Builds masked client frames. One per connection; its buffer is reused for every batch.
pub struct FrameWriter {
    rng: SmallRng,
    pub buf: Vec<u8>,
}

impl FrameWriter {
    pub fn new(rng: SmallRng) -> Self {
        Self {
            rng,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Appends one final frame whose payload is the concatenation of `parts`, masked with a
    /// fresh random key.
    pub fn push(&mut self, opcode: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.buf.push(0x80 | opcode);
        if len < 126 {
            self.buf.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            self.buf.push(0x80 | 126);
            self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.buf.push(0x80 | 127);
            self.buf.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let key = self.rng.next_u32().to_ne_bytes();
        self.buf.extend_from_slice(&key);
        let start = self.buf.len();
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        apply_mask(&mut self.buf[start..], key);
    }

    /// A close frame with `code` (no reason).
    pub fn push_close(&mut self, code: u16) {
        self.push(OP_CLOSE, &[&code.to_be_bytes()]);
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// XORs `data` with the 4-byte `key` (the protocol crate's unmasking, shared).
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    herald_protocol::ws_parse::unmask(data, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (head, len) = match frame[1] & 0x7f {
            126 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
            127 => (10, u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize),
            n => (2, n as usize),
        };
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let key: [u8; 4] = frame[head..head + 4].try_into().unwrap();
        let mut p = frame[head + 4..head + 4 + len].to_vec();
        apply_mask(&mut p, key);
        (frame[0], p)
    }

    #[test]
    fn masked_frames_of_every_length_class() {
        let mut w = FrameWriter::new(SmallRng::seed_from_u64(1));
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536] {
            w.clear();
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            w.push(OP_TEXT, &[&body[..len / 2], &body[len / 2..]]);
            let (b0, p) = unmask(&w.buf);
            assert_eq!(b0, 0x81);
            assert_eq!(p, body, "len {len}");
        }
    }

    #[test]
    fn parses_server_frames() {
        assert_eq!(parse(&[0x81]), Ok(Parsed::Need(2)));
        assert_eq!(parse(&[0x81, 3, b'a']), Ok(Parsed::Need(5)));
        let f = parse(&[0x81, 3, b'a', b'b', b'c', 0x89]).unwrap();
        assert_eq!(
            f,
            Parsed::Frame(FrameRef {
                fin: true,
                opcode: OP_TEXT,
                payload_start: 2,
                payload_end: 5
            })
        );
        let mut long = vec![0x82, 126, 1, 0];
        assert_eq!(parse(&long), Ok(Parsed::Need(260)));
        long.resize(260, 0);
        assert!(matches!(parse(&long), Ok(Parsed::Frame(f)) if f.payload_start == 4));
        assert_eq!(parse(&[0x81, 0x81, 0, 0, 0, 0, 0]), Err(FrameError::Masked));
        assert_eq!(parse(&[0x01, 1, b'a']), Err(FrameError::Fragmented));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(matches!(parse(&huge), Err(FrameError::TooBig(_))));
    }
}
