//! A subscription's replay of history and its seam with live messages: the [`Gate`] a
//! replaying subscriber's live messages wait in, and the replay task ([`Broker::recover`]).
//!
//! A subscribe to a history topic with `since` (or with `latest_on_subscribe`, or one that
//! wants its position) registers the subscriber with a gate first, so from then on every
//! live message of the topic is held for it, in offset order (the sequencer delivers each
//! offset once, in order). Then the replay task waits for the relay to confirm the topic,
//! reads the first page of history and reports what the subscribe answer needs (was the
//! stream recovered, where it stands); once the session has queued that answer it sends
//! the page, reads on in pages of at most `history::MAX_READ` and sends those, each
//! message only when the subscriber's outbox has room (so a long replay to a slow
//! subscriber is sent in chunks as its outbox drains, never queued whole), until a read
//! comes back short. Last, under the gate's lock, the held live messages after the last
//! replayed offset go out and the gate opens; the subscriber entry loses its gate.
//!
//! The hold is bounded (`replay_buffer` messages per replaying subscription). When live
//! messages would overflow it, the subscription ends: the subscriber gets a
//! `recovery_overflow` error naming the topic and nothing more of it (counted in
//! `herald_history_replays_total{outcome="overflow"}`), never a silent gap; it can
//! resubscribe with `since` from the last offset it got.
//!
//! The same holds for a loss discovered after the answer said `recovered: true`: history
//! trimmed past the replay's position while it waited for a slow subscriber, the stream's
//! epoch changing mid-replay, history that cannot be read any more. Then the held live
//! messages are used if they continue the replay; otherwise the subscription ends with
//! `recovery_lost` (`outcome="lost"`), and a resubscribe with `since` is answered
//! `recovered: false`. The gate never opens across a gap.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use herald_protocol::server_msg::{topic_error, ErrorCode};
use herald_protocol::StreamPos;
use tokio::sync::oneshot;

use crate::broker::Broker;
use crate::encoding::{Delivery, EncodingId};
use crate::history::{HistoryPage, StreamPolicy};

/// Messages one replay read asks for: a page is held in memory while a slow subscriber
/// drains it, so it is kept smaller than `history::MAX_READ`.
pub const REPLAY_PAGE: usize = 200;

/// How long a finished replay waits for the topic's live delivery to pass its last
/// offset before it leaves its gate in place.
pub const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
use crate::outbox::{Outbox, PushOutcome};
use crate::registry::ConnId;
use crate::relay::{InterestTicket, RelayError, Ticket};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateState {
    Holding,
    Open,
    /// The hold overflowed: the subscription ended.
    Failed,
    /// A resubscribe replaced this gate: its replay stops quietly.
    Superseded,
}

struct GateInner {
    state: GateState,
    held: VecDeque<(u64, Bytes)>,
    /// The epoch of the first message held; `mixed` once another epoch arrived.
    epoch: Option<Box<str>>,
    mixed: bool,
    /// Once open: the last offset the replay sent and its epoch. A live copy at or below it
    /// may still arrive (on a cluster the relay's live feed can lag behind what a replay
    /// read from the stream) and is dropped, until the topic's delivery on this node has
    /// passed it and the gate is removed.
    floor: Option<(u64, Box<str>)>,
}

/// See the module docs.
pub struct Gate {
    inner: Mutex<GateInner>,
    cap: usize,
    /// Wakes the replay when the gate fails (it may be waiting for a full outbox).
    ended: tokio::sync::Notify,
}

