//! The supervisor task: owns the relay's pub/sub connection and its Redis subscriptions.
//!
//! One loop, one owner: connect a dedicated RESP2 pub/sub connection (within
//! `connect_timeout`), hand its message stream to the reader, SUBSCRIBE every topic the
//! broker has local interest in (in batches), confirm them, and mark the pub/sub link up.
//! After a reconnect (not after the first connection), once every topic is resubscribed
//! and the publish connection (which history reads use) is up, it calls
//! `RelaySink::relinked`, so the broker fills the gap from history.
//! While up it serves three things: the heartbeat (PING on the pub/sub connection with
//! `heartbeat_timeout`), interest hints (batched SUBSCRIBE after the batch window,
//! UNSUBSCRIBE after `unsubscribe_delay`), and the reader's signal that the stream ended.
//! On any failure: link down and confirmations refused first, drop the connection, sleep a
//! jittered exponential backoff, start over. Redis forgets a connection's subscriptions
//! with the connection, so every reconnect resubscribes from scratch; nothing in the
//! library reconnects or resubscribes on its own.
//!
//! The batch window: hints are collected for `subscribe_batch_window` (20 ms) before one
//! SUBSCRIBE names every new channel. When a `confirm_interest` waits (a client's
//! subscribe acknowledgement hangs on it), the window closes `subscribe_confirm_window`
//! (2 ms) after it opened instead: hints that arrive together still share one SUBSCRIBE,
//! and while one is in flight the next batch accumulates, so the batching adapts to load
//! the way the PUBLISH pipelines do, without adding 20 ms to every subscribe
//! acknowledgement. Many subscribers of one topic still cost one SUBSCRIBE: the first one's
//! confirmation waits for it, the rest find the topic confirmed.
//!
//! The canary: every `canary_interval` (while up) the supervisor PUBLISHes a number to
//! this node's canary channel, which every pub/sub connection subscribes first, over the
//! publish connection (from a task of its own, not through the publish queue: it must
//! neither wait behind a backlog nor hold up this loop). Redis answers how many
//! connections received it: 0 means this node's subscriptions are gone on the server the
//! publish connection reaches (or that server is not the one the pub/sub connection is
//! on, a demoted primary): both connections are replaced. Otherwise a `canary_timeout`
//! clock starts, which the reader stops when exactly that number comes back. When the
//! clock runs out the reader's progress decides: if it took other messages off the stream
//! meanwhile, or waits for a delivery worker, the canary is behind a backlog and the wait
//! goes on; only a connection that delivered nothing at all is silent. A silent
//! connection counts `herald_relay_canary_failures_total` and is replaced like a failed
//! one (reconnect, resubscribe everything, fill the gap from history), without resetting
//! the backoff, so a path that stays silent is retried ever more slowly. A canary
//! PUBLISH that fails is the publish connection's problem (its own heartbeat replaces it)
//! and proves nothing about pub/sub: that round is skipped.
//!
//! It does not touch the publish connection (`publish_link`), publications (`publisher`) or
//! inbound messages (`inbound`), beyond borrowing the first for the canary's PUBLISH.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use herald_broker::RelayError;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::link::{LinkError, Retry};
use crate::pubsub_conn::{self, Opened, PubSubConn};
use crate::shared::{Feed, Link, PublishLink, Shared};
use crate::subscriptions::Reconciler;
use crate::topology::key_slot;

/// Runs until the relay is cancelled.
pub(crate) async fn run(shared: Arc<Shared>) {
    let cfg = &shared.config;
    let mut retry = Retry::new(Link::PubSub, cfg);
    loop {
        let connected = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            c = timeout(cfg.connect_timeout, pubsub_conn::open(&shared)) => c,
        };
        let result = match connected {
            Ok(Ok(opened)) => session(&shared, opened, &mut retry).await,
            Ok(Err(e)) => e,
            Err(_) => LinkError::Timeout("pub/sub connect"),
        };
        if matches!(result, LinkError::Shutdown) {
            break;
        }
        // In a cluster a lost master may have been failed over: the slot map says where.
        cfg.hint_topology();
        if retry.failures() > 0 {
            // A reconnect attempt failed: whoever waits for a confirmation (a subscribe
            // acknowledgement) is told now rather than after the whole outage. A session
            // that just ended keeps its waiters for one attempt, which answers them when
            // it resubscribes their topics.
            shared
                .interest
                .fail_waiters(RelayError::Unavailable(format!("redis relay is down: {result}")));
        }
        retry.failed(&result, &cfg.url);
        if !retry.pause(&shared.cancel).await {
            break;
        }
    }
    shared.interest.disconnected();
    shared
        .interest
        .fail_waiters(RelayError::Unavailable("redis relay is shutting down".into()));
    shared.set_link(Link::PubSub, false);
}

