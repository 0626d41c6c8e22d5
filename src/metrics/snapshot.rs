//! A shard's numbers at one instant, as the shard hands them to the housekeeping thread.
//!
//! A [`ShardSnapshot`] is built on a shard's core from that shard's own counters and
//! histograms, then moved (not shared) through a bounded channel to the node's housekeeping
//! thread, which owns it from then on. Nothing in it points back into the shard, and nothing
//! in it is on the heap: a snapshot is a few kilobytes (`METRICS_SNAPSHOT_BYTES_MAX`), its
//! stage latencies already sorted into the classic buckets the exposition serves.

use hdrhistogram::Histogram;

use crate::constants::{METRICS_PARTITION_ENTRY_BYTES, METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX};
pub use crate::core::shard::EventTally;

/// Monotonic counters of one shard since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Events this shard applied as their partition's owner, whoever received them.
    pub events_applied: u64,
    /// Of those, events another shard received and forwarded here.
    pub events_applied_for_peers: u64,
    /// Events this shard received and forwarded to their owner on another core.
    pub events_forwarded: u64,
    /// Events answered `Busy` (fail-fast mode, out of credit).
    pub busy_replies: u64,
    pub frames_received: u64,
    pub frames_rejected: u64,
    /// Bytes of the frames received (headers included).
    pub bytes_received: u64,
    /// Frames queued for clients (replies, maps, error frames).
    pub frames_sent: u64,
    /// Bytes written to client sockets.
    pub bytes_sent: u64,
    pub mesh_batches_sent: u64,
    pub mesh_batches_received: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_force_closed: u64,
    /// Connections closed by the shard, by reason (force-closed at stop is counted above).
    pub connections_unauthenticated: u64,
    pub connections_idle_closed: u64,
    pub connections_write_stalled: u64,
    pub connections_evicted: u64,
    /// Times a connection found no socket credit and waited (or answered `Busy`).
    pub socket_credit_waits: u64,
    /// Times a forward found no mesh credit at its owner and waited.
    pub mesh_credit_waits: u64,
    /// Nanoseconds frames spent stopped for credit, summed over the connections.
    pub credit_wait_ns: u64,
    /// Nanoseconds the shard's executor spent running tasks and polling for I/O (not
    /// sleeping, not spinning): its rate is the executor's utilisation.
    pub executor_busy_ns: u64,
    /// Polls of the shard's tasks that ran longer than the stall threshold without yielding.
    pub stalls: u64,
    /// The largest of those overages, in nanoseconds.
    pub stall_worst_ns: u64,
    /// Snapshots of this shard dropped because the channel to the housekeeping thread was full.
    pub snapshots_dropped: u64,
    /// Syncs of the shard's write-ahead log, the records they made durable, and the bytes
    /// written to its segments (all zero without a data dir).
    pub log_syncs: u64,
    pub log_records: u64,
    pub log_bytes: u64,
    /// Replies of events applied here answered `OutcomeUnknown` because their log record
    /// could not be made durable (see `core::shard::LogTally::replies_unknown`).
    pub log_replies_unknown: u64,
    /// What went over the links to other nodes, each way (see `core::shard::LinkTally`).
    pub links: crate::core::shard::LinkTally,
    /// Times a forward to another node found no link credit and waited.
    pub link_credit_waits: u64,
    /// Live partition moves out of and into the shard (see `core::shard::MoveTally`).
    pub moves: crate::core::shard::MoveTally,
}

/// Credit held in one pool and its capacity, in events and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreditGauge {
    pub events_held: u64,
    pub events_capacity: u64,
    pub bytes_held: u64,
    pub bytes_capacity: u64,
}

impl CreditGauge {
    /// The fuller of the two dimensions, from 0 to 1: how close the pool is to its limit.
    pub fn use_ratio(&self) -> f64 {
        let ratio = |held: u64, capacity: u64| {
            if capacity == 0 {
                0.0
            } else {
                held as f64 / capacity as f64
            }
        };
        ratio(self.events_held, self.events_capacity)
            .max(ratio(self.bytes_held, self.bytes_capacity))
    }
}

/// Values of one shard at the instant of the snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardGauges {
    pub connections_open: u64,
    /// The shard's budget for events read from its sockets.
    pub socket_credit: CreditGauge,
    /// This shard's shares of its peers' mesh budgets, summed over the peers.
    pub mesh_credit: CreditGauge,
    /// Batches waiting for the mesh channels to the peers.
    pub mesh_batches_queued: u64,
    /// Reply bytes queued or being written to client sockets.
    pub reply_bytes_queued: u64,
    /// Connections with replies queued or being written.
    pub connections_writing: u64,
    /// This shard's shares of other nodes' shards' link budgets, summed over its links.
    pub link_credit: CreditGauge,
    /// Links open: outgoing ones up, and inbound ones.
    pub links_open: u64,
    /// Connection shares: `*_held` is the most any one open connection holds (the events and
    /// the bytes may be two connections'), `*_capacity` one connection's share. Their sum
    /// over the connections is `socket_credit`'s held.
    pub connection_credit: CreditGauge,
    /// Open connections whose share cannot take their next event now.
    pub connections_at_share: u64,
}

