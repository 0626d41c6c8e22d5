//! Where an event goes, and applying the events this shard owns.
//!
//! [`ShardCore::route`] hashes an event's hunt once and reads its partition's route from a
//! table worked out whenever the placement or the lease changes ([`route_of`]): one load, and
//! no branch on whose the partition is, which a predictor cannot learn when events of many
//! shards arrive mixed. An event this shard serves comes back as a [`LocalEvent`]: a token that carries
//! the partition into [`ShardCore::apply`], so the hunt is not hashed twice and `apply` has no
//! "not mine" case to panic on. Every receiver re-routes what it is given: an event that
//! reaches a shard that no longer owns its partition is answered `Moved`, never applied.
//!
//! In a cluster, a shard serves a partition it owns only while its node's lease is confirmed
//! ([`NodeLease`], from the control thread): an `Offline` partition, or any partition while
//! the node is fenced, is answered `Unavailable { partition }` at once.
//! Shard-local, like the core.

use crate::constants::{PARTITION_ROUTE_BYTES, PARTITIONS_MAX};
use crate::core::codec::ValidatedArchive;
use crate::core::ids::{Epoch, NodeId, PartitionId, ShardId};
use crate::core::message::{ArchivedEvent, Outcome, Reply};
use crate::core::partition::{Owner, OwnerState};
use crate::core::shard::ShardCore;

/// An event routed to this shard, with its partition: only [`ShardCore::route`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalEvent {
    /// The partition's index, and `MOVING` when the partition is streaming to its next owner:
    /// what is applied joins the move's tail (`moves`). Read from the route table with the
    /// route, so the apply path pays one predictable branch for moves; one word, so a route
    /// stays `PARTITION_ROUTE_BYTES`.
    bits: u32,
}

/// The flag bit of a moving partition's `LocalEvent` (partitions are fewer than
/// `PARTITIONS_MAX`, far below it).
const MOVING: u32 = 1 << 31;
const _: () = assert!(PARTITIONS_MAX < MOVING);

impl LocalEvent {
    fn new(partition: PartitionId) -> LocalEvent {
        LocalEvent { bits: partition.0 }
    }

    #[inline]
    pub fn partition(self) -> PartitionId {
        PartitionId(self.bits & !MOVING)
    }

    #[inline]
    pub fn is_moving(self) -> bool {
        self.bits & MOVING != 0
    }

    /// The same event, of a partition that is moving.
    pub(super) fn moving(self) -> LocalEvent {
        LocalEvent {
            bits: self.bits | MOVING,
        }
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
    /// This shard owns the partition and is handing it off to its next owner: the event is
    /// held until the flip (or the abandon) decides where it goes (`moves`).
    Hold(PartitionId),
}

// A shard keeps one route per partition of the node (`ShardCore`'s table), counted by this.
const _: () = assert!(size_of::<Route>() <= PARTITION_ROUTE_BYTES);

/// The route of `partition`, owned by `owner`, from a shard of node `node`: `Local` when that
/// shard serves it (`serve`), else its owner's shard, of this node or another. What a shard's
/// route table holds; a partition the shard owns but may not serve routes to the shard itself,
/// which [`ShardCore::route_or_answer`] answers `Unavailable`.
pub(super) fn route_of(node: NodeId, partition: PartitionId, owner: &Owner, serve: bool) -> Route {
    if serve {
        Route::Local(LocalEvent::new(partition))
    } else if owner.node != node {
        Route::Node(owner.node, owner.shard)
    } else {
        Route::Shard(owner.shard)
    }
}

/// What a shard knows of its node's lease, from the node's control thread (a single node has
/// no lease and is always confirmed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeLease {
    /// The lease is not known valid (not granted yet, or past its end): serve nothing, since
    /// the controller may have declared this node dead and its partitions `Offline`.
    Fenced,
    /// The lease is valid, and this node registered at `registered`: it serves the partitions
    /// it owns whose epoch is after that, so that two nodes never apply events of the same
    /// partition in the same epoch.
    Confirmed { registered: Epoch },
}

impl NodeLease {
    /// A node on its own: no etcd, no lease, every partition it owns is confirmed.
    pub const SINGLE_NODE: NodeLease = NodeLease::Confirmed {
        registered: Epoch(0),
    };

    /// The lease as the node's control thread last described it: confirmed at `registered`
    /// while `still_valid` (its known end not passed yet), fenced otherwise.
    pub fn of(registered: Option<Epoch>, still_valid: bool) -> NodeLease {
        match registered {
            Some(registered) if still_valid => NodeLease::Confirmed { registered },
            _ => NodeLease::Fenced,
        }
    }

