//! `trove sim --strategy moves`: live partition moves on the real `ShardCore`s and the real
//! `cluster::Coordinator`s of a small cluster, in virtual time, with seeded faults.
//!
//! Each run starts 3 or 4 nodes, each with its real `Coordinator` (against the modelled etcd,
//! `cluster::model::ModelEtcd`, as `sim::coordination` runs it) and two real `ShardCore`s. The
//! glue between them does what a node's control thread and shards do (`cluster::control`,
//! `runtime::control_feed`, `runtime::shard`): it installs each placement and lease on the
//! cores (by the shared rule of `cluster::feed`), fences them when the lease's known-valid end
//! passes, hands their move reports to the coordinator, and carries link and move frames
//! between cores of different nodes. Clients play hunts and claim treasures, routed by their
//! own map and re-routed on `Moved` by the cluster client's own rules (`client::redirect`).
//! Moves are asked for the way an operator does: pins (`pins/<p>`) and drains written into
//! etcd at seeded times.
//!
//! Faults, seeded per run: the target of a move killed mid-move (its links break, its lease
//! runs out), the source of a move paused (nothing of it runs for a while; its lease may run
//! out), and delay spikes on one link. Links keep FIFO order per direction (as TCP does) with a
//! seeded delay per message, so messages on different links reorder freely.
//!
//! Every run is checked by the oracles of `sim::oracle` (see `check`). A run is a pure
//! function of its model and seed: nothing here reads a clock, starts a thread or prints.
//!
//! - [`workload`]: the sessions, their events and the ledger of what clients were told;
//! - `world`: the event loop, the nodes' glue, the links and the clients;
//! - `check`: the oracles run at the end of each run.

mod check;
pub mod workload;
mod world;

use std::fmt::Write;

use serde::Serialize;

use crate::constants::{CLUSTER_POLL_MS_DEFAULT, SIM_MOVES_NODES_MAX, SIM_MOVES_SEEDS_MAX};
use crate::sim::coordination::CoordinationModel;
use crate::sim::oracle::{Findings, Oracle};

/// A bug the tests put into the glue or the network, to show the oracles catch it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GlueFault {
    /// None: the glue does what a node does.
    #[default]
    None,
    /// The glue tells the controller a move is ready as soon as its source sees it start,
    /// before the target has the partition's state.
    FlipBeforeReady,
    /// Links lose their FIFO order: each message takes its own delay.
    UnorderedLinks,
    /// The glue drops the cores' move reports instead of handing them to the coordinator.
    DropReports,
}

/// The model's parameters.
#[derive(Clone, Debug)]
pub struct MovesModel {
    /// Nodes of the cluster; `None`: 3 or 4, by seed.
    pub nodes: Option<usize>,
    /// Coordination: partitions, shards per node, lease TTL, poll, settle, etcd round trip.
    pub coordination: CoordinationModel,
    pub hunts: usize,
    pub sessions_per_hunt: usize,
    /// Events a session has unanswered at once, at most.
    pub window: usize,
    /// A node link's delay per message: this, plus a seeded part of up to `link_jitter_us`.
    pub link_delay_us: u64,
    pub link_jitter_us: u64,
    /// Pins written per run.
    pub pins: usize,
    /// A session's pause between two sends: up to this.
    pub think_ms_max: u64,
    /// The run's node fault strikes up to this long after its pin.
    pub fault_delay_ms_max: u64,
    /// The pins, the drain and the delay spike come this long after the clients start (at
    /// 1 s), spread over `operator_window_ms`.
    pub operator_start_ms: u64,
    pub operator_window_ms: u64,
    /// A move whose source and target stay up this long after it starts must have flipped.
    pub liveness_ms: u64,
    /// Virtual length of a run.
    pub run_ms: u64,
    pub glue_fault: GlueFault,
}

impl Default for MovesModel {
    fn default() -> Self {
        let coordination = CoordinationModel {
            lease_ttl_s: 2,
            poll_ms: CLUSTER_POLL_MS_DEFAULT.min(100),
            settle_ms: 300,
            etcd_rtt_us: 500,
            watch_delay_ms: 5,
            start_spread_ms: 100,
            ..CoordinationModel::new(16, 2)
        };
        MovesModel {
            nodes: None,
            coordination,
            hunts: 8,
            sessions_per_hunt: 3,
            window: 3,
            link_delay_us: 200,
            link_jitter_us: 2_000,
            pins: 3,
            think_ms_max: 250,
            fault_delay_ms_max: 80,
            operator_start_ms: 300,
            operator_window_ms: 1_800,
            liveness_ms: 8_000,
            run_ms: 12_000,
            glue_fault: GlueFault::None,
        }
    }
}

