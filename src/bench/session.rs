//! One `trove bench` invocation from start to finish: start the embedded node (unless a target
//! is given), calibrate, set the hunts up, run the load (once, or as a sweep), drive the peer
//! with the same events, stop the node, and hand back a [`Report`].
//!
//! Runs on the thread that invoked the benchmark; the node's shards and the generator threads
//! are started and joined from here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::bench::args::DurabilityArg;
use crate::bench::disk::{RedisServer, RunDir};
use crate::bench::report::summary::{LogSummary, NodeSummary};
use crate::runtime::store::StoreConfig;

use crate::bench::cluster::{ClusterFigures, ClusterSpec, LocalCluster};
use crate::bench::config::{BenchConfig, LoadConfig, PeerConfig, TargetConfig};
use crate::bench::generator::Protocol;
use crate::bench::live_moves::MoveRun;
use crate::bench::progress::Progress;
use crate::bench::redis::{connect_redis, set_up_hunts_redis};
use crate::bench::report::{IntervalSample, LoadModel, Report, RunRecord, Sweep, SweepStep};
use crate::bench::run::{LoadSpec, Measurement, RunPlan, measure, set_up_hunts};
use crate::bench::trove_protocol::TroveProtocol;
use crate::client::{Connection, connect_authenticated, fetch_map, resolve_target};
use crate::constants::{CALIBRATION_MS_DEFAULT, METRICS_SNAPSHOT_MS_DEFAULT, SWEEP_STEPS_MAX};
use crate::metrics::MetricsListen;
use crate::node::{Node, NodeConfig, NodeReport};
use crate::runtime::config::RuntimeConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Warm-up of each sweep step: enough for connections and caches, short enough for many steps.
const SWEEP_WARMUP: Duration = Duration::from_millis(500);
/// Bisection steps after a sweep finds the first rate that breaks the objective.
const SWEEP_REFINE_STEPS: usize = 3;
/// Samples of a local cluster's counters taken, at most, before they are taken as settled.
const CLUSTER_SAMPLE_TRIES: usize = 5;

/// The embedded node, when the benchmark started one, with its data dir (removed after the
/// node stops, when the bench made it) and its log's mode.
struct Embedded {
    node: Node,
    started: Instant,
    log: Option<(RunDir, DurabilityArg)>,
}

impl Embedded {
    /// Stops the node, then removes a data dir the bench made. The log's rates are over the
    /// node's time up to `trove_done`, the end of the run against it (a peer's run after it
    /// leaves the node idle).
    fn stop(self, trove_done: Option<Instant>) -> (NodeReport, Option<LogSummary>) {
        let report = self.node.stop();
        let seconds = trove_done
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.started)
            .as_secs_f64();
        let log = self.log.map(|(_dir, durability)| {
            let mode = match durability {
                DurabilityArg::Sync => "sync",
                DurabilityArg::Async => "async",
            };
            LogSummary::of(mode, &report, seconds)
        });
        (report, log)
    }
}

/// The embedded node's data dir: the user's, or a fresh one on a disk; says when it is tmpfs.
fn data_dir(given: Option<&PathBuf>) -> Result<RunDir, String> {
    let dir = match given {
        Some(path) => RunDir::kept(path),
        None => RunDir::fresh("data")?,
    };
    if let Some(warning) = dir.tmpfs_warning("the embedded node's data dir") {
        eprintln!("trove bench: {warning}");
    }
    Ok(dir)
}

/// What the bench started to run against.
enum Started {
    /// Nothing: the target was running already.
    Remote,
    Embedded(Embedded),
    Cluster(LocalCluster),
}

