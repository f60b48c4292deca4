//! Routes of the public listener: `GET /ws` (JSON protocol v1), `GET /raw/{topic}` (raw
//! mode), `GET /healthz`, the embedded browser client `/client/herald.js` (and `.d.ts`) and,
//! with `[demo]` enabled, the demo pages under `/demo/` (`static_files.rs`). Everything a request can get wrong is answered before the
//! upgrade with an HTTP status and a JSON body (`code`, `message`), and counted:
//! 404 unknown path, 405 wrong method, 426 not a WebSocket upgrade, 400 bad topic or bad
//! handshake (HTTP/1.0, a `Sec-WebSocket-Key` that is not 16 bytes in base64), 403
//! `origin_not_allowed` (`origin.rs`), 401 a token (`Authorization: Bearer` or `?token=`)
//! that does not verify, 403 a topic (`?topics=`, the raw path) the connection may not
//! subscribe to, 429 at a client IP's limit (`ip_limits.rs`), 503 connection limit or
//! draining. The checks before the slot is reserved are cheap and
//! bounded: a `topics` list is counted before any topic in it is validated, and an echoed
//! topic is cut to [`ECHO_CHARS`] characters.
//!
//! After a successful upgrade the connection leaves hyper: its TCP stream (with its rustls
//! connection, on a TLS listener) is taken back, and the session runs in the node's session
//! tracker (`session/`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use herald_broker::SubscriberMode;
use herald_protocol::validate_topic;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Version};

use crate::core::{Refusal, RELAY_ANSWER_TIMEOUT};
use crate::http_server::{json_error, json_response, Body};
use crate::query::{param, percent_decode};
use crate::session::{self, SessionParams};
use crate::socket_budget::ServePermit;
use crate::state::AppState;
use crate::static_files;

/// Entry point for every public request.
pub async fn route(state: Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/healthz" => {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET");
            }
            json_response(
                StatusCode::OK,
                serde_json::json!({"status": "ok", "node": &*state.node_id}).to_string(),
            )
        }
        "/ws" => upgrade(state, req, peer, SubscriberMode::Json, None).await,
        p if p.starts_with("/client/") => match static_files::client_asset(p) {
            Some(asset) => static_files::serve(req.method(), req.headers(), asset, true),
            None => not_found(),
        },
        "/demo" if state.config.demo.enabled => static_files::demo_redirect(),
        "/demo/config.js" if state.config.demo.enabled => {
            static_files::serve(req.method(), req.headers(), &state.demo_config, false)
        }
        p if p.starts_with("/demo/") && state.config.demo.enabled => {
            match static_files::demo_asset(&p["/demo/".len()..]) {
                Some(asset) => static_files::serve(req.method(), req.headers(), asset, false),
                None => not_found(),
            }
        }
        p if p.starts_with("/raw/") => {
            let raw = &p["/raw/".len()..];
            match percent_decode(raw, false) {
                Some(topic) => upgrade(state, req, peer, SubscriberMode::Raw, Some(topic)).await,
                None => reject(
                    &state,
                    StatusCode::BAD_REQUEST,
                    "invalid_topic",
                    "topic is not valid percent-encoded UTF-8",
                ),
            }
        }
        _ => not_found(),
    }
}

fn not_found() -> Response<Body> {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; WebSocket endpoints are /ws and /raw/{topic}",
    )
}

use crate::core::shown;
pub use crate::core::ECHO_CHARS;

