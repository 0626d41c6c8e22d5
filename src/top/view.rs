//! What `trove top` shows, computed from two scrapes of each node: one row per shard, rates
//! over the interval between the scrapes, p99 of each stage over that interval, and the
//! shards sorted so that the one in trouble comes first.
//!
//! Pure: no sockets, no terminal. Lives on the CLI's thread.

use std::cmp::Ordering;

use crate::metrics::scrape::{NodeScrape, ScrapedShard};

/// Seconds without a snapshot after which a shard is shown as stalled: it hands one over
/// every second when its executor runs.
pub const STALE_SNAPSHOT_S: f64 = 3.0;

/// Snapshots closer together than this are the same snapshot seen twice.
const MIN_INTERVAL_S: f64 = 0.1;

/// One shard's line.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardRow {
    /// The node's metrics address, as the user named it.
    pub node: String,
    pub shard: u16,
    pub events_per_s: f64,
    pub forwarded_per_s: f64,
    /// p99 upper bound of each stage over the interval, in seconds; `None` without samples.
    pub frame_dispatch_p99_s: Option<f64>,
    pub mesh_round_trip_p99_s: Option<f64>,
    /// Socket credit in use, 0 to 1.
    pub credit_use: f64,
    pub credit_waits_per_s: f64,
    pub busy_per_s: f64,
    pub connections_open: f64,
    /// The fullest open connection's use of its share of the socket budget, 0 to 1: 1 is a
    /// client whose replies are not being read (the shard reads it again once they are).
    pub fullest_connection_use: f64,
    /// Seconds since the shard's last snapshot reached its node's housekeeping thread.
    pub snapshot_age_s: f64,
    /// Share of the interval the shard's executor was busy, 0 to 1.
    pub utilisation: f64,
    /// Reactor stalls over the interval.
    pub stalls_per_s: f64,
}

impl ShardRow {
    pub fn stalled(&self) -> bool {
        self.snapshot_age_s >= STALE_SNAPSHOT_S
    }

    /// Trouble first: a stalled shard, then the fullest credit, then the most waits and Busy
    /// answers, then the slowest dispatch.
    fn trouble_order(&self, other: &ShardRow) -> Ordering {
        other
            .stalled()
            .cmp(&self.stalled())
            .then(other.credit_use.total_cmp(&self.credit_use))
            .then(
                (other.credit_waits_per_s + other.busy_per_s)
                    .total_cmp(&(self.credit_waits_per_s + self.busy_per_s)),
            )
            .then(
                other
                    .frame_dispatch_p99_s
                    .unwrap_or(0.0)
                    .total_cmp(&self.frame_dispatch_p99_s.unwrap_or(0.0)),
            )
            .then(self.node.cmp(&other.node))
            .then(self.shard.cmp(&other.shard))
    }
}

/// Two snapshots of one shard and the seconds between them.
struct Window<'a> {
    now: &'a ScrapedShard,
    before: &'a ScrapedShard,
    seconds: f64,
}

impl Window<'_> {
    fn rate(&self, name: &str) -> f64 {
        ((self.now.value(name) - self.before.value(name)) / self.seconds).max(0.0)
    }

    fn p99(&self, stage: &str) -> Option<f64> {
        let current = self.now.stages.get(stage)?;
        let window = match self.before.stages.get(stage) {
            Some(earlier) => current.since(earlier),
            None => current.clone(),
        };
        window.quantile_upper_bound_s(0.99)
    }
}

/// Time between the snapshots two scrapes `seconds` apart show for a shard: shards hand over
/// a snapshot about once a second, so two scrapes may show the same one (0 s apart).
fn snapshot_interval_s(now: &ScrapedShard, before: &ScrapedShard, seconds: f64) -> f64 {
    let age = |shard: &ScrapedShard| shard.value("metrics_snapshot_age_seconds");
    seconds + age(before) - age(now)
}

/// The rows of one node from its scrapes `seconds` apart. Rates are over the time between
/// the two snapshots each shard's scrapes show; a shard with no new snapshot in between (or
/// absent from the earlier scrape) shows no rate and no p99.
pub fn node_rows(node: &str, before: &NodeScrape, now: &NodeScrape, seconds: f64) -> Vec<ShardRow> {
    now.shards
        .iter()
        .map(|shard| {
            let window = before
                .shards
                .iter()
                .find(|b| b.shard == shard.shard)
                .map(|before| Window {
                    now: shard,
                    before,
                    seconds: snapshot_interval_s(shard, before, seconds),
                })
                .filter(|window| window.seconds >= MIN_INTERVAL_S);
            let rate = |name: &str| window.as_ref().map_or(0.0, |w| w.rate(name));
            let p99 = |stage: &str| window.as_ref().and_then(|w| w.p99(stage));
            ShardRow {
                node: node.to_owned(),
                shard: shard.shard,
                events_per_s: rate("events_applied_total"),
                forwarded_per_s: rate("events_forwarded_total"),
                frame_dispatch_p99_s: p99("frame_dispatch"),
                mesh_round_trip_p99_s: p99("mesh_round_trip"),
                credit_use: shard.value("credit_use_ratio"),
                credit_waits_per_s: rate("socket_credit_waits_total")
                    + rate("mesh_credit_waits_total"),
                busy_per_s: rate("busy_replies_total"),
                connections_open: shard.value("connections_open"),
                fullest_connection_use: shard.value("connection_credit_use_ratio_max"),
                snapshot_age_s: shard.value("metrics_snapshot_age_seconds"),
                utilisation: rate("executor_busy_seconds_total").min(1.0),
                stalls_per_s: rate("reactor_stalls_total"),
            }
        })
        .collect()
}

