//! The Prometheus text format of a node's metrics, built with `prometheus-client`.
//!
//! Runs on the housekeeping thread, from the latest snapshot of each shard (and, in a
//! cluster, what the control thread last published). Every family is named `trove_*`;
//! counters end in `_total`; stage latencies are classic histograms (`_bucket`, `_sum`,
//! `_count`, in seconds) sorted from the shards' HdrHistograms on the shards, so any
//! Prometheus can aggregate them across shards and nodes with `histogram_quantile`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::core::shard::counters::{KindIndex, OutcomeIndex, REJECT_REASONS, reject_reason_label};
use crate::core::shard::{LinkTally, MoveTally};
pub use crate::metrics::snapshot::{ClassicHistogram, LATENCY_BUCKET_BOUNDS_S};
use crate::metrics::snapshot::{
    CreditGauge, EventTally, PartitionApplied, ShardReport, ShardSnapshot, Stage,
};

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

/// A node's standing in its cluster, as its control thread last published it: read on the
/// housekeeping thread at each rendering when the node runs with `--cluster`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClusterGauges {
    /// This node's id in the cluster.
    pub node_id: u32,
    /// Seconds until this node's lease runs out, as far as it knows (0: it holds none).
    pub lease_left_s: f64,
    /// The epoch of the placement this node last read (0: none yet).
    pub map_epoch: u64,
    /// Partitions the placement assigns to this node.
    pub partitions_owned: u64,
    /// Of those, partitions it may not serve yet: assigned to it before its current
    /// registration, waiting for the controller to confirm them (or its lease is not valid).
    pub partitions_moving: u64,
    /// Partitions of the whole cluster that nobody serves now.
    pub partitions_offline: u64,
    /// Whether this node is the cluster's controller.
    pub controller: bool,
    /// Whether the last request to etcd succeeded.
    pub etcd_reachable: bool,
}

/// A shard as the exposition shows it: its latest snapshot and partition counts, and how old
/// they are.
#[derive(Clone, Debug)]
pub struct ShardSeries {
    pub snapshot: ShardSnapshot,
    /// Events applied to each partition the shard owns (shared, not copied, by each rendering).
    pub partitions: Arc<[PartitionApplied]>,
    /// How long ago the housekeeping thread received this shard's snapshot.
    pub snapshot_age: Duration,
}

impl ShardSeries {
    /// A shard's series without partition counts.
    pub fn from_snapshot(snapshot: &ShardSnapshot) -> ShardSeries {
        ShardSeries {
            snapshot: *snapshot,
            partitions: Arc::from([]),
            snapshot_age: Duration::ZERO,
        }
    }

    pub fn from_report(report: ShardReport) -> ShardSeries {
        ShardSeries {
            snapshot: report.snapshot,
            partitions: Arc::from(report.partitions),
            snapshot_age: Duration::ZERO,
        }
    }
}

/// The whole exposition of one node: encodes itself on each scrape.
#[derive(Clone, Debug)]
struct NodeCollector {
    info: NodeInfo,
    shards: Vec<ShardSeries>,
    cluster: Option<ClusterGauges>,
}