/// RFC 6455 §4.1: the key is the base64 of 16 bytes (24 characters with padding).
fn valid_key(req: &Request<Incoming>) -> bool {
    let Some(key) = req.headers().get(hyper::header::SEC_WEBSOCKET_KEY) else {
        return true; // missing: fastwebsockets answers that one itself
    };
    let key = key.as_bytes();
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

fn reject(state: &AppState, status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let reason = match status {
        StatusCode::SERVICE_UNAVAILABLE if code == "connection_limit" => "connection_limit",
        StatusCode::SERVICE_UNAVAILABLE => "not_ready",
        StatusCode::FORBIDDEN if code == "origin_not_allowed" => "origin_not_allowed",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN if code == "forbidden" => "forbidden",
        _ => "bad_request",
    };
    state.metrics.connections_rejected.with_label_values(&[reason]).inc();
    json_error(status, code, message)
}

/// The token an upgrade carries: `Authorization: Bearer <token>` first, else `?token=`.
/// `Some(Err)` for a header or parameter that is there but unusable.
fn token_of(req: &Request<Incoming>, query: Option<&str>) -> Option<Result<String, &'static str>> {
    if let Some(h) = req.headers().get(hyper::header::AUTHORIZATION) {
        // Only the Bearer scheme is ours: a proxy's own `Basic` header (say) is not a bad
        // token, and `?token=` still counts after it.
        let value = h.as_bytes();
        let is_bearer = value.len() >= 6 && value[..6].eq_ignore_ascii_case(b"bearer");
        if is_bearer {
            let token = h.to_str().ok().map(|v| v[6..].trim());
            let after_scheme = value.get(6).is_none_or(|b| *b == b' ');
            return Some(match token {
                Some(t) if !t.is_empty() && after_scheme => Ok(t.to_owned()),
                _ => Err("the Authorization header must be `Bearer <token>`"),
            });
        }
    }
    match param(query, "token")? {
        Ok(t) if !t.is_empty() => Some(Ok(t)),
        _ => Some(Err("`token` must be a non-empty, valid percent-encoded value")),
    }
}

