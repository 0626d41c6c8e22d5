//! Integration tests of `trove sim`: determinism, the oracles against bugs injected on
//! purpose (one of them into trove's real `ShardCore`), the wall the model must show, many
//! seeds of a small cluster, and the command line.

#[path = "support/mod.rs"]
mod support;

use trove::sim::args::Plan;
use trove::sim::config::{Faults, Model, RunConfig, Strategy};
use trove::sim::engine;
use trove::sim::oracle::Oracle;
use trove::sim::report::RunReport;
use trove::sim::simulate;

use support::{COMMAND_WAIT, run_bounded, scratch_dir, trove};

/// A model small enough that a run takes milliseconds.
fn small_model() -> Model {
    Model {
        shards: 2,
        partitions: 64,
        sessions_per_node: 16,
        hunts_per_node: 4,
        warmup_ms: 2,
        duration_ms: 20,
        ..Model::default()
    }
}

fn run(strategy: Strategy, nodes: usize, seed: u64, model: Model, faults: Faults) -> RunReport {
    let config = RunConfig {
        model,
        strategy,
        nodes,
        seed,
        faults,
    };
    engine::run(&config)
}

fn plan(node_counts: &[usize], strategies: &[Strategy], seed: u64, model: Model) -> Plan {
    Plan {
        node_counts: node_counts.to_vec(),
        strategies: strategies.to_vec(),
        seed,
        model,
        json: None,
        svg: None,
        coordination: false,
        moves: None,
    }
}

#[test]
fn the_same_seed_gives_byte_identical_json() {
    let model = small_model();
    let first = simulate(&plan(&[1, 3, 8], &Strategy::ALL, 42, model.clone())).to_json();
    let again = simulate(&plan(&[1, 3, 8], &Strategy::ALL, 42, model.clone())).to_json();
    assert_eq!(first, again);
    let other_seed = simulate(&plan(&[1, 3, 8], &Strategy::ALL, 43, model)).to_json();
    assert_ne!(first, other_seed, "the seed must matter");
}

/// Runs `strategy` on four nodes with and without `faults`; the clean run must pass every
/// oracle and the faulty one must break `expected`.
fn assert_caught(strategy: Strategy, faults: Faults, expected: Oracle) -> RunReport {
    let clean = run(strategy, 4, 7, small_model(), Faults::default());
    assert!(clean.oracles_failed.is_empty(), "{:?}", clean.findings);
    let faulty = run(strategy, 4, 7, small_model(), faults);
    assert!(
        faulty.oracles_failed.contains(&expected),
        "{expected} missed the bug: {:?}",
        faulty.findings
    );
    faulty
}

#[test]
fn the_order_oracle_catches_reordering_links() {
    let faults = Faults {
        reorder_client_links_us: 20_000,
        ..Faults::default()
    };
    assert_caught(Strategy::ShardAware, faults, Oracle::Order);
}

#[test]
fn the_ledger_catches_lost_events() {
    let faults = Faults {
        drop_node_event_every: 50,
        ..Faults::default()
    };
    let report = assert_caught(Strategy::Forward, faults, Oracle::LostOrDuplicated);
    assert!(report.findings.lost_or_duplicated.examples[0].contains("lost"));
}

#[test]
fn the_ledger_catches_duplicated_events() {
    let faults = Faults {
        duplicate_client_event_every: 50,
        ..Faults::default()
    };
    let report = assert_caught(Strategy::Broadcast, faults, Oracle::LostOrDuplicated);
    assert!(report.findings.lost_or_duplicated.examples[0].contains("duplicated"));
}

/// The leak is injected into trove's real `ShardCore` (`ShardConfig::faults`), not into a
/// model: the simulator's credit oracle, which reads the cores' own pools, must name it, on
/// a run the same seed passes without it.
#[test]
fn the_credit_oracle_catches_a_credit_leak_in_the_real_shard_core() {
    let faults = Faults {
        leak_credit_every: 100,
        ..Faults::default()
    };
    for strategy in [Strategy::Router, Strategy::ShardAware] {
        let report = assert_caught(strategy, faults.clone(), Oracle::Credits);
        let examples = &report.findings.credits.examples;
        assert!(
            examples.iter().any(|e| e.contains("socket credit")),
            "{strategy}: {examples:?}"
        );
    }
}

#[test]
fn the_winner_oracle_catches_a_failover_that_lost_its_state() {
    let faults = Faults {
        lose_node0_state_at_us: Some(12_000),
        ..Faults::default()
    };
    let report = assert_caught(Strategy::Forward, faults, Oracle::OneWinner);
    assert!(
        report.oracles_failed == vec![Oracle::OneWinner],
        "only the winners are wrong: {:?}",
        report.findings
    );
}

