//! The process's open-file budget: raising the soft `RLIMIT_NOFILE` to the hard limit at
//! start (the binary does it once, before the runtime), and splitting the limit in force
//! into a reserve and the number of public sockets the node may hold.
//!
//! The reserve is [`FD_RESERVE_BASE`] descriptors (listeners, the runtime's own, the relay's
//! Redis connections and reconnects, log and config files, the brief accept of a refused
//! connection) plus `admin.max_connections`. What is left is the public socket budget:
//! WebSocket sessions and handshakes in flight together never pass it, so at the limit the
//! admin probes still answer, a refused client still gets its 503, and the relay can still
//! reconnect. It does not count or police descriptors itself; `socket_budget.rs` does.

/// Descriptors kept for everything that is not a public or admin connection.
pub const FD_RESERVE_BASE: u64 = 64;

/// Fewest public sockets a node will start with.
pub const MIN_PUBLIC_SOCKETS: u64 = 16;

/// Why the descriptor limit does not allow a node.
#[derive(Debug, thiserror::Error)]
#[error(
    "the open-file limit (RLIMIT_NOFILE) is {limit}, but {reserve} descriptors are reserved \
     ({FD_RESERVE_BASE} + admin.max_connections) and at least {MIN_PUBLIC_SOCKETS} are needed for \
     clients; raise the limit (ulimit -n, systemd LimitNOFILE=) or lower admin.max_connections"
)]
pub struct FdLimitTooLow {
    pub limit: u64,
    pub reserve: u64,
}

/// What the limit in force allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` the split was made from.
    pub limit: u64,
    /// Descriptors kept out of the public budget.
    pub reserve: u64,
    /// Public sockets (handshaking and upgraded together) the node may hold.
    pub public_sockets: usize,
}

impl FdBudget {
    /// Splits `limit` with `admin_connections` reserved for the admin listener.
    pub fn split(limit: u64, admin_connections: usize) -> Result<Self, FdLimitTooLow> {
        let reserve = FD_RESERVE_BASE + admin_connections as u64;
        if limit < reserve + MIN_PUBLIC_SOCKETS {
            return Err(FdLimitTooLow { limit, reserve });
        }
        Ok(Self {
            limit,
            reserve,
            public_sockets: usize::try_from(limit - reserve).unwrap_or(usize::MAX),
        })
    }

    /// The split of the current soft limit.
    pub fn current(admin_connections: usize) -> Result<Self, FdLimitTooLow> {
        Self::split(nofile().map(|(soft, _)| soft).unwrap_or(1024), admin_connections)
    }
}

/// The soft and hard `RLIMIT_NOFILE`.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every target
pub fn nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// What [`raise_nofile`] did.
#[derive(Debug, Clone, Copy)]
pub struct Raised {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped by the kernel's `nr_open`
/// when the hard limit is unlimited). Process-wide, so the binary calls it, not a node.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every target
pub fn raise_nofile() -> std::io::Result<Raised> {
    let (soft, hard) = nofile()?;
    let mut target = hard;
    if hard == libc::RLIM_INFINITY as u64 {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target <= soft {
        return Ok(Raised {
            before: soft,
            now: soft,
        });
    }
    let lim = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Raised {
        before: soft,
        now: target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_limit() {
        let b = FdBudget::split(1024, 256).unwrap();
        assert_eq!(b.reserve, 320);
        assert_eq!(b.public_sockets, 704);
        let e = FdBudget::split(256, 256).unwrap_err();
        assert!(e.to_string().contains("admin.max_connections"), "{e}");
        assert!(FdBudget::split(64 + 8 + 16, 8).is_ok());
    }
}
