//! Read-only views of a node: `GET /api/node`, `/api/topics` (paged), `/api/topics/{topic}`,
//! `/api/connections` (counts and a paged list) and `/api/connections/{id}`.
//!
//! Everything is local to the node asked: subscriber counts are this node's subscribers,
//! connections are this node's connections. Lists walk the registry or the connection
//! table one shard at a time and keep only a page (`page.rs`); no lock is held across an
//! await, and nothing here allocates per topic or per connection beyond the page.

use std::sync::Arc;

use herald_broker::ConnId;
use serde::Serialize;

use super::error::{ApiError, ApiResult};
use super::page::{PageParams, Smallest};
use crate::core::ConnInfo;
use crate::state::AppState;

/// Counts by wire mode (`/ws` is `json`, `/raw/{topic}` is `raw`).
#[derive(Debug, Default, Serialize)]
struct ByMode {
    json: usize,
    raw: usize,
}

impl ByMode {
    fn add(&mut self, mode: &str) {
        match mode {
            "raw" => self.raw += 1,
            _ => self.json += 1,
        }
    }
}

/// `GET /api/node`.
pub fn node(state: &AppState) -> ApiResult {
    let (ready, readiness) = state.readiness();
    let body = serde_json::json!({
        "node": &*state.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "listeners": {
            "public": state.ws_addr.to_string(),
            "admin": state.admin_addr.to_string(),
        },
        "relay": {
            "kind": state.config.relay.kind,
            "state": state.broker.relay_state().as_str(),
            "shards": state.relay_shards_json(),
        },
        "ready": ready,
        "readiness": readiness,
        "draining": state.shutdown.draining.is_cancelled(),
        "connections": state.connections.len(),
        "topics": state.broker.registry().topic_count(),
        "subscriptions": state.metrics.subscriptions.get(),
    });
    Ok(super::json(hyper::StatusCode::OK, &body))
}

#[derive(Serialize)]
struct TopicEntry<'a> {
    topic: &'a str,
    subscribers: usize,
}

/// `GET /api/topics?limit=&cursor=`: topics with local subscribers, by name.
pub fn topics(state: &AppState, query: Option<&str>) -> ApiResult {
    let page = PageParams::parse(query)?;
    let mut best: Smallest<(Arc<str>, usize)> = Smallest::new(page.limit);
    let mut total = 0usize;
    let cursor = page.cursor.as_deref();
    state.broker.registry().for_each_topic(|name, subscribers| {
        total += 1;
        if cursor.is_none_or(|c| **name > *c) {
            best.offer((name.clone(), subscribers));
        }
    });
    let (items, more) = best.finish();
    let next_cursor = if more {
        items.last().map(|(t, _)| t.to_string())
    } else {
        None
    };
    let topics: Vec<TopicEntry<'_>> = items
        .iter()
        .map(|(topic, subscribers)| TopicEntry {
            topic,
            subscribers: *subscribers,
        })
        .collect();
    let body = serde_json::json!({ "total": total, "topics": topics, "next_cursor": next_cursor });
    Ok(super::json(hyper::StatusCode::OK, &body))
}

/// `GET /api/topics/{topic}`: a topic nobody here listens to has 0 subscribers (a topic
/// is a name, not an object that exists or not). A topic with history also shows its
/// stream's `offset` (the latest) and `epoch`, read from history (the cluster's, on a
/// Redis relay). On a sharded relay, `shard` names the Redis that carries the topic.
pub async fn topic(state: &AppState, topic: &str) -> ApiResult {
    let mut by_mode = ByMode::default();
    let encodings = state.broker.encodings();
    let subscribers = state
        .broker
        .registry()
        .for_each_subscriber(topic, |s| by_mode.add(encodings.name(s.encoding)));
    let mut body = serde_json::json!({ "topic": topic, "subscribers": subscribers, "by_mode": by_mode });
    if let Some(shard) = state.broker.relay_shard_of(topic) {
        body["shard"] = serde_json::Value::String(shard.to_string());
    }
    if let Some(head) = super::history::head(state, topic).await? {
        body["history"] = serde_json::Value::Bool(true);
        body["offset"] = head.offset.into();
        body["epoch"] = head.epoch.into();
    }
    Ok(super::json(hyper::StatusCode::OK, &body))
}

/// One connection as the API shows it.
#[derive(Serialize)]
struct ConnEntry {
    /// As a string, like the `connection` field of the welcome frame.
    id: String,
    peer: String,
    mode: &'static str,
    /// The token's `sub`; `null` when anonymous.
    user: Option<String>,
    age_seconds: f64,
    queued_frames: usize,
    queued_bytes: usize,
    closing: bool,
}

fn entry(id: ConnId, info: &ConnInfo) -> ConnEntry {
    let (queued_frames, queued_bytes) = info.outbox.queued();
    ConnEntry {
        id: id.to_string(),
        peer: info.peer.to_string(),
        mode: info.mode,
        user: info.user.as_deref().map(str::to_owned),
        age_seconds: (info.opened.elapsed().as_millis() as f64) / 1000.0,
        queued_frames,
        queued_bytes,
        closing: info.outbox.is_closing(),
    }
}

/// `GET /api/connections?limit=&cursor=`: counts, and a page of connections by id.
pub fn connections(state: &AppState, query: Option<&str>) -> ApiResult {
    let page = PageParams::parse(query)?;
    let cursor: Option<ConnId> = match page.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.parse()
                .map_err(|_| ApiError::InvalidParameter("`cursor` must be a connection id".into()))?,
        ),
    };
    let mut by_mode = ByMode::default();
    let mut best: Smallest<ConnId> = Smallest::new(page.limit);
    let mut total = 0usize;
    state.connections.for_each(|id, info| {
        total += 1;
        by_mode.add(info.mode);
        if cursor.is_none_or(|c| id > c) {
            best.offer(id);
        }
    });
    let (ids, more) = best.finish();
    let next_cursor = if more {
        ids.last().map(|id| id.to_string())
    } else {
        None
    };
    // Looked up again one by one: no guard is held while building the page, and a
    // connection that ended meanwhile is simply left out.
    let list: Vec<ConnEntry> = ids
        .into_iter()
        .filter_map(|id| state.connections.with(id, |info| entry(id, info)))
        .collect();
    let body = serde_json::json!({
        "total": total,
        "by_mode": by_mode,
        "connections": list,
        "next_cursor": next_cursor,
    });
    Ok(super::json(hyper::StatusCode::OK, &body))
}

/// `GET /api/connections/{id}`.
pub fn connection(state: &AppState, id: ConnId) -> ApiResult {
    let found = state.connections.with(id, |info| entry(id, info));
    match found {
        Some(e) => Ok(super::json(hyper::StatusCode::OK, &e)),
        None => Err(ApiError::NotFound(format!("no connection {id} on this node"))),
    }
}
