//! The admin HTTP API under `/api/` on the admin listener: backends publish, operators
//! inspect and steer the node. docs/http-api.md is the user's guide, docs/openapi.yaml the
//! contract a test checks real responses against.
//!
//! A request goes: API key check (`auth.rs`, before anything else, so unauthenticated
//! callers learn nothing about routes), routing (`router.rs`: 404, 405 with `Allow`), the
//! key's scope (a publish-only key gets 403 `forbidden` outside the publish endpoints),
//! then one handler:
//! - `publish.rs`: `POST /api/publish`, `POST /api/topics/{topic}/publish` (raw body);
//! - `batch.rs`: `POST /api/publish/batch`, `POST /api/broadcast`;
//! - `inspect.rs`: `GET /api/node`, `/api/topics`, `/api/topics/{topic}`,
//!   `/api/connections`, `/api/connections/{id}`;
//! - `steer.rs`: `POST /api/connections/{id}/close`, `/api/topics/{topic}/disconnect`,
//!   `/api/drain`;
//! - `users.rs`: `POST /api/users/{user}/disconnect` (every node, through the relay);
//! - `history.rs`: `GET /api/topics/{topic}/history` (a topic's stream, paged).
//!
//! Shared pieces: `body.rs` reads bodies (size bound before reading, deadline) and reads
//! Content-Types, `message.rs` parses and validates the publish shapes, `page.rs` does
//! keyset paging. Every failure is an [`ApiError`] (`error.rs`) rendered as
//! `{"code", "message"}`. `/metrics`, `/healthz` and `/readyz` are not part of this
//! module (see `admin.rs`); request counting happens there.

mod auth;
mod batch;
pub(crate) mod body;
mod error;
mod history;
mod inspect;
mod message;
mod page;
mod publish;
mod router;
mod steer;
pub(crate) mod users;

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

pub use error::{ApiError, ApiResult};
pub use router::Route;

use crate::http_server::{json_response, Body};
use crate::state::AppState;

/// Handles one request whose path starts with `/api`.
pub async fn handle(state: &Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let admin = &state.config.admin;
    let scope = match auth::check(&admin.api_keys, &admin.publish_keys, req.headers()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let route = match router::resolve(req.method(), req.uri().path(), state.config.topic_rules()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = scope.allows(&route) {
        return e.into_response();
    }
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let result = match route {
        Route::Node => inspect::node(state),
        Route::Topics => inspect::topics(state, query),
        Route::Topic(t) => inspect::topic(state, &t).await,
        Route::TopicHistory(t) => history::history(state, &t, query).await,
        Route::Connections => inspect::connections(state, query),
        Route::Connection(id) => inspect::connection(state, id),
        Route::Publish => publish::publish(state, req).await,
        Route::TopicPublish(t) => publish::publish_raw(state, t, req).await,
        Route::PublishBatch => batch::batch(state, req).await,
        Route::Broadcast => batch::broadcast(state, req).await,
        Route::ConnectionClose(id) => steer::close_connection(state, id, req).await,
        Route::TopicDisconnect(t) => steer::disconnect_topic(state, t, req).await,
        Route::Drain => steer::drain(state),
        Route::UserDisconnect(u) => users::disconnect_user(state, u, req).await,
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// A JSON response of `value`.
fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    // Serializing these plain structs and `json!` values cannot fail.
    let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned());
    json_response(status, body)
}
