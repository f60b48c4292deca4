//! Which channels this node should be subscribed to, and which it is: the bookkeeping
//! behind "subscribe on the first local subscriber, unsubscribe (after a delay) on the last,
//! batched", and behind confirming a subscription to a caller who waits for it.
//!
//! [`Interest`] is shared between the broker-facing side and the supervisor, behind one
//! mutex: `interest_changed` marks a topic dirty and wakes the supervisor (10k calls for
//! one topic leave one entry); `confirm_interest` answers at once when the topic's channel
//! is *confirmed* (the current pub/sub connection's SUBSCRIBE for it was answered by Redis,
//! and no UNSUBSCRIBE is being decided) or leaves a waiter the supervisor resolves.
//! [`Reconciler`] is the supervisor's private state: it turns dirty topics into SUBSCRIBE /
//! UNSUBSCRIBE lists by comparing the broker's answer (`has_interest`) with what the current
//! connection is subscribed to. Neither talks to Redis; the supervisor sends what they
//! decide.
//!
//! # The confirmation race
//! The danger is a ticket answered `Ok` for a channel that is about to be unsubscribed:
//! the supervisor decides "no local interest" for a topic while a new local subscriber
//! registers and confirms. The supervisor therefore [`withdraw`](Interest::withdraw)s a
//! topic from `confirmed` *before* asking the broker whether anyone still listens, and
//! sends UNSUBSCRIBE only when the answer (asked after the withdrawal) is no; a topic that
//! is kept is confirmed again. The broker registers a subscriber before it confirms, and
//! both sides meet at this mutex, so either the confirmation saw the topic confirmed (then
//! it happened before the withdrawal, the registration did too, and the supervisor's
//! question sees the subscriber and keeps the channel), or it found the topic unconfirmed
//! and waits (then the topic is dirty, and is subscribed again, or kept, before its waiter
//! is resolved). The broker is never called with this mutex held.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use herald_broker::{InterestTicket, RelayError, Ticket};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Who waits for a topic's confirmation.
type Waiter = oneshot::Sender<Result<(), RelayError>>;

/// Everything behind [`Interest`]'s mutex.
#[derive(Default)]
struct State {
    /// Topics whose local interest may have changed since the supervisor last looked.
    dirty: HashSet<Box<str>>,
    /// A pub/sub connection is live and resubscribed; `confirm` fails at once without one.
    live: bool,
    /// Topics whose channel the live connection is subscribed to, confirmed by Redis, and
    /// not being withdrawn. Cleared when the connection is lost.
    confirmed: HashSet<Box<str>>,
    /// Confirmations not answered yet, by topic. One entry per pending `confirm_interest`
    /// call, so their number is bounded by the callers (the gateway's subscribe requests
    /// in flight); every entry is answered at the supervisor's next pass over the topic.
    waiters: HashMap<Box<str>, Vec<Waiter>>,
}

impl State {
    fn mark(&mut self, topic: &str) {
        if !self.dirty.contains(topic) {
            self.dirty.insert(topic.into());
        }
    }

    fn resolve(&mut self, topic: &str, result: &Result<(), RelayError>) {
        for w in self.waiters.remove(topic).into_iter().flatten() {
            // The caller may have stopped waiting; that is its business.
            let _ = w.send(result.clone());
        }
    }
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Interest {
    state: Mutex<State>,
    /// Stores one permit when nobody waits, so a hint is never lost.
    wake: Notify,
    /// Signalled when a confirmation starts waiting: cuts the batch window short.
    waiting: Notify,
}

impl Interest {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `topic` dirty; allocation-free when it already is.
    pub(crate) fn mark(&self, topic: &str) {
        self.lock().mark(topic);
        self.wake.notify_one();
    }

    /// Takes every dirty topic.
    pub(crate) fn take(&self) -> HashSet<Box<str>> {
        std::mem::take(&mut self.lock().dirty)
    }

    /// Resolves once something was marked since the last wake-up.
    pub(crate) async fn changed(&self) {
        self.wake.notified().await
    }

    /// Resolves once a confirmation started waiting since the last time.
    pub(crate) async fn waiter_arrived(&self) {
        self.waiting.notified().await
    }

    /// Whether any confirmation waits.
    pub(crate) fn has_waiters(&self) -> bool {
        !self.lock().waiters.is_empty()
    }

