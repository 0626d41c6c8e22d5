//! Reading a node's `/metrics` back: a blocking HTTP GET with deadlines, and the text parsed
//! with a real Prometheus text-format parser (`prometheus-parse`) into per-shard values.
//!
//! Used by tools on plain threads (`trove top`, `trove bench --target`), never by a shard.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use prometheus_parse::Value;

use crate::constants::{METRICS_RESPONSE_BYTES_MAX, METRICS_SCRAPE_MS_MAX};

/// Fetches `GET /metrics` from `addr` and returns the body. The whole exchange must finish
/// within `METRICS_SCRAPE_MS_MAX` and the answer stay under `METRICS_RESPONSE_BYTES_MAX`.
pub fn fetch(addr: SocketAddr) -> Result<String, String> {
    let wait = Duration::from_millis(METRICS_SCRAPE_MS_MAX);
    let deadline = Instant::now() + wait;
    let mut stream = TcpStream::connect_timeout(&addr, wait)
        .map_err(|error| format!("cannot connect to {addr} for /metrics: {error} (is the node running with --metrics-listen {addr}?)"))?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|error| format!("cannot send the request to {addr}: {error}"))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{addr} did not answer /metrics within {METRICS_SCRAPE_MS_MAX} ms"
            ));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|error| format!("{addr}: {error}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if answer.len() + n > METRICS_RESPONSE_BYTES_MAX => {
                return Err(format!(
                    "{addr} answered more than {METRICS_RESPONSE_BYTES_MAX} bytes; is it a trove node?"
                ));
            }
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(format!("reading /metrics from {addr}: {error}")),
        }
    }
    let text = String::from_utf8(answer)
        .map_err(|_| format!("{addr} answered bytes that are not text"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} did not answer HTTP"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(format!("{addr} answered `{status}` to GET /metrics"));
    }
    Ok(body.to_owned())
}

/// A stage histogram as scraped: cumulative bucket counts by upper bound, in seconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScrapedHistogram {
    pub buckets: Vec<(f64, f64)>,
}

impl ScrapedHistogram {
    /// The upper bound of the bucket holding the `quantile` (0..1), in seconds, as Prometheus's
    /// `histogram_quantile` would bound it; `None` when nothing was recorded.
    pub fn quantile_upper_bound_s(&self, quantile: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = quantile * total;
        let bound = self.buckets.iter().find(|(_, count)| *count >= rank)?.0;
        // Past the last finite bound: say the last finite bound (the value is above it).
        Some(if bound.is_finite() {
            bound
        } else {
            self.buckets
                .iter()
                .rev()
                .map(|(b, _)| *b)
                .find(|b| b.is_finite())
                .unwrap_or(bound)
        })
    }

    /// This histogram minus an earlier one of the same series: what happened in between.
    pub fn since(&self, earlier: &ScrapedHistogram) -> ScrapedHistogram {
        let before = |bound: f64| {
            earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, count)| *count)
        };
        ScrapedHistogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(bound, count)| (bound, (count - before(bound)).max(0.0)))
                .collect(),
        }
    }
}

/// The key of a series in [`ScrapedShard::values`]: its name; `name:STAGE` for a stage's
/// series; `name{label=value,…}` (labels sorted) for the other labelled families, such as
/// `events_total{kind=join,outcome=accepted}`.
fn series_key(name: &str, labels: &prometheus_parse::Labels) -> String {
    let mut others: Vec<(&String, &String)> = labels
        .iter()
        .filter(|(label, _)| !matches!(label.as_str(), "node" | "shard" | "stage"))
        .collect();
    others.sort();
    match (labels.get("stage"), others.is_empty()) {
        (Some(stage), _) => format!("{name}:{stage}"),
        (None, true) => name.to_owned(),
        (None, false) => {
            let pairs: Vec<String> = others.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{name}{{{}}}", pairs.join(","))
        }
    }
}

/// One shard's series in a scrape, by metric name (without the `trove_` prefix).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScrapedShard {
    pub node: String,
    pub shard: u16,
    /// Counters (`events_applied_total`, …) and gauges (`connections_open`, …).
    pub values: BTreeMap<String, f64>,
    /// Stage latency histograms, by the `stage` label.
    pub stages: BTreeMap<String, ScrapedHistogram>,
    /// `partition_events_applied_total` by partition: events this shard applied to each
    /// partition it owns (kept apart from `values`: there may be thousands).
    pub partitions: BTreeMap<u32, f64>,
}

impl ScrapedShard {
    /// A counter or gauge, 0 when absent.
    pub fn value(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }

