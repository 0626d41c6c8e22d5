//! The flags of `trove sim`, and their translation into a [`Plan`]: which runs to make with
//! which model. Parsing happens here; what the parameters mean is documented in `config`.

use std::path::PathBuf;

use clap::Args;

use crate::constants::SIM_COORDINATION_NODES_MAX;
use crate::constants::{SIM_MOVES_NODES_MAX, SIM_NODE_COUNTS_MAX};
use crate::sim::config::{Costs, Model, NetworkModel, Strategy};
use crate::sim::moves;

/// `--nodes` when not given.
const NODES_DEFAULT: &str = "1,2,4,8,15,16,32,64,128";

/// Simulate a trove cluster in virtual time and compare how events are distributed.
///
/// Runs trove's real shard protocol (a ShardCore per shard: admission, credit, forwarding
/// between shards, the state machine, reply routing) inside a seeded, deterministic
/// discrete-event model of N nodes with C shards each, for every node count and
/// strategy asked for. Prints a table; writes JSON and an SVG plot if asked. The same seed
/// gives the same results, byte for byte. It is a model, not a measurement: see
/// src/sim/README.md for what it assumes.
///
/// Exit codes: 0 every run kept every oracle; 1 an oracle failed (the seed and the command
/// that reproduces the run are printed); 2 bad flags; 3 an output file could not be written.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Cluster sizes to simulate, comma-separated.
    /// With `--strategy moves`: 2 to 8 nodes per run (default: 3 or 4, by seed).
    #[arg(long, default_value = NODES_DEFAULT, value_delimiter = ',')]
    pub nodes: Vec<usize>,
    /// Strategies to compare, comma-separated: broadcast, router, forward, shard-aware, or all;
    /// `coordination` runs the cluster's real Coordinator against a modelled etcd instead;
    /// `moves` runs live partition moves on real ShardCores and Coordinators with seeded
    /// faults (its own small cluster: 16 partitions, 2 shards per node; see src/sim/README.md).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub strategy: Vec<String>,
    /// Seed of every random choice of the model.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// With `--strategy moves`: run this many seeds, from `--seed` on, one line each.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Write every run's results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Plot throughput and messages per event against nodes as SVG to this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Shards (cores) per node.
    #[arg(long, default_value_t = Model::default().shards)]
    pub shards: usize,
    /// Partitions of the cluster (a power of two).
    #[arg(long, default_value_t = Model::default().partitions)]
    pub partitions: u32,
    /// Events per second offered per node (open loop).
    #[arg(long, default_value_t = Model::default().rate_per_node)]
    pub rate_per_node: u64,
    /// Client sessions (players) per node.
    #[arg(long, default_value_t = Model::default().sessions_per_node)]
    pub sessions_per_node: usize,
    /// Hunts per node.
    #[arg(long, default_value_t = Model::default().hunts_per_node)]
    pub hunts_per_node: usize,
    /// Virtual milliseconds of load before the measured window.
    #[arg(long, default_value_t = Model::default().warmup_ms)]
    pub warmup_ms: u64,
    /// Virtual milliseconds of the measured window.
    #[arg(long, default_value_t = Model::default().duration_ms)]
    pub duration_ms: u64,
    /// CPU nanoseconds to receive and decode one network message.
    #[arg(long, default_value_t = Model::default().costs.recv_ns)]
    pub recv_ns: u64,
    /// CPU nanoseconds to encode and send one network message.
    #[arg(long, default_value_t = Model::default().costs.send_ns)]
    pub send_ns: u64,
    /// CPU nanoseconds to look at a broadcast event and drop it as someone else's.
    #[arg(long, default_value_t = Model::default().costs.filter_ns)]
    pub filter_ns: u64,
    /// CPU nanoseconds to apply one event to the state machine.
    #[arg(long, default_value_t = Model::default().costs.apply_ns)]
    pub apply_ns: u64,
    /// CPU nanoseconds to hand an event or reply to another shard of the same node.
    #[arg(long, default_value_t = Model::default().costs.hop_ns)]
    pub hop_ns: u64,
    /// One-way network latency, in microseconds.
    #[arg(long, default_value_t = Model::default().network.latency_us)]
    pub latency_us: u64,
    /// Most extra one-way delay per message, in microseconds (links stay FIFO).
    #[arg(long, default_value_t = Model::default().network.jitter_us)]
    pub jitter_us: u64,
    /// Bandwidth of each node's network interface, per direction, in Gbit/s.
    #[arg(long, default_value_t = Model::default().network.bandwidth_gbps)]
    pub bandwidth_gbps: u64,
    /// Items a shard's queue holds (its credit in events); one more is an overflow.
    #[arg(long, default_value_t = Model::default().queue_events)]
    pub queue_events: u32,
    /// Microseconds between two heartbeats of a node to the next one on the ring.
    #[arg(long, default_value_t = Model::default().heartbeat_interval_us)]
    pub heartbeat_interval_us: u64,
    /// Microseconds without a processed answer before a node is declared unresponsive.
    #[arg(long, default_value_t = Model::default().heartbeat_timeout_us)]
    pub heartbeat_timeout_us: u64,
}

