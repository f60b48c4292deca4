//! The Herald gateway: a node's network edge. It owns the listeners (public WebSocket
//! endpoints and the admin HTTP API), the WebSocket sessions (reader, writer), the
//! configuration and the drain; the broker core (`herald-broker`) does the routing.
//!
//! [`Node::start`] runs a node inside an existing runtime (tests embed nodes this way);
//! the `herald` binary (`main.rs`) adds the command line, logging and signals.

pub mod admin;
pub mod api;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod core;
pub mod drain;
pub mod fd_budget;
pub mod history;
pub mod http_server;
pub mod identity;
pub mod ip_limits;
pub mod node;
pub mod origin;
pub mod proxy_protocol;
pub mod public;
pub mod query;
pub mod relay_setup;
pub mod session;
pub mod socket_budget;
pub mod state;
pub mod static_files;
pub mod system_topics;
pub mod tls;

pub use config::{CliOverrides, Config, ConfigError};
pub use node::{Node, StartError};