#[test]
fn broadcast_hits_a_wall_near_fifteen_nodes_and_partitioned_routing_does_not() {
    let model = Model::default();
    let broadcast = simulate(&plan(
        &[1, 8, 16, 32],
        &[Strategy::Broadcast],
        1,
        model.clone(),
    ));
    let at = |nodes: usize| broadcast.runs.iter().find(|r| r.nodes == nodes).unwrap();
    for run in &broadcast.runs {
        assert!(run.oracles_failed.is_empty(), "{:?}", run.findings);
    }
    for nodes in [1, 8] {
        let run = at(nodes);
        assert_eq!((run.queue_overflows, run.false_unresponsive_nodes), (0, 0));
        assert!(run.scaling.unwrap() > 0.95, "{run:?}");
    }
    for nodes in [16, 32] {
        let run = at(nodes);
        assert!(run.queue_overflows > 0, "no overflow on {nodes} nodes");
        assert!(
            run.false_unresponsive_nodes > 0,
            "no false detection on {nodes} nodes"
        );
    }
    assert!(
        at(32).throughput_eps < 1.1 * at(16).throughput_eps,
        "broadcast throughput kept growing past 16 nodes"
    );
    assert!(at(32).scaling.unwrap() < 0.6);

    let partitioned = [Strategy::Forward, Strategy::ShardAware];
    let scaled = simulate(&plan(&[1, 16, 128], &partitioned, 1, model));
    for run in &scaled.runs {
        assert!(run.oracles_failed.is_empty(), "{:?}", run.findings);
        let scaling = run.scaling.unwrap();
        assert!(
            (0.9..=1.1).contains(&scaling),
            "{} on {} nodes scales {scaling}",
            run.strategy,
            run.nodes
        );
        assert_eq!((run.queue_overflows, run.false_unresponsive_nodes), (0, 0));
    }
}

#[test]
fn hundreds_of_seeds_of_a_small_cluster_keep_every_oracle() {
    let mut refused = 0;
    let mut won = 0;
    for seed in 0..300u64 {
        let mut model = Model {
            duration_ms: 8,
            queue_events: 16,
            ..small_model()
        };
        // Every third seed is overloaded, so that refusals and their replies are exercised.
        if seed % 3 == 0 {
            model.rate_per_node = 40_000;
        }
        let nodes = 1 + (seed % 5) as usize;
        for strategy in Strategy::ALL {
            let report = run(strategy, nodes, seed, model.clone(), Faults::default());
            assert!(
                report.oracles_failed.is_empty(),
                "seed {seed} broke {:?}: {:?}\nreproduce with: {}",
                report.oracles_failed,
                report.findings,
                report.command
            );
            refused += report.events_refused;
            won += report.treasures_won;
        }
    }
    assert!(
        refused > 0,
        "no run refused anything: the Busy paths went untested"
    );
    assert!(
        won > 0,
        "nobody won a treasure: the winner oracle went untested"
    );
}

fn trove_sim(args: &[&str]) -> std::process::Output {
    run_bounded(trove().arg("sim").args(args), COMMAND_WAIT)
}

#[test]
fn the_command_line_prints_a_table_and_writes_json_and_svg() {
    let dir = scratch_dir("sim");
    let json = dir.join("sim.json");
    let svg = dir.join("sim.svg");
    let output = trove_sim(&[
        "--nodes",
        "1,2",
        "--duration-ms",
        "5",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        table.lines().count(),
        1 + 2 * Strategy::ALL.len(),
        "{table}"
    );
    assert!(
        table.lines().skip(1).all(|line| line.ends_with("ok")),
        "{table}"
    );
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(parsed["runs"].as_array().unwrap().len(), 8);
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("shard-aware"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_refused_with_a_reason_and_no_panic() {
    let output = trove_sim(&["--strategy", "gossip"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--strategy gossip") && !stderr.contains("panicked"));

    let output = trove_sim(&["--nodes", "1", "--json", "/nonexistent-dir/sim.json"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("cannot write /nonexistent-dir/sim.json"),
        "{stderr}"
    );
}

#[test]
fn the_moves_strategy_prints_a_line_per_seed_and_writes_its_runs_as_json() {
    let dir = scratch_dir("sim-moves");
    let json = dir.join("moves.json");
    let output = trove_sim(&[
        "--strategy",
        "moves",
        "--seed",
        "11",
        "--seeds",
        "4",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    let runs: Vec<&str> = table
        .lines()
        .filter(|line| line.trim_start().starts_with(char::is_numeric))
        .collect();
    assert_eq!(runs.len(), 4, "{table}");
    for (line, seed) in runs.iter().zip(11..) {
        assert!(line.trim_start().starts_with(&format!("{seed} ")), "{line}");
        assert!(line.contains(" ok "), "{line}");
    }
    assert!(
        table.contains("4 runs, 4 kept every oracle, 0 broke one"),
        "{table}"
    );
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let parsed = parsed.as_array().unwrap();
    assert_eq!(parsed.len(), 4);
    assert_eq!(parsed[0]["seed"], 11);
    assert_eq!(parsed[0]["findings"]["liveness"]["count"], 0);
    std::fs::remove_dir_all(&dir).unwrap();

    let output = trove_sim(&["--strategy", "moves", "--seeds", "0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--seeds 0"), "{stderr}");
}
