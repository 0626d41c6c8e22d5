//! The node's bridge from a shard's own counters to the metrics layer: a task on each shard
//! that, about once a second, copies the shard's counters and [`ShardLoad`] into a
//! [`ShardSnapshot`], lists the events applied to each partition it owns, and offers both
//! ([`ShardReport`]) to the housekeeping thread.
//!
//! Runs on the shard's executor. It never waits on the channel (a full one drops the snapshot
//! and the next snapshot counts the drop), shares nothing with the shard's other tasks beyond
//! a borrow between two awaits, and depends on no cross-thread wake: the housekeeping thread
//! polls the channel. The snapshot is small and fixed in size: the stage HdrHistograms are
//! read in place and only their classic buckets are copied. The partition list is one entry
//! per partition the shard owns (at most the cluster's partition count).

use std::rc::Rc;
use std::time::Duration;

use crate::constants::METRICS_SNAPSHOT_MS_DEFAULT;
use crate::core::shard::{ShardCore, ShardLoad, ShardStats, Stalls};
use crate::metrics::snapshot::{ClassicHistogram, Stage};
use crate::metrics::{
    CreditGauge, PartitionApplied, ShardCounters, ShardGauges, ShardReport, ShardSnapshot,
    SnapshotSender,
};
use crate::runtime::shard::Shard;
use crate::runtime::stall::spawn_timed;
use crate::runtime::stall::stalls_on_this_thread;

/// Starts the shard's snapshot task; it lives as long as the shard's executor.
pub fn spawn_snapshot_task(shard: Rc<Shard>, sender: SnapshotSender) {
    spawn_timed(publish_snapshots(shard, sender)).detach();
}

async fn publish_snapshots(shard: Rc<Shard>, sender: SnapshotSender) {
    let period = Duration::from_millis(METRICS_SNAPSHOT_MS_DEFAULT);
    let mut dropped = 0;
    loop {
        let executor = ExecutorFacts {
            busy_ns: glommio::executor()
                .executor_stats()
                .total_runtime()
                .as_nanos() as u64,
            stalls: stalls_on_this_thread(),
        };
        let load = shard.load();
        let mut snapshot = shard.with_counters(|stats| snapshot_of(stats, load, executor, dropped));
        snapshot.cpu = shard.cpu();
        let partitions = shard.with_core(partitions_applied);
        if !sender.offer(ShardReport {
            snapshot,
            partitions,
        }) {
            dropped += 1;
        }
        glommio::timer::sleep(period).await;
    }
}

/// The events applied to each partition the shard owns, in a vector of exactly their number.
fn partitions_applied(core: &ShardCore) -> Vec<PartitionApplied> {
    let mut partitions = Vec::with_capacity(core.applied_by_partition().count());
    partitions.extend(
        core.applied_by_partition()
            .map(|(partition, events)| PartitionApplied {
                partition: partition.0,
                events,
            }),
    );
    partitions
}

/// What the shell knows of a shard's executor, beside the core's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecutorFacts {
    /// Time spent running tasks and polling for I/O since the executor started.
    pub busy_ns: u64,
    pub stalls: Stalls,
}

