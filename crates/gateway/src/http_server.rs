//! The accept loop shared by the public and the admin listener: accept, ask the listener's
//! [`SocketBudget`] for a place, hand each admitted TCP connection to hyper (HTTP/1.1 with
//! upgrades, the request head capped at `limits.max_request_head_bytes`) in its own tracked
//! task, back off on accept errors, and on `stop` let in-flight requests finish (graceful)
//! within a bound.
//!
//! On a TLS listener (`tls.rs`) the handshake runs in the connection's task before hyper
//! sees it, under the same budget place. One deadline, `limits.handshake_timeout_ms` from
//! accept, bounds everything before the request head is in: a PROXY header, the TLS
//! handshake and the head itself.
//!
//! A connection the budget refuses is still accepted, answered with a canned 503 (on a TLS
//! listener a TLS `internal_error` alert) and closed at once: a client must learn the node
//! is full, not hang in the listen backlog.
//! A head over the cap is answered 431 by hyper (no JSON body: hyper writes it) and counted.
//!
//! A connection's errors stay in its task and are logged at debug: a client going away is
//! normal. Upgraded WebSocket sessions are not hyper's business once upgraded; they live in
//! the node's session tracker (see `node.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client_ip::ClientAddrs;
use crate::socket_budget::{Refusal, ServePermit, SocketBudget};
use crate::tls::Tls;

/// Responses are small and built whole.
pub type Body = Full<Bytes>;

/// How long an open HTTP connection may take to finish after `stop`.
const GRACEFUL_BOUND: Duration = Duration::from_secs(5);

/// How hyper serves one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Time to receive a request's complete head.
    pub header_timeout: Duration,
    /// hyper's read buffer cap, so the largest request head (at least 8192).
    pub max_head_bytes: usize,
}

impl ServeLimits {
    /// How hyper serves both listeners' connections.
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            header_timeout: c.handshake_timeout(),
            max_head_bytes: c.limits.max_request_head_bytes,
        }
    }
}

/// What comes before HTTP on a listener's connections (none of it on the admin listener).
#[derive(Default, Clone)]
pub struct Edge {
    /// Read a trusted peer's PROXY protocol header first.
    pub proxy: Option<Arc<ClientAddrs>>,
    /// Then the TLS handshake.
    pub tls: Option<Arc<Tls>>,
}

/// Serves `listener` until `stop` fires, admitting connections through `budget`. With
/// `proxy`, a trusted peer's PROXY protocol header is read first (`client_ip.rs`) and the
/// handler is given the client address it names; otherwise the handler gets the peer.
/// With `tls`, the connection's TLS handshake comes next (within the handshake timeout,
/// its place in `budget` held meanwhile).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
    limits: ServeLimits,
    budget: Arc<SocketBudget>,
    edge: Edge,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(error = %e, "accept failed; backing off {:?}", backoff);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let permit = match budget.admit() {
            Ok(p) => p,
            Err(r) => {
                refuse(tcp, &budget, r, edge.tls.is_some());
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // One deadline from accept for everything before the request head is in: the PROXY
        // header, the TLS handshake and the head itself share `limits.header_timeout`.
        let deadline = Instant::now() + limits.header_timeout;
        let conn = Conn {
            tcp,
            peer,
            deadline,
            permit: Arc::new(permit),
            budget: budget.clone(),
            stop: stop.clone(),
            limits,
            edge: edge.clone(),
        };
        // Boxed: after a WebSocket upgrade the socket's reactor entry can keep this task's
        // waker (and so its allocation) alive for the WebSocket's whole life; boxed, that
        // costs the task header only, not hyper's connection state.
        tracker.spawn(Box::pin(connection(conn, handler.clone())));
    }
}

/// One admitted connection, as the accept loop hands it to its task.
struct Conn {
    tcp: TcpStream,
    peer: SocketAddr,
    /// When the request head must be in (accept + `limits.header_timeout`).
    deadline: Instant,
    permit: Arc<ServePermit>,
    budget: Arc<SocketBudget>,
    stop: CancellationToken,
    limits: ServeLimits,
    edge: Edge,
}

