//! Pre-framed WebSocket server frames.
//!
//! Server-to-client frames are never masked (RFC 6455 §5.1), so a frame's bytes are the same
//! for every recipient. Herald therefore builds the whole frame, header included, once per
//! message and queues the resulting `Bytes` in every subscriber's outbox; a connection's
//! writer sends a batch of them with one vectored write. This module builds those frames,
//! and (for tests, benches and load generators) masked client frames; reading and validating
//! client frames is `ws_parse`'s job.

use bytes::{BufMut, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest possible header of an unmasked frame.
pub const MAX_SERVER_HEADER: usize = 10;

/// Writes the header of a final, unmasked frame into `out`; returns its length.
#[inline]
pub fn write_header(opcode: u8, len: usize, out: &mut [u8; MAX_SERVER_HEADER]) -> usize {
    out[0] = 0x80 | (opcode & 0x0f);
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Length of the header `write_header` produces for a payload of `len` bytes.
#[inline]
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Builds one final frame whose payload is the concatenation of `parts`, in a single
/// allocation of exactly the frame's size.
pub fn encode_frame(opcode: u8, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; MAX_SERVER_HEADER];
    let h = write_header(opcode, len, &mut head);
    let mut buf = BytesMut::with_capacity(h + len);
    buf.put_slice(&head[..h]);
    for p in parts {
        buf.put_slice(p);
    }
    buf.freeze()
}

/// A client frame as a client sends it: first byte `b0` as given (FIN, reserved bits,
/// opcode), the mask bit set, and `payload` masked with `mask`.
pub fn masked_client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut head = [0u8; MAX_SERVER_HEADER];
    let h = write_header(0, payload.len(), &mut head);
    head[0] = b0;
    head[1] |= 0x80;
    let mut out = Vec::with_capacity(h + 4 + payload.len());
    out.extend_from_slice(&head[..h]);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    encode_frame(OP_TEXT, &[payload])
}

/// A binary frame carrying `payload`.
pub fn binary_frame(payload: &[u8]) -> Bytes {
    encode_frame(OP_BINARY, &[payload])
}

/// A close frame with `code` and a reason cut to the 123 bytes a control frame allows (on a
/// UTF-8 character boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    encode_frame(OP_CLOSE, &[&code.to_be_bytes(), &reason.as_bytes()[..end]])
}

/// A pong answering a ping with `payload` (at most 125 bytes, checked by the reader).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    encode_frame(OP_PONG, &[payload])
}

/// A server heartbeat ping.
pub fn ping_frame(payload: &[u8]) -> Bytes {
    encode_frame(OP_PING, &[payload])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = binary_frame(&[7u8; 126]);
        assert_eq!(&f[..4], &[0x82, 126, 0, 126]);
        assert_eq!(f.len(), 130);
        let f = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
        assert_eq!(header_len(70_000), 10);
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let f = close_frame(1001, &reason);
        assert_eq!(f[0], 0x88);
        let len = f[1] as usize;
        assert!(len <= 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 1001);
    }
}
