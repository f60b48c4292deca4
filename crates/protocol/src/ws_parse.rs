//! Parsing client-to-server WebSocket frames out of a receive buffer (RFC 6455 §5).
//!
//! The gateway reads bytes into a buffer it owns and calls [`parse_client_frame`] until it
//! returns `Ok(None)` (need more bytes). Every rule a server must enforce on a single frame
//! is checked here, as early as the header allows, so an oversized frame is refused before
//! its payload is read: clients must mask, reserved bits must be clear (no extension is
//! negotiated), opcodes must be known, control frames must be final and at most 125 bytes,
//! and a data frame may not pass the message limit.
//!
//! The rules that span frames are here too, as pure state so they can be fuzzed with the
//! parser: [`Reassembler`] joins fragmented data messages under a cap on the *whole*
//! message and checks UTF-8 of text messages, and [`close_code`] validates a close frame's
//! payload. The gateway's reader owns the socket and maps every error to a close code.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use crate::ws_frame::{OP_BINARY, OP_CONTINUATION, OP_TEXT};

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
    // `len` is at most `max_payload` (or 125) here, but `max_payload` is the caller's: with
    // a limit near `usize::MAX` the sum could wrap and `split_to` below would panic. A
    // frame whose size does not fit a `usize` can never arrive whole, so it is too big.
    let Some(total) = usize::try_from(len).ok().and_then(|l| header.checked_add(l)) else {
        return Err(FrameError::TooBig { limit: max_payload });
    };
    let len = total - header;
    if buf.len() < total {
        return Ok(None);
    }
    let mask: [u8; 4] = buf[header - 4..header].try_into().expect("4 bytes");
    buf.advance(header);
    let mut payload = buf.split_to(len);
    unmask(&mut payload, mask);
    Ok(Some(ClientFrame { fin, opcode, payload }))
}

/// A complete data message: one final frame, or fragments joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataMessage {
    /// Valid UTF-8.
    Text(Bytes),
    Binary(Bytes),
}

/// A message the server must refuse. The `Display` text is the close reason sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// Close 1002.
    #[error("new data frame before the fragmented message ended")]
    Interleaved,
    /// Close 1002.
    #[error("continuation frame without a message to continue")]
    OrphanContinuation,
    /// Close 1009: the fragments together pass the limit.
    #[error("message too big: over {limit} bytes")]
    TooBig { limit: usize },
    /// Close 1007.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
}

/// Joins the data frames of one connection into messages (RFC 6455 §5.4): a text or binary
/// frame without FIN opens a message, continuation frames extend it, the one with FIN ends
/// it. Control frames may come between fragments and are not given to it.
#[derive(Debug, Default)]
pub struct Reassembler {
    open: Option<(u8, BytesMut)>,
}

impl Reassembler {
    /// True while a fragmented message is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Takes one data frame (opcode 0, 1 or 2; a control opcode is ignored and yields
    /// `Ok(None)`); returns the message it completes, if any. `max` bounds the whole message;
    /// a single frame was already bounded by [`parse_client_frame`]. After an error the
    /// connection must be closed: the state is then unspecified.
    pub fn push(&mut self, frame: ClientFrame, max: usize) -> Result<Option<DataMessage>, MessageError> {
        let ClientFrame { fin, opcode, payload } = frame;
        match opcode {
            OP_TEXT | OP_BINARY if self.open.is_some() => Err(MessageError::Interleaved),
            OP_TEXT | OP_BINARY if !fin => {
                self.open = Some((opcode, payload));
                Ok(None)
            }
            OP_TEXT | OP_BINARY => finish(opcode, payload).map(Some),
            OP_CONTINUATION => {
                let Some((_, buf)) = self.open.as_mut() else {
                    return Err(MessageError::OrphanContinuation);
                };
                if buf.len().saturating_add(payload.len()) > max {
                    return Err(MessageError::TooBig { limit: max });
                }
                buf.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let (op, whole) = self.open.take().expect("checked above");
                finish(op, whole).map(Some)
            }
            _ => Ok(None),
        }
    }
}

fn finish(opcode: u8, payload: BytesMut) -> Result<DataMessage, MessageError> {
    let bytes = payload.freeze();
    if opcode == OP_TEXT {
        if std::str::from_utf8(&bytes).is_err() {
            return Err(MessageError::InvalidUtf8);
        }
        Ok(DataMessage::Text(bytes))
    } else {
        Ok(DataMessage::Binary(bytes))
    }
}

