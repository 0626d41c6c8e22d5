//! The moves simulation's own tests: 300 seeds keep every oracle, and bugs put into the glue
//! or the network are caught by the oracle that should catch them.

use super::*;

/// CI runs this many seeds on every change.
const SEEDS: u64 = 300;

#[test]
fn three_hundred_seeds_of_moves_under_faults_keep_every_oracle() {
    let model = MovesModel::default();
    let mut failures = String::new();
    let mut moved = 0;
    let mut installed = 0;
    let mut held = 0;
    let mut faulted = 0;
    for seed in 1..=SEEDS {
        let run = run(&model, seed);
        if !run.failed().is_empty() {
            failures.push_str(&run.failure_report());
        }
        moved += run.moves_flipped;
        installed += run.staged_installed;
        held += run.events_held;
        faulted += u64::from(run.faults.contains("kill") || run.faults.contains("pause"));
    }
    assert!(failures.is_empty(), "{failures}");
    // The runs did what they are for: moves flipped, and nodes died or paused under them.
    assert!(
        moved >= SEEDS,
        "only {moved} moves flipped over {SEEDS} seeds"
    );
    // The flips carried state streamed to the target, and some events waited at a hand-off.
    assert!(
        installed >= SEEDS,
        "only {installed} staged partitions installed"
    );
    assert!(held > 0, "no event was ever held at a hand-off");
    assert!(
        faulted >= SEEDS / 3,
        "only {faulted} runs killed or paused a node"
    );
}

#[test]
fn busier_runs_with_more_moves_and_faults_sooner_keep_every_oracle() {
    // More pins (moves queue behind `moves_max`), sessions sending ten times as fast, bigger
    // windows, the pins and faults while they send, faults within a move's first
    // milliseconds, and jittery links.
    let model = MovesModel {
        pins: 8,
        think_ms_max: 25,
        operator_start_ms: 20,
        operator_window_ms: 400,
        window: 6,
        fault_delay_ms_max: 30,
        link_jitter_us: 5_000,
        ..MovesModel::default()
    };
    let mut failures = String::new();
    let (mut held, mut kept_back) = (0, 0);
    for seed in 1..=SEEDS {
        let run = run(&model, seed);
        held += run.events_held;
        kept_back += run.replies_kept_back;
        if !run.failed().is_empty() {
            failures.push_str(&run.failure_report());
        }
    }
    assert!(failures.is_empty(), "{failures}");
    // The runs went through both waits of a hand-off: replies kept back for the target's
    // acknowledgement, and events held at a target until the seal.
    assert!(kept_back > 1000, "only {kept_back} replies kept back");
    assert!(held > 0, "no event held at a hand-off");
}

#[test]
fn a_run_is_a_function_of_its_seed() {
    let model = MovesModel::default();
    let (a, b) = (run(&model, 17), run(&model, 17));
    assert_eq!(
        (
            a.moves_started,
            a.moves_flipped,
            a.events_applied,
            &a.faults
        ),
        (
            b.moves_started,
            b.moves_flipped,
            b.events_applied,
            &b.faults
        )
    );
}

/// The first of seeds 1.. whose run, without the bug, flipped a move of a loaded partition:
/// the same seed with the bug must fail.
fn seeds_with_flips(model: &MovesModel, count: usize) -> Vec<u64> {
    seeds_with_flips_without(model, count, &["kill"])
}

/// The first `count` seeds whose run keeps every oracle with two flips or more and none of
/// the node `faults`.
fn seeds_with_flips_without(model: &MovesModel, count: usize, faults: &[&str]) -> Vec<u64> {
    (1..200)
        .filter(|&seed| {
            let run = run(model, seed);
            run.failed().is_empty()
                && run.moves_flipped >= 2
                && !faults.iter().any(|fault| run.faults.contains(fault))
        })
        .take(count)
        .collect()
}

#[test]
fn a_glue_that_flips_before_the_target_is_ready_loses_events_and_is_caught() {
    let model = MovesModel::default();
    let broken = MovesModel {
        glue_fault: GlueFault::FlipBeforeReady,
        ..MovesModel::default()
    };
    // The early flip loses state only when it lands before the target has it, which depends
    // on the seed's timing: most runs must catch it, and every catch must be a loss.
    let seeds = seeds_with_flips(&model, 8);
    let mut caught = 0;
    for &seed in &seeds {
        let run = run(&broken, seed);
        let failed = run.failed();
        if failed.is_empty() {
            continue;
        }
        caught += 1;
        assert!(
            failed.contains(&Oracle::LostOrDuplicated) || failed.contains(&Oracle::FinalState),
            "seed {seed}: {}",
            run.failure_report()
        );
    }
    assert!(
        caught * 2 >= seeds.len(),
        "only {caught} of {} runs with an early flip were caught",
        seeds.len()
    );
}

#[test]
fn a_flip_before_ready_lets_two_nodes_apply_one_partition_at_once_and_is_caught() {
    // The source streams (serving) until it learns of the flip, the target serves from when it
    // learns of it: the two learn a few milliseconds apart, and the sampling sees some.
    let broken = MovesModel {
        glue_fault: GlueFault::FlipBeforeReady,
        ..MovesModel::default()
    };
    let caught = (1..=100)
        .filter(|&seed| run(&broken, seed).failed().contains(&Oracle::DoubleServed))
        .count();
    assert!(
        caught > 0,
        "no run of 100 was caught serving one partition twice"
    );
}

#[test]
fn links_that_lose_their_order_break_the_move_protocol_and_are_caught() {
    // Delays that vary more than the gaps between a move's frames, so that they overtake
    // each other once FIFO is gone.
    let model = MovesModel {
        link_jitter_us: 100_000,
        ..MovesModel::default()
    };
    let broken = MovesModel {
        glue_fault: GlueFault::UnorderedLinks,
        ..model.clone()
    };
    let seeds = seeds_with_flips(&model, 5);
    assert_eq!(
        seeds.len(),
        5,
        "FIFO links with that jitter keep every oracle"
    );
    let caught = seeds
        .into_iter()
        .filter(|&seed| !run(&broken, seed).failed().is_empty())
        .count();
    assert!(
        caught >= 3,
        "only {caught} of 5 runs with unordered links were caught"
    );
}

#[test]
fn a_glue_that_drops_move_reports_never_flips_and_liveness_catches_it() {
    let model = MovesModel::default();
    let broken = MovesModel {
        glue_fault: GlueFault::DropReports,
        ..MovesModel::default()
    };
    // Runs whose nodes all stay up: the liveness bound exempts a move whose ends were down
    // or paused (the source keeps serving while its move waits, so no client stalls either).
    for seed in seeds_with_flips_without(&model, 3, &["kill", "pause"]) {
        let run = run(&broken, seed);
        assert_eq!(run.moves_flipped, 0, "seed {seed}");
        assert!(
            run.failed().contains(&Oracle::Liveness),
            "seed {seed}: {}",
            run.failure_report()
        );
    }
}

#[test]
fn a_failed_run_names_its_seed_the_oracle_and_the_command() {
    let broken = MovesModel {
        glue_fault: GlueFault::FlipBeforeReady,
        ..MovesModel::default()
    };
    let run = (1..100)
        .map(|seed| run(&broken, seed))
        .find(|run| !run.failed().is_empty())
        .expect("a broken glue fails some seed");
    let text = run.failure_report();
    assert!(text.contains(&format!("with seed {}", run.seed)), "{text}");
    assert!(
        text.contains(&format!("trove sim --strategy moves --seed {}", run.seed)),
        "{text}"
    );
    assert!(text.contains(run.failed()[0].name()), "{text}");
}
