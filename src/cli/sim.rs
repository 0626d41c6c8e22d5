//! `trove sim`'s command: parses the flags, runs the simulation (`crate::sim`, pure), prints
//! the table and writes the report files. Runs on the CLI's thread.

use std::path::Path;

use crate::sim::args::Plan;
use crate::sim::{SimArgs, coordination, failure_report, plot, simulate};

/// Exit code when an oracle failed.
const EXIT_ORACLE_FAILED: i32 = 1;
/// Exit code for bad flags.
const EXIT_USAGE: i32 = 2;
/// Exit code when an output file could not be written.
const EXIT_OUTPUT: i32 = 3;

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

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|error| {
        format!(
            "cannot write {}: {error}; check that its folder exists and is writable",
            path.display()
        )
    })
}
