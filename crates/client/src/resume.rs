//! [`ResumingClient`]: a JSON protocol client that survives connection losses. It keeps
//! the set of subscribed topics and, per history topic, the last position seen; after a
//! loss it reconnects with backoff, resubscribes every topic with `since` where it has a
//! position, and tells its user what was recovered and what was lost. Messages of every
//! connection flow through one event stream.
//!
//! This file holds the public handles and the state they share with the resume task (see
//! `resume_task`), which owns the connection's events and does the reconnecting. What it
//! deliberately does not do: retry publishes (a publish that fails with the connection is
//! reported to its caller, who decides), queue requests while disconnected beyond the
//! request timeout, or track positions of topics reached through a pattern subscription
//! (only topics subscribed by name can be resumed with `since`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::client::{Client, ClientHandle};
use crate::error::{ClientError, CloseInfo};
use crate::event::{Message, RawFrame};
use crate::history::{StreamPos, SubscribeAck};
use crate::options::ClientOptions;

/// What a [`ResumingClient`] delivers: messages and errors as a [`Client`] does, plus what
/// happens to the connection. Always in arrival order; `Closed` is the last one.
#[derive(Debug, Clone)]
pub enum ResumeEvent {
    /// A message on a subscribed topic (replayed or live; they look the same). Never one
    /// the client already delivered: see [`ResumeStats::duplicates_dropped`].
    Message(Message),
    /// An error frame no request waits for (see [`Event::Error`](crate::Event::Error)).
    Error {
        /// The raw JSON of the `id`, when there was one.
        id: Option<String>,
        /// The snake_case error code.
        code: String,
        /// The human-readable message.
        message: String,
        /// The topic the error is about, when the frame names one.
        topic: Option<String>,
    },
    /// A frame the client could not route (see [`Event::Other`](crate::Event::Other)).
    Other(RawFrame),
    /// The connection was lost (not by [`close`](ResumingHandle::close)); the client is
    /// reconnecting. Requests wait for the new connection, up to the request timeout.
    Disconnected(CloseInfo),
    /// A new connection is up and every topic of the set is subscribed again.
    /// `recovered` has one entry per history topic resubscribed with `since`: `true` when
    /// nothing was lost. Each `false` is also reported as a [`Lost`](Self::Lost) event.
    Resubscribed {
        /// The node of the new connection.
        node: String,
        /// The new connection's id.
        connection: String,
        /// Per topic resubscribed with `since`, whether every message after it follows.
        recovered: HashMap<String, bool>,
    },
    /// Messages of `topic` were lost while disconnected (history trimmed or expired past the
    /// last position seen, or the stream's epoch changed): the application should refetch
    /// its state. What history still holds follows, then live messages.
    Lost {
        /// The topic.
        topic: String,
    },
    /// The client has ended: closed by its user, or reconnecting gave up (after
    /// `ReconnectOptions::max_attempts`, or on an answer that retrying cannot change, such
    /// as HTTP 401 or 403 to the upgrade). Always the last event.
    Closed(CloseInfo),
}

/// Counters of a [`ResumingClient`], for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeStats {
    /// Successful reconnects (connection up and topics resubscribed).
    pub reconnects: u64,
    /// Messages dropped because their offset was at or before the last one delivered in
    /// the same epoch. The protocol promises none; this is a safety net, so a non-zero
    /// value points at a bug somewhere.
    pub duplicates_dropped: u64,
}

/// A self-healing JSON protocol connection. Dereferences to [`ResumingHandle`] for
/// sending; [`ResumingEvents`] receives.
///
/// ```no_run
/// # async fn demo() -> Result<(), herald_client::ClientError> {
/// use herald_client::{ResumeEvent, ResumingClient};
/// let mut client = ResumingClient::connect("ws://127.0.0.1:8080/ws").await?;
/// client.subscribe(&["prices"]).await?;
/// while let Some(ev) = client.next_event().await {
///     match ev {
///         ResumeEvent::Message(m) => println!("{} {}", m.topic, m.data_json()),
///         ResumeEvent::Lost { topic } => println!("gap on {topic}: refetch its state"),
///         ResumeEvent::Closed(info) => println!("ended: {info}"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct ResumingClient {
    handle: ResumingHandle,
    events: ResumingEvents,
}

/// The sending side of a [`ResumingClient`]; cheap to clone.
#[derive(Clone)]
pub struct ResumingHandle {
    inner: Arc<Inner>,
}

