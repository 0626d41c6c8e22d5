//! How shards are laid out and budgeted: the runtime's half of a node's configuration.
//!
//! Built once on the thread that starts a node, checked against the limits in `constants`,
//! then copied into every shard.

use std::fmt;
use std::time::Duration;

use crate::constants::{
    CONNECTION_EVENTS_INFLIGHT_DEFAULT, CONNECTION_EVENTS_INFLIGHT_MAX, CONNECTION_IDLE_MS_DEFAULT,
    CONNECTION_IDLE_MS_MAX, CONNECTION_SHARES_PER_SHARD_MIN, CONNECTIONS_PER_SHARD_MAX,
    CONNECTIONS_PER_SOURCE_DEFAULT, EVENT_BYTES_MAX, FRAME_ARRIVAL_MS_DEFAULT,
    FRAME_ARRIVAL_MS_MAX, MESH_BYTES_INFLIGHT_MAX, MESH_EVENTS_INFLIGHT_MAX, PARTITIONS_DEFAULT,
    SHARD_BYTES_INFLIGHT_MAX, SHARD_EVENTS_INFLIGHT_MAX, SHARDS_MAX, SHED_TARGET_MS_DEFAULT,
    SHED_TARGET_MS_MAX, SPIN_BEFORE_PARK_US_MAX, STALL_THRESHOLD_MS_DEFAULT,
    STALL_THRESHOLD_MS_MAX, WRITE_STALL_MS_DEFAULT, WRITE_STALL_MS_MAX,
};
use crate::core::credit::Credit;
use crate::core::ids::{NodeId, ShardId};
use crate::core::partition::{MapError, Partitioner};
use crate::host::affinity::allowed_cpus;
use crate::host::cpuset::CpuSet;

/// Budgets of work in flight. Each is at most its `*_MAX` in `constants` and at least one
/// event of the largest size, so no single event can wait for credit that never comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Events a shard accepts from its sockets before their replies are written.
    pub shard_events: u32,
    /// Event bytes a shard accepts from its sockets before their replies are written.
    pub shard_bytes: u32,
    /// Events one connection may have in flight.
    pub connection_events: u32,
    /// Events a receiving shard holds for all other shards together.
    pub mesh_events: u32,
    /// Event bytes a receiving shard holds for all other shards together.
    pub mesh_bytes: u32,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            shard_events: SHARD_EVENTS_INFLIGHT_MAX,
            shard_bytes: SHARD_BYTES_INFLIGHT_MAX,
            connection_events: CONNECTION_EVENTS_INFLIGHT_DEFAULT,
            mesh_events: MESH_EVENTS_INFLIGHT_MAX,
            mesh_bytes: MESH_BYTES_INFLIGHT_MAX,
        }
    }
}

impl Budget {
    /// The shard's socket budget.
    pub fn shard(&self) -> Credit {
        Credit::new(self.shard_events, self.shard_bytes)
    }

    /// One connection's share of the socket budget: its events, and bytes in proportion to
    /// [`CONNECTION_SHARES_PER_SHARD_MIN`] (at least one event of the largest size).
    pub fn connection(&self) -> Credit {
        Credit::new(
            self.connection_events,
            (self.shard_bytes / CONNECTION_SHARES_PER_SHARD_MIN).max(EVENT_BYTES_MAX as u32),
        )
    }

    /// What one source shard may have in flight at a receiving shard of a node with `shards`
    /// shards: an equal share of the receiver's mesh budget.
    pub fn mesh_per_source(&self, shards: usize) -> Credit {
        let sources = shards.saturating_sub(1).max(1) as u32;
        Credit::new(
            (self.mesh_events / sources).max(1),
            (self.mesh_bytes / sources).max(EVENT_BYTES_MAX as u32),
        )
    }