    /// A family summed over its labels (`events_total` over every kind and outcome).
    pub fn sum(&self, name: &str) -> f64 {
        self.values
            .iter()
            .filter(|(key, _)| {
                key.strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

/// A node's scrape, by shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeScrape {
    pub shards: Vec<ScrapedShard>,
    /// Series without a `shard` label (`config_shards`, `build_info`, …), by name.
    pub node_values: BTreeMap<String, f64>,
    /// Whether the node serves the per-partition family ([`PARTITION_APPLIED_FAMILY`]), even
    /// with no series in it: a node built before it existed does not.
    pub counts_partitions: bool,
}

/// The family of events applied per partition, without the `trove_` prefix and `_total`.
pub const PARTITION_APPLIED_FAMILY: &str = "partition_events_applied";

impl NodeScrape {
    /// Parses the Prometheus text format of a trove node.
    pub fn parse(text: &str) -> Result<NodeScrape, String> {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines)
            .map_err(|error| format!("not Prometheus text: {error}"))?;
        let mut shards: BTreeMap<(String, u16), ScrapedShard> = BTreeMap::new();
        let mut node_values = BTreeMap::new();
        for sample in scrape.samples {
            let Some(name) = sample.metric.strip_prefix("trove_") else {
                continue;
            };
            let node = sample.labels.get("node").unwrap_or_default().to_owned();
            let Some(shard) = sample
                .labels
                .get("shard")
                .and_then(|s| s.parse::<u16>().ok())
            else {
                if let Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) = sample.value {
                    node_values.insert(name.to_owned(), v);
                }
                continue;
            };
            let entry = shards
                .entry((node.clone(), shard))
                .or_insert_with(|| ScrapedShard {
                    node,
                    shard,
                    ..ScrapedShard::default()
                });
            if name.strip_suffix("_total") == Some(PARTITION_APPLIED_FAMILY) {
                let partition = sample.labels.get("partition").and_then(|p| p.parse().ok());
                if let (Some(partition), Value::Counter(v)) = (partition, &sample.value) {
                    entry.partitions.insert(partition, *v);
                }
                continue;
            }
            match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                    entry.values.insert(series_key(name, &sample.labels), v);
                }
                Value::Histogram(counts) => {
                    let stage = sample.labels.get("stage").unwrap_or(name).to_owned();
                    let mut buckets: Vec<(f64, f64)> =
                        counts.iter().map(|c| (c.less_than, c.count)).collect();
                    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    entry.stages.insert(stage, ScrapedHistogram { buckets });
                }
                Value::Summary(_) => {}
            }
        }
        let family = format!("trove_{PARTITION_APPLIED_FAMILY}");
        let counts_partitions = scrape
            .docs
            .keys()
            .any(|name| name.strip_suffix("_total").unwrap_or(name) == family);
        Ok(NodeScrape {
            shards: shards.into_values().collect(),
            node_values,
            counts_partitions,
        })
    }

    /// A counter or gauge summed over every shard.
    pub fn total(&self, name: &str) -> f64 {
        self.shards.iter().map(|shard| shard.value(name)).sum()
    }
}

/// A bucket bound for a report: `≤250 µs`, `≤2.5 ms`, `none` without samples.
fn bound_text(seconds: Option<f64>) -> String {
    match seconds {
        None => "none".into(),
        Some(s) if s < 1e-3 => format!("≤{:.0} µs", s * 1e6),
        Some(s) => format!("≤{} ms", s * 1e3),
    }
}

