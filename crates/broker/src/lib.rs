//! Herald's broker core: which connection listens to which topic, and how one published
//! message reaches all of them. No socket types live here; the gateway owns the sockets,
//! hands the broker an [`Outbox`] per connection and attaches its socket to it as a
//! [`DirectSocket`].
//!
//! - [`Registry`]: topics (objects holding their subscribers), sharded (dashmap); guards
//!   never leave it.
//! - [`Encodings`]: the wire encodings of deliveries, by id; fan-out caches one frame per
//!   encoding in use.
//! - [`Outbox`]: a connection's bounded queue of pre-framed WebSocket frames, with the
//!   slow-consumer policy applied at push time so a publisher never waits.
//! - [`Broker`]: encode once, fan out to local subscribers, hand to the [`Relay`].
//! - [`FlushQueue`]: direct sends to subscribers whose writer is idle, without waking it.
//! - [`History`]: topic streams (offsets, epochs, reads) for topics with history;
//!   [`MemoryStreams`] keeps them in memory for the memory relay.
//! - [`Relay`]: how messages reach other nodes; [`MemoryRelay`] is the in-process one
//!   (single node by default, or a hub joining many brokers in one process for tests).

pub mod broker;
pub mod encoding;
pub mod flusher;
pub mod history;
pub mod memory_history;
pub mod metrics;
pub mod outbox;
pub mod registry;
pub mod relay;
pub mod replay;
pub mod sequencer;
#[cfg(test)]
mod testing;

pub use broker::{Broker, ControlHandler, PublishReport};
pub use encoding::{Delivery, DeliveryEncoder, EncodingId, Encodings};
pub use flusher::FlushQueue;
pub use history::{History, HistoryPage, HistoryRules, ReadTicket, StoredMessage, StreamPolicy};
pub use memory_history::MemoryStreams;
pub use metrics::{BrokerMetrics, Source};
pub use outbox::{
    CloseRequest, DirectSocket, Outbox, OutboxLimits, PushOutcome, SlowConsumerPolicy, TakenBatch, CONTROL_HIGH_WATER,
};
pub use registry::{
    ConnId, Registry, SubscribeOutcome, Subscriber, SubscriberMode, Topic, TopicStream, UnsubscribeOutcome,
};
pub use relay::{
    InterestTicket, MemoryHub, MemoryRelay, PublishTicket, Relay, RelayError, RelaySink, RelayState, ShardStatus,
    Ticket,
};
pub use replay::{Gate, Recovery, ReplayHandle, ReplayRequest, Start};
