//! The node's bridge from a shard's own counters to the metrics layer: a task on each shard
//! that, about once a second, copies the shard's [`ShardStats`] and [`ShardLoad`] into a
//! [`ShardSnapshot`] and offers it to the housekeeping thread.
//!
//! Runs on the shard's executor. It never waits on the channel (a full one drops the snapshot
//! and the next snapshot counts the drop), shares nothing with the shard's other tasks beyond
//! a borrow between two awaits, and depends on no cross-thread wake: the housekeeping thread
//! polls the channel.

use std::rc::Rc;
use std::time::Duration;

use crate::constants::METRICS_SNAPSHOT_MS_DEFAULT;
use crate::core::shard::{ShardLoad, ShardStats};
use crate::metrics::{
    CreditGauge, ShardCounters, ShardGauges, ShardSnapshot, SnapshotSender, StageHistograms,
};
use crate::runtime::shard::Shard;

/// Starts the shard's snapshot task; it lives as long as the shard's executor.
pub fn spawn_snapshot_task(shard: Rc<Shard>, sender: SnapshotSender) {
    glommio::spawn_local(publish_snapshots(shard, sender)).detach();
}

async fn publish_snapshots(shard: Rc<Shard>, sender: SnapshotSender) {
    let period = Duration::from_millis(METRICS_SNAPSHOT_MS_DEFAULT);
    let mut dropped = 0;
    loop {
        let snapshot = snapshot_of(&shard.stats(), shard.load(), dropped);
        if !sender.offer(snapshot) {
            dropped += 1;
        }
        glommio::timer::sleep(period).await;
    }
}

/// The metrics layer's copy of a shard's numbers.
pub fn snapshot_of(stats: &ShardStats, load: ShardLoad, snapshots_dropped: u64) -> ShardSnapshot {
    let counters = ShardCounters {
        events_applied: stats.events_applied + stats.events_applied_for_peers,
        events_applied_for_peers: stats.events_applied_for_peers,
        events_forwarded: stats.events_forwarded,
        busy_replies: stats.busy_replies,
        frames_received: stats.frames_received,
        frames_rejected: stats.frames_rejected,
        mesh_batches_sent: stats.mesh_batches_sent,
        mesh_batches_received: stats.mesh_batches_received,
        connections_accepted: stats.connections_accepted,
        connections_refused: stats.connections_refused,
        connections_force_closed: stats.connections_force_closed,
        socket_credit_waits: stats.socket_credit_waits,
        mesh_credit_waits: stats.mesh_credit_waits,
        snapshots_dropped,
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
    };
    ShardSnapshot {
        shard: stats.shard,
        cpu: stats.cpu,
        counters,
        gauges,
        stages: StageHistograms {
            frame_dispatch_ns: stats.stages.frame_dispatch_ns.clone(),
            mesh_round_trip_ns: stats.stages.mesh_round_trip_ns.clone(),
        },
    }
}
