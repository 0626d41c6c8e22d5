//! Cluster coordination: who is alive, who is controller, and which node and shard owns each
//! partition, decided through etcd.
//!
//! - [`placement`]: the placement (owners and epochs) and the sticky rendezvous rule;
//! - [`keys`]: the cluster's etcd keys and the node record;
//! - [`flags`]: `--cluster` and `--cluster-name`, the flags `trove node` and `trove top` share;
//! - [`coordinator`]: the sans-IO [`coordinator::Coordinator`] (leases, controller, placement
//!   writes, self-fencing), driven by requests and replies and a `now_ns`;
//! - [`model`]: a sans-IO model of etcd for tests and the simulator;
//! - [`etcd`]: the HTTP/1.1 client of etcd's JSON gateway (ureq, blocking);
//! - [`feed`]: what the control thread tells the node's shards (placement and lease), a rule
//!   the simulator shares;
//! - [`control`]: the node's control thread, which drives a coordinator against etcd and
//!   publishes what the node may serve;
//! - [`status`]: what `trove cluster status` reads and shows;
//! - [`rebalance`]: the operator's plans (rebalance by count or load, a drain's destinations);
//! - [`operator`]: `trove cluster move|drain|rebalance`: write pins, drains and settings to
//!   etcd and follow the moves the controller makes;
//! - [`local`]: a local cluster on loopback (an etcd and node processes) for `trove cluster up`
//!   and the integration tests.
//!
//! The coordinator, placement, keys and model are plain values usable on any thread; the etcd
//! client and the control thread are the I/O shell and live on the control thread only, which
//! is not a shard and never waits on one.

pub mod control;
pub mod coordinator;
pub mod etcd;
pub mod feed;
pub mod flags;
pub mod keys;
pub mod local;
pub mod model;
pub mod operator;
pub mod placement;
pub mod rebalance;
pub mod status;
