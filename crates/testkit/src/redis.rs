//! A real `redis-server` child process for tests, on a free loopback port.
//!
//! [`RedisServer`] owns one `redis-server` process started with persistence off and a
//! private temporary `--dir`, and gives tests the fault-injection verbs the relay tests
//! need: [`kill`](RedisServer::kill), [`restart`](RedisServer::restart) on the same port,
//! [`pause`](RedisServer::pause) (SIGSTOP: the port still accepts, nothing answers) and
//! [`resume`](RedisServer::resume). It also speaks just enough RESP over a plain
//! `std::net::TcpStream` ([`command`](RedisServer::command), [`query`](RedisServer::query))
//! for a test to look at Redis from the outside (`PUBSUB CHANNELS`, `PUBSUB NUMSUB`,
//! `PUBLISH`, `PING`) without going through the code under test.
//!
//! It deliberately does not use a Redis client crate, never uses a fixed port and never
//! touches port 6379 (a system Redis may be running there). Everything here blocks: calls
//! take milliseconds, so async tests may call them directly.

use std::fmt;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

/// How long [`RedisServer::start`] and [`RedisServer::restart`] wait for `PING` to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect/read/write timeout of [`RedisServer::command`] and the typed helpers: long
/// enough for a loaded CI machine, short enough that a paused server fails a test quickly.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The port a system Redis listens on; the harness refuses to use it.
const SYSTEM_REDIS_PORT: u16 = 6379;

/// How many fresh ports [`RedisServer::start`] tries when another process wins the race
/// for the port between our probe bind and redis-server's bind.
const PORT_ATTEMPTS: usize = 5;

/// Makes temp dir names unique across servers started by one test binary.
static SERVER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A `redis-server` child process on `127.0.0.1:<port>`, killed on drop.
///
/// The binary is `redis-server` from `PATH`, or `$REDIS_SERVER_BIN` when set
/// (`scripts/ensure-deps.sh` installs it).
pub struct RedisServer {
    /// Kept across [`kill`](Self::kill)/[`restart`](Self::restart): clients configured
    /// with [`url`](Self::url) must find the new process where the old one was.
    port: u16,
    /// `None` after [`kill`](Self::kill) until the next [`restart`](Self::restart).
    child: Option<Child>,
    /// SIGSTOPped processes must get SIGCONT before they can exit cleanly.
    paused: bool,
    /// Redis's `--dir` and our stdout/stderr captures; removed on drop.
    dir: PathBuf,
    /// The binary, resolved once so a restart runs the same one.
    bin: PathBuf,
    /// Arguments after the harness's own (`--cluster-enabled yes`, ...), kept for restarts.
    extra_args: Vec<String>,
    /// A Redis Cluster node's bus port (`--cluster-port`), picked with the port on each
    /// start attempt and kept across restarts; 0 for a plain server.
    bus_port: u16,
    cluster_node: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers `PING`.
    pub fn start() -> Result<Self> {
        Self::start_with_args(Vec::new())
    }

    /// [`start`](Self::start) with more `redis-server` arguments after the harness's own
    /// (they win where both name an option); a [`restart`](Self::restart) passes them again.
    pub fn start_with_args(extra_args: Vec<String>) -> Result<Self> {
        Self::start_inner(extra_args, false)
    }

    /// [`start_with_args`](Self::start_with_args) for a Redis Cluster node: a free bus port
    /// (`--cluster-port`) is picked with the port on every attempt, so a port another
    /// process took meanwhile costs a retry, not the test.
    pub fn start_cluster_node(extra_args: Vec<String>) -> Result<Self> {
        Self::start_inner(extra_args, true)
    }

