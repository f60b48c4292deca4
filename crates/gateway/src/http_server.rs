//! The accept loop shared by the public and the admin listener: accept, hand each TCP
//! connection to hyper (HTTP/1.1 with upgrades) in its own tracked task, back off on accept
//! errors, and on `stop` let in-flight requests finish (graceful) within a bound.
//!
//! A connection's errors stay in its task and are logged at debug: a client going away is
//! normal. Upgraded WebSocket sessions are not hyper's business once upgraded; they live in
//! the node's session tracker (see `node.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Responses are small and built whole.
pub type Body = Full<Bytes>;

/// How long an open HTTP connection may take to finish after `stop`.
const GRACEFUL_BOUND: Duration = Duration::from_secs(5);

/// Serves `listener` until `stop` fires.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
    header_timeout: Duration,
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
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let stop = stop.clone();
        // Boxed: after a WebSocket upgrade the socket's reactor entry can keep this task's
        // waker (and so its allocation) alive for the WebSocket's whole life; boxed, that
        // costs the task header only, not hyper's connection state.
        tracker.spawn(Box::pin(async move {
            let svc = service_fn(move |req| {
                let fut = handler(req, peer);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(GRACEFUL_BOUND, conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        }));
    }
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
