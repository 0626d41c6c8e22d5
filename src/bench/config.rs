//! A benchmark's configuration: built from the flags (and a workload file), checked against
//! trove's limits, and recorded whole in the summary so a run can be repeated.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::bench::args::{BenchArgs, DurabilityArg, RedisAofArg};
use crate::bench::run::LoadSpec;
use crate::bench::workload::{Mix, Workload};
use crate::client::auth::read_secret_file;
use crate::client::tls::{TlsClient, TlsClientFiles};
use crate::constants::{
    BENCH_CONNECTIONS_MAX, BENCH_DURATION_S_MAX, BENCH_MOVES_MAX, BENCH_SCHEDULE_S_MAX,
    BENCH_TS_INTENDED_NS_BITS, BENCH_WINDOW_MAX, CLUSTER_UP_NODES_MAX, FRAME_RECORDS_MAX,
    PARTITIONS_DEFAULT, SHARDS_MAX, SWEEP_STEPS_MAX,
};
use crate::core::auth::AuthSecret;
use crate::host::affinity::allowed_cpus;
use crate::host::cpuset::CpuSet;

/// Events in flight per connection of the default closed loop.
pub const CLOSED_WINDOW_DEFAULT: u32 = 1024;
/// Events in flight per connection before an open-loop generator falls behind schedule.
pub const OPEN_INFLIGHT_DEFAULT: u32 = 1024;
const DURATION_S_DEFAULT: f64 = 5.0;
const WARMUP_S_DEFAULT: f64 = 1.0;
const EVENTS_PER_FRAME_DEFAULT: usize = 64;
const SLO_P99_US_DEFAULT: f64 = 1_000.0;
const SWEEP_START_DEFAULT: f64 = 50_000.0;
const SWEEP_FACTOR_DEFAULT: f64 = 2.0;
const SWEEP_STEP_S_DEFAULT: f64 = 2.0;

/// Fields of a configuration's JSON (an object's key, then the field) that do not change the
/// workload, left out of its hash (`report::summary::config_hash`) so that `trove gate`
/// compares runs that differ only in them without warning of different configurations: where
/// the embedded node serves `/metrics`, which runs that measure what serving them costs
/// (`tuning/monitoring/measure-overhead.sh`) turn on and off. They stay in the recorded config.
pub const CONFIG_HASH_IGNORED: &[(&str, &str)] = &[("target", "metrics_listen")];

/// Where the load goes.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetConfig {
    /// A node started in this process for the run.
    Embedded {
        node_cpus: Vec<usize>,
        partitions: u32,
        fail_fast: bool,
        /// Where the node serves `/metrics`; absent from the config's JSON when off, and left
        /// out of the config hash either way ([`CONFIG_HASH_IGNORED`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        metrics_listen: Option<SocketAddr>,
        /// The write-ahead log's mode; absent without a log (memory only), so the config hash
        /// of a run without it is what it always was.
        #[serde(skip_serializing_if = "Option::is_none")]
        durability: Option<DurabilityArg>,
        /// `--data-dir`: the data dir to use and keep; `None` with a log: a temporary one.
        #[serde(skip)]
        data_dir: Option<PathBuf>,
    },
    /// A node already running.
    Remote { addr: SocketAddr },
    /// A local cluster started for the run (`--cluster N`).
    Cluster {
        nodes: usize,
        shards_per_node: usize,
        partitions: u32,
        /// Live moves made during the run (`--moves`); 0 for none.
        #[serde(skip_serializing_if = "is_zero")]
        moves: u32,
        /// Whether node N is drained during the run (`--drain`).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        drain: bool,
    },
}

/// How the load is paced.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadConfig {
    Open {
        rate_per_s: f64,
        inflight_max: u32,
    },
    Closed {
        window: u32,
    },
    Sweep {
        slo_p99_us: f64,
        start_rate_per_s: f64,
        factor: f64,
        step_s: f64,
        inflight_max: u32,
    },
}

