//! The partitioner and the partition → shard table.
//!
//! A cluster has a fixed, power-of-two number of partitions `P`, chosen when it is created and
//! never changed: `partition = xxh3(hunt) & (P - 1)`. Which shard owns a partition is an
//! explicit table, not arithmetic, so partitions can move without keys being re-hashed. Each
//! shard holds its own copy of the table (a shard view); clients get one from any shard.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

use crate::constants::{PARTITIONS_MAX, SHARDS_MAX};
use crate::core::ids::{HuntId, PartitionId, ShardId};
use crate::core::message::{ArchivedPartitionMapMessage, PartitionMapMessage};

/// Why a partition map could not be built or accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The partition count is not a power of two between 1 and `PARTITIONS_MAX`.
    BadPartitionCount(u64),
    /// The shard count is not between 1 and `SHARDS_MAX`.
    BadShardCount(u64),
    /// A partition is owned by a shard the map does not list.
    UnknownOwner { partition: u32, owner: u16 },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::BadPartitionCount(count) => write!(
                f,
                "{count} partitions: the count must be a power of two from 1 to {PARTITIONS_MAX}"
            ),
            MapError::BadShardCount(count) => {
                write!(
                    f,
                    "{count} shards: the count must be from 1 to {SHARDS_MAX}"
                )
            }
            MapError::UnknownOwner { partition, owner } => {
                write!(
                    f,
                    "partition {partition} is owned by shard {owner}, which the map does not list"
                )
            }
        }
    }
}

impl std::error::Error for MapError {}

/// Maps a hunt to its partition. Stable: the same hunt always lands in the same partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitioner {
    mask: u32,
}

impl Partitioner {
    pub fn new(partitions: u32) -> Result<Partitioner, MapError> {
        if partitions == 0 || partitions > PARTITIONS_MAX || !partitions.is_power_of_two() {
            return Err(MapError::BadPartitionCount(u64::from(partitions)));
        }
        Ok(Partitioner {
            mask: partitions - 1,
        })
    }

    /// The partition that owns `hunt`.
    #[inline]
    pub fn partition_of(&self, hunt: HuntId) -> PartitionId {
        PartitionId(xxh3_64(&hunt.0.to_le_bytes()) as u32 & self.mask)
    }

    /// How many partitions there are.
    pub fn partitions(&self) -> u32 {
        self.mask + 1
    }
}

/// Which shard owns each partition, and the map's epoch. One copy per shard and per client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMap {
    epoch: u32,
    partitioner: Partitioner,
    owners: Vec<ShardId>,
    shards: u16,
}

impl PartitionMap {
    /// Deals `partitions` out to `shards` in turn: partition `p` goes to shard `p % shards`.
    pub fn round_robin(partitions: u32, shards: usize) -> Result<PartitionMap, MapError> {
        let partitioner = Partitioner::new(partitions)?;
        if shards == 0 || shards > SHARDS_MAX {
            return Err(MapError::BadShardCount(shards as u64));
        }
        let owners = (0..partitions)
            .map(|p| ShardId((p as usize % shards) as u16))
            .collect();
        Ok(PartitionMap {
            epoch: 1,
            partitioner,
            owners,
            shards: shards as u16,
        })
    }

    /// Accepts a map a node sent, checking every entry.
    pub fn from_message(message: &ArchivedPartitionMapMessage) -> Result<PartitionMap, MapError> {
        let shards = message.shard_ports.len();
        if shards == 0 || shards > SHARDS_MAX {
            return Err(MapError::BadShardCount(shards as u64));
        }
        let partitioner = Partitioner::new(message.owners.len() as u32)?;
        let mut owners = Vec::with_capacity(message.owners.len());
        for (partition, owner) in message.owners.iter().enumerate() {
            let owner = owner.to_native();
            if usize::from(owner) >= shards {
                return Err(MapError::UnknownOwner {
                    partition: partition as u32,
                    owner,
                });
            }
            owners.push(ShardId(owner));
        }
        Ok(PartitionMap {
            epoch: message.epoch.to_native(),
            partitioner,
            owners,
            shards: shards as u16,
        })
    }