/// A stage of the data path whose latency a shard records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// From a frame's arrival to the dispatch of its last event, credit waits included.
    FrameDispatch,
    /// From forwarding an event to another shard to its reply arriving back.
    MeshRoundTrip,
    /// From the first write a log sync covers being issued to its `fdatasync` completing (no
    /// samples without a data dir).
    LogSync,
    /// How long a shard stopped to copy one partition's state for a snapshot (no samples
    /// without a data dir).
    SnapshotPause,
    /// From forwarding an event to a shard of another node to its reply arriving back.
    LinkRoundTrip,
    /// How long a moving partition's events were held at its source, from the hold's start
    /// to the flip or abandon that let them go (no samples on a shard that moved nothing).
    MovePause,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::FrameDispatch,
        Stage::MeshRoundTrip,
        Stage::LogSync,
        Stage::SnapshotPause,
        Stage::LinkRoundTrip,
        Stage::MovePause,
    ];

    /// The value of the `stage` label.
    pub fn label(self) -> &'static str {
        match self {
            Stage::FrameDispatch => "frame_dispatch",
            Stage::MeshRoundTrip => "mesh_round_trip",
            Stage::LogSync => "log_sync",
            Stage::SnapshotPause => "snapshot_pause",
            Stage::LinkRoundTrip => "link_round_trip",
            Stage::MovePause => "move_pause",
        }
    }
}

/// Upper bounds of the classic latency buckets, in seconds: 10 µs to 10 s, then `+Inf`.
pub const LATENCY_BUCKET_BOUNDS_S: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Classic buckets of a latency histogram: the finite bounds and `+Inf`.
pub const LATENCY_BUCKETS: usize = LATENCY_BUCKET_BOUNDS_S.len() + 1;

/// A stage's latency as the exposition needs it: a count per classic bucket (not cumulative,
/// `+Inf` last), the sum and the count. A fixed, small array, taken from the shard's
/// HdrHistogram on the shard's core, so that a snapshot never carries the HdrHistogram itself.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClassicHistogram {
    pub counts: [u64; LATENCY_BUCKETS],
    pub sum_s: f64,
    pub count: u64,
}

impl ClassicHistogram {
    /// Sorts every recorded value of `histogram` (nanoseconds) into the classic buckets. The
    /// sum is exact to the HdrHistogram's resolution (three significant digits).
    pub fn from_ns(histogram: &Histogram<u64>) -> ClassicHistogram {
        let mut classic = ClassicHistogram {
            count: histogram.len(),
            ..ClassicHistogram::default()
        };
        let mut sum_ns = 0f64;
        for value in histogram.iter_recorded() {
            let count = value.count_at_value();
            let highest_s = histogram.highest_equivalent(value.value_iterated_to()) as f64 / 1e9;
            let index = LATENCY_BUCKET_BOUNDS_S
                .iter()
                .position(|&bound| highest_s <= bound)
                .unwrap_or(LATENCY_BUCKETS - 1);
            classic.counts[index] += count;
            sum_ns += histogram.median_equivalent(value.value_iterated_to()) as f64 * count as f64;
        }
        classic.sum_s = sum_ns / 1e9;
        classic
    }

    /// (upper bound in seconds, count) of each bucket, `+Inf` last.
    pub fn buckets(&self) -> [(f64, u64); LATENCY_BUCKETS] {
        let mut buckets = [(f64::INFINITY, 0); LATENCY_BUCKETS];
        for (index, bucket) in buckets.iter_mut().enumerate() {
            let bound = LATENCY_BUCKET_BOUNDS_S
                .get(index)
                .copied()
                .unwrap_or(f64::INFINITY);
            *bucket = (bound, self.counts[index]);
        }
        buckets
    }
}

/// One shard's counters, gauges, events by kind and outcome, and stage latencies at one
/// instant. Plain values of a fixed size (no heap): at most `METRICS_SNAPSHOT_BYTES_MAX`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardSnapshot {
    pub shard: u16,
    pub cpu: usize,
    pub counters: ShardCounters,
    pub gauges: ShardGauges,
    pub events: EventTally,
    /// Indexed by [`Stage`].
    pub stages: [ClassicHistogram; Stage::ALL.len()],
}

