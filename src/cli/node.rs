//! `trove node`: run a node until SIGINT or SIGTERM, then stop it cleanly.

use std::net::IpAddr;
use std::path::PathBuf;

use std::io::Write;
use std::time::Duration;

use clap::Args;

use crate::client::auth::read_secret_file;
use crate::constants::{
    CONNECTION_EVENTS_INFLIGHT_DEFAULT, CONNECTION_EVENTS_INFLIGHT_MAX, CONNECTION_IDLE_MS_DEFAULT,
    CONNECTIONS_PER_SOURCE_DEFAULT, FRAME_ARRIVAL_MS_DEFAULT, LOG_DISK_BYTES_PER_SHARD_MIN,
    LOG_DISK_MB_DEFAULT, LOG_DISK_MB_MAX, NodeMemory, PARTITIONS_DEFAULT, PORT_DEFAULT,
    SHARD_BYTES_INFLIGHT_MAX, SHARD_EVENTS_INFLIGHT_MAX, SHED_TARGET_MS_DEFAULT,
    SNAPSHOT_EVERY_MB_DEFAULT, SNAPSHOT_EVERY_MB_MAX, SNAPSHOT_EVERY_S_DEFAULT,
    SNAPSHOT_EVERY_S_MAX, WRITE_STALL_MS_DEFAULT,
};
use crate::core::ids::NodeId;
use crate::core::shard::Durability;
use crate::host::cpuset::CpuSet;
use crate::metrics::MetricsListen;
use crate::net::tls::{link_config, server_config};
use crate::node::{Node, NodeConfig};
use crate::runtime::config::{Budget, RuntimeConfig, shard_cpus};
use crate::runtime::executors::StartError;
use crate::runtime::store::{StoreConfig, StoreLimits};

