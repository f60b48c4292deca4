//! `GET /api/topics/{topic}/history?since=N&limit=M`: a topic's stream, oldest first, in
//! pages of at most `history::MAX_READ` messages; and the stream head that
//! `GET /api/topics/{topic}` shows. Reads go to the relay's history (this node's memory,
//! or Redis: the same answer on every node of a cluster) and wait at most
//! [`RELAY_ANSWER_TIMEOUT`].

use base64::Engine;
use herald_broker::history::MAX_READ;
use herald_protocol::{Payload, PayloadKind, StreamPos};
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::{ApiError, ApiResult};
use crate::core::RELAY_ANSWER_TIMEOUT;
use crate::query::param;
use crate::state::AppState;

/// Messages a page holds when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

#[derive(Serialize)]
struct Page<'a> {
    topic: &'a str,
    epoch: String,
    /// The stream's latest offset (0: nothing published yet).
    offset: u64,
    /// Whether this page continues `since` without a loss (same epoch, nothing trimmed or
    /// expired between `since` and the first message).
    complete: bool,
    /// The page is full: ask again with `since` = the last offset for more.
    more: bool,
    messages: Vec<Stored>,
}

#[derive(Serialize)]
struct Stored {
    offset: u64,
    data: Box<RawValue>,
    /// `base64` for a binary payload (`data` is then its base64 text).
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    /// Publish time, microseconds since the Unix epoch.
    published_at_us: u64,
}

/// A payload as JSON: JSON as is, text as a string, binary as base64.
fn data(p: &Payload) -> (Box<RawValue>, Option<&'static str>) {
    let text = match p.kind {
        PayloadKind::Json => String::from_utf8_lossy(&p.bytes).into_owned(),
        PayloadKind::Text => serde_json::to_string(&String::from_utf8_lossy(&p.bytes)).unwrap_or_default(),
        PayloadKind::Binary => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&p.bytes);
            return (
                RawValue::from_string(format!("\"{b64}\"")).expect("a base64 string is JSON"),
                Some("base64"),
            );
        }
    };
    let raw = RawValue::from_string(text).unwrap_or_else(|_| RawValue::from_string("null".into()).expect("JSON"));
    (raw, None)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::RelayUnavailable(e.to_string())
}

/// The stream head of a history topic (`None` for a topic without history).
pub async fn head(state: &AppState, topic: &str) -> Result<Option<StreamPos>, ApiError> {
    let (Some(policy), Some(h)) = (state.broker.stream_policy(topic), state.broker.relay_history()) else {
        return Ok(None);
    };
    let ticket = h.latest(topic, &policy);
    match tokio::time::timeout(RELAY_ANSWER_TIMEOUT, ticket.outcome()).await {
        Ok(Ok(page)) => Ok(Some(page.head)),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable("the relay did not answer in time")),
    }
}

/// See the module docs.
pub async fn history(state: &AppState, topic: &str, query: Option<&str>) -> ApiResult {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        match param(query, name) {
            None => Ok(None),
            Some(Ok(v)) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::InvalidParameter(format!("`{name}` must be a whole number, not {v:?}"))),
            Some(Err(())) => Err(ApiError::InvalidParameter(format!(
                "`{name}` is not valid percent-encoding"
            ))),
        }
    };
    let since = number("since")?.unwrap_or(0);
    let limit = match number("limit")? {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_READ as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::InvalidParameter(format!(
                "`limit` must be 1 to {MAX_READ}, not {n}"
            )))
        }
    };
    let (Some(policy), Some(h)) = (state.broker.stream_policy(topic), state.broker.relay_history()) else {
        return Err(ApiError::NoHistory(topic.to_owned()));
    };
    let page = match tokio::time::timeout(RELAY_ANSWER_TIMEOUT, h.read(topic, since, limit, &policy).outcome()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(unavailable(e)),
        Err(_) => return Err(unavailable("the relay did not answer in time")),
    };
    let complete = page.continues(since, &page.head.epoch);
    let more = page.messages.len() >= limit;
    let messages = page
        .messages
        .iter()
        .map(|m| {
            let (data, encoding) = data(&m.payload);
            Stored {
                offset: m.offset,
                data,
                encoding,
                published_at_us: m.published_at_micros,
            }
        })
        .collect();
    let body = Page {
        topic,
        epoch: page.head.epoch,
        offset: page.head.offset,
        complete,
        more,
        messages,
    };
    Ok(super::json(hyper::StatusCode::OK, &body))
}
