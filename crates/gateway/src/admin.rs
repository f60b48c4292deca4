//! Routes of the admin listener (default 127.0.0.1:9090): `/metrics` (Prometheus text),
//! `/healthz` (alive), `/readyz` (ready for new clients, with the reason as JSON), and the
//! API under `/api/` (`api/`).
//!
//! The three probe routes never ask for an API key: scrapers and load-balancer health
//! checks must work without secrets, and they reveal only counts and states. Every request
//! on this listener, whatever its route or answer, is counted in
//! `herald_http_requests_total{status}` by status class and timed in
//! `herald_http_request_duration_seconds`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, Response, StatusCode};

use herald_broker::RelayState;

use crate::api;
use crate::http_server::{json_error, json_response, Body};
use crate::state::AppState;

/// Entry point for every admin request.
pub async fn route(state: Arc<AppState>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path();
    let resp = if path == "/api" || path.starts_with("/api/") {
        api::handle(&state, req).await
    } else {
        let probe: Option<fn(&AppState) -> Response<Body>> = match path {
            "/metrics" => Some(metrics),
            "/healthz" => Some(healthz),
            "/readyz" => Some(readyz),
            _ => None,
        };
        match probe {
            None => json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; the admin listener serves /metrics, /healthz, /readyz and /api/",
            ),
            Some(_) if req.method() != Method::GET && req.method() != Method::HEAD => {
                let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET");
                r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                r
            }
            Some(f) => f(&state),
        }
    };
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state.metrics.http_requests.with_label_values(&[class]).inc();
    state
        .metrics
        .http_request_duration
        .observe(started.elapsed().as_secs_f64());
    resp
}

fn metrics(state: &AppState) -> Response<Body> {
    // The relay gauges as of now, not as of the gauge task's last tick.
    crate::drain::refresh_relay_gauges(state);
    let text = state.metrics.render();
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(text)))
        .expect("static response parts are valid")
}

fn healthz(state: &AppState) -> Response<Body> {
    json_response(
        StatusCode::OK,
        serde_json::json!({"status": "ok", "node": &*state.node_id}).to_string(),
    )
}

fn readyz(state: &AppState) -> Response<Body> {
    let relay = state.broker.relay_state();
    let (ready, reason) = state.readiness_with(relay);
    let body = serde_json::json!({
        "ready": ready,
        "reason": reason,
        "relay": relay.as_str(),
        "degraded": matches!(relay, RelayState::Down | RelayState::Degraded),
        "shards": state.relay_shards_json(),
        "draining": state.shutdown.draining.is_cancelled(),
        "connections": state.connections.len(),
    })
    .to_string();
    json_response(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}