/// One connected period: resubscribe, go up, serve until something fails, go down.
/// Returns why it ended.
async fn session(shared: &Arc<Shared>, opened: Opened, retry: &mut Retry) -> LinkError {
    let failed = shared.cancel.child_token();
    let Opened {
        mut conn,
        stream,
        mut evicted,
    } = opened;
    let feed = Feed {
        stream,
        failed: failed.clone(),
    };
    let handed = tokio::select! {
        biased;
        _ = shared.cancel.cancelled() => Err(LinkError::Shutdown),
        sent = shared.feeds.send(feed) => sent.map_err(|_| LinkError::Shutdown),
    };
    if let Err(e) = handed {
        return e;
    }
    let mut rec = Reconciler::default();
    let result = async {
        // Hints that arrived until now are covered by the full snapshot taken next; hints
        // that arrive from now on are handled by `serve`.
        drop(shared.interest.take());
        let mut topics: Vec<Box<str>> = match shared.sink() {
            Some(s) => s.interested_topics().iter().map(|t| Box::from(&**t)).collect(),
            None => Vec::new(),
        };
        let cfg = &shared.config;
        if !cfg.sharded_pubsub {
            // The control channel first, on every connection: it is no topic, so the
            // reconciler never unsubscribes it. (In a cluster it is the topic `#control`
            // of the master owning its slot, subscribed with the topics.)
            timeout(cfg.command_timeout, conn.subscribe_one(cfg.control_channel()))
                .await
                .map_err(|_| LinkError::Timeout("SUBSCRIBE of the control channel"))??;
        }
        // In a cluster the canary's channel is picked on one of this master's slots.
        let canary_live = subscribe_canary(shared, &mut conn).await?;
        let moved = subscribe(shared, &mut conn, &topics, "SUBSCRIBE").await?;
        if !moved.is_empty() {
            topics.retain(|t| !moved.contains(t));
            redirected(shared, &moved);
        }
        shared.interest.connected(&topics);
        let count = topics.len();
        rec.reset(topics);
        shared.set_link(Link::PubSub, true);
        let relink = retry.up();
        if relink {
            shared.count_link_reconnect(Link::PubSub);
            tracing::info!(topics = count, "redis relay pub/sub reconnected and resubscribed");
        } else {
            tracing::info!(topics = count, "redis relay pub/sub connected");
        }
        serve(shared, &mut conn, &mut evicted, &mut rec, &failed, relink, canary_live).await
    }
    .await;
    // Refuse confirmations and go down before anything else.
    shared.interest.disconnected();
    shared.set_link(Link::PubSub, false);
    failed.cancel();
    match result {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// The up state: heartbeat, interest changes, failure signals, and (after a reconnect,
/// `relink`) telling the broker to fill the gap. Never returns `Ok`.
///
/// Every topic listens again when this starts: what other nodes published while the
/// connection was away did not arrive, and the broker reads it from history. Those reads
/// go over the publish connection, which may have broken too (a Redis restart breaks
/// both) and come back later, so `RelaySink::relinked` waits for it.
#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Shared,
    conn: &mut PubSubConn,
    evicted: &mut Option<mpsc::UnboundedReceiver<Bytes>>,
    rec: &mut Reconciler,
    failed: &CancellationToken,
    mut relink: bool,
    mut canary_live: bool,
) -> Result<std::convert::Infallible, LinkError> {
    let cfg = &shared.config;
    let mut publish_link = shared.publish_link.subscribe();
    let mut heartbeat = tokio::time::interval_at(Instant::now() + cfg.heartbeat_interval, cfg.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let has_interest = |t: &str| shared.has_interest(t);
    let canary_on = !cfg.canary_interval.is_zero();
    let canary_every = if canary_on {
        cfg.canary_interval
    } else {
        cfg.heartbeat_interval
    };
    let mut canary_tick = tokio::time::interval_at(Instant::now() + canary_every, canary_every);
    canary_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The canary's PUBLISH in flight (a task: it shares the publish socket and must not
    // hold up this loop), then the wait for it: until when, and the reader's progress then.
    let mut sending: Option<(tokio::task::JoinHandle<CanaryReply>, Arc<PublishLink>)> = None;
    let mut waiting: Option<(Instant, u64)> = None;
    loop {
        let deadline = rec.next_deadline();
        if waiting.is_some() && shared.canary_seen.load(Ordering::Acquire) {
            waiting = None;
        }
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return Err(LinkError::Shutdown),
            _ = failed.cancelled() => return Err(LinkError::Lost),
            // (The guard `wait_for` returns is not `Send`: dropped inside.)
            true = async { publish_link.wait_for(Option::is_some).await.is_ok() }, if relink => {
                relink = false;
                if let Some(s) = shared.sink() {
                    s.relinked();
                }
            }
            _ = heartbeat.tick() => {
                timeout(cfg.heartbeat_timeout, conn.ping())
                    .await
                    .map_err(|_| LinkError::Timeout("pub/sub heartbeat"))??;
            }
            // Sharded pub/sub only: Redis dropped a channel because its slot left this
            // master (a migration or a failover). The topic is no longer subscribed here
            // (nor confirmed); the cluster layer reads the slot map and tells the new
            // owner, and this relay again, so a topic still ours is subscribed again.
            Some(channel) = async { evicted.as_mut()?.recv().await }, if evicted.is_some() => {
                let channel = String::from_utf8_lossy(&channel).into_owned();
                if shared.is_canary_family(&channel) {
                    // Ours now: picked again on the next canary tick. (An older one: gone
                    // already, nothing to do.)
                    if shared.is_canary(&channel) {
                        canary_live = false;
                        waiting = None;
                        cfg.hint_topology();
                    }
                } else if let Some(topic) = cfg.topic_of_channel(&channel) {
                    let gone: [Box<str>; 1] = [topic.into()];
                    shared.interest.withdraw(&gone);
                    rec.evicted(&gone);
                    tracing::debug!(topic, "redis cluster moved a subscribed channel away");
                    match &cfg.cluster {
                        Some(c) => c.evicted(topic),
                        None => cfg.hint_topology(),
                    }
                }

            }
            _ = shared.interest.changed() => {
                batch_window(shared).await?;
                let plan = rec.plan(shared.interest.take(), has_interest, Instant::now(), cfg.unsubscribe_delay);
                shared.interest.abandon(&plan.abandoned);
                let mut subscribed = plan.subscribe;
                let moved = subscribe(shared, conn, &subscribed, "SUBSCRIBE").await?;
                if !moved.is_empty() {
                    subscribed.retain(|t| !moved.contains(t));
                    redirected(shared, &moved);
                }
                rec.subscribed(&subscribed);
                shared.interest.confirmed(&subscribed);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let gone = rec.due(Instant::now(), &shared.interest, has_interest);
                subscribe(shared, conn, &gone, "UNSUBSCRIBE").await?;
                rec.unsubscribed(&gone);
            }
            _ = canary_tick.tick(), if canary_on && sending.is_none() && waiting.is_none() => {
                if canary_live {
                    sending = start_canary(shared);
                } else if cfg.sharded_pubsub {
                    // Its slot left this master: pick another one of its slots.
                    canary_live = subscribe_canary(shared, conn).await?;
                }
            }
            reply = async { (&mut sending.as_mut().expect("guarded").0).await }, if sending.is_some() => {
                let (_, link) = sending.take().expect("guarded");
                match reply {
                    Ok(Ok(Ok(0))) => {
                        // Redis delivered it to nobody: our subscriptions are gone (or the
                        // publish connection talks to another server, a demoted primary):
                        // both connections are replaced.
                        shared.metrics.relay_canary_failures.inc();
                        tracing::warn!("redis relay canary reached no subscriber: replacing both connections");
                        link.failed.cancel();
                        return Err(LinkError::Silent("the canary channel has no subscriber"));
                    }
                    Ok(Ok(Ok(_))) => {
                        // The clock starts when Redis has it.
                        let progress = shared.reader_progress.load(Ordering::Relaxed);
                        waiting = Some((Instant::now() + cfg.canary_timeout, progress));
                    }
                    // Not sent (publish connection failed, timed out): proves nothing here.
                    Ok(Ok(Err(e))) => tracing::debug!(error = %e, "redis relay canary not sent"),
                    Ok(Err(_)) | Err(_) => tracing::debug!("redis relay canary not sent"),
                }
            }
            _ = shared.canary_back.notified(), if waiting.is_some() => {}
            _ = tokio::time::sleep_until(waiting.map_or_else(Instant::now, |(at, _)| at)), if waiting.is_some() => {
                let (_, before) = waiting.take().expect("guarded");
                let progress = shared.reader_progress.load(Ordering::Relaxed);
                if shared.canary_seen.load(Ordering::Acquire) {
                    // Back (the wake-up was still on its way).
                } else if progress != before || shared.reader_waiting.load(Ordering::Relaxed) {
                    // The reader is busy with what came before the canary: a backlog, not a
                    // silent connection. Wait on.
                    waiting = Some((Instant::now() + cfg.canary_timeout, progress));
                } else {
                    shared.metrics.relay_canary_failures.inc();
                    tracing::warn!(
                        timeout_ms = cfg.canary_timeout.as_millis() as u64,
                        "redis relay canary did not come back and nothing else arrived: replacing the pub/sub connection"
                    );
                    return Err(LinkError::Silent("the canary did not come back"));
                }
            }
        }
    }
}

/// What the canary's PUBLISH answered within `command_timeout`: Redis's reply (how many
/// connections received it). Awaiting its task adds the task's own failure.
type CanaryReply = Result<Result<i64, redis::RedisError>, tokio::time::error::Elapsed>;

/// Starts the next canary's PUBLISH over the publish connection, on a task of its own;
/// `None` while the publish connection is down (the round proves nothing). The number is
/// registered as awaited first, so the reader cannot miss a quick answer.
fn start_canary(shared: &Shared) -> Option<(tokio::task::JoinHandle<CanaryReply>, Arc<PublishLink>)> {
    let cfg = &shared.config;
    let channel = shared.canary_channel();
    if channel.is_empty() {
        return None;
    }
    let link = shared.publish_link.borrow().clone()?;
    let n = match shared.canary_expected.load(Ordering::Acquire).wrapping_add(1) {
        0 => 1,
        n => n,
    };
    shared.canary_seen.store(false, Ordering::Release);
    shared.canary_expected.store(n, Ordering::Release);
    shared.metrics.relay_canaries.inc();
    let mut conn = link.conn.clone();
    let cmd = redis::cmd(cfg.publish_verb())
        .arg(&*channel)
        .arg(&n.to_be_bytes()[..])
        .to_owned();
    let limit = cfg.command_timeout;
    let task = tokio::spawn(async move { timeout(limit, cmd.query_async::<i64>(&mut conn)).await });
    Some((task, link))
}

/// A cluster answered SSUBSCRIBE of `topics` with a redirect: their slot is not this
/// master's any more. Their waiters are answered (the cluster relay asks the new owner
/// again) and the cluster re-announces them once it has read the slot map.
fn redirected(shared: &Shared, topics: &[Box<str>]) {
    shared.interest.abandon(topics);
    if let Some(c) = &shared.config.cluster {
        for t in topics {
            c.evicted(t);
        }
    }
}

/// Most candidates tried with SSUBSCRIBE per pick (the map may be stale: a candidate on a
/// slot the master just gave away is redirected).
const CANARY_TRIES: usize = 3;

/// Most candidate names looked at per pick (a master serving 1/64 of the slots has one in
/// about 64; this many leave no realistic master without one).
const CANARY_CANDIDATES: u32 = 1 << 16;

/// Subscribes this node's canary channel; whether it is live. Classic pub/sub: the fixed
/// channel. Sharded: the first candidate whose slot this master serves (asked of the
/// cluster), confirmed by Redis; none when the master serves no slot right now.
async fn subscribe_canary(shared: &Shared, conn: &mut PubSubConn) -> Result<bool, LinkError> {
    let cfg = &shared.config;
    let limit = cfg.command_timeout;
    let Some(hooks) = cfg.cluster.as_ref().filter(|_| cfg.sharded_pubsub) else {
        return timeout(limit, conn.subscribe_one(cfg.canary_channel()))
            .await
            .map_err(|_| LinkError::Timeout("SUBSCRIBE of the canary channel"))?;
    };
    // The master's slots, asked once per pick. One that serves none right now (leaving
    // the map, or not yet in it) has no canary; it is picked again at the next tick.
    let owned: Vec<bool> = (0..crate::topology::SLOTS as u16).map(|s| hooks.owns_slot(s)).collect();
    if !owned.contains(&true) {
        shared.set_canary_channel("");
        return Ok(false);
    }
    let previous = shared.canary_channel();
    let start = shared.canary_next.load(Ordering::Relaxed) as u32;
    let mut tried = 0;
    for i in 0..CANARY_CANDIDATES {
        let k = start.wrapping_add(i);
        let channel = cfg.canary_candidate(k);
        if !owned[usize::from(key_slot(channel.as_bytes()))] || *channel == *previous {
            continue;
        }
        let ok = timeout(limit, conn.subscribe_one(channel.clone()))
            .await
            .map_err(|_| LinkError::Timeout("SSUBSCRIBE of the canary channel"))??;
        if ok {
            shared.set_canary_channel(&channel);
            shared
                .canary_next
                .store(u64::from(k.wrapping_add(1)), Ordering::Relaxed);
            return Ok(true);
        }
        // Redirected: the map this master's view came from is stale.
        cfg.hint_topology();
        tried += 1;
        if tried >= CANARY_TRIES {
            break;
        }
    }
    shared.set_canary_channel("");
    Ok(false)
}

/// Lets a burst of hints accumulate: `subscribe_batch_window`, or
/// `subscribe_confirm_window` while a confirmation waits (see the module docs).
async fn batch_window(shared: &Shared) -> Result<(), LinkError> {
    let cfg = &shared.config;
    let opened = Instant::now();
    let full = opened + cfg.subscribe_batch_window;
    let short = opened + cfg.subscribe_confirm_window.min(cfg.subscribe_batch_window);
    loop {
        let until = if shared.interest.has_waiters() { short } else { full };
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return Err(LinkError::Shutdown),
            _ = tokio::time::sleep_until(until) => return Ok(()),
            _ = shared.interest.waiter_arrived() => {}
        }
    }
}

/// SUBSCRIBE or UNSUBSCRIBE `topics` (see `pubsub_conn` for how they are cut into
/// commands), within `command_timeout` per batch of `subscribe_batch_max`. Nothing is sent
/// for an empty list. Redis runs a command whole before it answers, so the answer means
/// every channel of it is subscribed. Returns the topics a cluster redirected elsewhere
/// (not subscribed).
async fn subscribe(
    shared: &Shared,
    conn: &mut PubSubConn,
    topics: &[Box<str>],
    verb: &'static str,
) -> Result<Vec<Box<str>>, LinkError> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = &shared.config;
    let batches = topics.len().div_ceil(cfg.subscribe_batch_max) as u32;
    let limit = cfg.command_timeout * batches.max(1);
    let op = async {
        if verb == "SUBSCRIBE" {
            conn.subscribe(shared, topics).await
        } else {
            conn.unsubscribe(shared, topics).await.map(|()| Vec::new())
        }
    };
    let moved = timeout(limit, op).await.map_err(|_| LinkError::Timeout(verb))??;
    tracing::debug!(verb, channels = topics.len(), "redis subscriptions updated");
    Ok(moved)
}
