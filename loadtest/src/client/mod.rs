//! The lean WebSocket and HTTP client the generator is built on: a hand-written RFC 6455
//! client over tokio's `TcpStream` (no general-purpose WebSocket library on the hot path),
//! reading in large batches and parsing only the payload stamp.
//!
//! - [`target`]: URLs, resolution, the loopback rule.
//! - [`frame`]: masked client frames out, unmasked server frames parsed in place.
//! - [`conn`]: connect, upgrade, subscribe, ping answers, close; the growable read buffer.
//! - [`subscriber`]: the hot receive loop.
//! - [`publisher`]: the send schedule; [`ws_sink`] and [`http`] are where messages go.

pub mod conn;
pub mod frame;
pub mod http;
pub mod publisher;
pub mod subscriber;
pub mod target;
pub mod ws_sink;
