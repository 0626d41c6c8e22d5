//! The store: each shard's write-ahead log, so that an answered event survives a crash.
//!
//! - [`format`]: the bytes on disk (segment header, records, reading a segment back);
//! - [`commit`]: group commit, sans-IO (which write and which sync next, what is durable);
//! - [`recovery`]: whether a segment belongs to the log, and where the log is cut or refused;
//! - [`snapfile`]: the bytes of a partition's snapshot file (header and rkyv archive);
//! - [`retention`]: when to snapshot which partition, which segments to delete, and whether
//!   the log is full (its disk bound).
//!
//! The decisions are here and in `core::shard::durability` (which replies wait for which
//! record); the I/O is the shell's, in `runtime::store`, with glommio's `DmaFile`.

pub mod commit;
pub mod format;
pub mod recovery;
pub mod retention;
pub mod snapfile;
