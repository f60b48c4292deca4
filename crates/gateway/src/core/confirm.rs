//! [`Confirmation`]: what a subscribe waits for before it is acknowledged. One relay
//! ticket per topic that the relay has not confirmed yet; topics it confirmed at once
//! (every topic on a single node, topics already listened to in a cluster) cost nothing
//! to keep.

use herald_broker::{InterestTicket, RelayError};
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

/// See the module docs.
#[derive(Default)]
pub struct Confirmation {
    /// Topics still waiting, with their tickets; `Ok` ones are dropped as they resolve.
    waiting: Vec<(Box<str>, InterestTicket)>,
    /// The first failure seen.
    failed: Option<ConfirmError>,
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

    /// The outcome if it is known now, without waiting.
    pub fn try_now(&mut self) -> Option<Result<(), ConfirmError>> {
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
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        self.waiting.is_empty().then_some(Ok(()))
    }

    /// Waits for the outcome until `deadline`. Cancel-safe: a dropped wait loses nothing
    /// and the confirmation can be awaited again.
    pub async fn wait(&mut self, deadline: Instant) -> Result<(), ConfirmError> {
        loop {
            if let Some(r) = self.try_now() {
                return r;
            }
            let (topic, ticket) = self.waiting.last_mut().expect("try_now: something waits");
            match tokio::time::timeout_at(deadline, ticket.wait()).await {
                Ok(_) => {} // looked at by try_now on the next turn
                Err(_) => {
                    return Err(ConfirmError::Timeout {
                        topic: topic.to_string(),
                    })
                }
            }
        }
    }
}

impl std::fmt::Debug for Confirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirmation")
            .field("waiting", &self.waiting.len())
            .field("failed", &self.failed)
            .finish()
    }
}