impl ShardSnapshot {
    pub fn stage(&self, stage: Stage) -> &ClassicHistogram {
        &self.stages[stage as usize]
    }
}

/// Events a shard applied to one partition it owns, since it took the partition's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionApplied {
    pub partition: u32,
    pub events: u64,
}

const _: () = assert!(size_of::<PartitionApplied>() <= METRICS_PARTITION_ENTRY_BYTES);

/// What a shard hands the housekeeping thread about once a second: its fixed-size
/// [`ShardSnapshot`], and the events applied to each partition it owns. The partitions are
/// the one part on the heap: an entry per partition the shard owns, so at most the cluster's
/// partition count (`PARTITIONS_MAX`), counted in the memory sum per partition
/// (`METRICS_PARTITION_ENTRY_BYTES`).
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub snapshot: ShardSnapshot,
    /// In partition order.
    pub partitions: Vec<PartitionApplied>,
}

/// A shard's end of the channel to the housekeeping thread. `Send`: one clone per shard.
#[derive(Clone, Debug)]
pub struct SnapshotSender {
    sender: flume::Sender<ShardReport>,
}

impl SnapshotSender {
    /// Hands a report over without waiting: `false` when the channel is full (the
    /// housekeeping thread is behind) or gone (the node is stopping); the report is dropped.
    pub fn offer(&self, report: ShardReport) -> bool {
        self.sender.try_send(report).is_ok()
    }
}

/// The channel from `shards` shards to the housekeeping thread, bounded at
/// `METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX` reports a shard.
pub fn snapshot_channel(shards: usize) -> (SnapshotSender, flume::Receiver<ShardReport>) {
    let (sender, receiver) = flume::bounded(shards.max(1) * METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX);
    (SnapshotSender { sender }, receiver)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::constants::METRICS_SNAPSHOT_BYTES_MAX;
    use crate::core::shard::StageLatencies;

    /// An HdrHistogram as a shard records its stages, holding `values_ns`.
    pub(crate) fn histogram_of(values_ns: &[u64]) -> Histogram<u64> {
        let mut histogram = StageLatencies::default().frame_dispatch_ns;
        for &value in values_ns {
            histogram.record(value).unwrap();
        }
        histogram
    }

    #[test]
    fn a_snapshot_is_small_and_owns_no_heap() {
        // Every field is a plain value or a fixed array, so `size_of` is all of it; a stage
        // HdrHistogram alone is over 200 KiB (STAGE_HISTOGRAM_BYTES_MAX).
        let bytes = size_of::<ShardSnapshot>();
        assert!(
            bytes <= METRICS_SNAPSHOT_BYTES_MAX,
            "a snapshot takes {bytes} bytes, METRICS_SNAPSHOT_BYTES_MAX is {METRICS_SNAPSHOT_BYTES_MAX}"
        );
        fn copy<T: Copy>() {}
        copy::<ShardSnapshot>();
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
        let buckets = classic.buckets();
        let count_at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(count_at(0.000_01), 1);
        assert_eq!(count_at(0.000_05), 2);
        assert_eq!(count_at(0.002_5), 1);
        assert_eq!(count_at(f64::INFINITY), 1);
        assert_eq!(classic.count, 5);
        assert_eq!(classic.counts.iter().sum::<u64>(), 5);
        let expected_sum = (5_000 + 60_000 + 2_000_000 + 20_000_000_000u64) as f64 / 1e9;
        assert!(
            (classic.sum_s - expected_sum).abs() / expected_sum < 0.001,
            "{}",
            classic.sum_s
        );
        assert_eq!(
            ClassicHistogram::from_ns(&histogram_of(&[])),
            ClassicHistogram::default()
        );
    }

    #[test]
    fn a_full_channel_drops_instead_of_waiting() {
        let (sender, receiver) = snapshot_channel(1);
        let offered: Vec<bool> = (0..METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX + 1)
            .map(|_| sender.offer(ShardReport::default()))
            .collect();
        assert!(
            offered[..METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX]
                .iter()
                .all(|&ok| ok)
        );
        assert!(!offered[METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX]);
        drop(receiver);
        assert!(
            !sender.offer(ShardReport::default()),
            "no receiver: dropped"
        );
    }

    #[test]
    fn credit_use_is_the_fuller_dimension() {
        let gauge = CreditGauge {
            events_held: 10,
            events_capacity: 100,
            bytes_held: 900,
            bytes_capacity: 1000,
        };
        assert!((gauge.use_ratio() - 0.9).abs() < 1e-9);
        assert_eq!(CreditGauge::default().use_ratio(), 0.0);
    }
}
