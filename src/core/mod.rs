//! The sans-IO core: everything about trove that is not threads, sockets or clocks.
//!
//! Identifiers and epochs, the wire messages and their frame codec, the partitioner and the
//! placement, the treasure-hunt state machine, credit accounting and the shard protocol
//! (`shard`: connections, admission, dispatch, forwarding, reply routing, stop). Inputs come in as calls,
//! outputs go out as return values; nothing here blocks, spawns, reads a clock or touches the
//! network, so all of it is tested deterministically and the simulator drives the very same
//! code. A tidy test (`linux-tests/tidy.rs`) keeps it that way.

pub mod auth;
pub mod codec;
pub mod credit;
pub mod hunt;
pub mod ids;
pub mod message;
pub mod partition;
pub mod partition_sessions;
pub mod rng;
pub mod shard;
pub mod snapshot;
