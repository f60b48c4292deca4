//! Applying one complete client message: JSON protocol v1 requests on `/ws`, verbatim
//! publishes on `/raw/{topic}`. Every request goes through the core (`crate::core`), the
//! one place where limits and permissions apply. A refused publish or subscribe gets the
//! error `forbidden`; a raw connection that publishes where it may not is closed with
//! 1008 "publish not allowed" (raw mode has no error frames).
//!
//! `auth` and `refresh` are one operation: the first token makes an anonymous connection
//! its user's, every later one must name the same user and replaces the permissions and
//! the expiry; subscriptions the new permissions forbid are dropped, each with a
//! `forbidden` error naming the topic, before the ack. A token that does not verify ends
//! the connection: error `unauthorized` (or `token_expired` for an expired token that
//! would have replaced a valid one), then close 1008 with the reason.
//!
//! Bad requests get an error frame (`code` and `message`, echoing the `id` when it could be
//! read) and the connection stays up; every error sent is counted by code. Answers that
//! depend on the relay (a subscribe, a publish with an `id`) are queued in request order
//! (`answers.rs`) and the reader goes on reading: a subscribe is acknowledged once the
//! cluster delivers its topics here, a publish once the relay has it (or there are no
//! other nodes); if the relay cannot, the answer is `relay_unavailable`, never an ack.
//!
//! A publish over the connection's rate limits (`core/rate.rs`) is not published: a JSON
//! publish with an `id` gets `rate_limited`, one without and a raw frame are dropped
//! (counted by the core); a connection over them for `limits.publish_overlimit_close_ms`
//! is closed with 1008.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use herald_broker::{Source, SubscriberMode};
use herald_protocol::server_msg::{self, ErrorCode};
use herald_protocol::{decode_request, ClientRequest, Payload};

use super::answers::{error_frame, topic_error_frame};
use super::reader::{pushed, Message};
use super::{Exit, Session};
use crate::core::Refusal;
use crate::identity::RefreshError;
use herald_auth::AuthError;

/// The close of a connection that stayed over its publish rate limits.
fn over_limit_exit(over_ms: u64) -> Exit {
    Exit::new(
        1008,
        format!("publish rate limit exceeded for {over_ms} ms"),
        "rate_limited",
    )
}

