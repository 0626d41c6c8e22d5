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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub u32);

/// The version of a placement (or of one partition's ownership): it only grows. A frame carries
/// its sender's placement epoch, so a receiver can tell a sender that is behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Epoch(pub u32);

impl Epoch {
    /// The epoch as it travels in a frame header.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// A client connection of one shard: a slot in the shard's connection table and the
/// generation that tells apart connections that used the slot at different times. Only
/// meaningful on the shard that issued it (a reply forwarded back names it on its home shard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    slot: u32,
    generation: u32,
}

impl ConnectionId {
    pub fn new(slot: u32, generation: u32) -> ConnectionId {
        ConnectionId { slot, generation }
    }

    /// The slot, as an index into per-connection tables of the shell.
    pub fn slot(self) -> usize {
        self.slot as usize
    }

    pub fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection {}.{}", self.slot, self.generation)
    }
}

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
