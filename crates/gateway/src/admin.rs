//! Routes of the admin listener (default 127.0.0.1:9090): `/metrics` (Prometheus text),
//! `/healthz` (alive), `/readyz` (ready for new clients, with the reason as JSON).
//! The `/api/` routes live in `api/` when present.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::http_server::{json_error, json_response, Body};
use crate::node::AppState;

/// Entry point for every admin request.
pub async fn route(state: Arc<AppState>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let get_only = |state: &AppState, f: &dyn Fn(&AppState) -> Response<Body>| {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            f(state)
        } else {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
        }
    };
    let resp = match path.as_str() {
        "/metrics" => get_only(&state, &metrics),
        "/healthz" => get_only(&state, &|s| {
            json_response(
                StatusCode::OK,
                serde_json::json!({"status": "ok", "node": &*s.node_id}).to_string(),
            )
        }),
        "/readyz" => get_only(&state, &readyz),
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state.metrics.http_requests.with_label_values(&[class]).inc();
    resp
}

fn metrics(state: &AppState) -> Response<Body> {
    let text = state.metrics.render();
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(text)))
        .expect("static response parts are valid")
}

fn readyz(state: &AppState) -> Response<Body> {
    let (ready, reason) = state.readiness();
    let body = serde_json::json!({
        "ready": ready,
        "reason": reason,
        "relay": state.broker.relay_state().as_str(),
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
