//! Live moves while `trove bench --cluster N` runs its load: `--moves K` (K random
//! single-partition moves, one at a time, and the pause each partition's clients saw at its
//! flip) and `--drain` (node N drained a third of the way into the measured run, and the
//! cluster's events/s before, during and after it).
//!
//! Both go through etcd as the operator commands do (a pin or a drain record, then the
//! controller's moves), on a thread of their own beside the load; the bench's main thread
//! starts them and collects their figures when the load has ended.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bench::cluster::{ClusterSpec, LocalCluster};
use crate::cluster::keys::{DrainRecord, PinRecord, Released};
use crate::cluster::operator::{Follow, Goal, Operator, placement_of};
use crate::cluster::placement::OwnerState;
use crate::constants::{MOVE_FOLLOW_POLL_MS_DEFAULT, MOVE_FOLLOW_RELEASED_POLLS_MAX};
use crate::core::ids::{NodeId, PartitionId};
use crate::core::rng::Rng;

/// `--moves K`: live single-partition moves made while the load runs, one at a time, each to a
/// random other node (and shard) of the bench's cluster, through etcd as `trove cluster move`
/// does (a pin, then the controller's move). What a partition's clients wait at each flip is
/// measured by the target (from the first event it held for the partition to the seal) and
/// reported by the source (`moves/<p>`, `released`).
pub struct MoveRun {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<MoveFigures, String>>,
}

/// What `--moves` measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MoveFigures {
    pub moved: u32,
    pub failed: Vec<String>,
    /// Each flipped move's pause as its source reported it, in ms, sorted.
    pub pauses_ms: Vec<f64>,
    pub events_held: u64,
    pub seconds: f64,
}

impl MoveFigures {
    /// The pause at quantile `q` (nearest rank), if any was reported.
    pub fn pause_ms(&self, q: f64) -> Option<f64> {
        pause_at(&self.pauses_ms, q)
    }

    /// The lines the bench prints about the moves.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "live moves during the run: {} moved, {} failed, in {:.1} s; {} events held at the flips",
            self.moved,
            self.failed.len(),
            self.seconds,
            self.events_held
        );
        if !write_pauses(&mut text, &self.pauses_ms) {
            text.push_str("\nflip pause: no source reported one");
        }
        write_failures(&mut text, &self.failed);
        text
    }
}

/// Adds the line of the flip pauses in `sorted_ms` (p50, p99, max), if there are any;
/// returns whether it did.
fn write_pauses(text: &mut String, sorted_ms: &[f64]) -> bool {
    let quantiles = (
        pause_at(sorted_ms, 0.5),
        pause_at(sorted_ms, 0.99),
        pause_at(sorted_ms, 1.0),
    );
    let (Some(p50), Some(p99), Some(max)) = quantiles else {
        return false;
    };
    let _ = write!(
        text,
        "\nflip pause (events held for the partition at its target, {} moves reported): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        sorted_ms.len()
    );
    true
}

/// Adds a line per failed move.
fn write_failures(text: &mut String, failed: &[String]) {
    for failure in failed {
        let _ = write!(text, "\nmove failed: {failure}");
    }
}

/// The pause at quantile `q` (nearest rank) of `sorted_ms`, if it has any.
fn pause_at(sorted_ms: &[f64], q: f64) -> Option<f64> {
    let last = sorted_ms.len().checked_sub(1)?;
    let rank = ((q * sorted_ms.len() as f64).ceil() as usize).clamp(1, last + 1) - 1;
    Some(sorted_ms[rank])
}

impl LocalCluster {
    /// Starts `count` moves, one after another, on a thread of their own (seeded by `seed`).
    pub fn start_moves(&self, count: u32, seed: u64) -> MoveRun {
        let stop = Arc::new(AtomicBool::new(false));
        let mover = Mover {
            operator: self.operator(MOVE_REQUEST_TIMEOUT),
            spec: self.spec(),
            rng: Rng::stream(seed, MOVES_STREAM),
            stop: stop.clone(),
        };
        let thread = std::thread::spawn(move || mover.run(count));
        MoveRun { stop, thread }
    }
}

impl MoveRun {
    /// Stops after the move under way and returns what was measured.
    pub fn finish(self) -> Result<MoveFigures, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the thread making the moves panicked".to_string())?
    }
}

