//! The generator's own resources: file descriptors, local ports, and the CPU and memory
//! it uses (so a saturated generator shows in the report instead of passing for a slow
//! node).
//!
//! - [`raise_nofile`] lifts the soft `RLIMIT_NOFILE` towards the hard limit (one fd per
//!   connection, plus slack).
//! - [`SourcePlan`] spreads connections to one loopback address over source addresses
//!   127.0.0.1, .2, ... (bind before connect) beyond 8,192 per address, well before they
//!   would exhaust the ephemeral port range of one source address (about 28k on Linux).
//! - [`Usage`] reads `getrusage(RUSAGE_SELF)`: user and system CPU seconds, peak RSS.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Result};
use serde::Serialize;

/// File descriptors kept free for everything that is not a connection.
const FD_SLACK: u64 = 64;

/// Raises the soft fd limit so `connections` sockets fit; returns the new soft limit.
/// Fails with advice when even the hard limit is too low.
pub fn raise_nofile(connections: u64) -> Result<u64> {
    let needed = connections + FD_SLACK;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit(RLIMIT_NOFILE) failed: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= needed {
        return Ok(lim.rlim_cur);
    }
    let hard = lim.rlim_max;
    if hard < needed {
        bail!(
            "{connections} connections need {needed} file descriptors but the hard limit is {hard}; \
             raise it (ulimit -Hn, /etc/security/limits.conf or LimitNOFILE=) or use fewer connections"
        );
    }
    lim.rlim_cur = needed;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!(
            "setrlimit(RLIMIT_NOFILE, {needed}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(needed)
}

/// Size of the ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`).
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            (hi >= lo).then(|| hi - lo + 1)
        })
        .unwrap_or(28_232)
}

/// Connections per source address to one IPv4 loopback target before the next source
/// address is used. Far below the ~28k ports of the range on purpose: Linux's ephemeral
/// port search in `connect()` slows down as one (source, destination) pair fills up
/// (measured: 19,000 connects from one address cost 6 s of kernel CPU, spread over
/// addresses of 5-10k each 1.4-1.8 s).
pub const LOOPBACK_PER_SOURCE: u64 = 8192;

/// Which source address each connection binds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePlan {
    /// Connections per source address; `None`: let the kernel choose (no bind).
    per_source: Option<u64>,
}

impl SourcePlan {
    /// Plans for `max_per_target` connections to one address. Spreading applies to IPv4
    /// loopback targets only (127.0.0.0/8 is all local), beyond [`LOOPBACK_PER_SOURCE`];
    /// elsewhere more connections than ports to one address is refused with advice.
    pub fn new(max_per_target: u64, target_is_v4_loopback: bool) -> Result<Self> {
        let ports = ephemeral_ports();
        if target_is_v4_loopback {
            let spread = max_per_target > LOOPBACK_PER_SOURCE;
            return Ok(Self {
                per_source: spread.then_some(LOOPBACK_PER_SOURCE),
            });
        }
        // Stay under the range: TIME_WAIT sockets of earlier runs still hold ports.
        if max_per_target > ports * 9 / 10 {
            bail!(
                "{max_per_target} connections to one address exceed the {ports} local ports of one source \
                 address; spread them over more node URLs or run several generators"
            );
        }
        Ok(Self { per_source: None })
    }

    /// The source address of the `i`-th connection to a target.
    pub fn source(&self, i: u64) -> Option<IpAddr> {
        let per = self.per_source?;
        let n = (i / per).min(253) as u8;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n)))
    }

    /// Whether connections are spread over several source addresses.
    pub fn spreads(&self) -> bool {
        self.per_source.is_some()
    }
}

/// CPU and memory used by this process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub user_s: f64,
    pub system_s: f64,
    /// Peak resident set size, bytes.
    pub max_rss_bytes: u64,
}

impl Usage {
    pub fn now() -> Self {
        // SAFETY: an all-zero rusage is a valid value; getrusage fills it in.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes into the struct we own.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return Self::default();
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Self {
            user_s: secs(ru.ru_utime),
            system_s: secs(ru.ru_stime),
            max_rss_bytes: ru.ru_maxrss as u64 * 1024,
        }
    }

    /// CPU seconds (user + system).
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

/// This process's current resident set size in bytes (Linux `/proc/self/statm`).
pub fn current_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_only_when_ports_run_out() {
        let few = SourcePlan::new(1000, true).unwrap();
        assert_eq!(few.source(999), None);
        assert!(!few.spreads());
        let many = SourcePlan::new(100_000, true).unwrap();
        assert!(many.spreads());
        assert_eq!(many.source(0), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(many.source(LOOPBACK_PER_SOURCE), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(many.source(99_999), Some("127.0.0.13".parse().unwrap()));
        assert!(
            !SourcePlan::new(20_000, false).unwrap().spreads(),
            "remote: ports suffice"
        );
        assert!(SourcePlan::new(100_000, false).is_err());
    }

    #[test]
    fn usage_and_limits_are_readable() {
        let u = Usage::now();
        assert!(u.cpu_s() >= 0.0 && u.max_rss_bytes > 0);
        assert!(current_rss().unwrap() > 0);
        assert!(raise_nofile(16).unwrap() >= 16);
    }
}