    fn start_inner(extra_args: Vec<String>, cluster_node: bool) -> Result<Self> {
        let bin = std::env::var_os("REDIS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("redis-server"));
        let dir = std::env::temp_dir().join(format!(
            "herald-redis-{}-{}-{}",
            std::process::id(),
            SERVER_SEQ.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut server = RedisServer {
            port: 0,
            child: None,
            paused: false,
            dir,
            bin,
            extra_args,
            bus_port: 0,
            cluster_node,
        };
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            if server.cluster_node {
                server.bus_port = loop {
                    let p = free_port()?;
                    if p != server.port {
                        break p;
                    }
                };
            }
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                // Only a lost port race is worth another port; anything else is final.
                Err(e) if format!("{e:#}").contains("Address already in use") => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no free port found")))
    }

    /// `redis://127.0.0.1:<port>/`, for the relay's `redis.url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The loopback port; unchanged by [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's private `--dir` (kept across restarts, removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, or `None` after [`kill`](Self::kill).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a process is running (possibly paused).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs the server and waits for it to exit: the port then refuses connections.
    /// A no-op when it is not running.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                // SIGKILL works on a stopped process too; SIGCONT keeps states simple.
                let _ = signal(child.id(), "-CONT");
                self.paused = false;
            }
            // kill() fails only if the child was already reaped; wait() still tidies up.
            let _ = child.kill();
            child.wait().context("waiting for redis-server to exit")?;
        }
        Ok(())
    }

    /// Starts a new server on the same port (killing the current one first, if any) and
    /// waits until it answers `PING`. The data set starts empty: persistence is off.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn_and_wait()
    }

    /// SIGSTOPs the server: connections are still accepted by the kernel but nothing is
    /// answered, the way a hung or partitioned Redis looks to a client.
    pub fn pause(&mut self) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("redis-server is not running"))?;
        signal(pid, "-STOP")?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONTs a server stopped by [`pause`](Self::pause).
    pub fn resume(&mut self) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("redis-server is not running"))?;
        signal(pid, "-CONT")?;
        self.paused = false;
        Ok(())
    }

    /// Sends `PING` and expects `PONG`, with [`COMMAND_TIMEOUT`].
    pub fn ping(&self) -> Result<()> {
        self.ping_timeout(COMMAND_TIMEOUT)
    }

    /// Sends `PING` and expects `PONG` within `timeout` (connect, write and read each).
    pub fn ping_timeout(&self, timeout: Duration) -> Result<()> {
        match self.query_timeout(&["PING"], timeout)? {
            Resp::Simple(s) if s == "PONG" => Ok(()),
            other => bail!("PING answered {other}"),
        }
    }

    /// Runs one command over a fresh connection and renders the reply readably
    /// (`PONG`, `(integer) 1`, `"bulk"`, `(nil)`, `["a", "b"]`, `(error) ERR ...`).
    /// A Redis error reply is returned as text, not as `Err`; I/O failures are `Err`.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        Ok(self.query(args)?.to_string())
    }

    /// Runs one command (binary-safe arguments) over a fresh connection with
    /// [`COMMAND_TIMEOUT`] and returns the decoded reply.
    pub fn query<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Resp> {
        self.query_timeout(args, COMMAND_TIMEOUT)
    }

    /// [`query`](Self::query) with an explicit connect/read/write timeout.
    pub fn query_timeout<A: AsRef<[u8]>>(&self, args: &[A], timeout: Duration) -> Result<Resp> {
        let stream = TcpStream::connect_timeout(&self.addr(), timeout)
            .with_context(|| format!("connecting to redis-server on {}", self.addr()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let _ = stream.set_nodelay(true);
        (&stream)
            .write_all(&encode_command(args))
            .context("sending command to redis-server")?;
        read_reply(&mut BufReader::new(&stream)).context("reading reply from redis-server")
    }

    /// `PUBSUB CHANNELS <pattern>`: the channels with at least one subscriber.
    pub fn pubsub_channels(&self, pattern: &str) -> Result<Vec<String>> {
        match self.query(&["PUBSUB", "CHANNELS", pattern])?.into_result()? {
            Resp::Array(Some(items)) => items
                .into_iter()
                .map(|item| match item {
                    Resp::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
                    other => bail!("PUBSUB CHANNELS item {other}"),
                })
                .collect(),
            other => bail!("PUBSUB CHANNELS answered {other}"),
        }
    }

    /// `PUBSUB NUMSUB <channel>`: how many connections subscribe to `channel`.
    pub fn pubsub_numsub(&self, channel: &str) -> Result<i64> {
        match self.query(&["PUBSUB", "NUMSUB", channel])?.into_result()? {
            Resp::Array(Some(items)) if items.len() == 2 => match &items[1] {
                Resp::Integer(n) => Ok(*n),
                other => bail!("PUBSUB NUMSUB count {other}"),
            },
            other => bail!("PUBSUB NUMSUB answered {other}"),
        }
    }

    /// `PUBLISH <channel> <payload>`: returns how many subscribers received it.
    pub fn publish(&self, channel: &str, payload: &[u8]) -> Result<i64> {
        match self
            .query(&[b"PUBLISH".as_slice(), channel.as_bytes(), payload])?
            .into_result()?
        {
            Resp::Integer(n) => Ok(n),
            other => bail!("PUBLISH answered {other}"),
        }
    }

    /// Spawns redis-server on `self.port` and waits for `PING`, or explains why not.
    fn spawn_and_wait(&mut self) -> Result<()> {
        if self.port == SYSTEM_REDIS_PORT {
            bail!("refusing to start a test redis-server on port {SYSTEM_REDIS_PORT}");
        }
        let stdout = File::create(self.dir.join("stdout.log"))?;
        let stderr = File::create(self.dir.join("stderr.log"))?;
        let port = self.port.to_string();
        let child = Command::new(&self.bin)
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .args(if self.cluster_node {
                vec!["--cluster-port".to_string(), self.bus_port.to_string()]
            } else {
                Vec::new()
            })
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {:?} (install it with scripts/ensure-deps.sh)", self.bin))?;
        self.child = Some(child);
        self.paused = false;
        if let Err(e) = self.wait_ready(START_TIMEOUT) {
            let _ = self.kill();
            return Err(anyhow!(
                "redis-server on port {port} did not start: {e:#}\n\
                 --- redis-server stderr ---\n{}--- redis-server stdout ---\n{}",
                tail(&self.dir.join("stderr.log")),
                tail(&self.dir.join("stdout.log")),
            ));
        }
        Ok(())
    }

    /// Polls `PING` until it answers, the process exits, or `timeout` passes.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                bail!("redis-server exited early with {status}");
            }
            let last = match self.ping_timeout(Duration::from_millis(500)) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(last.context(format!("no PONG within {timeout:?}")));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("paused", &self.paused)
            .finish()
    }
}

