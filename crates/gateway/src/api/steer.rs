//! Acting on a node: close one connection (`POST /api/connections/{id}/close`), close every
//! local subscriber of a topic (`POST /api/topics/{topic}/disconnect`), and start the
//! node's phased drain (`POST /api/drain`).
//!
//! A close goes through the connection's outbox (`Outbox::close` with the queued data
//! discarded): the session's writer sends the close frame with the requested code and
//! reason and stops, and the session ends counted as `kicked` in
//! `herald_connections_closed_total`. The call returns once the close is requested, not
//! when the client has seen it. Disconnecting a topic's subscribers closes those whole
//! connections, with every other subscription they hold.
//!
//! Close codes accepted: 1000 (normal), 1001 (going away), 1008 (policy violation), 1013
//! (try again later) and the application range 3000-4999. Reasons are at most 123 bytes
//! of UTF-8 (a close frame carries 125 bytes, two of them the code).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::body;
use super::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The close code used when the request names none: application-defined, documented as
/// "closed by the node operator".
pub const DEFAULT_CODE: u16 = 4000;
/// The reason used when the request names none.
pub const DEFAULT_REASON: &str = "closed by the node operator";
/// Longest close reason in bytes.
pub const MAX_REASON: usize = 123;
/// The largest body a close request may have.
const MAX_CLOSE_BODY: usize = 4096;

/// `{"code": 4000, "reason": "..."}`, both optional; an empty body takes the defaults.
#[derive(Debug, Default, Deserialize)]
struct CloseIn {
    code: Option<u16>,
    reason: Option<String>,
}

/// Whether the API lets an operator close a connection with `code`.
pub fn allowed_code(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1008 | 1013 | 3000..=4999)
}

/// Reads and checks the close request.
async fn close_request(req: Request<Incoming>) -> Result<(u16, String), ApiError> {
    close_request_with(
        req,
        allowed_code,
        "use 1000, 1001, 1008, 1013 or 3000-4999",
        DEFAULT_CODE,
        DEFAULT_REASON,
    )
    .await
}

/// Reads and checks a close request whose code must pass `allowed` (`hint` says which are).
pub(super) async fn close_request_with(
    req: Request<Incoming>,
    allowed: fn(u16) -> bool,
    hint: &str,
    default_code: u16,
    default_reason: &str,
) -> Result<(u16, String), ApiError> {
    body::require_json(req.headers())?;
    let bytes = body::read(req, MAX_CLOSE_BODY).await?;
    let parsed: CloseIn = if bytes.iter().all(u8::is_ascii_whitespace) {
        CloseIn::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| body::json_error(e, "an object {\"code\": <close code>, \"reason\": \"...\"}"))?
    };
    let code = parsed.code.unwrap_or(default_code);
    if !allowed(code) {
        return Err(ApiError::InvalidField(format!(
            "close code {code} is not allowed; {hint}"
        )));
    }
    let reason = parsed.reason.unwrap_or_else(|| default_reason.to_owned());
    if reason.len() > MAX_REASON {
        return Err(ApiError::InvalidField(format!(
            "the reason is {} bytes; a close reason holds at most {MAX_REASON}",
            reason.len()
        )));
    }
    Ok((code, reason))
}

/// `POST /api/connections/{id}/close`.
pub async fn close_connection(state: &Arc<AppState>, id: u64, req: Request<Incoming>) -> ApiResult {
    let (code, reason) = close_request(req).await?;
    // Clone the outbox out of the map: no guard is held while closing.
    let outbox = state
        .connections
        .with(id, |c| c.outbox.clone())
        .ok_or_else(|| ApiError::NotFound(format!("no connection {id} on this node")))?;
    let closed = !outbox.is_closing();
    outbox.close(code, reason.clone(), true);
    let body = serde_json::json!({
        "connection": id.to_string(),
        "closed": closed,
        "code": code,
        "reason": reason,
    });
    Ok(super::json(StatusCode::OK, &body))
}

/// `POST /api/topics/{topic}/disconnect`.
pub async fn disconnect_topic(state: &Arc<AppState>, topic: String, req: Request<Incoming>) -> ApiResult {
    let (code, reason) = close_request(req).await?;
    let mut closed = 0usize;
    // Outbox::close takes only the outbox's own short lock, never the registry's, so it
    // is safe under the registry's shard lock.
    state.broker.registry().for_each_subscriber(&topic, |s| {
        if !s.outbox.is_closing() {
            s.outbox.close(code, reason.clone(), true);
            closed += 1;
        }
    });
    let body = serde_json::json!({ "topic": topic, "closed": closed, "code": code, "reason": reason });
    Ok(super::json(StatusCode::OK, &body))
}

/// `POST /api/drain`: starts the phased drain (see `node.rs`) and answers at once with
/// 202. The admin listener keeps answering until the drain's last phase.
pub fn drain(state: &AppState) -> ApiResult {
    let already = state.shutdown.draining.is_cancelled();
    state.shutdown.draining.cancel();
    if !already {
        tracing::info!("drain requested through the admin API");
    }
    let body = serde_json::json!({
        "node": &*state.node_id,
        "draining": true,
        "already_draining": already,
    });
    Ok(super::json(StatusCode::ACCEPTED, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1008, 1013, 3000, 4000, 4999] {
            assert!(allowed_code(ok), "{ok}");
        }
        for bad in [0, 999, 1002, 1005, 1006, 1011, 1015, 2999, 5000] {
            assert!(!allowed_code(bad), "{bad}");
        }
    }
}