/// Run a trove node: one shard per CPU, until SIGINT or SIGTERM.
///
/// Exit codes: 0 after a clean stop; 1 when this host cannot run the node (the message says what
/// to change); 2 for a usage error (a bad flag or a configuration that cannot work, including a
/// --data-dir of another node id, shard count or partition count, or a log damaged before its
/// tail: the message names the file and byte); 70 when a
/// shard thread died (fail-stop: one line on stderr names the shard and the reason, and the
/// whole node exits at once so that its supervisor restarts it).
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// CPUs to run shards on, one shard each, in the kernel's list syntax (0-3,8) [default: every CPU this process may use]
    #[arg(long, value_name = "LIST", conflicts_with = "shards")]
    pub cpus: Option<String>,
    /// Number of shards, on the first CPUs this process may use
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Address to listen on. Without a way to authenticate clients (--auth-secret-file, or
    /// --tls-client-ca) only a loopback address is allowed (unless --insecure-no-auth): anyone
    /// who reaches the port could play every hunt
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub listen: IpAddr,
    /// File holding the shared secret clients must prove they know (challenge-response; the
    /// secret never crosses the wire). A file, never a flag, because command lines are visible
    /// to every user of the host (ps, /proc/PID/cmdline) and kept in shell histories. At least
    /// 16 bytes; trailing whitespace is ignored. Make one with
    /// `head -c 32 /dev/urandom | base64 > secret && chmod 600 secret`
    #[arg(long, value_name = "PATH")]
    pub auth_secret_file: Option<PathBuf>,
    /// Listen on a non-loopback address without authentication: anyone who can reach the
    /// port can send events
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Speak TLS (1.3) on every client port, with this certificate chain (PEM, the node's own
    /// certificate first). Clients connect with `--tls-ca`. TLS encrypts and proves the node
    /// to clients; it lets any client in unless --tls-client-ca or --auth-secret-file is given.
    /// In a cluster, links between nodes speak TLS with it too (see --tls-client-ca)
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1)
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require every client to present a certificate signed by a CA in this PEM file (mutual
    /// TLS). Authenticates clients, so it allows a non-loopback --listen. In a cluster
    /// (--cluster) it is required with --tls-cert: links between nodes speak TLS, each
    /// checking its peer's certificate against this CA for the host the peer advertises, and
    /// presenting this node's --tls-cert as its client certificate; so give every node a
    /// certificate from the cluster's CA, valid for its advertised address and allowing both
    /// server and client authentication (extendedKeyUsage serverAuth, clientAuth)
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Port every shard accepts on (SO_REUSEPORT); 0 picks a free one
    #[arg(long, value_name = "N", default_value_t = PORT_DEFAULT)]
    pub port: u16,
    /// Shard i also listens on this port + i [default: the ports right after --port]
    #[arg(long, value_name = "N")]
    pub shard_port_base: Option<u16>,
    /// Partitions (a power of two, fixed for the life of the data)
    #[arg(long, value_name = "N", default_value_t = PARTITIONS_DEFAULT)]
    pub partitions: u32,
    /// Events a shard accepts before their replies are written (its back-pressure budget)
    #[arg(long, value_name = "N", default_value_t = SHARD_EVENTS_INFLIGHT_MAX)]
    pub shard_events_max: u32,
    /// Event bytes a shard accepts before their replies are written
    #[arg(long, value_name = "BYTES", default_value_t = SHARD_BYTES_INFLIGHT_MAX)]
    pub shard_bytes_max: u32,
    /// Events one connection may have in flight
    #[arg(long, value_name = "N", default_value_t = CONNECTION_EVENTS_INFLIGHT_DEFAULT)]
    pub connection_events_max: u32,
    /// Answer Busy when out of credit instead of making the client wait, and shed load: under
    /// a standing queue, events that waited longer than --shed-target-ms before they were read
    /// are answered Busy
    #[arg(long)]
    pub fail_fast: bool,
    /// With --fail-fast, the longest an event may wait in its socket before it is read, once
    /// waits have stayed past it for 100 ms (a burst shorter than that is served)
    #[arg(long, value_name = "MS", default_value_t = SHED_TARGET_MS_DEFAULT)]
    pub shed_target_ms: u64,
    /// Connections one source address may hold open at one shard; one more is refused with
    /// an error frame naming this limit. 128 (every slot of a shard) turns it off
    #[arg(long, value_name = "N", default_value_t = CONNECTIONS_PER_SOURCE_DEFAULT)]
    pub connections_per_source_max: usize,
    /// Close a connection that started a frame and has not sent all of it within this many ms
    #[arg(long, value_name = "MS", default_value_t = FRAME_ARRIVAL_MS_DEFAULT)]
    pub frame_arrival_ms: u64,
    /// Close a connection with nothing in flight after this many ms of silence
    #[arg(long, value_name = "MS", default_value_t = CONNECTION_IDLE_MS_DEFAULT)]
    pub idle_timeout_ms: u64,
    /// Close a connection whose socket takes none of its replies for this many ms
    #[arg(long, value_name = "MS", default_value_t = WRITE_STALL_MS_DEFAULT)]
    pub write_stall_ms: u64,
    /// An idle shard spins this many µs before it parks: faster wake-ups on isolated CPUs,
    /// stolen time on shared ones [default: 0, park at once]
    #[arg(long, value_name = "US")]
    pub spin_before_park_us: Option<u64>,
    #[command(flatten)]
    pub cluster: super::cluster::ClusterNodeArgs,
    /// Where to serve Prometheus metrics (GET /metrics), or `off`
    #[arg(long, value_name = "ADDR:PORT|off", default_value = "127.0.0.1:9700")]
    pub metrics_listen: MetricsListen,
    /// Log every event each shard applies to a write-ahead log in this directory, and replay
    /// it at start. Without it the node keeps everything in memory only: a crash or a stop
    /// loses every hunt, claim and score
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// With --data-dir: `sync` answers an event only once its log record is on disk
    /// (fdatasync), so a crash loses nothing that was answered; `async` answers at once and
    /// syncs behind, so a crash (of the process or the host) can lose the events answered
    /// since the last completed sync: at most 4096 events per shard
    /// (DURABILITY_ASYNC_UNSYNCED_EVENTS_MAX; past that, answers wait for the sync)
    #[arg(
        long,
        value_name = "MODE",
        default_value = "sync",
        requires = "data_dir"
    )]
    pub durability: DurabilityArg,
    /// At start, when a log is damaged before its tail, keep the records before the damage and
    /// discard the rest (moved aside as *.wal.discarded) instead of refusing to start
    #[arg(long, requires = "data_dir")]
    pub recover_truncate: bool,
    /// With --data-dir: each shard snapshots every partition that changed after this many MiB
    /// of log (at most one 64 MiB segment), so that older segments can be deleted
    #[arg(long, value_name = "MB", default_value_t = SNAPSHOT_EVERY_MB_DEFAULT, requires = "data_dir")]
    pub snapshot_every_mb: u64,
    /// With --data-dir: ... or this many seconds after its last round, when anything changed
    #[arg(long, value_name = "S", default_value_t = SNAPSHOT_EVERY_S_DEFAULT, requires = "data_dir")]
    pub snapshot_every_s: u64,
    /// With --data-dir: disk the log's segments and snapshots may use, shared equally by the
    /// shards (at least 192 MiB each). When a shard's share is full before a snapshot frees
    /// space, it answers new events Unavailable (LogFull) until one does. A disk that is full
    /// (ENOSPC) or fails (EIO) before that: new events are answered Unavailable (DiskFull,
    /// DiskFailed), answers already held wait for the retried write, and the shard retries by
    /// itself (every 10 ms to 1 s) and takes events again once the disk works
    #[arg(long, value_name = "MB", default_value_t = LOG_DISK_MB_DEFAULT, requires = "data_dir")]
    pub log_disk_max_mb: u64,
}

