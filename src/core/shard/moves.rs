//! Live partition moves, sans-IO: one partition's state and the events applied to it stream
//! from the shard that owns it (the source) to a shard of another node (the target), over the
//! node link between them, while the source keeps serving; then the controller flips ownership.
//!
//! The controller starts a move by writing the partition `Migrating { to, to_shard }` in the
//! assignment; each shard learns it from its placement. What the source's shard has to tell
//! the controller (the target has everything: flip now; or the move cannot go on) comes out of
//! [`ShardCore::poll_move_report`](super::ShardCore) as a [`MoveReport`], which the node's
//! control thread writes to etcd. Lives on the shard's core.

use crate::core::ids::{Epoch, NodeId, PartitionId, ShardId};

/// What a source shard says about one move, for its node's control thread to pass on to the
/// controller (through etcd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveReport {
    pub partition: PartitionId,
    /// The partition epoch of the `Migrating` entry: which move this is about.
    pub part_epoch: Epoch,
    pub to: NodeId,
    pub to_shard: ShardId,
    pub step: MoveStep,
}

/// How a move stands, as its source shard reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveStep {
    /// The target has the partition's state and every event the source applied; the source
    /// holds the partition's new events until the controller flips ownership (or abandons).
    Ready {
        snapshot_bytes: u64,
        events_streamed: u64,
    },
    /// The move cannot go on (the target refused it, or the link to it failed): the
    /// controller should abandon it. The source keeps serving.
    Refused { reason: String },
    /// The source let go of the events it held: the controller flipped ownership
    /// (`flipped`), or abandoned the move and the source applied them itself. `pause_ns` is
    /// how long the first of them waited (zero when none was held).
    Released {
        flipped: bool,
        events_held: u64,
        pause_ns: u64,
    },
}
