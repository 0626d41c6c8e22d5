//! The Prometheus text format of a node's metrics, built with `prometheus-client`.
//!
//! Runs on the housekeeping thread, from the latest snapshot of each shard. Every family is
//! named `trove_*`; counters end in `_total`; stage latencies are classic histograms
//! (`_bucket`, `_sum`, `_count`, in seconds) derived from the shards' HdrHistograms, so any
//! Prometheus can aggregate them across shards and nodes with `histogram_quantile`.

use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::snapshot::{CreditGauge, ShardSnapshot, Stage};

/// Upper bounds of the classic latency buckets, in seconds: 10 µs to 10 s, then `+Inf`.
pub const LATENCY_BUCKET_BOUNDS_S: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a node is, for its info metrics. Built once when the node starts.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// The value of the `node` label: the node's data address.
    pub node: String,
    pub partitions: u32,
    pub shard_events_max: u32,
    pub shard_bytes_max: u32,
    pub connection_events_max: u32,
    pub fail_fast: bool,
    /// CPU of each shard, in shard order.
    pub shard_cpus: Vec<usize>,
}

/// A stage's latency as classic buckets: non-cumulative counts per bound, `+Inf` last.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassicHistogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum_s: f64,
    pub count: u64,
}

impl ClassicHistogram {
    /// Sorts every recorded value of `histogram` (nanoseconds) into the classic buckets. The
    /// sum is exact to the HdrHistogram's resolution (three significant digits).
    pub fn from_ns(histogram: &Histogram<u64>) -> ClassicHistogram {
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKET_BOUNDS_S
            .iter()
            .chain(&[f64::INFINITY])
            .map(|&bound| (bound, 0))
            .collect();
        let mut sum_ns = 0f64;
        for value in histogram.iter_recorded() {
            let count = value.count_at_value();
            let highest_s = histogram.highest_equivalent(value.value_iterated_to()) as f64 / 1e9;
            let index = buckets
                .iter()
                .position(|&(bound, _)| highest_s <= bound)
                .unwrap_or(buckets.len() - 1);
            buckets[index].1 += count;
            sum_ns += histogram.median_equivalent(value.value_iterated_to()) as f64 * count as f64;
        }
        ClassicHistogram {
            buckets,
            sum_s: sum_ns / 1e9,
            count: histogram.len(),
        }
    }
}

/// A shard as the exposition shows it: its snapshot's numbers, with histograms already
/// turned into classic buckets (so each scrape does not walk the HdrHistograms again).
#[derive(Clone, Debug)]
pub struct ShardSeries {
    pub shard: u16,
    pub cpu: usize,
    pub counters: crate::metrics::snapshot::ShardCounters,
    pub gauges: crate::metrics::snapshot::ShardGauges,
    pub stages: Vec<(Stage, ClassicHistogram)>,
    /// How long ago the housekeeping thread received this shard's snapshot.
    pub snapshot_age: Duration,
}

impl ShardSeries {
    pub fn from_snapshot(snapshot: &ShardSnapshot) -> ShardSeries {
        ShardSeries {
            shard: snapshot.shard,
            cpu: snapshot.cpu,
            counters: snapshot.counters,
            gauges: snapshot.gauges,
            stages: Stage::ALL
                .iter()
                .map(|&stage| (stage, ClassicHistogram::from_ns(snapshot.stages.get(stage))))
                .collect(),
            snapshot_age: Duration::ZERO,
        }
    }
}

/// The whole exposition of one node: encodes itself on each scrape.
#[derive(Clone, Debug)]
struct NodeCollector {
    info: NodeInfo,
    shards: Vec<ShardSeries>,
}

