//! `trove cluster move|drain|rebalance`: the operator's side of live moves. Each command checks
//! its arguments against the cluster as etcd shows it, writes what it asks for (pins, a drain,
//! the settings) with [`EtcdClient`] — never through a node — and follows the moves the
//! controller makes until they are done, failed, or `--timeout` passed, printing a line as each
//! starts, flips or fails and a summary at the end. Runs on the command's own thread.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::cluster::coordinator::{ClusterView, Request, Response, WatchChange};
use crate::cluster::etcd::EtcdClient;
use crate::cluster::keys::{
    ClusterKeys, DrainRecord, MoveRecord, MoveState, PinRecord, SettingsRecord, encode_json,
};
use crate::cluster::placement::{Owner, OwnerState, Placement};
use crate::cluster::rebalance::{PlannedMove, Slot};
use crate::constants::{MOVE_FOLLOW_POLL_MS_DEFAULT, MOVE_FOLLOW_RELEASED_POLLS_MAX};
use crate::core::ids::{Epoch, NodeId, ShardId};

/// Why a command stopped early: a usage error (exit 2) or a failure (exit 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorError {
    Usage(String),
    Failed(String),
}

impl OperatorError {
    pub fn exit_code(&self) -> i32 {
        match self {
            OperatorError::Usage(_) => 2,
            OperatorError::Failed(_) => 1,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            OperatorError::Usage(message) | OperatorError::Failed(message) => message,
        }
    }
}

/// A cluster reached through etcd, for one command.
pub struct Operator {
    client: EtcdClient,
    keys: ClusterKeys,
}

impl Operator {
    pub fn new(client: EtcdClient, keys: ClusterKeys) -> Operator {
        Operator { client, keys }
    }

    pub fn keys(&self) -> &ClusterKeys {
        &self.keys
    }

    /// The cluster as etcd shows it now.
    pub fn read(&mut self) -> Result<ClusterView, OperatorError> {
        let request = Request::RangePrefix {
            prefix: self.keys.prefix().to_owned(),
        };
        match self.client.execute(&request) {
            Ok(Response::Range { revision, kvs }) => {
                Ok(ClusterView::from_range(&self.keys, revision, &kvs))
            }
            Ok(_) => Err(OperatorError::Failed(
                "etcd answered a range with something else".into(),
            )),
            Err(reason) => Err(OperatorError::Failed(format!(
                "{reason}; is etcd running there?"
            ))),
        }
    }

    /// `view` (an earlier read) brought up to now with the keys put since it was read, and
    /// only those: a follow reads the cluster several times a second while a drain adds a
    /// move record per partition, and reading every key each time made most of etcd's work
    /// late in a drain. Keys deleted since are not seen (the nodes' registrations, which end
    /// with their leases): what a follow needs, the assignment and the move records, is only
    /// ever put.
    pub fn read_changes(&mut self, view: &mut ClusterView) -> Result<(), OperatorError> {
        let request = Request::RangePrefixChanged {
            prefix: self.keys.prefix().to_owned(),
            after_revision: view.revision,
        };
        match self.client.execute(&request) {
            Ok(Response::Range { revision, kvs }) => {
                let changes: Vec<WatchChange> = kvs.into_iter().map(WatchChange::Put).collect();
                view.apply_changes(&self.keys, revision.max(view.revision), &changes);
                Ok(())
            }
            Ok(_) => Err(OperatorError::Failed(
                "etcd answered a range with something else".into(),
            )),
            Err(reason) => Err(OperatorError::Failed(format!(
                "{reason}; is etcd running there?"
            ))),
        }
    }

    /// Puts `value` at `key` (bound to no lease: it stays until replaced).
    fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), OperatorError> {
        let request = Request::Put {
            key,
            value,
            lease: 0,
        };
        self.client
            .execute(&request)
            .map(drop)
            .map_err(|reason| OperatorError::Failed(format!("writing to etcd: {reason}")))
    }

    pub fn put_pin(&mut self, partition: u32, pin: PinRecord) -> Result<(), OperatorError> {
        self.put(self.keys.pin(partition), encode_json(&pin))
    }

    pub fn put_drain(&mut self, node: NodeId, drain: DrainRecord) -> Result<(), OperatorError> {
        self.put(self.keys.drain(node), encode_json(&drain))
    }

    pub fn put_settings(&mut self, settings: SettingsRecord) -> Result<(), OperatorError> {
        self.put(self.keys.settings(), encode_json(&settings))
    }
}