/// What `trove sim` was asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    pub node_counts: Vec<usize>,
    pub strategies: Vec<Strategy>,
    pub seed: u64,
    pub model: Model,
    pub json: Option<PathBuf>,
    pub svg: Option<PathBuf>,
    /// Also run the coordination model (`--strategy coordination`, see `sim::coordination`).
    pub coordination: bool,
    /// Also run the live-moves model (`--strategy moves`, see `sim::moves`).
    pub moves: Option<MovesPlan>,
}

/// The runs of `--strategy moves`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovesPlan {
    /// The first seed and how many.
    pub seed: u64,
    pub seeds: u64,
    /// Nodes per run (each seed runs once per count); `None`: 3 or 4, by seed.
    pub nodes: Option<Vec<usize>>,
}

impl SimArgs {
    /// Checks the flags and turns them into a plan, or says what is wrong.
    pub fn into_plan(self) -> Result<Plan, String> {
        let model = Model {
            shards: self.shards,
            partitions: self.partitions,
            rate_per_node: self.rate_per_node,
            sessions_per_node: self.sessions_per_node,
            hunts_per_node: self.hunts_per_node,
            warmup_ms: self.warmup_ms,
            duration_ms: self.duration_ms,
            costs: Costs {
                recv_ns: self.recv_ns,
                send_ns: self.send_ns,
                filter_ns: self.filter_ns,
                apply_ns: self.apply_ns,
                hop_ns: self.hop_ns,
            },
            network: NetworkModel {
                latency_us: self.latency_us,
                jitter_us: self.jitter_us,
                bandwidth_gbps: self.bandwidth_gbps,
            },
            queue_events: self.queue_events,
            heartbeat_interval_us: self.heartbeat_interval_us,
            heartbeat_timeout_us: self.heartbeat_timeout_us,
        };
        model.validate()?;
        let (coordination, rest): (Vec<String>, Vec<String>) = self
            .strategy
            .iter()
            .cloned()
            .partition(|name| name == "coordination");
        let (moves, data_path): (Vec<String>, Vec<String>) =
            rest.into_iter().partition(|name| name == "moves");
        let strategies = parse_strategies(&data_path)?;
        let nodes_given = self.nodes != default_nodes();
        let moves = if moves.is_empty() {
            if self.seeds != 1 {
                return Err(format!(
                    "--seeds {}: only --strategy moves runs several seeds; give one --seed",
                    self.seeds
                ));
            }
            None
        } else {
            moves::check_seeds(self.seeds)?;
            let nodes = nodes_given.then(|| self.nodes.clone());
            if let Some(bad) = nodes
                .iter()
                .flatten()
                .find(|n| !(2..=SIM_MOVES_NODES_MAX).contains(*n))
            {
                return Err(format!(
                    "--nodes {bad}: the moves model runs 2 to {SIM_MOVES_NODES_MAX} nodes"
                ));
            }
            Some(MovesPlan {
                seed: self.seed,
                seeds: self.seeds,
                nodes,
            })
        };
        let mut node_counts = self.nodes;
        node_counts.sort_unstable();
        node_counts.dedup();
        if node_counts.is_empty() || node_counts.len() > SIM_NODE_COUNTS_MAX {
            return Err(format!(
                "--nodes: give 1 to {SIM_NODE_COUNTS_MAX} cluster sizes, comma-separated"
            ));
        }
        for &nodes in &node_counts {
            for &strategy in &strategies {
                model.validate_cluster(nodes, strategy)?;
            }
            if !coordination.is_empty() && !(1..=SIM_COORDINATION_NODES_MAX).contains(&nodes) {
                return Err(format!(
                    "--nodes {nodes}: the coordination model runs 1 to \
                     {SIM_COORDINATION_NODES_MAX} nodes"
                ));
            }
        }
        Ok(Plan {
            node_counts,
            strategies,
            seed: self.seed,
            model,
            json: self.json,
            svg: self.svg,
            coordination: !coordination.is_empty(),
            moves,
        })
    }
}

