//! Precise per-process figures from Linux `/proc`, for processes on this machine: CPU
//! seconds (`stat`, 10 ms ticks), resident memory (`statm`) and the time the process's
//! threads spent runnable but waiting for a CPU (`task/*/schedstat`).
//!
//! Two uses: `--server-pid` gives a node's CPU and memory at a finer grain than its
//! `/metrics` (the Prometheus process collector counts CPU in whole seconds), and the run
//! delay of the generator itself shows when other processes on a shared machine kept it
//! from running, which makes every figure of the run pessimistic.

use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub cpu_s: f64,
    pub rss_bytes: u64,
    /// Σ over threads of time spent waiting on a run queue, seconds.
    pub run_delay_s: f64,
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Reads `/proc/<who>/…`; `who` is a pid or `self`. `None` when the process is gone or
/// this is not Linux.
pub fn sample(who: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{who}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let mut run_delay_ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{who}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                run_delay_ns += s.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
            }
        }
    }
    Some(Sample {
        cpu_s: ticks / ticks_per_s(),
        rss_bytes: pages * page_size(),
        run_delay_s: run_delay_ns as f64 / 1e9,
    })
}

/// A local process (`--server-pid`) over the measured phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcView {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub cpu_s: f64,
    /// CPU per delivery the generator received over the phase, µs.
    pub cpu_us_per_delivery: Option<f64>,
    /// Share of one core over the phase.
    pub cpu_utilisation: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    /// Time its threads were runnable but waiting for a CPU, seconds.
    pub waited_for_cpu_s: f64,
}

impl ProcView {
    pub fn between(pid: u32, before: Option<Sample>, after: Option<Sample>, wall_s: f64, deliveries: u64) -> Self {
        match (before, after) {
            (Some(b), Some(a)) => {
                let cpu = a.cpu_s - b.cpu_s;
                Self {
                    pid,
                    error: None,
                    cpu_s: cpu,
                    cpu_us_per_delivery: (deliveries > 0).then(|| cpu * 1e6 / deliveries as f64),
                    cpu_utilisation: cpu / wall_s.max(1e-3),
                    rss_before_bytes: b.rss_bytes,
                    rss_after_bytes: a.rss_bytes,
                    waited_for_cpu_s: a.run_delay_s - b.run_delay_s,
                }
            }
            _ => Self {
                pid,
                error: Some(format!("cannot read /proc/{pid} (not running on this machine?)")),
                ..Self::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample("self").expect("/proc/self");
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_s >= 0.0 && s.run_delay_s >= 0.0);
        let v = ProcView::between(1, Some(s), Some(s), 1.0, 10);
        assert_eq!(v.cpu_s, 0.0);
        assert!(ProcView::between(1, None, Some(s), 1.0, 0).error.is_some());
    }
}