    fn check(&self) -> Result<(), ConfigError> {
        let checks = [
            (
                "shard events in flight",
                self.shard_events,
                1,
                SHARD_EVENTS_INFLIGHT_MAX,
            ),
            (
                "shard bytes in flight",
                self.shard_bytes,
                EVENT_BYTES_MAX as u32,
                SHARD_BYTES_INFLIGHT_MAX,
            ),
            (
                "connection events in flight",
                self.connection_events,
                1,
                CONNECTION_EVENTS_INFLIGHT_MAX,
            ),
            (
                "mesh events in flight",
                self.mesh_events,
                SHARDS_MAX as u32,
                MESH_EVENTS_INFLIGHT_MAX,
            ),
            (
                "mesh bytes in flight",
                self.mesh_bytes,
                (SHARDS_MAX * EVENT_BYTES_MAX) as u32,
                MESH_BYTES_INFLIGHT_MAX,
            ),
        ];
        for (name, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::BudgetOutOfRange {
                    name,
                    value,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }
}

/// A deliberate slowdown of one shard, for tests of back-pressure: it spins this long per
/// event it applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyDelay {
    pub shard: ShardId,
    pub per_event: Duration,
}

/// The runtime's configuration: where shards run and how much they take on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// One shard per entry, pinned to that CPU. A CPU may appear twice (two shards share it).
    pub cpus: Vec<usize>,
    /// Partition count: a power of two.
    pub partitions: u32,
    pub budget: Budget,
    /// Answer `Busy` when out of credit instead of waiting.
    pub fail_fast: bool,
    /// For back-pressure tests only: slow one shard down.
    pub apply_delay: Option<ApplyDelay>,
    /// For fail-stop tests only: this shard panics as soon as it serves.
    pub panic_shard: Option<ShardId>,
    /// An idle shard spins this long before it parks in io_uring: lower wake-up latency for
    /// cores that have nothing else to do (isolated CPUs), stolen time on shared ones.
    pub spin_before_park: Option<Duration>,
    /// The port each shard listens on, for the partition map clients ask for. Set by the
    /// node once it has bound them; empty (zeros in the map) for shards without sockets.
    pub shard_ports: Vec<u16>,
    /// A task that runs this long without yielding counts as a stall (see
    /// [`crate::runtime::stall`]); `None` turns stall detection off.
    pub stall_threshold: Option<Duration>,
    /// A connection with nothing in flight that stays silent this long is closed.
    pub idle_timeout: Duration,
    /// Replies that wait this long for a socket that takes none of them close the connection.
    pub write_stall: Duration,
    /// This node's id in its cluster; `None` for a node on its own. A cluster node's shards
    /// start fenced and serve what its control thread confirms.
    pub cluster_node: Option<NodeId>,
    /// The cluster's name (`--cluster-name`), for the handshake of the links between its
    /// nodes; `None` for a node on its own, which accepts no links.
    pub cluster_name: Option<String>,
    /// A frame whose first byte was read must arrive whole within this.
    pub frame_arrival: Duration,
    /// Connections one source address may hold open at one shard.
    pub connections_per_source_max: usize,
    /// In fail-fast mode, the wait before dispatch past which events of a standing queue are
    /// answered `Busy` (see `core::shard::shedding`).
    pub shed_target: Duration,
    /// Where each shard logs what it applies, and when replies wait for the log; `None`
    /// keeps everything in memory only.
    pub store: Option<crate::runtime::store::StoreConfig>,
    /// Where every shard sends its live-move reports (`core::shard::MoveReport`) for the
    /// node's control thread; none for a single node (its shards keep them, bounded).
    pub move_reports: MoveReports,
}

/// The channel shards send their move reports on (a shard that finds it full keeps the
/// report and tries again after its next loop pass). Two are equal when they are the same
/// channel.
#[derive(Clone, Debug, Default)]
pub struct MoveReports(pub Option<flume::Sender<crate::core::shard::MoveReport>>);

impl PartialEq for MoveReports {
    fn eq(&self, other: &MoveReports) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(one), Some(other)) => one.same_channel(other),
            _ => false,
        }
    }
}

impl Eq for MoveReports {}

impl RuntimeConfig {
    /// A shard on each CPU this process may run on.
    pub fn on_cpus(cpus: Vec<usize>) -> RuntimeConfig {
        RuntimeConfig {
            cpus,
            partitions: PARTITIONS_DEFAULT,
            budget: Budget::default(),
            fail_fast: false,
            apply_delay: None,
            panic_shard: None,
            spin_before_park: None,
            shard_ports: Vec::new(),
            stall_threshold: Some(Duration::from_millis(STALL_THRESHOLD_MS_DEFAULT)),
            idle_timeout: Duration::from_millis(CONNECTION_IDLE_MS_DEFAULT),
            write_stall: Duration::from_millis(WRITE_STALL_MS_DEFAULT),
            cluster_node: None,
            cluster_name: None,
            frame_arrival: Duration::from_millis(FRAME_ARRIVAL_MS_DEFAULT),
            connections_per_source_max: CONNECTIONS_PER_SOURCE_DEFAULT,
            shed_target: Duration::from_millis(SHED_TARGET_MS_DEFAULT),
            store: None,
            move_reports: MoveReports::default(),
        }
    }

    pub fn shards(&self) -> usize {
        self.cpus.len()
    }

    /// Checks the configuration against the limits and this process's CPUs.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.cpus.is_empty() || self.cpus.len() > SHARDS_MAX {
            return Err(ConfigError::ShardCount(self.cpus.len()));
        }
        let allowed = allowed_cpus();
        if let Some(&cpu) = self.cpus.iter().find(|cpu| !allowed.contains(cpu)) {
            return Err(ConfigError::CpuNotAllowed { cpu, allowed });
        }
        Partitioner::new(self.partitions).map_err(ConfigError::Partitions)?;
        if let Some(spin) = self.spin_before_park {
            if spin > Duration::from_micros(SPIN_BEFORE_PARK_US_MAX) {
                return Err(ConfigError::SpinTooLong(spin));
            }
        }
        if let Some(threshold) = self.stall_threshold {
            if threshold > Duration::from_millis(STALL_THRESHOLD_MS_MAX) {
                return Err(ConfigError::StallThresholdTooLong(threshold));
            }
        }
        let timeouts = [
            ("idle timeout", self.idle_timeout, CONNECTION_IDLE_MS_MAX),
            ("write-stall timeout", self.write_stall, WRITE_STALL_MS_MAX),
            (
                "frame-arrival time",
                self.frame_arrival,
                FRAME_ARRIVAL_MS_MAX,
            ),
            ("shedding target", self.shed_target, SHED_TARGET_MS_MAX),
        ];
        for (name, value, max_ms) in timeouts {
            let ms = value.as_millis();
            if ms == 0 || ms > u128::from(max_ms) {
                return Err(ConfigError::TimeoutOutOfRange { name, ms, max_ms });
            }
        }
        if !(1..=CONNECTIONS_PER_SHARD_MAX).contains(&self.connections_per_source_max) {
            return Err(ConfigError::ConnectionsPerSourceOutOfRange(
                self.connections_per_source_max,
            ));
        }
        self.budget.check()
    }
}

