//! The flags of `trove bench`, as parsed by clap. [`crate::bench::config`] turns them into a
//! checked [`crate::bench::config::BenchConfig`]; nothing else reads them.

use std::path::PathBuf;

use clap::Args;

/// The workload presets `--preset` names (see [`crate::bench::workload::Workload::preset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PresetArg {
    Default,
    AcceptHeavy,
}

impl PresetArg {
    /// The preset's name, as `Workload::preset` takes it.
    pub fn name(self) -> &'static str {
        match self {
            PresetArg::Default => "default",
            PresetArg::AcceptHeavy => "accept-heavy",
        }
    }
}

/// The embedded node's `--durability` modes (those of `trove node --durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityArg {
    Sync,
    Async,
}

impl DurabilityArg {
    /// The shard core's mode.
    pub fn mode(self) -> crate::core::shard::Durability {
        match self {
            DurabilityArg::Sync => crate::core::shard::Durability::Sync,
            DurabilityArg::Async => crate::core::shard::Durability::Async,
        }
    }
}

/// The `appendfsync` policies `--redis-aof` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RedisAofArg {
    /// fsync after every write, before the reply: Redis's counterpart of `--durability sync`
    Always,
    /// fsync once a second in the background: a crash loses up to a second of writes
    Everysec,
}

impl RedisAofArg {
    /// The policy's name, as redis.conf spells it.
    pub fn name(self) -> &'static str {
        match self {
            RedisAofArg::Always => "always",
            RedisAofArg::Everysec => "everysec",
        }
    }
}

