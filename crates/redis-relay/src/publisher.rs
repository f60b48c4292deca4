//! The publisher task: drains the bounded publish queue and sends PUBLISH commands to
//! Redis in pipelines, answering each publication's oneshot when Redis has replied.
//!
//! Ordering: one task takes the queue in order and has one pipeline in flight at a time,
//! and Redis executes a connection's commands in order, so publications from one publisher
//! (indeed from the whole node) reach Redis in the order `Relay::publish` accepted them.
//! Throughput comes from batching rather than from concurrent pipelines: while a pipeline
//! is in flight the queue fills, and the next pipeline takes up to `publish_batch_max`
//! entries at once, so the batch size grows with the load and one round trip carries many
//! messages.
//!
//! This task never reconnects: on an I/O error or a timeout it fails the batch, cancels the
//! publish link's `failed` token so `publish_link` replaces that one connection at once
//! (the pub/sub connection and its subscriptions are not affected), and carries on (failing
//! batches immediately while the publish link is down). It does not decide when the relay
//! is up.

use std::sync::Arc;

use herald_broker::RelayError;
use tokio::sync::mpsc;

use crate::link::is_connection_failure;
use crate::shared::{Outgoing, Shared};

/// Runs until the relay is cancelled, then fails whatever is still queued with
/// [`RelayError::ShuttingDown`].
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Outgoing>) {
    let max = shared.config.publish_batch_max;
    let mut batch = Vec::with_capacity(max);
    loop {
        let n = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            n = rx.recv_many(&mut batch, max) => n,
        };
        if n == 0 {
            break;
        }
        send_batch(&shared, &mut batch).await;
    }
    // No publish can enter after `close`; everything already queued gets an answer.
    rx.close();
    while let Ok(item) = rx.try_recv() {
        batch.push(item);
    }
    if !batch.is_empty() {
        tracing::debug!(count = batch.len(), "relay shutting down: failing queued publications");
        answer(&shared, &mut batch, Err(RelayError::ShuttingDown));
    }
}

/// Sends one pipeline and answers every entry of `batch` (which is left empty).
async fn send_batch(shared: &Shared, batch: &mut Vec<Outgoing>) {
    let link = shared.publish_link.borrow().clone();
    let Some(link) = link else {
        answer(
            shared,
            batch,
            Err(RelayError::Unavailable("redis relay is down".into())),
        );
        return;
    };
    let mut pipe = redis::pipe();
    for item in batch.iter() {
        pipe.cmd("PUBLISH").arg(&item.channel).arg(&item.envelope[..]).ignore();
    }
    let mut conn = link.conn.clone();
    let timeout = shared.config.command_timeout;
    let result = match tokio::time::timeout(timeout, pipe.exec_async(&mut conn)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            if is_connection_failure(&e) {
                link.failed.cancel();
            }
            tracing::debug!(error = %e, count = batch.len(), "PUBLISH pipeline failed");
            Err(RelayError::Unavailable(format!("redis: {e}")))
        }
        Err(_) => {
            link.failed.cancel();
            tracing::debug!(count = batch.len(), "PUBLISH pipeline timed out");
            Err(RelayError::Unavailable("redis did not answer PUBLISH in time".into()))
        }
    };
    answer(shared, batch, result);
}

/// Answers every entry and counts the outcome once per message.
fn answer(shared: &Shared, batch: &mut Vec<Outgoing>, result: Result<(), RelayError>) {
    let n = batch.len() as u64;
    match &result {
        Ok(()) => shared.sent.inc_by(n),
        Err(_) => shared.unrelayed.inc_by(n),
    }
    for item in batch.drain(..) {
        // The caller may have stopped waiting; that is its business.
        let _ = item.done.send(result.clone().map(|()| None));
    }
}