/// The placement of `view`, or the error a command gives without one.
pub fn placement_of(view: &ClusterView) -> Result<&Placement, OperatorError> {
    view.assignment.as_deref().ok_or_else(|| {
        OperatorError::Usage(
            "the cluster has no placement yet (no node has registered, or the controller has \
             not written one): start its nodes first"
                .into(),
        )
    })
}

/// The live nodes of `view`, one phrase, for errors that name what exists.
pub fn live_nodes_phrase(view: &ClusterView) -> String {
    if view.nodes.is_empty() {
        return "no node is registered".into();
    }
    let nodes: Vec<String> = view
        .nodes
        .iter()
        .map(|(node, entry)| format!("{} ({} shards)", node.0, entry.info.shards()))
        .collect();
    format!("registered nodes: {}", nodes.join(", "))
}

/// Parses `NODE[:SHARD]` (`2`, `2:1`, also `node-2`).
pub fn parse_target(text: &str) -> Result<(NodeId, Option<ShardId>), String> {
    let bad = || {
        format!("{text:?} is not NODE[:SHARD]: give a node id, optionally with a shard (2 or 2:1)")
    };
    let (node, shard) = match text.split_once(':') {
        Some((node, shard)) => (node, Some(shard)),
        None => (text, None),
    };
    let node = node
        .trim()
        .trim_start_matches("node-")
        .trim_start_matches("node");
    let node = node.parse::<u32>().map_err(|_| bad())?;
    let shard = shard
        .map(|shard| shard.trim().parse::<u16>().map_err(|_| bad()))
        .transpose()?;
    Ok((NodeId(node), shard.map(ShardId)))
}

/// Checks that `node` is registered (and has `shard`) in `view`.
pub fn check_node(
    view: &ClusterView,
    node: NodeId,
    shard: Option<ShardId>,
) -> Result<(), OperatorError> {
    let Some(entry) = view.nodes.get(&node) else {
        return Err(OperatorError::Usage(format!(
            "{node} is not registered in this cluster; {}",
            live_nodes_phrase(view)
        )));
    };
    if let Some(shard) = shard.filter(|shard| shard.0 >= entry.info.shards()) {
        return Err(OperatorError::Usage(format!(
            "{node} runs {} shards (0 to {}); it has no {shard}",
            entry.info.shards(),
            entry.info.shards() - 1
        )));
    }
    Ok(())
}

/// Checks that `partition` exists in `placement`.
pub fn check_partition(placement: &Placement, partition: u32) -> Result<(), OperatorError> {
    if partition >= placement.partitions() {
        return Err(OperatorError::Usage(format!(
            "partition {partition} does not exist: the cluster has {} partitions (0 to {})",
            placement.partitions(),
            placement.partitions() - 1
        )));
    }
    Ok(())
}

/// Where a followed partition should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// On this node (and shard, if given).
    On(NodeId, Option<ShardId>),
    /// On any node but this one.
    OffNode(NodeId),
}

impl Goal {
    fn met_by(self, owner: &Owner) -> bool {
        if owner.state != OwnerState::Serving {
            return false;
        }
        match self {
            Goal::On(node, shard) => owner.node == node && shard.is_none_or(|s| s == owner.shard),
            Goal::OffNode(node) => owner.node != node,
        }
    }

    /// The goal of a planned move.
    pub fn of(planned: &PlannedMove) -> (u32, Goal) {
        let (partition, (node, shard)): (u32, Slot) = *planned;
        (partition, Goal::On(node, Some(shard)))
    }
}

/// How one followed partition stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Standing {
    Waiting,
    /// Moving at this partition epoch.
    Moving(Epoch),
    Moved,
    Failed(String),
}