/// A peer driven with the same events.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeerConfig {
    pub name: String,
    /// Where the peer listens; with `aof`, where the bench's own redis-server will listen is
    /// only known once it has started, and this is unused.
    pub addr: SocketAddr,
    pub flush: bool,
    /// `--redis-aof`: the bench starts its own redis-server with this `appendfsync` policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aof: Option<RedisAofArg>,
}

/// Everything a `trove bench` run does, checked.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BenchConfig {
    pub target: TargetConfig,
    pub load: LoadConfig,
    pub workload: Workload,
    pub connections: usize,
    pub events_per_frame: usize,
    pub shard_aware: bool,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub client_cpus: Vec<usize>,
    pub peer: Option<PeerConfig>,
    pub calibrate: bool,
    pub null_sink: bool,
    #[serde(skip)]
    pub out: Option<PathBuf>,
    /// Flame graphs of the run into `out` (`--profile`).
    #[serde(skip)]
    pub profile: bool,
    #[serde(skip)]
    pub quiet: bool,
    /// The node's shared secret (`--auth-secret-file`); never written to a report.
    #[serde(skip)]
    pub auth: Option<Arc<AuthSecret>>,
    /// The file `auth` was read from, handed to the nodes of a `--cluster` (each is a process
    /// of its own and reads it itself); never written to a report.
    #[serde(skip)]
    pub auth_file: Option<PathBuf>,
    /// TLS to the target (`--tls-ca`, ...); never written to a report.
    #[serde(skip)]
    pub tls: Option<Arc<TlsClient>>,
    /// The files `tls` was read from, handed to the nodes of a `--cluster` (their
    /// certificate, key and CA); never written to a report.
    #[serde(skip)]
    pub tls_files: Option<TlsClientFiles>,
}

/// TLS flags need a node that speaks TLS: one at `--target`, or a `--cluster`'s, which then
/// serves with the bench's certificate (so it must be given).
fn check_tls_target(args: &BenchArgs) -> Result<(), String> {
    if args.tls_ca.is_none() {
        return Ok(());
    }
    if args.target.is_none() && args.cluster.is_none() {
        return Err(
            "--tls-ca needs --target (a node started with --tls-cert) or --cluster: the embedded node has no TLS".into(),
        );
    }
    if args.cluster.is_some() && args.tls_cert.is_none() {
        return Err(
            "--cluster with --tls-ca needs --tls-cert and --tls-key: the nodes serve TLS with them and require client certificates signed by --tls-ca".into(),
        );
    }
    Ok(())
}

fn cpu_list(flag: &str, list: &str) -> Result<Vec<usize>, String> {
    let cpus = CpuSet::parse(list).map_err(|error| format!("--{flag}: {error}"))?;
    if cpus.is_empty() {
        return Err(format!("--{flag} names no CPU"));
    }
    Ok(cpus.iter().collect())
}

/// A CPU list whose every CPU this process may run on: a generator thread is pinned to them,
/// and pinning outside the affinity mask would quietly not happen.
fn allowed_cpu_list(flag: &str, list: &str) -> Result<Vec<usize>, String> {
    let cpus = cpu_list(flag, list)?;
    let allowed = allowed_cpus();
    if let Some(cpu) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
        return Err(format!(
            "--{flag} {list}: CPU {cpu} is not in this process's affinity mask ({}); pick CPUs \
             from it, or widen the mask (taskset)",
            CpuSet::from_cpus(allowed.iter().copied())
        ));
    }
    Ok(cpus)
}

fn seconds(flag: &str, value: f64, allow_zero: bool) -> Result<f64, String> {
    let max = BENCH_DURATION_S_MAX as f64;
    let low_ok = if allow_zero {
        value >= 0.0
    } else {
        value > 0.0
    };
    if !(value.is_finite() && low_ok && value <= max) {
        let low = if allow_zero { "0" } else { "more than 0" };
        return Err(format!(
            "--{flag} {value}: it must be {low} and at most {max} seconds"
        ));
    }
    Ok(value)
}

