//! The glommio shell around the core: one pinned executor per shard, the cross-shard mesh,
//! the shard loop, and the start-up checks that say what to change when a host cannot run it.

pub mod preflight;
