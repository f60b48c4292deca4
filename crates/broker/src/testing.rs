//! Test support: real loopback sockets to attach to outboxes.

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::outbox::DirectSocket;

/// The outbox's side of a real loopback TCP connection (non-blocking).
pub struct TestSocket(TcpStream);

impl DirectSocket for TestSocket {
    fn try_send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.0).write_vectored(bufs)
    }
}

/// A loopback connection: our side for an outbox, and the peer to read what it sent.
pub fn socket_pair() -> (Arc<TestSocket>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (Arc::new(TestSocket(ours)), peer)
}

/// Reads exactly `n` bytes from the peer (5 s at most).
pub fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    peer.read_exact(&mut v).unwrap();
    v
}