impl Gate {
    /// A closed gate holding at most `cap` live messages.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(GateInner {
                state: GateState::Holding,
                held: VecDeque::new(),
                epoch: None,
                mixed: false,
                floor: None,
            }),
            cap: cap.max(1),
            ended: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live message for this subscriber (called by the fan-out, under the topic's
    /// sequence lock): queued to the outbox once the gate is open, held before, dropped
    /// after an overflow. The second value is true when this message overflowed the hold
    /// (the caller counts it and tells the subscriber).
    /// `None` for a live copy of an offset the replay sent already (dropped).
    pub(crate) fn offer(
        &self,
        pos: &StreamPos,
        frame: Bytes,
        outbox: &Outbox,
        at: Instant,
    ) -> (Option<PushOutcome>, bool) {
        let offset = pos.offset;
        let mut g = self.lock();
        match g.state {
            GateState::Open => match &g.floor {
                Some((f, e)) if offset <= *f && **e == *pos.epoch => (None, false),
                _ => (Some(outbox.push(frame, at)), false),
            },
            GateState::Failed | GateState::Superseded => (Some(PushOutcome::Closed), false),
            GateState::Holding if g.held.len() >= self.cap => {
                g.state = GateState::Failed;
                g.held = VecDeque::new();
                drop(g);
                self.ended.notify_waiters();
                (Some(PushOutcome::Dropped), true)
            }
            GateState::Holding => {
                match &g.epoch {
                    None => g.epoch = Some(pos.epoch.as_str().into()),
                    Some(e) if **e != *pos.epoch => g.mixed = true,
                    Some(_) => {}
                }
                g.held.push_back((offset, frame));
                (Some(PushOutcome::Queued), false)
            }
        }
    }

    /// True once the subscription ended (overflowed, lost, superseded): the replay stops,
    /// and a resubscribe must register the subscription again.
    pub fn has_ended(&self) -> bool {
        matches!(self.lock().state, GateState::Failed | GateState::Superseded)
    }

    /// A resubscribe replaced this gate: what it holds is dropped, its replay stops
    /// without a word (the new one takes over).
    pub fn supersede(&self) {
        let mut g = self.lock();
        g.state = GateState::Superseded;
        g.held = VecDeque::new();
        drop(g);
        self.ended.notify_waiters();
    }

    /// Resolves once the gate failed or was superseded.
    async fn ended(&self) {
        loop {
            let n = self.ended.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.has_ended() {
                return;
            }
            n.await;
        }
    }

    /// The first offset held, if any (to see whether the replay reached it).
    fn first_held(&self) -> Option<u64> {
        self.lock().held.front().map(|(o, _)| *o)
    }

    /// Whether the held messages continue a replay of `epoch` that reached `last`: all in
    /// that epoch, and the first of them at most `last + 1` (or none held).
    fn continues(&self, last: u64, epoch: &str) -> bool {
        let g = self.lock();
        if g.mixed || g.epoch.as_deref().is_some_and(|e| e != epoch) {
            return false;
        }
        g.held.front().is_none_or(|(o, _)| *o <= last.saturating_add(1))
    }

    /// Whether a held message belongs to another epoch than `epoch`.
    fn other_epoch(&self, epoch: &str) -> bool {
        let g = self.lock();
        g.mixed || g.epoch.as_deref().is_some_and(|e| e != epoch)
    }

    /// Ends the subscription (a loss the replay cannot bridge): nothing more is delivered.
    /// `false` when it had ended already (failed or superseded).
    fn fail(&self) -> bool {
        let mut g = self.lock();
        if matches!(g.state, GateState::Failed | GateState::Superseded) {
            return false;
        }
        g.state = GateState::Failed;
        g.held = VecDeque::new();
        drop(g);
        self.ended.notify_waiters();
        true
    }

    /// Takes up to `max` held messages after `last`; when nothing is held any more the
    /// gate opens (under the same lock, so no live message slips between the last held
    /// one and the first sent directly) and the answer is empty. `Err` with the state it
    /// is in when failed or superseded.
    fn take_held(&self, last: u64, epoch: Option<&str>, max: usize) -> Result<Vec<(u64, Bytes)>, GateState> {
        let mut g = self.lock();
        if matches!(g.state, GateState::Failed | GateState::Superseded) {
            return Err(g.state);
        }
        while g.held.front().is_some_and(|(o, _)| *o <= last) {
            g.held.pop_front();
        }
        if g.held.is_empty() {
            g.state = GateState::Open;
            g.held = VecDeque::new();
            g.floor = epoch.map(|e| (last, e.into()));
            return Ok(Vec::new());
        }
        let n = g.held.len().min(max);
        Ok(g.held.drain(..n).collect())
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// After this position (`since`): replay what follows; `recovered` tells whether
    /// nothing was lost.
    After(StreamPos),
    /// The topic's most recent message, then live (`latest_on_subscribe`).
    Latest,
    /// Live from the current head (the position is reported, nothing replayed).
    Head,
}

/// What a subscribe answer says about one history topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// For [`Start::After`]: whether every message after the given position follows.
    pub recovered: Option<bool>,
    /// The stream's head when the replay started.
    pub position: StreamPos,
}