/// What each shard of a node did between two scrapes, one paragraph per shard: for
/// `trove bench --target`, the node's own account of a run.
pub fn describe_difference(before: &NodeScrape, after: &NodeScrape) -> String {
    let mut text = String::new();
    for shard in &after.shards {
        let earlier = before
            .shards
            .iter()
            .find(|b| b.node == shard.node && b.shard == shard.shard);
        let delta = |name: &str| {
            (shard.value(name) - earlier.map_or(0.0, |b| b.value(name))).max(0.0) as u64
        };
        text.push_str(&format!(
            "shard {}: {} events applied ({} for other shards), {} forwarded, {} frames ({} rejected), {} credit waits, {} Busy\n",
            shard.shard,
            delta("events_applied_total"),
            delta("events_applied_for_peers_total"),
            delta("events_forwarded_total"),
            delta("frames_received_total"),
            delta("frames_rejected_total"),
            delta("socket_credit_waits_total") + delta("mesh_credit_waits_total"),
            delta("busy_replies_total"),
        ));
        let stage = |name: &str| {
            let now = shard.stages.get(name).cloned().unwrap_or_default();
            let window = match earlier.and_then(|b| b.stages.get(name)) {
                Some(earlier) => now.since(earlier),
                None => now,
            };
            format!(
                "p50 {} / p99 {}",
                bound_text(window.quantile_upper_bound_s(0.5)),
                bound_text(window.quantile_upper_bound_s(0.99))
            )
        };
        text.push_str(&format!(
            "  frame dispatch {}; mesh round trip {}\n",
            stage("frame_dispatch"),
            stage("mesh_round_trip")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition::{NodeInfo, ShardSeries, render};
    use crate::metrics::snapshot::tests::histogram_of;
    use crate::metrics::snapshot::{
        ClassicHistogram, PartitionApplied, ShardReport, ShardSnapshot, Stage,
    };

    #[test]
    fn partition_counts_parse_apart_and_a_node_without_them_is_told_apart() {
        let snapshot = ShardSnapshot {
            shard: 1,
            ..ShardSnapshot::default()
        };
        let applied = |partition, events| PartitionApplied { partition, events };
        let report = ShardReport {
            snapshot,
            partitions: vec![applied(3, 7), applied(17, 0)],
        };
        let info = NodeInfo {
            node: "n1".into(),
            shard_cpus: vec![0, 1],
            ..NodeInfo::default()
        };
        let text = render(&info, &[ShardSeries::from_report(report)], None);
        let scrape = NodeScrape::parse(&text).unwrap();
        assert!(scrape.counts_partitions);
        assert_eq!(
            scrape.shards[0].partitions,
            BTreeMap::from([(3, 7.0), (17, 0.0)])
        );
        assert!(
            !scrape.shards[0]
                .values
                .keys()
                .any(|key| key.starts_with(PARTITION_APPLIED_FAMILY)),
            "{:?}",
            scrape.shards[0].values
        );
        // A shard that owns nothing: the family is served all the same, with no series.
        let owns_nothing = render(&info, &[ShardSeries::from_snapshot(&snapshot)], None);
        let scrape = NodeScrape::parse(&owns_nothing).unwrap();
        assert!(scrape.counts_partitions);
        assert!(scrape.shards[0].partitions.is_empty());
        // A node built before the family: nothing of it in the text.
        let older: String = text
            .lines()
            .filter(|line| !line.contains(PARTITION_APPLIED_FAMILY))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(!NodeScrape::parse(&older).unwrap().counts_partitions);
    }

    #[test]
    fn a_rendered_exposition_parses_back_to_the_same_numbers() {
        let snapshots: Vec<ShardSnapshot> = (0..2u16)
            .map(|shard| {
                let mut snapshot = ShardSnapshot {
                    shard,
                    ..ShardSnapshot::default()
                };
                snapshot.counters.events_applied = 100 + u64::from(shard);
                snapshot.gauges.connections_open = 3;
                let mut values = vec![20_000; 99];
                values.push(3_000_000);
                snapshot.stages[Stage::FrameDispatch as usize] =
                    ClassicHistogram::from_ns(&histogram_of(&values));
                snapshot
            })
            .collect();
        let info = NodeInfo {
            node: "n1".into(),
            shard_cpus: vec![0, 1],
            ..NodeInfo::default()
        };
        let series: Vec<ShardSeries> = snapshots.iter().map(ShardSeries::from_snapshot).collect();
        let scrape = NodeScrape::parse(&render(&info, &series, None)).unwrap();
        assert_eq!(scrape.shards.len(), 2);
        assert_eq!(scrape.total("events_applied_total"), 201.0);
        let join_busy = scrape.shards[0].value("events_total{kind=join,outcome=busy}");
        assert_eq!(join_busy, 0.0);
        assert!(
            scrape.shards[0]
                .values
                .contains_key("events_total{kind=join,outcome=busy}")
        );
        assert_eq!(scrape.shards[0].sum("events_total"), 0.0);
        assert_eq!(scrape.shards[0].sum("events_applied_total"), 100.0);
        assert_eq!(scrape.shards[1].value("connections_open"), 3.0);
        assert_eq!(scrape.node_values.get("config_shards"), Some(&2.0));
        let dispatch = &scrape.shards[0].stages["frame_dispatch"];
        assert_eq!(dispatch.quantile_upper_bound_s(0.5), Some(0.000_025));
        assert_eq!(dispatch.quantile_upper_bound_s(1.0), Some(0.005));
        assert_eq!(
            scrape.shards[0].value("stage_latency_seconds_count:frame_dispatch"),
            100.0
        );
        let report = describe_difference(&NodeScrape::default(), &scrape);
        assert!(
            report.starts_with("shard 0: 100 events applied (0 for other shards)"),
            "{report}"
        );
        assert!(
            report.contains("frame dispatch p50 ≤25 µs / p99 ≤25 µs"),
            "{report}"
        );
        assert_eq!(
            describe_difference(&scrape, &scrape)
                .matches(" 0 events applied")
                .count(),
            2
        );
        let none = dispatch.since(dispatch);
        assert_eq!(none.quantile_upper_bound_s(0.99), None);
    }
}
