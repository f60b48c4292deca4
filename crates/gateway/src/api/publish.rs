//! Publishing over HTTP: `POST /api/publish` (`{"topic", "data"}`) and the raw-body
//! `POST /api/topics/{topic}/publish`, plus the core the batch endpoints share.
//!
//! A publication goes through the core (`Core::publish`) exactly like a WebSocket one
//! (source `http`): local fan-out at once, then the relay. The answer waits for the relay's verdict
//! (bounded by [`RELAY_ANSWER_TIMEOUT`]):
//! - relayed to the other nodes: 200, `"relayed": true, "relay": "ok"`;
//! - single node (in-process relay without peers): 200, `"relayed": false,
//!   "relay": "standalone"`; there is no other node to reach, so the publish is complete;
//! - the relay could not take it: 503 `relay_unavailable`, `"accepted": false`. The local
//!   subscribers did get it (`delivered` says how many); the other nodes did not. A caller
//!   that retries may cause duplicates locally, never losses.
//!
//! The raw-body endpoint lets the `Content-Type` decide the payload kind: JSON
//! (`application/json`, `application/*+json`: validated), text (`text/*`: UTF-8
//! validated), anything else binary, so `curl --data-binary @file` publishes a file as is.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{broker::FanOut, PublishTicket, RelayState};
use herald_protocol::Payload;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::body::{self, Media};
use super::error::{ApiError, ApiResult};
use super::message::{Limits, MessageIn};
use crate::http_server::Body;
use crate::state::AppState;

/// Longest wait for the relay's verdict (the core's bound, the same as for a WebSocket
/// publish). Past it the answer is 503: the message may or may not have reached the other
/// nodes, and saying "unknown" as an error is the safe side.
pub const RELAY_ANSWER_TIMEOUT: Duration = crate::core::RELAY_ANSWER_TIMEOUT;

/// What one publication did, as reported to the caller (one batch item, or the whole
/// answer of a single publish).
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// Published to the cluster (or standalone). False when the relay failed.
    pub accepted: bool,
    pub topic: String,
    /// Local subscribers the message was queued to.
    pub delivered: usize,
    /// Local subscribers that did not get it (full outbox, or closing).
    pub dropped: usize,
    /// Handed to the other nodes through the relay.
    pub relayed: bool,
    /// `ok`, `standalone` or `unavailable`.
    pub relay: &'static str,
    /// Set with `relay: "unavailable"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The payload kind chosen by the raw-body endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The message's offset in its topic's stream (topics with history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The stream's epoch (topics with history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// A publication whose local fan-out is done and whose relay verdict is to come.
pub struct InFlight {
    topic: String,
    local: FanOut,
    ticket: PublishTicket,
    standalone: bool,
}

/// The per-message limits from the configuration.
pub fn limits(state: &AppState) -> Limits {
    Limits {
        topics: state.config.topic_rules(),
        max_data: state.config.limits.max_message_bytes,
    }
}

/// Refuses a publish to one of the node's system topics (`[demo]` time and stats).
pub fn check_reserved(state: &AppState, topic: &str) -> Result<(), ApiError> {
    state
        .core
        .check_reserved(topic)
        .map_err(|r| ApiError::Reserved(r.to_string()))
}

/// Publishes (local fan-out now, relay started); await [`InFlight::finish`] for the verdict.
pub fn start(state: &AppState, topic: String, payload: Payload) -> InFlight {
    let standalone = state.broker.relay_state() == RelayState::Standalone;
    let report = state.core.publish_http(&topic, payload);
    InFlight {
        topic,
        local: report.local,
        ticket: report.relay,
        standalone,
    }
}

impl InFlight {
    /// Waits for the relay's verdict.
    pub async fn finish(self) -> Outcome {
        let verdict = match tokio::time::timeout(RELAY_ANSWER_TIMEOUT, self.ticket.outcome()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the relay did not answer in time; the other nodes may or may not have it".into()),
        };
        let dropped = self.local.dropped_slow + self.local.dropped_closed;
        let delivered = self.local.delivered;
        let position = verdict.as_ref().ok().cloned().flatten();
        let mut out = Outcome {
            accepted: true,
            topic: self.topic,
            delivered,
            dropped,
            relayed: !self.standalone,
            relay: if self.standalone { "standalone" } else { "ok" },
            code: None,
            message: None,
            kind: None,
            offset: position.as_ref().map(|p| p.offset),
            epoch: position.map(|p| p.epoch),
        };
        if let Err(why) = verdict {
            out.accepted = false;
            out.relayed = false;
            out.relay = "unavailable";
            out.code = Some("relay_unavailable");
            out.message = Some(format!(
                "{why}; the message reached {delivered} local subscriber(s) on this node but not the other nodes"
            ));
        }
        out
    }
}