/// One replaying subscription, as the broker's recover needs it.
pub struct ReplayRequest {
    pub topic: Arc<str>,
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
    pub encoding: EncodingId,
    pub gate: Arc<Gate>,
    pub start: Start,
    pub policy: Arc<StreamPolicy>,
}

/// The caller's side of a running replay: the answer's facts to come, and the go-ahead
/// to give once the answer is queued (dropping it ends the replay and the gate).
pub struct ReplayHandle {
    pub recovery: Ticket<Recovery>,
    pub go: oneshot::Sender<()>,
}

/// The outcome label of `herald_history_replays_total`.
fn count(broker: &Broker, outcome: &str) {
    broker.metrics().history_replays.with_label_values(&[outcome]).inc();
}

impl Broker {
    /// Starts the replay of one gated subscription (see the module docs) once `interest`
    /// resolves. Needs a Tokio runtime.
    pub fn recover(self: &Arc<Self>, req: ReplayRequest, interest: InterestTicket) -> ReplayHandle {
        let (tx, recovery) = Ticket::pending();
        let (go, go_rx) = oneshot::channel();
        let broker = self.clone();
        tokio::spawn(async move { broker.replay(req, interest, tx, go_rx).await });
        ReplayHandle { recovery, go }
    }

    async fn read_page(&self, req: &ReplayRequest, after: u64) -> Result<HistoryPage, RelayError> {
        let Some(h) = self.relay_history() else {
            return Err(RelayError::Unavailable("this relay keeps no history".into()));
        };
        h.read(&req.topic, after, REPLAY_PAGE, &req.policy).outcome().await
    }

    async fn replay(
        self: Arc<Self>,
        req: ReplayRequest,
        interest: InterestTicket,
        answer: oneshot::Sender<Result<Recovery, RelayError>>,
        go: oneshot::Receiver<()>,
    ) {
        let first = match interest.outcome().await {
            Err(e) => Err(e),
            Ok(()) => match &req.start {
                Start::After(since) => match self.read_page(&req, since.offset).await {
                    // Another epoch: the client's offsets mean nothing here; replay what
                    // the current stream holds from its start.
                    Ok(p) if p.head.epoch != since.epoch && since.offset > 0 => {
                        self.read_page(&req, 0).await.map(|p2| (p2, false))
                    }
                    Ok(p) => {
                        let ok = p.continues(since.offset, &since.epoch);
                        Ok((p, ok))
                    }
                    Err(e) => Err(e),
                },
                Start::Latest | Start::Head => match self.relay_history() {
                    Some(h) => h.latest(&req.topic, &req.policy).outcome().await.map(|p| (p, true)),
                    None => Err(RelayError::Unavailable("this relay keeps no history".into())),
                },
            },
        };
        let (page, recovered) = match first {
            Ok(x) => x,
            Err(e) => {
                // The subscription holds live (as an unconfirmed subscribe does); the
                // answer says the relay failed (`relay_unavailable`), so the client knows
                // nothing was recovered.
                let _ = answer.send(Err(e));
                self.finish(&req, 0, None).await;
                count(&self, "failed");
                return;
            }
        };
        self.learn_position(&req.topic, &page.head);
        let recovery = Recovery {
            recovered: matches!(req.start, Start::After(_)).then_some(recovered),
            position: page.head.clone(),
        };
        let epoch = page.head.epoch.clone();
        if answer.send(Ok(recovery)).is_err() || go.await.is_err() {
            // The answer was not sent (connection gone, or its subscribe answer timed out).
            self.finish(&req, page.head.offset, Some(&epoch)).await;
            count(&self, "abandoned");
            return;
        }
        // Where the replay starts: the client's offset in the same epoch, else the start.
        let mut last = match &req.start {
            Start::After(since) if since.epoch == epoch => since.offset.min(page.head.offset),
            Start::After(_) => 0,
            Start::Latest => page.messages.last().map_or(page.head.offset, |m| m.offset - 1),
            Start::Head => page.head.offset,
        };
        // The first page may start past `last` only when the answer said so.
        let mut told_lost = !recovered;
        let mut page = Some(page);
        let mut empty_reads = 0u32;
        loop {
            let p = match page.take() {
                Some(p) => p,
                None => match self.read_on(&req, last).await {
                    Some(p) if p.head.epoch == epoch => p,
                    // The stream's past was lost mid-replay, or history cannot be read.
                    _ => return self.lose(&req, last, &epoch).await,
                },
            };
            if let Some(first) = p.messages.iter().find(|m| m.offset > last) {
                if first.offset > last.saturating_add(1) && !told_lost {
                    // Trimmed or expired while the replay waited: the held live messages
                    // may still bridge it; otherwise this is a loss.
                    return self.lose(&req, last, &epoch).await;
                }
            }
            told_lost = false;
            let full = p.messages.len() >= REPLAY_PAGE;
            for m in &p.messages {
                if m.offset <= last {
                    continue;
                }
                if !self.send_replayed(&req, m, &epoch).await {
                    if !req.gate.has_ended() {
                        count(&self, "abandoned");
                    }
                    return;
                }
                last = m.offset;
            }
            if matches!(req.start, Start::Latest | Start::Head) {
                break;
            }
            if full {
                continue;
            }
            // A short page: history held nothing more when it was read. The held live
            // messages must take over from here; if they start further on, read once or
            // twice more (a message may have been appended meanwhile), then give up.
            if req.gate.continues(last, &epoch) {
                break;
            }
            empty_reads += u32::from(p.messages.iter().all(|m| m.offset <= last));
            if empty_reads >= 3 {
                return self.lose(&req, last, &epoch).await;
            }
        }
        self.finish(&req, last, Some(&epoch)).await;
        if !req.gate.has_ended() {
            count(&self, "completed");
        }
    }