async fn upgrade(
    state: Arc<AppState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    mode: SubscriberMode,
    raw_topic: Option<String>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return reject(
            &state,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "a WebSocket upgrade uses GET",
        );
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return reject(
            &state,
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "connect with a WebSocket client",
        );
    }
    if req.version() < Version::HTTP_11 {
        return reject(
            &state,
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "a WebSocket upgrade needs HTTP/1.1",
        );
    }
    if !valid_key(&req) {
        return reject(
            &state,
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "Sec-WebSocket-Key must be the base64 of 16 bytes",
        );
    }
    // Cross-site WebSocket hijacking: refused before anything else of the request is used.
    if let Err(refusal) = state.origins.check(req.headers()) {
        return reject(
            &state,
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            &refusal.to_string(),
        );
    }
    if state.shutdown.draining.is_cancelled() {
        return reject(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is shutting down; connect to another",
        );
    }
    let rules = state.config.topic_rules();
    let query = req.uri().query().map(str::to_owned);
    let mut topics = Vec::new();
    if let Some(t) = raw_topic {
        if let Err(e) = validate_topic(&t, rules) {
            return reject(
                &state,
                StatusCode::BAD_REQUEST,
                "invalid_topic",
                &format!("invalid topic {}: {e}", shown(&t)),
            );
        }
        topics.push(t);
    } else if let Some(list) = param(query.as_deref(), "topics") {
        let Ok(list) = list else {
            return reject(
                &state,
                StatusCode::BAD_REQUEST,
                "invalid_topic",
                "`topics` is not valid percent-encoded UTF-8",
            );
        };
        // Counted before anything else, duplicates included: the work below is then
        // bounded by the limit, whatever the URL holds.
        let max = state.config.limits.max_subscriptions;
        if list.split(',').filter(|t| !t.is_empty()).nth(max).is_some() {
            return reject(
                &state,
                StatusCode::BAD_REQUEST,
                "too_many_subscriptions",
                &format!("at most {max} topics per connection"),
            );
        }
        let mut seen = HashSet::new();
        for t in list.split(',').filter(|t| !t.is_empty()) {
            if let Err(e) = validate_topic(t, rules) {
                return reject(
                    &state,
                    StatusCode::BAD_REQUEST,
                    "invalid_topic",
                    &format!("invalid topic {}: {e}", shown(t)),
                );
            }
            if seen.insert(t) {
                topics.push(t.to_owned());
            }
        }
    }
    let echo = match param(query.as_deref(), "echo") {
        None => true,
        Some(Ok(v)) if v == "true" || v == "1" => true,
        Some(Ok(v)) if v == "false" || v == "0" => false,
        Some(_) => {
            return reject(
                &state,
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "`echo` must be true or false",
            )
        }
    };
    let json_heartbeat =
        match param(query.as_deref(), "heartbeat") {
            None => false,
            Some(Ok(v)) if v == "ws" => false,
            Some(Ok(v)) if v == "json" && mode == SubscriberMode::Json => true,
            Some(Ok(v)) if v == "json" => return reject(
                &state,
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "`heartbeat=json` is for /ws only: raw connections carry no JSON (their heartbeat is WebSocket pings)",
            ),
            Some(_) => {
                return reject(
                    &state,
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    "`heartbeat` must be json or ws",
                )
            }
        };
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(fastwebsockets::WebSocketError::InvalidSecWebsocketVersion) => {
            // RFC 6455 §4.4: say which version we speak.
            let mut r = reject(
                &state,
                StatusCode::UPGRADE_REQUIRED,
                "bad_handshake",
                "Sec-WebSocket-Version must be 13",
            );
            r.headers_mut()
                .insert("sec-websocket-version", hyper::header::HeaderValue::from_static("13"));
            return r;
        }
        Err(e) => return reject(&state, StatusCode::BAD_REQUEST, "bad_handshake", &e.to_string()),
    };
    // Registered now, before the 101 goes out: the client is subscribed once it has the
    // answer, and on a cluster the 101 waits until the relay confirmed every topic, so
    // whatever any node publishes after the client has the answer reaches it (unless the
    // relay is down: see below). If the upgrade never completes, dropping `prepared`
    // undoes it.
    // The client behind trusted proxies, and its per-IP limits (429 before anything is
    // registered); its concurrent place is held by the session until it ends.
    let peer = state.client_addrs.resolve(peer, req.headers());
    let ip_slot = match state.ip_limits.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.response(),
    };
    // Who connects (401 for a token that does not verify), and whether it may subscribe
    // to the topics it names (403): after the cheap per-IP checks, before anything is
    // registered.
    let identity = match token_of(&req, query.as_deref()) {
        None => state.identity.anonymous(),
        Some(Err(why)) => return reject(&state, StatusCode::UNAUTHORIZED, "unauthorized", why),
        Some(Ok(token)) => match state.identity.authenticate(&token) {
            Ok(identity) => identity,
            Err(e) => return reject(&state, StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()),
        },
    };
    if let Err(r) = state
        .core
        .check_subscribe(&identity.permissions, topics.iter().map(String::as_str))
    {
        return reject(&state, StatusCode::FORBIDDEN, r.code().as_str(), &r.to_string());
    }
    let params = SessionParams {
        mode,
        topics,
        echo,
        json_heartbeat,
        peer,
        identity,
        ip_slot,
    };
    let (mut prepared, mut confirmation) = match session::Prepared::new(state.clone(), params) {
        Ok(p) => p,
        Err(session::PrepareError::Refused(r @ Refusal::ConnectionLimit { .. })) => {
            return reject(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "connection_limit",
                &r.to_string(),
            )
        }
        Err(session::PrepareError::Refused(r)) => {
            return reject(&state, StatusCode::BAD_REQUEST, r.code().as_str(), &r.to_string())
        }
    };
    // The connection holds a session slot now: its handshake place is handed over, so it
    // does not count twice while the 101 waits for the relay.
    if let Some(permit) = req.extensions().get::<Arc<ServePermit>>() {
        permit.hand_over();
    }
    let deadline = tokio::time::Instant::now() + RELAY_ANSWER_TIMEOUT;
    match confirmation.wait(deadline).await {
        // Latest values (`latest_on_subscribe`) follow the welcome.
        Ok(_) => confirmation.release(),
        Err(e) => {
            // The relay cannot promise these topics now (down, or no answer in time). The
            // node still serves its own clients: the subscriptions hold here and are
            // extended to the cluster when the relay recovers; a JSON client is told so
            // right after the welcome, a raw one (no answers in raw mode) has the metric
            // and the readiness.
            prepared.relay_unavailable(&e);
        }
    }
    let session_task = async move {
        let ws = match fut.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade did not complete");
                return;
            }
        };
        let Some((socket, read_buf)) = session::Socket::from_upgraded(ws.into_inner().into_inner()) else {
            tracing::error!("upgraded connection is neither a TCP nor a TLS stream");
            return;
        };
        session::run(prepared, read_buf, Arc::new(socket)).await;
    };
    state.sessions.spawn(session_task);
    let (head, _) = response.into_parts();
    Response::from_parts(head, Body::default())
}
