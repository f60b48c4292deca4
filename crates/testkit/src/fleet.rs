//! A fleet for tests, run the way operators run it: real `herald` processes on loopback
//! ports chosen for the test (so a node can be stopped with SIGTERM and started again where
//! it was), and a real HAProxy in front of them whose configuration is rendered from
//! `deploy/haproxy/haproxy.cfg` by `scripts/cluster.sh render-haproxy`, the same code path
//! `make cluster` uses.
//!
//! It owns process plumbing only (spawn, signal, wait, logs, readiness, HAProxy's view of
//! its servers); what a test asserts about drains and reconnects stays in the test. Ports
//! are never fixed: each comes from binding 127.0.0.1:0. Every process is killed when its
//! handle drops, so a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::time::Instant;

use crate::node::http_request;

/// Makes directory names unique within one test binary.
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The workspace root (where `deploy/` and `scripts/` live).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the testkit lives two levels below the workspace root")
}

/// A port that was free a moment ago (bound to 127.0.0.1:0 and released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A fresh private directory for one test's configs and logs, removed on drop unless the
/// test is panicking or [`TempDir::keep`] was called (so a failure leaves its logs).
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(label: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "herald-{label}-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: false })
    }

    /// Leaves the directory in place; returns its path (for an error message).
    pub fn keep(&mut self) -> &Path {
        self.keep = true;
        &self.path
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep && !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Raises this process's soft open-file limit to at least `needed` (up to the hard limit),
/// for tests that hold thousands of sockets. Returns the soft limit now in force.
pub fn raise_fd_limit(needed: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= needed {
        return Ok(lim.rlim_cur);
    }
    if lim.rlim_max < needed {
        bail!(
            "this test needs {needed} open files but the hard limit is {}; raise it (ulimit -Hn)",
            lim.rlim_max
        );
    }
    lim.rlim_cur = needed;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(needed)
}

/// Sends `sig` (e.g. `libc::SIGTERM`) to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The status of `GET path` on `addr`, or `None` when nothing answered.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_request(addr, "GET", path, &[], b"").await.ok().map(|(s, _)| s)
}

/// `/readyz`'s `reason` on `addr` (`ready`, `degraded`, `relay_down`, `draining`, ...).
pub async fn readiness_reason(addr: SocketAddr) -> Option<String> {
    let (_, body) = http_request(addr, "GET", "/readyz", &[], b"").await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["reason"].as_str().map(str::to_owned)
}

