//! Facts about the machine trove runs on, read in one place and used by the node, the bench
//! and the tuning checks.
//!
//! - [`cpuset`]: CPU sets in the kernel's list syntax, the one parser of CPU lists;
//! - [`affinity`]: the CPUs this process may use, and pinning a thread to one of them;
//! - [`preflight`]: can this process run glommio executors (io_uring, `RLIMIT_MEMLOCK`)?
//! - [`tree`]: a host's `/proc` and `/sys` under a root (the live machine or a recorded tree);
//! - [`topology`]: online CPUs grouped into cores and NUMA nodes, and the shard/housekeeping split;
//! - [`fingerprint`]: the facts that move latency figures, recorded in every bench summary.
//!
//! Process-wide facts, read on whichever thread asks (start-up, the bench's coordinating
//! thread, `trove tune`); nothing here lives on a shard. It depends on `constants` only, plus
//! std and libc (and `core_affinity` for the affinity mask; the fingerprint is a serde type
//! with an xxh3 key because bench summaries store it).

pub mod affinity;
pub mod cpuset;
pub mod fingerprint;
pub mod preflight;
pub mod topology;
pub mod tree;
