//! A shard's numbers at one instant, as the shard hands them to the housekeeping thread.
//!
//! A [`ShardSnapshot`] is built on a shard's core from that shard's own counters and
//! histograms, then moved (not shared) through a bounded channel to the node's housekeeping
//! thread, which owns it from then on. Nothing in it points back into the shard.

use hdrhistogram::Histogram;

use crate::constants::{METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX, STAGE_LATENCY_NS_MAX};

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
    pub mesh_batches_sent: u64,
    pub mesh_batches_received: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_force_closed: u64,
    /// Times a connection found no socket credit and waited (or answered `Busy`).
    pub socket_credit_waits: u64,
    /// Times a forward found no mesh credit at its owner and waited.
    pub mesh_credit_waits: u64,
    /// Snapshots of this shard dropped because the channel to the housekeeping thread was full.
    pub snapshots_dropped: u64,
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
}

/// A stage of the data path whose latency a shard records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// From a frame's arrival to the dispatch of its last event, credit waits included.
    FrameDispatch,
    /// From forwarding an event to another shard to its reply arriving back.
    MeshRoundTrip,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::FrameDispatch, Stage::MeshRoundTrip];

    /// The value of the `stage` label.
    pub fn label(self) -> &'static str {
        match self {
            Stage::FrameDispatch => "frame_dispatch",
            Stage::MeshRoundTrip => "mesh_round_trip",
        }
    }
}

/// Latency of each stage since the shard started, in nanoseconds.
#[derive(Clone, Debug)]
pub struct StageHistograms {
    pub frame_dispatch_ns: Histogram<u64>,
    pub mesh_round_trip_ns: Histogram<u64>,
}

impl Default for StageHistograms {
    fn default() -> StageHistograms {
        let empty =
            || Histogram::new_with_bounds(1, STAGE_LATENCY_NS_MAX, 3).expect("valid bounds");
        StageHistograms {
            frame_dispatch_ns: empty(),
            mesh_round_trip_ns: empty(),
        }
    }
}

impl StageHistograms {
    pub fn get(&self, stage: Stage) -> &Histogram<u64> {
        match stage {
            Stage::FrameDispatch => &self.frame_dispatch_ns,
            Stage::MeshRoundTrip => &self.mesh_round_trip_ns,
        }
    }
}

/// One shard's counters, gauges and stage histograms at one instant.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub shard: u16,
    pub cpu: usize,
    pub counters: ShardCounters,
    pub gauges: ShardGauges,
    pub stages: StageHistograms,
}

/// A shard's end of the channel to the housekeeping thread. `Send`: one clone per shard.
#[derive(Clone, Debug)]
pub struct SnapshotSender {
    sender: flume::Sender<ShardSnapshot>,
}

impl SnapshotSender {
    /// Hands a snapshot over without waiting: `false` when the channel is full (the
    /// housekeeping thread is behind) or gone (the node is stopping); the snapshot is dropped.
    pub fn offer(&self, snapshot: ShardSnapshot) -> bool {
        self.sender.try_send(snapshot).is_ok()
    }
}

/// The channel from `shards` shards to the housekeeping thread, bounded at
/// `METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX` snapshots a shard.
pub fn snapshot_channel(shards: usize) -> (SnapshotSender, flume::Receiver<ShardSnapshot>) {
    let (sender, receiver) = flume::bounded(shards.max(1) * METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX);
    (SnapshotSender { sender }, receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_drops_instead_of_waiting() {
        let (sender, receiver) = snapshot_channel(1);
        let offered: Vec<bool> = (0..METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX + 1)
            .map(|_| sender.offer(ShardSnapshot::default()))
            .collect();
        assert!(
            offered[..METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX]
                .iter()
                .all(|&ok| ok)
        );
        assert!(!offered[METRICS_SNAPSHOTS_QUEUED_PER_SHARD_MAX]);
        drop(receiver);
        assert!(
            !sender.offer(ShardSnapshot::default()),
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