/// The mover's stream of the run's seed (the workload uses others).
const MOVES_STREAM: u64 = 0x6d6f_7665;
/// How long one etcd request of the mover may take.
const MOVE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one move may take, from its pin to the source's report of its flip.
const MOVE_WAIT: Duration = Duration::from_secs(30);
/// How long the mover waits, after it saw a flip, for the source's report of its pause.
const MOVE_REPORT_WAIT: Duration = Duration::from_secs(2);
/// How often the mover reads etcd while a move is under way. Not the flip pause's precision
/// (the source measures that): a faster poll only loads etcd, which every flip goes through.
const MOVE_POLL: Duration = Duration::from_millis(50);

struct Mover {
    operator: Operator,
    spec: ClusterSpec,
    rng: Rng,
    stop: Arc<AtomicBool>,
}

impl Mover {
    fn run(mut self, count: u32) -> Result<MoveFigures, String> {
        let started = Instant::now();
        let mut figures = MoveFigures::default();
        for _ in 0..count {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            match self.one_move()? {
                Ok(released) => {
                    figures.moved += 1;
                    if let Some(released) = released {
                        figures.events_held += released.events_held;
                        figures.pauses_ms.push(released.pause_ns as f64 / 1e6);
                    }
                }
                Err(failure) => figures.failed.push(failure),
            }
        }
        figures.seconds = started.elapsed().as_secs_f64();
        figures.pauses_ms.sort_by(f64::total_cmp);
        Ok(figures)
    }

    /// Pins a random partition to a random other (node, shard) and waits for the flip and its
    /// source's report of it (`None` when the report did not come within `MOVE_REPORT_WAIT`
    /// of the flip): `Ok(Err(why))` when the move failed, `Err` when etcd did.
    fn one_move(&mut self) -> Result<Result<Option<Released>, String>, String> {
        let view = self
            .operator
            .read()
            .map_err(|error| error.message().to_owned())?;
        let placement = placement_of(&view).map_err(|error| error.message().to_owned())?;
        let partition = self.rng.below(u64::from(placement.partitions())) as u32;
        let owner = *placement.owner(PartitionId(partition));
        let others = self.spec.nodes as u64 - 1;
        if others == 0 {
            return Ok(Err("a cluster of one node has nowhere to move to".into()));
        }
        // Nodes are 1..=N: skip the owner's.
        let mut node = 1 + self.rng.below(others) as u32;
        if node >= owner.node.0 {
            node += 1;
        }
        let shard = self.rng.below(self.spec.shards_per_node as u64) as u16;
        let pin = PinRecord {
            node,
            shard: Some(shard),
        };
        self.operator
            .put_pin(partition, pin)
            .map_err(|error| error.message().to_owned())?;
        let deadline = Instant::now() + MOVE_WAIT;
        let mut flipped_at = None;
        let mut view = view;
        while Instant::now() < deadline {
            std::thread::sleep(MOVE_POLL);
            self.operator
                .read_changes(&mut view)
                .map_err(|error| error.message().to_owned())?;
            let now_owner = view
                .assignment
                .as_ref()
                .map(|placement| *placement.owner(PartitionId(partition)));
            if now_owner.is_some_and(|owner| {
                (owner.node.0, owner.shard.0) == (node, shard) && owner.state == OwnerState::Serving
            }) {
                let at = *flipped_at.get_or_insert_with(Instant::now);
                if at.elapsed() > MOVE_REPORT_WAIT {
                    return Ok(Ok(None));
                }
            }
            let Some(record) = view.moves.get(&partition) else {
                continue;
            };
            if record.from.0 != owner.node.0 || record.to != (node, shard) {
                continue; // an older move's record
            }
            if let Some(reason) = &record.abandoned {
                return Ok(Err(format!(
                    "partition {partition} to node {node}: {reason}"
                )));
            }
            if let Some(released) = record.released.filter(|released| released.flipped) {
                return Ok(Ok(Some(released)));
            }
        }
        Ok(Err(format!(
            "partition {partition} to node {node} shard {shard}: no flip reported within {MOVE_WAIT:?}"
        )))
    }
}

