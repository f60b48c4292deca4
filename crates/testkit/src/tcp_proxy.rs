//! A TCP proxy between one node and Redis that a test can cut and restore, to break the
//! network between the two without touching Redis itself (the other nodes keep talking
//! to Redis directly). Cutting closes every proxied connection at once and makes new ones
//! be accepted and closed at once, until restored.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// See the module docs. Dropping it stops the proxy.
pub struct TcpProxy {
    addr: SocketAddr,
    /// Bumped on every cut: live connections end when it changes.
    generation: watch::Sender<u64>,
    cut: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (generation, gen_rx) = watch::channel(0u64);
        let cut = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (c, s) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client); // cut: refused at once
                    continue;
                }
                let mut gen = gen_rx.clone();
                // A clone has seen what the original saw (nothing: it is never awaited), so
                // without this every connection after the first cut ends at once.
                gen.borrow_and_update();
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut a, mut b) = (client, upstream);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = gen.changed() => {}
                        _ = s.cancelled() => {}
                    }
                    // Dropping both ends closes the connections.
                    drop((a, b));
                });
            }
        });
        Ok(Self {
            addr,
            generation,
            cut,
            stop,
        })
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://` URL of the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Closes every proxied connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
