//! The live status line: once a second, on stderr, the phase and the rates of the last
//! second (connections, publishes, deliveries, how far deliveries trail publishes, how many
//! are known missing (gaps in sequences), publish errors, the generator's CPU). On a terminal the line is rewritten in place; otherwise one
//! line per second is printed, which reads well in CI logs.
//!
//! It only reads the shared counters; it never blocks the hot path.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::limits::Usage;
use crate::report::render::thousands;
use crate::stats::Shared;

/// What the run is doing, for the live line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Connect = 0,
    Settle = 1,
    Measure = 2,
    Drain = 3,
    Close = 4,
}

impl Phase {
    fn name(v: u8) -> &'static str {
        ["connect", "settle", "measure", "drain", "close"]
            .get(v as usize)
            .copied()
            .unwrap_or("?")
    }
}

/// The phase, shared between the scenario and the printer.
#[derive(Default)]
pub struct PhaseCell(AtomicU8);

impl PhaseCell {
    pub fn set(&self, p: Phase) {
        self.0.store(p as u8, Ordering::Relaxed);
    }
}

/// Starts the printer; it stops when `stop` is cancelled and then clears its line.
pub fn spawn(shared: Arc<Shared>, phase: Arc<PhaseCell>, cores: usize, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let start = Instant::now();
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let mut last = (
            shared.published.load(Ordering::Relaxed),
            shared.delivered(),
            Usage::now().cpu_s(),
            Instant::now(),
        );
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let (published, delivered, cpu) = (
                shared.published.load(Ordering::Relaxed),
                shared.delivered(),
                Usage::now().cpu_s(),
            );
            let dt = (now - last.3).as_secs_f64().max(1e-3);
            let behind = shared.expected.load(Ordering::Relaxed).saturating_sub(delivered);
            let text = format!(
                "[{:>6.1}s] {:<7} conns {} | pub {}/s | deliv {}/s | behind {} | missing {} | pub errors {} | cpu {:.0}% of {}",
                start.elapsed().as_secs_f64(),
                Phase::name(phase.0.load(Ordering::Relaxed)),
                thousands(shared.connected.load(Ordering::Relaxed)),
                thousands(((published - last.0) as f64 / dt) as u64),
                thousands(((delivered - last.1) as f64 / dt) as u64),
                thousands(behind),
                thousands(shared.missing()),
                thousands(shared.publish_errors.load(Ordering::Relaxed)),
                (cpu - last.2) / dt * 100.0 / cores.max(1) as f64,
                cores,
            );
            last = (published, delivered, cpu, now);
            let mut err = std::io::stderr().lock();
            let _ = if tty {
                write!(err, "\r\x1b[2K{text}")
            } else {
                writeln!(err, "{text}")
            };
            let _ = err.flush();
        }
        if tty {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    })
}
