//! The sans-IO part of a shard: the partitions it owns and where each event goes.
//!
//! A [`ShardCore`] decides, for a validated event, whether this shard owns its partition
//! ([`Route::Local`]) or which shard does ([`Route::Remote`]), and applies the events it owns.
//! The runtime feeds it bytes from sockets and from the mesh; the simulator feeds it the same
//! way from virtual time. It lives on its shard's core, never elsewhere.

use crate::core::hunt::PartitionState;
use crate::core::ids::{PartitionId, ShardId};
use crate::core::message::{ArchivedEvent, Reply};
use crate::core::partition::PartitionMap;

/// Where an event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// This shard owns the partition: apply the event here.
    Local(PartitionId),
    /// Another shard owns it: forward the event's bytes there.
    Remote(ShardId),
}

/// One shard's partitions and its copy of the partition map (a shard view).
pub struct ShardCore {
    shard: ShardId,
    map: PartitionMap,
    /// Indexed by partition; `Some` exactly for the partitions this shard owns.
    partitions: Vec<Option<PartitionState>>,
}

impl ShardCore {
    pub fn new(shard: ShardId, map: PartitionMap) -> ShardCore {
        let mut partitions: Vec<Option<PartitionState>> =
            (0..map.partitions()).map(|_| None).collect();
        for partition in map.partitions_of(shard) {
            partitions[partition.index()] = Some(PartitionState::new(partition));
        }
        ShardCore {
            shard,
            map,
            partitions,
        }
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn map(&self) -> &PartitionMap {
        &self.map
    }

    /// Where `event` must be applied.
    #[inline]
    pub fn route(&self, event: &ArchivedEvent) -> Route {
        let (partition, owner) = self.map.route(event.hunt.get());
        if owner == self.shard {
            Route::Local(partition)
        } else {
            Route::Remote(owner)
        }
    }

    /// Applies an event whose partition this shard owns, and builds its reply.
    pub fn apply(&mut self, event: &ArchivedEvent) -> Reply {
        let partition = self.map.partitioner().partition_of(event.hunt.get());
        let state = self.partitions[partition.index()]
            .as_mut()
            .unwrap_or_else(|| {
                panic!(
                    "{} applied an event of {partition}, which it does not own",
                    self.shard
                )
            });
        let outcome = state.apply(event);
        Reply {
            client_seq: event.client_seq.to_native(),
            client_ts: event.client_ts.to_native(),
            outcome,
        }
    }

    /// The state of a partition this shard owns.
    pub fn partition(&self, partition: PartitionId) -> Option<&PartitionState> {
        self.partitions.get(partition.index())?.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{HuntId, PlayerId};
    use crate::core::message::{Event, EventKind, HuntSpec, Outcome};

    fn archived(event: &Event) -> rkyv::util::AlignedVec {
        rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap()
    }

    #[test]
    fn each_event_has_exactly_one_local_owner() {
        let map = PartitionMap::round_robin(64, 3).unwrap();
        let shards: Vec<ShardCore> = (0..3)
            .map(|s| ShardCore::new(ShardId(s), map.clone()))
            .collect();
        for hunt in 0..500 {
            let event = Event {
                hunt: HuntId(hunt),
                player: PlayerId(1),
                client_seq: 0,
                client_ts: 0,
                kind: EventKind::Join,
            };
            let bytes = archived(&event);
            let event = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
            let locals = shards
                .iter()
                .filter(|s| matches!(s.route(event), Route::Local(_)))
                .count();
            assert_eq!(locals, 1);
            let (_, owner) = map.route(HuntId(hunt));
            for shard in &shards {
                if shard.shard() != owner {
                    assert_eq!(shard.route(event), Route::Remote(owner));
                }
            }
        }
    }

    #[test]
    fn replies_echo_sequence_and_timestamp() {
        let map = PartitionMap::round_robin(8, 1).unwrap();
        let mut shard = ShardCore::new(ShardId(0), map);
        let event = Event {
            hunt: HuntId(5),
            player: PlayerId(1),
            client_seq: 77,
            client_ts: 1234,
            kind: EventKind::CreateHunt(HuntSpec::default()),
        };
        let bytes = archived(&event);
        let event = rkyv::access::<ArchivedEvent, rkyv::rancor::Error>(&bytes).unwrap();
        let reply = shard.apply(event);
        assert_eq!((reply.client_seq, reply.client_ts), (77, 1234));
        assert_eq!(reply.outcome, Outcome::Accepted { score: 0 });
    }
}
