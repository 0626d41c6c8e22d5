//! The network layer: sockets (socket2, handed to glommio), the node's listeners, and the read
//! and write loops of client connections with their aligned receive buffers.
//!
//! Everything here runs on a shard's executor and talks to the shard through
//! `runtime::shard::Shard`; the shard never names a socket.

mod connection;
mod metrics_bridge;
pub mod node;

pub use node::{Node, NodeConfig, NodeReport};
