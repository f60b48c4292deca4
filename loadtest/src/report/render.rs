//! The human summary of a [`Report`]: one labelled line per topic (connections, messages,
//! latency, generator, each node), numbers with thousands separators and times in the
//! unit that reads best. Everything shown is also in the JSON.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::Report;
use crate::cli::Rate;
use crate::stats::Percentiles;

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A µs figure in µs, ms or s.
pub fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn rate(r: f64) -> String {
    thousands(r.round() as u64)
}

fn percentiles(p: &Percentiles, full: bool) -> String {
    let f = |v: u64| micros(v as f64);
    if full {
        format!(
            "p50 {} · p90 {} · p99 {} · p99.9 {} · max {}",
            f(p.p50),
            f(p.p90),
            f(p.p99),
            f(p.p999),
            f(p.max)
        )
    } else {
        format!("p50 {} · p99 {} · max {}", f(p.p50), f(p.p99), f(p.max))
    }
}

fn reasons(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {}", thousands(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural(n: usize, word: &str) -> String {
    format!("{} {word}{}", thousands(n as u64), if n == 1 { "" } else { "s" })
}

/// The recovery section (`--drop-every`).
fn recovery(o: &mut String, rc: &crate::report::Recovery) {
    let line = |o: &mut String, label: &str, text: String| {
        let _ = writeln!(o, " {label:<12} {text}");
    };
    let mut t = format!(
        "drops {} (every {} ±{:.0}%, away {}) · reconnects {}",
        thousands(rc.drops),
        micros(rc.drop_every_s * 1e6),
        rc.jitter * 100.0,
        micros(rc.away_s * 1e6),
        thousands(rc.reconnects)
    );
    if let Some(p) = &rc.reconnect_us {
        let _ = write!(t, " · reconnect {}", percentiles(p, false));
    }
    line(o, "recovery", t);
    if !rc.reconnect_failures.is_empty() {
        line(o, "  failed", reasons(&rc.reconnect_failures));
    }
    line(
        o,
        "",
        format!(
            "offsets owed {} · received {} ({:.3}%) · missing {} (tail {}) · duplicates {} · out of order {}",
            thousands(rc.owed),
            thousands(rc.received),
            rc.completeness * 100.0,
            thousands(rc.missing),
            thousands(rc.behind_head),
            thousands(rc.duplicates),
            thousands(rc.out_of_order)
        ),
    );
    line(
        o,
        "",
        format!(
            "{}/{} subscriptions complete · recovered:false {} · recovery_overflow {} · epoch changes {} · no history {}",
            thousands(rc.complete_pairs),
            thousands(rc.pairs),
            thousands(rc.not_recovered),
            thousands(rc.overflows),
            thousands(rc.epoch_changes),
            thousands(rc.no_history)
        ),
    );
    if let Some(e) = &rc.head_probe_error {
        line(o, "", format!("final heads unknown ({e}): a lost tail would go unseen"));
    }
    let replay = match &rc.replay_us {
        Some(p) => format!(
            "{} ({} samples, {} unmeasured; reconnect start → first message published after it)",
            percentiles(p, false),
            thousands(p.samples),
            thousands(rc.replay_unmeasured)
        ),
        None => format!("no samples ({} unmeasured)", thousands(rc.replay_unmeasured)),
    };
    line(o, "replay", replay);
}