/// Polls `/readyz` on `addr` until its `reason` is `want`.
pub async fn wait_readiness(addr: SocketAddr, want: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let got = readiness_reason(addr).await;
        if got.as_deref() == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr}/readyz reason {got:?}, not {want:?}, within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET path` on `addr` until it answers `want`.
pub async fn wait_http_status(addr: SocketAddr, path: &str, want: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let got = http_status(addr, path).await;
        if got == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr}{path} answered {got:?}, not {want}, within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where and how one `herald` process runs; kept so it can be started again identically.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id (`HERALD_NODE_ID`) and HAProxy server name.
    pub name: String,
    pub ws_port: u16,
    pub admin_port: u16,
    /// Extra environment, e.g. `HERALD_RELAY__KIND=redis`.
    pub env: Vec<(String, String)>,
    /// Soft and hard `RLIMIT_NOFILE` for the process (set before exec), for tests of
    /// what a node does at its descriptor limit. `None`: inherited.
    pub nofile: Option<u64>,
}

impl NodeSpec {
    /// A node on two fresh loopback ports.
    pub fn new(name: &str, env: &[(&str, &str)]) -> Result<Self> {
        Ok(Self {
            name: name.into(),
            ws_port: free_port()?,
            admin_port: free_port()?,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            nofile: None,
        })
    }
    pub fn ws_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ws_port))
    }
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port))
    }
}

/// A `herald` child process (stdout and stderr appended to one log file), killed on drop.
pub struct HeraldProcess {
    pub spec: NodeSpec,
    bin: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl HeraldProcess {
    /// Starts `bin` as described by `spec`, logging into `dir`, and waits until it prints
    /// its `herald listening` line and `/readyz` answers 200.
    pub async fn start(bin: &Path, spec: NodeSpec, dir: &Path) -> Result<Self> {
        let mut p = Self {
            log: dir.join(format!("{}.log", spec.name)),
            spec,
            bin: bin.to_owned(),
            child: None,
        };
        p.spawn().await?;
        Ok(p)
    }

    async fn spawn(&mut self) -> Result<()> {
        let out = File::options().create(true).append(true).open(&self.log)?;
        let listening_before = self.log_text().matches("herald listening").count();
        let mut cmd = Command::new(&self.bin);
        // Only the spec configures the node: nothing inherited from the test's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HERALD_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        if let Some(n) = self.spec.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and touches nothing but the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["--listen", &self.spec.ws_addr().to_string()])
            .args(["--admin-listen", &self.spec.admin_addr().to_string()])
            .env("HERALD_NODE_ID", &self.spec.name)
            .env("NO_COLOR", "1")
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log_text().matches("herald listening").count() == listening_before {
            if let Some(status) = self.try_wait()? {
                bail!("{} exited with {status} at start:\n{}", self.spec.name, self.log_text());
            }
            if Instant::now() > deadline {
                bail!("{} did not start within 10 s:\n{}", self.spec.name, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Wholly ready: a node with a relay is ready (200) while the relay is still down
        // (`degraded`), and tests want it connected.
        wait_readiness(self.spec.admin_addr(), "ready", Duration::from_secs(10)).await
    }

    /// Starts the process again with the same ports and environment (after it exited).
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is still running", self.spec.name);
        }
        self.spawn().await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM: the node starts its drain.
    pub fn terminate(&self) -> Result<()> {
        signal(self.pid().context("not running")?, libc::SIGTERM)
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            bail!("not running");
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits for the process to exit; kills it and fails after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} still running after {within:?}; killed", self.spec.name);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Everything the process has written so far (all its runs).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real HAProxy ([`haproxy_bin`]) in front of some nodes, with a
/// stats frontend the test reads to see which servers HAProxy considers up. Killed on drop.
pub struct Haproxy {
    child: Option<Child>,
    pub lb_port: u16,
    pub stats_port: u16,
    pub config: PathBuf,
    log: PathBuf,
}

/// A system tool: `$env_var` when set, else `name` from `PATH`, else `/usr/sbin/name`
/// (Debian installs haproxy and nginx there, outside a normal user's `PATH`).
pub fn system_bin(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if on_path {
        PathBuf::from(name)
    } else {
        Path::new("/usr/sbin").join(name)
    }
}

/// The `haproxy` binary (`$HAPROXY_BIN` overrides).
pub fn haproxy_bin() -> PathBuf {
    system_bin("haproxy", "HAPROXY_BIN")
}

/// The `nginx` binary (`$NGINX_BIN` overrides).
pub fn nginx_bin() -> PathBuf {
    system_bin("nginx", "NGINX_BIN")
}

/// The local address HAProxy started by [`Haproxy::start`] connects to the nodes from (as
/// under `make cluster`), so a node can trust it alone: `HERALD_PROXY__TRUSTED=127.0.0.2`.
pub const HAPROXY_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The environment of a node behind [`Haproxy::start`]: the PROXY protocol v2 header
/// HAProxy sends (`send-proxy-v2`) is expected from [`HAPROXY_SOURCE`].
pub const BEHIND_HAPROXY: [(&str, &str); 2] = [
    ("HERALD_PROXY__PROXY_PROTOCOL", "true"),
    ("HERALD_PROXY__TRUSTED", "127.0.0.2"),
];

/// Renders `deploy/haproxy/haproxy.cfg` to `out` with `scripts/cluster.sh render-haproxy`:
/// public and stats bind addresses, one server per node, and (optionally) the check timings.
pub fn render_haproxy(
    out: &Path,
    lb: SocketAddr,
    stats: SocketAddr,
    nodes: &[NodeSpec],
    check: Option<&str>,
    maxconn: Option<u32>,
) -> Result<()> {
    render_haproxy_from(out, lb, stats, nodes, check, maxconn, None)
}

/// [`render_haproxy`], with HAProxy connecting to the nodes from `source` when given.
pub fn render_haproxy_from(
    out: &Path,
    lb: SocketAddr,
    stats: SocketAddr,
    nodes: &[NodeSpec],
    check: Option<&str>,
    maxconn: Option<u32>,
    source: Option<Ipv4Addr>,
) -> Result<()> {
    let root = repo_root();
    let mut cmd = Command::new(root.join("scripts/cluster.sh"));
    cmd.arg("render-haproxy")
        .arg(root.join("deploy/haproxy/haproxy.cfg"))
        .arg(out)
        .arg(lb.to_string())
        .arg(stats.to_string());
    for n in nodes {
        cmd.arg(format!("{}={},{}", n.name, n.ws_addr(), n.admin_port));
    }
    if let Some(c) = check {
        cmd.args(["--check", c]);
    }
    if let Some(m) = maxconn {
        cmd.args(["--maxconn", &m.to_string()]);
    }
    if let Some(s) = source {
        cmd.args(["--source", &s.to_string()]);
    }
    let o = cmd.output().context("running scripts/cluster.sh render-haproxy")?;
    if !o.status.success() {
        bail!("render-haproxy failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// `haproxy -c -f config`: `Ok(stderr)` when the configuration is valid.
pub fn haproxy_check(config: &Path) -> Result<String> {
    let o = Command::new(haproxy_bin())
        .args(["-c", "-f"])
        .arg(config)
        .output()
        .context("running haproxy -c (is haproxy installed? make deps)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        bail!("haproxy -c -f {} failed:\n{text}", config.display());
    }
    Ok(text)
}

impl Haproxy {
    /// Renders the deploy configuration for `nodes` with `check` timings, checks it with
    /// `haproxy -c`, starts HAProxy in the foreground and waits until it accepts. It sends
    /// each connection's PROXY v2 header from [`HAPROXY_SOURCE`]: the nodes must trust it
    /// ([`BEHIND_HAPROXY`]).
    pub async fn start(nodes: &[NodeSpec], check: &str, dir: &Path) -> Result<Self> {
        let lb_port = free_port()?;
        let stats_port = free_port()?;
        let config = dir.join("haproxy.cfg");
        let log = dir.join("haproxy.log");
        let loopback = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        render_haproxy_from(
            &config,
            loopback(lb_port),
            loopback(stats_port),
            nodes,
            Some(check),
            Some(4000),
            Some(HAPROXY_SOURCE),
        )?;
        let warnings = haproxy_check(&config)?;
        if warnings.contains("WARNING") || warnings.contains("ALERT") {
            bail!("haproxy -c warns about the rendered configuration:\n{warnings}");
        }
        let out = File::create(&log)?;
        let child = Command::new(haproxy_bin())
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning haproxy")?;
        let p = Self {
            child: Some(child),
            lb_port,
            stats_port,
            config,
            log,
        };
        wait_http_status(loopback(stats_port), "/stats", 200, Duration::from_secs(10)).await?;
        Ok(p)
    }

    /// The public entry, `127.0.0.1:<lb_port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.lb_port))
    }

    /// `ws://127.0.0.1:<lb_port>{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }

    pub fn stats_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.stats_port))
    }

    /// What HAProxy's stats say about each server of `herald_nodes`: name -> (status, current
    /// sessions). Status is e.g. `UP`, `DOWN`, `UP 1/2` (going down), `no check`.
    pub async fn servers(&self) -> Result<BTreeMap<String, (String, u64)>> {
        let (status, body) = http_request(self.stats_addr(), "GET", "/stats;csv", &[], b"").await?;
        if status != 200 {
            bail!("HAProxy stats answered {status}");
        }
        let text = String::from_utf8_lossy(&body);
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .context("empty stats")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).context("stats column missing");
        let (px, sv, st, scur) = (col("pxname")?, col("svname")?, col("status")?, col("scur")?);
        let mut out = BTreeMap::new();
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() > st && f[px] == "herald_nodes" && f[sv] != "BACKEND" {
                out.insert(f[sv].to_owned(), (f[st].to_owned(), f[scur].parse().unwrap_or(0)));
            }
        }
        Ok(out)
    }

    /// Waits until HAProxy reports server `name` with status `want` (`UP` or `DOWN`).
    pub async fn wait_server(&self, name: &str, want: &str, within: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let now = self.servers().await?;
            if now.get(name).map(|(s, _)| s.as_str()) == Some(want) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!("HAProxy never reported {name} {want} within {within:?}: {now:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// HAProxy's own log (its stdout/stderr).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