    /// `Relay::confirm_interest`: `Ok` at once when `topic` is confirmed, `Err` at once
    /// without a live pub/sub connection, else a ticket the supervisor resolves. Marks the
    /// topic dirty, so the supervisor looks at it even if the broker's hint was missed.
    pub(crate) fn confirm(&self, topic: &str) -> InterestTicket {
        let rx = {
            let mut s = self.lock();
            if !s.live {
                return Ticket::Done(Err(RelayError::Unavailable(
                    "redis relay pub/sub connection is down".into(),
                )));
            }
            if s.confirmed.contains(topic) {
                return Ticket::ok();
            }
            let (tx, rx) = oneshot::channel();
            match s.waiters.get_mut(topic) {
                Some(v) => v.push(tx),
                None => {
                    s.waiters.insert(topic.into(), vec![tx]);
                }
            }
            s.mark(topic);
            rx
        };
        self.wake.notify_one();
        self.waiting.notify_one();
        Ticket::Pending(rx)
    }

    /// A pub/sub connection was (re)subscribed to exactly `topics`: they are confirmed and
    /// their waiters answered. Waiters for other topics (kept from before a reconnect) are
    /// marked dirty, so the supervisor subscribes or abandons them.
    pub(crate) fn connected(&self, topics: &[Box<str>]) {
        let mut s = self.lock();
        s.live = true;
        s.confirmed = topics.iter().cloned().collect();
        for t in topics {
            s.resolve(t, &Ok(()));
        }
        let others: Vec<Box<str>> = s.waiters.keys().cloned().collect();
        for t in others {
            s.mark(&t);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// SUBSCRIBE for `topics` was answered (or they were kept after a withdrawal): they
    /// are confirmed and their waiters answered `Ok`.
    pub(crate) fn confirmed(&self, topics: &[Box<str>]) {
        if topics.is_empty() {
            return;
        }
        let mut s = self.lock();
        for t in topics {
            s.confirmed.insert(t.clone());
            s.resolve(t, &Ok(()));
        }
    }

    /// The supervisor is about to decide whether to unsubscribe `topics`: from now on a
    /// confirmation for them waits. See "The confirmation race".
    pub(crate) fn withdraw(&self, topics: &[Box<str>]) {
        let mut s = self.lock();
        for t in topics {
            s.confirmed.remove(t);
        }
    }

    /// `topics` lost their local interest before they were subscribed: their waiters are
    /// answered `Err` (the subscriber that waited is gone, or will mark the topic again).
    pub(crate) fn abandon(&self, topics: &[Box<str>]) {
        if topics.is_empty() {
            return;
        }
        let mut s = self.lock();
        let err = Err(RelayError::Unavailable(
            "interest withdrawn before it was confirmed".into(),
        ));
        for t in topics {
            // A topic marked again since the decision has a newer subscriber whose waiter
            // arrived after it: the next pass decides for that one.
            if !s.dirty.contains(t) {
                s.resolve(t, &err);
            }
        }
    }

    /// The pub/sub connection was lost: nothing is confirmed any more and new
    /// confirmations fail at once. Waiters stay: a reconnect that resubscribes their topic
    /// answers them (see `fail_waiters` for when it does not).
    pub(crate) fn disconnected(&self) {
        let mut s = self.lock();
        s.live = false;
        s.confirmed.clear();
    }

    /// Answers every waiter with `err` (a reconnect attempt failed, or shutdown).
    pub(crate) fn fail_waiters(&self, err: RelayError) {
        let waiters = std::mem::take(&mut self.lock().waiters);
        let err = Err(err);
        for w in waiters.into_values().flatten() {
            let _ = w.send(err.clone());
        }
    }

    #[cfg(test)]
    fn is_confirmed(&self, topic: &str) -> bool {
        self.lock().confirmed.contains(topic)
    }
}

/// What [`Reconciler::plan`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Wanted and not subscribed: SUBSCRIBE now.
    pub(crate) subscribe: Vec<Box<str>>,
    /// Neither wanted nor subscribed: nothing to send; waiters, if any, are answered.
    pub(crate) abandoned: Vec<Box<str>>,
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

    /// Looks at dirty topics: those to SUBSCRIBE now; those that lost their last local
    /// subscriber get an unsubscribe deadline `now + delay` (kept if already set).
    pub(crate) fn plan(
        &mut self,
        dirty: HashSet<Box<str>>,
        has_interest: impl Fn(&str) -> bool,
        now: Instant,
        delay: Duration,
    ) -> Plan {
        let mut plan = Plan::default();
        for topic in dirty {
            let wanted = has_interest(&topic);
            let have = self.subscribed.contains(&topic);
            match (wanted, have) {
                (true, false) => plan.subscribe.push(topic),
                (true, true) => {
                    self.leaving.remove(&topic);
                }
                (false, true) => {
                    self.leaving.entry(topic).or_insert(now + delay);
                }
                (false, false) => plan.abandoned.push(topic),
            }
        }
        plan.subscribe.sort_unstable();
        plan
    }

    /// The earliest pending unsubscribe deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.leaving.values().min().copied()
    }