/// A run's warm-up and measured phase together must fit the intended send time every event
/// carries (see [`BENCH_TS_INTENDED_NS_BITS`]).
fn schedule_fits(warmup_s: f64, duration_s: f64) -> Result<(), String> {
    if warmup_s + duration_s > BENCH_SCHEDULE_S_MAX as f64 {
        return Err(format!(
            "--warmup {warmup_s} --duration {duration_s}: together they must be at most \
             {BENCH_SCHEDULE_S_MAX} seconds (each event carries its intended send time in \
             {BENCH_TS_INTENDED_NS_BITS} bits of nanoseconds); shorten one of them"
        ));
    }
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    flag: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, String> {
    if value < min || value > max {
        return Err(format!("--{flag} {value}: it must be from {min} to {max}"));
    }
    Ok(value)
}

/// `--drain` needs a node to drain and another to take its partitions.
fn drain_of(drain: bool, nodes: usize) -> Result<bool, String> {
    if drain && nodes < 2 {
        return Err(format!(
            "--drain with --cluster {nodes}: a drain moves node N's partitions to the others, so give --cluster 2 or more"
        ));
    }
    Ok(drain)
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn resolve(flag: &str, addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|error| format!("--{flag} {addr}: {error}; write it as HOST:PORT"))?
        .next()
        .ok_or_else(|| format!("--{flag} {addr}: the name resolves to no address"))
}

/// Flags that configure the embedded node mean nothing for a node that is already running:
/// refusing them says so instead of letting a run silently measure something else.
fn refuse_embedded_flags(
    args: &BenchArgs,
    partitions_allowed: bool,
    instead: &str,
) -> Result<(), String> {
    let given = [
        ("--node-cpus", args.node_cpus.is_some()),
        (
            "--partitions",
            args.partitions.is_some() && !partitions_allowed,
        ),
        ("--fail-fast", args.fail_fast),
        ("--durability", args.durability.is_some()),
        ("--data-dir", args.data_dir.is_some()),
    ];
    match given.iter().find(|(_, given)| *given) {
        Some((flag, _)) => Err(format!(
            "{flag} configures the embedded node and means nothing with {instead}"
        )),
        None => Ok(()),
    }
}

/// Reads a workload file (TOML with the fields of [`Workload`]).
pub fn read_workload_file(path: &Path) -> Result<Workload, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the workload file {}: {error}", path.display()))?;
    toml::from_str(&text)
        .map_err(|error| format!("the workload file {} is not valid: {error}", path.display()))
}

