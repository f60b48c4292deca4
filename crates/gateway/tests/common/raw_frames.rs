//! Raw WebSocket frames by hand, for tests that must write bytes no client library would
//! (a flood of masked frames at full speed) and read the server's close frame themselves.

use anyhow::{bail, Result};
use tokio::io::AsyncReadExt;

/// The bytes of one masked binary frame of `payload`.
pub fn masked_binary_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x82];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x11, 0x22, 0x33, 0x44];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Reads server frames from `r` until a close frame; its code and reason.
pub async fn read_until_close(r: &mut (impl AsyncReadExt + Unpin), mut buf: Vec<u8>) -> Result<(u16, String)> {
    loop {
        while buf.len() >= 2 {
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into()?) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < head + len {
                break;
            }
            if buf[0] & 0x0f == 8 {
                let p = &buf[head..head + len];
                let code = u16::from_be_bytes([p[0], p[1]]);
                return Ok((code, String::from_utf8_lossy(&p[2..]).into_owned()));
            }
            buf.drain(..head + len);
        }
        let mut chunk = [0u8; 8192];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed without a close frame");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
