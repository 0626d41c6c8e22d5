//! `trove sim`: a seeded, deterministic simulation that shows why broadcasting events to every
//! node hits a wall near fifteen nodes, and that partitioned routing scales past it.
//!
//! trove exists because an engine built on a general event framework collapsed past fifteen
//! nodes. Nobody here has 128 machines, so the claim that partitioning fixes it is shown the
//! way serious distributed systems show such things: a discrete-event simulation, in virtual
//! time, that drives trove's real sans-IO shard protocol — every shard is a `ShardCore` that
//! admits, credits, applies, batches and forwards events and routes their replies exactly as
//! a node's shard does — inside a model of CPUs, a network, the traffic between nodes and a
//! failure detector.
//!
//! The parts:
//! - [`config`]: the model's parameters, their defaults, and the faults tests inject;
//! - [`args`]: the command line, turned into a [`args::Plan`];
//! - [`crate::core::rng`]: the seeded random streams (in `core`, shared with the bench);
//! - [`workload`]: hunts, player sessions and the events they send;
//! - [`network`]: latency, bandwidth and FIFO links;
//! - [`shard`]: a shard's CPU and its receive queue, both modelled;
//! - [`engine`]: the simulation loop, the real cores it feeds, and the four strategies;
//! - [`coordination`]: the cluster's real `Coordinator` on every node against a modelled etcd;
//! - [`moves`]: live partition moves on real `ShardCore`s and `Coordinator`s, with seeded
//!   node deaths, pauses and link delays;
//! - [`oracle`]: the correctness properties every run is checked against;
//! - [`report`] and [`plot`]: the table, the JSON and the SVG.
//!
//! Nothing here reads a clock, starts a thread, prints or writes a file: a run is a pure
//! function of its configuration and seed. The command that prints the table and writes the
//! files is `cli::sim`. `README.md` beside this file explains the model and which of its
//! parameters produce the wall.

pub mod args;
pub mod config;
pub mod coordination;
pub mod engine;
pub mod moves;
pub mod network;
pub mod oracle;
pub mod plot;
pub mod report;
pub mod shard;
pub mod workload;

pub use args::SimArgs;

use crate::sim::args::Plan;
use crate::sim::config::{Faults, RunConfig};
use crate::sim::report::{RunReport, SimReport};

/// Runs every strategy on every cluster size of `plan`, in order.
pub fn simulate(plan: &Plan) -> SimReport {
    let mut runs = Vec::with_capacity(plan.strategies.len() * plan.node_counts.len());
    for &strategy in &plan.strategies {
        for &nodes in &plan.node_counts {
            let config = RunConfig {
                model: plan.model.clone(),
                strategy,
                nodes,
                seed: plan.seed,
                faults: Faults::default(),
            };
            runs.push(engine::run(&config));
        }
    }
    let mut report = SimReport {
        seed: plan.seed,
        model: plan.model.clone(),
        runs,
    };
    report.compute_scaling();
    report
}

/// What a run that broke an oracle says: the oracles, the seed, the command that reproduces
/// it, and the first few violations of each oracle.
pub fn failure_report(run: &RunReport) -> String {
    let names: Vec<&str> = run.oracles_failed.iter().map(|o| o.name()).collect();
    let mut text = format!(
        "trove sim: {} on {} nodes broke {} with seed {}; reproduce with:\n  {}\n",
        run.strategy,
        run.nodes,
        names.join(", "),
        run.seed,
        run.command
    );
    for oracle in &run.oracles_failed {
        for example in &run.findings.of(*oracle).examples {
            text.push_str(&format!("    {oracle}: {example}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::config::{Model, Strategy};

    #[test]
    fn a_failing_run_names_its_seed_and_the_command_that_reproduces_it() {
        let config = RunConfig {
            model: Model {
                duration_ms: 10,
                ..Model::default()
            },
            strategy: Strategy::Forward,
            nodes: 3,
            seed: 99,
            faults: Faults {
                leak_credit_every: 10,
                ..Faults::default()
            },
        };
        let run = engine::run(&config);
        let text = failure_report(&run);
        // A shard whose credit leaked can never finish stopping, so it is not drained either.
        assert!(
            text.contains("forward on 3 nodes broke credits, drained with seed 99"),
            "{text}"
        );
        assert!(text.contains(&config.command()), "{text}");
        assert!(text.contains("credits: node "), "{text}");
    }
}