/// What a command follows, and what it saw so far. Fed one view of the cluster at a time, it
/// returns the lines to print; pure, so it is tested without etcd.
#[derive(Clone, Debug)]
pub struct Follow {
    goals: BTreeMap<u32, Goal>,
    standing: BTreeMap<u32, Standing>,
    /// The epochs each partition moved at, to find their records.
    epochs: BTreeMap<u32, BTreeSet<Epoch>>,
    /// Released reports of the moves that flipped: (events held, pause ns).
    released: BTreeMap<u32, (u64, u64)>,
    /// Each partition's epoch when first seen: a move record after it is one of ours.
    first_seen: BTreeMap<u32, Epoch>,
}

impl Follow {
    pub fn new(goals: BTreeMap<u32, Goal>) -> Follow {
        let standing = goals.keys().map(|&p| (p, Standing::Waiting)).collect();
        Follow {
            goals,
            standing,
            epochs: BTreeMap::new(),
            released: BTreeMap::new(),
            first_seen: BTreeMap::new(),
        }
    }

    /// Whether every followed partition moved or failed.
    pub fn finished(&self) -> bool {
        self.standing
            .values()
            .all(|s| matches!(s, Standing::Moved | Standing::Failed(_)))
    }

    /// Whether every move that flipped has its released report.
    pub fn all_released(&self) -> bool {
        self.standing
            .iter()
            .filter(|(_, s)| **s == Standing::Moved)
            .all(|(p, _)| self.released.contains_key(p) || !self.epochs.contains_key(p))
    }

    /// Takes in one view of the cluster; returns the progress lines it brings.
    pub fn observe(&mut self, view: &ClusterView) -> Vec<String> {
        let mut lines = Vec::new();
        let Some(placement) = view.assignment.as_deref() else {
            return lines;
        };
        let goals: Vec<(u32, Goal)> = self.goals.iter().map(|(&p, &g)| (p, g)).collect();
        for (partition, goal) in goals {
            let Some(owner) = placement.owners().get(partition as usize) else {
                continue;
            };
            let record = view.moves.get(&partition);
            let first_seen = *self.first_seen.entry(partition).or_insert(owner.part_epoch);
            self.note_released(partition, first_seen, record);
            let standing = self.standing[&partition].clone();
            let next = match standing {
                Standing::Moved | Standing::Failed(_) => continue,
                _ if goal.met_by(owner) => {
                    lines.push(format!(
                        "partition {partition}: moved to {} {}",
                        owner.node, owner.shard
                    ));
                    Standing::Moved
                }
                _ if owner.state == OwnerState::Offline => {
                    let reason = format!(
                        "offline: its owner {}'s lease ended; it comes back with that node",
                        owner.node
                    );
                    lines.push(format!("partition {partition}: failed: {reason}"));
                    Standing::Failed(reason)
                }
                Standing::Moving(epoch) if owner.part_epoch != epoch => {
                    let reason = failure_reason(record, epoch);
                    lines.push(format!("partition {partition}: failed: {reason}"));
                    Standing::Failed(reason)
                }
                Standing::Waiting => match owner.state.migrating_to() {
                    Some((to, to_shard)) => {
                        lines.push(format!(
                            "partition {partition}: moving from {} {} to {to} {to_shard} (epoch {})",
                            owner.node,
                            owner.shard,
                            owner.part_epoch.get()
                        ));
                        self.epochs
                            .entry(partition)
                            .or_default()
                            .insert(owner.part_epoch);
                        Standing::Moving(owner.part_epoch)
                    }
                    // A move that started and ended between two reads: its record says so.
                    None => match missed_abandon(record, first_seen, goal) {
                        Some(reason) => {
                            lines.push(format!("partition {partition}: failed: {reason}"));
                            Standing::Failed(reason)
                        }
                        None => Standing::Waiting,
                    },
                },
                moving => moving,
            };
            self.standing.insert(partition, next);
        }
        lines
    }

    fn note_released(&mut self, partition: u32, first_seen: Epoch, record: Option<&MoveRecord>) {
        let Some(record) = record else {
            return;
        };
        // A move that started after the follow began is ours, also one that started and
        // flipped between two reads (a drain does several per read): its record says so.
        if record.part_epoch > first_seen.get() {
            self.epochs
                .entry(partition)
                .or_default()
                .insert(Epoch(record.part_epoch));
        }
        let ours = self
            .epochs
            .get(&partition)
            .is_some_and(|epochs| epochs.contains(&Epoch(record.part_epoch)));
        if let (true, Some(released)) = (ours, record.released) {
            if released.flipped {
                self.released
                    .insert(partition, (released.events_held, released.pause_ns));
            }
        }
    }