/// Sorts rows so that the shard in trouble is first.
pub fn sort_by_trouble(rows: &mut [ShardRow]) {
    rows.sort_by(|a, b| a.trouble_order(b));
}

/// A duration in seconds for a narrow column: `850us`, `12.5ms`, `1.2s`, `-` when absent.
pub fn short_duration(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.1}s"),
    }
}

/// A rate for a narrow column: `950`, `12.3k`, `4.56M`.
pub fn short_rate(per_s: f64) -> String {
    // An empty sum of f64 is -0.0, which would print as "-0".
    if per_s <= 0.0 {
        "0".into()
    } else if per_s >= 1e6 {
        format!("{:.2}M", per_s / 1e6)
    } else if per_s >= 1e4 {
        format!("{:.1}k", per_s / 1e3)
    } else {
        format!("{per_s:.0}")
    }
}

/// Credit use as a text bar of `width` cells and a percentage: `[#####     ]  50%`.
pub fn credit_bar(use_ratio: f64, width: usize) -> String {
    let ratio = use_ratio.clamp(0.0, 1.0);
    let filled = (ratio * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        " ".repeat(width - filled),
        ratio * 100.0
    )
}

/// Utilisation as a percentage for a narrow column: `37%`.
pub fn short_percent(ratio: f64) -> String {
    format!("{:.0}%", ratio.clamp(0.0, 1.0) * 100.0)
}

