//! [`Confirmation`]: what a subscribe waits for before it is acknowledged. One relay
//! ticket per topic that the relay has not confirmed yet; topics it confirmed at once
//! (every topic on a single node, topics already listened to in a cluster) cost nothing
//! to keep. A history topic's subscription also waits for its replay to have read the
//! first page of history (whether the stream was recovered, where it stands: what the
//! ack says), and its replay goes on only once the answer is queued
//! ([`Confirmation::release`]).

use std::sync::Arc;

use herald_broker::{InterestTicket, RelayError, ReplayHandle};
use herald_protocol::StreamPos;
use tokio::time::Instant;

/// Why a subscription was not confirmed cluster-wide. The local subscription holds
/// either way (and the relay extends it to the cluster when it recovers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    #[error("topic {topic:?} is subscribed on this node only: {error}")]
    Relay { topic: String, error: RelayError },
    #[error("topic {topic:?} is subscribed on this node only: the relay did not confirm it in time")]
    Timeout { topic: String },
}

/// What a confirmed subscribe's ack says about its history topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// For each topic given in `since`: whether nothing was lost.
    pub recovered: Vec<(Arc<str>, bool)>,
    /// For each history topic that replayed or asked for its position: the stream's head.
    pub positions: Vec<(Arc<str>, StreamPos)>,
}

/// One history topic's replay, as the confirmation tracks it.
struct Replay {
    topic: Arc<str>,
    handle: Option<ReplayHandle>,
    /// Known once the replay read its first page.
    outcome: Option<(Option<bool>, StreamPos)>,
}

/// See the module docs.
#[derive(Default)]
pub struct Confirmation {
    /// Topics still waiting, with their tickets; `Ok` ones are dropped as they resolve.
    waiting: Vec<(Box<str>, InterestTicket)>,
    /// The first failure seen.
    failed: Option<ConfirmError>,
    /// History topics' replays (empty for every other subscribe: nothing allocated).
    replays: Vec<Replay>,
}

impl Confirmation {
    pub(crate) fn add(&mut self, topic: &str, mut ticket: InterestTicket) {
        match ticket.try_outcome() {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                self.failed.get_or_insert(ConfirmError::Relay {
                    topic: topic.to_owned(),
                    error,
                });
            }
            None => self.waiting.push((topic.into(), ticket)),
        }
    }

    /// A history topic whose replay (which waits for the relay's confirmation itself)
    /// must report before the ack.
    pub(crate) fn add_replay(&mut self, topic: Arc<str>, handle: ReplayHandle) {
        self.replays.push(Replay {
            topic,
            handle: Some(handle),
            outcome: None,
        });
    }

    /// Looks at the replays' first reports; `false` while one is pending.
    fn replays_known(&mut self) -> bool {
        let mut all = true;
        for r in &mut self.replays {
            if r.outcome.is_some() {
                continue;
            }
            let Some(h) = r.handle.as_mut() else { continue };
            match h.recovery.try_outcome() {
                None => all = false,
                Some(Ok(rec)) => r.outcome = Some((rec.recovered, rec.position)),
                Some(Err(error)) => {
                    self.failed.get_or_insert(ConfirmError::Relay {
                        topic: r.topic.to_string(),
                        error,
                    });
                    // Nothing to release: the replay ended itself.
                    r.handle = None;
                }
            }
        }
        all
    }

    /// The outcome if it is known now, without waiting.
    pub fn try_now(&mut self) -> Option<Result<Recovered, ConfirmError>> {
        while let Some((topic, ticket)) = self.waiting.last_mut() {
            match ticket.try_outcome() {
                None => break,
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    self.failed.get_or_insert(ConfirmError::Relay {
                        topic: topic.to_string(),
                        error,
                    });
                }
            }
            self.waiting.pop();
        }
        let replays = self.replays_known();
        if let Some(e) = &self.failed {
            if self.waiting.is_empty() && replays {
                return Some(Err(e.clone()));
            }
            if self.replays.is_empty() {
                return Some(Err(e.clone()));
            }
        }
        if !self.waiting.is_empty() || !replays {
            return None;
        }
        let mut out = Recovered::default();
        for r in &self.replays {
            if let Some((recovered, pos)) = &r.outcome {
                if let Some(ok) = recovered {
                    out.recovered.push((r.topic.clone(), *ok));
                }
                out.positions.push((r.topic.clone(), pos.clone()));
            }
        }
        Some(Ok(out))
    }

    /// Waits for the outcome until `deadline`. Cancel-safe: a dropped wait loses nothing
    /// and the confirmation can be awaited again.
    pub async fn wait(&mut self, deadline: Instant) -> Result<Recovered, ConfirmError> {
        loop {
            if let Some(r) = self.try_now() {
                return r;
            }
            let waited = if let Some((topic, ticket)) = self.waiting.last_mut() {
                tokio::time::timeout_at(deadline, ticket.wait())
                    .await
                    .map(|_| ())
                    .map_err(|_| topic.to_string())
            } else {
                let r = self
                    .replays
                    .iter_mut()
                    .find(|r| r.outcome.is_none() && r.handle.is_some())
                    .expect("try_now: a replay is pending");
                let topic = r.topic.to_string();
                let h = r.handle.as_mut().expect("checked");
                tokio::time::timeout_at(deadline, h.recovery.wait())
                    .await
                    .map(|_| ())
                    .map_err(|_| topic)
            };
            if let Err(topic) = waited {
                return Err(ConfirmError::Timeout { topic });
            }
        }
    }

    /// The answer is queued: the replays may send what follows it. (Dropping the
    /// confirmation instead ends them, and their subscriptions go on live.)
    pub fn release(self) {
        for r in self.replays {
            if let Some(h) = r.handle {
                let _ = h.go.send(());
            }
        }
    }
}

impl std::fmt::Debug for Confirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirmation")
            .field("waiting", &self.waiting.len())
            .field("failed", &self.failed)
            .field("replays", &self.replays.len())
            .finish()
    }
}
