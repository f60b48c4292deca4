//! The value types of the command line (scenario, distribution, subscribe and publish
//! modes, rates, durations) and their parsers. Pure: no I/O, no defaults (see `mod.rs`).

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

/// What a run does. See docs/loadtest.md for each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One topic, many subscribers: the node's fan-out.
    Fanout,
    /// Many subscribers spread over many topics.
    ManyTopics,
    /// Publishers on some nodes, subscribers on others: the relay between nodes.
    CrossNode,
    /// Connect, subscribe, disconnect, as fast as allowed: connects per second and failures.
    Churn,
    /// Hold connections open and idle: the node's memory per connection.
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DistKind {
    Hot,
    Uniform,
    Zipf,
}

/// How a subscriber subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubscribeVia {
    /// `{"op":"subscribe",...,"id":1}` and wait for the ack.
    Op,
    /// `/ws?topics=a,b` and wait for the welcome frame.
    Query,
    /// No subscription: one `{"op":"ping"}` answered by a pong (idle and churn only).
    None,
}

/// How publishers publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishVia {
    /// JSON protocol publish frames on `/ws`.
    Ws,
    /// `POST /api/publish` on the admin listener (`--admin`).
    Http,
}

/// A target rate: per second, or as fast as possible.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    PerSec(f64),
    Max,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PerSec(r) => write!(f, "{r}/s"),
            Self::Max => f.write_str("max"),
        }
    }
}

pub fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    let (num, mul) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1e3),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1e6),
        _ => (s, 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v > 0.0 && v * mul <= 1e8 => Ok(Rate::PerSec(v * mul)),
        _ => Err(format!(
            "{s:?}: expected `max` or a rate like 1000, 2.5k, 1M (at most 100M)"
        )),
    }
}

/// `500ms`, `10s`, `2m`, `1h`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let mul = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h)")),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v * mul <= 86_400.0 => Ok(Duration::from_secs_f64(v * mul)),
        _ => Err(format!("{s:?}: expected a duration like 500ms, 10s, 2m (at most 24h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("MAX"), Ok(Rate::Max));
        assert_eq!(parse_rate("1000"), Ok(Rate::PerSec(1000.0)));
        assert_eq!(parse_rate("2.5k"), Ok(Rate::PerSec(2500.0)));
        assert_eq!(parse_rate("1M"), Ok(Rate::PerSec(1e6)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1000M").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("25h").is_err());
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
