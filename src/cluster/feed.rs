//! What a node's control thread tells its shards after each step, sans-IO: the placement and
//! what is known of the node's lease ([`ShardFeed`]). The control thread (`cluster::control`)
//! hands it to the shards through `runtime::control_feed`; the simulator (`sim::moves`) hands
//! it to its cores the same way, so both feed shards by one rule. A plain value, made on the
//! control thread and read on any shard.

use std::sync::Arc;

use crate::cluster::coordinator::ServingView;
use crate::cluster::placement::{Placement, epoch_of_revision};
use crate::core::ids::Epoch;
use crate::core::shard::NodeLease;

/// What a node's shards are told after a control step, in the control clock's nanoseconds:
/// the placement, the revision the node registered at while its lease is known valid (`None`:
/// fenced), and when the lease stops being known valid. Pure, so that the simulator feeds its
/// cores exactly as the control thread and `runtime::control_feed` feed a node's shards.
#[derive(Clone, Debug)]
pub struct ShardFeed {
    pub placement: Arc<Placement>,
    pub registered: Option<Epoch>,
    pub lease_valid_until_ns: u64,
}

impl ShardFeed {
    /// The feed of `view` at `now_ns`; `None` before the node has a placement.
    pub fn of(view: &ServingView, now_ns: u64) -> Option<ShardFeed> {
        let placement = view.placement.clone()?;
        let registered = view
            .registered_revision
            .filter(|_| now_ns < view.lease_valid_until_ns)
            .and_then(|revision| epoch_of_revision(revision).ok());
        Some(ShardFeed {
            placement,
            registered,
            lease_valid_until_ns: view.lease_valid_until_ns,
        })
    }

    /// What the shards were last told, to tell them again only when it changed.
    pub fn sent(&self) -> (Epoch, Option<Epoch>, u64) {
        (
            self.placement.epoch(),
            self.registered,
            self.lease_valid_until_ns,
        )
    }

    /// The lease as a shard applies it at `now_ns` (as `runtime::control_feed` does with
    /// its update, and again when the lease's end passes with nothing newer).
    pub fn lease_at(&self, now_ns: u64) -> NodeLease {
        NodeLease::of(self.registered, now_ns < self.lease_valid_until_ns)
    }
}
