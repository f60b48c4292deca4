//! Many publications in one request: `POST /api/publish/batch` (`{"messages": [{"topic",
//! "data"}, ...]}`) and `POST /api/broadcast` (`{"topics": [...], "data": ...}`, one payload
//! to many topics, encoded once per topic and never copied).
//!
//! Each item is validated and published on its own, in array order (so messages of one
//! batch to one topic keep their order), and reported on its own in `results`, with the
//! HTTP status it would have had as a single publish: 200, 400/413 for an item refused
//! before publishing (not published at all), 503 `relay_unavailable` for an item delivered
//! locally but not relayed. The request answers 200 when every item was accepted and
//! 207 (Multi-Status) as soon as one was not; `accepted` and `failed` count them. Problems
//! with the request as a whole (not JSON, no list, more than [`MAX_ITEMS`]) are plain
//! 4xx errors and publish nothing.

use std::collections::HashSet;
use std::sync::Arc;

use herald_protocol::Payload;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

use super::body;
use super::error::{ApiError, ApiResult};
use super::message::{check_count, check_data, check_topic, parse_item, BatchIn, BroadcastIn, Refused, MAX_ITEMS};
use super::publish::{check_reserved, limits, start, InFlight, Outcome};
use crate::state::AppState;

/// One item's report.
#[derive(Debug, Serialize)]
pub struct ItemResult {
    /// Position in the request's list.
    pub index: usize,
    /// The status this item would have had as a single publish.
    pub status: u16,
    pub accepted: bool,
    /// The topic, when the item had a string there.
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relayed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ItemResult {
    fn published(index: usize, o: Outcome) -> Self {
        Self {
            index,
            status: if o.accepted { 200 } else { 503 },
            accepted: o.accepted,
            topic: Some(o.topic),
            delivered: Some(o.delivered),
            dropped: Some(o.dropped),
            relayed: Some(o.relayed),
            relay: Some(o.relay),
            code: o.code,
            message: o.message,
        }
    }

    fn refused(index: usize, r: Refused) -> Self {
        Self {
            index,
            status: r.error.status().as_u16(),
            accepted: false,
            topic: r.topic,
            delivered: None,
            dropped: None,
            relayed: None,
            relay: None,
            code: Some(r.error.code()),
            message: Some(r.error.to_string()),
        }
    }
}

/// One item between validation and the answer: published and waiting for the relay's
/// verdict, or already decided (refused).
enum Slot {
    Flying(InFlight),
    Done(ItemResult),
}

fn refused(index: usize, error: ApiError, topic: Option<String>) -> Slot {
    Slot::Done(ItemResult::refused(index, Refused { error, topic }))
}

/// The answer to a batch or a broadcast.
#[derive(Debug, Serialize)]
struct BatchResult {
    accepted: usize,
    failed: usize,
    results: Vec<ItemResult>,
}

/// Waits for every verdict (all publications are already in flight) and answers.
async fn finish(slots: Vec<Slot>) -> ApiResult {
    let mut results = Vec::with_capacity(slots.len());
    for (i, slot) in slots.into_iter().enumerate() {
        results.push(match slot {
            Slot::Flying(flight) => ItemResult::published(i, flight.finish().await),
            Slot::Done(result) => result,
        });
    }
    let accepted = results.iter().filter(|r| r.accepted).count();
    let failed = results.len() - accepted;
    let status = if failed == 0 {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok(super::json(
        status,
        &BatchResult {
            accepted,
            failed,
            results,
        },
    ))
}

/// `POST /api/publish/batch`.
pub async fn batch(state: &Arc<AppState>, req: Request<Incoming>) -> ApiResult {
    body::require_json(req.headers())?;
    let bytes = body::read(req, state.config.admin.max_body_bytes).await?;
    let parsed: BatchIn<'_> = serde_json::from_slice(&bytes)
        .map_err(|e| body::json_error(e, "an object {\"messages\": [{\"topic\": ..., \"data\": ...}, ...]}"))?;
    let items = parsed.messages.ok_or(ApiError::MissingField("messages"))?;
    check_count(items.len(), "messages")?;
    let limits = limits(state);
    let slots = items
        .iter()
        .enumerate()
        .map(|(i, item)| match parse_item(item, limits) {
            Ok(m) => match check_reserved(state, &m.topic) {
                Err(e) => refused(i, e, Some(m.topic)),
                Ok(()) => Slot::Flying(start(
                    state,
                    m.topic,
                    Payload::json(body::slice_of(&bytes, m.data.get())),
                )),
            },
            Err(r) => Slot::Done(ItemResult::refused(i, r)),
        })
        .collect();
    finish(slots).await
}

/// `POST /api/broadcast`.
pub async fn broadcast(state: &Arc<AppState>, req: Request<Incoming>) -> ApiResult {
    body::require_json(req.headers())?;
    let bytes = body::read(req, state.config.admin.max_body_bytes).await?;
    let parsed: BroadcastIn<'_> = serde_json::from_slice(&bytes)
        .map_err(|e| body::json_error(e, "an object {\"topics\": [...], \"data\": ...}"))?;
    let topics = parsed.topics.ok_or(ApiError::MissingField("topics"))?;
    let data = parsed.data.ok_or(ApiError::MissingField("data"))?;
    check_count(topics.len(), "topics")?;
    let limits = limits(state);
    check_data(data, limits)?;
    let payload = Payload::json(body::slice_of(&bytes, data.get()));
    let mut seen = HashSet::with_capacity(topics.len().min(MAX_ITEMS));
    let slots = topics
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let serde_json::Value::String(topic) = t else {
                return refused(i, ApiError::InvalidField("each topic must be a string".into()), None);
            };
            if let Err(e) = check_topic(&topic, limits.topics) {
                return refused(i, e, Some(topic));
            }
            if let Err(e) = check_reserved(state, &topic) {
                return refused(i, e, Some(topic));
            }
            if !seen.insert(topic.clone()) {
                let e = ApiError::InvalidField(format!("{topic:?} is listed more than once; it was published once"));
                return refused(i, e, Some(topic));
            }
            Slot::Flying(start(state, topic, payload.clone()))
        })
        .collect();
    finish(slots).await
}