/// How long one etcd request of the drain's thread may take.
const DRAIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the drain's thread reads etcd while the drain is under way: as often as
/// `trove cluster drain` does. The drain's times are known to this precision; a faster poll
/// would only load etcd, whose CPU the cluster being measured needs (at 50 ms, the drain's
/// reads were most of etcd's work).
const DRAIN_POLL: Duration = Duration::from_millis(MOVE_FOLLOW_POLL_MS_DEFAULT);

/// `--drain`: the cluster's last node drained a third of the way into the measured run, on a
/// thread of its own, and followed until it owns nothing or the load ends.
pub struct DrainRun {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<DrainOutcome, String>>,
}

/// What the drain's thread saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrainOutcome {
    pub node: u32,
    /// Partitions the node owned when it was drained.
    pub partitions: usize,
    pub moved: usize,
    pub failed: Vec<String>,
    /// When the drain record was put, and when the node owned nothing (`None`: the load
    /// ended first), in Unix milliseconds, to line up with the load's seconds.
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub events_held: u64,
    /// Each flipped move's pause as its source reported it, in ms, sorted.
    pub pauses_ms: Vec<f64>,
}

/// The drain and the cluster's throughput around it: the median events/s over the whole
/// seconds of the measured run before the drain, during it, and after it (`None` when no
/// whole second fell in that window).
#[derive(Clone, Debug, PartialEq)]
pub struct DrainFigures {
    pub outcome: DrainOutcome,
    pub before: Option<f64>,
    pub during: Option<f64>,
    pub after: Option<f64>,
}

impl LocalCluster {
    /// Drains the cluster's last node once `delay` has passed (unless stopped first).
    pub fn start_drain(&self, delay: Duration) -> DrainRun {
        let stop = Arc::new(AtomicBool::new(false));
        let drainer = Drainer {
            operator: self.operator(DRAIN_REQUEST_TIMEOUT),
            node: NodeId(self.spec().nodes as u32),
            stop: stop.clone(),
        };
        let thread = std::thread::spawn(move || drainer.run(delay));
        DrainRun { stop, thread }
    }
}

impl DrainRun {
    /// Stops following (the drain itself goes on in the cluster) and lines what was seen up
    /// with the load's replies per second (`per_second[i]`: the measured run's second `i`,
    /// which began at `run_started_unix_ms + 1000 i`).
    pub fn finish(
        self,
        run_started_unix_ms: u64,
        per_second: &[u64],
    ) -> Result<DrainFigures, String> {
        self.stop.store(true, Ordering::Relaxed);
        let outcome = self
            .thread
            .join()
            .map_err(|_| "the thread draining the node panicked".to_string())??;
        let windows = Windows::around(&outcome, run_started_unix_ms);
        Ok(DrainFigures {
            before: windows.median(Window::Before, per_second),
            during: windows.median(Window::During, per_second),
            after: windows.median(Window::After, per_second),
            outcome,
        })
    }
}

struct Drainer {
    operator: Operator,
    node: NodeId,
    stop: Arc<AtomicBool>,
}