/// Serves one admitted connection: the PROXY header (from a trusted peer), the TLS
/// handshake (on a TLS listener), then hyper, all before `c.deadline` until the request
/// head is in.
async fn connection<F, Fut>(c: Conn, handler: F)
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let Conn {
        mut tcp,
        peer,
        deadline,
        permit,
        budget,
        stop,
        limits,
        edge: Edge { proxy, tls },
    } = c;
    // A trusted proxy's PROXY header, before hyper reads a byte (within the deadline,
    // holding the handshake place); a missing or bad one closes the connection.
    let peer = match &proxy {
        Some(p) if p.expects_header(peer.ip()) => {
            let read = p.accept(&mut tcp, peer, deadline.saturating_duration_since(Instant::now()));
            match tokio::select! { r = read => r, _ = stop.cancelled() => None } {
                Some(client) => client,
                None => return,
            }
        }
        _ => peer,
    };
    let for_requests = permit.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(for_requests.clone());
        let fut = handler(req, peer);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let result = match tls {
        None => serve(TokioIo::new(tcp), svc, limits, deadline, &stop).await,
        // Boxed apart: the handshake's and hyper's state over a TLS stream (rustls'
        // connection is over a kilobyte) must not size every plain connection's task.
        Some(tls) => {
            Box::pin(async move {
                match tls.handshake(tcp, deadline, &stop).await {
                    Some(stream) => serve(TokioIo::new(stream), svc, limits, deadline, &stop).await,
                    None => Ok(()),
                }
            })
            .await
        }
    };
    // The place is held until hyper lets go of the connection: after an upgrade the
    // session's own slot counts the socket.
    drop(permit);
    if let Err(e) = result {
        if e.is_parse_too_large() {
            budget.head_too_large();
        }
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

/// Serves one connection's HTTP/1.1 requests (and upgrades) until it ends, or `stop` plus
/// [`GRACEFUL_BOUND`]. The first request head must be in by `deadline`; hyper gives each
/// later one on a kept-alive connection the same allowance.
async fn serve<I, S>(
    io: I,
    svc: S,
    limits: ServeLimits,
    deadline: Instant,
    stop: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // At least a millisecond: zero would be no timeout at all to some timers.
        .header_read_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        )
        // The read buffer bounds what an unfinished head can hold; the header
        // size is the exact limit (a whole head may arrive in one larger read).
        .max_buf_size(limits.max_head_bytes)
        .max_header_size(limits.max_head_bytes)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(GRACEFUL_BOUND, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    }
}

/// Answers a connection the budget refused and closes it, without waiting: what the client
/// already sent is read first (so closing does not reset the connection before the answer
/// arrives), then the answer is written if the socket takes it at once (a fresh socket's
/// send buffer always does). The answer is the budget's canned 503, or on a TLS listener
/// (whose client is in its handshake and would take an HTTP answer for a broken record) a
/// plaintext TLS fatal alert, [`crate::tls::REFUSAL_ALERT`].
fn refuse(tcp: TcpStream, budget: &SocketBudget, r: Refusal, tls: bool) {
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match tcp.try_read(&mut scratch) {
            Ok(n) if n == scratch.len() => continue,
            _ => break,
        }
    }
    let answer = match tls {
        false => budget.refusal_response(r),
        true => crate::tls::REFUSAL_ALERT,
    };
    let _ = tcp.try_write(answer);
    tracing::debug!(refusal = ?r, tls, "connection refused at accept");
}

/// A JSON response `{"code":..,"message":..}` with `status`.
pub fn json_error(status: hyper::StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    json_response(status, body)
}

/// A JSON response with `status`.
pub fn json_response(status: hyper::StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fd_budget::FdBudget;
    use herald_broker::BrokerMetrics;

    /// Every accepted connection's task carries this future until hyper lets go of it: the
    /// TLS branch's state (the handshake and hyper over a `TlsStream`, about 3.7 KiB) must be
    /// boxed apart, not sized into every plain connection's task. Measured: 1320 bytes
    /// boxed, 5056 not, hyper's plain connection alone 896 (rustc 1.95, debug).
    #[tokio::test]
    async fn a_plain_connection_task_does_not_carry_the_tls_state() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (tcp, peer) = l.accept().await.unwrap();
        let fds = FdBudget {
            limit: 0,
            reserve: 0,
            public_sockets: 10,
        };
        let budget = SocketBudget::public(&fds, &Config::default(), &BrokerMetrics::new());
        let limits = ServeLimits {
            header_timeout: Duration::from_secs(1),
            max_head_bytes: 8192,
        };
        let conn = Conn {
            tcp,
            peer,
            deadline: Instant::now(),
            permit: Arc::new(budget.admit().unwrap()),
            budget,
            stop: CancellationToken::new(),
            limits,
            edge: Edge::default(),
        };
        let handler = |_req: Request<Incoming>, _peer: SocketAddr| async { Response::new(Body::default()) };
        let task = connection(conn, handler);
        let size = std::mem::size_of_val(&task);
        // What hyper's plain connection needs anyway, for comparison.
        let _other = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        let svc = service_fn(|_req: Request<Incoming>| async { Ok::<_, Infallible>(Response::new(Body::default())) });
        let stop = CancellationToken::new();
        let plain = std::mem::size_of_val(&serve(TokioIo::new(tcp), svc, limits, Instant::now(), &stop));
        let tls = std::mem::size_of::<tokio_rustls::server::TlsStream<TcpStream>>();
        assert!(
            size < plain + tls / 2,
            "a plain connection's task is {size} bytes: hyper's plain connection {plain} plus more than half a TlsStream ({tls})"
        );
    }
}
