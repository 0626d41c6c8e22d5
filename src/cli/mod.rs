//! The command line: flags are parsed here (clap) and handed to each tool, which turns them
//! into its own configuration. Wiring only; no tool logic lives here.
//!
//! Exit codes are each tool's own and documented in its `--help`; a usage error is 2.

mod cluster;
mod cluster_moves;
mod node;
mod sim;

use clap::{Parser, Subcommand};

/// trove: a thread-per-core, io_uring event engine for live treasure hunts.
#[derive(Parser, Debug)]
#[command(name = "trove", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand per tool.
#[derive(Subcommand, Debug)]
pub enum Command {
    Node(node::NodeArgs),
    // Boxed: its flags outweigh every other subcommand's (clippy::large_enum_variant).
    Bench(Box<crate::bench::args::BenchArgs>),
    /// Check this host for a pinned node, measure its CPUs' jitter, print fixes.
    Tune(crate::tune::TuneArgs),
    Sim(crate::sim::SimArgs),
    /// Judge benchmark runs against a committed baseline; fail CI on a latency regression.
    Gate(crate::gate::GateArgs),
    /// Run a local cluster on loopback, show a cluster's nodes and placement (etcd), or move
    /// partitions live (move, drain, rebalance).
    Cluster(cluster::ClusterArgs),
    Top(crate::top::TopArgs),
}

/// Parses the command line, runs the tool and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { 2 } else { 0 };
            let _ = error.print();
            return code;
        }
    };
    match cli.command {
        Command::Node(args) => node::run(&args),
        Command::Bench(args) => crate::bench::run(&args),
        Command::Tune(args) => crate::tune::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Top(args) => crate::top::run(&args),
        Command::Gate(args) => {
            let runner = |request: &crate::gate::GateRunRequest| {
                crate::bench::run_for_gate(request.workload.as_deref())
            };
            crate::gate::run(args, &runner)
        }
    }
}