impl Drainer {
    fn run(mut self, delay: Duration) -> Result<DrainOutcome, String> {
        let begin = Instant::now() + delay;
        while Instant::now() < begin {
            if self.stop.load(Ordering::Relaxed) {
                return Err("the load ended before the drain was due".into());
            }
            std::thread::sleep(DRAIN_POLL.min(begin.saturating_duration_since(Instant::now())));
        }
        let view = self
            .operator
            .read()
            .map_err(|error| error.message().to_owned())?;
        let placement = placement_of(&view).map_err(|error| error.message().to_owned())?;
        let owned: Vec<u32> = (0..placement.partitions())
            .filter(|&p| placement.owner(PartitionId(p)).node == self.node)
            .collect();
        let registration = view
            .nodes
            .get(&self.node)
            .ok_or_else(|| format!("{} is not registered: nothing to drain", self.node))?
            .registered_revision;
        self.operator
            .put_drain(
                self.node,
                DrainRecord {
                    registered_revision: registration,
                },
            )
            .map_err(|error| error.message().to_owned())?;
        let mut outcome = DrainOutcome {
            node: self.node.0,
            partitions: owned.len(),
            started_unix_ms: unix_ms(),
            ..DrainOutcome::default()
        };
        let mut follow = Follow::new(
            owned
                .iter()
                .map(|&p| (p, Goal::OffNode(self.node)))
                .collect(),
        );
        // Followed until the drain is over and its sources reported what they held (or
        // MOVE_FOLLOW_RELEASED_POLLS_MAX reads later), then left alone: reading the
        // cluster's keys loads etcd, and the load's seconds after the drain count too.
        let mut polls_since_finished = 0;
        let mut view = view;
        while !self.stop.load(Ordering::Relaxed) {
            self.operator
                .read_changes(&mut view)
                .map_err(|error| error.message().to_owned())?;
            follow.observe(&view);
            if follow.finished() {
                outcome.finished_unix_ms.get_or_insert_with(unix_ms);
                polls_since_finished += 1;
                if follow.all_released() || polls_since_finished > MOVE_FOLLOW_RELEASED_POLLS_MAX {
                    break;
                }
            }
            std::thread::sleep(DRAIN_POLL);
        }
        outcome.moved = follow.moved();
        outcome.failed = follow
            .failures()
            .into_iter()
            .map(|(partition, reason)| format!("partition {partition}: {reason}"))
            .collect();
        for (held, pause_ns) in follow.released() {
            outcome.events_held += held;
            outcome.pauses_ms.push(pause_ns as f64 / 1e6);
        }
        outcome.pauses_ms.sort_by(f64::total_cmp);
        Ok(outcome)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    Before,
    During,
    After,
}

/// The drain's span, in milliseconds since the measured run began.
struct Windows {
    start_ms: u64,
    end_ms: Option<u64>,
}

impl Windows {
    fn around(outcome: &DrainOutcome, run_started_unix_ms: u64) -> Windows {
        let since_run = |unix_ms: u64| unix_ms.saturating_sub(run_started_unix_ms);
        Windows {
            start_ms: since_run(outcome.started_unix_ms),
            end_ms: outcome.finished_unix_ms.map(since_run),
        }
    }

    /// The window second `i` lies in whole, if any (a second the drain began or ended in
    /// counts in none).
    fn of_second(&self, second: usize) -> Option<Window> {
        let (from, to) = (second as u64 * 1000, (second as u64 + 1) * 1000);
        if to <= self.start_ms {
            return Some(Window::Before);
        }
        match self.end_ms {
            Some(end) if from >= end => Some(Window::After),
            Some(end) if from >= self.start_ms && to <= end => Some(Window::During),
            None if from >= self.start_ms => Some(Window::During),
            _ => None,
        }
    }

