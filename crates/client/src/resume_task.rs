//! The task behind a [`ResumingClient`](crate::ResumingClient): it forwards the current
//! connection's events (dropping duplicates and recording positions on the way), and when
//! the connection is lost without the user asking, reconnects with backoff, resubscribes
//! the set with `since`, and reports the outcome as events.
//!
//! It owns the connection's `Events`, so it is the only reader of the event queue; requests
//! of the user run in the user's tasks on the shared `ClientHandle`. It never waits for an
//! answer while it should be forwarding events of a live connection (the answer would
//! queue behind events nobody reads): a resubscribe after `recovery_overflow` runs in a
//! task of its own.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::client::{Client, ClientHandle, Events};
use crate::error::{ClientError, CloseInfo};
use crate::event::Event;
use crate::history::SubscribeAck;
use crate::options::ClientOptions;
use crate::resume::{Inner, ResumeEvent};

/// The error code after which a subscription must be resumed from its last offset.
const RECOVERY_OVERFLOW: &str = "recovery_overflow";

type Out = mpsc::Sender<ResumeEvent>;

/// Why the task stops.
enum Stop {
    /// The user closed, or reconnecting gave up: emit `Closed` with this.
    Closed(CloseInfo),
    /// Nobody receives events any more.
    Abandoned,
}

pub(crate) async fn run(inner: Arc<Inner>, url: String, opts: ClientOptions, events: Events, out: Out) {
    let stop = supervise(&inner, &url, &opts, events, &out).await;
    let info = match stop {
        Stop::Closed(info) => info,
        Stop::Abandoned => CloseInfo::abnormal("the event receiver was dropped"),
    };
    inner.end(info.clone());
    let _ = out.send(ResumeEvent::Closed(info)).await;
}

async fn supervise(inner: &Arc<Inner>, url: &str, opts: &ClientOptions, mut events: Events, out: &Out) -> Stop {
    let mut closing = inner.closing.subscribe();
    loop {
        let info = match forward(inner, &mut events, out).await {
            Ok(info) => info,
            Err(stop) => return stop,
        };
        inner.clear_conn();
        if closing.borrow().is_some() {
            return Stop::Closed(info);
        }
        if out.send(ResumeEvent::Disconnected(info.clone())).await.is_err() {
            return Stop::Abandoned;
        }
        events = match reconnect(inner, url, opts, &mut closing, out, info).await {
            Ok(events) => events,
            Err(stop) => return stop,
        };
    }
}

/// Forwards one connection's events until it ends; returns how it ended.
async fn forward(inner: &Arc<Inner>, events: &mut Events, out: &Out) -> Result<CloseInfo, Stop> {
    loop {
        let ev = tokio::select! {
            ev = events.next_event() => ev,
            _ = out.closed() => return Err(Stop::Abandoned),
        };
        let ev = match ev {
            None => return Ok(CloseInfo::abnormal("connection events ended")),
            Some(Event::Closed(info)) => return Ok(info),
            Some(Event::Message(m)) => {
                if !inner.accept(&m) {
                    continue;
                }
                ResumeEvent::Message(m)
            }
            Some(Event::Error {
                id,
                code,
                message,
                topic,
            }) => {
                if code == RECOVERY_OVERFLOW {
                    if let (Some(t), Some(conn)) = (&topic, inner.current_conn()) {
                        tokio::spawn(resume_topic(inner.clone(), conn, t.clone(), out.clone()));
                    }
                }
                ResumeEvent::Error {
                    id,
                    code,
                    message,
                    topic,
                }
            }
            Some(Event::Other(f)) => ResumeEvent::Other(f),
        };
        if out.send(ev).await.is_err() {
            return Err(Stop::Abandoned);
        }
    }
}

/// After `recovery_overflow` the node ended the subscription of `topic`: subscribe it again
/// from the last offset delivered.
async fn resume_topic(inner: Arc<Inner>, conn: ClientHandle, topic: String, out: Out) {
    let since: HashMap<_, _> = inner.position(&topic).map(|p| (topic.clone(), p)).into_iter().collect();
    match conn.subscribe_since(&[&topic], &since).await {
        Ok(ack) => {
            inner.apply_resubscribe(&ack);
            if ack.recovered.get(&topic) == Some(&false) {
                let _ = out.send(ResumeEvent::Lost { topic }).await;
            }
        }
        Err(e) => {
            // A lost connection resubscribes everything anyway; anything else is reported.
            if !matches!(e, ClientError::Closed { .. }) {
                let _ = out.send(error_event(&e, Some(topic))).await;
            }
        }
    }
}

