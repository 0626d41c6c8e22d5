//! `trove sim`: a seeded, deterministic simulation that shows why broadcasting events to every
//! node hits a wall near fifteen nodes, and that partitioned routing scales past it.
//!
//! trove exists because an engine built on a general event framework collapsed past fifteen
//! nodes. Nobody here has 128 machines, so the claim that partitioning fixes it is shown the
//! way serious distributed systems show such things: a discrete-event simulation, in virtual
//! time, that drives the real sans-IO core — events archived with rkyv and validated by the
//! codec, routed by the partition map, applied by the treasure-hunt state machine, bounded by
//! credit pools — inside a model of CPUs, queues, a network and a failure detector.
//!
//! The parts:
//! - [`config`]: the model's parameters, their defaults, and the faults tests inject;
//! - [`args`]: the command line, turned into a [`args::Plan`];
//! - [`crate::core::rng`]: the seeded random streams (in `core`, shared with the bench);
//! - [`workload`]: hunts, player sessions and the events they send;
//! - [`network`]: latency, bandwidth and FIFO links;
//! - [`shard`]: a shard's CPU and its credit-bounded queue;
//! - [`engine`]: the simulation loop and the four strategies;
//! - [`coordination`]: the cluster's real `Coordinator` on every node against a modelled etcd;
//! - [`oracle`]: the correctness properties every run is checked against;
//! - [`report`] and [`plot`]: the table, the JSON and the SVG.
//!
//! Nothing here reads a clock or starts a thread: a run is a pure function of its
//! configuration and seed. `README.md` beside this file explains the model and which of its
//! parameters produce the wall.

pub mod args;
pub mod config;
pub mod coordination;
pub mod engine;
pub mod network;
pub mod oracle;
pub mod plot;
pub mod report;
pub mod shard;
pub mod workload;

use std::path::Path;

pub use args::SimArgs;

use crate::sim::args::Plan;
use crate::sim::config::{Faults, RunConfig};
use crate::sim::report::{RunReport, SimReport};

/// Exit code when an oracle failed.
const EXIT_ORACLE_FAILED: i32 = 1;
/// Exit code for bad flags.
const EXIT_USAGE: i32 = 2;
/// Exit code when an output file could not be written.
const EXIT_OUTPUT: i32 = 3;

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

/// `trove sim`: parses the flags, runs the simulation, prints the table, writes the files.
pub fn run(args: SimArgs) -> i32 {
    let plan = match args.into_plan() {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("trove sim: {message}");
            return EXIT_USAGE;
        }
    };
    let report = simulate(&plan);
    // A closed stdout (`trove sim | head`) is not an error of the simulation.
    if !plan.strategies.is_empty() {
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), report.table().as_bytes());
    }
    let coordination_failed = plan.coordination && run_coordination(&plan);
    if let Some(path) = &plan.json {
        if let Err(message) = write(path, &report.to_json()) {
            eprintln!("trove sim: {message}");
            return EXIT_OUTPUT;
        }
    }
    if let Some(path) = &plan.svg {
        let written = plot::svg(&report).and_then(|svg| write(path, &svg));
        if let Err(message) = written {
            eprintln!("trove sim: {message}");
            return EXIT_OUTPUT;
        }
    }
    let mut failed = false;
    for run in report.failures() {
        failed = true;
        eprint!("{}", failure_report(run));
    }
    if failed || coordination_failed {
        EXIT_ORACLE_FAILED
    } else {
        0
    }
}

/// Runs and prints the coordination model on every cluster size; true when a run failed.
fn run_coordination(plan: &Plan) -> bool {
    let shards = u16::try_from(plan.model.shards).unwrap_or(u16::MAX);
    let model = coordination::CoordinationModel::new(plan.model.partitions, shards);
    let runs: Vec<_> = plan
        .node_counts
        .iter()
        .map(|&nodes| coordination::run(&model, nodes, plan.seed))
        .collect();
    let _ = std::io::Write::write_all(
        &mut std::io::stdout().lock(),
        coordination::table(&model, &runs).as_bytes(),
    );
    let mut failed = false;
    for run in runs.iter().filter(|run| run.failed()) {
        failed = true;
        eprintln!(
            "trove sim: coordination on {} nodes failed with seed {} ({run:?}); reproduce with:\n  \
             trove sim --strategy coordination --nodes {} --seed {} --partitions {} --shards {}",
            run.nodes, plan.seed, run.nodes, plan.seed, plan.model.partitions, plan.model.shards
        );
    }
    failed
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

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|error| {
        format!(
            "cannot write {}: {error}; check that its folder exists and is writable",
            path.display()
        )
    })
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
        assert!(
            text.contains("forward on 3 nodes broke credits with seed 99"),
            "{text}"
        );
        assert!(text.contains(&config.command()), "{text}");
        assert!(text.contains("credits: node "), "{text}");
    }
}