impl BenchConfig {
    /// The configuration the flags describe, or what is wrong with them.
    pub fn from_args(args: &BenchArgs) -> Result<BenchConfig, String> {
        if args.target.is_some() {
            refuse_embedded_flags(
                args,
                false,
                "--target; set it on the `trove node` that serves the target, or drop --target",
            )?;
        }
        check_tls_target(args)?;
        if args.cluster.is_some() {
            refuse_embedded_flags(
                args,
                true,
                "--cluster (its nodes are `trove node` processes); drop it, or drop --cluster",
            )?;
        }
        let workload = BenchConfig::workload(args)?;
        let target = match (&args.target, args.cluster) {
            (Some(addr), _) => TargetConfig::Remote {
                addr: resolve("target", addr)?,
            },
            (None, Some(nodes)) => TargetConfig::Cluster {
                nodes: in_range("cluster", nodes, 1, CLUSTER_UP_NODES_MAX)?,
                shards_per_node: in_range(
                    "shards-per-node",
                    args.shards_per_node.unwrap_or(1),
                    1,
                    SHARDS_MAX,
                )?,
                partitions: args.partitions.unwrap_or(PARTITIONS_DEFAULT),
                moves: in_range("moves", args.moves.unwrap_or(0), 0, BENCH_MOVES_MAX)?,
                drain: drain_of(args.drain, nodes)?,
            },
            (None, None) => TargetConfig::Embedded {
                node_cpus: match &args.node_cpus {
                    Some(list) => cpu_list("node-cpus", list)?,
                    None => allowed_cpus(),
                },
                partitions: args.partitions.unwrap_or(PARTITIONS_DEFAULT),
                fail_fast: args.fail_fast,
                metrics_listen: args.metrics_listen,
                durability: args.durability,
                data_dir: args.data_dir.clone(),
            },
        };
        let peer = match args.peer.as_deref() {
            None => None,
            Some("redis") => Some(PeerConfig {
                name: match args.redis_aof {
                    Some(policy) => format!("redis-aof-{}", policy.name()),
                    None => "redis".into(),
                },
                addr: resolve("redis-addr", &args.redis_addr)?,
                flush: args.redis_flush,
                aof: args.redis_aof,
            }),
            Some(other) => {
                return Err(format!(
                    "--peer {other}: the only peer trove knows is `redis`"
                ));
            }
        };
        let tls_files = args.tls_ca.as_ref().map(|ca| TlsClientFiles {
            ca: ca.clone(),
            server_name: args.tls_server_name.clone(),
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
        });
        let config = BenchConfig {
            target,
            load: BenchConfig::load(args)?,
            workload,
            connections: in_range(
                "connections",
                args.connections.unwrap_or_else(|| allowed_cpus().len()),
                1,
                BENCH_CONNECTIONS_MAX,
            )?,
            events_per_frame: in_range(
                "events-per-frame",
                args.events_per_frame.unwrap_or(EVENTS_PER_FRAME_DEFAULT),
                1,
                FRAME_RECORDS_MAX,
            )?,
            shard_aware: !args.no_shard_aware,
            warmup_s: seconds("warmup", args.warmup.unwrap_or(WARMUP_S_DEFAULT), true)?,
            duration_s: seconds(
                "duration",
                args.duration.unwrap_or(DURATION_S_DEFAULT),
                false,
            )?,
            client_cpus: match &args.client_cpus {
                Some(list) => allowed_cpu_list("client-cpus", list)?,
                None => Vec::new(),
            },
            peer,
            calibrate: args.calibrate,
            null_sink: args.null_sink,
            out: args.out.clone(),
            profile: args.profile,
            quiet: args.quiet,
            auth: match &args.auth_secret_file {
                Some(path) => Some(Arc::new(read_secret_file(path)?)),
                None => None,
            },
            auth_file: args.auth_secret_file.clone(),
            tls: match &tls_files {
                Some(files) => Some(Arc::new(TlsClient::from_files(files.clone())?)),
                None => None,
            },
            tls_files,
        };
        schedule_fits(config.warmup_s, config.duration_s)?;
        if let TargetConfig::Embedded { partitions, .. }
        | TargetConfig::Cluster { partitions, .. } = config.target
        {
            crate::core::partition::Partitioner::new(partitions)
                .map_err(|error| format!("--partitions: {error}"))?;
        }
        Ok(config)
    }

    fn workload(args: &BenchArgs) -> Result<Workload, String> {
        let mut workload = match (&args.workload, &args.preset) {
            (Some(path), _) => read_workload_file(path)?,
            (None, Some(preset)) => {
                Workload::preset(preset.name()).map_err(|error| format!("--preset: {error}"))?
            }
            (None, None) => Workload::default(),
        };
        if let Some(hunts) = args.hunts {
            workload.hunts = hunts;
        }
        if let Some(zipf) = args.zipf {
            workload.zipf = zipf;
        }
        if let Some(players) = args.players {
            workload.players_per_hunt = players;
        }
        if let Some(mix) = &args.mix {
            workload.mix = Mix::parse(mix).map_err(|error| format!("--mix: {error}"))?;
        }
        if let Some(seed) = args.seed {
            workload.seed = seed;
        }
        workload.check()?;
        Ok(workload)
    }

