//! Reading a PROXY protocol header (v1 text or v2 binary, as HAProxy's `send-proxy` and
//! `send-proxy-v2` send it) at the start of a connection from a trusted load balancer, before
//! hyper sees a byte, and turning it into the client's address.
//!
//! Framing is ours, parsing is the `ppp` crate's. The framing reads **exactly** the header
//! and never a byte past it, so the request that follows stays in the socket for hyper and
//! the upgraded session gets the plain `TcpStream` back: the first 15 bytes (the shortest
//! header, `PROXY UNKNOWN\r\n`) are read outright; a v1 header is then read up to its line
//! feed with `peek` (every byte before the line feed belongs to the header, so what a peek
//! shows up to there is consumed), a v2 header by the length its fixed part announces.
//! Headers are bounded ([`V1_MAX`], [`V2_MAX`]); the caller bounds the time.
//!
//! Which peers must send a header, and what is done with the address, is `client_ip.rs`'s
//! business; this module only reads and parses.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 header the specification allows (`PROXY TCP6 ...` with CRLF).
pub const V1_MAX: usize = 107;
/// The largest v2 header taken: the 16 fixed bytes, addresses and TLVs. HAProxy sends 28
/// (IPv4) or 52 (IPv6) bytes plus the TLVs its `proxy-v2-options` ask for.
pub const V2_MAX: usize = 4096;
/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The shortest header of either version (`PROXY UNKNOWN\r\n`; a v2 header has 16 bytes).
const MIN_HEADER: usize = 15;

/// Why a connection's PROXY header was not accepted; the connection is then closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before its PROXY protocol header ended")]
    Closed,
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(std::io::Error),
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("the PROXY protocol header is longer than allowed")]
    TooLarge,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
}

impl ProxyHeaderError {
    /// The `reason` label of `herald_proxy_protocol_errors_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Closed | Self::Io(_) => "closed",
            Self::Missing => "missing",
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
        }
    }
}

impl From<std::io::Error> for ProxyHeaderError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Self::Closed
        } else {
            Self::Io(e)
        }
    }
}

/// Reads the header from `tcp` within `deadline`. `Ok(None)`: the header carries no client
/// address (v1 `UNKNOWN`, v2 `LOCAL` or an unspecified or Unix family): the peer's own
/// address stands.
pub async fn read_header(tcp: &mut TcpStream, deadline: Duration) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let raw = tokio::time::timeout(deadline, read_raw(tcp))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(deadline))??;
    parse(&raw)
}