/// `--durability`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityArg {
    Sync,
    Async,
}

impl NodeArgs {
    /// The snapshot thresholds and each shard's disk bound, checked against their limits.
    fn store_limits(&self, shards: usize) -> Result<StoreLimits, String> {
        if !(1..=SNAPSHOT_EVERY_MB_MAX).contains(&self.snapshot_every_mb) {
            return Err(format!(
                "--snapshot-every-mb {} is out of range: it must be from 1 to {SNAPSHOT_EVERY_MB_MAX} (one log segment)",
                self.snapshot_every_mb
            ));
        }
        if !(1..=SNAPSHOT_EVERY_S_MAX).contains(&self.snapshot_every_s) {
            return Err(format!(
                "--snapshot-every-s {} is out of range: it must be from 1 to {SNAPSHOT_EVERY_S_MAX}",
                self.snapshot_every_s
            ));
        }
        let min_mb = (LOG_DISK_BYTES_PER_SHARD_MIN >> 20) * shards.max(1) as u64;
        if !(min_mb..=LOG_DISK_MB_MAX).contains(&self.log_disk_max_mb) {
            return Err(format!(
                "--log-disk-max-mb {} is out of range: with {shards} shards it must be from {min_mb} ({} MiB per shard: the segment being written, the one before it and room for the next) to {LOG_DISK_MB_MAX}",
                self.log_disk_max_mb,
                LOG_DISK_BYTES_PER_SHARD_MIN >> 20
            ));
        }
        Ok(StoreLimits {
            snapshot_every_bytes: self.snapshot_every_mb << 20,
            snapshot_every: Duration::from_secs(self.snapshot_every_s),
            disk_bytes_per_shard: (self.log_disk_max_mb << 20) / shards.max(1) as u64,
        })
    }

