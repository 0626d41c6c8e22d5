//! The glommio shell around the core: one pinned executor per shard, the cross-shard mesh,
//! the shard loop that feeds the core and drains its outputs, and each executor's [`stall`]
//! count. The start-up checks that say what to change when a host cannot run shards are
//! [`crate::host::preflight`]'s; [`executors::spawn_shards`] runs them first.
//!
//! Nothing here reads or writes client sockets (the only socket is each shard's stop signal):
//! the network layer (`net`) hands each shard its listeners through
//! [`executors::spawn_shards`] and talks to it through [`shard::Shard`]'s methods and the
//! [`shard::ReplySink`] trait. No locks and no atomics shared between shards: a shard's
//! state is `Rc`/`RefCell` on its own core, and only [`mesh::MeshBatch`]es cross cores.

pub mod config;
pub mod executors;
pub mod mesh;
pub mod shard;
pub mod stall;
pub mod wait;