fn start_target(
    config: &BenchConfig,
    progress: &mut Progress,
) -> Result<(SocketAddr, Started), String> {
    match &config.target {
        TargetConfig::Remote { addr } => Ok((*addr, Started::Remote)),
        TargetConfig::Cluster {
            nodes,
            shards_per_node,
            partitions,
            ..
        } => {
            let spec = ClusterSpec {
                nodes: *nodes,
                shards_per_node: *shards_per_node,
                partitions: *partitions,
            };
            let tls = config.tls.clone().zip(config.tls_files.clone());
            let cluster =
                LocalCluster::start(spec, config.auth_file.as_deref(), tls, &mut |line| {
                    progress.note(line)
                })?;
            Ok((cluster.seed(), Started::Cluster(cluster)))
        }
        TargetConfig::Embedded {
            node_cpus,
            partitions,
            fail_fast,
            metrics_listen,
            durability,
            data_dir: given_dir,
        } => {
            let log = match durability {
                Some(mode) => Some((data_dir(given_dir.as_ref())?, *mode)),
                None => None,
            };
            let runtime = RuntimeConfig {
                partitions: *partitions,
                fail_fast: *fail_fast,
                store: log.as_ref().map(|(dir, mode)| StoreConfig {
                    dir: dir.path().to_path_buf(),
                    durability: mode.mode(),
                    recover_truncate: false,
                    node: 0,
                    limits: Default::default(),
                }),
                ..RuntimeConfig::on_cpus(node_cpus.clone())
            };
            let started = Instant::now();
            let node = Node::start(&NodeConfig {
                runtime,
                auth: config.auth.as_deref().cloned(),
                metrics: metrics_listen.map_or(MetricsListen::Off, MetricsListen::On),
                ..NodeConfig::loopback(node_cpus.clone())
            })
            .map_err(|error| format!("cannot start the embedded node: {error}"))?;
            if let Some(metrics) = node.metrics_addr().filter(|_| !config.quiet) {
                eprintln!("trove bench: the embedded node serves http://{metrics}/metrics");
            }
            Ok((
                node.addr(),
                Started::Embedded(Embedded { node, started, log }),
            ))
        }
    }
}