/// A decoded RESP2 reply: enough for the commands tests send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`, `+PONG`.
    Simple(String),
    /// `-ERR ...`: a command error, not an I/O error.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` payload; `None` is the nil bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` items; `None` is the nil array `*-1`.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// Turns an error reply into `Err`, so typed helpers can use `?`.
    pub fn into_result(self) -> Result<Resp> {
        match self {
            Resp::Error(e) => Err(anyhow!("redis error: {e}")),
            other => Ok(other),
        }
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resp::Simple(s) => f.write_str(s),
            Resp::Error(e) => write!(f, "(error) {e}"),
            Resp::Integer(n) => write!(f, "(integer) {n}"),
            Resp::Bulk(None) | Resp::Array(None) => f.write_str("(nil)"),
            Resp::Bulk(Some(b)) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Resp::Array(Some(items)) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one RESP2 reply.
fn read_reply<R: BufRead>(r: &mut R) -> Result<Resp> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(1);
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Integer(parse_int(rest)?),
        "$" => match parse_int(rest)? {
            n if n < 0 => Resp::Bulk(None),
            n => {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                if !buf.ends_with(b"\r\n") {
                    bail!("bulk string not terminated by CRLF");
                }
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
        },
        "*" => match parse_int(rest)? {
            n if n < 0 => Resp::Array(None),
            n => Resp::Array(Some((0..n).map(|_| read_reply(r)).collect::<Result<_>>()?)),
        },
        _ => bail!("unexpected RESP line {line:?}"),
    })
}

/// Reads one CRLF-terminated, non-empty line, without the CRLF.
fn read_line<R: BufRead>(r: &mut R) -> Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed before a reply");
    }
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| anyhow!("RESP line without CRLF: {line:?}"))?;
    if line.is_empty() {
        bail!("empty RESP line");
    }
    Ok(line.to_owned())
}

fn parse_int(s: &str) -> Result<i64> {
    s.parse().with_context(|| format!("bad RESP integer {s:?}"))
}