    /// The median of the replies per second of the whole seconds in `window`.
    fn median(&self, window: Window, per_second: &[u64]) -> Option<f64> {
        let mut counts: Vec<u64> = per_second
            .iter()
            .enumerate()
            .filter(|(second, _)| self.of_second(*second) == Some(window))
            .map(|(_, &count)| count)
            .collect();
        counts.sort_unstable();
        let middle = counts.len() / 2;
        match counts.len() {
            0 => None,
            n if n % 2 == 1 => Some(counts[middle] as f64),
            _ => Some((counts[middle - 1] + counts[middle]) as f64 / 2.0),
        }
    }
}

impl DrainFigures {
    /// The lines the bench prints about the drain.
    pub fn describe(&self) -> String {
        let outcome = &self.outcome;
        let mut text = format!(
            "drain of node {}: {} of its {} partitions moved off it, {} failed, ",
            outcome.node,
            outcome.moved,
            outcome.partitions,
            outcome.failed.len()
        );
        match outcome.finished_unix_ms {
            Some(end) => {
                let seconds = end.saturating_sub(outcome.started_unix_ms) as f64 / 1000.0;
                let _ = write!(text, "in {seconds:.1} s; it owns nothing now");
            }
            None => text.push_str("still draining when the load ended"),
        }
        let _ = write!(text, "; {} events held at the flips", outcome.events_held);
        let rate = |value: Option<f64>| {
            value.map_or("no whole second".to_string(), |v| format!("{v:.0}/s"))
        };
        let _ = write!(
            text,
            "\nevents/s (median of whole seconds): before the drain {}, during it {}, after it {}",
            rate(self.before),
            rate(self.during),
            rate(self.after)
        );
        if let (Some(before), Some(during)) = (self.before, self.during) {
            if before > 0.0 {
                let _ = write!(text, "; during/before {:.1}%", 100.0 * during / before);
            }
        }
        write_pauses(&mut text, &outcome.pauses_ms);
        write_failures(&mut text, &outcome.failed);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_read_at_their_nearest_rank_and_failures_are_listed() {
        let figures = MoveFigures {
            moved: 100,
            failed: vec!["partition 3 to node 2: the target's lease ended".into()],
            pauses_ms: (1..=100).map(f64::from).collect(),
            events_held: 7,
            seconds: 12.0,
        };
        assert_eq!(figures.pause_ms(0.5), Some(50.0));
        assert_eq!(figures.pause_ms(0.99), Some(99.0));
        assert_eq!(figures.pause_ms(1.0), Some(100.0));
        let text = figures.describe();
        assert!(text.contains("100 moved, 1 failed"), "{text}");
        assert!(
            text.contains("p50 50.00 ms, p99 99.00 ms, max 100.00 ms"),
            "{text}"
        );
        assert!(text.contains("move failed: partition 3"), "{text}");
        let none = MoveFigures::default();
        assert_eq!(none.pause_ms(0.99), None);
        assert!(none.describe().contains("no source reported one"));
    }

    fn drained(start_ms: u64, end_ms: Option<u64>) -> DrainOutcome {
        DrainOutcome {
            node: 3,
            partitions: 20,
            moved: if end_ms.is_some() { 20 } else { 7 },
            started_unix_ms: 10_000 + start_ms,
            finished_unix_ms: end_ms.map(|end| 10_000 + end),
            ..DrainOutcome::default()
        }
    }

    #[test]
    fn seconds_count_in_the_window_they_lie_in_whole() {
        // The drain from 2.5 s to 5.2 s into the run: seconds 0-1 before, 3-4 during, 6- after;
        // seconds 2 and 5 straddle an edge and count nowhere.
        let windows = Windows::around(&drained(2_500, Some(5_200)), 10_000);
        let kinds: Vec<Option<Window>> = (0..8).map(|s| windows.of_second(s)).collect();
        use Window::*;
        assert_eq!(
            kinds,
            [
                Some(Before),
                Some(Before),
                None,
                Some(During),
                Some(During),
                None,
                Some(After),
                Some(After)
            ]
        );
        let per_second = [100, 120, 0, 80, 90, 0, 110, 130];
        assert_eq!(windows.median(Before, &per_second), Some(110.0));
        assert_eq!(windows.median(During, &per_second), Some(85.0));
        assert_eq!(windows.median(After, &per_second), Some(120.0));
    }

    #[test]
    fn a_drain_the_load_outlasted_nothing_is_after_it_and_a_short_one_may_have_no_whole_second() {
        let unfinished = Windows::around(&drained(3_000, None), 10_000);
        let per_second = [100, 100, 100, 70, 60, 50];
        assert_eq!(unfinished.median(Window::During, &per_second), Some(60.0));
        assert_eq!(unfinished.median(Window::After, &per_second), None);
        let short = Windows::around(&drained(3_200, Some(3_900)), 10_000);
        assert_eq!(short.median(Window::During, &per_second), None);
        let figures = DrainFigures {
            outcome: drained(3_200, Some(3_900)),
            before: Some(100.0),
            during: None,
            after: Some(100.0),
        };
        let text = figures.describe();
        assert!(
            text.contains("20 of its 20 partitions moved off it, 0 failed, in 0.7 s"),
            "{text}"
        );
        assert!(text.contains("during it no whole second"), "{text}");
        assert!(!text.contains("during/before"), "{text}");
    }

    #[test]
    fn the_drain_summary_gives_the_ratio_and_says_when_the_load_ended_first() {
        let figures = DrainFigures {
            outcome: drained(3_000, None),
            before: Some(200_000.0),
            during: Some(184_000.0),
            after: None,
        };
        let text = figures.describe();
        assert!(text.contains("7 of its 20 partitions"), "{text}");
        assert!(
            text.contains("still draining when the load ended"),
            "{text}"
        );
        assert!(text.contains("before the drain 200000/s, during it 184000/s, after it no whole second; during/before 92.0%"), "{text}");
    }
}
