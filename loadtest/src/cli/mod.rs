//! The command line: every flag, the per-scenario defaults, and [`Config`], the checked and
//! bounded plan a run executes. Nothing here touches the network (URLs are resolved when
//! the run starts); every limit that keeps a run bounded is enforced here.

mod values;

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use clap::Parser;
use serde::Serialize;

pub use values::{parse_duration, parse_rate, DistKind, PublishVia, Rate, Scenario, SubscribeVia};

use crate::payload::{MAX_PUBLISHERS, MAX_TOPICS, MIN_PAYLOAD};
use crate::topics::Distribution;

/// herald-loadtest: floods a Herald node or cluster and reports what it carried.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "herald-loadtest",
    version,
    about,
    after_help = "Documentation: docs/loadtest.md"
)]
pub struct Args {
    /// Scenario to run.
    #[arg(value_enum, default_value_t = Scenario::Fanout)]
    pub scenario: Scenario,
    /// Node WebSocket URLs (repeat or comma-separate); clients are spread over them round-robin.
    #[arg(
        short = 'u',
        long = "url",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub urls: Vec<String>,
    /// URLs for publishers only (default: --url; cross-node: the first --url).
    #[arg(long = "pub-url", value_delimiter = ',')]
    pub pub_urls: Vec<String>,
    /// URLs for subscribers only (default: --url; cross-node: all but the first --url).
    #[arg(long = "sub-url", value_delimiter = ',')]
    pub sub_urls: Vec<String>,
    /// Admin base URLs (http://127.0.0.1:9090): /metrics scraped before and after; HTTP publishing target.
    #[arg(long = "admin", value_delimiter = ',')]
    pub admin: Vec<String>,
    /// Pids of local node processes: precise CPU, memory and CPU-wait figures from /proc.
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Subscriber connections (idle: connections held; churn: concurrent workers).
    #[arg(short = 's', long)]
    pub subscribers: Option<usize>,
    /// Publisher connections.
    #[arg(short = 'p', long)]
    pub publishers: Option<usize>,
    /// Number of topics.
    #[arg(short = 't', long)]
    pub topics: Option<u32>,
    /// How subscribers are spread over topics.
    #[arg(long, value_enum)]
    pub distribution: Option<DistKind>,
    /// Share of subscribers on topic 0 with --distribution hot.
    #[arg(long, default_value_t = 0.5)]
    pub hot_fraction: f64,
    /// Exponent s of --distribution zipf (P(rank r) ~ 1/r^s).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Distinct topics per subscriber.
    #[arg(long, default_value_t = 1)]
    pub topics_per_subscriber: usize,
    /// How subscribers subscribe.
    #[arg(long, value_enum)]
    pub subscribe_via: Option<SubscribeVia>,
    /// Total publish rate over all publishers (msgs/s, `2.5k`, `1M`) or `max`; churn: connects/s.
    #[arg(short = 'r', long, value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// At --rate max: outstanding messages per subscription before publishers wait (0: never wait).
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Size of each message's `data` JSON value in bytes (at least 47).
    #[arg(long, default_value_t = 256)]
    pub payload_size: usize,
    /// Publish over the WebSocket protocol or the admin HTTP API.
    #[arg(long, value_enum, default_value_t = PublishVia::Ws)]
    pub publish_via: PublishVia,
    /// Bearer key for the admin API.
    #[arg(long, env = "HERALD_LOADTEST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Spread subscriber connects over this time (0: as fast as --connect-concurrency allows).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub ramp_up: Duration,
    /// Pause between the last subscription and the first publish (lets cluster relays subscribe).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub settle: Duration,
    /// Measured phase: publishing (idle: holding; churn: cycling).
    #[arg(short = 'd', long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// After publishing stops, wait at most this long for the remaining deliveries.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub drain: Duration,
    /// Stop after this many messages in total (or, for churn, cycles).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Connection handshakes in flight at once (above a node's listen backlog, SYNs are dropped).
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Limit for one connect + upgrade + subscribe.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Topic name prefix (default: `lt.<random>.`, so concurrent runs do not mix).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Seed for topic draws and masks (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads of the generator (default: the CPUs it may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as JSON on stdout (the live line still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No live status line.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Exit with status 2 when anything was lost, duplicated, reordered or failed.
    #[arg(long)]
    pub check: bool,
    /// Allow targets that are not loopback addresses (you own them and mean to load them).
    #[arg(long)]
    pub i_own_the_target: bool,

    /// Recovery mode: each subscriber drops its connection after this long (± --drop-jitter)
    /// and resubscribes with `since` (topics need history on the node).
    #[arg(long, value_parser = parse_duration)]
    pub drop_every: Option<Duration>,

    /// Spread of the connection lifetimes in recovery mode: each one lasts --drop-every × a
    /// uniform factor in [1 − F, 1 + F].
    #[arg(long, default_value_t = 0.2)]
    pub drop_jitter: f64,

    /// How long a dropped subscriber stays away before it reconnects.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub away: Duration,

    /// Give every client an HS256 token signed with this secret (env HERALD_LOADTEST_JWT_SECRET).
    #[arg(long, env = "HERALD_LOADTEST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Give every client a token signed with this PEM private key (see --jwt-alg).
    #[arg(long)]
    pub jwt_key: Option<std::path::PathBuf>,

    /// Algorithm of --jwt-key.
    #[arg(long, value_enum)]
    pub jwt_alg: Option<crate::jwt::JwtAlg>,

    /// Tokens' `sub`: this prefix, then `s<i>` (subscriber i) or `p<i>` (publisher i).
    #[arg(long, default_value = "lt-")]
    pub jwt_sub_prefix: String,

    /// Extra claims (a JSON object) merged over each token's defaults, e.g. '{"iss":"x","aud":"herald"}'.
    #[arg(long)]
    pub jwt_claims: Option<String>,

    /// How the token is sent: `Authorization: Bearer` header, or `?token=` on the URL.
    #[arg(long, value_enum, default_value_t = crate::jwt::JwtVia::Header)]
    pub jwt_via: crate::jwt::JwtVia,
}

/// A checked, bounded run plan.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub scenario: Scenario,
    pub pub_urls: Vec<String>,
    pub sub_urls: Vec<String>,
    pub admin: Vec<String>,
    pub server_pids: Vec<u32>,
    pub subscribers: usize,
    pub publishers: usize,
    pub topics: u32,
    pub distribution: Distribution,
    pub topics_per_subscriber: usize,
    pub subscribe_via: SubscribeVia,
    pub rate: Rate,
    /// Outstanding deliveries per subscription at max rate; `None`: open loop.
    pub window: Option<u64>,
    pub payload_size: usize,
    pub publish_via: PublishVia,
    #[serde(skip)]
    pub api_key: Option<String>,
    pub ramp_up: Duration,
    pub settle: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub messages: u64,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub topic_prefix: String,
    pub seed: u64,
    pub json: bool,
    pub quiet: bool,
    pub check: bool,
    pub i_own_the_target: bool,
    /// Tokens for the clients (`None`: anonymous).
    pub jwt: Option<crate::jwt::JwtPlan>,
    /// Recovery mode (`--drop-every`); `None`: subscribers keep their connection.
    pub recovery: Option<RecoveryPlan>,
}

/// How subscribers drop and come back in recovery mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RecoveryPlan {
    /// Mean lifetime of a subscriber connection before it is dropped.
    pub drop_every: Duration,
    /// Lifetimes are `drop_every` × a uniform factor in [1 − jitter, 1 + jitter].
    pub jitter: f64,
    /// Time between the drop and the reconnect.
    pub away: Duration,
}

/// Most connections one run opens.
pub const MAX_CONNECTIONS: usize = 1_000_000;

impl Config {
    /// Parses a command line (`argv[0]` first) into a checked plan.
    pub fn from_args<I, T>(argv: I) -> Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Args::try_parse_from(argv)?.resolve()
    }
}

