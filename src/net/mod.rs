//! The network layer: listening sockets (socket2, handed to glommio) and the read and write
//! loops of client connections with their aligned receive buffers, over plain TCP or TLS.
//!
//! Everything here runs on a shard's executor and is I/O only: bytes are decoded into frames
//! and handed to the shard's core through `runtime::shard::Shard`, and the replies the core
//! queues are written back. The core never names a socket.

mod auth;
mod connection;
mod link;
pub mod listener;
mod sojourn;
pub mod tls;
mod transport;
