//! Applying one complete client message: JSON protocol v1 requests on `/ws`, verbatim
//! publishes on `/raw/{topic}`.
//!
//! Bad requests get an error frame (`code` and `message`, echoing the `id` when it could be
//! read) and the connection stays up; every error sent is counted by code. A publish with
//! an `id` is acknowledged only after the relay confirmed it reached the other nodes (or
//! there are none); if it could not, the answer is `relay_unavailable`, never an ack. The
//! local subscribers have the message either way.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use herald_broker::{PublishTicket, Source, SubscriberMode};
use herald_protocol::server_msg::{self, ErrorCode};
use herald_protocol::{decode_request, ClientRequest, Payload};

use super::reader::Message;
use super::{Exit, Session};

/// Handles one message; `Some` ends the session.
pub async fn handle(session: &mut Session, message: Message) -> Option<Exit> {
    match session.mode {
        SubscriberMode::Raw => {
            let payload = match message {
                Message::Text(b) => Payload::text(b),
                Message::Binary(b) => Payload::binary(b),
            };
            let topic = session.topics.first().cloned()?;
            let report = session
                .state
                .broker
                .publish(&topic, payload, Some(session.id), Source::Raw);
            // Raw mode has no acknowledgements; the relay counts what it could not send.
            drop_ticket(report.relay);
            None
        }
        SubscriberMode::Json => {
            session.flags.engaged.store(true, Ordering::Relaxed);
            match message {
                Message::Text(text) => handle_request(session, text).await,
                Message::Binary(_) => {
                    send_error(
                        session,
                        None,
                        ErrorCode::BinaryNotSupported,
                        "the JSON protocol uses text frames; use /raw/{topic} for binary",
                    );
                    None
                }
            }
        }
    }
}

fn drop_ticket(ticket: PublishTicket) {
    // A pending ticket's receiver is dropped: the relay still sends (or counts the failure).
    drop(ticket);
}

fn send_error(session: &Session, id: Option<&str>, code: ErrorCode, message: &str) {
    session
        .state
        .metrics
        .client_errors
        .with_label_values(&[code.as_str()])
        .inc();
    session.outbox.push_control(server_msg::error(id, code, message));
}

fn send_ack(session: &Session, id: Option<&str>) {
    if let Some(id) = id {
        session.outbox.push_control(server_msg::ack(id));
    }
}

async fn handle_request(session: &mut Session, text: Bytes) -> Option<Exit> {
    let rules = session.state.config.topic_rules();
    let request = match decode_request(&text, rules) {
        Ok(r) => r,
        Err(e) => {
            send_error(session, e.id, e.code, &e.message);
            return None;
        }
    };
    match request {
        ClientRequest::Ping { id } => {
            session.outbox.push_control(server_msg::pong(id));
        }
        ClientRequest::Subscribe { topics, id } => {
            let max = session.state.config.limits.max_subscriptions;
            let new = session.new_topics(topics.iter().map(|t| t.as_ref()));
            if session.topics.len() + new > max {
                let msg = format!(
                    "subscribing to {new} more topic(s) would pass the limit of {max} per connection (holding {})",
                    session.topics.len()
                );
                send_error(session, id, ErrorCode::TooManySubscriptions, &msg);
                return None;
            }
            for t in &topics {
                session.subscribe(t);
            }
            send_ack(session, id);
        }
        ClientRequest::Unsubscribe { topics, id } => {
            for t in &topics {
                session.unsubscribe(t);
            }
            send_ack(session, id);
        }
        ClientRequest::Publish { topic, data, id } => {
            let payload = Payload::json(slice_of(&text, data));
            let report = session
                .state
                .broker
                .publish(&topic, payload, Some(session.id), Source::Websocket);
            match id {
                None => drop_ticket(report.relay),
                Some(id) => match report.relay.outcome().await {
                    Ok(()) => send_ack(session, Some(id)),
                    Err(e) => {
                        let msg = format!("{e}; delivered to {} local subscriber(s) only", report.local.delivered);
                        send_error(session, Some(id), ErrorCode::RelayUnavailable, &msg);
                    }
                },
            }
        }
    }
    None
}

/// `part` (a sub-slice of `whole`) as a `Bytes` sharing `whole`'s buffer: no copy.
fn slice_of(whole: &Bytes, part: &str) -> Bytes {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    whole.slice(start..start + part.len())
}
