//! The read half of an upgraded connection. hyper may have read bytes past the upgrade
//! request (a client that sends its first frame right behind the handshake); those come
//! first, then the socket.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

/// See the module docs.
pub struct PrefixedRead {
    prefix: Bytes,
    inner: OwnedReadHalf,
}

impl PrefixedRead {
    pub fn new(prefix: Bytes, inner: OwnedReadHalf) -> Self {
        Self { prefix, inner }
    }
}

impl AsyncRead for PrefixedRead {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}
