//! Parsing client-to-server WebSocket frames out of a receive buffer (RFC 6455 §5).
//!
//! The gateway reads bytes into a buffer it owns and calls [`parse_client_frame`] until it
//! returns `Ok(None)` (need more bytes). Every rule a server must enforce on a single frame
//! is checked here, as early as the header allows, so an oversized frame is refused before
//! its payload is read: clients must mask, reserved bits must be clear (no extension is
//! negotiated), opcodes must be known, control frames must be final and at most 125 bytes,
//! and a data frame may not pass the message limit. Reassembly of fragments, UTF-8 of text
//! messages and close-frame contents are the reader's job (they span frames).

use bytes::{Buf, BytesMut};
use thiserror::Error;

/// One client frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: BytesMut,
}

/// A frame the server must refuse (close 1002, or 1009 for `TooBig`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("client frames must be masked")]
    Unmasked,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    #[error("message over {limit} bytes")]
    TooBig { limit: usize },
}

/// Bytes needed to hold the frame that starts `buf` (header and payload), when the header is
/// complete; lets the reader reserve once for a large frame.
pub fn frame_len_hint(buf: &[u8]) -> Option<usize> {
    let (header, len) = header_and_len(buf)?;
    Some(header.saturating_add(len as usize))
}

fn header_and_len(buf: &[u8]) -> Option<(usize, u64)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let mask_len = if masked { 4 } else { 0 };
    match buf[1] & 0x7f {
        126 => {
            let b = buf.get(2..4)?;
            Some((4 + mask_len, u16::from_be_bytes([b[0], b[1]]) as u64))
        }
        127 => {
            let b = buf.get(2..10)?;
            Some((10 + mask_len, u64::from_be_bytes(b.try_into().ok()?)))
        }
        n => Some((2 + mask_len, n as u64)),
    }
}

/// Takes one complete frame off the front of `buf`; `Ok(None)` when more bytes are needed.
/// `max_payload` bounds a data frame's payload (the reader bounds the whole message).
pub fn parse_client_frame(buf: &mut BytesMut, max_payload: usize) -> Result<Option<ClientFrame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = b0 & 0x0f;
    let control = opcode >= 0x8;
    match opcode {
        0x0..=0x2 | 0x8..=0xA => {}
        other => return Err(FrameError::UnknownOpcode(other)),
    }
    if buf[1] & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    if control {
        if !fin {
            return Err(FrameError::FragmentedControl);
        }
        if buf[1] & 0x7f > 125 {
            return Err(FrameError::ControlTooLong);
        }
    }
    let Some((header, len)) = header_and_len(buf) else {
        return Ok(None);
    };
    if !control && len > max_payload as u64 {
        return Err(FrameError::TooBig { limit: max_payload });
    }
    let len = len as usize;
    if buf.len() < header + len {
        return Ok(None);
    }
    let mask: [u8; 4] = buf[header - 4..header].try_into().expect("4 bytes");
    buf.advance(header);
    let mut payload = buf.split_to(len);
    unmask(&mut payload, mask);
    Ok(Some(ClientFrame { fin, opcode, payload }))
}

/// XORs `data` with the 4-byte mask, eight bytes at a time.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        crate::ws_frame::masked_client_frame(b0, payload, [0x37, 0xfa, 0x21, 0x3d])
    }

    #[test]
    fn rfc_example_and_partial_input() {
        // RFC 6455 §5.7: a masked "Hello".
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        for cut in 0..bytes.len() {
            let mut b = BytesMut::from(&bytes[..cut]);
            assert_eq!(parse_client_frame(&mut b, 100), Ok(None), "cut at {cut}");
        }
        let mut b = BytesMut::from(&bytes[..]);
        let f = parse_client_frame(&mut b, 100).unwrap().unwrap();
        assert_eq!((f.fin, f.opcode, &f.payload[..]), (true, 1, &b"Hello"[..]));
        assert!(b.is_empty());
    }

    #[test]
    fn lengths_and_back_to_back_frames() {
        let big = vec![7u8; 70_000];
        let mut b = BytesMut::new();
        b.extend_from_slice(&masked(0x02, &big));
        b.extend_from_slice(&masked(0x89, b"hb"));
        assert_eq!(frame_len_hint(&b), Some(10 + 4 + 70_000));
        let f = parse_client_frame(&mut b, 100_000).unwrap().unwrap();
        assert_eq!(f.payload.len(), 70_000);
        assert!(f.payload.iter().all(|x| *x == 7));
        let f = parse_client_frame(&mut b, 100_000).unwrap().unwrap();
        assert_eq!((f.opcode, &f.payload[..]), (9, &b"hb"[..]));
        let f = masked(0x01, &[1u8; 300]);
        assert_eq!(
            parse_client_frame(&mut BytesMut::from(&f[..]), 300)
                .unwrap()
                .unwrap()
                .payload
                .len(),
            300
        );
    }

    #[test]
    fn refusals() {
        let p = |v: Vec<u8>| parse_client_frame(&mut BytesMut::from(&v[..]), 10);
        assert_eq!(p(vec![0x81, 0x02, b'h', b'i']), Err(FrameError::Unmasked));
        assert_eq!(p(masked(0xC1, b"x")), Err(FrameError::ReservedBits));
        assert_eq!(p(masked(0x83, b"")), Err(FrameError::UnknownOpcode(3)));
        assert_eq!(p(masked(0x8B, b"")), Err(FrameError::UnknownOpcode(11)));
        assert_eq!(p(masked(0x09, b"")), Err(FrameError::FragmentedControl));
        assert_eq!(p(masked(0x89, &[0u8; 126])), Err(FrameError::ControlTooLong));
        assert_eq!(p(masked(0x81, &[0u8; 11])), Err(FrameError::TooBig { limit: 10 }));
        // Refused from the header alone, before the payload arrives.
        let mut head = masked(0x82, &[0u8; 1000]);
        head.truncate(8);
        assert_eq!(p(head), Err(FrameError::TooBig { limit: 10 }));
        // A 64-bit length with the top bit set is simply too big.
        let mut b = BytesMut::from(&[0x82u8, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(parse_client_frame(&mut b, 10), Err(FrameError::TooBig { limit: 10 }));
    }

    #[test]
    fn unmask_matches_bytewise() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let orig: Vec<u8> = (0..len as u8).collect();
            let mut fast = orig.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = orig.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow);
        }
    }
}
