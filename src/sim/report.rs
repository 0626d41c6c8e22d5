//! What a run measured, and how a set of runs is shown: a table for the terminal and a JSON
//! document for programs.
//!
//! The JSON holds only what the seed and the model decide (no wall-clock time, no host
//! name), with every map written in a fixed order, so the same seed gives the same bytes.

use std::fmt::Write as _;

use serde::Serialize;

use crate::sim::config::{Model, RunConfig, Strategy};
use crate::sim::network::Traffic;
use crate::sim::oracle::{Findings, Oracle};
use crate::sim::shard::ShardQueue;

/// Counters a run keeps while it runs (a run view).
pub struct RunStats {
    warmup_ns: u64,
    load_end_ns: u64,
    duration_ns: u64,
    sent_in_window: u64,
    applied_in_window: u64,
    /// Round trips of the events sent in the window and applied, in nanoseconds.
    latencies_ns: Vec<u64>,
    pub events_sent: u64,
    pub events_refused: u64,
    pub declarations: u64,
    pub false_unresponsive_nodes: u64,
    pub traffic: Traffic,
    queue_depth_max: usize,
    queue_overflows: u64,
}

impl RunStats {
    pub fn new(model: &Model) -> RunStats {
        RunStats {
            warmup_ns: model.warmup_ns(),
            load_end_ns: model.load_end_ns(),
            duration_ns: model.duration_ms * 1_000_000,
            sent_in_window: 0,
            applied_in_window: 0,
            latencies_ns: Vec::new(),
            events_sent: 0,
            events_refused: 0,
            declarations: 0,
            false_unresponsive_nodes: 0,
            traffic: Traffic::default(),
            queue_depth_max: 0,
            queue_overflows: 0,
        }
    }

    fn in_window(&self, time_ns: u64) -> bool {
        (self.warmup_ns..self.load_end_ns).contains(&time_ns)
    }

    pub fn on_sent(&mut self, sent_ns: u64) {
        self.sent_in_window += u64::from(self.in_window(sent_ns));
    }

    pub fn on_applied(&mut self, now: u64) {
        self.applied_in_window += u64::from(self.in_window(now));
    }

    pub fn on_reply(&mut self, sent_ns: u64, round_trip_ns: u64) {
        if self.in_window(sent_ns) {
            self.latencies_ns.push(round_trip_ns);
        }
    }

    /// Events a core answered `Busy` for want of credit: overflows of the core's budget.
    pub fn on_busy(&mut self, busy_replies: u64) {
        self.queue_overflows += busy_replies;
    }

    pub fn on_queue(&mut self, queue: &ShardQueue) {
        self.queue_depth_max = self.queue_depth_max.max(queue.depth_max);
        self.queue_overflows += queue.overflows;
    }