/// The connections of one generator thread to a trove node: one per shard when shard-aware.
fn connect_trove(
    addr: SocketAddr,
    config: &BenchConfig,
) -> Result<(TroveProtocol, Vec<Connection>), String> {
    let (shard_aware, events_per_frame) = (config.shard_aware, config.events_per_frame);
    let (secret, tls) = (config.auth.as_deref(), config.tls.as_ref());
    let mut first = connect_authenticated(addr, CONNECT_TIMEOUT, secret, tls)
        .map_err(|error| error.to_string())?;
    let push = fetch_map(&mut first, CONNECT_TIMEOUT).map_err(|error| error.to_string())?;
    let protocol = TroveProtocol::new(push, shard_aware, events_per_frame)?;
    let streams = if shard_aware {
        // One connection per owner's shard, on whichever node it runs.
        (0..protocol.links())
            .map(|link| {
                let target = protocol.link_target(link).expect("a shard-aware link");
                let shard = resolve_target(target, addr)?;
                connect_authenticated(shard, CONNECT_TIMEOUT, secret, tls)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| error.to_string())?
    } else {
        vec![first]
    };
    Ok((protocol, streams))
}

fn plan(config: &BenchConfig, load: LoadSpec, warmup: Duration, duration: Duration) -> RunPlan {
    RunPlan {
        workload: config.workload.clone(),
        load,
        connections: config.connections,
        warmup,
        duration,
        client_cpus: config.client_cpus.clone(),
    }
}

/// Runs one measured phase against trove, showing progress.
fn measure_trove(
    addr: SocketAddr,
    config: &BenchConfig,
    plan: &RunPlan,
    label: &str,
    progress: &mut Progress,
) -> Result<Measurement, String> {
    progress.start_phase(
        label,
        plan.warmup.as_secs_f64(),
        plan.duration.as_secs_f64(),
    );
    let result = measure(
        plan,
        |_| connect_trove(addr, config),
        &mut |second, latencies, replies| progress.interval(second, latencies, replies),
    );
    progress.finish_phase();
    result
}

/// The report form of a measurement.
pub fn run_record(target: &str, measurement: &Measurement) -> RunRecord {
    let counts = &measurement.counts;
    RunRecord {
        target: target.to_owned(),
        load: match measurement.load {
            LoadSpec::Open { rate_per_s, .. } => LoadModel::Open { rate_per_s },
            LoadSpec::Closed { window } => LoadModel::Closed {
                inflight_per_connection: window,
            },
        },
        started_unix_ms: measurement.started_unix_ms,
        duration_s: measurement.duration_s,
        sent: counts.sent,
        acknowledged: counts.ok,
        rejected: counts.rejected,
        busy: counts.busy,
        errors: counts.errors + measurement.missing,
        bytes_sent: counts.bytes_sent,
        bytes_received: counts.bytes_received,
        corrected_ns: measurement.latencies.corrected_ns.clone(),
        uncorrected_ns: measurement.latencies.uncorrected_ns.clone(),
        lag_ns: measurement.lag_ns.clone(),
        intervals: measurement
            .intervals
            .iter()
            .enumerate()
            .map(|(second, latencies)| IntervalSample {
                start_offset_s: second as f64,
                duration_s: 1.0,
                corrected_ns: latencies.corrected_ns.clone(),
                uncorrected_ns: latencies.uncorrected_ns.clone(),
            })
            .collect(),
    }
}

/// True if an open-loop step kept up with its rate and held the p99 objective.
fn held_objective(measurement: &Measurement, rate_per_s: f64, slo_p99_us: f64) -> bool {
    let p99_us = measurement.latencies.corrected_ns.value_at_quantile(0.99) as f64 / 1_000.0;
    let counts = &measurement.counts;
    p99_us <= slo_p99_us
        && measurement.achieved_rate() >= 0.95 * rate_per_s
        && counts.errors == 0
        && counts.busy == 0
        && measurement.missing == 0
}

/// Steps the rate up by `factor` until the objective breaks, then bisects between the last
/// rate that held and the first that did not (the way the OpenMessaging Benchmark searches
/// for its maximum rate).
fn sweep(
    slo_p99_us: f64,
    start_rate_per_s: f64,
    factor: f64,
    mut step: impl FnMut(f64, usize) -> Result<Measurement, String>,
) -> Result<(Sweep, Measurement), String> {
    let mut steps: Vec<SweepStep> = Vec::new();
    let mut run_step =
        |rate: f64, steps: &mut Vec<SweepStep>| -> Result<(bool, Measurement), String> {
            let measurement = step(rate, steps.len())?;
            let met = held_objective(&measurement, rate, slo_p99_us);
            steps.push(SweepStep {
                offered_rate_per_s: rate,
                record: run_record("trove", &measurement),
                met_slo: met,
            });
            Ok((met, measurement))
        };
    let mut best: Option<(f64, Measurement)> = None;
    let mut broke: Option<(f64, Measurement)> = None;
    let mut rate = start_rate_per_s;
    while broke.is_none() && steps.len() < SWEEP_STEPS_MAX {
        let (met, measurement) = run_step(rate, &mut steps)?;
        if met {
            best = Some((rate, measurement));
            rate *= factor;
        } else {
            broke = Some((rate, measurement));
        }
    }
    // Between the last rate that held and the first that broke.
    let bounds = best
        .as_ref()
        .zip(broke.as_ref())
        .map(|((low, _), (high, _))| (*low, *high));
    if let Some((mut low, mut high)) = bounds {
        for _ in 0..SWEEP_REFINE_STEPS {
            if steps.len() >= SWEEP_STEPS_MAX {
                break;
            }
            let middle = (low * high).sqrt();
            let (met, measurement) = run_step(middle, &mut steps)?;
            if met {
                low = middle;
                best = Some((middle, measurement));
            } else {
                high = middle;
            }
        }
    }
    let best_rate_per_s = best.as_ref().map(|(rate, _)| *rate);
    let headline = best
        .or(broke)
        .map(|(_, measurement)| measurement)
        .expect("a sweep runs at least one step");
    Ok((
        Sweep {
            slo_p99_us,
            steps,
            best_rate_per_s,
        },
        headline,
    ))
}

/// The main measurement: one run, or a sweep whose best step stands for it.
fn run_main(
    addr: SocketAddr,
    config: &BenchConfig,
    progress: &mut Progress,
) -> Result<(Measurement, Option<Sweep>), String> {
    match config.load {
        LoadConfig::Sweep {
            slo_p99_us,
            start_rate_per_s,
            factor,
            step_s,
            inflight_max,
        } => {
            let step_duration = Duration::from_secs_f64(step_s);
            let (sweep, headline) =
                sweep(slo_p99_us, start_rate_per_s, factor, |rate_per_s, index| {
                    let load = LoadSpec::Open {
                        rate_per_s,
                        inflight_max,
                    };
                    let step_plan = plan(config, load, SWEEP_WARMUP, step_duration);
                    let label = format!("step {} {:.0}/s", index + 1, rate_per_s);
                    measure_trove(addr, config, &step_plan, &label, progress)
                })?;
            Ok((headline, Some(sweep)))
        }
        _ => {
            let load = config.load_spec().expect("a single run has a load");
            let main_plan = plan(config, load, config.warmup(), config.duration());
            Ok((
                measure_trove(addr, config, &main_plan, "trove", progress)?,
                None,
            ))
        }
    }
}

/// Runs a whole benchmark as `config` says. With an embedded node, also returns what the
/// node's shards counted and how long their stages took; with a local cluster, the report
/// holds the cluster's own account of the run.
pub fn execute(
    config: &BenchConfig,
    progress: &mut Progress,
) -> Result<(Report, Option<NodeReport>), String> {
    let (addr, started) = start_target(config, progress)?;
    let cluster = match &started {
        Started::Cluster(cluster) => Some(cluster),
        _ => None,
    };
    let result = execute_against(addr, config, progress, cluster);
    let trove_done = result.as_ref().ok().map(|(_, done)| *done);
    let stopped = match started {
        Started::Embedded(embedded) => Some(embedded.stop(trove_done)),
        Started::Cluster(cluster) => {
            cluster.stop();
            None
        }
        Started::Remote => None,
    };
    let (mut report, _) = result?;
    let node_report = stopped.map(|(node_report, log)| {
        report.node = Some(NodeSummary {
            log,
            ..NodeSummary::of(&node_report)
        });
        node_report
    });
    Ok((report, node_report))
}

fn execute_against(
    addr: SocketAddr,
    config: &BenchConfig,
    progress: &mut Progress,
    cluster: Option<&LocalCluster>,
) -> Result<(Report, Instant), String> {
    let calibration = if config.calibrate {
        progress.note("measuring the loopback round trip and byte rate…");
        Some(crate::bench::calibrate::calibrate(
            config.client_cpus.first().copied(),
            embedded_cpu(config),
            Duration::from_millis(CALIBRATION_MS_DEFAULT),
        )?)
    } else {
        None
    };
    progress.note(&format!(
        "setting up {} hunts with {} players each…",
        config.workload.hunts, config.workload.players_per_hunt
    ));
    set_up_hunts(
        addr,
        &config.workload,
        config.auth.clone(),
        config.tls.clone(),
    )
    .map_err(|error| format!("cannot set the hunts up on {addr}: {error}"))?;
    // The nodes hand their counters to /metrics about once a second: sample once they have
    // stopped moving, before the run (after the set-up) and after it.
    let snapshot_wait = Duration::from_millis(METRICS_SNAPSHOT_MS_DEFAULT * 3 / 2);
    let before = cluster
        .map(|cluster| cluster.quiet_sample(snapshot_wait, CLUSTER_SAMPLE_TRIES))
        .transpose()?;
    let recording = match (&config.out, config.profile) {
        (Some(out), true) => Some(crate::bench::profile::Recording::start(out)?),
        _ => None,
    };
    let moves = match (cluster, &config.target) {
        (Some(cluster), TargetConfig::Cluster { moves, .. }) if *moves > 0 => {
            Some(cluster.start_moves(*moves, config.workload.seed))
        }
        _ => None,
    };
    let drain = match (cluster, &config.target) {
        (Some(cluster), TargetConfig::Cluster { drain: true, .. }) => {
            Some(cluster.start_drain(config.warmup() + config.duration() / 3))
        }
        _ => None,
    };
    let (main, sweep) = run_main(addr, config, progress)?;
    let moves = moves.map(MoveRun::finish).transpose()?;
    let drain = drain
        .map(|drain| drain.finish(main.started_unix_ms, &main.replies_per_second()))
        .transpose()?;
    let trove_done = Instant::now();
    if let Some(recording) = recording {
        progress.note("drawing the flame graphs of the run…");
        recording.finish()?;
    }
    let figures = match (cluster, before) {
        (Some(cluster), Some(before)) => {
            let after = cluster.quiet_sample(snapshot_wait, CLUSTER_SAMPLE_TRIES)?;
            Some(ClusterFigures {
                moves,
                drain,
                ..cluster.figures(&before, &after)
            })
        }
        _ => None,
    };
    let peer = match &config.peer {
        Some(peer) => Some(run_peer(peer, config, main.load, progress)?),
        None => None,
    };
    let report = Report {
        config: serde_json::to_value(config).expect("the configuration serializes"),
        seed: config.workload.seed,
        main: run_record("trove", &main),
        peer,
        calibration,
        sweep,
        node: None,
        cluster: figures,
    };
    Ok((report, trove_done))
}

/// The CPU of the embedded node's first shard, where calibration's server side runs too.
fn embedded_cpu(config: &BenchConfig) -> Option<usize> {
    match &config.target {
        TargetConfig::Embedded { node_cpus, .. } => node_cpus.first().copied(),
        TargetConfig::Remote { .. } | TargetConfig::Cluster { .. } => None,
    }
}

/// Drives the peer with the same event stream and load as the main run.
fn run_peer(
    peer: &PeerConfig,
    config: &BenchConfig,
    load: LoadSpec,
    progress: &mut Progress,
) -> Result<RunRecord, String> {
    // With --redis-aof, a server of the bench's own, stopped when the run is done.
    let own_server = peer.aof.map(RedisServer::start).transpose()?;
    if let Some(warning) = own_server.as_ref().and_then(|server| {
        server
            .dir()
            .tmpfs_warning("the redis-server's append-only file dir")
    }) {
        eprintln!("trove bench: {warning}");
    }
    let addr = own_server.as_ref().map_or(peer.addr, RedisServer::addr);
    progress.note(&format!(
        "setting the same hunts up on {} at {addr}…",
        peer.name
    ));
    set_up_hunts_redis(addr, &config.workload, peer.flush)?;
    let peer_plan = plan(config, load, config.warmup(), config.duration());
    progress.start_phase(
        &peer.name,
        peer_plan.warmup.as_secs_f64(),
        peer_plan.duration.as_secs_f64(),
    );
    let measurement = measure(
        &peer_plan,
        |_| connect_redis(addr, &config.workload),
        &mut |second, latencies, replies| progress.interval(second, latencies, replies),
    );
    progress.finish_phase();
    Ok(run_record(&peer.name, &measurement?))
}

/// The generator alone, into nothing: events made and encoded per second, per thread summed.
pub fn null_sink_rate(config: &BenchConfig) -> f64 {
    crate::bench::null_sink::rate(
        &config.workload,
        config.connections,
        config.events_per_frame,
        config.duration(),
        &config.client_cpus,
    )
}