    /// The node configuration these flags describe.
    pub fn to_config(&self) -> Result<NodeConfig, String> {
        let cpus = match &self.cpus {
            Some(list) => parse_shard_cpus(list)?,
            None => shard_cpus(self.shards),
        };
        let auth = match &self.auth_secret_file {
            Some(path) => Some(read_secret_file(path)?),
            None => None,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(server_config(cert, key, self.tls_client_ca.as_deref())?)
            }
            _ => None,
        };
        // Only a cluster node has links; it checks its own certificate as a client's at start.
        let link_tls = match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(cert), Some(key), Some(ca)) if self.cluster.joins() => {
                Some(link_config(cert, key, ca)?)
            }
            _ => None,
        };
        // TLS alone proves the node to its clients, not the clients to the node: only a
        // secret or client certificates let a node off loopback.
        let authenticates = auth.is_some() || self.tls_client_ca.is_some();
        if !authenticates && !self.listen.is_loopback() && !self.insecure_no_auth {
            let tls_note = if tls.is_some() {
                " (TLS without --tls-client-ca encrypts, but lets any client in)"
            } else {
                ""
            };
            return Err(format!(
                "refusing to listen on {} without authentication{tls_note}: give --auth-secret-file PATH or --tls-client-ca PATH, listen on 127.0.0.1, or pass --insecure-no-auth to let anyone who reaches the port in",
                self.listen
            ));
        }
        // Checked as given, before it is capped to the shard's budget below.
        if !(1..=CONNECTION_EVENTS_INFLIGHT_MAX).contains(&self.connection_events_max) {
            return Err(format!(
                "--connection-events-max {} is out of range: it must be from 1 to {CONNECTION_EVENTS_INFLIGHT_MAX}",
                self.connection_events_max
            ));
        }
        let budget = Budget {
            shard_events: self.shard_events_max,
            shard_bytes: self.shard_bytes_max,
            connection_events: self.connection_events_max.min(self.shard_events_max),
            ..Budget::default()
        };
        let limits = self.store_limits(cpus.len())?;
        let store = self.data_dir.as_ref().map(|dir| StoreConfig {
            dir: dir.clone(),
            durability: match self.durability {
                DurabilityArg::Sync => Durability::Sync,
                DurabilityArg::Async => Durability::Async,
            },
            recover_truncate: self.recover_truncate,
            node: self.cluster.node_id.unwrap_or(0),
            limits,
        });
        let runtime = RuntimeConfig {
            store,
            partitions: self.partitions,
            budget,
            fail_fast: self.fail_fast,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            write_stall: Duration::from_millis(self.write_stall_ms),
            frame_arrival: Duration::from_millis(self.frame_arrival_ms),
            connections_per_source_max: self.connections_per_source_max,
            shed_target: Duration::from_millis(self.shed_target_ms),
            cluster_name: self
                .cluster
                .joins()
                .then(|| self.cluster.cluster.cluster_name.clone()),
            spin_before_park: self
                .spin_before_park_us
                .filter(|&us| us > 0)
                .map(Duration::from_micros),
            ..RuntimeConfig::on_cpus(cpus)
        };
        Ok(NodeConfig {
            runtime,
            listen: self.listen,
            port: self.port,
            shard_port_base: self.shard_port_base,
            auth,
            tls,
            link_tls,
            metrics: self.metrics_listen,
            cluster_node: self
                .cluster
                .node_id
                .filter(|_| self.cluster.joins())
                .map(NodeId),
        })
    }
}

/// The CPUs of a `--cpus` list, one shard each.
pub fn parse_shard_cpus(list: &str) -> Result<Vec<usize>, String> {
    let cpus = CpuSet::parse(list).map_err(|error| error.to_string())?;
    if cpus.is_empty() {
        return Err("--cpus names no CPU; give at least one, e.g. --cpus 0-3".into());
    }
    Ok(cpus.iter().collect())
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread it starts), so that
/// [`wait_for_stop_signal`] receives them instead of the default handler killing the process.
pub(super) fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a sigset_t we own; pthread_sigmask changes
    // only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