/// Renders the node's metrics in the Prometheus text format (version 0.0.4).
pub fn render(info: &NodeInfo, shards: &[ShardSeries], cluster: Option<ClusterGauges>) -> String {
    let mut registry = Registry::with_prefix("trove");
    registry.register_collector(Box::new(NodeCollector {
        info: info.clone(),
        shards: shards.to_vec(),
        cluster,
    }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

type Labels = Vec<(&'static str, String)>;
/// A family read from each shard: name, help, and how to read it.
type ShardFamily<V> = (&'static str, &'static str, fn(&ShardSeries) -> V);
/// A label value of a family and how to read the series that carries it.
type LabelledValue = (&'static str, fn(&ShardSeries) -> u64);
/// A dimension of a credit gauge: its name and how to read it.
type CreditDimension = (&'static str, fn(&CreditGauge) -> u64);

impl NodeCollector {
    fn shard_labels(&self, shard: &ShardSeries) -> Labels {
        vec![
            ("node", self.info.node.clone()),
            ("shard", shard.snapshot.shard.to_string()),
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
        let families: [ShardFamily<u64>; 23] = [
            (
                "events_applied",
                "Events this shard applied as their partition's owner.",
                |s| s.snapshot.counters.events_applied,
            ),
            (
                "events_applied_for_peers",
                "Events applied here that another shard received and forwarded.",
                |s| s.snapshot.counters.events_applied_for_peers,
            ),
            (
                "events_forwarded",
                "Events this shard received and forwarded to their owner on another core.",
                |s| s.snapshot.counters.events_forwarded,
            ),
            (
                "busy_replies",
                "Events answered Busy because credit ran out (fail-fast mode).",
                |s| s.snapshot.counters.busy_replies,
            ),
            (
                "frames_received",
                "Frames read from client connections.",
                |s| s.snapshot.counters.frames_received,
            ),
            (
                "frames_rejected",
                "Frames refused as malformed (the connection got an error frame).",
                |s| s.snapshot.counters.frames_rejected,
            ),
            (
                "bytes_received",
                "Bytes of the frames read from client connections, headers included.",
                |s| s.snapshot.counters.bytes_received,
            ),
            (
                "frames_sent",
                "Frames queued for clients: replies, partition maps and the error frame that ends a connection.",
                |s| s.snapshot.counters.frames_sent,
            ),
            ("bytes_sent", "Bytes written to client connections.", |s| {
                s.snapshot.counters.bytes_sent
            }),
            (
                "reactor_stalls",
                "Polls of the shard's tasks that ran longer than the stall threshold without yielding.",
                |s| s.snapshot.counters.stalls,
            ),
            (
                "mesh_batches_sent",
                "Batches sent to other shards over the mesh.",
                |s| s.snapshot.counters.mesh_batches_sent,
            ),
            (
                "mesh_batches_received",
                "Batches received from other shards over the mesh.",
                |s| s.snapshot.counters.mesh_batches_received,
            ),
            (
                "connections_accepted",
                "Client connections accepted.",
                |s| s.snapshot.counters.connections_accepted,
            ),
            (
                "connections_refused",
                "Client connections refused: the shard had as many as it may.",
                |s| s.snapshot.counters.connections_refused,
            ),
            (
                "connections_force_closed",
                "Connections cut at shutdown because their replies could not be written in time.",
                |s| s.snapshot.counters.connections_force_closed,
            ),
            (
                "socket_credit_waits",
                "Times a connection found no socket credit and waited (or answered Busy).",
                |s| s.snapshot.counters.socket_credit_waits,
            ),
            (
                "mesh_credit_waits",
                "Times a forward found no mesh credit at its owner and waited.",
                |s| s.snapshot.counters.mesh_credit_waits,
            ),
            (
                "metrics_snapshots_dropped",
                "Snapshots this shard dropped because the housekeeping thread was behind.",
                |s| s.snapshot.counters.snapshots_dropped,
            ),
            (
                "log_syncs",
                "Syncs (fdatasync rounds) of the shard's write-ahead log; log_records over log_syncs is the group-commit batch.",
                |s| s.snapshot.counters.log_syncs,
            ),
            (
                "log_records",
                "Records (events) the shard's log syncs made durable.",
                |s| s.snapshot.counters.log_records,
            ),
            (
                "log_replies_unknown",
                "Replies of events applied here answered OutcomeUnknown because their log record could not be made durable (the disk failed for too long, or a stop gave up on the log); the events stay counted under their applied outcome in trove_events_total.",
                |s| s.snapshot.counters.log_replies_unknown,
            ),
            (
                "link_credit_waits",
                "Times a forward to another node found no link credit at its owner and waited.",
                |s| s.snapshot.counters.link_credit_waits,
            ),
            (
                "log_bytes",
                "Bytes written to the shard's log segments, in whole blocks (a partial block is written again by the next write).",
                |s| s.snapshot.counters.log_bytes,
            ),
        ];
        for (name, help, value) in families {
            self.counter(encoder, name, help, value)?;
        }
        self.connections_closed(encoder)?;
        self.executor(encoder)?;
        self.links(encoder)?;
        self.moves(encoder)?;
        self.partitions(encoder)?;
        self.events(encoder)
    }

    /// Events applied to each partition, one series per partition a shard owns: the load of
    /// each partition, for `trove cluster rebalance --by load`. A series lives on the shard
    /// that owns the partition; when the partition moves, it leaves the old owner's scrape
    /// (the old shard no longer holds its state) and starts from 0 on the new owner's.
    fn partitions(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "partition_events_applied",
            "Events this shard applied to each partition it owns, since it took the partition's state; a partition that moves leaves this shard's series and starts from 0 on its new owner.",
            None,
            MetricType::Counter,
        )?;
        for shard in &self.shards {
            let labels = self.shard_labels(shard);
            for applied in shard.partitions.iter() {
                let mut labels = labels.clone();
                labels.push(("partition", applied.partition.to_string()));
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, u64, u64>(&applied.events, None)?;
            }
        }
        Ok(())
    }

    /// Live partition moves: out of each shard (as the source) and into it (as the target),
    /// by step, the events held during hand-offs, and the replies a source kept back for its
    /// target's acknowledgement.
    fn moves(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        type Step = (&'static str, &'static str, fn(&MoveTally) -> u64);
        let steps: [Step; 9] = [
            ("out", "started", |t| t.out_started),
            ("out", "flipped", |t| t.out_flipped),
            ("out", "abandoned", |t| t.out_abandoned),
            ("out", "refused", |t| t.out_refused),
            ("in", "staged", |t| t.in_staged),
            ("in", "durable", |t| t.in_durable),
            ("in", "installed", |t| t.in_installed),
            ("in", "dropped", |t| t.in_dropped),
            ("in", "refused", |t| t.in_refused),
        ];
        let mut family = encoder.encode_descriptor(
            "partition_moves",
            "Live partition moves by direction and step: out (this shard the source) started, flipped to the target, abandoned, refused; in (this shard the target) staged, made durable in its store before the hand-off was acknowledged (a target with a data dir), installed at the flip, dropped, refused.",
            None,
            MetricType::Counter,
        )?;
        for shard in &self.shards {
            for (direction, step, value) in steps {
                let mut labels = self.shard_labels(shard);
                labels.push(("direction", direction.to_owned()));
                labels.push(("step", step.to_owned()));
                let value = value(&shard.snapshot.counters.moves);
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
            }
        }
        self.counter(
            encoder,
            "move_events_held",
            "Events a moving partition's source held during its hand-off (each counted once).",
            |s| s.snapshot.counters.moves.events_held,
        )?;
        self.counter(
            encoder,
            "move_replies_kept_back",
            "Replies a moving partition's source kept back after its hand-off until the target acknowledged their events.",
            |s| s.snapshot.counters.moves.replies_kept_back,
        )?;
        self.counter(
            encoder,
            "move_replies_unknown",
            "Replies a source kept back and answered OutcomeUnknown instead, because the target could not confirm their events after the flip (the link failed, or the target served without them); the events stay counted under their applied outcome in trove_events_total.",
            |s| s.snapshot.counters.moves.replies_unknown,
        )?;
        self.gauge(
            encoder,
            "move_events_held_peak",
            "The most events this shard held at once during hand-offs.",
            |s| s.snapshot.counters.moves.held_peak as f64,
        )
    }

    fn connections_closed(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let reasons: [LabelledValue; 4] = [
            ("unauthenticated", |s| {
                s.snapshot.counters.connections_unauthenticated
            }),
            ("idle", |s| s.snapshot.counters.connections_idle_closed),
            ("write_stalled", |s| {
                s.snapshot.counters.connections_write_stalled
            }),
            ("evicted", |s| s.snapshot.counters.connections_evicted),
        ];
        let mut family = encoder.encode_descriptor(
            "connections_closed",
            "Connections the shard closed, by reason: failed authentication, idle past the idle timeout, a socket that took no replies, evicted for a new one when full.",
            None,
            MetricType::Counter,
        )?;
        for shard in &self.shards {
            for (reason, value) in reasons {
                let mut labels = self.shard_labels(shard);
                labels.push(("reason", reason.to_owned()));
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, u64, u64>(&value(shard), None)?;
            }
        }
        Ok(())
    }

    fn executor(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "credit_wait_seconds",
            "Seconds frames spent stopped for credit (socket or mesh) before they went on, summed over the connections: two waiting at once count twice.",
            None,
            MetricType::Counter,
        )?;
        for shard in &self.shards {
            let wait_s = shard.snapshot.counters.credit_wait_ns as f64 / 1e9;
            family
                .encode_family(&self.shard_labels(shard))?
                .encode_counter::<NoLabelSet, f64, u64>(&wait_s, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "executor_busy_seconds",
            "Seconds the shard's executor spent running tasks and polling for I/O (not sleeping or spinning); its rate is the executor's utilisation, 0 to 1.",
            None,
            MetricType::Counter,
        )?;
        for shard in &self.shards {
            let busy_s = shard.snapshot.counters.executor_busy_ns as f64 / 1e9;
            family
                .encode_family(&self.shard_labels(shard))?
                .encode_counter::<NoLabelSet, f64, u64>(&busy_s, None)?;
        }
        Ok(())
    }

    /// What went over the links to other nodes, by direction: events, their archived bytes,
    /// and the link frames (batches) that carried them.
    fn links(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        type Direction = (&'static str, fn(&LinkTally) -> u64);
        let families: [(&str, &str, [Direction; 2]); 3] = [
            (
                "link_events",
                "Events over the links to other nodes: sent (forwarded to their owner) and received (to apply here).",
                [
                    ("sent", |t| t.events_sent),
                    ("received", |t| t.events_received),
                ],
            ),
            (
                "link_bytes",
                "Archived event bytes over the links to other nodes, by direction.",
                [
                    ("sent", |t| t.bytes_sent),
                    ("received", |t| t.bytes_received),
                ],
            ),
            (
                "link_batches",
                "Link frames (batches of events or of their replies) over the links to other nodes, by direction.",
                [
                    ("sent", |t| t.batches_sent),
                    ("received", |t| t.batches_received),
                ],
            ),
        ];
        for (name, help, directions) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for shard in &self.shards {
                for (direction, value) in directions {
                    let mut labels = self.shard_labels(shard);
                    labels.push(("direction", direction.to_owned()));
                    let value = value(&shard.snapshot.counters.links);
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
                }
            }
        }
        Ok(())
    }

    /// Events by kind and outcome (every pair, zeros included), and rejections by kind and
    /// reason (only the pairs that happened: 96 mostly-zero series a shard would drown the rest).
    fn events(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "events",
            "Events answered, by kind and outcome, counted once by the shard that decided the outcome: accepted and rejected by the owner that applied them; log_full (the log at its disk bound), disk_full and disk_failed by the owner whose log refused them; busy, unavailable (no owner serves the partition here now), moved and shutting_down by the shard that received them; outcome_unknown for a forward whose link failed; duplicate for a retry applied before.",
            None,
            MetricType::Counter,
        )?;
        for shard in &self.shards {
            let tally: &EventTally = &shard.snapshot.events;
            for kind in KindIndex::ALL {
                for outcome in OutcomeIndex::ALL {
                    let mut labels = self.shard_labels(shard);
                    labels.push(("kind", kind.label().to_owned()));
                    labels.push(("outcome", outcome.label().to_owned()));
                    let value = tally.by_outcome[kind as usize][outcome as usize];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "events_rejected",
            "Events applied and refused, by kind and reason; a pair appears once it happened.",
            None,
            MetricType::Counter,
        )?;
        for shard in &self.shards {
            for kind in KindIndex::ALL {
                for reason in 0..REJECT_REASONS {
                    let value = shard.snapshot.events.rejected[kind as usize][reason];
                    if value == 0 {
                        continue;
                    }
                    let mut labels = self.shard_labels(shard);
                    labels.push(("kind", kind.label().to_owned()));
                    labels.push(("reason", reject_reason_label(reason).to_owned()));
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
                }
            }
        }
        Ok(())
    }

    fn gauges(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        self.gauge(
            encoder,
            "connections_open",
            "Client connections open now.",
            |s| s.snapshot.gauges.connections_open as f64,
        )?;
        self.gauge(
            encoder,
            "links_open",
            "Links to and from shards of other nodes open now (outgoing ones connected, and inbound ones).",
            |s| s.snapshot.gauges.links_open as f64,
        )?;
        let pools: [ShardFamily<CreditGauge>; 3] = [
            (
                "socket_credit",
                "the shard's budget for events read from its sockets",
                |s| s.snapshot.gauges.socket_credit,
            ),
            (
                "mesh_credit",
                "this shard's shares of its peers' mesh budgets, summed",
                |s| s.snapshot.gauges.mesh_credit,
            ),
            (
                "link_credit",
                "this shard's shares of other nodes' shards' link budgets, summed over its links",
                |s| s.snapshot.gauges.link_credit,
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
            |s| s.snapshot.gauges.socket_credit.use_ratio(),
        )?;
        self.connection_shares(encoder)?;
        let queues: [ShardFamily<u64>; 3] = [
            (
                "mesh_batches_queued",
                "Batches waiting for the mesh channels to the other shards.",
                |s| s.snapshot.gauges.mesh_batches_queued,
            ),
            (
                "reply_bytes_queued",
                "Reply bytes queued or being written to client connections.",
                |s| s.snapshot.gauges.reply_bytes_queued,
            ),
            (
                "connections_writing",
                "Connections with replies queued or being written.",
                |s| s.snapshot.gauges.connections_writing,
            ),
        ];
        for (name, help, value) in queues {
            self.gauge(encoder, name, help, |s| value(s) as f64)?;
        }
        self.gauge(
            encoder,
            "reactor_stall_worst_seconds",
            "The most a poll of one of the shard's tasks ran past the stall threshold.",
            |s| s.snapshot.counters.stall_worst_ns as f64 / 1e9,
        )?;
        self.gauge(
            encoder,
            "metrics_snapshot_age_seconds",
            "Seconds since this shard's last snapshot reached the housekeeping thread; a shard that stops sending is stuck.",
            |s| s.snapshot_age.as_secs_f64(),
        )
    }

    /// Connection shares, bounded whatever the number of connections (no connection is a
    /// label): one connection's share, the most any one holds, and how many are at theirs.
    /// Their sum over the connections is the socket budget's held.
    fn connection_shares(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let families: [ShardFamily<u64>; 5] = [
            (
                "connection_credit_events_held_max",
                "Credit: the most events any one open connection holds (replies not yet written, events away at other shards or nodes); all of them together hold trove_socket_credit_events_held.",
                |s| s.snapshot.gauges.connection_credit.events_held,
            ),
            (
                "connection_credit_bytes_held_max",
                "Credit: the most event bytes any one open connection holds; all of them together hold trove_socket_credit_bytes_held.",
                |s| s.snapshot.gauges.connection_credit.bytes_held,
            ),
            (
                "connection_credit_events_capacity",
                "Credit: one connection's share of the shard's socket budget, in events.",
                |s| s.snapshot.gauges.connection_credit.events_capacity,
            ),
            (
                "connection_credit_bytes_capacity",
                "Credit: one connection's share of the shard's socket budget, in event bytes.",
                |s| s.snapshot.gauges.connection_credit.bytes_capacity,
            ),
            (
                "connections_at_credit_share",
                "Open connections whose share cannot take their next event now: each is read again only once its own replies are written (a client that does not read its replies stays here).",
                |s| s.snapshot.gauges.connections_at_share,
            ),
        ];
        for (name, help, value) in families {
            self.gauge(encoder, name, help, |s| value(s) as f64)?;
        }
        self.gauge(
            encoder,
            "connection_credit_use_ratio_max",
            "The fullest open connection's use of its share, the fuller of events and bytes, 0 to 1: 1 is a connection the shard stopped reading until its replies are written.",
            |s| s.snapshot.gauges.connection_credit.use_ratio(),
        )
    }

    fn histograms(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "stage_latency_seconds",
            "Latency of each stage of a shard's data path (frame_dispatch: arrival to dispatch of the frame's last event; mesh_round_trip: forward to reply back; log_sync: first write a log sync covers issued to its fdatasync done, no samples without a data dir; snapshot_pause: the shard stopped to copy one partition's state for a snapshot; link_round_trip: forward to a shard of another node to its reply back; move_pause: each flip's pause, the first event held for the partition at its target until the source's seal, reported to and recorded by the source, zero when none waited; also a source's hold of a tail past its bound until an abandon; no samples on a shard that moved nothing).",
            None,
            MetricType::Histogram,
        )?;
        for shard in &self.shards {
            for stage in Stage::ALL {
                let histogram = shard.snapshot.stage(stage);
                let mut labels = self.shard_labels(shard);
                labels.push(("stage", stage.label().to_owned()));
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        histogram.sum_s,
                        histogram.count,
                        &histogram.buckets(),
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
            ("revision", env!("TROVE_GIT_REVISION").to_owned()),
            (
                "profile",
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
                .to_owned(),
            ),
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
        encoder
            .encode_descriptor(
                "node",
                "How this node is configured: shards and their CPUs, partitions, budgets, fail-fast, cluster membership.",
                None,
                MetricType::Info,
            )?
            .encode_info(&self.config_labels())?;
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
            |s| s.snapshot.cpu as f64,
        )
    }
}

impl NodeCollector {
    fn config_labels(&self) -> Labels {
        let config = &self.info;
        let cpus: Vec<String> = config.shard_cpus.iter().map(usize::to_string).collect();
        vec![
            ("node", config.node.clone()),
            ("shards", config.shard_cpus.len().to_string()),
            ("cpus", cpus.join(",")),
            ("partitions", config.partitions.to_string()),
            ("shard_events_max", config.shard_events_max.to_string()),
            ("shard_bytes_max", config.shard_bytes_max.to_string()),
            (
                "connection_events_max",
                config.connection_events_max.to_string(),
            ),
            ("fail_fast", config.fail_fast.to_string()),
            ("cluster", self.cluster.is_some().to_string()),
        ]
    }

    /// The node's standing in its cluster; nothing when it runs alone.
    fn cluster_metrics(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(cluster) = self.cluster else {
            return Ok(());
        };
        let labels: Labels = vec![
            ("node", self.info.node.clone()),
            ("node_id", cluster.node_id.to_string()),
        ];
        let gauges: [(&str, &str, f64); 7] = [
            (
                "cluster_lease_left_seconds",
                "Seconds until this node's lease in etcd runs out, as far as it knows; at 0 its partitions go offline.",
                cluster.lease_left_s,
            ),
            (
                "cluster_map_epoch",
                "The epoch of the placement this node last read from etcd.",
                cluster.map_epoch as f64,
            ),
            (
                "cluster_partitions_owned",
                "Partitions the placement assigns to this node.",
                cluster.partitions_owned as f64,
            ),
            (
                "cluster_partitions_moving",
                "Partitions assigned to this node that it may not serve yet (waiting for the controller to confirm them to its current registration).",
                cluster.partitions_moving as f64,
            ),
            (
                "cluster_partitions_offline",
                "Partitions of the whole cluster that nobody serves now.",
                cluster.partitions_offline as f64,
            ),
            (
                "cluster_controller",
                "1 when this node is the cluster's controller.",
                f64::from(u8::from(cluster.controller)),
            ),
            (
                "cluster_etcd_reachable",
                "1 when this node's last request to etcd succeeded.",
                f64::from(u8::from(cluster.etcd_reachable)),
            ),
        ];
        for (name, help, value) in gauges {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_family(&labels)?
                .encode_gauge(&value)?;
        }
        Ok(())
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.info_metrics(&mut encoder)?;
        self.counters(&mut encoder)?;
        self.gauges(&mut encoder)?;
        self.histograms(&mut encoder)?;
        self.cluster_metrics(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::{
        ArchivedEvent, Event, EventError, EventKind, Outcome, RejectReason,
    };

    fn tally_of(kind: EventKind, outcomes: &[Outcome]) -> EventTally {
        let event = Event {
            hunt: crate::core::ids::HuntId(1),
            player: crate::core::ids::PlayerId(1),
            client_session: 0,
            client_seq: 0,
            client_ts: 0,
            kind,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&event).unwrap();
        let archived = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        let mut tally = EventTally::default();
        for outcome in outcomes {
            tally.count(&archived.kind, outcome);
        }
        tally
    }

    #[test]
    fn the_exposition_names_every_family_with_its_labels() {
        let mut snapshot = ShardSnapshot {
            shard: 1,
            cpu: 3,
            ..ShardSnapshot::default()
        };
        snapshot.counters.events_applied = 42;
        snapshot.counters.executor_busy_ns = 1_500_000_000;
        snapshot.counters.credit_wait_ns = 250_000_000;
        snapshot.counters.connections_idle_closed = 2;
        snapshot.counters.log_syncs = 5;
        snapshot.counters.log_records = 40;
        snapshot.gauges.mesh_batches_queued = 4;
        snapshot.counters.links.events_sent = 9;
        snapshot.counters.links.events_received = 3;
        snapshot.counters.links.bytes_sent = 900;
        snapshot.counters.links.batches_received = 2;
        snapshot.counters.moves.out_flipped = 3;
        snapshot.counters.moves.events_held = 17;
        snapshot.counters.moves.in_durable = 4;
        snapshot.counters.moves.replies_kept_back = 11;
        snapshot.counters.moves.replies_unknown = 6;
        snapshot.counters.log_replies_unknown = 8;
        snapshot.gauges.links_open = 2;
        snapshot.gauges.link_credit.events_held = 5;
        snapshot.gauges.connection_credit = CreditGauge {
            events_held: 64,
            events_capacity: 64,
            bytes_held: 1_000,
            bytes_capacity: 4_000,
        };
        snapshot.gauges.connections_at_share = 1;
        snapshot.stages[Stage::LinkRoundTrip as usize] =
            ClassicHistogram::from_ns(&crate::metrics::snapshot::tests::histogram_of(&[200_000]));
        // Each refusal a different number of times, so that a mix-up of labels shows.
        let refused = |error, times| vec![Outcome::Error { error }; times];
        let outcomes = [
            vec![
                Outcome::Accepted { score: 0 },
                Outcome::Rejected {
                    reason: RejectReason::AlreadyJoined,
                },
                Outcome::Busy,
                Outcome::Unavailable { partition: 9 },
            ],
            refused(EventError::LogFull, 2),
            refused(EventError::DiskFull, 3),
            refused(EventError::DiskFailed, 4),
        ]
        .concat();
        snapshot.events = tally_of(EventKind::Join, &outcomes);
        snapshot.stages[Stage::FrameDispatch as usize] =
            ClassicHistogram::from_ns(&crate::metrics::snapshot::tests::histogram_of(&[1_000]));
        snapshot.stages[Stage::LogSync as usize] =
            ClassicHistogram::from_ns(&crate::metrics::snapshot::tests::histogram_of(&[
                300_000, 3_000_000,
            ]));
        let info = NodeInfo {
            node: "127.0.0.1:7700".into(),
            shard_cpus: vec![2, 3],
            ..NodeInfo::default()
        };
        let cluster = ClusterGauges {
            node_id: 7,
            lease_left_s: 4.5,
            partitions_owned: 16,
            controller: true,
            ..ClusterGauges::default()
        };
        let partitions = [(5, 0), (17, 23)]
            .map(|(partition, events)| crate::metrics::PartitionApplied { partition, events });
        let report = ShardReport {
            snapshot,
            partitions: partitions.to_vec(),
        };
        let text = render(&info, &[ShardSeries::from_report(report)], Some(cluster));
        let n = "node=\"127.0.0.1:7700\"";
        for line in [
            "# TYPE trove_events_applied_total counter".to_owned(),
            format!("trove_events_applied_total{{{n},shard=\"1\"}} 42"),
            "# TYPE trove_stage_latency_seconds histogram".to_owned(),
            format!(
                "trove_stage_latency_seconds_count{{{n},shard=\"1\",stage=\"frame_dispatch\"}} 1"
            ),
            format!(
                "trove_stage_latency_seconds_bucket{{{n},shard=\"1\",stage=\"frame_dispatch\",le=\"1e-05\"}} 1"
            ),
            format!("trove_stage_latency_seconds_count{{{n},shard=\"1\",stage=\"log_sync\"}} 2"),
            format!(
                "trove_stage_latency_seconds_bucket{{{n},shard=\"1\",stage=\"log_sync\",le=\"+Inf\"}} 2"
            ),
            format!("trove_log_syncs_total{{{n},shard=\"1\"}} 5"),
            format!("trove_log_records_total{{{n},shard=\"1\"}} 40"),
            format!("trove_log_bytes_total{{{n},shard=\"1\"}} 0"),
            format!("trove_config_shards{{{n}}} 2.0"),
            format!("trove_shard_cpu{{{n},shard=\"1\"}} 3.0"),
            format!("trove_events_total{{{n},shard=\"1\",kind=\"join\",outcome=\"accepted\"}} 1"),
            format!("trove_events_total{{{n},shard=\"1\",kind=\"join\",outcome=\"busy\"}} 1"),
            format!(
                "trove_events_total{{{n},shard=\"1\",kind=\"join\",outcome=\"unavailable\"}} 1"
            ),
            format!("trove_events_total{{{n},shard=\"1\",kind=\"join\",outcome=\"log_full\"}} 2"),
            format!("trove_events_total{{{n},shard=\"1\",kind=\"join\",outcome=\"disk_full\"}} 3"),
            format!(
                "trove_events_total{{{n},shard=\"1\",kind=\"join\",outcome=\"disk_failed\"}} 4"
            ),
            format!("trove_events_total{{{n},shard=\"1\",kind=\"claim\",outcome=\"disk_full\"}} 0"),
            format!("trove_events_total{{{n},shard=\"1\",kind=\"claim\",outcome=\"moved\"}} 0"),
            format!(
                "trove_events_rejected_total{{{n},shard=\"1\",kind=\"join\",reason=\"already_joined\"}} 1"
            ),
            format!("trove_executor_busy_seconds_total{{{n},shard=\"1\"}} 1.5"),
            format!("trove_credit_wait_seconds_total{{{n},shard=\"1\"}} 0.25"),
            format!("trove_connections_closed_total{{{n},shard=\"1\",reason=\"idle\"}} 2"),
            format!("trove_mesh_batches_queued{{{n},shard=\"1\"}} 4.0"),
            format!("trove_link_events_total{{{n},shard=\"1\",direction=\"sent\"}} 9"),
            format!("trove_link_events_total{{{n},shard=\"1\",direction=\"received\"}} 3"),
            format!("trove_link_bytes_total{{{n},shard=\"1\",direction=\"sent\"}} 900"),
            format!("trove_link_bytes_total{{{n},shard=\"1\",direction=\"received\"}} 0"),
            format!("trove_link_batches_total{{{n},shard=\"1\",direction=\"received\"}} 2"),
            format!("trove_links_open{{{n},shard=\"1\"}} 2.0"),
            format!("trove_link_credit_events_held{{{n},shard=\"1\"}} 5.0"),
            format!("trove_connection_credit_events_held_max{{{n},shard=\"1\"}} 64.0"),
            format!("trove_connection_credit_bytes_held_max{{{n},shard=\"1\"}} 1000.0"),
            format!("trove_connection_credit_events_capacity{{{n},shard=\"1\"}} 64.0"),
            format!("trove_connection_credit_bytes_capacity{{{n},shard=\"1\"}} 4000.0"),
            format!("trove_connection_credit_use_ratio_max{{{n},shard=\"1\"}} 1.0"),
            format!("trove_connections_at_credit_share{{{n},shard=\"1\"}} 1.0"),
            format!(
                "trove_stage_latency_seconds_count{{{n},shard=\"1\",stage=\"link_round_trip\"}} 1"
            ),
            format!(
                "trove_partition_moves_total{{{n},shard=\"1\",direction=\"out\",step=\"flipped\"}} 3"
            ),
            format!("trove_move_events_held_total{{{n},shard=\"1\"}} 17"),
            format!(
                "trove_partition_moves_total{{{n},shard=\"1\",direction=\"in\",step=\"durable\"}} 4"
            ),
            "# TYPE trove_move_replies_kept_back_total counter".to_owned(),
            format!("trove_move_replies_kept_back_total{{{n},shard=\"1\"}} 11"),
            "# TYPE trove_move_replies_unknown_total counter".to_owned(),
            format!("trove_move_replies_unknown_total{{{n},shard=\"1\"}} 6"),
            "# TYPE trove_log_replies_unknown_total counter".to_owned(),
            format!("trove_log_replies_unknown_total{{{n},shard=\"1\"}} 8"),
            "# TYPE trove_partition_events_applied_total counter".to_owned(),
            format!("trove_partition_events_applied_total{{{n},shard=\"1\",partition=\"5\"}} 0"),
            format!("trove_partition_events_applied_total{{{n},shard=\"1\",partition=\"17\"}} 23"),
            format!("trove_cluster_lease_left_seconds{{{n},node_id=\"7\"}} 4.5"),
            format!("trove_cluster_partitions_owned{{{n},node_id=\"7\"}} 16.0"),
            format!("trove_cluster_controller{{{n},node_id=\"7\"}} 1.0"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        assert_eq!(
            text.matches("trove_partition_events_applied_total{")
                .count(),
            2,
            "one series per partition the shard owns: {text}"
        );
        // Every kind with every outcome, zeros included.
        assert_eq!(
            text.matches("trove_events_total{").count(),
            KindIndex::ALL.len() * OutcomeIndex::ALL.len(),
            "{text}"
        );
        // Only rejections that happened are listed.
        assert_eq!(
            text.matches("trove_events_rejected_total{").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains(&format!("trove_build_info{{{n},version=\"")),
            "{text}"
        );
        assert!(
            text.contains(&format!("trove_node_info{{{n},shards=\"2\",cpus=\"2,3\"")),
            "{text}"
        );
        // Alone, a node serves no cluster family.
        let alone = render(&info, &[ShardSeries::from_snapshot(&snapshot)], None);
        assert!(!alone.contains("trove_cluster_"), "{alone}");
    }
}