    /// The next page after `after`, retrying a failed read a few times (with a short
    /// backoff); `None` when history stays unreadable.
    async fn read_on(&self, req: &ReplayRequest, after: u64) -> Option<HistoryPage> {
        for attempt in 0..4u32 {
            match self.read_page(req, after).await {
                Ok(p) => return Some(p),
                Err(e) => {
                    tracing::debug!(topic = %req.topic, error = %e, attempt, "history read during a replay failed");
                    if req.gate.has_ended() {
                        return None;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
            }
        }
        None
    }

    /// A gap after `last` that history cannot fill: the held live messages bridge it if
    /// they continue from `last` in the replay's epoch; otherwise the subscription ends
    /// with `recovery_lost`.
    async fn lose(&self, req: &ReplayRequest, last: u64, epoch: &str) {
        if req.gate.continues(last, epoch) && req.gate.first_held().is_some() {
            self.finish(req, last, Some(epoch)).await;
            if !req.gate.has_ended() {
                count(self, "completed");
            }
            return;
        }
        if req.gate.fail() {
            ended(
                self,
                &req.topic,
                &req.outbox,
                ErrorCode::RecoveryLost,
                "history lost messages this subscription was replaying (trimmed, expired or reset meanwhile); it ended, resubscribe with `since` (the answer will say recovered: false)",
            );
            count(self, "lost");
        }
    }

    /// Sends one replayed message when the outbox has room; `false` when the connection
    /// closes or the gate failed.
    async fn send_replayed(&self, req: &ReplayRequest, m: &crate::history::StoredMessage, epoch: &str) -> bool {
        let limits = req.outbox.limits();
        let pos = StreamPos {
            offset: m.offset,
            epoch: epoch.to_owned(),
        };
        let frame = self.encodings().encode(
            req.encoding,
            &Delivery {
                topic: &req.topic,
                payload: &m.payload,
                stream: Some(&pos),
            },
        );
        if req.gate.has_ended() || !self.push_paced(req, frame, limits).await {
            return false;
        }
        self.metrics().history_replayed.inc();
        true
    }

    /// Queues `frame` once the outbox is at most half full; `false` when the connection
    /// closes. A frame refused by a full outbox (other topics filled it meanwhile) is
    /// offered again after the next drain: nothing is lost.
    async fn push_paced(&self, req: &ReplayRequest, frame: Bytes, limits: crate::outbox::OutboxLimits) -> bool {
        loop {
            let room = tokio::select! {
                r = req.outbox.data_room(limits.max_frames / 2, limits.max_bytes / 2) => r,
                _ = req.gate.ended() => false,
            };
            if !room {
                return false;
            }
            match req.outbox.push_or_refuse(frame.clone(), Instant::now()) {
                PushOutcome::Queued => return true,
                PushOutcome::Dropped => tokio::task::yield_now().await,
                PushOutcome::Closed | PushOutcome::Disconnected => return false,
            }
        }
    }

    /// Ends a replay: sends what the gate held after `last` (all of it after a failure:
    /// `last` = 0, no epoch), paced by the outbox like the replay, then opens the gate and
    /// removes it from the subscriber. Live messages that keep arriving meanwhile join the
    /// hold (and may overflow it: a subscriber that cannot keep up with live traffic is
    /// told). Held messages of another epoch than the replay's are a loss (`lose`).
    async fn finish(&self, req: &ReplayRequest, mut last: u64, epoch: Option<&str>) {
        if let Some(e) = epoch {
            if req.gate.other_epoch(e) {
                if matches!(req.start, Start::After(_)) {
                    // The stream was reset while it replayed: what followed `last` in the
                    // old epoch is gone.
                    if req.gate.fail() {
                        ended(
                            self,
                            &req.topic,
                            &req.outbox,
                            ErrorCode::RecoveryLost,
                            "the topic's stream was reset (new epoch) while this subscription replayed it; it ended, resubscribe with `since`",
                        );
                        count(self, "lost");
                    }
                    return;
                }
                // A new subscription: what is held is newer than what was read; all of it.
                last = 0;
            }
        }
        let limits = req.outbox.limits();
        loop {
            match req.gate.take_held(last, epoch, 256) {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => {
                    for (offset, frame) in chunk {
                        if !self.push_paced(req, frame, limits).await {
                            // The connection is closing; nothing more matters.
                            return;
                        }
                        last = offset;
                    }
                }
                // Overflowed (the subscriber was told when it happened) or replaced.
                Err(_) => return,
            }
        }
        self.settle(req, last, epoch).await;
    }

    /// Removes the open gate once this node's delivery of the topic has passed `last`
    /// (so no late live copy of a replayed offset can still come), waiting for that up to
    /// [`SETTLE_WITHIN`]; past it the gate stays (open, dropping such copies: one lock per
    /// message for this subscriber only).
    async fn settle(&self, req: &ReplayRequest, last: u64, epoch: Option<&str>) {
        // A single node delivers from the store it replays from, under one lock: no late
        // copy can come.
        let standalone = self.relay_state() == crate::relay::RelayState::Standalone;
        let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
        // Backing off: a mass resubscribe to a quiet topic costs a few wake-ups each.
        let mut pause = std::time::Duration::from_millis(10);
        loop {
            let passed = match epoch {
                None => true,
                Some(_) if last == 0 || standalone => true,
                Some(e) => self.delivered_past(&req.topic, e, last),
            };
            if passed {
                self.registry().ungate(&req.topic, req.conn, &req.gate);
                return;
            }
            if req.gate.has_ended() || req.outbox.is_closing() || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(2));
        }
    }
}

/// Tells a subscriber that its replaying subscription to `topic` ended (`code` says why);
/// counted as an error frame.
fn ended(broker: &Broker, topic: &str, outbox: &Outbox, code: ErrorCode, message: &str) {
    outbox.push_control(topic_error(code, topic, message));
    broker.metrics().client_errors.with_label_values(&[code.as_str()]).inc();
}

/// The hold of a replaying subscription to `topic` overflowed (called by the fan-out
/// when it happens): the subscriber is told, the replay stops.
pub(crate) fn overflowed(broker: &Broker, topic: &str, outbox: &Outbox) {
    ended(
        broker,
        topic,
        outbox,
        ErrorCode::RecoveryOverflow,
        "live messages piled up past the node's buffer while history was replayed; this subscription ended, resubscribe with `since` to continue",
    );
    count(broker, "overflow");
}
