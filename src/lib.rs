//! trove: a thread-per-core, io_uring event engine for live treasure hunts.
//!
//! # The problem
//!
//! A treasure-hunt engine built on a general event framework worked on a few nodes and
//! collapsed past fifteen: every event was distributed to every node, queues overflowed, and
//! busy nodes stopped answering heartbeats and were declared dead. Tuning only moved the wall.
//! What fixed it was an architecture: send each event only where it is owned, bound every
//! queue, and measure every stage. trove is that architecture, built as a product.
//!
//! # The design
//!
//! Every event belongs to a hunt; every hunt hashes to one of a fixed number of partitions;
//! every partition is owned by exactly one shard, and a shard is one CPU core running one
//! glommio executor. A shard applies the events of its partitions in order, with no locks,
//! because nothing else touches them. Events are archived once with rkyv by the client, and
//! the same bytes travel from the socket to the owning core, where the state machine reads
//! them in place. When a core is busy, its credit runs out, it stops reading its sockets, and
//! TCP carries the pressure back to the client; nothing queues without bound.
//!
//! # The layers
//!
//! Dependencies point inward:
//! - [`constants`]: every limit, and the node's worst-case memory as a sum;
//! - [`core`]: sans-IO: messages, codec, placement, state machine, credits, the shard protocol;
//! - [`runtime`], [`net`], [`client`]: the glommio shell, the sockets and the client;
//! - [`node`]: a node's composition root: shards and listeners from a config, and its report;
//! - [`host`]: facts about the machine (CPU sets, affinity, io_uring and memlock, topology);
//! - [`bench`] and [`cli`]: the tools built on top.

pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod constants;
pub mod core;
pub mod gate;
pub mod host;
pub mod metrics;
pub mod net;
pub mod node;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod tls;
pub mod top;
pub mod tune;
