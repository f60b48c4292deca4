//! A RESP2 connection for Redis Cluster sharded pub/sub: `SSUBSCRIBE`, `SUNSUBSCRIBE` and
//! `PING` out, `smessage`s and confirmations in, and the `sunsubscribe` Redis sends on its
//! own when a slot leaves the master (a migration, a failover) told apart from the
//! confirmations of ours.
//!
//! Why our own: redis 1.8.1's `aio::PubSub` cannot send `SSUBSCRIBE`, and its RESP3 path
//! takes a server-initiated `sunsubscribe` for the reply to whatever command is in flight
//! (the "unsolicited sunsubscribe" bug several clients had, see DEPENDENCIES.md), which
//! would confirm a subscription Redis never made. Here a `sunsubscribe` counts as a
//! confirmation only when the oldest request in flight is our `SUNSUBSCRIBE` naming that
//! channel; any other is reported on [`Connected::evicted`].
//!
//! One task per connection owns the socket: it writes requests in arrival order (Redis
//! answers them in that order, so requests queued together form a pipeline) and parses
//! what comes back. Each payload is copied once out of the read buffer (a slice would keep
//! the whole buffer alive for as long as any message of it is queued somewhere). The task ends
//! when the handle ([`ShardedPubSub`]) is dropped or the socket fails; the message channel
//! then closes, which is how the reader learns the connection is gone.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A message on a shard channel.
#[derive(Debug, Clone)]
pub(crate) struct ShardMessage {
    pub(crate) channel: Bytes,
    pub(crate) payload: Bytes,
}