/// A port the kernel just considered free on 127.0.0.1; racy by nature, hence retries.
fn free_port() -> Result<u16> {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding 127.0.0.1:0 to find a free port")?
            .local_addr()?
            .port();
        if port != SYSTEM_REDIS_PORT {
            return Ok(port);
        }
    }
}

/// Sends a signal with the `kill` command (procps), keeping the harness free of libc.
fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("running kill (install procps)")?;
    if !status.success() {
        bail!("kill {sig} {pid} failed with {status}");
    }
    Ok(())
}

/// The last 4 KiB of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(4096);
    let mut s = String::from_utf8_lossy(&text[start..]).into_owned();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_ping_and_publish() -> Result<()> {
        let redis = RedisServer::start()?;
        assert_ne!(redis.port(), SYSTEM_REDIS_PORT);
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
        redis.ping()?;
        assert_eq!(redis.command(&["PING"])?, "PONG");
        assert_eq!(redis.publish("herald:test", b"\x00bin\r\n")?, 0);
        assert_eq!(redis.pubsub_numsub("herald:test")?, 0);
        assert!(redis.pubsub_channels("*")?.is_empty());
        assert!(redis.command(&["NOSUCHCOMMAND"])?.starts_with("(error) ERR"));
        assert!(redis.pubsub_numsub("").is_ok());
        Ok(())
    }

    #[test]
    fn sees_subscribers_from_outside() -> Result<()> {
        let redis = RedisServer::start()?;
        let sub = TcpStream::connect(redis.addr())?;
        sub.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        (&sub).write_all(&encode_command(&["SUBSCRIBE", "herald:t"]))?;
        let mut reader = BufReader::new(&sub);
        let confirm = read_reply(&mut reader)?;
        assert_eq!(confirm.to_string(), r#"["subscribe", "herald:t", (integer) 1]"#);
        assert_eq!(redis.pubsub_channels("herald:*")?, vec!["herald:t"]);
        assert_eq!(redis.pubsub_numsub("herald:t")?, 1);
        assert_eq!(redis.publish("herald:t", b"hi")?, 1);
        let msg = read_reply(&mut reader)?;
        assert_eq!(msg.to_string(), r#"["message", "herald:t", "hi"]"#);
        Ok(())
    }

    #[test]
    fn kill_refuses_then_restart_on_same_port() -> Result<()> {
        let mut redis = RedisServer::start()?;
        let port = redis.port();
        redis.kill()?;
        assert!(!redis.is_running());
        let err = TcpStream::connect(redis.addr()).expect_err("killed server still listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(redis.ping_timeout(Duration::from_millis(200)).is_err());
        redis.restart()?;
        assert_eq!(redis.port(), port);
        assert!(redis.is_running());
        redis.ping()?;
        Ok(())
    }

    #[test]
    fn pause_times_out_and_resume_restores() -> Result<()> {
        let mut redis = RedisServer::start()?;
        redis.pause()?;
        let started = Instant::now();
        let err = redis
            .ping_timeout(Duration::from_millis(300))
            .expect_err("paused server answered PING");
        assert!(started.elapsed() < Duration::from_secs(3), "{err:#}");
        redis.resume()?;
        redis.ping()?;
        Ok(())
    }

    #[test]
    fn drop_kills_a_paused_server() -> Result<()> {
        let mut redis = RedisServer::start()?;
        let addr = redis.addr();
        let dir = redis.dir.clone();
        redis.pause()?;
        drop(redis);
        assert!(TcpStream::connect(addr).is_err());
        assert!(!dir.exists());
        Ok(())
    }

    #[test]
    fn decodes_nested_and_nil_replies() -> Result<()> {
        let wire = b"*3\r\n$-1\r\n*-1\r\n*2\r\n:-7\r\n$0\r\n\r\n";
        let reply = read_reply(&mut &wire[..])?;
        assert_eq!(reply.to_string(), r#"[(nil), (nil), [(integer) -7, ""]]"#);
        assert_eq!(encode_command(&["PING"]), b"*1\r\n$4\r\nPING\r\n".to_vec());
        Ok(())
    }
}
