//! Topic history, the node's side: the `[[history]]` entries turned into the broker's
//! [`HistoryRules`] (patterns compiled once, first match wins), and the once-a-second task
//! that expires the memory relay's history and reports its size in the
//! `herald_history_*` gauges.

use std::sync::Arc;
use std::time::Duration;

use herald_auth::PatternSet;
use herald_broker::{BrokerMetrics, HistoryRules, MemoryStreams, StreamPolicy};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HistoryEntry};

/// The `[[history]]` entries in force: the configured ones, after a rule for the demo's
/// chat topic (200 messages, 1 h) when `[demo]` is enabled and no configured rule matches
/// it, so a chat page that reconnects catches up with `since`.
pub fn effective(config: &Config) -> Vec<HistoryEntry> {
    let mut entries = config.history.clone();
    let chat = &config.demo.chat_topic;
    let matched = entries
        .iter()
        .any(|e| PatternSet::compile(&[e.topics.as_str()], None).is_ok_and(|set| set.matches(chat)));
    if config.demo.enabled && !matched {
        entries.insert(
            0,
            HistoryEntry {
                topics: chat.clone(),
                size: 200,
                ttl_ms: 3_600_000,
                ..Default::default()
            },
        );
    }
    entries
}

/// How often the memory history is swept for expired messages.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The broker's rules for `entries` (validated by `Config::validate`; an entry whose
/// pattern does not compile matches nothing). Topics in `never` (the node's system topics,
/// which only the node publishes, live) keep no history whatever the patterns say.
pub fn rules(entries: &[HistoryEntry], never: &[String]) -> HistoryRules {
    let mut rules = HistoryRules::none();
    let never: Arc<[Box<str>]> = never.iter().map(|t| t.clone().into_boxed_str()).collect();
    for e in entries {
        let set = PatternSet::compile(&[e.topics.as_str()], None).unwrap_or_else(|_| PatternSet::empty());
        let never = never.clone();
        rules.push(
            Box::new(move |topic: &str| set.matches(topic) && !never.iter().any(|t| &**t == topic)),
            StreamPolicy {
                size: e.size,
                max_bytes: e.max_bytes,
                ttl: Duration::from_millis(e.ttl_ms),
                latest_on_subscribe: e.latest_on_subscribe,
            },
        );
    }
    rules
}

/// Sweeps `streams` every [`SWEEP_INTERVAL`] until `stop`, keeping the gauges current.
pub async fn run_sweeper(streams: Arc<MemoryStreams>, metrics: Arc<BrokerMetrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let totals = streams.sweep();
        metrics.history_streams.set(totals.streams);
        metrics.history_messages.set(totals.messages);
        metrics.history_bytes.set(totals.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_chat_topic_keeps_history_unless_a_rule_covers_it() {
        let mut c = Config::default();
        assert!(effective(&c).is_empty(), "demo off: nothing added");
        c.demo.enabled = true;
        let e = effective(&c);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].topics.as_str(), e[0].size, e[0].ttl_ms),
            ("demo.chat", 200, 3_600_000)
        );
        c.history.push(HistoryEntry {
            topics: "demo.>".into(),
            size: 7,
            ..Default::default()
        });
        let e = effective(&c);
        assert_eq!(e.len(), 1, "the configured rule wins");
        assert_eq!(rules(&e, &[]).policy("demo.chat").map(|p| p.size), Some(7));
    }

    #[test]
    fn first_matching_entry_wins() {
        let entries = vec![
            HistoryEntry {
                topics: "chat.vip.*".into(),
                size: 5,
                ..Default::default()
            },
            HistoryEntry {
                topics: "chat.>".into(),
                size: 50,
                latest_on_subscribe: true,
                ..Default::default()
            },
        ];
        let r = rules(&entries, &[]);
        assert_eq!(r.policy("chat.vip.a").map(|p| p.size), Some(5));
        assert_eq!(r.policy("chat.room.a").map(|p| p.size), Some(50));
        assert!(r.policy("chat.room.a").unwrap().latest_on_subscribe);
        assert!(r.policy("news").is_none());
        assert!(rules(&[], &[]).is_empty());
        // System topics keep no history, even under a catch-all rule.
        let all = [HistoryEntry {
            topics: ">".into(),
            ..Default::default()
        }];
        let r = rules(&all, &["herald.time".to_owned()]);
        assert!(r.policy("herald.time").is_none());
        assert!(r.policy("herald.timex").is_some());
    }
}
