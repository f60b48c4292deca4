//! herald-loadtest: floods a Herald node or cluster and reports what it carried.
//!
//! The binary (`main.rs`) only parses the command line, builds the runtime and prints; all
//! of the tool is this library, so tests run scenarios in-process:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cfg = herald_loadtest::Config::from_args(["herald-loadtest", "fanout", "-s", "10", "-d", "2s"])?;
//! let report = herald_loadtest::run(cfg, Default::default()).await?;
//! println!("{}", report.render());
//! # Ok(()) }
//! ```
//!
//! Modules: [`cli`] (flags, bounds), [`scenario`] (the phases of each scenario),
//! [`client`] (the lean WebSocket/HTTP client), [`payload`] (the stamp layout), [`stats`]
//! (counters, histograms, sequence tracking), [`report`] (summary and JSON),
//! [`metrics_scrape`] (the nodes' `/metrics`), [`limits`] (fds, source addresses, own CPU), [`jwt`] (tokens for the clients), [`recovery`] (history bookkeeping of `--drop-every`), [`procstat`] (local processes' CPU, memory and
//! run delay),
//! [`topics`] (distributions), [`progress`] (the live line). See docs/loadtest.md.

pub mod cli;
pub mod client;
pub mod jwt;
pub mod limits;
pub mod metrics_scrape;
pub mod payload;
pub mod procstat;
pub mod progress;
pub mod recovery;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod topics;

pub use cli::{Args, Config};
pub use report::Report;
pub use scenario::run;