/// Drive a treasure-hunt workload against trove (and optionally Redis) and report latency and
/// throughput.
///
/// With no arguments: starts a node in this process on every CPU, drives it over loopback in
/// a closed loop for a few seconds, and prints events/s and latency percentiles.
///
/// Exit codes: 0 when the run completed; 1 when it could not run or failed (the message says
/// why); 2 for a usage error (a bad flag or workload file); 3 when --profile cannot record
/// here (perf missing or not allowed to sample; the message says what to do).
#[derive(Args, Debug, Default)]
pub struct BenchArgs {
    /// Drive a node that is already running at HOST:PORT instead of starting one (any node of
    /// a cluster: shard-aware clients follow its map to every node)
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// Start a local cluster of N nodes for the run (its own etcd, `trove node` processes on
    /// loopback) and report per-node counts, inter-node messages and bytes per event, and
    /// CPU-seconds per million events over every node process
    #[arg(long, value_name = "N", conflicts_with_all = ["target", "metrics_listen"])]
    pub cluster: Option<usize>,
    /// With --cluster: shards each node runs
    #[arg(long, value_name = "K", requires = "cluster")]
    pub shards_per_node: Option<usize>,
    /// With --cluster: while the load runs, move K random partitions live, one at a time, each
    /// to a random other node (as `trove cluster move` does), and report the pause each
    /// partition's clients saw at its flip (p50, p99, max, as the moves' sources measured it)
    #[arg(long, value_name = "K", requires = "cluster")]
    pub moves: Option<u32>,
    /// With --cluster N (2 or more): a third of the way into the measured run, drain node N
    /// (as `trove cluster drain` does: the controller moves its partitions to the others,
    /// live), and report the cluster's events/s before, during and after the drain, and the
    /// flip pauses of its moves
    #[arg(long, requires = "cluster", conflicts_with_all = ["moves", "sweep"])]
    pub drain: bool,
    /// File holding the node's shared secret (see `trove node --help`): the generator
    /// authenticates every connection; an embedded node requires it too. A file, never a flag,
    /// so the secret stays out of process lists and shell histories
    #[arg(long, value_name = "PATH")]
    pub auth_secret_file: Option<PathBuf>,
    /// With --target: connect with TLS, trusting the CA certificates in this PEM file (the
    /// node runs with --tls-cert). With --cluster: the nodes speak TLS too, to clients and on
    /// their links, with --tls-cert and --tls-key as their certificate (valid for 127.0.0.1,
    /// allowing server and client authentication) and this CA as their --tls-client-ca
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// The name the node's certificate must be valid for [default: the target's IP address]
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// This client's certificate chain (PEM), for a node that requires one (--tls-client-ca)
    #[arg(long, value_name = "PATH", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With --target: the node's metrics address (its --metrics-listen); scraped before and
    /// after the run, and the node's own account of the run printed beside the bench's
    #[arg(long, value_name = "ADDR:PORT", requires = "target")]
    pub target_metrics: Option<std::net::SocketAddr>,
    /// CPUs of the embedded node's shards, one shard each [default: every CPU this process may use]
    #[arg(long, value_name = "LIST")]
    pub node_cpus: Option<String>,
    /// CPUs the load-generator threads are pinned to, in turn [default: not pinned]
    #[arg(long, value_name = "LIST")]
    pub client_cpus: Option<String>,
    /// Partitions of the embedded node (a power of two)
    #[arg(long, value_name = "N")]
    pub partitions: Option<u32>,
    /// The embedded node answers Busy when out of credit instead of making clients wait
    #[arg(long)]
    pub fail_fast: bool,
    /// The embedded node logs every event to a write-ahead log in a data dir, as `trove node
    /// --data-dir DIR --durability MODE` does: `sync` answers once the record is on disk,
    /// `async` answers at once and syncs behind [default: no log, memory only]
    #[arg(long, value_name = "MODE", value_enum)]
    pub durability: Option<DurabilityArg>,
    /// With --durability: the embedded node's data dir, kept after the run [default: a fresh
    /// directory under $TMPDIR (or /var/tmp when that is tmpfs), removed after the run]
    #[arg(long, value_name = "DIR", requires = "durability")]
    pub data_dir: Option<PathBuf>,
    /// Serve the embedded node's Prometheus metrics (GET /metrics) here, e.g. for `trove top`
    /// during the run [default: off]
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "target")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Open loop: send this many events per second in total, whatever the replies do
    #[arg(long, value_name = "EVENTS_PER_S", conflicts_with_all = ["closed", "sweep"], allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Open loop: most events in flight per connection before the generator falls behind schedule
    #[arg(long, value_name = "N")]
    pub inflight_max: Option<u32>,
    /// Closed loop: keep this many events in flight per connection, to each node it reaches
    /// when shard-aware against a cluster [the default load: 1024]
    #[arg(long, value_name = "N", conflicts_with = "sweep")]
    pub closed: Option<u32>,
    /// Step the open-loop rate up to find the highest rate whose p99 holds --slo-p99-us
    #[arg(long)]
    pub sweep: bool,
    /// The p99 objective of a sweep, in microseconds (corrected latency)
    #[arg(long, value_name = "US", allow_negative_numbers = true)]
    pub slo_p99_us: Option<f64>,
    /// The first rate a sweep tries, events/s
    #[arg(long, value_name = "EVENTS_PER_S", allow_negative_numbers = true)]
    pub sweep_start: Option<f64>,
    /// Each sweep step multiplies the rate by this until the objective breaks
    #[arg(long, value_name = "FACTOR", allow_negative_numbers = true)]
    pub sweep_factor: Option<f64>,
    /// Measured seconds of each sweep step
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub sweep_step_s: Option<f64>,

    /// Read the workload (hunts, skew, players, mix, seed…) from a TOML file; flags override it
    #[arg(long, value_name = "FILE")]
    pub workload: Option<PathBuf>,
    /// A named workload: default (many of its events refused by the rules) or
    /// accept-heavy (joins, check-ins and claims that mostly succeed); flags override it
    #[arg(long, value_name = "NAME", value_enum, conflicts_with = "workload")]
    pub preset: Option<PresetArg>,
    /// Hunts created before the run
    #[arg(long, value_name = "N")]
    pub hunts: Option<u32>,
    /// Zipf exponent of hunt popularity (0 = uniform)
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub zipf: Option<f64>,
    /// Players who join each hunt before the run
    #[arg(long, value_name = "N")]
    pub players: Option<u32>,
    /// Event mix in percent, e.g. join=5,checkin=60,claim=30,leaderboard=5
    #[arg(long, value_name = "MIX")]
    pub mix: Option<String>,
    /// Seed of the workload: the same seed sends the same events
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Load-generator connections (one thread each)
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Most events per frame
    #[arg(long, value_name = "N")]
    pub events_per_frame: Option<usize>,
    /// Send every event to the shared port of one node and let it forward between its cores
    /// (and, in a cluster, to other nodes)
    #[arg(long)]
    pub no_shard_aware: bool,
    /// Seconds of warm-up, measured but discarded
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub warmup: Option<f64>,
    /// Seconds of the measured phase
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub duration: Option<f64>,

    /// Write the reports (summary JSON, .hgrm, .hlog, CSV, Bencher and github-action-benchmark JSON, SVG plots) into DIR
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress bar (there is none when stdout is not a terminal either)
    #[arg(long)]
    pub quiet: bool,

    /// Send the same event stream to a peer as well: `redis`
    #[arg(long, value_name = "PEER")]
    pub peer: Option<String>,
    /// Address of the Redis server for --peer redis
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:6379")]
    pub redis_addr: String,
    /// With --peer redis: start a redis-server of the bench's own (on a free loopback port,
    /// its append-only file in a fresh directory removed after the run) with `appendonly yes`
    /// and this `appendfsync` policy, instead of using --redis-addr
    #[arg(long, value_name = "POLICY", value_enum, requires = "peer", conflicts_with_all = ["redis_addr", "redis_flush"])]
    pub redis_aof: Option<RedisAofArg>,
    /// Let --peer redis empty a Redis database that holds keys already
    #[arg(long)]
    pub redis_flush: bool,
    /// Also measure the loopback round trip and byte rate on the same CPUs, and state results as ratios of them
    #[arg(long)]
    pub calibrate: bool,
    /// Measure only the generator: make and encode events into nothing, to show it is not the bottleneck
    #[arg(long)]
    pub null_sink: bool,
    /// Record the embedded node during the run with `perf record -g` and draw flame graphs
    /// (flamegraph-shards.svg: the shard threads; flamegraph.svg: the whole process) into --out
    #[arg(long, requires = "out", conflicts_with_all = ["target", "null_sink"])]
    pub profile: bool,
}