    /// How many followed partitions reached their goal.
    pub fn moved(&self) -> usize {
        self.standing
            .values()
            .filter(|s| **s == Standing::Moved)
            .count()
    }

    /// The released reports of the moves that flipped: (events held, pause in ns).
    pub fn released(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.released.values().copied()
    }

    /// Marks what is still unfinished as failed: `--timeout` passed.
    pub fn time_out(&mut self, timeout: Duration) {
        for standing in self.standing.values_mut() {
            let reason = match standing {
                Standing::Waiting => format!(
                    "not started within --timeout {} s (other moves first, or its target \
                     is not live)",
                    timeout.as_secs()
                ),
                Standing::Moving(_) => {
                    format!("still moving after --timeout {} s", timeout.as_secs())
                }
                _ => continue,
            };
            *standing = Standing::Failed(reason);
        }
    }

    /// The partitions that failed, with why.
    pub fn failures(&self) -> Vec<(u32, String)> {
        self.standing
            .iter()
            .filter_map(|(&p, s)| match s {
                Standing::Failed(reason) => Some((p, reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// The closing summary: moved, failed with reasons, the time it took, events held and
    /// the worst flip pause (from the sources' released reports).
    pub fn summary(&self, elapsed: Duration) -> String {
        let moved = self.moved();
        let failures = self.failures();
        let mut out = format!(
            "{moved} moved, {} failed, in {:.1} s",
            failures.len(),
            elapsed.as_secs_f64()
        );
        let held: u64 = self.released.values().map(|(held, _)| held).sum();
        let worst = self.released.values().map(|(_, pause)| *pause).max();
        match worst {
            Some(pause_ns) => {
                let _ = write!(
                    out,
                    "; {held} events held at the flips, worst flip pause {:.3} ms ({} of {moved} \
                     moves reported)",
                    pause_ns as f64 / 1e6,
                    self.released.len()
                );
            }
            None if moved > 0 => {
                out.push_str("; no source reported its flip pause yet");
            }
            None => {}
        }
        for (partition, reason) in failures {
            let _ = write!(out, "\n  partition {partition} failed: {reason}");
        }
        out
    }
}

/// Why the move of a partition at `epoch` ended without reaching its goal.
/// Why a move towards `goal` that started after epoch `since` ended without flipping, if
/// its record says it did (the follow read the cluster before it started and after it ended).
fn missed_abandon(record: Option<&MoveRecord>, since: Epoch, goal: Goal) -> Option<String> {
    let record = record.filter(|record| record.part_epoch > since.get())?;
    let towards_goal = match goal {
        Goal::On(node, shard) => {
            record.to.0 == node.0 && shard.is_none_or(|shard| shard.0 == record.to.1)
        }
        Goal::OffNode(node) => record.from.0 == node.0,
    };
    let ended = record.abandoned.is_some() || record.released.is_some_and(|r| !r.flipped);
    (towards_goal && ended).then(|| failure_reason(Some(record), Epoch(record.part_epoch)))
}

fn failure_reason(record: Option<&MoveRecord>, epoch: Epoch) -> String {
    let Some(record) = record.filter(|record| record.is_move(epoch)) else {
        return "abandoned (the controller recorded no reason)".into();
    };
    if let Some(reason) = &record.abandoned {
        return format!("abandoned: {reason}");
    }
    match &record.state {
        MoveState::Refused { reason } => format!("abandoned: the source refused it: {reason}"),
        _ => "abandoned (the controller recorded no reason)".into(),
    }
}

/// Follows `follow` by reading the cluster every `MOVE_FOLLOW_POLL_MS_DEFAULT` until it is
/// finished (and the flipped moves' sources reported what they held, for a short while) or
/// `timeout` passed, printing progress with `say`. Returns the summary and whether all moved.
pub fn follow(
    operator: &mut Operator,
    mut follow: Follow,
    timeout: Duration,
    say: &mut dyn FnMut(&str),
) -> Result<(Follow, Duration), OperatorError> {
    let start = Instant::now();
    let poll = Duration::from_millis(MOVE_FOLLOW_POLL_MS_DEFAULT);
    let released_wait = poll * MOVE_FOLLOW_RELEASED_POLLS_MAX;
    let mut finished_at: Option<Instant> = None;
    let mut view = operator.read()?;
    loop {
        for line in follow.observe(&view) {
            say(&line);
        }
        if follow.finished() {
            let since = *finished_at.get_or_insert_with(Instant::now);
            if follow.all_released() || since.elapsed() >= released_wait {
                return Ok((follow, start.elapsed()));
            }
        }
        if start.elapsed() >= timeout {
            follow.time_out(timeout);
            return Ok((follow, start.elapsed()));
        }
        std::thread::sleep(poll);
        operator.read_changes(&mut view)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::keys::Released;

    fn view_with(owners: Vec<Owner>, epoch: u32, moves: BTreeMap<u32, MoveRecord>) -> ClusterView {
        ClusterView {
            assignment: Some(std::sync::Arc::new(
                Placement::from_owners(Epoch(epoch), owners).unwrap(),
            )),
            moves,
            ..ClusterView::default()
        }
    }

    fn owner(node: u32, epoch: u32, state: OwnerState) -> Owner {
        Owner {
            node: NodeId(node),
            shard: ShardId(0),
            part_epoch: Epoch(epoch),
            state,
        }
    }

    const TO_2: OwnerState = OwnerState::Migrating {
        to: NodeId(2),
        to_shard: ShardId(0),
    };

    #[test]
    fn targets_parse_and_bad_ones_say_what_to_give() {
        assert_eq!(parse_target("2").unwrap(), (NodeId(2), None));
        assert_eq!(
            parse_target("node-3:1").unwrap(),
            (NodeId(3), Some(ShardId(1)))
        );
        for bad in ["", "x", "2:", "2:x", "-1", "2:70000"] {
            let error = parse_target(bad).unwrap_err();
            assert!(error.contains("NODE[:SHARD]"), "{bad}: {error}");
        }
    }

    #[test]
    fn unknown_nodes_shards_and_partitions_are_usage_errors_naming_what_exists() {
        let view = view_with(
            vec![owner(1, 3, OwnerState::Serving); 2],
            5,
            BTreeMap::new(),
        );
        let error = check_node(&view, NodeId(4), None).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(
            error
                .message()
                .contains("node 4 is not registered in this cluster; no node is registered"),
            "{error:?}"
        );
        let placement = placement_of(&view).unwrap();
        let error = check_partition(placement, 2).unwrap_err();
        assert!(
            error.message().contains("has 2 partitions (0 to 1)"),
            "{error:?}"
        );
        assert!(check_partition(placement, 1).is_ok());
        let empty = ClusterView::default();
        assert_eq!(placement_of(&empty).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn a_followed_move_reports_start_flip_and_summary() {
        let goals = [
            (0, Goal::On(NodeId(2), None)),
            (1, Goal::OffNode(NodeId(1))),
        ];
        let mut follow = Follow::new(goals.into_iter().collect());
        let start = view_with(
            vec![
                owner(1, 3, OwnerState::Serving),
                owner(1, 3, OwnerState::Serving),
            ],
            3,
            BTreeMap::new(),
        );
        assert!(follow.observe(&start).is_empty());
        let moving = view_with(
            vec![owner(1, 6, TO_2), owner(1, 6, TO_2)],
            6,
            BTreeMap::new(),
        );
        let lines = follow.observe(&moving);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0]
                .contains("partition 0: moving from node 1 shard 0 to node 2 shard 0 (epoch 6)")
        );
        // Partition 0 flips; partition 1 is abandoned with a reason.
        let record = |state, abandoned: Option<&str>, released| MoveRecord {
            part_epoch: 6,
            from: (1, 0),
            to: (2, 0),
            state,
            abandoned: abandoned.map(str::to_owned),
            released,
        };
        let released = Released {
            flipped: true,
            events_held: 7,
            pause_ns: 3_500_000,
        };
        let records = [
            (0, record(MoveState::Released, None, Some(released))),
            (
                1,
                record(
                    MoveState::Abandoned,
                    Some("the target node 2 is no longer live"),
                    None,
                ),
            ),
        ];
        let after = view_with(
            vec![
                owner(2, 8, OwnerState::Serving),
                owner(1, 8, OwnerState::Serving),
            ],
            8,
            records.into_iter().collect(),
        );
        let lines = follow.observe(&after);
        assert_eq!(
            lines,
            vec![
                "partition 0: moved to node 2 shard 0".to_owned(),
                "partition 1: failed: abandoned: the target node 2 is no longer live".to_owned()
            ]
        );
        assert!(follow.finished() && follow.all_released());
        let summary = follow.summary(Duration::from_millis(1_500));
        assert!(
            summary.starts_with(
                "1 moved, 1 failed, in 1.5 s; 7 events held at the flips, worst flip pause 3.500 ms"
            ),
            "{summary}"
        );
        assert!(
            summary.contains("partition 1 failed: abandoned: the target"),
            "{summary}"
        );
    }

    #[test]
    fn a_move_that_started_and_ended_between_two_reads_fails_by_its_record() {
        let mut follow = Follow::new([(0, Goal::On(NodeId(2), None))].into_iter().collect());
        let start = view_with(vec![owner(1, 3, OwnerState::Serving)], 3, BTreeMap::new());
        assert!(follow.observe(&start).is_empty());
        // A record of an older move to node 2 (before the follow began) is not this one.
        let old = MoveRecord {
            part_epoch: 2,
            from: (1, 0),
            to: (2, 0),
            state: MoveState::Abandoned,
            abandoned: Some("an old reason".into()),
            released: None,
        };
        let stale = view_with(
            vec![owner(1, 3, OwnerState::Serving)],
            4,
            [(0, old)].into_iter().collect(),
        );
        assert!(follow.observe(&stale).is_empty());
        // Started at epoch 6 and abandoned at 8, both unseen; the source's record is all.
        let record = MoveRecord {
            part_epoch: 6,
            from: (1, 0),
            to: (2, 0),
            state: MoveState::Released,
            abandoned: None,
            released: Some(Released {
                flipped: false,
                events_held: 3,
                pause_ns: 1_000,
            }),
        };
        let after = view_with(
            vec![owner(1, 8, OwnerState::Serving)],
            8,
            [(0, record)].into_iter().collect(),
        );
        let lines = follow.observe(&after);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("partition 0: failed: abandoned"),
            "{lines:?}"
        );
        assert!(follow.finished());
    }

    #[test]
    fn a_move_that_started_and_flipped_between_two_reads_still_counts_its_pause() {
        let mut follow = Follow::new([(0, Goal::OffNode(NodeId(1)))].into_iter().collect());
        let start = view_with(vec![owner(1, 3, OwnerState::Serving)], 3, BTreeMap::new());
        follow.observe(&start);
        // Started at epoch 6 and flipped at 8, both unseen; the moved partition is seen first,
        // then its source's released report.
        let record = |released| MoveRecord {
            part_epoch: 6,
            from: (1, 0),
            to: (2, 0),
            state: MoveState::Released,
            abandoned: None,
            released,
        };
        let flipped = view_with(
            vec![owner(2, 8, OwnerState::Serving)],
            8,
            [(0, record(None))].into_iter().collect(),
        );
        assert_eq!(
            follow.observe(&flipped),
            ["partition 0: moved to node 2 shard 0"]
        );
        assert!(follow.finished());
        assert!(!follow.all_released(), "its released report is still due");
        let released = Released {
            flipped: true,
            events_held: 4,
            pause_ns: 2_000_000,
        };
        let reported = view_with(
            vec![owner(2, 8, OwnerState::Serving)],
            9,
            [(0, record(Some(released)))].into_iter().collect(),
        );
        follow.observe(&reported);
        assert!(follow.all_released());
        assert_eq!(follow.released().collect::<Vec<_>>(), [(4, 2_000_000)]);
    }

    #[test]
    fn what_never_moved_fails_at_the_timeout() {
        let mut follow = Follow::new([(0, Goal::On(NodeId(2), None))].into_iter().collect());
        let view = view_with(vec![owner(1, 3, OwnerState::Serving)], 3, BTreeMap::new());
        follow.observe(&view);
        assert!(!follow.finished());
        follow.time_out(Duration::from_secs(30));
        let failures = follow.failures();
        assert_eq!(failures.len(), 1);
        assert!(failures[0].1.contains("not started within --timeout 30 s"));
    }
}