/// Renders the node's metrics in the Prometheus text format (version 0.0.4).
pub fn render(info: &NodeInfo, shards: &[ShardSeries]) -> String {
    let mut registry = Registry::with_prefix("trove");
    registry.register_collector(Box::new(NodeCollector {
        info: info.clone(),
        shards: shards.to_vec(),
    }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

type Labels = Vec<(&'static str, String)>;
/// A family read from each shard: name, help, and how to read it.
type ShardFamily<V> = (&'static str, &'static str, fn(&ShardSeries) -> V);
/// A dimension of a credit gauge: its name and how to read it.
type CreditDimension = (&'static str, fn(&CreditGauge) -> u64);

impl NodeCollector {
    fn shard_labels(&self, shard: &ShardSeries) -> Labels {
        vec![
            ("node", self.info.node.clone()),
            ("shard", shard.shard.to_string()),
        ]
    }

    /// One family with a value per shard.
    fn per_shard<V: Copy>(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        metric_type: MetricType,
        value: impl Fn(&ShardSeries) -> V,
        encode: impl Fn(&mut prometheus_client::encoding::MetricEncoder, V) -> std::fmt::Result,
    ) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
        for shard in &self.shards {
            let labels = self.shard_labels(shard);
            encode(&mut family.encode_family(&labels)?, value(shard))?;
        }
        Ok(())
    }

    fn counter(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&ShardSeries) -> u64,
    ) -> std::fmt::Result {
        self.per_shard(encoder, name, help, MetricType::Counter, value, |e, v| {
            e.encode_counter::<NoLabelSet, u64, u64>(&v, None)
        })
    }

    fn gauge(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&ShardSeries) -> f64,
    ) -> std::fmt::Result {
        self.per_shard(encoder, name, help, MetricType::Gauge, value, |e, v| {
            e.encode_gauge(&v)
        })
    }

    fn node_gauge(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: f64,
    ) -> std::fmt::Result {
        let labels: Labels = vec![("node", self.info.node.clone())];
        encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_family(&labels)?
            .encode_gauge(&value)
    }

    fn counters(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let families: [ShardFamily<u64>; 14] = [
            (
                "events_applied",
                "Events this shard applied as their partition's owner.",
                |s| s.counters.events_applied,
            ),
            (
                "events_applied_for_peers",
                "Events applied here that another shard received and forwarded.",
                |s| s.counters.events_applied_for_peers,
            ),
            (
                "events_forwarded",
                "Events this shard received and forwarded to their owner on another core.",
                |s| s.counters.events_forwarded,
            ),
            (
                "busy_replies",
                "Events answered Busy because credit ran out (fail-fast mode).",
                |s| s.counters.busy_replies,
            ),
            (
                "frames_received",
                "Frames read from client connections.",
                |s| s.counters.frames_received,
            ),
            (
                "frames_rejected",
                "Frames refused as malformed (the connection got an error frame).",
                |s| s.counters.frames_rejected,
            ),
            (
                "mesh_batches_sent",
                "Batches sent to other shards over the mesh.",
                |s| s.counters.mesh_batches_sent,
            ),
            (
                "mesh_batches_received",
                "Batches received from other shards over the mesh.",
                |s| s.counters.mesh_batches_received,
            ),
            (
                "connections_accepted",
                "Client connections accepted.",
                |s| s.counters.connections_accepted,
            ),
            (
                "connections_refused",
                "Client connections refused: the shard had as many as it may.",
                |s| s.counters.connections_refused,
            ),
            (
                "connections_force_closed",
                "Connections cut at shutdown because their replies could not be written in time.",
                |s| s.counters.connections_force_closed,
            ),
            (
                "socket_credit_waits",
                "Times a connection found no socket credit and waited (or answered Busy).",
                |s| s.counters.socket_credit_waits,
            ),
            (
                "mesh_credit_waits",
                "Times a forward found no mesh credit at its owner and waited.",
                |s| s.counters.mesh_credit_waits,
            ),
            (
                "metrics_snapshots_dropped",
                "Snapshots this shard dropped because the housekeeping thread was behind.",
                |s| s.counters.snapshots_dropped,
            ),
        ];
        for (name, help, value) in families {
            self.counter(encoder, name, help, value)?;
        }
        Ok(())
    }

    fn gauges(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        self.gauge(
            encoder,
            "connections_open",
            "Client connections open now.",
            |s| s.gauges.connections_open as f64,
        )?;
        let pools: [ShardFamily<CreditGauge>; 2] = [
            (
                "socket_credit",
                "the shard's budget for events read from its sockets",
                |s| s.gauges.socket_credit,
            ),
            (
                "mesh_credit",
                "this shard's shares of its peers' mesh budgets, summed",
                |s| s.gauges.mesh_credit,
            ),
        ];
        for (pool, what, gauge) in pools {
            let dimensions: [CreditDimension; 4] = [
                ("events_held", |g| g.events_held),
                ("events_capacity", |g| g.events_capacity),
                ("bytes_held", |g| g.bytes_held),
                ("bytes_capacity", |g| g.bytes_capacity),
            ];
            for (dimension, value) in dimensions {
                let name = format!("{pool}_{dimension}");
                let help = format!("Credit: {} of {what}.", dimension.replace('_', " "));
                self.gauge(encoder, &name, &help, |s| value(&gauge(s)) as f64)?;
            }
        }
        self.gauge(
            encoder,
            "credit_use_ratio",
            "The fuller of the socket budget's two dimensions, 0 to 1: 1 means the shard stopped reading.",
            |s| s.gauges.socket_credit.use_ratio(),
        )?;
        self.gauge(
            encoder,
            "metrics_snapshot_age_seconds",
            "Seconds since this shard's last snapshot reached the housekeeping thread; a shard that stops sending is stuck.",
            |s| s.snapshot_age.as_secs_f64(),
        )
    }

    fn histograms(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "stage_latency_seconds",
            "Latency of each stage of a shard's data path (frame_dispatch: arrival to dispatch of the frame's last event; mesh_round_trip: forward to reply back).",
            None,
            MetricType::Histogram,
        )?;
        for shard in &self.shards {
            for (stage, histogram) in &shard.stages {
                let mut labels = self.shard_labels(shard);
                labels.push(("stage", stage.label().to_owned()));
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        histogram.sum_s,
                        histogram.count,
                        &histogram.buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }

    fn info_metrics(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let build: Labels = vec![
            ("node", self.info.node.clone()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ];
        encoder
            .encode_descriptor(
                "build",
                "The trove build this node runs.",
                None,
                MetricType::Info,
            )?
            .encode_info(&build)?;
        let config = &self.info;
        self.node_gauge(
            encoder,
            "config_shards",
            "Shards of this node.",
            config.shard_cpus.len() as f64,
        )?;
        self.node_gauge(
            encoder,
            "config_partitions",
            "Partitions of the data, fixed for its life.",
            config.partitions as f64,
        )?;
        self.node_gauge(
            encoder,
            "config_shard_events_max",
            "Events a shard accepts before their replies are written.",
            config.shard_events_max as f64,
        )?;
        self.node_gauge(
            encoder,
            "config_shard_bytes_max",
            "Event bytes a shard accepts before their replies are written.",
            config.shard_bytes_max as f64,
        )?;
        self.node_gauge(
            encoder,
            "config_connection_events_max",
            "Events one connection may have in flight.",
            config.connection_events_max as f64,
        )?;
        self.node_gauge(
            encoder,
            "config_fail_fast",
            "1 when shards answer Busy instead of waiting for credit.",
            f64::from(u8::from(config.fail_fast)),
        )?;
        self.gauge(
            encoder,
            "shard_cpu",
            "The CPU each shard is pinned to.",
            |s| s.cpu as f64,
        )
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.info_metrics(&mut encoder)?;
        self.counters(&mut encoder)?;
        self.gauges(&mut encoder)?;
        self.histograms(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(values_ns: &[u64]) -> Histogram<u64> {
        let mut histogram = crate::metrics::snapshot::StageHistograms::default().frame_dispatch_ns;
        for &value in values_ns {
            histogram.record(value).unwrap();
        }
        histogram
    }

    #[test]
    fn classic_buckets_place_each_value_under_its_bound() {
        // 5 µs, 30 µs, 30 µs, 2 ms, 20 s.
        let classic = ClassicHistogram::from_ns(&histogram_of(&[
            5_000,
            30_000,
            30_000,
            2_000_000,
            20_000_000_000,
        ]));
        let count_at = |bound: f64| classic.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(count_at(0.000_01), 1);
        assert_eq!(count_at(0.000_05), 2);
        assert_eq!(count_at(0.002_5), 1);
        assert_eq!(count_at(f64::INFINITY), 1);
        assert_eq!(classic.count, 5);
        assert_eq!(classic.buckets.iter().map(|(_, n)| n).sum::<u64>(), 5);
        let expected_sum = (5_000 + 60_000 + 2_000_000 + 20_000_000_000u64) as f64 / 1e9;
        assert!(
            (classic.sum_s - expected_sum).abs() / expected_sum < 0.001,
            "{}",
            classic.sum_s
        );
    }

    #[test]
    fn the_exposition_names_every_family_with_its_labels() {
        let mut snapshot = ShardSnapshot {
            shard: 1,
            cpu: 3,
            ..ShardSnapshot::default()
        };
        snapshot.counters.events_applied = 42;
        snapshot.stages.frame_dispatch_ns = histogram_of(&[1_000]);
        let info = NodeInfo {
            node: "127.0.0.1:7700".into(),
            shard_cpus: vec![2, 3],
            ..NodeInfo::default()
        };
        let text = render(&info, &[ShardSeries::from_snapshot(&snapshot)]);
        for line in [
            "# TYPE trove_events_applied_total counter",
            "trove_events_applied_total{node=\"127.0.0.1:7700\",shard=\"1\"} 42",
            "# TYPE trove_stage_latency_seconds histogram",
            "trove_stage_latency_seconds_count{node=\"127.0.0.1:7700\",shard=\"1\",stage=\"frame_dispatch\"} 1",
            "trove_stage_latency_seconds_bucket{node=\"127.0.0.1:7700\",shard=\"1\",stage=\"frame_dispatch\",le=\"1e-05\"} 1",
            "trove_config_shards{node=\"127.0.0.1:7700\"} 2.0",
            "trove_shard_cpu{node=\"127.0.0.1:7700\",shard=\"1\"} 3.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        assert!(
            text.contains("trove_build_info{node=\"127.0.0.1:7700\",version=\""),
            "{text}"
        );
    }
}