/// The header's bytes, exactly; the stream is left at the first byte after it.
async fn read_raw(tcp: &mut TcpStream) -> Result<Vec<u8>, ProxyHeaderError> {
    let mut buf = vec![0u8; MIN_HEADER];
    tcp.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        // Everything before the line feed is header: consume what a peek shows, up to it.
        while !buf.contains(&b'\n') {
            let room = V1_MAX - buf.len();
            if room == 0 {
                return Err(ProxyHeaderError::TooLarge);
            }
            let mut peeked = [0u8; V1_MAX];
            let n = tcp.peek(&mut peeked[..room]).await?;
            if n == 0 {
                return Err(ProxyHeaderError::Closed);
            }
            let take = peeked[..n].iter().position(|&b| b == b'\n').map_or(n, |p| p + 1);
            let start = buf.len();
            buf.resize(start + take, 0);
            tcp.read_exact(&mut buf[start..]).await?;
        }
        Ok(buf)
    } else if buf.starts_with(&V2_SIGNATURE) {
        buf.resize(16, 0);
        tcp.read_exact(&mut buf[MIN_HEADER..]).await?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if 16 + len > V2_MAX {
            return Err(ProxyHeaderError::TooLarge);
        }
        buf.resize(16 + len, 0);
        tcp.read_exact(&mut buf[16..]).await?;
        Ok(buf)
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

/// Parses one complete header (v1 or v2). `Ok(None)`: no client address in it. Never
/// panics, whatever the bytes.
pub fn parse(raw: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if raw.starts_with(&V2_SIGNATURE) {
        use ppp::v2::{Addresses, Command, Header};
        let h = Header::try_from(raw).map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
        if h.len() != raw.len() {
            return Err(ProxyHeaderError::Malformed("length does not match".into()));
        }
        if h.command == Command::Local {
            return Ok(None);
        }
        Ok(match h.addresses {
            Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Unspecified | Addresses::Unix(_) => None,
        })
    } else if raw.starts_with(b"PROXY ") {
        use ppp::v1::{Addresses, Header};
        // One line ending with CRLF, as `read_raw` frames it. `ppp` takes a bare LF after a
        // trailing space (`PROXY TCP4 a b 1 2 \n`) and, after `UNKNOWN`, any bytes up to
        // CRLF, line feeds included (both found by fuzzing, proxy_header).
        if !raw.ends_with(b"\r\n") || raw.iter().position(|&b| b == b'\n') != Some(raw.len() - 1) {
            return Err(ProxyHeaderError::Malformed(
                "the header is not one line ending with CRLF".into(),
            ));
        }
        let h = Header::try_from(raw).map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
        if h.header.len() != raw.len() {
            return Err(ProxyHeaderError::Malformed("bytes after the header line".into()));
        }
        Ok(match h.addresses {
            Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Unknown => None,
        })
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn both_versions_give_the_source_address() {
        let a = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\n").unwrap();
        assert_eq!(a, Some("203.0.113.7:51000".parse().unwrap()));
        let a = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 8080\r\n").unwrap();
        assert_eq!(a, Some("[2001:db8::7]:51000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), None);
        let body = [203, 0, 113, 7, 10, 0, 0, 1, 0xc7, 0x38, 0x1f, 0x90];
        let a = parse(&v2(1, 0x11, &body)).unwrap();
        assert_eq!(a, Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap(), None, "LOCAL: the peer's own address");
        assert_eq!(parse(&v2(0, 0x11, &body)).unwrap(), None, "LOCAL ignores addresses");
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            // Found by fuzzing (proxy_header): `ppp` accepted a bare LF after a space.
            b"PROXY TCP4 2.0.113.7 10.0.0.1 1 0 \n",
            b"PROXY UNKNOWN TCP6 \0: \0\n28:nnnnnnn:050\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET",
            b"GET / HTTP/1.1\r\n",
            b"",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut short = v2(1, 0x11, &[1, 2, 3]);
        assert!(parse(&short).is_err(), "IPv4 needs 12 address bytes");
        short[12] = 0x31;
        assert!(parse(&short).is_err(), "version 3");
        // Arbitrary bytes behind either prefix never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400usize {
            let mut bytes = if len % 2 == 0 {
                V2_SIGNATURE.to_vec()
            } else {
                b"PROXY ".to_vec()
            };
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            let _ = parse(&bytes);
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn v1_for(a: SocketAddr) -> Vec<u8> {
            match a {
                SocketAddr::V4(a) => format!("PROXY TCP4 {} 10.0.0.1 {} 8080\r\n", a.ip(), a.port()),
                SocketAddr::V6(a) => format!("PROXY TCP6 {} ::1 {} 8080\r\n", a.ip(), a.port()),
            }
            .into_bytes()
        }

        fn v2_for(a: SocketAddr) -> Vec<u8> {
            let (family, mut body) = match a {
                SocketAddr::V4(a) => (0x11, a.ip().octets().to_vec()),
                SocketAddr::V6(a) => (0x21, a.ip().octets().to_vec()),
            };
            body.extend(std::iter::repeat_n(0, body.len())); // destination address
            body.extend_from_slice(&a.port().to_be_bytes());
            body.extend_from_slice(&8080u16.to_be_bytes());
            v2(1, family, &body)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any bytes: an address or a typed error, never a panic.
            #[test]
            fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = parse(&raw);
            }

            /// Bytes after the v2 signature: the same.
            #[test]
            fn damaged_v2_headers_never_panic(rest in proptest::collection::vec(any::<u8>(), 0..120)) {
                let mut raw = V2_SIGNATURE.to_vec();
                raw.extend_from_slice(&rest);
                let _ = parse(&raw);
            }

            /// A header written for an address gives it back, in both versions; one byte
            /// more is refused.
            #[test]
            fn written_headers_give_their_address(a in any::<SocketAddr>()) {
                for mut raw in [v1_for(a), v2_for(a)] {
                    let got = parse(&raw).unwrap().expect("an address");
                    // An IPv4-mapped IPv6 source may come back as the IPv4 address.
                    prop_assert!(got.ip() == a.ip() || got.ip() == a.ip().to_canonical(), "{} for {}", got, a);
                    prop_assert_eq!(got.port(), a.port());
                    raw.push(b'x');
                    prop_assert!(parse(&raw).is_err());
                }
            }
        }
    }
}