    /// The report of the run, with what the oracles found.
    pub fn finish(
        mut self,
        config: &RunConfig,
        findings: Findings,
        treasures_won: u64,
    ) -> RunReport {
        let seconds = self.duration_ns as f64 / 1e9;
        let per_event = |total: u64| round(total as f64 / self.events_sent.max(1) as f64, 2);
        RunReport {
            strategy: config.strategy,
            nodes: config.nodes,
            events_sent: self.events_sent,
            events_refused: self.events_refused,
            offered_eps: round(self.sent_in_window as f64 / seconds, 0),
            throughput_eps: round(self.applied_in_window as f64 / seconds, 0),
            scaling: None,
            messages_per_event: per_event(self.traffic.event_messages),
            bytes_per_event: per_event(self.traffic.event_bytes),
            heartbeat_messages: self.traffic.heartbeat_messages,
            queue_depth_max: self.queue_depth_max,
            queue_overflows: self.queue_overflows,
            unresponsive_declarations: self.declarations,
            false_unresponsive_nodes: self.false_unresponsive_nodes,
            latency_us_p50: percentile_us(&mut self.latencies_ns, 50),
            latency_us_p99: percentile_us(&mut self.latencies_ns, 99),
            treasures_won,
            oracles_failed: findings.failed(),
            findings,
            seed: config.seed,
            command: config.command(),
        }
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The `percent`-th percentile, in microseconds (0 when there is no sample).
fn percentile_us(samples: &mut [u64], percent: usize) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let rank = (samples.len() * percent).div_ceil(100).max(1) - 1;
    let (_, value, _) = samples.select_nth_unstable(rank);
    round(*value as f64 / 1_000.0, 1)
}

/// What one run of one strategy on one cluster size measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    pub strategy: Strategy,
    pub nodes: usize,
    pub events_sent: u64,
    /// Events answered `Busy` because a queue was full.
    pub events_refused: u64,
    /// Events per second the clients sent during the measured window.
    pub offered_eps: f64,
    /// Events per second the cluster applied during the measured window.
    pub throughput_eps: f64,
    /// Throughput over `nodes` times this strategy's one-node throughput (1.0 is linear);
    /// absent when the run set has no one-node run.
    pub scaling: Option<f64>,
    /// Network messages (events, forwards, copies, replies) per event sent.
    pub messages_per_event: f64,
    pub bytes_per_event: f64,
    pub heartbeat_messages: u64,
    /// The longest any shard's CPU queue was, in items.
    pub queue_depth_max: usize,
    /// Work refused for want of credit: events a core answered `Busy`, and events, copies and
    /// heartbeats a full receive queue refused.
    pub queue_overflows: u64,
    pub unresponsive_declarations: u64,
    /// Nodes declared unresponsive at least once; all were alive, so all are false.
    pub false_unresponsive_nodes: u64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    /// Treasures somebody won.
    pub treasures_won: u64,
    /// The oracles this run broke (empty when it is correct).
    pub oracles_failed: Vec<Oracle>,
    pub findings: Findings,
    pub seed: u64,
    /// The command that reproduces this run alone.
    pub command: String,
}

/// Every run of one `trove sim`, with the model they shared.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    pub seed: u64,
    pub model: Model,
    pub runs: Vec<RunReport>,
}

impl SimReport {
    /// Fills in each run's scaling against the one-node run of its strategy.
    pub fn compute_scaling(&mut self) {
        let one_node: Vec<(Strategy, f64)> = self
            .runs
            .iter()
            .filter(|run| run.nodes == 1)
            .map(|run| (run.strategy, run.throughput_eps))
            .collect();
        for run in &mut self.runs {
            let base = one_node
                .iter()
                .find(|(strategy, _)| *strategy == run.strategy)
                .map(|(_, throughput)| *throughput);
            run.scaling = base
                .filter(|&base| base > 0.0)
                .map(|base| round(run.throughput_eps / (base * run.nodes as f64), 3));
        }
    }

    /// The runs that broke an oracle.
    pub fn failures(&self) -> impl Iterator<Item = &RunReport> {
        self.runs
            .iter()
            .filter(|run| !run.oracles_failed.is_empty())
    }

    /// The JSON document: pretty, and byte-identical for the same seed and model.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).expect("a report always serializes");
        json.push('\n');
        json
    }

    /// The terminal table: one line per run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:>12} {:>7} {:>8} {:>9} {:>6} {:>9} {:>6} {:>9}  oracles",
            "strategy",
            "nodes",
            "events/s",
            "scaling",
            "msgs/ev",
            "bytes/ev",
            "queue",
            "overflow",
            "unresp",
            "p99 µs"
        );
        for run in &self.runs {
            let scaling = run
                .scaling
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"));
            let oracles = if run.oracles_failed.is_empty() {
                "ok".to_owned()
            } else {
                let names: Vec<&str> = run.oracles_failed.iter().map(|o| o.name()).collect();
                format!("FAILED: {}", names.join(", "))
            };
            let _ = writeln!(
                out,
                "{:<12} {:>5} {:>12.0} {:>7} {:>8.2} {:>9.0} {:>6} {:>9} {:>6} {:>9.0}  {}",
                run.strategy.name(),
                run.nodes,
                run.throughput_eps,
                scaling,
                run.messages_per_event,
                run.bytes_per_event,
                run.queue_depth_max,
                run.queue_overflows,
                run.false_unresponsive_nodes,
                run.latency_us_p99,
                oracles
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).map(|us| us * 1_000).collect();
        assert_eq!(percentile_us(&mut samples, 99), 99.0);
        assert_eq!(percentile_us(&mut samples, 50), 50.0);
        assert_eq!(percentile_us(&mut [7_000], 99), 7.0);
        assert_eq!(percentile_us(&mut [], 99), 0.0);
    }
}
