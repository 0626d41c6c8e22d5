//! Identifiers as newtypes, so a hunt is never mistaken for a player or a shard for a node.
//!
//! Hunt, player and treasure ids are chosen by clients and travel on the wire inside rkyv
//! archives; partition, shard and node ids are assigned by the engine. All are plain `Copy`
//! values, valid on any core.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

macro_rules! wire_id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        #[rkyv(derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord), compare(PartialEq))]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

wire_id!(
    /// A hunt, chosen by its organiser. Its hash decides the partition that owns it.
    HuntId(u64)
);
wire_id!(
    /// A player, unique within the hunts it joins.
    PlayerId(u64)
);
wire_id!(
    /// A treasure: its index in the hunt's list of treasures.
    TreasureId(u32)
);

impl ArchivedHuntId {
    /// The native id this archive holds.
    pub fn get(&self) -> HuntId {
        HuntId(self.0.to_native())
    }
}

impl ArchivedPlayerId {
    /// The native id this archive holds.
    pub fn get(&self) -> PlayerId {
        PlayerId(self.0.to_native())
    }
}

impl ArchivedTreasureId {
    /// The native id this archive holds.
    pub fn get(&self) -> TreasureId {
        TreasureId(self.0.to_native())
    }
}

/// A partition: `xxh3(hunt) & (P - 1)`. Fixed for the life of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub u32);

/// A shard: one CPU core of one node, and the index of its executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// A node: one trove process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl ShardId {
    /// The shard as an index into per-shard tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl PartitionId {
    /// The partition as an index into per-partition tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}