/// The plain-text table of `--once`.
pub fn plain_table(rows: &[ShardRow]) -> String {
    let mut text = format!(
        "{:<22} {:>5} {:>9} {:>8} {:>13} {:>9} {:<18} {:>8} {:>7} {:>5} {:>7} {:>6} {:>5} {:>8}\n",
        "NODE",
        "SHARD",
        "EVENTS/S",
        "FWD/S",
        "DISPATCH_P99",
        "MESH_P99",
        "CREDIT",
        "WAITS/S",
        "BUSY/S",
        "CONNS",
        "FULLEST",
        "STALL",
        "UTIL",
        "STALLS/S"
    );
    for row in rows {
        text.push_str(&format!(
            "{:<22} {:>5} {:>9} {:>8} {:>13} {:>9} {:<18} {:>8} {:>7} {:>5} {:>7} {:>6} {:>5} {:>8}\n",
            row.node,
            row.shard,
            short_rate(row.events_per_s),
            short_rate(row.forwarded_per_s),
            short_duration(row.frame_dispatch_p99_s),
            short_duration(row.mesh_round_trip_p99_s),
            credit_bar(row.credit_use, 10),
            short_rate(row.credit_waits_per_s),
            short_rate(row.busy_per_s),
            row.connections_open,
            short_percent(row.fullest_connection_use),
            if row.stalled() {
                format!("{:.0}s", row.snapshot_age_s)
            } else {
                "no".into()
            },
            short_percent(row.utilisation),
            short_rate(row.stalls_per_s),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::scrape::ScrapedHistogram;

    fn shard(shard: u16, applied: f64, credit_use: f64, age: f64) -> ScrapedShard {
        let mut scraped = ScrapedShard {
            node: "n".into(),
            shard,
            ..ScrapedShard::default()
        };
        scraped
            .values
            .insert("events_applied_total".into(), applied);
        scraped.values.insert("credit_use_ratio".into(), credit_use);
        scraped
            .values
            .insert("metrics_snapshot_age_seconds".into(), age);
        scraped
    }

    #[test]
    fn rates_are_the_difference_over_the_interval() {
        let before = NodeScrape {
            shards: vec![shard(0, 1_000.0, 0.0, 0.1)],
            ..NodeScrape::default()
        };
        let now = NodeScrape {
            shards: vec![shard(0, 3_000.0, 0.0, 0.1)],
            ..NodeScrape::default()
        };
        let mut now = now;
        now.shards[0]
            .values
            .insert("executor_busy_seconds_total".into(), 0.5);
        let rows = node_rows("n", &before, &now, 2.0);
        assert_eq!(rows[0].events_per_s, 1_000.0);
        assert_eq!(rows[0].utilisation, 0.25);
        assert!(plain_table(&rows).lines().nth(1).unwrap().contains(" 25% "));
    }

    #[test]
    fn p99_covers_only_the_interval() {
        let histogram = |counts: [f64; 3]| ScrapedHistogram {
            buckets: vec![
                (0.001, counts[0]),
                (0.01, counts[1]),
                (f64::INFINITY, counts[2]),
            ],
        };
        let mut before = shard(0, 0.0, 0.0, 0.0);
        before
            .stages
            .insert("frame_dispatch".into(), histogram([0.0, 1_000.0, 1_000.0]));
        let mut now = before.clone();
        now.stages.insert(
            "frame_dispatch".into(),
            histogram([1_000.0, 2_000.0, 2_000.0]),
        );
        let scrape = |shard: &ScrapedShard| NodeScrape {
            shards: vec![shard.clone()],
            ..NodeScrape::default()
        };
        // Since the earlier scrape, all 1000 new frames took under 1 ms.
        let rows = node_rows("n", &scrape(&before), &scrape(&now), 1.0);
        assert_eq!(rows[0].frame_dispatch_p99_s, Some(0.001));
    }

    #[test]
    fn the_same_snapshot_seen_twice_shows_no_rate() {
        // Scraped 0.5 s apart, but the second scrape shows a snapshot 0.5 s older: the same one.
        let before = NodeScrape {
            shards: vec![shard(0, 1_000.0, 0.0, 0.2)],
            ..NodeScrape::default()
        };
        let now = NodeScrape {
            shards: vec![shard(0, 1_000.0, 0.0, 0.7)],
            ..NodeScrape::default()
        };
        let rows = node_rows("n", &before, &now, 0.5);
        assert_eq!(rows[0].events_per_s, 0.0);
        assert_eq!(rows[0].frame_dispatch_p99_s, None);
        // A shard first seen now has no window either.
        let rows = node_rows("n", &NodeScrape::default(), &now, 1.0);
        assert_eq!(rows[0].events_per_s, 0.0);
    }

    #[test]
    fn the_shard_in_trouble_comes_first() {
        let now = NodeScrape {
            shards: vec![
                shard(0, 0.0, 0.10, 0.2),
                shard(1, 0.0, 0.99, 0.2),
                shard(2, 0.0, 0.00, 9.0),
            ],
            ..NodeScrape::default()
        };
        let mut rows = node_rows("n", &NodeScrape::default(), &now, 1.0);
        sort_by_trouble(&mut rows);
        let order: Vec<u16> = rows.iter().map(|row| row.shard).collect();
        assert_eq!(order, [2, 1, 0], "stalled, then fullest credit");
        let table = plain_table(&rows);
        assert!(table.lines().nth(1).unwrap().contains("9s"), "{table}");
        assert!(table.contains("[##########]  99%"), "{table}");
    }

    #[test]
    fn the_fullest_connection_shows_beside_the_connections() {
        let mut hogged = shard(0, 0.0, 0.01, 0.2);
        hogged
            .values
            .insert("connection_credit_use_ratio_max".into(), 1.0);
        hogged.values.insert("connections_open".into(), 3.0);
        let now = NodeScrape {
            shards: vec![hogged, shard(1, 0.0, 0.0, 0.2)],
            ..NodeScrape::default()
        };
        let rows = node_rows("n", &NodeScrape::default(), &now, 1.0);
        assert_eq!(rows[0].fullest_connection_use, 1.0);
        assert_eq!(rows[1].fullest_connection_use, 0.0, "absent: none");
        let table = plain_table(&rows);
        let column = |line: usize| -> Vec<String> {
            let words: Vec<&str> = table
                .lines()
                .nth(line)
                .unwrap()
                .split_whitespace()
                .collect();
            // From the end: STALLS/S, UTIL, STALL, FULLEST, CONNS.
            words[words.len() - 5..words.len() - 3]
                .iter()
                .map(|w| w.to_string())
                .collect()
        };
        assert_eq!(column(0), ["CONNS", "FULLEST"], "{table}");
        assert_eq!(column(1), ["3", "100%"], "{table}");
        assert_eq!(column(2), ["0", "0%"], "{table}");
    }

    #[test]
    fn short_forms_fit_their_columns() {
        assert_eq!(short_duration(Some(0.000_25)), "250us");
        assert_eq!(short_duration(Some(0.025)), "25.0ms");
        assert_eq!(short_duration(None), "-");
        assert_eq!(short_rate(12_345.0), "12.3k");
        assert_eq!(short_rate(2_500_000.0), "2.50M");
        assert_eq!(short_rate(Vec::<f64>::new().iter().sum()), "0");
        assert_eq!(credit_bar(0.5, 4), "[##  ]  50%");
    }
}