/// The metrics layer's copy of a shard's numbers.
pub fn snapshot_of(
    stats: &ShardStats,
    load: ShardLoad,
    executor: ExecutorFacts,
    snapshots_dropped: u64,
) -> ShardSnapshot {
    let counters = ShardCounters {
        events_applied: stats.events_applied + stats.events_applied_for_peers,
        events_applied_for_peers: stats.events_applied_for_peers,
        events_forwarded: stats.events_forwarded,
        busy_replies: stats.busy_replies,
        frames_received: stats.frames_received,
        frames_rejected: stats.frames_rejected,
        bytes_received: stats.traffic.bytes_received,
        frames_sent: stats.traffic.frames_sent,
        bytes_sent: stats.traffic.bytes_sent,
        mesh_batches_sent: stats.mesh_batches_sent,
        mesh_batches_received: stats.mesh_batches_received,
        connections_accepted: stats.connections_accepted,
        connections_refused: stats.connections_refused,
        connections_force_closed: stats.connections_force_closed,
        connections_unauthenticated: stats.connections_unauthenticated,
        connections_idle_closed: stats.connections_idle_closed,
        connections_write_stalled: stats.connections_write_stalled,
        connections_evicted: stats.connections_evicted,
        socket_credit_waits: stats.socket_credit_waits,
        mesh_credit_waits: stats.mesh_credit_waits,
        credit_wait_ns: stats.credit_wait_ns,
        executor_busy_ns: executor.busy_ns,
        stalls: executor.stalls.count,
        stall_worst_ns: executor.stalls.worst_overage_ns,
        snapshots_dropped,
        log_syncs: stats.log.syncs,
        log_records: stats.log.records,
        log_bytes: stats.log.bytes,
        log_replies_unknown: stats.log.replies_unknown,
        links: stats.links,
        moves: stats.moves,
        link_credit_waits: stats.link_credit_waits,
    };
    let gauges = ShardGauges {
        connections_open: load.connections_open,
        socket_credit: CreditGauge {
            events_held: u64::from(load.socket_held.events),
            events_capacity: u64::from(load.socket_capacity.events),
            bytes_held: u64::from(load.socket_held.bytes),
            bytes_capacity: u64::from(load.socket_capacity.bytes),
        },
        mesh_credit: CreditGauge {
            events_held: load.mesh_held.0,
            events_capacity: load.mesh_capacity.0,
            bytes_held: load.mesh_held.1,
            bytes_capacity: load.mesh_capacity.1,
        },
        mesh_batches_queued: load.mesh_batches_queued,
        reply_bytes_queued: load.reply_bytes_queued,
        connections_writing: load.connections_writing,
        link_credit: CreditGauge {
            events_held: load.link_held.0,
            events_capacity: load.link_capacity.0,
            bytes_held: load.link_held.1,
            bytes_capacity: load.link_capacity.1,
        },
        links_open: load.links_open,
        connection_credit: CreditGauge {
            events_held: u64::from(load.connection_held_max.events),
            events_capacity: u64::from(load.connection_share.events),
            bytes_held: u64::from(load.connection_held_max.bytes),
            bytes_capacity: u64::from(load.connection_share.bytes),
        },
        connections_at_share: load.connections_at_share,
    };
    let mut stages = [ClassicHistogram::default(); Stage::ALL.len()];
    stages[Stage::FrameDispatch as usize] =
        ClassicHistogram::from_ns(&stats.stages.frame_dispatch_ns);
    stages[Stage::MeshRoundTrip as usize] =
        ClassicHistogram::from_ns(&stats.stages.mesh_round_trip_ns);
    if let Some(log_sync) = &stats.stages.log_sync_ns {
        stages[Stage::LogSync as usize] = ClassicHistogram::from_ns(log_sync);
    }
    if let Some(pause) = &stats.stages.snapshot_pause_ns {
        stages[Stage::SnapshotPause as usize] = ClassicHistogram::from_ns(pause);
    }
    stages[Stage::LinkRoundTrip as usize] =
        ClassicHistogram::from_ns(&stats.stages.link_round_trip_ns);
    if let Some(pause) = &stats.stages.move_pause_ns {
        stages[Stage::MovePause as usize] = ClassicHistogram::from_ns(pause);
    }
    ShardSnapshot {
        shard: stats.shard,
        cpu: stats.cpu,
        counters,
        gauges,
        events: stats.events,
        stages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::shard::{LogTally, MoveTally};

    /// The counters the exposition serves come from the fields of the shard's own tally
    /// that they name, each a different number here so that a mix-up shows.
    #[test]
    fn the_snapshot_carries_the_log_s_and_the_moves_unknown_replies_apart() {
        let stats = ShardStats {
            log: LogTally {
                syncs: 1,
                records: 2,
                bytes: 3,
                replies_unknown: 4,
                ..LogTally::default()
            },
            moves: MoveTally {
                in_durable: 5,
                replies_kept_back: 6,
                replies_unknown: 7,
                ..MoveTally::default()
            },
            ..ShardStats::default()
        };
        let snapshot = snapshot_of(&stats, ShardLoad::default(), ExecutorFacts::default(), 0);
        let counters = snapshot.counters;
        let log = (counters.log_syncs, counters.log_records, counters.log_bytes);
        assert_eq!(log, (1, 2, 3));
        assert_eq!(counters.log_replies_unknown, 4);
        assert_eq!(counters.moves, stats.moves);
    }
}
