//! `trove sim`'s command: parses the flags, runs the simulation (`crate::sim`, pure), prints
//! the table and writes the report files. Runs on the CLI's thread.

use std::io::Write as _;
use std::path::Path;

use crate::sim::args::Plan;
use crate::sim::{SimArgs, coordination, failure_report, moves, plot, simulate};

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
    let moves_runs = plan.moves.as_ref().map(run_moves).unwrap_or_default();
    let moves_failed = moves_runs.iter().any(|run| !run.failed().is_empty());
    if let Some(path) = &plan.json {
        if plan.strategies.is_empty() && plan.moves.is_some() {
            let json = serde_json::to_string_pretty(&moves_runs)
                .expect("a report of plain values serializes");
            if let Err(message) = write(path, &json) {
                eprintln!("trove sim: {message}");
                return EXIT_OUTPUT;
            }
            return if moves_failed || coordination_failed {
                EXIT_ORACLE_FAILED
            } else {
                0
            };
        }
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
    if failed || coordination_failed || moves_failed {
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

/// Runs and prints the moves model on every seed asked for; failed runs say so on stderr.
fn run_moves(plan: &crate::sim::args::MovesPlan) -> Vec<moves::MovesRun> {
    let model = moves::MovesModel::default();
    let counts: Vec<Option<usize>> = match &plan.nodes {
        Some(counts) => counts.iter().map(|&n| Some(n)).collect(),
        None => vec![None],
    };
    let mut runs = Vec::new();
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, moves::table(&model, &[]).as_bytes());
    for seed in plan.seed..plan.seed.saturating_add(plan.seeds) {
        for &nodes in &counts {
            let model = moves::MovesModel {
                nodes,
                ..model.clone()
            };
            let run = moves::run(&model, seed);
            let line = moves::table(&model, std::slice::from_ref(&run));
            // The header is printed once, above: only the run's line.
            let line = line.lines().last().unwrap_or_default();
            let _ = writeln!(out, "{line}");
            if !run.failed().is_empty() {
                eprint!("{}", run.failure_report());
            }
            runs.push(run);
        }
    }
    let failed = runs.iter().filter(|run| !run.failed().is_empty()).count();
    let _ = writeln!(
        out,
        "moves: {} runs, {} kept every oracle, {failed} broke one",
        runs.len(),
        runs.len() - failed
    );
    runs
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|error| {
        format!(
            "cannot write {}: {error}; check that its folder exists and is writable",
            path.display()
        )
    })
}