/// A close frame the server must refuse. The `Display` text is the close reason sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CloseError {
    /// Close 1002.
    #[error("close frame with a 1-byte payload")]
    OneByte,
    /// Close 1002.
    #[error("close code {0} is not allowed")]
    CodeNotAllowed(u16),
    /// Close 1007.
    #[error("invalid UTF-8 in the close reason")]
    InvalidUtf8,
}

/// Validates a client close frame's payload (RFC 6455 §5.5.1, §7.4); returns the code to
/// echo (1000 for an empty payload).
pub fn close_code(payload: &[u8]) -> Result<u16, CloseError> {
    match payload {
        [] => Ok(1000),
        [_] => Err(CloseError::OneByte),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(CloseError::CodeNotAllowed(code));
            }
            std::str::from_utf8(reason).map_err(|_| CloseError::InvalidUtf8)?;
            Ok(code)
        }
    }
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

    #[test]
    fn a_limit_near_usize_max_does_not_overflow() {
        // Regression: with `max_payload = usize::MAX` a 64-bit length of u64::MAX passed the
        // limit check and `header + len` wrapped (debug: panic; release: `split_to` past the
        // end). Such a frame can never arrive whole, so it is refused as too big.
        let mut b = BytesMut::from(&[0x82u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4][..]);
        assert_eq!(
            parse_client_frame(&mut b, usize::MAX),
            Err(FrameError::TooBig { limit: usize::MAX })
        );
        let mut b = BytesMut::from(&[0x82u8, 0xff, 0, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3, 4][..]);
        assert_eq!(parse_client_frame(&mut b, usize::MAX), Ok(None));
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> ClientFrame {
        ClientFrame {
            fin,
            opcode,
            payload: BytesMut::from(payload),
        }
    }

    #[test]
    fn reassembly() {
        let mut r = Reassembler::default();
        assert_eq!(
            r.push(frame(true, 1, b"hi"), 10),
            Ok(Some(DataMessage::Text(Bytes::from_static(b"hi"))))
        );
        assert_eq!(r.push(frame(false, 2, b"ab"), 10), Ok(None));
        assert!(r.is_open());
        assert_eq!(r.push(frame(false, 0, b"cd"), 10), Ok(None));
        assert_eq!(
            r.push(frame(true, 0, b"ef"), 10),
            Ok(Some(DataMessage::Binary(Bytes::from_static(b"abcdef"))))
        );
        assert!(!r.is_open());
        assert_eq!(r.push(frame(true, 0, b"x"), 10), Err(MessageError::OrphanContinuation));
        let mut r = Reassembler::default();
        r.push(frame(false, 1, b"a"), 10).unwrap();
        assert_eq!(r.push(frame(true, 1, b"b"), 10), Err(MessageError::Interleaved));
        let mut r = Reassembler::default();
        r.push(frame(false, 1, &[b'a'; 6]), 10).unwrap();
        assert_eq!(
            r.push(frame(true, 0, &[b'a'; 5]), 10),
            Err(MessageError::TooBig { limit: 10 })
        );
        // UTF-8 is checked on the whole message: a character may straddle fragments.
        let mut r = Reassembler::default();
        r.push(frame(false, 1, &[0xc3]), 10).unwrap();
        assert_eq!(
            r.push(frame(true, 0, &[0xa9]), 10),
            Ok(Some(DataMessage::Text(Bytes::from("é"))))
        );
        assert_eq!(r.push(frame(true, 1, &[0xc3]), 10), Err(MessageError::InvalidUtf8));
    }

    #[test]
    fn close_codes() {
        assert_eq!(close_code(b""), Ok(1000));
        assert_eq!(close_code(b"\x03"), Err(CloseError::OneByte));
        assert_eq!(close_code(&[0x03, 0xe8, b'o', b'k']), Ok(1000));
        assert_eq!(close_code(&[0x0f, 0xa0]), Ok(4000));
        assert_eq!(close_code(&[0x03, 0xed]), Err(CloseError::CodeNotAllowed(1005)));
        assert_eq!(close_code(&[0x03, 0xe8, 0xff]), Err(CloseError::InvalidUtf8));
    }

    mod properties {
        use super::*;
        use crate::ws_frame::{masked_client_frame, OP_CLOSE, OP_PING, OP_PONG};
        use proptest::prelude::*;

        /// A frame the parser accepts: a data frame of any size or a final control frame of
        /// at most 125 bytes.
        fn valid_frame() -> impl Strategy<Value = ClientFrame> {
            let data = (
                any::<bool>(),
                prop_oneof![Just(0u8), Just(1), Just(2)],
                prop_oneof![
                    4 => prop::collection::vec(any::<u8>(), 0..300usize),
                    1 => prop::collection::vec(any::<u8>(), 0..70_000usize),
                ],
            );
            let control = (
                prop_oneof![Just(OP_CLOSE), Just(OP_PING), Just(OP_PONG)],
                prop::collection::vec(any::<u8>(), 0..=125usize),
            );
            prop_oneof![
                4 => data.prop_map(|(fin, opcode, p)| ClientFrame { fin, opcode, payload: BytesMut::from(&p[..]) }),
                1 => control.prop_map(|(opcode, p)| ClientFrame { fin: true, opcode, payload: BytesMut::from(&p[..]) }),
            ]
        }

        fn wire(f: &ClientFrame, mask: [u8; 4]) -> Vec<u8> {
            masked_client_frame(u8::from(f.fin) << 7 | f.opcode, &f.payload, mask)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn parse_of_encode_is_identity(frames in prop::collection::vec(valid_frame(), 1..4), mask in any::<[u8; 4]>()) {
                let mut b = BytesMut::new();
                for f in &frames {
                    b.extend_from_slice(&wire(f, mask));
                }
                for f in &frames {
                    prop_assert_eq!(frame_len_hint(&b), Some(wire(f, mask).len()));
                    let got = parse_client_frame(&mut b, 70_000).unwrap().unwrap();
                    prop_assert_eq!(&got, f);
                }
                prop_assert!(b.is_empty());
            }

            #[test]
            fn every_proper_prefix_needs_more(f in valid_frame(), mask in any::<[u8; 4]>(), cut in any::<prop::sample::Index>()) {
                let w = wire(&f, mask);
                let cut = cut.index(w.len());
                let mut b = BytesMut::from(&w[..cut]);
                prop_assert_eq!(parse_client_frame(&mut b, 70_000), Ok(None));
                prop_assert_eq!(b.len(), cut, "nothing consumed");
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), max in 0usize..200) {
                let mut b = BytesMut::from(&bytes[..]);
                let mut r = Reassembler::default();
                loop {
                    let before = b.len();
                    match parse_client_frame(&mut b, max) {
                        Ok(Some(f)) => {
                            prop_assert!(b.len() < before, "a frame consumes its header");
                            prop_assert!(f.opcode >= 8 || f.payload.len() <= max);
                            prop_assert!(f.opcode < 8 || f.payload.len() <= 125);
                            if f.opcode == OP_CLOSE {
                                let _ = close_code(&f.payload);
                            } else if f.opcode < 8 {
                                if let Ok(Some(DataMessage::Text(t))) = r.push(f, max) {
                                    prop_assert!(std::str::from_utf8(&t).is_ok());
                                }
                            }
                        }
                        Ok(None) => {
                            prop_assert_eq!(b.len(), before);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }

            #[test]
            fn fragments_join_to_the_message(msg in prop::collection::vec(any::<u8>(), 0..500), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5), text in any::<bool>()) {
                let msg = if text { String::from_utf8_lossy(&msg).into_owned().into_bytes() } else { msg };
                let mut at: Vec<usize> = cuts.iter().map(|c| c.index(msg.len() + 1)).collect();
                at.sort_unstable();
                let mut pieces = Vec::new();
                let mut prev = 0;
                for a in at.into_iter().chain([msg.len()]) {
                    pieces.push(&msg[prev..a]);
                    prev = a;
                }
                let mut r = Reassembler::default();
                let n = pieces.len();
                let mut out = None;
                for (i, p) in pieces.into_iter().enumerate() {
                    let opcode = if i == 0 { if text { 1 } else { 2 } } else { 0 };
                    let got = r.push(frame(i + 1 == n, opcode, p), msg.len()).unwrap();
                    prop_assert_eq!(got.is_some(), i + 1 == n);
                    out = got;
                }
                let want = if text { DataMessage::Text(Bytes::from(msg.clone())) } else { DataMessage::Binary(Bytes::from(msg.clone())) };
                prop_assert_eq!(out, Some(want));
                if !msg.is_empty() {
                    let mut r = Reassembler::default();
                    r.push(frame(false, 2, &msg), msg.len()).unwrap();
                    prop_assert_eq!(r.push(frame(true, 0, b"x"), msg.len()), Err(MessageError::TooBig { limit: msg.len() }));
                }
            }
        }
    }
}