impl Args {
    /// Applies the scenario's defaults and checks every bound.
    pub fn resolve(self) -> Result<Config> {
        use Scenario::*;
        let s = self.scenario;
        let (subs, pubs, topics, dist, rate) = match s {
            Fanout | CrossNode => (1000, 1, 1, DistKind::Hot, Rate::PerSec(1000.0)),
            ManyTopics => (5000, 10, 500, DistKind::Uniform, Rate::PerSec(1000.0)),
            Churn => (50, 0, 100, DistKind::Uniform, Rate::Max),
            Idle => (10_000, 0, 1, DistKind::Hot, Rate::Max),
        };
        let subscribers = self.subscribers.unwrap_or(subs);
        let publishers = if matches!(s, Churn | Idle) {
            0
        } else {
            self.publishers.unwrap_or(pubs)
        };
        let topics = self.topics.unwrap_or(topics);
        let distribution = match self.distribution.unwrap_or(dist) {
            DistKind::Hot => Distribution::Hot {
                fraction: self.hot_fraction,
            },
            DistKind::Uniform => Distribution::Uniform,
            DistKind::Zipf => Distribution::Zipf {
                exponent: self.zipf_exponent,
            },
        };
        let subscribe_via = self.subscribe_via.unwrap_or(match s {
            Idle => SubscribeVia::Query,
            _ => SubscribeVia::Op,
        });
        let (pub_urls, sub_urls) = match (s, self.pub_urls.is_empty(), self.sub_urls.is_empty()) {
            (CrossNode, true, true) => {
                ensure!(
                    self.urls.len() >= 2,
                    "cross-node needs at least two --url (publishers use the first, subscribers the rest) \
                     or explicit --pub-url and --sub-url"
                );
                (self.urls[..1].to_vec(), self.urls[1..].to_vec())
            }
            (_, p, q) => (
                if p { self.urls.clone() } else { self.pub_urls },
                if q { self.urls.clone() } else { self.sub_urls },
            ),
        };
        let topic_prefix = self
            .topic_prefix
            .unwrap_or_else(|| format!("lt.{:04x}.", rand::random::<u16>()));

        ensure!(
            subscribers + publishers > 0,
            "nothing to do: no subscribers and no publishers"
        );
        ensure!(
            subscribers + publishers <= MAX_CONNECTIONS,
            "at most {MAX_CONNECTIONS} connections per run"
        );
        ensure!(publishers <= MAX_PUBLISHERS, "at most {MAX_PUBLISHERS} publishers");
        ensure!(
            (1..=MAX_TOPICS as u32).contains(&topics),
            "--topics must be 1..={MAX_TOPICS}"
        );
        ensure!(
            (1..=256).contains(&self.topics_per_subscriber) && self.topics_per_subscriber <= topics as usize,
            "--topics-per-subscriber must be 1..=256 and at most --topics"
        );
        ensure!(
            (0.0..=1.0).contains(&self.hot_fraction),
            "--hot-fraction must be within 0..=1"
        );
        ensure!(self.zipf_exponent > 0.0, "--zipf-exponent must be positive");
        ensure!(
            (MIN_PAYLOAD..=16 << 20).contains(&self.payload_size),
            "--payload-size must be {MIN_PAYLOAD}..=16MiB (the stamp needs {MIN_PAYLOAD} bytes)"
        );
        ensure!(!self.duration.is_zero(), "--duration must be positive");
        ensure!(self.ramp_up <= Duration::from_secs(3600), "--ramp-up is at most 1h");
        ensure!(self.settle <= Duration::from_secs(600), "--settle is at most 10m");
        ensure!(self.drain <= Duration::from_secs(600), "--drain is at most 10m");
        ensure!(
            self.connect_timeout >= Duration::from_millis(10),
            "--connect-timeout is at least 10ms"
        );
        ensure!(
            (1..=100_000).contains(&self.connect_concurrency),
            "--connect-concurrency must be 1..=100000"
        );
        ensure!(!sub_urls.is_empty() || subscribers == 0, "no URL for subscribers");
        ensure!(!pub_urls.is_empty() || publishers == 0, "no URL for publishers");
        let name = format!("{topic_prefix}{}", topics - 1);
        if let Err(e) = herald_protocol::validate_topic(&name, Default::default()) {
            bail!("--topic-prefix {topic_prefix:?} makes invalid topic names ({e})");
        }
        if matches!(s, Fanout | ManyTopics | CrossNode) {
            ensure!(publishers > 0, "{s:?} needs at least one publisher");
            ensure!(
                subscribe_via != SubscribeVia::None,
                "--subscribe-via none is for idle and churn: these subscribers would receive nothing"
            );
        }
        let recovery = match self.drop_every {
            None => None,
            Some(every) => {
                ensure!(
                    matches!(s, Fanout | ManyTopics | CrossNode),
                    "--drop-every is for the pub/sub scenarios (fanout, many-topics, cross-node)"
                );
                ensure!(
                    subscribe_via == SubscribeVia::Op,
                    "--drop-every resubscribes with `since`: it needs --subscribe-via op"
                );
                ensure!(every >= Duration::from_millis(10), "--drop-every is at least 10ms");
                ensure!(
                    (0.0..=0.9).contains(&self.drop_jitter),
                    "--drop-jitter must be within 0..=0.9"
                );
                ensure!(self.away <= Duration::from_secs(600), "--away is at most 10m");
                Some(RecoveryPlan {
                    drop_every: every,
                    jitter: self.drop_jitter,
                    away: self.away,
                })
            }
        };
        let jwt = crate::jwt::JwtPlan::from_flags(
            self.jwt_secret,
            self.jwt_key,
            self.jwt_alg,
            self.jwt_sub_prefix,
            self.jwt_claims,
            self.jwt_via,
        )?;
        if self.publish_via == PublishVia::Http && publishers > 0 {
            ensure!(!self.admin.is_empty(), "--publish-via http needs --admin URL(s)");
        }
        Ok(Config {
            scenario: s,
            pub_urls,
            sub_urls,
            admin: self.admin,
            server_pids: self.server_pids,
            subscribers,
            publishers,
            topics,
            distribution,
            topics_per_subscriber: self.topics_per_subscriber,
            subscribe_via,
            rate: self.rate.unwrap_or(rate),
            window: (self.window > 0).then_some(self.window),
            payload_size: self.payload_size,
            publish_via: self.publish_via,
            api_key: self.api_key,
            ramp_up: self.ramp_up,
            settle: self.settle,
            duration: self.duration,
            drain: self.drain,
            messages: self.messages.unwrap_or(u64::MAX),
            connect_concurrency: self.connect_concurrency,
            connect_timeout: self.connect_timeout,
            topic_prefix,
            seed: self.seed.unwrap_or_else(rand::random),
            json: self.json,
            quiet: self.quiet,
            check: self.check,
            i_own_the_target: self.i_own_the_target,
            jwt,
            recovery,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Config> {
        Config::from_args(std::iter::once("herald-loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn scenarios_have_defaults_that_flags_override() {
        let c = cfg(&[]).unwrap();
        assert_eq!(
            (c.scenario, c.subscribers, c.publishers, c.topics),
            (Scenario::Fanout, 1000, 1, 1)
        );
        assert_eq!(c.rate, Rate::PerSec(1000.0));
        assert_eq!(c.window, Some(256));
        let c = cfg(&["many-topics", "-s", "7", "--window", "0"]).unwrap();
        assert_eq!((c.subscribers, c.publishers, c.topics), (7, 10, 500));
        assert_eq!((c.distribution, c.window), (Distribution::Uniform, None));
        let c = cfg(&["idle", "-p", "5"]).unwrap();
        assert_eq!((c.publishers, c.subscribe_via), (0, SubscribeVia::Query));
        assert!(c.topic_prefix.starts_with("lt."));
    }

    #[test]
    fn cross_node_splits_the_urls() {
        let c = cfg(&[
            "cross-node",
            "-u",
            "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws,ws://127.0.0.1:3/ws",
        ])
        .unwrap();
        assert_eq!(c.pub_urls, vec!["ws://127.0.0.1:1/ws"]);
        assert_eq!(c.sub_urls, vec!["ws://127.0.0.1:2/ws", "ws://127.0.0.1:3/ws"]);
        assert!(cfg(&["cross-node"]).is_err(), "one URL is not a cluster");
        let c = cfg(&["cross-node", "--pub-url", "ws://a:1/ws", "--sub-url", "ws://b:1/ws"]).unwrap();
        assert_eq!((c.pub_urls.len(), c.sub_urls.len()), (1, 1));
    }

    #[test]
    fn bounds_are_enforced() {
        let err = |args: &[&str]| cfg(args).unwrap_err().to_string();
        assert!(err(&["--payload-size", "10"]).contains("payload-size"));
        assert!(err(&["-d", "0s"]).contains("duration"));
        assert!(err(&["-s", "2000000"]).contains("connections"));
        assert!(err(&["-t", "2", "--topics-per-subscriber", "3"]).contains("topics-per-subscriber"));
        assert!(err(&["--topic-prefix", "bad prefix "]).contains("topic-prefix"));
        assert!(err(&["--publish-via", "http"]).contains("--admin"));
        assert!(err(&["--subscribe-via", "none"]).contains("none"));
        assert!(err(&["-p", "0"]).contains("publisher"));
        assert!(cfg(&["-d", "25h"]).is_err());
        assert!(err(&["churn", "--drop-every", "2s"]).contains("pub/sub"));
        assert!(err(&["--drop-every", "2s", "--subscribe-via", "query"]).contains("subscribe-via op"));
        assert!(err(&["--drop-every", "1ms"]).contains("10ms"));
        assert!(err(&["--drop-every", "2s", "--drop-jitter", "1"]).contains("jitter"));
    }

    #[test]
    fn recovery_mode_is_off_unless_asked() {
        assert_eq!(cfg(&[]).unwrap().recovery, None);
        let c = cfg(&["--drop-every", "2s", "--away", "50ms"]).unwrap();
        assert_eq!(
            c.recovery,
            Some(RecoveryPlan {
                drop_every: Duration::from_secs(2),
                jitter: 0.2,
                away: Duration::from_millis(50),
            })
        );
    }
}
