//! Fuzzes the client WebSocket read path that runs on untrusted bytes: `parse_client_frame`
//! over a receive buffer that fills in arbitrary chunks (as the socket delivers it), then the
//! cross-frame rules (`Reassembler` for fragments under the whole-message cap, `close_code`).
//!
//! Input layout: bytes 0..2 the message limit (big-endian u16), byte 2 the read chunk size
//! (0 = everything at once), the rest the bytes the client sent.
//!
//! Invariants checked, beyond "no panic":
//! - chunked and one-shot parsing give the same frames and the same error (the parser's
//!   answer depends on the bytes, never on how they were split);
//! - `Ok(None)` consumes nothing; a frame consumes exactly `frame_len_hint` bytes and never
//!   more than the buffer held, and its payload is those bytes' tail unmasked;
//! - a data frame is within the limit, a control frame is final and within 125 bytes;
//! - the frame re-encoded (canonical length) parses back to itself;
//! - a message out of the reassembler is within the limit, text is UTF-8.

#![no_main]

use bytes::BytesMut;
use herald_protocol::ws_frame::{masked_client_frame, OP_CLOSE};
use herald_protocol::ws_parse::{
    close_code, frame_len_hint, parse_client_frame, ClientFrame, DataMessage, FrameError, Reassembler,
};
use libfuzzer_sys::fuzz_target;

/// What parsing a byte stream produced: frames with their wire bytes, then how it ended.
type Outcome = (Vec<(ClientFrame, Vec<u8>)>, Option<FrameError>);

/// Parses everything in `buf` that is complete, checking each step.
fn drain(buf: &mut BytesMut, max: usize, out: &mut Vec<(ClientFrame, Vec<u8>)>) -> Result<(), FrameError> {
    loop {
        let before = buf.clone();
        match parse_client_frame(buf, max)? {
            None => {
                assert_eq!(*buf, before, "need-more consumes nothing");
                return Ok(());
            }
            Some(f) => {
                let used = before.len() - buf.len();
                assert_eq!(
                    frame_len_hint(&before),
                    Some(used),
                    "a frame is as long as its header says"
                );
                assert_eq!(&before[used..], &buf[..], "only the frame's bytes are taken");
                let wire = before[..used].to_vec();
                check_frame(&f, &wire, max);
                out.push((f, wire));
            }
        }
    }
}

fn check_frame(f: &ClientFrame, wire: &[u8], max: usize) {
    assert_eq!(f.opcode, wire[0] & 0x0f);
    assert_eq!(f.fin, wire[0] & 0x80 != 0);
    if f.opcode >= 8 {
        assert!(f.fin && f.payload.len() <= 125, "control frame rules");
    } else {
        assert!(f.payload.len() <= max, "data frame within the limit");
    }
    // The payload is the frame's last bytes, unmasked with the 4 bytes before them.
    let at = wire.len() - f.payload.len();
    let mask = &wire[at - 4..at];
    for (i, b) in f.payload.iter().enumerate() {
        assert_eq!(*b, wire[at + i] ^ mask[i % 4]);
    }
    // Re-encoded with a canonical length, it parses back to itself.
    let again = masked_client_frame(wire[0], &f.payload, mask.try_into().unwrap());
    let mut b = BytesMut::from(&again[..]);
    assert_eq!(parse_client_frame(&mut b, max).unwrap().as_ref(), Some(f));
    assert!(b.is_empty());
}

fn run(stream: &[u8], chunk: usize, max: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        if let Err(e) = drain(&mut buf, max, &mut frames) {
            return (frames, Some(e));
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let chunk = match data[2] {
        0 => usize::MAX,
        n => usize::from(n),
    };
    let stream = &data[3..];

    let whole = run(stream, usize::MAX, max);
    let chunked = run(stream, chunk, max);
    assert_eq!(whole, chunked, "the split of the bytes does not matter");

    // The cross-frame rules, as the reader applies them.
    let mut r = Reassembler::default();
    for (f, _) in whole.0 {
        match f.opcode {
            OP_CLOSE => {
                if let Ok(code) = close_code(&f.payload) {
                    assert!(matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999));
                }
                break;
            }
            0x9 | 0xA => {}
            _ => match r.push(f, max) {
                Ok(Some(DataMessage::Text(t))) => {
                    assert!(t.len() <= max);
                    assert!(std::str::from_utf8(&t).is_ok());
                }
                Ok(Some(DataMessage::Binary(b))) => assert!(b.len() <= max),
                Ok(None) => {}
                Err(_) => break,
            },
        }
    }
});
