//! The glommio shell around the core: one pinned executor per shard, the cross-shard mesh
//! channels, the tasks that feed each shard's `ShardCore` and drain its outputs, the wait
//! queues that wake them, and the start-up checks that say what to change when a host cannot
//! run it.
//!
//! Every decision is the core's (`core::shard`); this layer reads the clock, moves batches
//! and wakes tasks. The network layer (`net`) gets each shard's listeners through
//! [`executors::spawn_shards`] and drives a connection through [`shard::Shard`]'s methods. No
//! locks and no atomics shared between shards: a shard's state is `Rc`/`RefCell` on its own
//! core, and only `MeshBatch`es cross cores, on the channels of [`mesh`]. A cluster node's
//! control thread reaches its shards through [`control_feed`].

pub mod config;
pub mod control_feed;
pub mod executors;
pub mod link;
pub mod mesh;
pub mod shard;
pub mod stall;
pub mod store;
pub mod wait;