    fn load(args: &BenchArgs) -> Result<LoadConfig, String> {
        let inflight_max = in_range(
            "inflight-max",
            args.inflight_max.unwrap_or(OPEN_INFLIGHT_DEFAULT),
            1,
            BENCH_WINDOW_MAX,
        )?;
        if args.sweep {
            let slo_p99_us = args.slo_p99_us.unwrap_or(SLO_P99_US_DEFAULT);
            let start = args.sweep_start.unwrap_or(SWEEP_START_DEFAULT);
            let factor = args.sweep_factor.unwrap_or(SWEEP_FACTOR_DEFAULT);
            if !(slo_p99_us.is_finite() && slo_p99_us > 0.0) {
                return Err(format!("--slo-p99-us {slo_p99_us}: it must be more than 0"));
            }
            if !(start.is_finite() && start > 0.0) {
                return Err(format!(
                    "--sweep-start {start}: a rate must be more than 0 events/s"
                ));
            }
            if !(factor.is_finite() && factor > 1.0) {
                return Err(format!("--sweep-factor {factor}: it must be more than 1"));
            }
            let step_s = seconds(
                "sweep-step-s",
                args.sweep_step_s.unwrap_or(SWEEP_STEP_S_DEFAULT),
                false,
            )?;
            return Ok(LoadConfig::Sweep {
                slo_p99_us,
                start_rate_per_s: start,
                factor,
                step_s,
                inflight_max,
            });
        }
        if let Some(rate) = args.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!(
                    "--rate {rate}: a rate must be more than 0 events/s"
                ));
            }
            return Ok(LoadConfig::Open {
                rate_per_s: rate,
                inflight_max,
            });
        }
        let window = in_range(
            "closed",
            args.closed.unwrap_or(CLOSED_WINDOW_DEFAULT),
            1,
            BENCH_WINDOW_MAX,
        )?;
        Ok(LoadConfig::Closed { window })
    }

    /// The load of a single (non-sweep) run.
    pub fn load_spec(&self) -> Option<LoadSpec> {
        match self.load {
            LoadConfig::Open {
                rate_per_s,
                inflight_max,
            } => Some(LoadSpec::Open {
                rate_per_s,
                inflight_max,
            }),
            LoadConfig::Closed { window } => Some(LoadSpec::Closed { window }),
            LoadConfig::Sweep { .. } => None,
        }
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }
}

// A sweep never runs more steps than this; the limit lives with the others.
const _: () = assert!(SWEEP_STEPS_MAX > 2);

#[cfg(test)]
mod tests {
    use super::*;

    fn configure(edit: impl FnOnce(&mut BenchArgs)) -> Result<BenchConfig, String> {
        let mut args = BenchArgs {
            redis_addr: "127.0.0.1:6379".into(),
            ..BenchArgs::default()
        };
        edit(&mut args);
        BenchConfig::from_args(&args)
    }

    #[test]
    fn no_flags_mean_an_embedded_closed_loop() {
        let config = configure(|_| {}).unwrap();
        assert!(matches!(config.target, TargetConfig::Embedded { .. }));
        assert_eq!(
            config.load,
            LoadConfig::Closed {
                window: CLOSED_WINDOW_DEFAULT
            }
        );
        assert!(config.shard_aware);
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let negative = configure(|args| args.rate = Some(-5.0)).unwrap_err();
        assert!(negative.contains("--rate -5"), "{negative}");
        let zipf = configure(|args| args.zipf = Some(-0.1)).unwrap_err();
        assert!(zipf.contains("zipf"), "{zipf}");
        let mix = configure(|args| args.mix = Some("teleport=100".into())).unwrap_err();
        assert!(mix.contains("unknown event kind `teleport`"), "{mix}");
        let peer = configure(|args| args.peer = Some("memcached".into())).unwrap_err();
        assert!(peer.contains("redis"), "{peer}");
        let target = configure(|args| args.target = Some("no-port".into())).unwrap_err();
        assert!(target.contains("HOST:PORT"), "{target}");
        let frames = configure(|args| args.events_per_frame = Some(0)).unwrap_err();
        assert!(frames.contains("--events-per-frame 0"), "{frames}");
        let beyond = allowed_cpus().last().unwrap() + 1;
        let client = configure(|args| args.client_cpus = Some(beyond.to_string())).unwrap_err();
        assert!(
            client.contains("not in this process's affinity mask"),
            "{client}"
        );
    }

