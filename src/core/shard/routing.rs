//! Where an event goes, and applying the events this shard owns.
//!
//! [`ShardCore::route`] hashes an event's hunt once and looks its partition up in the
//! placement. An event this shard serves comes back as a [`LocalEvent`]: a token that carries
//! the partition into [`ShardCore::apply`], so the hunt is not hashed twice and `apply` has no
//! "not mine" case to panic on. Every receiver re-routes what it is given: an event that
//! reaches a shard that no longer owns its partition is answered `Moved`, never applied.
//! Shard-local, like the core.

use crate::core::ids::{NodeId, PartitionId, ShardId};
use crate::core::message::{ArchivedEvent, EventError, Outcome, Reply};
use crate::core::partition::{Owner, OwnerState};
use crate::core::shard::ShardCore;

/// An event routed to this shard, with its partition: only [`ShardCore::route`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalEvent {
    partition: PartitionId,
}

impl LocalEvent {
    pub fn partition(self) -> PartitionId {
        self.partition
    }
}

/// Where an event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// This shard owns the partition: apply the event here.
    Local(LocalEvent),
    /// Another shard of this node owns it: forward the event's bytes there.
    Shard(ShardId),
    /// A shard of another node owns it.
    Node(NodeId, ShardId),
}

impl ShardCore {
    /// Where `event` must be applied, by this shard's placement.
    #[inline]
    pub fn route(&self, event: &ArchivedEvent) -> Route {
        let partition = self.placement.partitioner().partition_of(event.hunt.get());
        self.route_partition(partition, self.placement.owner(partition))
    }

    #[inline]
    fn route_partition(&self, partition: PartitionId, owner: &Owner) -> Route {
        if owner.node != self.node {
            Route::Node(owner.node, owner.shard)
        } else if owner.shard == self.shard && self.partitions[partition.index()].is_some() {
            Route::Local(LocalEvent { partition })
        } else {
            Route::Shard(owner.shard)
        }
    }

    /// Starts loading the state [`Self::apply`] will read for `event`, if this shard serves
    /// its partition; changes nothing. See [`PartitionState::prefetch`](crate::core::hunt::PartitionState::prefetch).
    #[inline]
    pub(super) fn prefetch(&self, event: &ArchivedEvent) {
        let partition = self.placement.partitioner().partition_of(event.hunt.get());
        if let Some(state) = &self.partitions[partition.index()] {
            state.prefetch(event);
        }
    }

    /// The route of `event`, or the answer to give at once when nobody serves its partition.
    pub(super) fn route_or_answer(&self, event: &ArchivedEvent) -> Result<Route, Outcome> {
        let partition = self.placement.partitioner().partition_of(event.hunt.get());
        let owner = self.placement.owner(partition);
        if owner.state == OwnerState::Offline {
            return Err(Outcome::Error {
                error: EventError::OwnerUnavailable,
            });
        }
        Ok(self.route_partition(partition, owner))
    }

    /// The answer for an event whose partition is owned elsewhere.
    pub(super) fn moved(&self, event: &ArchivedEvent) -> Outcome {
        let partition = self.placement.partitioner().partition_of(event.hunt.get());
        let owner = self.placement.owner(partition);
        Outcome::Moved {
            node: owner.node.0,
            shard: owner.shard.0,
            epoch: self.placement.epoch().get(),
        }
    }

    /// Applies an event this shard routed to itself, and builds its reply. A token from before
    /// a placement change that moved its partition away is answered `Moved`.
    pub fn apply(&mut self, local: LocalEvent, event: &ArchivedEvent) -> Reply {
        let outcome = match self.partitions[local.partition.index()].as_mut() {
            Some(state) => state.apply(event),
            None => self.moved(event),
        };
        reply_to(event, outcome)
    }
}

/// The reply to `event` with `outcome`.
pub(super) fn reply_to(event: &ArchivedEvent, outcome: Outcome) -> Reply {
    Reply {
        client_seq: event.client_seq.to_native(),
        client_ts: event.client_ts.to_native(),
        outcome,
    }
}