/// The whole summary.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let p = &r.plan;
    let scenario = serde_json::to_value(r.scenario).ok();
    let name = scenario.as_ref().and_then(|v| v.as_str()).unwrap_or("run");
    let _ = write!(o, "herald-loadtest {name}: ");
    match r.scenario {
        crate::cli::Scenario::Idle => {
            let _ = writeln!(o, "{} held {:.1} s", plural(p.subscribers, "connection"), p.duration_s);
        }
        crate::cli::Scenario::Churn => {
            let rate = match p.rate {
                Rate::Max => "as fast as possible".to_owned(),
                Rate::PerSec(x) => format!("{}/s", rate(x)),
            };
            let _ = writeln!(o, "{}, {rate}, {:.1} s", plural(p.subscribers, "worker"), p.duration_s);
        }
        _ => {
            let dist = if p.topics > 1 {
                format!(" ({})", p.distribution)
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "{} → {}, {}{dist}, {} B payloads, rate {}, {:.1} s",
                plural(p.publishers, "publisher"),
                plural(p.subscribers, "subscriber"),
                plural(p.topics as usize, "topic"),
                p.payload_size,
                p.rate,
                p.duration_s
            );
        }
    }
    if p.publishers > 0 {
        let _ = writeln!(o, "  publishers  → {}", p.pub_urls.join(", "));
    }
    let _ = writeln!(o, "  subscribers → {}", p.sub_urls.join(", "));
    let line = |o: &mut String, label: &str, text: String| {
        let _ = writeln!(o, " {label:<12} {text}");
    };
    let ph = &r.phases;
    line(
        &mut o,
        "phases",
        format!(
            "connect {:.2} s · measured {:.2} s · drain {:.2} s · total {:.2} s",
            ph.connect_s, ph.measured_s, ph.drain_s, ph.total_s
        ),
    );
    let c = &r.connections;
    let mut conn = format!("{}/{} established", thousands(c.established), thousands(c.attempted));
    if let Some(s) = &c.setup_us {
        let _ = write!(conn, " · setup {}", percentiles(s, false));
    }
    line(&mut o, "connections", conn);
    if !c.failed.is_empty() {
        line(&mut o, "  failed", reasons(&c.failed));
    }
    if !c.ended_early.is_empty() {
        line(&mut o, "  ended early", reasons(&c.ended_early));
    }
    if let Some(m) = &r.messages {
        let mut pubs = format!(
            "{} ({}/s) · errors {}",
            thousands(m.published),
            rate(m.published_per_s),
            thousands(m.publish_errors)
        );
        if let Some(e) = &m.first_publish_error {
            let _ = write!(pubs, " (first: {})", e.chars().take(160).collect::<String>());
        }
        line(&mut o, "published", pubs);
        line(
            &mut o,
            "deliveries",
            format!(
                "expected {} · received {} ({}/s)",
                thousands(m.expected),
                thousands(m.received),
                rate(m.delivered_per_s)
            ),
        );
        line(
            &mut o,
            "",
            format!(
                "lost {} · duplicates {} · out of order {} · foreign {} · error frames {}",
                thousands(m.lost),
                thousands(m.duplicates),
                thousands(m.out_of_order),
                thousands(m.foreign),
                thousands(m.subscriber_errors)
            ),
        );
    }
    if let Some(l) = &r.latency_us {
        let from = match p.rate {
            Rate::Max => "from actual send",
            Rate::PerSec(_) => "from scheduled send",
        };
        line(&mut o, "latency", format!("{} ({from})", percentiles(l, true)));
    }
    if let Some(l) = &r.send_lag_us {
        line(&mut o, "send lag", percentiles(l, false));
    }
    if let Some(rc) = &r.recovery {
        recovery(&mut o, rc);
    }
    if let Some(ch) = &r.churn {
        let mut t = format!(
            "{} cycles ({}/s) · failures {}",
            thousands(ch.cycles),
            rate(ch.cycles_per_s),
            reasons(&ch.failures)
        );
        if let Some(cu) = &ch.connect_us {
            let _ = write!(t, " · connect+subscribe {}", percentiles(cu, false));
        }
        line(&mut o, "churn", t);
    }
    if let Some(i) = &r.idle {
        let per = |x: Option<f64>| x.map_or("n/a (no --admin)".to_owned(), |b| format!("{:.2} KiB", b / 1024.0));
        line(
            &mut o,
            "idle",
            format!(
                "{} held {:.1} s · node memory per connection {} · generator {}",
                thousands(i.connections),
                i.hold_s,
                per(i.server_bytes_per_connection),
                i.generator_bytes_per_connection
                    .map_or("n/a".to_owned(), |b| format!("{:.2} KiB", b / 1024.0))
            ),
        );
    }
    let g = &r.generator;
    let mut gen = format!(
        "cpu {:.2} s ({:.0}% kernel) = {:.0}% of {} · max RSS {}",
        g.cpu_s,
        if g.cpu_s > 0.0 {
            g.cpu_system_s / g.cpu_s * 100.0
        } else {
            0.0
        },
        g.cpu_utilisation * 100.0,
        plural(g.cores, "core"),
        mib(g.max_rss_bytes)
    );
    if let Some(us) = g.cpu_us_per_delivery {
        let _ = write!(gen, " · {us:.3} µs/delivery");
    }
    if g.waited_for_cpu_s > 0.0 {
        let _ = write!(gen, " · waited {:.2} s for a CPU", g.waited_for_cpu_s);
    }
    if g.saturated {
        gen.push_str(" · SATURATED: figures may measure the generator, not the node");
    }
    line(&mut o, "generator", gen);
    for s in &r.servers {
        line(&mut o, "node", s.admin.clone());
        if let Some(e) = &s.error {
            line(&mut o, "", format!("no server view: {e}"));
            continue;
        }
        let per = s
            .cpu_us_per_delivery
            .map(|u| format!(" ({u:.3} µs/delivery)"))
            .unwrap_or_default();
        line(
            &mut o,
            "",
            format!(
                "delivered {} · dropped {} · cpu {:.2} s{per}",
                thousands(s.delivered),
                reasons(&s.dropped),
                s.cpu_seconds
            ),
        );
        line(
            &mut o,
            "",
            format!(
                "RSS {} → {} · connections {} → {} · closed {}",
                mib(s.rss_before_bytes),
                mib(s.rss_after_bytes),
                thousands(s.connections_before),
                thousands(s.connections_after),
                reasons(&s.closed)
            ),
        );
    }
    for p in &r.processes {
        line(&mut o, "process", format!("pid {}", p.pid));
        if let Some(e) = &p.error {
            line(&mut o, "", e.clone());
            continue;
        }
        let per = p
            .cpu_us_per_delivery
            .map(|u| format!(" ({u:.3} µs/delivery)"))
            .unwrap_or_default();
        line(
            &mut o,
            "",
            format!(
                "cpu {:.2} s = {:.0}% of a core{per} · waited {:.2} s for a CPU · RSS {} → {}",
                p.cpu_s,
                p.cpu_utilisation * 100.0,
                p.waited_for_cpu_s,
                mib(p.rss_before_bytes),
                mib(p.rss_after_bytes)
            ),
        );
    }
    for w in &r.warnings {
        line(&mut o, "warning", w.clone());
    }
    line(
        &mut o,
        "result",
        if r.passed() {
            "OK".into()
        } else {
            "PROBLEMS (see above)".into()
        },
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(micros(812.0), "812 µs");
        assert_eq!(micros(1234.0), "1.23 ms");
        assert_eq!(micros(2_500_000.0), "2.50 s");
    }
}