    /// Removes the deadlines that have passed and returns the topics to UNSUBSCRIBE: those
    /// the broker (asked after their withdrawal from `interest`'s confirmed set) says
    /// nobody listens to. The others are confirmed again. See "The confirmation race".
    pub(crate) fn due(
        &mut self,
        now: Instant,
        interest: &Interest,
        mut has_interest: impl FnMut(&str) -> bool,
    ) -> Vec<Box<str>> {
        let due: Vec<Box<str>> = self
            .leaving
            .iter()
            .filter(|(t, at)| **at <= now && self.subscribed.contains(*t))
            .map(|(t, _)| t.clone())
            .collect();
        self.leaving.retain(|t, _| self.subscribed.contains(t));
        if due.is_empty() {
            return due;
        }
        for topic in &due {
            self.leaving.remove(topic);
        }
        interest.withdraw(&due);
        let (kept, mut gone): (Vec<_>, Vec<_>) = due.into_iter().partition(|t| has_interest(t));
        interest.confirmed(&kept);
        gone.sort_unstable();
        gone
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

    /// Redis dropped these topics' channels on its own (a Redis Cluster slot left the
    /// master): they are not subscribed any more and no unsubscribe is due for them.
    pub(crate) fn evicted(&mut self, topics: &[Box<str>]) {
        for t in topics {
            self.subscribed.remove(t);
            self.leaving.remove(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evicted_topic_is_neither_unsubscribed_nor_confirmed_later() {
        let interest = Interest::default();
        let mut rec = Reconciler::default();
        let t: Box<str> = "t".into();
        rec.reset([t.clone()]);
        interest.connected(std::slice::from_ref(&t));
        let now = Instant::now();
        let plan = rec.plan(HashSet::from([t.clone()]), |_| false, now, Duration::from_millis(10));
        assert!(plan.subscribe.is_empty());
        assert!(rec.next_deadline().is_some());
        interest.withdraw(std::slice::from_ref(&t));
        rec.evicted(std::slice::from_ref(&t));
        assert_eq!(rec.next_deadline(), None);
        let gone = rec.due(now + Duration::from_secs(1), &interest, |_| true);
        assert!(gone.is_empty());
        assert!(!interest.is_confirmed("t"));
        assert!(!rec.is_subscribed("t"));
    }

    fn set(v: &[&str]) -> HashSet<Box<str>> {
        v.iter().map(|s| Box::<str>::from(*s)).collect()
    }

    fn topics(v: &[&str]) -> Vec<Box<str>> {
        v.iter().map(|s| Box::<str>::from(*s)).collect()
    }

    fn pending(t: InterestTicket) -> oneshot::Receiver<Result<(), RelayError>> {
        match t {
            Ticket::Pending(rx) => rx,
            Ticket::Done(r) => panic!("expected a pending ticket, got {r:?}"),
        }
    }

    fn done(t: InterestTicket) -> Result<(), RelayError> {
        match t {
            Ticket::Done(r) => r,
            Ticket::Pending(_) => panic!("expected an immediate answer"),
        }
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
        let i = Interest::default();
        let mut r = Reconciler::default();
        let t0 = Instant::now();
        let d = Duration::from_millis(500);
        let plan = r.plan(set(&["a", "b"]), |t| t == "a", t0, d);
        assert_eq!(plan.subscribe, topics(&["a"]));
        assert_eq!(plan.abandoned, topics(&["b"]));
        r.subscribed(&plan.subscribe);
        assert_eq!(
            r.plan(set(&["a"]), |_| true, t0, d),
            Plan::default(),
            "already subscribed"
        );
        // The last subscriber leaves: nothing now, an unsubscribe at t0 + 500 ms.
        assert_eq!(r.plan(set(&["a"]), |_| false, t0, d), Plan::default());
        assert_eq!(r.next_deadline(), Some(t0 + d));
        // A second hint does not push the deadline back.
        r.plan(set(&["a"]), |_| false, t0 + Duration::from_millis(100), d);
        assert_eq!(r.next_deadline(), Some(t0 + d));
        assert!(r.due(t0 + Duration::from_millis(499), &i, |_| false).is_empty());
        let gone = r.due(t0 + d, &i, |_| false);
        assert_eq!(gone, topics(&["a"]));
        r.unsubscribed(&gone);
        assert!(!r.is_subscribed("a"));
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn churn_within_the_delay_keeps_the_channel() {
        let i = Interest::default();
        let mut r = Reconciler::default();
        let t0 = Instant::now();
        let d = Duration::from_millis(500);
        r.subscribed(&topics(&["a", "b"]));
        r.plan(set(&["a", "b"]), |_| false, t0, d);
        // "a" comes back before the deadline (with a hint), "b" without one: the
        // deadline re-checks the broker anyway.
        r.plan(set(&["a"]), |_| true, t0 + Duration::from_millis(10), d);
        assert_eq!(r.next_deadline(), Some(t0 + d));
        assert!(r.due(t0 + d, &i, |_| true).is_empty());
        assert!(r.is_subscribed("a") && r.is_subscribed("b"));
    }

    #[test]
    fn reset_replaces_everything() {
        let mut r = Reconciler::default();
        r.subscribed(&topics(&["old"]));
        r.plan(set(&["old"]), |_| false, Instant::now(), Duration::ZERO);
        r.reset(topics(&["new"]));
        assert!(r.is_subscribed("new") && !r.is_subscribed("old"));
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn confirmation_needs_a_live_connection() {
        let i = Interest::default();
        assert!(matches!(done(i.confirm("t")), Err(RelayError::Unavailable(_))));
        assert!(i.take().is_empty(), "a refusal leaves nothing behind");
        i.connected(&topics(&["t"]));
        assert_eq!(done(i.confirm("t")), Ok(()), "confirmed: answered at once");
        i.disconnected();
        assert!(matches!(done(i.confirm("t")), Err(RelayError::Unavailable(_))));
    }

    #[test]
    fn a_waiter_is_answered_when_subscribe_is_confirmed() {
        let i = Interest::default();
        i.connected(&[]);
        let mut rx = pending(i.confirm("t"));
        assert!(i.has_waiters());
        assert_eq!(i.take(), set(&["t"]), "a confirmation marks its topic");
        assert!(rx.try_recv().is_err(), "not before SUBSCRIBE is answered");
        i.confirmed(&topics(&["t"]));
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert!(!i.has_waiters());
        assert_eq!(done(i.confirm("t")), Ok(()));
    }

    #[test]
    fn a_topic_being_unsubscribed_is_never_confirmed() {
        let i = Interest::default();
        let mut r = Reconciler::default();
        let t0 = Instant::now();
        let d = Duration::from_millis(500);
        i.connected(&topics(&["t"]));
        r.reset(topics(&["t"]));
        r.plan(set(&["t"]), |_| false, t0, d);
        // While the supervisor asks the broker (after the withdrawal), a subscriber arrives
        // and confirms: it must wait, not be told Ok.
        let mut rx = None;
        let gone = r.due(t0 + d, &i, |_| {
            assert!(!i.is_confirmed("t"), "withdrawn before the broker is asked");
            rx = Some(pending(i.confirm("t")));
            false // the broker answered before the subscriber registered
        });
        assert_eq!(gone, topics(&["t"]));
        r.unsubscribed(&gone);
        let mut rx = rx.unwrap();
        assert!(rx.try_recv().is_err(), "still waiting after the UNSUBSCRIBE decision");
        // The confirmation marked the topic: the next pass subscribes it again.
        let plan = r.plan(i.take(), |_| true, t0 + d, d);
        assert_eq!(plan.subscribe, topics(&["t"]));
        r.subscribed(&plan.subscribe);
        i.confirmed(&plan.subscribe);
        assert_eq!(rx.try_recv(), Ok(Ok(())));
    }

    #[test]
    fn a_topic_kept_at_its_deadline_answers_its_waiters() {
        let i = Interest::default();
        let mut r = Reconciler::default();
        let t0 = Instant::now();
        let d = Duration::from_millis(500);
        i.connected(&topics(&["t"]));
        r.reset(topics(&["t"]));
        r.plan(set(&["t"]), |_| false, t0, d);
        let mut rx = None;
        let gone = r.due(t0 + d, &i, |_| {
            rx = Some(pending(i.confirm("t")));
            true
        });
        assert!(gone.is_empty());
        assert_eq!(rx.unwrap().try_recv(), Ok(Ok(())));
        assert!(i.is_confirmed("t"));
    }

    #[test]
    fn waiters_survive_a_reconnect_and_abandoned_ones_are_answered() {
        let i = Interest::default();
        i.connected(&[]);
        let mut a = pending(i.confirm("a"));
        let mut b = pending(i.confirm("b"));
        drop(i.take());
        i.disconnected();
        i.connected(&topics(&["a"]));
        assert_eq!(a.try_recv(), Ok(Ok(())), "resubscribed after the reconnect");
        assert!(b.try_recv().is_err());
        assert_eq!(
            i.take(),
            set(&["b"]),
            "a waiter not covered by the resubscribe is looked at again"
        );
        i.abandon(&topics(&["b"]));
        assert!(matches!(b.try_recv(), Ok(Err(RelayError::Unavailable(_)))));
        let mut c = pending(i.confirm("c"));
        i.fail_waiters(RelayError::Unavailable("down".into()));
        assert!(matches!(c.try_recv(), Ok(Err(RelayError::Unavailable(_)))));
        assert!(!i.has_waiters());
    }
}