/// Reconnects with backoff until a connection is up and the set resubscribed.
async fn reconnect(
    inner: &Arc<Inner>,
    url: &str,
    opts: &ClientOptions,
    closing: &mut watch::Receiver<Option<CloseInfo>>,
    out: &Out,
    cause: CloseInfo,
) -> Result<Events, Stop> {
    let mut backoff = Backoff::new(opts.reconnect.clone());
    let mut last = cause;
    loop {
        let Some(delay) = backoff.next_delay() else {
            return Err(Stop::Closed(CloseInfo::abnormal(format!(
                "gave up reconnecting after {} attempts; last: {last}",
                backoff.attempts()
            ))));
        };
        let attempt = async {
            tokio::time::sleep(delay).await;
            let client = Client::connect_with(url, opts.clone()).await?;
            let (handle, events) = client.into_split();
            let ack = resubscribe(inner, &handle, out).await?;
            Ok::<_, ClientError>((handle, events, ack))
        };
        let result = tokio::select! {
            r = attempt => r,
            c = closing.wait_for(Option::is_some) => {
                let info = c.ok().and_then(|c| c.clone()).unwrap_or_else(|| CloseInfo::abnormal("closed"));
                return Err(Stop::Closed(info));
            }
            _ = out.closed() => return Err(Stop::Abandoned),
        };
        let (handle, events, ack) = match result {
            Ok(up) => up,
            Err(e) if gives_up(&e) => {
                return Err(Stop::Closed(CloseInfo::abnormal(format!("reconnecting failed: {e}"))));
            }
            Err(e) => {
                last = CloseInfo::abnormal(e.to_string());
                continue;
            }
        };
        inner.apply_resubscribe(&ack);
        // A close requested while the subscribe was in flight found no connection to close.
        if let Err(info) = inner.install(handle.clone()) {
            let _ = handle.close(info.code, &info.reason).await;
            return Err(Stop::Closed(info));
        }
        inner.count_reconnect();
        let mut lost: Vec<String> = ack
            .recovered
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(t, _)| t.clone())
            .collect();
        lost.sort();
        let up = ResumeEvent::Resubscribed {
            node: handle.node().to_owned(),
            connection: handle.connection_id().to_owned(),
            recovered: ack.recovered,
        };
        for ev in std::iter::once(up).chain(lost.into_iter().map(|topic| ResumeEvent::Lost { topic })) {
            if out.send(ev).await.is_err() {
                return Err(Stop::Abandoned);
            }
        }
        return Ok(events);
    }
}

/// Subscribes the whole set on a new connection, with `since` where a position is known.
/// If the node refuses the request (a topic now forbidden, say), each topic is tried alone
/// and those refused leave the set, each reported as an error event naming it.
async fn resubscribe(inner: &Inner, handle: &ClientHandle, out: &Out) -> Result<SubscribeAck, ClientError> {
    let (topics, since) = inner.snapshot();
    if topics.is_empty() {
        return Ok(SubscribeAck::default());
    }
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    match handle.subscribe_since(&refs, &since).await {
        Err(ClientError::Server { .. }) => {}
        other => return other,
    }
    let mut merged = SubscribeAck::default();
    for topic in &topics {
        let one: HashMap<_, _> = since
            .get(topic)
            .map(|p| (topic.clone(), p.clone()))
            .into_iter()
            .collect();
        match handle.subscribe_since(&[topic], &one).await {
            Ok(ack) => {
                merged.recovered.extend(ack.recovered);
                merged.positions.extend(ack.positions);
            }
            Err(e @ ClientError::Server { .. }) => {
                inner.forget_topic(topic);
                let _ = out.send(error_event(&e, Some(topic.clone()))).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(merged)
}

/// Errors that another attempt cannot fix: a URL the client cannot use, or an upgrade
/// refused for the request itself (4xx other than 408 and 429).
fn gives_up(e: &ClientError) -> bool {
    match e {
        ClientError::InvalidInput(_) => true,
        ClientError::Rejected { status } => (400..500).contains(status) && *status != 408 && *status != 429,
        _ => false,
    }
}

fn error_event(e: &ClientError, topic: Option<String>) -> ResumeEvent {
    let (code, message) = match e {
        ClientError::Server { code, message } => (code.clone(), message.clone()),
        other => ("client".to_owned(), other.to_string()),
    };
    ResumeEvent::Error {
        id: None,
        code,
        message,
        topic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hopeless_errors_stop_reconnecting() {
        assert!(gives_up(&ClientError::Rejected { status: 401 }));
        assert!(gives_up(&ClientError::Rejected { status: 403 }));
        assert!(!gives_up(&ClientError::Rejected { status: 429 }));
        assert!(!gives_up(&ClientError::Rejected { status: 503 }));
        assert!(!gives_up(&ClientError::Timeout));
        assert!(!gives_up(&ClientError::Io(
            std::io::ErrorKind::ConnectionRefused.into()
        )));
    }
}
