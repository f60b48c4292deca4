//! Which channels this node should be subscribed to, and which it is: the bookkeeping
//! behind "subscribe on the first local subscriber, unsubscribe (after a delay) on the last,
//! batched".
//!
//! [`Interest`] is what the broker-facing side writes into: `interest_changed` marks a topic
//! dirty and wakes the supervisor; 10k calls for one topic leave one entry. [`Reconciler`]
//! is the supervisor's private state: it turns dirty topics into SUBSCRIBE / UNSUBSCRIBE
//! lists by comparing the broker's answer (`has_interest`) with what the current connection
//! is subscribed to. Neither talks to Redis; the supervisor sends what they decide.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Topics whose local interest may have changed since the supervisor last looked.
#[derive(Default)]
pub(crate) struct Interest {
    dirty: Mutex<HashSet<Box<str>>>,
    /// Stores one permit when nobody waits, so a hint is never lost.
    wake: Notify,
}

impl Interest {
    /// Marks `topic` dirty; allocation-free when it already is.
    pub(crate) fn mark(&self, topic: &str) {
        {
            let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            if !d.contains(topic) {
                d.insert(topic.into());
            }
        }
        self.wake.notify_one();
    }

    /// Takes every dirty topic.
    pub(crate) fn take(&self) -> HashSet<Box<str>> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Resolves once something was marked since the last wake-up.
    pub(crate) async fn changed(&self) {
        self.wake.notified().await
    }
}

/// See the module docs. One per connection: reset after every reconnect.
#[derive(Debug, Default)]
pub(crate) struct Reconciler {
    /// Topics whose channel the current pub/sub connection is subscribed to.
    subscribed: HashSet<Box<str>>,
    /// Subscribed topics without local interest, and when to unsubscribe them.
    leaving: HashMap<Box<str>, Instant>,
}

impl Reconciler {
    /// After a (re)connect subscribed exactly `topics`.
    pub(crate) fn reset(&mut self, topics: impl IntoIterator<Item = Box<str>>) {
        self.subscribed = topics.into_iter().collect();
        self.leaving.clear();
    }

    #[cfg(test)]
    pub(crate) fn is_subscribed(&self, topic: &str) -> bool {
        self.subscribed.contains(topic)
    }

    /// Looks at dirty topics: returns those to SUBSCRIBE now; those that lost their last
    /// local subscriber get an unsubscribe deadline `now + delay` (kept if already set).
    pub(crate) fn plan(
        &mut self,
        dirty: HashSet<Box<str>>,
        has_interest: impl Fn(&str) -> bool,
        now: Instant,
        delay: Duration,
    ) -> Vec<Box<str>> {
        let mut subscribe = Vec::new();
        for topic in dirty {
            let wanted = has_interest(&topic);
            let have = self.subscribed.contains(&topic);
            match (wanted, have) {
                (true, false) => subscribe.push(topic),
                (true, true) => {
                    self.leaving.remove(&topic);
                }
                (false, true) => {
                    self.leaving.entry(topic).or_insert(now + delay);
                }
                (false, false) => {}
            }
        }
        subscribe.sort_unstable();
        subscribe
    }

    /// The earliest pending unsubscribe deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.leaving.values().min().copied()
    }

    /// Removes due deadlines; returns the topics that still have no local interest.
    pub(crate) fn due(&mut self, now: Instant, has_interest: impl Fn(&str) -> bool) -> Vec<Box<str>> {
        let due: Vec<Box<str>> = self
            .leaving
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        let mut out = Vec::new();
        for topic in due {
            self.leaving.remove(&topic);
            if !has_interest(&topic) {
                out.push(topic);
            }
        }
        out.sort_unstable();
        out
    }

    /// SUBSCRIBE for these topics was confirmed.
    pub(crate) fn subscribed(&mut self, topics: &[Box<str>]) {
        self.subscribed.extend(topics.iter().cloned());
    }

    /// UNSUBSCRIBE for these topics was confirmed.
    pub(crate) fn unsubscribed(&mut self, topics: &[Box<str>]) {
        for t in topics {
            self.subscribed.remove(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> HashSet<Box<str>> {
        v.iter().map(|s| Box::<str>::from(*s)).collect()
    }

    #[test]
    fn many_hints_for_one_topic_are_one_entry() {
        let i = Interest::default();
        for _ in 0..10_000 {
            i.mark("t");
        }
        assert_eq!(i.take(), set(&["t"]));
        assert!(i.take().is_empty());
    }

    #[test]
    fn subscribes_new_interest_and_delays_unsubscribe() {
        let mut r = Reconciler::default();
        let t0 = Instant::now();
        let d = Duration::from_millis(500);
        let subs = r.plan(set(&["a", "b"]), |t| t == "a", t0, d);
        assert_eq!(subs, vec![Box::from("a")]);
        r.subscribed(&subs);
        assert!(r.plan(set(&["a"]), |_| true, t0, d).is_empty(), "already subscribed");
        // The last subscriber leaves: nothing now, an unsubscribe at t0 + 500 ms.
        assert!(r.plan(set(&["a"]), |_| false, t0, d).is_empty());
        assert_eq!(r.next_deadline(), Some(t0 + d));
        // A second hint does not push the deadline back.
        r.plan(set(&["a"]), |_| false, t0 + Duration::from_millis(100), d);
        assert_eq!(r.next_deadline(), Some(t0 + d));
        assert!(r.due(t0 + Duration::from_millis(499), |_| false).is_empty());
        let gone = r.due(t0 + d, |_| false);
        assert_eq!(gone, vec![Box::from("a")]);
        r.unsubscribed(&gone);
        assert!(!r.is_subscribed("a"));
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn churn_within_the_delay_keeps_the_channel() {
        let mut r = Reconciler::default();
        let t0 = Instant::now();
        let d = Duration::from_millis(500);
        r.subscribed(&[Box::from("a"), Box::from("b")]);
        r.plan(set(&["a", "b"]), |_| false, t0, d);
        // "a" comes back before the deadline (with a hint), "b" without one: the
        // deadline re-checks the broker anyway.
        r.plan(set(&["a"]), |_| true, t0 + Duration::from_millis(10), d);
        assert_eq!(r.next_deadline(), Some(t0 + d));
        assert!(r.due(t0 + d, |_| true).is_empty());
        assert!(r.is_subscribed("a") && r.is_subscribed("b"));
    }

    #[test]
    fn reset_replaces_everything() {
        let mut r = Reconciler::default();
        r.subscribed(&[Box::from("old")]);
        r.plan(set(&["old"]), |_| false, Instant::now(), Duration::ZERO);
        r.reset(vec![Box::from("new")]);
        assert!(r.is_subscribed("new") && !r.is_subscribed("old"));
        assert_eq!(r.next_deadline(), None);
    }
}