fn default_nodes() -> Vec<usize> {
    NODES_DEFAULT
        .split(',')
        .map(|n| n.parse().expect("the default is a list of numbers"))
        .collect()
}

fn parse_strategies(names: &[String]) -> Result<Vec<Strategy>, String> {
    let mut strategies = Vec::new();
    for name in names {
        if name == "all" {
            strategies.extend(Strategy::ALL);
            continue;
        }
        let strategy = Strategy::from_name(name).ok_or_else(|| {
            format!(
                "--strategy {name}: not a strategy; choose from broadcast, router, forward, \
                 shard-aware, all, coordination, moves"
            )
        })?;
        strategies.push(strategy);
    }
    strategies.sort_unstable();
    strategies.dedup();
    Ok(strategies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let mut argv = vec!["sim"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().sim.into_plan()
    }

    #[test]
    fn defaults_are_the_documented_model_and_run_set() {
        let plan = plan(&[]).unwrap();
        assert_eq!(plan.model, Model::default());
        assert_eq!(plan.node_counts, vec![1, 2, 4, 8, 15, 16, 32, 64, 128]);
        assert_eq!(plan.strategies, Strategy::ALL.to_vec());
    }

    #[test]
    fn every_flag_of_the_reproduce_command_parses_back_to_the_model() {
        let model = Model {
            shards: 3,
            rate_per_node: 1234,
            heartbeat_timeout_us: 777,
            ..Model::default()
        };
        let flags = model.flags();
        let args: Vec<&str> = flags.split(' ').collect();
        assert_eq!(plan(&args).unwrap().model, model);
    }

    #[test]
    fn moves_takes_a_seed_range_and_its_own_node_counts() {
        let plan = plan(&["--strategy", "moves", "--seed", "5", "--seeds", "300"]).unwrap();
        assert!(plan.strategies.is_empty() && !plan.coordination);
        let moves = MovesPlan {
            seed: 5,
            seeds: 300,
            nodes: None,
        };
        assert_eq!(plan.moves, Some(moves));
        let plan = plan_nodes(&["--strategy", "moves", "--nodes", "3,4"]);
        assert_eq!(plan.moves.unwrap().nodes, Some(vec![3, 4]));
        let error = plan_error(&["--strategy", "moves", "--nodes", "12"]);
        assert!(error.contains("2 to 8 nodes"), "{error}");
        let error = plan_error(&["--strategy", "moves", "--seeds", "0"]);
        assert!(error.contains("--seeds 0"), "{error}");
        let error = plan_error(&["--strategy", "forward", "--seeds", "3"]);
        assert!(error.contains("only --strategy moves"), "{error}");
    }

    fn plan_nodes(args: &[&str]) -> Plan {
        plan(args).unwrap()
    }

    fn plan_error(args: &[&str]) -> String {
        plan(args).unwrap_err()
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let error = plan(&["--strategy", "gossip"]).unwrap_err();
        assert!(error.contains("--strategy gossip"), "{error}");
        let error = plan(&["--nodes", "0"]).unwrap_err();
        assert!(error.contains("0 nodes"), "{error}");
        let error = plan(&["--shards", "0"]).unwrap_err();
        assert!(error.contains("--shards"), "{error}");
    }

    #[test]
    fn strategies_and_node_counts_are_sorted_and_deduplicated() {
        let plan = plan(&[
            "--strategy",
            "forward,broadcast,forward",
            "--nodes",
            "4,1,4",
        ])
        .unwrap();
        assert_eq!(
            plan.strategies,
            vec![Strategy::Broadcast, Strategy::Forward]
        );
        assert_eq!(plan.node_counts, vec![1, 4]);
    }
}
