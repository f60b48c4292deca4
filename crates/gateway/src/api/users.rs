//! Acting on a user across the cluster: `POST /api/users/{user}/disconnect` closes every
//! connection whose token named `user` (`sub`), on this node and, through the relay's
//! control channel, on every other node.
//!
//! Locally the close goes through each connection's outbox after what is queued for it
//! (counted as `kicked`); the other nodes get a `ControlMessage::DisconnectUser` and do the
//! same ([`apply_control`]). The answer says how many local connections were closed and
//! whether the relay took the request; it does not wait for the other nodes to act.
//!
//! Close codes accepted: 1008 (policy violation) and the application range 4000-4999;
//! default 4001 "disconnected by the operator". Reasons are at most 123 bytes.

use std::sync::Arc;

use herald_broker::RelayState;
use herald_protocol::control::{valid_close_code, MAX_USER_BYTES};
use herald_protocol::ControlMessage;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::error::{ApiError, ApiResult};
use super::steer::close_request_with;
use crate::core::{Core, RELAY_ANSWER_TIMEOUT};
use crate::state::AppState;

/// The close code when the request names none.
pub const DEFAULT_CODE: u16 = 4001;
/// The reason when the request names none.
pub const DEFAULT_REASON: &str = "disconnected by the operator";

/// Checks a user id from the path.
pub fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
        return Err(ApiError::InvalidParameter(format!(
            "a user id is 1 to {MAX_USER_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// `POST /api/users/{user}/disconnect`.
pub async fn disconnect_user(state: &Arc<AppState>, user: String, req: Request<Incoming>) -> ApiResult {
    let (code, reason) = close_request_with(
        req,
        valid_close_code,
        "use 1008 or 4000-4999",
        DEFAULT_CODE,
        DEFAULT_REASON,
    )
    .await?;
    let closed = state.core.disconnect_user(&user, code, &reason);
    let message = ControlMessage::DisconnectUser {
        user: user.clone(),
        code,
        reason: reason.clone(),
    };
    let standalone = state.broker.relay_state() == RelayState::Standalone;
    let ticket = state.broker.send_control(&message);
    let relay_error = match tokio::time::timeout(RELAY_ANSWER_TIMEOUT, ticket.outcome()).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => {
            Some("the relay did not answer in time; other nodes may or may not close the user's connections".into())
        }
    };
    tracing::info!(user = %user, closed, relayed = relay_error.is_none() && !standalone, "user disconnected through the admin API");
    let mut body = serde_json::json!({
        "user": user,
        "closed": closed,
        "relayed": relay_error.is_none() && !standalone,
        "code": code,
        "reason": reason,
    });
    if let Some(e) = relay_error {
        body["relay_error"] = e.into();
    }
    Ok(super::json(StatusCode::OK, &body))
}

/// What another node's control message asks of this one.
pub fn apply_control(core: &Core, message: ControlMessage) {
    match message {
        ControlMessage::DisconnectUser { user, code, reason } => {
            let closed = core.disconnect_user(&user, code, &reason);
            tracing::info!(user = %user, closed, "user disconnected at another node's request");
        }
    }
}