/// What one run did and found.
#[derive(Clone, Debug, Serialize)]
pub struct MovesRun {
    pub seed: u64,
    pub nodes: usize,
    /// The faults injected, in words.
    pub faults: String,
    pub moves_started: u64,
    pub moves_flipped: u64,
    pub moves_abandoned: u64,
    /// Staged partitions the targets' cores installed at a flip (their own count).
    pub staged_installed: u64,
    /// Events the cores held at a hand-off (their own count).
    pub events_held: u64,
    /// Replies the sources' cores kept back until their targets had the events.
    pub replies_kept_back: u64,
    pub events_sent: u64,
    pub events_applied: u64,
    pub events_not_applied: u64,
    /// Events whose client lost its connection before the answer (a node died).
    pub events_lost_answer: u64,
    pub findings: Findings,
}

impl MovesRun {
    pub fn failed(&self) -> Vec<Oracle> {
        self.findings.failed()
    }

    /// The command that runs this seed again.
    pub fn command(&self) -> String {
        format!("trove sim --strategy moves --seed {}", self.seed)
    }

    /// What a failed run says: the seed, the oracles, the command, the first examples.
    pub fn failure_report(&self) -> String {
        let names: Vec<&str> = self.failed().iter().map(|o| o.name()).collect();
        let mut text = format!(
            "trove sim: moves on {} nodes broke {} with seed {} (faults: {}); reproduce with:\n  {}\n",
            self.nodes,
            names.join(", "),
            self.seed,
            self.faults,
            self.command()
        );
        for oracle in self.failed() {
            for example in &self.findings.of(oracle).examples {
                let _ = writeln!(text, "    {oracle}: {example}");
            }
        }
        text
    }
}

/// Checks a `--seeds` count.
pub fn check_seeds(seeds: u64) -> Result<(), String> {
    if !(1..=SIM_MOVES_SEEDS_MAX).contains(&seeds) {
        return Err(format!(
            "--seeds {seeds}: give 1 to {SIM_MOVES_SEEDS_MAX} seeds"
        ));
    }
    Ok(())
}

/// Runs the moves model once with `seed`.
pub fn run(model: &MovesModel, seed: u64) -> MovesRun {
    let nodes = model.nodes.unwrap_or(3 + (seed % 2) as usize);
    assert!(
        (2..=SIM_MOVES_NODES_MAX).contains(&nodes),
        "the model is checked before a run"
    );
    world::World::new(model, nodes, seed).run()
}

/// The table header and one line per run.
pub fn table(model: &MovesModel, runs: &[MovesRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "moves: real ShardCores and Coordinators, {} partitions, {} shards per node, lease TTL {} s, \
         link delay {}+{} µs, {} pins per run",
        model.coordination.partitions,
        model.coordination.shards_per_node,
        model.coordination.lease_ttl_s,
        model.link_delay_us,
        model.link_jitter_us,
        model.pins
    );
    let _ = writeln!(
        out,
        "{:>6} {:>5} {:>7} {:>7} {:>9} {:>9} {:>4} {:>6} {:>7} {:>11} {:>6}  {:<8} faults",
        "seed",
        "nodes",
        "started",
        "flipped",
        "abandoned",
        "installed",
        "held",
        "events",
        "applied",
        "not-applied",
        "lost",
        "oracles"
    );
    for run in runs {
        let failed = run.failed();
        let oracles = if failed.is_empty() {
            "ok".to_owned()
        } else {
            failed
                .iter()
                .map(|o| o.name())
                .collect::<Vec<_>>()
                .join(",")
        };
        let _ = writeln!(
            out,
            "{:>6} {:>5} {:>7} {:>7} {:>9} {:>9} {:>4} {:>6} {:>7} {:>11} {:>6}  {:<8} {}",
            run.seed,
            run.nodes,
            run.moves_started,
            run.moves_flipped,
            run.moves_abandoned,
            run.staged_installed,
            run.events_held,
            run.events_sent,
            run.events_applied,
            run.events_not_applied,
            run.events_lost_answer,
            oracles,
            run.faults
        );
    }
    out
}

#[cfg(test)]
mod tests;