/// One CPU per shard: the first `shards` CPUs of the affinity mask, starting over when there
/// are more shards than CPUs; every CPU of the mask when `shards` is not given.
pub fn shard_cpus(shards: Option<usize>) -> Vec<usize> {
    let allowed = allowed_cpus();
    match shards {
        Some(shards) => allowed.iter().copied().cycle().take(shards).collect(),
        None => allowed,
    }
}

/// A configuration that cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    ShardCount(usize),
    CpuNotAllowed {
        cpu: usize,
        allowed: Vec<usize>,
    },
    Partitions(MapError),
    BudgetOutOfRange {
        name: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    SpinTooLong(Duration),
    StallThresholdTooLong(Duration),
    /// A port cannot be used: past 65535, or already served by another process.
    Ports(String),
    /// The data dir cannot be used: another node's, or a damaged log (the message says which
    /// file and what to do).
    DataDir(String),
    TimeoutOutOfRange {
        name: &'static str,
        ms: u128,
        max_ms: u64,
    },
    ConnectionsPerSourceOutOfRange(usize),
    /// The cluster settings cannot work together (the message says what to change).
    Cluster(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ShardCount(count) => {
                write!(
                    f,
                    "{count} shards: a node runs from 1 to {SHARDS_MAX} shards"
                )
            }
            ConfigError::CpuNotAllowed { cpu, allowed } => write!(
                f,
                "CPU {cpu} is not in this process's affinity mask ({}); pick CPUs from it, or widen the mask (taskset, systemd CPUAffinity=)",
                CpuSet::from_cpus(allowed.iter().copied())
            ),
            ConfigError::Partitions(error) => write!(f, "{error}"),
            ConfigError::Ports(reason)
            | ConfigError::DataDir(reason)
            | ConfigError::Cluster(reason) => {
                write!(f, "{reason}")
            }
            ConfigError::TimeoutOutOfRange { name, ms, max_ms } => write!(
                f,
                "an {name} of {ms} ms is out of range: it must be from 1 to {max_ms} ms"
            ),
            ConfigError::ConnectionsPerSourceOutOfRange(value) => write!(
                f,
                "--connections-per-source-max {value} is out of range: it must be from 1 to {CONNECTIONS_PER_SHARD_MAX} (the connections one shard serves)"
            ),
            ConfigError::SpinTooLong(spin) => write!(
                f,
                "spinning {} µs before parking is more than the limit of {SPIN_BEFORE_PARK_US_MAX} µs",
                spin.as_micros()
            ),
            ConfigError::StallThresholdTooLong(threshold) => write!(
                f,
                "a stall threshold of {} ms is more than the limit of {STALL_THRESHOLD_MS_MAX} ms",
                threshold.as_millis()
            ),
            ConfigError::BudgetOutOfRange {
                name,
                value,
                min,
                max,
            } => {
                write!(
                    f,
                    "{name} = {value} is out of range: it must be from {min} to {max}"
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_outside_their_limits_are_refused_by_name() {
        let mut config = RuntimeConfig::on_cpus(vec![allowed_cpus()[0]]);
        assert_eq!(config.check(), Ok(()));
        config.budget.shard_events = SHARD_EVENTS_INFLIGHT_MAX + 1;
        match config.check() {
            Err(ConfigError::BudgetOutOfRange { name, .. }) => {
                assert_eq!(name, "shard events in flight")
            }
            other => panic!("expected a budget error, got {other:?}"),
        }
    }

    #[test]
    fn cpus_outside_the_mask_are_refused() {
        let config = RuntimeConfig::on_cpus(vec![libc::CPU_SETSIZE as usize - 1]);
        assert!(matches!(
            config.check(),
            Err(ConfigError::CpuNotAllowed { .. })
        ));
    }

    #[test]
    fn mesh_shares_shrink_with_the_shard_count() {
        let budget = Budget::default();
        assert_eq!(budget.mesh_per_source(2).events, MESH_EVENTS_INFLIGHT_MAX);
        assert_eq!(
            budget.mesh_per_source(5).events,
            MESH_EVENTS_INFLIGHT_MAX / 4
        );
        assert!(budget.mesh_per_source(SHARDS_MAX).bytes >= EVENT_BYTES_MAX as u32);
    }
}
