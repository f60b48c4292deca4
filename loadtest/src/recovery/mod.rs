//! Recovery mode (`--drop-every`): what a subscriber that drops its connection and
//! resubscribes with `since` must know about the history protocol, and the bookkeeping that
//! proves nothing was lost, duplicated or reordered across the reconnects.
//!
//! - [`wire`]: offsets and epochs in deliveries, `recovered`/`positions` in acks, `since`
//!   in subscribe requests.
//! - [`book`]: per subscriber and topic, the resubscribe position, the offsets received
//!   (completeness, duplicates, out of order) and the replay latency after each reconnect.
//!
//! The reconnect loop itself (drop schedule, reconnect, the final head probe) lives in
//! `scenario/recovery.rs`; this module does no I/O.

pub mod book;
pub mod wire;

pub use book::{Account, Book, BookError, OffsetArrival, TopicBook};
pub use wire::{Ack, Position};