    #[test]
    fn durability_is_an_embedded_flag_and_in_the_config_only_when_given() {
        let refused = configure(|args| {
            args.target = Some("127.0.0.1:7000".into());
            args.durability = Some(DurabilityArg::Sync);
        })
        .unwrap_err();
        assert!(refused.contains("--durability"), "{refused}");
        let memory = serde_json::to_value(configure(|_| {}).unwrap()).unwrap();
        assert!(memory["target"].get("durability").is_none(), "{memory}");
        let logged = configure(|args| {
            args.durability = Some(DurabilityArg::Async);
            args.data_dir = Some("/srv/data".into());
        })
        .unwrap();
        let json = serde_json::to_value(&logged).unwrap();
        assert_eq!(json["target"]["durability"], "async");
        assert!(json["target"].get("data_dir").is_none(), "{json}");
    }

    #[test]
    fn the_config_hash_leaves_out_the_metrics_address_and_nothing_else() {
        use crate::bench::report::summary::config_hash;
        let hash = |edit: fn(&mut BenchArgs)| {
            let json = serde_json::to_value(configure(edit).unwrap()).unwrap();
            (config_hash(&json), json)
        };
        let (off, _) = hash(|_| {});
        let (on, on_json) =
            hash(|args| args.metrics_listen = Some("127.0.0.1:19790".parse().unwrap()));
        let (elsewhere, _) =
            hash(|args| args.metrics_listen = Some("127.0.0.1:9700".parse().unwrap()));
        assert_eq!(
            on, off,
            "serving /metrics or not, and where, is one configuration"
        );
        assert_eq!(elsewhere, off);
        assert_eq!(
            on_json["target"]["metrics_listen"], "127.0.0.1:19790",
            "the address stays in the recorded config"
        );
        let (other_partitions, _) = hash(|args| args.partitions = Some(64));
        assert_ne!(
            other_partitions, off,
            "a field that changes the workload is hashed"
        );
    }

    #[test]
    fn redis_aof_names_the_peer_by_its_policy() {
        let config = configure(|args| {
            args.peer = Some("redis".into());
            args.redis_aof = Some(RedisAofArg::Everysec);
        })
        .unwrap();
        let peer = config.peer.unwrap();
        assert_eq!(
            (peer.name.as_str(), peer.aof),
            ("redis-aof-everysec", Some(RedisAofArg::Everysec))
        );
    }

    #[test]
    fn warmup_and_duration_together_must_fit_the_timestamp() {
        let longest = BENCH_DURATION_S_MAX as f64;
        let too_long = configure(|args| {
            args.warmup = Some(longest);
            args.duration = Some(longest);
        })
        .unwrap_err();
        assert!(
            too_long.contains("--warmup 600 --duration 600"),
            "{too_long}"
        );
        assert!(too_long.contains("at most 1000 seconds"), "{too_long}");
        let fits = configure(|args| {
            args.warmup = Some(BENCH_SCHEDULE_S_MAX as f64 - longest);
            args.duration = Some(longest);
        });
        assert!(fits.is_ok(), "{fits:?}");
    }

    #[test]
    fn flags_override_the_workload_file() {
        let dir = std::env::temp_dir().join(format!("trove-workload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hunts.toml");
        std::fs::write(&file, "hunts = 50\nzipf = 0.8\nseed = 9\n[mix]\njoin = 0\ncheckin = 50\nclaim = 50\nleaderboard = 0\n").unwrap();
        let config = configure(|args| {
            args.workload = Some(file.clone());
            args.seed = Some(10);
        })
        .unwrap();
        assert_eq!(
            (
                config.workload.hunts,
                config.workload.zipf,
                config.workload.seed
            ),
            (50, 0.8, 10)
        );
        assert_eq!(config.workload.mix.claim, 50);
        std::fs::write(&file, "hunts = 50\ncolour = \"red\"\n").unwrap();
        let typo = configure(|args| args.workload = Some(file.clone())).unwrap_err();
        assert!(typo.contains("colour"), "{typo}");
        let missing = configure(|args| args.workload = Some(dir.join("absent.toml"))).unwrap_err();
        assert!(missing.contains("absent.toml"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