/// Handles one message; `Some` ends the session.
pub fn handle(session: &mut Session, message: Message) -> Option<Exit> {
    match session.conn.mode {
        SubscriberMode::Raw => {
            let payload = match message {
                Message::Text(b) => Payload::text(b),
                Message::Binary(b) => Payload::binary(b),
            };
            let topic = session.conn.topics().first().cloned()?;
            // Raw mode has no acknowledgements; the relay counts what it could not send,
            // the core what its rate limits refused (dropped). A raw connection that may
            // not publish on its topic is closed at its first frame.
            match session
                .state
                .core
                .publish_from(&mut session.conn, Source::Raw, &topic, payload)
            {
                Ok(report) => drop(report.relay),
                Err(Refusal::OverLimit { over_ms }) => return Some(over_limit_exit(over_ms)),
                Err(Refusal::Forbidden { .. } | Refusal::Reserved { .. }) => {
                    return Some(Exit::new(1008, "publish not allowed", "forbidden"))
                }
                Err(_) => {}
            }
            None
        }
        SubscriberMode::Json => {
            // A connection that may do nothing yet (anonymous, with a key configured) is
            // engaged only by a successful `auth`: pings alone must not hold its slot past
            // the first-message deadline.
            if session.conn.user().is_some() || !session.conn.permissions().allows_nothing() {
                session.flags.engaged.store(true, Ordering::Relaxed);
            }
            match message {
                Message::Text(text) => handle_request(session, text),
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

/// Sends an answer known now (in order behind any that wait).
fn send(session: &mut Session, frame: Bytes) {
    if let Some(b) = session.answers.send(&session.conn.outbox, frame) {
        session.backlog = pushed(b);
    }
}

fn send_error(session: &mut Session, id: Option<&str>, code: ErrorCode, message: &str) {
    let frame = error_frame(&session.state.metrics, id, code, message);
    send(session, frame);
}

fn handle_request(session: &mut Session, text: Bytes) -> Option<Exit> {
    let rules = session.state.config.topic_rules();
    let request = match decode_request(&text, rules) {
        Ok(r) => r,
        Err(e) => {
            send_error(session, e.id, e.code, &e.message);
            return None;
        }
    };
    // Disjoint borrows of the session: no handle cloned per request.
    let Session {
        state,
        conn,
        answers,
        backlog,
        flags,
    } = session;
    let core = &state.core;
    let mut answer = |b: Option<usize>| {
        if let Some(b) = b {
            *backlog = pushed(b);
        }
    };
    // Past its token's expiry (and leeway) a connection keeps only what it has until the
    // grace ends: no new subscribe or publish, only a `refresh`.
    let expires = flags.expires_ms.load(Ordering::Relaxed);
    if expires != 0
        && matches!(request, ClientRequest::Subscribe { .. } | ClientRequest::Publish { .. })
        && crate::identity::now_ms() >= expires
    {
        let frame = error_frame(
            &state.metrics,
            request.id(),
            ErrorCode::TokenExpired,
            "the token has expired; send refresh with a new one",
        );
        answer(answers.send(&conn.outbox, frame));
        return None;
    }
    match request {
        ClientRequest::Ping { id } => answer(answers.send(&conn.outbox, server_msg::pong(id))),
        // The answer to a JSON heartbeat: its arrival (the reader's `last_seen_ms`) is all
        // it is for; never answered.
        ClientRequest::Pong => {}
        ClientRequest::Subscribe { topics, since, id } => {
            match core.subscribe_from(conn, topics.iter().map(|t| t.as_ref()), &since, true) {
                Ok(confirmation) => answer(answers.subscribe(&conn.outbox, &state.metrics, id, confirmation)),
                Err(refusal) => {
                    let frame = error_frame(&state.metrics, id, refusal.code(), &refusal.to_string());
                    answer(answers.send(&conn.outbox, frame));
                }
            }
        }
        ClientRequest::Unsubscribe { topics, id } => {
            core.unsubscribe(conn, topics.iter().map(|t| t.as_ref()));
            if let Some(id) = id {
                answer(answers.send(&conn.outbox, server_msg::ack(id)));
            }
        }
        ClientRequest::Publish { topic, data, id } => {
            let payload = Payload::json(slice_of(&text, data));
            let report = match core.publish_from(conn, Source::Websocket, &topic, payload) {
                Ok(report) => report,
                Err(Refusal::OverLimit { over_ms }) => return Some(over_limit_exit(over_ms)),
                Err(refusal @ (Refusal::Forbidden { .. } | Refusal::Reserved { .. })) => {
                    // Always told (the topic is named), with the `id` when there is one.
                    let frame = error_frame(&state.metrics, id, refusal.code(), &refusal.to_string());
                    answer(answers.send(&conn.outbox, frame));
                    return None;
                }
                Err(refusal) => {
                    // Refused by the rate limits: told when it has an `id`, else only counted.
                    if let Some(id) = id {
                        let frame = error_frame(&state.metrics, Some(id), refusal.code(), &refusal.to_string());
                        answer(answers.send(&conn.outbox, frame));
                    }
                    return None;
                }
            };
            // Without an `id` the ticket is dropped: the relay still sends (or counts the
            // failure).
            if let Some(id) = id {
                let delivered = report.local.delivered;
                answer(answers.publish(&conn.outbox, &state.metrics, id, report.relay, delivered));
            }
        }
        ClientRequest::Auth { token, id } | ClientRequest::Refresh { token, id } => {
            let result = match conn.user() {
                None => state.identity.authenticate(&token).map_err(RefreshError::from),
                Some(user) => state.identity.refresh(Some(user), &token),
            };
            let identity = match result {
                Ok(identity) => identity,
                Err(e) => {
                    // Terminal: straight to the outbox (the close follows it), with the
                    // reason in the close frame too.
                    let expired = conn.user().is_some() && e == RefreshError::Token(AuthError::Expired);
                    let (code, label, reason) = if expired {
                        (ErrorCode::TokenExpired, "token_expired", "token expired".to_owned())
                    } else {
                        (ErrorCode::Unauthorized, "unauthorized", format!("unauthorized: {e}"))
                    };
                    conn.outbox
                        .push_control(error_frame(&state.metrics, id, code, &e.to_string()));
                    return Some(Exit::new(1008, reason, label));
                }
            };
            flags
                .expires_ms
                .store(identity.expires_ms.unwrap_or(0), Ordering::Relaxed);
            // The writer sleeps until its old deadline: wake it to arm the new expiry.
            conn.outbox.nudge_writer();
            flags.engaged.store(true, Ordering::Relaxed);
            for topic in core.set_identity(conn, identity) {
                let message = format!(
                    "subscription to {} dropped: the new token does not allow it",
                    crate::core::shown(&topic)
                );
                let frame = topic_error_frame(&state.metrics, ErrorCode::Forbidden, &topic, &message);
                answer(answers.send(&conn.outbox, frame));
            }
            if let Some(id) = id {
                answer(answers.send(&conn.outbox, server_msg::ack(id)));
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
