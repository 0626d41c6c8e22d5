//! Monitoring: what shards count, carried to the node's housekeeping thread and served to
//! Prometheus; and the scraper that `trove top` and `trove bench --target` read it back with.
//!
//! The path of a number:
//! - a shard keeps plain counters and HdrHistograms on its own core (never shared while it runs);
//! - about once a second a task on that shard copies them into a [`ShardSnapshot`], with the
//!   events applied to each partition it owns ([`ShardReport`]), and offers that to a bounded
//!   channel ([`SnapshotSender::offer`]): it never waits, and a full channel drops the report
//!   and counts the drop;
//! - the node's housekeeping thread ([`Housekeeping`], a plain std thread, not a shard) keeps the
//!   latest snapshot of each shard and answers `GET /metrics` with the Prometheus text format
//!   ([`exposition`]), through a small bounded HTTP/1.1 responder ([`http`]);
//! - [`scrape`] fetches and parses that text again, for tools.
//!
//! Labels are `node`, `shard`, `stage` (and `kind`/`outcome`, `partition` where they apply),
//! never a hunt or a player id. Cluster families come from the control thread when the node runs in a
//! cluster ([`ClusterGauges`]); the store's come with the store.

pub mod exposition;
pub mod housekeeping;
pub mod http;
pub mod scrape;
pub mod snapshot;

pub use exposition::ClusterGauges;
pub use housekeeping::{Housekeeping, MetricsListen, NodeInfo};
pub use snapshot::{
    ClassicHistogram, CreditGauge, PartitionApplied, ShardCounters, ShardGauges, ShardReport,
    ShardSnapshot, SnapshotSender, snapshot_channel,
};
