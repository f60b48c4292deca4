//! Fuzzes the PROXY protocol header parser (`herald_gateway::proxy_protocol::parse`, v1 text
//! and v2 binary): the header comes from whatever connects to a listener that expects one.
//!
//! Invariants checked, beyond "no panic":
//! - errors are `Missing` (neither signature) or `Malformed`, never anything else;
//! - an accepted header is exactly one header: with one more byte it is refused; a v1
//!   header is one CRLF-terminated line;
//! - the address read comes back from a header written for it (v1 and v2).

#![no_main]

use std::net::SocketAddr;

use herald_gateway::proxy_protocol::{parse, ProxyHeaderError, V2_SIGNATURE};
use libfuzzer_sys::fuzz_target;

fn v1_for(a: SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(a) => format!("PROXY TCP4 {} 10.0.0.1 {} 8080\r\n", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("PROXY TCP6 {} ::1 {} 8080\r\n", a.ip(), a.port()),
    }
    .into_bytes()
}

fn v2_for(a: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match a {
        SocketAddr::V4(a) => {
            body.extend_from_slice(&a.ip().octets());
            body.extend_from_slice(&[10, 0, 0, 1]);
            0x11
        }
        SocketAddr::V6(a) => {
            body.extend_from_slice(&a.ip().octets());
            body.extend_from_slice(&[0; 15]);
            body.push(1);
            0x21
        }
    };
    body.extend_from_slice(&a.port().to_be_bytes());
    body.extend_from_slice(&8080u16.to_be_bytes());
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(family);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

fuzz_target!(|data: &[u8]| {
    let v2 = data.starts_with(&V2_SIGNATURE);
    let v1 = data.starts_with(b"PROXY ");
    match parse(data) {
        Err(ProxyHeaderError::Missing) => assert!(!v1 && !v2),
        Err(ProxyHeaderError::Malformed(m)) => assert!((v1 || v2) && !m.is_empty()),
        Err(other) => panic!("parse cannot fail with {other:?}"),
        Ok(addr) => {
            assert!(v1 || v2);
            if v1 {
                assert!(data.ends_with(b"\r\n"));
                assert_eq!(data.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
            }
            for extra in [b'\n', b'G', 0] {
                let mut longer = data.to_vec();
                longer.push(extra);
                assert!(parse(&longer).is_err(), "a byte past the header is refused");
            }
            if let Some(a) = addr {
                assert_eq!(parse(&v1_for(a)).unwrap(), Some(a), "v1 round trip");
                assert_eq!(parse(&v2_for(a)).unwrap(), Some(a), "v2 round trip");
            }
        }
    }
});