    /// The map as a message, with the port each shard listens on.
    pub fn to_message(&self, shard_ports: &[u16]) -> PartitionMapMessage {
        assert_eq!(shard_ports.len(), self.shards(), "one port per shard");
        PartitionMapMessage {
            epoch: self.epoch,
            owners: self.owners.iter().map(|owner| owner.0).collect(),
            shard_ports: shard_ports.to_vec(),
        }
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn partitioner(&self) -> Partitioner {
        self.partitioner
    }

    pub fn partitions(&self) -> u32 {
        self.partitioner.partitions()
    }

    /// How many shards the map spreads partitions over.
    pub fn shards(&self) -> usize {
        usize::from(self.shards)
    }

    /// The shard that owns `partition`.
    #[inline]
    pub fn owner_of_partition(&self, partition: PartitionId) -> ShardId {
        self.owners[partition.index()]
    }

    /// The partition of `hunt` and the shard that owns it.
    #[inline]
    pub fn route(&self, hunt: HuntId) -> (PartitionId, ShardId) {
        let partition = self.partitioner.partition_of(hunt);
        (partition, self.owner_of_partition(partition))
    }

    /// The partitions `shard` owns, in order.
    pub fn partitions_of(&self, shard: ShardId) -> impl Iterator<Item = PartitionId> + '_ {
        self.owners
            .iter()
            .enumerate()
            .filter(move |(_, owner)| **owner == shard)
            .map(|(partition, _)| PartitionId(partition as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partition_counts_must_be_powers_of_two() {
        assert!(Partitioner::new(1024).is_ok());
        assert!(Partitioner::new(1).is_ok());
        assert_eq!(Partitioner::new(0), Err(MapError::BadPartitionCount(0)));
        assert_eq!(
            Partitioner::new(1000),
            Err(MapError::BadPartitionCount(1000))
        );
        assert!(Partitioner::new(PARTITIONS_MAX * 2).is_err());
    }

    #[test]
    fn the_hash_is_the_documented_one() {
        // The partition of a hunt is part of the wire contract: clients compute it too.
        let partitioner = Partitioner::new(1024).unwrap();
        let hunt = HuntId(42);
        let expected = xxh3_64(&42u64.to_le_bytes()) as u32 & 1023;
        assert_eq!(partitioner.partition_of(hunt), PartitionId(expected));
    }

    #[test]
    fn round_robin_spreads_evenly_and_round_trips_as_a_message() {
        let map = PartitionMap::round_robin(1024, 3).unwrap();
        let counts: Vec<usize> = (0..3)
            .map(|s| map.partitions_of(ShardId(s)).count())
            .collect();
        assert_eq!(counts, vec![342, 341, 341]);
        let message = map.to_message(&[7001, 7002, 7003]);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&message).unwrap();
        let archived =
            rkyv::access::<ArchivedPartitionMapMessage, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(PartitionMap::from_message(archived).unwrap(), map);
    }

    #[test]
    fn a_map_naming_an_unknown_shard_is_refused() {
        let message = PartitionMapMessage {
            epoch: 1,
            owners: vec![0, 2],
            shard_ports: vec![1, 2],
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&message).unwrap();
        let archived =
            rkyv::access::<ArchivedPartitionMapMessage, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(
            PartitionMap::from_message(archived),
            Err(MapError::UnknownOwner {
                partition: 1,
                owner: 2
            })
        );
    }

    proptest! {
        #[test]
        fn the_partitioner_is_stable_and_in_range(hunt in any::<u64>(), log2 in 0u32..=14) {
            let partitions = 1u32 << log2;
            let first = Partitioner::new(partitions).unwrap().partition_of(HuntId(hunt));
            let again = Partitioner::new(partitions).unwrap().partition_of(HuntId(hunt));
            prop_assert_eq!(first, again);
            prop_assert!(first.0 < partitions);
            // Halving the count folds partitions onto their low bits: the hash never changes.
            if partitions > 1 {
                let half = Partitioner::new(partitions / 2).unwrap().partition_of(HuntId(hunt));
                prop_assert_eq!(half.0, first.0 & (partitions / 2 - 1));
            }
        }

        #[test]
        fn every_partition_has_exactly_one_owner(log2 in 0u32..=12, shards in 1usize..=64) {
            let map = PartitionMap::round_robin(1 << log2, shards).unwrap();
            let owned: usize = (0..shards).map(|s| map.partitions_of(ShardId(s as u16)).count()).sum();
            prop_assert_eq!(owned, 1usize << log2);
        }
    }
}