pub(super) fn wait_for_stop_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` holds signals blocked in every thread of the process, as sigwait requires.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

pub fn run(args: &NodeArgs) -> i32 {
    let config = match args.to_config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("trove node: {message}");
            return 2;
        }
    };
    let cluster = match args.cluster.plan(args.listen) {
        Ok(cluster) => cluster,
        Err(message) => {
            eprintln!("trove node: {message}");
            return 2;
        }
    };
    let signals = block_stop_signals();
    let mut node = match Node::start(&config) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("trove node: cannot start: {error}");
            // A configuration that cannot work is a usage error; a host that cannot run it is not.
            return if matches!(error, StartError::Config(_)) {
                2
            } else {
                1
            };
        }
    };
    let shard_ports: Vec<String> = node
        .shard_addrs()
        .iter()
        .map(|addr| addr.port().to_string())
        .collect();
    // Writes to stdout may fail (a supervisor closed it): the node runs on regardless.
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "trove node listening on {}{} with {} shards on CPUs {} (shard ports {}); stop with Ctrl-C",
        node.addr(),
        describe_security(args),
        config.runtime.shards(),
        CpuSet::from_cpus(config.runtime.cpus.iter().copied()),
        shard_ports.join(","),
    );
    let control = match &cluster {
        None => None,
        Some(plan) => {
            let on_change = node
                .serving_change()
                .expect("a cluster node's shards have feeds");
            let move_reports = node
                .take_move_reports()
                .expect("a cluster node's shards report their moves");
            match plan.start(
                config.runtime.partitions,
                node.addr(),
                node.shard_addrs(),
                on_change,
                move_reports,
                node.metrics_addr(),
            ) {
                Ok(control) => {
                    let _ = writeln!(stdout, "{}", plan.describe());
                    node.watch_cluster(control.metrics_source());
                    let reporter = super::cluster::spawn_reporter(&control, plan.node());
                    Some((control, reporter))
                }
                Err(message) => {
                    eprintln!("trove node: {message}");
                    node.stop();
                    return 1;
                }
            }
        }
    };
    if let Some(metrics) = node.metrics_addr() {
        let _ = writeln!(stdout, "trove node: metrics at http://{metrics}/metrics");
    }
    let _ = writeln!(
        stdout,
        "trove node: {}",
        describe_durability(&config, &node)
    );
    let shards = config.runtime.shards();
    let mut memory = NodeMemory::of(config.runtime.partitions as usize, shards);
    if config.runtime.store.is_some() {
        memory = memory.with_log(shards, config.runtime.partitions as usize);
    }
    if args.tls_cert.is_some() {
        memory = memory.with_tls(shards);
    }
    if control.is_some() {
        memory = memory.with_moves(shards);
    }
    let _ = writeln!(stdout, "trove node: {}", describe_memory(&memory));
    let signal = wait_for_stop_signal(&signals);
    let _ = writeln!(stdout, "trove node: signal {signal} received, stopping");
    if let Some((control, reporter)) = control {
        // Leave the cluster first: the lease ends now, so the controller marks this node's
        // partitions offline at once instead of after the TTL.
        control.stop();
        if let Ok(reporter) = reporter {
            let _ = reporter.join();
        }
    }
    let report = node.stop();
    let _ = write!(stdout, "{}", report.describe());
    if report.log_closed_cleanly() {
        0
    } else {
        crate::runtime::store::EXIT_LOG_NOT_CLOSED
    }
}

/// Where the node's data lives, and what each shard recovered at start.
fn describe_durability(config: &NodeConfig, node: &Node) -> String {
    let (Some(store), Some((recovered, took))) = (&config.runtime.store, node.recovery()) else {
        return "no --data-dir: memory only, a crash or a stop loses every event".into();
    };
    let mode = match store.durability {
        Durability::Sync => "sync (an answer means the event is on disk)",
        Durability::Async => {
            "async (answers leave before the sync; a crash can lose the last unsynced events)"
        }
        Durability::Memory => "memory",
    };
    let events: u64 = recovered.iter().map(|shard| shard.events).sum();
    let partitions: usize = recovered.iter().map(|shard| shard.partitions).sum();
    let snapshots: usize = recovered.iter().map(|shard| shard.snapshots).sum();
    let mut text = format!(
        "data dir {}, durability {mode}; recovered {partitions} partitions from {snapshots} snapshots and {events} events replayed in {:.3} s",
        store.dir.display(),
        took.as_secs_f64()
    );
    for note in recovered.iter().flat_map(|shard| &shard.notes) {
        text.push_str(&format!("\ntrove node: recovery: {note}"));
    }
    text
}

/// How clients must connect, as printed at start: " (TLS, client certificates, shared
/// secret)", or nothing for plain TCP without authentication.
fn describe_security(args: &NodeArgs) -> String {
    let mut terms = Vec::new();
    if args.tls_cert.is_some() {
        terms.push("TLS");
    }
    if args.tls_client_ca.is_some() {
        terms.push("client certificates");
    }
    if args.auth_secret_file.is_some() {
        terms.push("shared secret");
    }
    if terms.is_empty() {
        String::new()
    } else {
        format!(" ({})", terms.join(", "))
    }
}

/// The node's worst-case memory as one line: the total, then each term, in MiB rounded up.
/// The log's and TLS's terms are named only when they apply (a data dir, TLS); otherwise the
/// line says they are not counted.
fn describe_memory(memory: &NodeMemory) -> String {
    let mib = |bytes: usize| bytes.div_ceil(1 << 20);
    let mut terms = format!(
        "hunt state {}, partition tables {}, buffers {}, mesh rings {}",
        mib(memory.state_bytes),
        mib(memory.tables_bytes),
        mib(memory.buffers_bytes),
        mib(memory.mesh_rings_bytes),
    );
    let mut absent = Vec::new();
    match memory.log_bytes {
        0 => absent.push("log (no --data-dir)"),
        bytes => terms.push_str(&format!(", write-ahead log {}", mib(bytes))),
    }
    match memory.tls_bytes {
        0 => absent.push("TLS (no --tls-cert)"),
        bytes => terms.push_str(&format!(", TLS {}", mib(bytes))),
    }
    match memory.moves_bytes {
        0 => absent.push("live moves (no --cluster)"),
        bytes => terms.push_str(&format!(", live moves {}", mib(bytes))),
    }
    if !absent.is_empty() {
        terms.push_str(&format!("; not counted: {}", absent.join(", ")));
    }
    format!(
        "worst-case memory {} MiB ({terms})",
        mib(memory.total_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_line_names_the_log_tls_and_moves_terms_only_when_they_count() {
        let plain = NodeMemory::of(64, 2);
        let text = describe_memory(&plain);
        assert!(
            text.ends_with(
                "; not counted: log (no --data-dir), TLS (no --tls-cert), live moves (no --cluster))"
            ),
            "{text}"
        );
        let logged = plain.with_log(2, 1024);
        assert!(logged.log_bytes > 0 && logged.tls_bytes == 0);
        assert_eq!(logged.total_bytes(), plain.total_bytes() + logged.log_bytes);
        let text = describe_memory(&logged);
        assert!(text.contains(", write-ahead log "), "{text}");
        assert!(
            text.ends_with("; not counted: TLS (no --tls-cert), live moves (no --cluster))"),
            "{text}"
        );
        let both = logged.with_tls(2);
        assert_eq!(both.tls_bytes, 2 * logged.with_tls(1).tls_bytes);
        let all = both.with_moves(2);
        assert_eq!(all.moves_bytes, 2 * both.with_moves(1).moves_bytes);
        assert_eq!(all.total_bytes(), both.total_bytes() + all.moves_bytes);
        let text = describe_memory(&all);
        assert!(
            text.contains(", TLS ")
                && text.contains(", live moves ")
                && !text.contains("not counted"),
            "{text}"
        );
    }
}