/// 200 with the outcome, or 503 `relay_unavailable` (with `Retry-After`) when not relayed.
pub fn respond(outcome: &Outcome) -> Response<Body> {
    let status = if outcome.accepted {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = super::json(status, outcome);
    if !outcome.accepted {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// `POST /api/publish`.
pub async fn publish(state: &Arc<AppState>, req: Request<Incoming>) -> ApiResult {
    body::require_json(req.headers())?;
    let bytes = body::read(req, state.config.admin.max_body_bytes).await?;
    let parsed: MessageIn<'_> =
        serde_json::from_slice(&bytes).map_err(|e| body::json_error(e, "an object {\"topic\": ..., \"data\": ...}"))?;
    let msg = parsed.validate(limits(state)).map_err(|r| r.error)?;
    check_reserved(state, &msg.topic)?;
    let payload = Payload::json(body::slice_of(&bytes, msg.data.get()));
    let outcome = start(state, msg.topic, payload).finish().await;
    Ok(respond(&outcome))
}

/// `POST /api/topics/{topic}/publish`: the body is the payload.
pub async fn publish_raw(state: &Arc<AppState>, topic: String, req: Request<Incoming>) -> ApiResult {
    check_reserved(state, &topic)?;
    let media = body::media(req.headers());
    if let Media::Text { charset: Some(c) } = &media {
        if !matches!(c.as_str(), "utf-8" | "utf8" | "us-ascii") {
            return Err(ApiError::UnsupportedMediaType(format!(
                "text bodies must be UTF-8, not {c}"
            )));
        }
    }
    let max_data = state.config.limits.max_message_bytes;
    let limit = state.config.admin.max_body_bytes.min(max_data);
    let bytes = body::read(req, limit).await?;
    let payload = payload_for(&media, bytes)?;
    let kind = payload.kind;
    let mut outcome = start(state, topic, payload).finish().await;
    outcome.kind = Some(kind.as_str());
    Ok(respond(&outcome))
}

/// The payload a raw body makes under `media` (module docs).
fn payload_for(media: &Media, bytes: Bytes) -> Result<Payload, ApiError> {
    match media {
        Media::Json => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
                .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
            let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(0);
            let end = bytes
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(0, |e| e + 1);
            Ok(Payload::json(bytes.slice(start..end)))
        }
        Media::Text { .. } => {
            std::str::from_utf8(&bytes).map_err(|_| ApiError::InvalidUtf8)?;
            Ok(Payload::text(bytes))
        }
        Media::Absent | Media::Other(_) => Ok(Payload::binary(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::PayloadKind;

    #[test]
    fn content_type_decides_the_kind() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let p = payload_for(&Media::Json, b(" {\"a\": 1}\n")).unwrap();
        assert_eq!((p.kind, &p.bytes[..]), (PayloadKind::Json, &b"{\"a\": 1}"[..]));
        assert!(matches!(
            payload_for(&Media::Json, b("{oops")),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            payload_for(&Media::Json, b("")),
            Err(ApiError::InvalidJson(_))
        ));
        let p = payload_for(&Media::Text { charset: None }, b("héllo")).unwrap();
        assert_eq!(p.kind, PayloadKind::Text);
        assert_eq!(
            payload_for(&Media::Text { charset: None }, Bytes::from_static(&[0xff, 0xfe])).unwrap_err(),
            ApiError::InvalidUtf8
        );
        let p = payload_for(&Media::Other("image/png".into()), Bytes::from_static(&[0, 1, 255])).unwrap();
        assert_eq!(p.kind, PayloadKind::Binary);
        assert_eq!(payload_for(&Media::Absent, b("x")).unwrap().kind, PayloadKind::Binary);
    }
}