/// The receiving side of a [`ResumingClient`]. Dropping it ends the client (the resume
/// task stops and the connection closes once no handle holds it).
pub struct ResumingEvents {
    rx: mpsc::Receiver<ResumeEvent>,
    inner: Arc<Inner>,
}

/// State shared by the handles and the resume task.
pub(crate) struct Inner {
    state: Mutex<State>,
    /// Bumped after every change of `State::conn` or `State::ended`, so requests waiting
    /// for a connection wake up.
    changed: watch::Sender<u64>,
    /// Set by `close`: the code and reason the user closed with. The resume task never
    /// reconnects once it is set.
    pub(crate) closing: watch::Sender<Option<CloseInfo>>,
    reconnects: AtomicU64,
    duplicates: AtomicU64,
    request_timeout: Duration,
}

#[derive(Default)]
struct State {
    /// The subscribed topics, each with the last position seen (history topics only).
    topics: HashMap<String, Option<StreamPos>>,
    /// The live connection; `None` while reconnecting.
    conn: Option<ClientHandle>,
    /// How the client ended, once it has.
    ended: Option<CloseInfo>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection lost: requests wait for the next one.
    pub(crate) fn clear_conn(&self) {
        self.lock().conn = None;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Installs a new live connection, unless the user has closed meanwhile (then returns
    /// how). Checked under the state lock, which `close` takes after setting `closing`, so
    /// a close either finds this connection or is seen here.
    pub(crate) fn install(&self, conn: ClientHandle) -> Result<(), CloseInfo> {
        {
            let mut st = self.lock();
            if let Some(info) = self.closing.borrow().clone() {
                return Err(info);
            }
            st.conn = Some(conn);
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Records the end; every waiting and later request fails with `info`.
    pub(crate) fn end(&self, info: CloseInfo) {
        {
            let mut st = self.lock();
            st.conn = None;
            st.ended.get_or_insert(info);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// The topics to resubscribe and the `since` positions of those that have one.
    pub(crate) fn snapshot(&self) -> (Vec<String>, HashMap<String, StreamPos>) {
        let st = self.lock();
        let topics = st.topics.keys().cloned().collect();
        let since = st
            .topics
            .iter()
            .filter_map(|(t, p)| Some((t.clone(), p.clone()?)))
            .collect();
        (topics, since)
    }

    /// Takes the positions of a resubscribe's ack: a topic's position becomes the ack's
    /// when the client had none, when the epoch changed, or when it was not recovered
    /// (the replay restarts from what history still holds).
    pub(crate) fn apply_resubscribe(&self, ack: &SubscribeAck) {
        let mut st = self.lock();
        for (topic, pos) in &ack.positions {
            let Some(slot) = st.topics.get_mut(topic) else { continue };
            let take = match slot {
                None => true,
                Some(seen) => seen.epoch != pos.epoch || ack.recovered.get(topic) == Some(&false),
            };
            if take {
                *slot = Some(pos.clone());
            }
        }
    }

    /// Records a message's position; false when it is at or before the last one seen in
    /// the same epoch (a duplicate, dropped and counted).
    pub(crate) fn accept(&self, m: &Message) -> bool {
        let Some(pos) = &m.position else { return true };
        let mut st = self.lock();
        let Some(slot) = st.topics.get_mut(&m.topic) else {
            return true;
        };
        if slot.as_ref().is_some_and(|seen| pos.is_at_or_before(seen)) {
            drop(st);
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *slot = Some(pos.clone());
        true
    }

    /// The live connection, if one is up.
    pub(crate) fn current_conn(&self) -> Option<ClientHandle> {
        self.lock().conn.clone()
    }

    /// Removes a topic the node no longer lets this client subscribe.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.lock().topics.remove(topic);
    }

    /// The last position seen on `topic`.
    pub(crate) fn position(&self, topic: &str) -> Option<StreamPos> {
        self.lock().topics.get(topic).cloned().flatten()
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn ended_error(&self, info: &CloseInfo) -> ClientError {
        info.clone().into()
    }

    /// Runs `f` on the state once a connection is up (waiting up to the request timeout),
    /// atomically with taking the connection's handle.
    async fn with_conn<R>(&self, mut f: impl FnMut(&mut State) -> R) -> Result<(ClientHandle, R), ClientError> {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                {
                    let mut st = self.lock();
                    if let Some(info) = &st.ended {
                        return Err(self.ended_error(info));
                    }
                    if let Some(h) = st.conn.clone() {
                        let r = f(&mut st);
                        return Ok((h, r));
                    }
                }
                if changed.changed().await.is_err() {
                    return Err(ClientError::Closed {
                        code: CloseInfo::ABNORMAL,
                        reason: "client ended".into(),
                    });
                }
            }
        };
        tokio::time::timeout(self.request_timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

impl ResumingClient {
    /// Connects to `ws://host:port/ws` with default [`ClientOptions`]; see
    /// [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<ResumingClient, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects (once: a failure here is returned, not retried) and starts the resume
    /// task. `opts.reconnect` sets the backoff of later reconnects; the other options apply
    /// to every connection. The URL is reused for every reconnect (a `?token=` in it too);
    /// a `topics=` query is refused, since topics subscribed that way could not be resumed:
    /// use [`subscribe`](ResumingHandle::subscribe).
    pub async fn connect_with(url: &str, opts: ClientOptions) -> Result<ResumingClient, ClientError> {
        if let Some((_, query)) = url.split_once('?') {
            if query.split('&').any(|kv| kv.starts_with("topics=")) {
                return Err(ClientError::InvalidInput(
                    "a resuming client subscribes with subscribe(), not with ?topics=".into(),
                ));
            }
        }
        let client = Client::connect_with(url, opts.clone()).await?;
        let (handle, events) = client.into_split();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                conn: Some(handle),
                ..Default::default()
            }),
            changed: watch::Sender::new(0),
            closing: watch::Sender::new(None),
            reconnects: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            request_timeout: opts.request_timeout,
        });
        let (tx, rx) = mpsc::channel(opts.event_buffer.max(1));
        tokio::spawn(crate::resume_task::run(inner.clone(), url.to_owned(), opts, events, tx));
        Ok(ResumingClient {
            handle: ResumingHandle { inner: inner.clone() },
            events: ResumingEvents { rx, inner },
        })
    }

    /// A clone of the sending side.
    pub fn handle(&self) -> ResumingHandle {
        self.handle.clone()
    }

    /// Separates the sending and receiving sides.
    pub fn into_split(self) -> (ResumingHandle, ResumingEvents) {
        (self.handle, self.events)
    }

    /// The receiving side.
    pub fn events(&mut self) -> &mut ResumingEvents {
        &mut self.events
    }

    /// See [`ResumingEvents::next_event`].
    pub async fn next_event(&mut self) -> Option<ResumeEvent> {
        self.events.next_event().await
    }

    /// See [`ResumingEvents::next_event_timeout`].
    pub async fn next_event_timeout(&mut self, timeout: Duration) -> Result<ResumeEvent, ClientError> {
        self.events.next_event_timeout(timeout).await
    }

    /// See [`ResumingEvents::next_message_timeout`].
    pub async fn next_message_timeout(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        self.events.next_message_timeout(timeout).await
    }
}

impl std::ops::Deref for ResumingClient {
    type Target = ResumingHandle;
    fn deref(&self) -> &ResumingHandle {
        &self.handle
    }
}

impl ResumingHandle {
    /// Adds `topics` to the set and subscribes them on the current connection (waiting up
    /// to the request timeout for one while reconnecting). Topics already in the set are
    /// skipped. A history topic's first position comes from the ack, so even a topic
    /// without a message yet resumes with `since`. If the connection drops before the
    /// ack, the topics stay in the set and this returns once the reconnect has subscribed
    /// them; if the node refuses the request, they leave the set and the error is returned.
    pub async fn subscribe(&self, topics: &[&str]) -> Result<(), ClientError> {
        loop {
            let (conn, new) = self
                .inner
                .with_conn(|st| {
                    let new: Vec<String> = topics
                        .iter()
                        .filter(|t| !st.topics.contains_key(**t))
                        .map(|t| (*t).to_owned())
                        .collect();
                    for t in &new {
                        st.topics.insert(t.clone(), None);
                    }
                    new
                })
                .await?;
            if new.is_empty() {
                return Ok(());
            }
            let refs: Vec<&str> = new.iter().map(String::as_str).collect();
            match conn.subscribe_since(&refs, &HashMap::new()).await {
                Ok(ack) => {
                    let mut st = self.inner.lock();
                    for t in &new {
                        if let (Some(slot @ None), Some(pos)) = (st.topics.get_mut(t), ack.positions.get(t)) {
                            *slot = Some(pos.clone());
                        }
                    }
                    return Ok(());
                }
                // The reconnect subscribes them: wait for it (the loop's next turn).
                Err(ClientError::Closed { .. }) => continue,
                Err(e) => {
                    if matches!(e, ClientError::Server { .. }) {
                        let mut st = self.inner.lock();
                        for t in &new {
                            st.topics.remove(t);
                        }
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Removes `topics` from the set and unsubscribes them on the current connection
    /// (waiting up to the request timeout for one while reconnecting, so a resubscribe in
    /// flight cannot bring them back).
    pub async fn unsubscribe(&self, topics: &[&str]) -> Result<(), ClientError> {
        let (conn, ()) = self
            .inner
            .with_conn(|st| {
                for t in topics {
                    st.topics.remove(*t);
                }
            })
            .await?;
        conn.unsubscribe(topics).await
    }

    /// Publishes on the current connection (see [`ClientHandle::publish`]), waiting up to
    /// the request timeout for one while reconnecting. Not retried: an error means the
    /// node may or may not have taken the message.
    pub async fn publish(&self, topic: &str, data: &serde_json::Value) -> Result<Option<StreamPos>, ClientError> {
        let (conn, ()) = self.inner.with_conn(|_| ()).await?;
        conn.publish(topic, data).await
    }

    /// Publishes JSON text on the current connection (see [`ClientHandle::publish_json`]).
    pub async fn publish_json(&self, topic: &str, data_json: &str) -> Result<Option<StreamPos>, ClientError> {
        let (conn, ()) = self.inner.with_conn(|_| ()).await?;
        conn.publish_json(topic, data_json).await
    }

    /// The current connection's handle, for requests this type does not wrap (`ping`,
    /// `node`, `connection_id`); `None` while reconnecting or after the end. Subscribing
    /// through it bypasses the set: such topics are not resumed.
    pub fn connection(&self) -> Option<ClientHandle> {
        self.inner.current_conn()
    }

    /// The subscribed topics.
    pub fn topics(&self) -> Vec<String> {
        self.inner.lock().topics.keys().cloned().collect()
    }

    /// The last position seen on `topic` (from a message, else from a subscribe ack):
    /// what the next reconnect sends as its `since`.
    pub fn position(&self, topic: &str) -> Option<StreamPos> {
        self.inner.position(topic)
    }

    /// The client's counters.
    pub fn stats(&self) -> ResumeStats {
        ResumeStats {
            reconnects: self.inner.reconnects.load(Ordering::Relaxed),
            duplicates_dropped: self.inner.duplicates.load(Ordering::Relaxed),
        }
    }

    /// Closes for good: no reconnect follows. Sends Close with `code` and `reason` on the
    /// current connection and waits (up to the request timeout) for the node's reply; while
    /// reconnecting, stops the attempts. [`ResumeEvent::Closed`] is the last event.
    pub async fn close(&self, code: u16, reason: &str) -> Result<(), ClientError> {
        let info = CloseInfo {
            code,
            reason: reason.to_owned(),
        };
        self.inner.closing.send_if_modified(|c| {
            let first = c.is_none();
            if first {
                *c = Some(info);
            }
            first
        });
        let conn = self.inner.current_conn();
        match conn {
            Some(c) => c.close(code, reason).await,
            None => Ok(()),
        }
    }

    /// True once the client has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().ended.is_some()
    }
}

impl ResumingEvents {
    /// The next event; `None` after [`ResumeEvent::Closed`] has been returned.
    pub async fn next_event(&mut self) -> Option<ResumeEvent> {
        self.rx.recv().await
    }

    /// The next event within `timeout`; `Timeout` if none came, `Closed` once the client
    /// has ended and its `Closed` event was taken.
    pub async fn next_event_timeout(&mut self, timeout: Duration) -> Result<ResumeEvent, ClientError> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Some(ev)) => Ok(ev),
            Ok(None) => Err(self.closed_error()),
        }
    }

    /// The next message within `timeout`, skipping every other event (connection events
    /// included); `Closed` when the client ends first.
    pub async fn next_message_timeout(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        let next = async {
            loop {
                match self.rx.recv().await {
                    Some(ResumeEvent::Message(m)) => return Ok(m),
                    Some(ResumeEvent::Closed(info)) => return Err(info.into()),
                    Some(_) => {}
                    None => return Err(self.closed_error()),
                }
            }
        };
        tokio::time::timeout(timeout, next)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    fn closed_error(&self) -> ClientError {
        match &self.inner.lock().ended {
            Some(info) => info.clone().into(),
            None => ClientError::Closed {
                code: CloseInfo::ABNORMAL,
                reason: "client ended".into(),
            },
        }
    }
}
