//! The end of a connection after its close frame: the node has sent the close and shut its
//! write side (FIN); dropping the socket now would answer whatever the peer still sends
//! (data in flight, its own close frame) with a TCP reset, which can destroy the close frame
//! before the peer reads it. So the session reads and discards until the peer closes too,
//! for a short, bounded time and amount.

use std::time::Duration;

use tokio::net::TcpStream;

/// Longest the node waits for the peer to close after its close frame.
pub const LINGER: Duration = Duration::from_millis(1000);

/// Most bytes read and discarded while lingering (a peer flooding us is cut off).
const LINGER_BYTES: usize = 1 << 20;

/// Reads and discards until the peer's FIN, an error, [`LINGER`] or [`LINGER_BYTES`].
pub async fn drain(stream: &TcpStream) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut sink = [0u8; 2048];
    let mut read = 0usize;
    while read < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) | Ok(Err(_)) => return,
            Ok(Ok(())) => {}
        }
        match stream.try_read(&mut sink) {
            Ok(0) => return,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
