//! `trove node`: run a node until SIGINT or SIGTERM, then stop it cleanly.

use std::net::IpAddr;
use std::path::PathBuf;

use std::io::Write;
use std::time::Duration;

use clap::Args;

use crate::client::auth::read_secret_file;
use crate::constants::{
    CONNECTION_EVENTS_INFLIGHT_DEFAULT, CONNECTION_EVENTS_INFLIGHT_MAX, CONNECTION_IDLE_MS_DEFAULT,
    NodeMemory, PARTITIONS_DEFAULT, PORT_DEFAULT, SHARD_BYTES_INFLIGHT_MAX,
    SHARD_EVENTS_INFLIGHT_MAX, WRITE_STALL_MS_DEFAULT,
};
use crate::host::cpuset::CpuSet;
use crate::metrics::MetricsListen;
use crate::node::{Node, NodeConfig};
use crate::runtime::config::{Budget, RuntimeConfig, shard_cpus};
use crate::runtime::executors::StartError;

/// Run a trove node: one shard per CPU, until SIGINT or SIGTERM.
///
/// Exit codes: 0 after a clean stop; 1 when this host cannot run the node (the message says what
/// to change); 2 for a usage error (a bad flag or a configuration that cannot work); 70 when a
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
    /// Address to listen on. Without --auth-secret-file only a loopback address is allowed
    /// (unless --insecure-no-auth): anyone who reaches the port could play every hunt
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
    /// Answer Busy when out of credit instead of making the client wait
    #[arg(long)]
    pub fail_fast: bool,
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
}

impl NodeArgs {
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
        if auth.is_none() && !self.listen.is_loopback() && !self.insecure_no_auth {
            return Err(format!(
                "refusing to listen on {} without authentication: give --auth-secret-file PATH, listen on 127.0.0.1, or pass --insecure-no-auth to let anyone who reaches the port in",
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
        let runtime = RuntimeConfig {
            partitions: self.partitions,
            budget,
            fail_fast: self.fail_fast,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            write_stall: Duration::from_millis(self.write_stall_ms),
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
            metrics: self.metrics_listen,
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
    let node = match Node::start(&config) {
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
        "trove node listening on {} with {} shards on CPUs {} (shard ports {}); stop with Ctrl-C",
        node.addr(),
        config.runtime.shards(),
        CpuSet::from_cpus(config.runtime.cpus.iter().copied()),
        shard_ports.join(","),
    );
    let control = match &cluster {
        None => None,
        Some(plan) => {
            let partitions = config.runtime.partitions;
            match plan.start(
                partitions,
                node.addr(),
                node.shard_addrs(),
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
    let memory = NodeMemory::of(config.runtime.partitions as usize, config.runtime.shards());
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
    0
}

/// The node's worst-case memory as one line: the total, then each term, in MiB rounded up.
fn describe_memory(memory: &NodeMemory) -> String {
    let mib = |bytes: usize| bytes.div_ceil(1 << 20);
    format!(
        "worst-case memory {} MiB (hunt state {}, partition tables {}, buffers {}, mesh rings {})",
        mib(memory.total_bytes()),
        mib(memory.state_bytes),
        mib(memory.tables_bytes),
        mib(memory.buffers_bytes),
        mib(memory.mesh_rings_bytes),
    )
}
