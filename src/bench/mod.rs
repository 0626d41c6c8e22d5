//! `trove bench`: an open-loop, coordinated-omission-correct load generator for trove and
//! its peers, and the reports performance engineers read.
//!
//! [`args`] holds the flags, [`config`] turns them into a checked configuration, [`session`]
//! runs it (embedded node, set-up, the run or sweep, the peer), [`generator`] is one load
//! thread, and [`report`] writes what was measured. [`run`] below is the command itself.

pub mod args;
pub mod calibrate;
pub mod cluster;
pub mod config;
pub mod disk;
pub mod generator;
pub mod live_moves;
pub mod null_sink;
pub mod profile;
pub mod progress;
pub mod redis;
pub mod report;
pub mod run;
pub mod session;
pub mod trove_protocol;
pub mod workload;

use std::io::Write;

use args::BenchArgs;
use config::BenchConfig;
use progress::Progress;

/// One benchmark run for `trove gate`: the default configuration (embedded node, closed loop)
/// with the gate's workload file and loopback calibration, returned as a summary JSON.
pub fn run_for_gate(workload: Option<&std::path::Path>) -> Result<serde_json::Value, String> {
    let args = BenchArgs {
        workload: workload.map(std::path::Path::to_path_buf),
        calibrate: true,
        quiet: true,
        ..BenchArgs::default()
    };
    let config = BenchConfig::from_args(&args)?;
    let (report, _) = session::execute(&config, &mut Progress::silent())?;
    serde_json::to_value(report::Summary::of_report(&report)).map_err(|error| error.to_string())
}

/// A scrape of a target node's `/metrics`, parsed.
fn target_metrics_scrape(
    addr: std::net::SocketAddr,
) -> Result<crate::metrics::scrape::NodeScrape, String> {
    crate::metrics::scrape::fetch(addr)
        .and_then(|text| crate::metrics::scrape::NodeScrape::parse(&text))
}

/// One line that says what was run, above the results.
fn describe(config: &BenchConfig) -> String {
    use config::{LoadConfig, TargetConfig};
    let target = match &config.target {
        TargetConfig::Embedded {
            node_cpus,
            durability,
            ..
        } => format!(
            "embedded node, {} shards on CPUs {}, {}",
            node_cpus.len(),
            crate::host::cpuset::CpuSet::from_cpus(node_cpus.iter().copied()),
            match durability {
                None => "in memory (no log)",
                Some(args::DurabilityArg::Sync) => "durability sync (answered once on disk)",
                Some(args::DurabilityArg::Async) =>
                    "durability async (answered at once, synced behind)",
            }
        ),
        TargetConfig::Remote { addr } => format!("node at {addr}"),
        TargetConfig::Cluster {
            nodes,
            shards_per_node,
            ..
        } => format!(
            "local cluster of {nodes} nodes ({shards_per_node} shard(s) each, its own etcd)"
        ),
    };
    let load = match config.load {
        LoadConfig::Open { rate_per_s, .. } => format!("open loop at {rate_per_s:.0} events/s"),
        LoadConfig::Closed { window } => match config.target {
            TargetConfig::Cluster { .. } => {
                format!("closed loop, {window} in flight per connection to each node")
            }
            _ => format!("closed loop, {window} in flight per connection"),
        },
        LoadConfig::Sweep { slo_p99_us, .. } => format!("rate sweep for p99 <= {slo_p99_us} µs"),
    };
    let workload = &config.workload;
    let mix = workload.mix;
    format!(
        "trove bench: {target}; {load}; {} connections{}; {} s after {} s warm-up\nworkload: {} hunts (zipf {}), {} players each, mix join {}% checkin {}% claim {}% leaderboard {}%, seed {}",
        config.connections,
        match (config.shard_aware, &config.target) {
            (true, TargetConfig::Cluster { .. }) =>
                ", cluster-aware (each event to its owner's node and shard)",
            (true, _) => ", shard-aware",
            (false, TargetConfig::Cluster { .. }) => ", all to node 1 (it forwards)",
            (false, _) => "",
        },
        config.duration_s,
        config.warmup_s,
        workload.hunts,
        workload.zipf,
        workload.players_per_hunt,
        mix.join,
        mix.checkin,
        mix.claim,
        mix.leaderboard,
        workload.seed,
    )
}

/// `trove bench`: runs the benchmark the flags describe and returns the exit code.
pub fn run(args: &BenchArgs) -> i32 {
    let config = match BenchConfig::from_args(args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("trove bench: {message}");
            return 2;
        }
    };
    if config.null_sink {
        let rate = session::null_sink_rate(&config);
        let _ = writeln!(
            std::io::stdout(),
            "null sink: {rate:.0} events/s made and encoded by {} generator threads ({} events per frame, no network)",
            config.connections,
            config.events_per_frame
        );
        return 0;
    }
    if config.profile {
        if let Err(message) = profile::check_perf() {
            eprintln!("trove bench: {message}");
            return 3;
        }
    }
    let mut progress = Progress::new(config.quiet);
    let metrics_before = match args.target_metrics.map(target_metrics_scrape).transpose() {
        Ok(scrape) => scrape,
        Err(message) => {
            eprintln!("trove bench: --target-metrics: {message}");
            return 1;
        }
    };
    let (report, node_report) = match session::execute(&config, &mut progress) {
        Ok(done) => done,
        Err(message) => {
            eprintln!("trove bench: {message}");
            return 1;
        }
    };
    // The node's shards hand over their numbers about once a second: wait for one more.
    let metrics_difference = metrics_before.map(|before| {
        std::thread::sleep(std::time::Duration::from_millis(
            crate::constants::METRICS_SNAPSHOT_MS_DEFAULT * 3 / 2,
        ));
        let addr = args.target_metrics.expect("scraped before");
        target_metrics_scrape(addr)
            .map(|after| crate::metrics::scrape::describe_difference(&before, &after))
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", describe(&config));
    if let Err(error) = report::print_summary(&report, &mut stdout) {
        eprintln!("trove bench: cannot print the summary: {error}");
        return 1;
    }
    if let Some(node_report) = node_report {
        let _ = write!(stdout, "embedded node:\n{}", node_report.describe());
    }
    if let Some(cluster) = &report.cluster {
        let _ = write!(stdout, "{}", cluster.describe());
    }
    match metrics_difference {
        None => {}
        Some(Ok(difference)) => {
            let _ = write!(
                stdout,
                "the node's /metrics, over the set-up and the run:\n{difference}"
            );
        }
        Some(Err(message)) => eprintln!("trove bench: --target-metrics after the run: {message}"),
    }
    if let Some(out) = &config.out {
        match report::write_all(out, &report) {
            Ok(files) => {
                let _ = writeln!(
                    stdout,
                    "reports written to {} ({} files)",
                    out.display(),
                    files.len()
                );
                if config.profile {
                    let _ = writeln!(
                        stdout,
                        "flame graphs: {} (the shard threads), {} (the whole process)",
                        out.join(profile::SHARDS_SVG).display(),
                        out.join(profile::PROCESS_SVG).display()
                    );
                }
            }
            Err(error) => {
                eprintln!(
                    "trove bench: cannot write the reports into {}: {error}",
                    out.display()
                );
                return 1;
            }
        }
    }
    0
}