/// Why a request failed.
#[derive(Debug, Error, Clone)]
pub(crate) enum PubSubError {
    /// Redis answered with an error (`MOVED 123 host:port`, `CROSSSLOT ...`).
    #[error("redis: {0}")]
    Server(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl PubSubError {
    /// An error reply that says the slot lives elsewhere now (or moves right now).
    pub(crate) fn is_redirect(&self) -> bool {
        matches!(self, Self::Server(e) if is_redirect(e))
    }
}

/// Whether a Redis error text means "ask the cluster where the slot is".
pub(crate) fn is_redirect(error: &str) -> bool {
    ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"]
        .iter()
        .any(|code| error.starts_with(code) || error.contains(&format!("{code} ")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Subscribe,
    Unsubscribe,
    Ping,
}

struct Request {
    verb: Verb,
    channels: Vec<Bytes>,
    done: oneshot::Sender<Result<(), PubSubError>>,
}

/// A request written, waiting for its replies.
struct InFlight {
    verb: Verb,
    /// Confirmations still due: the channels in the order sent (PING: empty, one reply).
    remaining: VecDeque<Bytes>,
    /// An unsubscribe's error reply, kept until its fence's PONG ends the request.
    error: Option<String>,
    done: oneshot::Sender<Result<(), PubSubError>>,
}

/// The handle: send requests. Dropping it closes the connection.
pub(crate) struct ShardedPubSub {
    requests: mpsc::Sender<Request>,
}

/// What [`connect`] returns.
pub(crate) struct Connected {
    pub(crate) conn: ShardedPubSub,
    /// Every `smessage`, in arrival order; closes when the connection ends.
    pub(crate) messages: mpsc::UnboundedReceiver<ShardMessage>,
    /// Channels Redis unsubscribed on its own (their slot left this master).
    pub(crate) evicted: mpsc::UnboundedReceiver<Bytes>,
}

/// Largest bulk string accepted: Redis's own `proto-max-bulk-len` default. Oversized
/// payloads are refused later, from their envelope header, like on the classic path.
const MAX_BULK: usize = 512 * 1024 * 1024;

/// Most elements of one array; replies here have at most 3.
const MAX_ARRAY: usize = 64;

/// Longest line (a simple string, an error, a length header) looked for before a CRLF.
const MAX_LINE: usize = 64 * 1024;

/// Connects to `host:port`, authenticates when `password` is set (`AUTH [user] password`)
/// and starts the connection's task. The caller bounds the whole call with its own timeout.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<Connected, PubSubError> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| PubSubError::Lost(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    if let Some(pw) = password {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(u) = username {
            args.push(u.as_bytes());
        }
        args.push(pw.as_bytes());
        stream
            .write_all(&encode(&args))
            .await
            .map_err(|e| PubSubError::Lost(e.to_string()))?;
        match read_frame(&mut stream, &mut buf).await? {
            Frame::Simple(_) => {}
            Frame::Error(e) => return Err(PubSubError::Server(e)),
            _ => return Err(PubSubError::Protocol("unexpected AUTH reply")),
        }
    }
    let (req_tx, req_rx) = mpsc::channel(256);
    let (msg_tx, msg_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(drive(stream, buf, req_rx, msg_tx, ev_tx));
    Ok(Connected {
        conn: ShardedPubSub { requests: req_tx },
        messages: msg_rx,
        evicted: ev_rx,
    })
}

impl ShardedPubSub {
    /// `SSUBSCRIBE` of channels that share one slot (Redis refuses others with
    /// `CROSSSLOT`); answered once Redis confirmed every one.
    pub(crate) async fn ssubscribe(&self, channels: Vec<Bytes>) -> Result<(), PubSubError> {
        self.request(Verb::Subscribe, channels).await
    }

    /// `PING`, answered by the connection's task when the reply arrives.
    pub(crate) async fn ping(&self) -> Result<(), PubSubError> {
        self.request(Verb::Ping, Vec::new()).await
    }

    /// Queues a request without waiting for its answer; the answer arrives on the
    /// returned receiver. Requests are written in the order they were queued.
    async fn queue(
        &self,
        verb: Verb,
        channels: Vec<Bytes>,
    ) -> Result<oneshot::Receiver<Result<(), PubSubError>>, PubSubError> {
        let (done, rx) = oneshot::channel();
        self.requests
            .send(Request { verb, channels, done })
            .await
            .map_err(|_| PubSubError::Lost("connection closed".into()))?;
        Ok(rx)
    }

    async fn request(&self, verb: Verb, channels: Vec<Bytes>) -> Result<(), PubSubError> {
        if verb != Verb::Ping && channels.is_empty() {
            return Ok(());
        }
        let rx = self.queue(verb, channels).await?;
        rx.await
            .unwrap_or_else(|_| Err(PubSubError::Lost("connection closed".into())))
    }

    /// `SSUBSCRIBE` of several groups (each of one slot) as one pipeline: every request is
    /// queued before the first answer is awaited. One result per group, in order.
    pub(crate) async fn ssubscribe_all(&self, groups: Vec<Vec<Bytes>>) -> Vec<Result<(), PubSubError>> {
        self.pipeline(Verb::Subscribe, groups).await
    }

    /// `SUNSUBSCRIBE` of several groups, like [`ssubscribe_all`](Self::ssubscribe_all).
    pub(crate) async fn sunsubscribe_all(&self, groups: Vec<Vec<Bytes>>) -> Vec<Result<(), PubSubError>> {
        self.pipeline(Verb::Unsubscribe, groups).await
    }

    async fn pipeline(&self, verb: Verb, groups: Vec<Vec<Bytes>>) -> Vec<Result<(), PubSubError>> {
        let mut waits = Vec::with_capacity(groups.len());
        for g in groups {
            waits.push(if g.is_empty() {
                Err(Ok(()))
            } else {
                self.queue(verb, g).await.map_err(Err)
            });
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(match w {
                Ok(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err(PubSubError::Lost("connection closed".into()))),
                Err(r) => r,
            });
        }
        out
    }
}

/// The connection's task; see the module docs.
async fn drive(
    stream: TcpStream,
    mut buf: BytesMut,
    mut requests: mpsc::Receiver<Request>,
    messages: mpsc::UnboundedSender<ShardMessage>,
    evicted: mpsc::UnboundedSender<Bytes>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let why = loop {
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(64 * 1024);
        }
        tokio::select! {
            req = requests.recv() => {
                let Some(req) = req else { break PubSubError::Lost("closed by the relay".into()) };
                let mut args: Vec<&[u8]> = Vec::with_capacity(req.channels.len() + 1);
                args.push(match req.verb {
                    Verb::Subscribe => b"SSUBSCRIBE",
                    Verb::Unsubscribe => b"SUNSUBSCRIBE",
                    Verb::Ping => b"PING",
                });
                args.extend(req.channels.iter().map(|c| &c[..]));
                let mut out = encode(&args);
                if req.verb == Verb::Unsubscribe {
                    out.extend_from_slice(&encode(&[b"PING"]));
                }
                if let Err(e) = wr.write_all(&out).await {
                    let _ = req.done.send(Err(PubSubError::Lost(e.to_string())));
                    break PubSubError::Lost(e.to_string());
                }
                in_flight.push_back(InFlight {
                    verb: req.verb,
                    remaining: req.channels.into(),
                    error: None,
                    done: req.done,
                });
            }
            n = rd.read_buf(&mut buf) => {
                match n {
                    Ok(0) => break PubSubError::Lost("redis closed the connection".into()),
                    Err(e) => break PubSubError::Lost(e.to_string()),
                    Ok(_) => {}
                }
                let mut failed = None;
                loop {
                    match parse(&mut buf) {
                        Ok(Some(frame)) => {
                            if let Err(e) = handle(frame, &mut in_flight, &messages, &evicted) {
                                failed = Some(e);
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    break e;
                }
            }
        }
    };
    tracing::debug!(error = %why, "sharded pub/sub connection ended");
    for f in in_flight {
        let _ = f.done.send(Err(why.clone()));
    }
    while let Ok(req) = requests.try_recv() {
        let _ = req.done.send(Err(why.clone()));
    }
}

/// One reply or push: a message, a confirmation of the oldest request, an eviction.
fn handle(
    frame: Frame,
    in_flight: &mut VecDeque<InFlight>,
    messages: &mpsc::UnboundedSender<ShardMessage>,
    evicted: &mpsc::UnboundedSender<Bytes>,
) -> Result<(), PubSubError> {
    let items = match frame {
        Frame::Array(items) => items,
        Frame::Simple(s) if s.eq_ignore_ascii_case("PONG") => return answer_ping(in_flight),
        Frame::Error(e) => {
            if let Some(f) = in_flight.front_mut().filter(|f| f.verb == Verb::Unsubscribe) {
                if f.error.is_none() {
                    // The first error is the SUNSUBSCRIBE's (a redirect after Redis pushed
                    // `sunsubscribe` for the slot it gave away, an ACL refusal, LOADING...);
                    // its fence's PONG ends the request.
                    f.remaining.clear();
                    f.error = Some(e);
                    return Ok(());
                }
                // A second one is the fence's own answer (a refused PING, which the
                // heartbeat will notice too): the request ends here, with the first.
                let f = in_flight.pop_front().expect("front exists");
                let first = f.error.unwrap_or_default();
                let _ = f.done.send(Err(PubSubError::Server(first)));
                return Ok(());
            }
            let f = in_flight
                .pop_front()
                .ok_or(PubSubError::Protocol("an error reply nobody asked for"))?;
            let _ = f.done.send(Err(PubSubError::Server(e)));
            return Ok(());
        }
        _ => return Err(PubSubError::Protocol("unexpected reply")),
    };
    let mut it = items.into_iter();
    let kind = match it.next() {
        Some(Frame::Bulk(k)) => k,
        _ => return Err(PubSubError::Protocol("a push without a kind")),
    };
    match &kind[..] {
        b"smessage" => {
            let (Some(Frame::Bulk(channel)), Some(Frame::Bulk(payload))) = (it.next(), it.next()) else {
                return Err(PubSubError::Protocol("a malformed smessage"));
            };
            // Copied out of the read buffer, which a slice would keep alive. (The reader is
            // gone only while the relay shuts down.)
            let _ = messages.send(ShardMessage {
                channel: Bytes::copy_from_slice(&channel),
                payload: Bytes::copy_from_slice(&payload),
            });
            Ok(())
        }
        b"ssubscribe" => {
            let Some(Frame::Bulk(channel)) = it.next() else {
                return Err(PubSubError::Protocol("a malformed ssubscribe"));
            };
            match in_flight.front_mut() {
                Some(f) if f.verb == Verb::Subscribe && f.remaining.front() == Some(&channel) => {
                    f.remaining.pop_front();
                    if f.remaining.is_empty() {
                        let f = in_flight.pop_front().expect("front exists");
                        let _ = f.done.send(Ok(()));
                    }
                    Ok(())
                }
                _ => Err(PubSubError::Protocol("an ssubscribe confirmation out of order")),
            }
        }
        b"sunsubscribe" => {
            let Some(Frame::Bulk(channel)) = it.next() else {
                return Err(PubSubError::Protocol("a malformed sunsubscribe"));
            };
            match in_flight.front_mut() {
                // Ours (or Redis dropping a channel we are dropping anyway): the request
                // still ends at its fence.
                Some(f) if f.verb == Verb::Unsubscribe && f.remaining.contains(&channel) => {
                    f.remaining.retain(|c| c != &channel);
                }
                // Not ours: Redis dropped the channel because its slot left this master.
                _ => {
                    let _ = evicted.send(channel);
                }
            }
            Ok(())
        }
        b"pong" => answer_ping(in_flight),
        _ => {
            tracing::debug!(kind = %String::from_utf8_lossy(&kind), "unexpected push on a sharded pub/sub connection");
            Ok(())
        }
    }
}

/// A PONG: the answer to a PING, or the fence that ends an unsubscribe.
fn answer_ping(in_flight: &mut VecDeque<InFlight>) -> Result<(), PubSubError> {
    match in_flight.front() {
        Some(f) if f.verb == Verb::Ping => {
            let f = in_flight.pop_front().expect("front exists");
            let _ = f.done.send(Ok(()));
            Ok(())
        }
        Some(f) if f.verb == Verb::Unsubscribe => {
            let f = in_flight.pop_front().expect("front exists");
            let result = match f.error {
                Some(e) => Err(PubSubError::Server(e)),
                // Channels Redis did not confirm before the fence: its framing is off.
                None if !f.remaining.is_empty() => {
                    Err(PubSubError::Protocol("an unsubscribe fenced before its confirmations"))
                }
                None => Ok(()),
            };
            let failed = matches!(result, Err(PubSubError::Protocol(_)));
            let _ = f.done.send(result);
            if failed {
                return Err(PubSubError::Protocol("an unsubscribe fenced before its confirmations"));
            }
            Ok(())
        }
        _ => Err(PubSubError::Protocol("a PONG out of order")),
    }
}

/// A RESP2 value; bulk strings share the read buffer.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Frame>),
}

/// A command as a RESP2 array of bulk strings.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads until one whole frame is in `buf` (for the AUTH reply, before the task starts).
async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Frame, PubSubError> {
    loop {
        if let Some(f) = parse(buf)? {
            return Ok(f);
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(buf))
            .await
            .map_err(|_| PubSubError::Lost("no reply".into()))?
            .map_err(|e: io::Error| PubSubError::Lost(e.to_string()))?;
        if n == 0 {
            return Err(PubSubError::Lost("redis closed the connection".into()));
        }
    }
}

/// Takes one whole frame off the front of `buf`; `None` while it is incomplete.
fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, PubSubError> {
    let Some(len) = measure(&buf[..], 0)? else {
        return Ok(None);
    };
    let bytes = buf.split_to(len).freeze();
    let mut at = 0;
    Ok(Some(build(&bytes, &mut at)))
}

/// The length of the frame at the start of `b`, `None` if incomplete; checks the syntax.
fn measure(b: &[u8], depth: usize) -> Result<Option<usize>, PubSubError> {
    let Some(line_end) = find_crlf(&b[..b.len().min(MAX_LINE)]) else {
        if b.len() >= MAX_LINE {
            return Err(PubSubError::Protocol("a line without its CRLF"));
        }
        return Ok(None);
    };
    let Some(&tag) = b.first() else { return Ok(None) };
    let line = &b[1..line_end];
    let after = line_end + 2;
    match tag {
        b'+' | b'-' => Ok(Some(after)),
        b':' => {
            number(line)?;
            Ok(Some(after))
        }
        b'$' => {
            let n = number(line)?;
            if n < 0 {
                return Ok(Some(after));
            }
            let n = n as usize;
            if n > MAX_BULK {
                return Err(PubSubError::Protocol("bulk string too long"));
            }
            if b.len() < after + n + 2 {
                return Ok(None);
            }
            if &b[after + n..after + n + 2] != b"\r\n" {
                return Err(PubSubError::Protocol("bulk string without its CRLF"));
            }
            Ok(Some(after + n + 2))
        }
        b'*' => {
            let n = number(line)?;
            if n < 0 {
                return Ok(Some(after));
            }
            if n as usize > MAX_ARRAY || depth >= 2 {
                return Err(PubSubError::Protocol("array too large or too deep"));
            }
            let mut at = after;
            for _ in 0..n {
                match measure(&b[at..], depth + 1)? {
                    Some(len) => at += len,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(PubSubError::Protocol("unknown RESP2 type")),
    }
}

/// Builds the frame `measure` accepted, slicing bulk strings out of `b`.
fn build(b: &Bytes, at: &mut usize) -> Frame {
    let start = *at;
    let line_end = start + find_crlf(&b[start..]).expect("measured");
    let line = &b[start + 1..line_end];
    *at = line_end + 2;
    match b[start] {
        b'+' => Frame::Simple(String::from_utf8_lossy(line).into_owned()),
        b'-' => Frame::Error(String::from_utf8_lossy(line).into_owned()),
        b':' => Frame::Int(number(line).expect("measured")),
        b'$' => match number(line).expect("measured") {
            n if n < 0 => Frame::Nil,
            n => {
                let n = n as usize;
                let s = b.slice(*at..*at + n);
                *at += n + 2;
                Frame::Bulk(s)
            }
        },
        _ => match number(line).expect("measured") {
            n if n < 0 => Frame::Nil,
            n => Frame::Array((0..n).map(|_| build(b, at)).collect()),
        },
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn number(line: &[u8]) -> Result<i64, PubSubError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(PubSubError::Protocol("not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn frames_parse_whole_or_not_at_all() {
        let wire = b"*3\r\n$8\r\nsmessage\r\n$13\r\nherald:{room}\r\n$3\r\na\r\n\r\n+PONG\r\n";
        for cut in 0..wire.len() - 7 {
            let mut b = BytesMut::from(&wire[..cut]);
            assert_eq!(parse(&mut b).unwrap(), None, "cut at {cut}");
            assert_eq!(b.len(), cut, "nothing taken from an incomplete frame");
        }
        let mut b = BytesMut::from(&wire[..]);
        assert_eq!(
            parse(&mut b).unwrap(),
            Some(Frame::Array(vec![
                bulk("smessage"),
                bulk("herald:{room}"),
                bulk("a\r\n")
            ]))
        );
        assert_eq!(parse(&mut b).unwrap(), Some(Frame::Simple("PONG".into())));
        assert_eq!(parse(&mut b).unwrap(), None);
        let mut bad = BytesMut::from(&b"?x\r\n"[..]);
        assert!(parse(&mut bad).is_err());
        let mut deep = BytesMut::from(&b"*1\r\n*1\r\n*1\r\n:1\r\n"[..]);
        assert!(parse(&mut deep).is_err());
        let mut huge = BytesMut::from(&b"$999999999999\r\n"[..]);
        assert!(parse(&mut huge).is_err());
    }

    #[test]
    fn only_our_own_sunsubscribe_confirms() {
        let (msg_tx, _msg_rx) = mpsc::unbounded_channel();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let (done, mut rx) = oneshot::channel();
        let unsub = |done| InFlight {
            verb: Verb::Unsubscribe,
            remaining: VecDeque::from([Bytes::from_static(b"a")]),
            error: None,
            done,
        };
        let mut q = VecDeque::from([unsub(done)]);
        let push = |ch: &str| Frame::Array(vec![bulk("sunsubscribe"), bulk(ch), Frame::Int(0)]);
        let pong = || Frame::Array(vec![bulk("pong"), bulk("")]);
        handle(push("b"), &mut q, &msg_tx, &ev_tx).unwrap();
        assert_eq!(ev_rx.try_recv().unwrap(), Bytes::from_static(b"b"));
        assert!(rx.try_recv().is_err(), "not answered by someone else's channel");
        handle(push("a"), &mut q, &msg_tx, &ev_tx).unwrap();
        assert!(rx.try_recv().is_err(), "an unsubscribe ends at its fence");
        handle(pong(), &mut q, &msg_tx, &ev_tx).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        assert!(q.is_empty());
        // Redis pushes `sunsubscribe a` (the slot left), then answers our SUNSUBSCRIBE a
        // with MOVED: the error is this request's, not the PING's queued behind it.
        let (done, mut rx) = oneshot::channel();
        let (ping_done, mut ping_rx) = oneshot::channel();
        q.push_back(unsub(done));
        q.push_back(InFlight {
            verb: Verb::Ping,
            remaining: VecDeque::new(),
            error: None,
            done: ping_done,
        });
        handle(push("a"), &mut q, &msg_tx, &ev_tx).unwrap();
        handle(Frame::Error("MOVED 1 h:2".into()), &mut q, &msg_tx, &ev_tx).unwrap();
        handle(pong(), &mut q, &msg_tx, &ev_tx).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Err(e)) if e.is_redirect()));
        assert!(ping_rx.try_recv().is_err());
        handle(pong(), &mut q, &msg_tx, &ev_tx).unwrap();
        assert!(matches!(ping_rx.try_recv(), Ok(Ok(()))));
        // An error after a pushed sunsubscribe emptied the request is still the
        // SUNSUBSCRIBE's, whatever it says; a second one (its fence refused) ends it.
        let (done, mut rx) = oneshot::channel();
        q.push_back(unsub(done));
        handle(push("a"), &mut q, &msg_tx, &ev_tx).unwrap();
        handle(Frame::Error("LOADING".into()), &mut q, &msg_tx, &ev_tx).unwrap();
        assert!(rx.try_recv().is_err());
        handle(Frame::Error("NOPERM no PING".into()), &mut q, &msg_tx, &ev_tx).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Err(PubSubError::Server(e))) if e == "LOADING"));
        assert!(q.is_empty());
        // With nothing in flight every sunsubscribe is an eviction.
        handle(push("c"), &mut q, &msg_tx, &ev_tx).unwrap();
        assert_eq!(ev_rx.try_recv().unwrap(), Bytes::from_static(b"c"));
        // A PONG nobody asked for is a broken connection, not a confirmation.
        assert!(handle(Frame::Simple("PONG".into()), &mut q, &msg_tx, &ev_tx).is_err());
    }

    #[test]
    fn redirects_are_recognised() {
        assert!(is_redirect("MOVED 15960 127.0.0.1:17002"));
        assert!(is_redirect("ASK 1 h:1"));
        assert!(is_redirect("CLUSTERDOWN The cluster is down"));
        assert!(!is_redirect("ERR unknown command"));
        assert!(PubSubError::Server("MOVED 1 h:2".into()).is_redirect());
    }
}