    /// Whether a node holding this lease may apply events of a partition that `owner` owns
    /// (on this node).
    pub fn serves(self, owner: &Owner) -> bool {
        match self {
            NodeLease::Fenced => false,
            NodeLease::Confirmed { registered } => {
                owner.state.applies() && owner.part_epoch > registered
            }
        }
    }
}

impl ShardCore {
    /// Where `event` must be applied, by this shard's placement.
    #[inline]
    pub fn route(&self, event: &ArchivedEvent) -> Route {
        let partition = self.placement.partitioner().partition_of(event.hunt.get());
        self.route_partition(partition)
    }

    /// The route of `partition` by the placement and the lease alone, moves aside.
    pub(super) fn base_route(&self, partition: PartitionId) -> Route {
        let owner = &self.owner_here(partition);
        let owned = owner.node == self.node && owner.shard == self.shard;
        route_of(
            self.node,
            partition,
            owner,
            owned
                && self.lease.serves(owner)
                && !(self.partitions[partition.index()].is_none()
                    && self.awaits_seal(partition, owner.part_epoch)),
        )
    }

    /// A partition served here is `Local`; any other goes to its owner's node, or to its
    /// owner's shard of this node. Read from the table, not worked out per event.
    #[inline]
    fn route_partition(&self, partition: PartitionId) -> Route {
        self.routes[partition.index()]
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

    /// The route of `event`, or the answer to give at once when nobody serves its partition:
    /// it is `Offline`, this node is fenced, or it is this shard's own but not confirmed yet.
    pub(super) fn route_or_answer(&self, event: &ArchivedEvent) -> Result<Route, Outcome> {
        let partition = self.placement.partitioner().partition_of(event.hunt.get());
        let route = self.route_partition(partition);
        if matches!(route, Route::Local(_) | Route::Hold(_)) {
            return self.log_refusal().map_or(Ok(route), Err);
        }
        if self.unavailable(partition) {
            return Err(unavailable(partition));
        }
        Ok(route)
    }

    /// Whether nobody may apply `partition`'s events now, as far as this shard knows.
    fn unavailable(&self, partition: PartitionId) -> bool {
        let owner = self.owner_here(partition);
        owner.state == OwnerState::Offline
            || self.lease == NodeLease::Fenced
            || (owner.node == self.node && owner.shard == self.shard)
    }

    /// The answer for an event this shard does not serve: `Unavailable` when nobody may,
    /// else `Moved` to its owner.
    pub(super) fn moved(&self, event: &ArchivedEvent) -> Outcome {
        let partition = self.placement.partitioner().partition_of(event.hunt.get());
        if self.unavailable(partition) {
            return unavailable(partition);
        }
        let owner = self.owner_here(partition);
        Outcome::Moved {
            node: owner.node.0,
            shard: owner.shard.0,
            epoch: self.placement.epoch().get(),
        }
    }

    /// Re-routes an event another shard or node forwarded here and applies it if it is this
    /// shard's; any other is answered (`Moved`, `Unavailable`), never forwarded again. Counts
    /// it, and returns its reply with the partition and archive to log when it was applied;
    /// `Err` with the partition when it is held for a move's hand-off (the caller holds it).
    pub(super) fn apply_for_peer<'a>(
        &mut self,
        archive: ValidatedArchive<'a, ArchivedEvent>,
    ) -> Result<PeerAnswer<'a>, PartitionId> {
        let event = archive.get();
        let (reply, applied) = match self.route_or_answer(event) {
            Ok(Route::Hold(partition)) => return Err(partition),
            Ok(Route::Local(local)) => {
                self.stats.events_applied_for_peers += 1;
                (self.apply(local, event), Some((local, archive.bytes())))
            }
            Ok(_) => {
                self.stats.events_moved += 1;
                (reply_to(event, self.moved(event)), None)
            }
            Err(outcome) => (reply_to(event, outcome), None),
        };
        self.stats.events.count(&event.kind, &reply.outcome);
        Ok((reply, applied))
    }

    /// Applies an event this shard routed to itself, and builds its reply. A token from before
    /// a placement change that moved its partition away is answered `Moved`.
    pub fn apply(&mut self, local: LocalEvent, event: &ArchivedEvent) -> Reply {
        let index = local.partition().index();
        let outcome = match self.partitions[index].as_mut() {
            Some(state) if matches!(self.routes[index], Route::Local(_)) => {
                state.count_applied();
                state.apply(event)
            }
            _ => self.moved(event),
        };
        reply_to(event, outcome)
    }
}

/// An event another shard or node sent, answered: its reply, and the partition and archive
/// to log (and stream, for a moving partition) when it was applied here.
pub(super) type PeerAnswer<'a> = (Reply, Option<(LocalEvent, &'a [u8])>);

/// The answer for an event of `partition` when nobody serves it now.
pub(super) fn unavailable(partition: PartitionId) -> Outcome {
    Outcome::Unavailable {
        partition: partition.0,
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
