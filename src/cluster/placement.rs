//! The cluster's placement: which node and shard owns each partition, at which epochs, the
//! sticky rendezvous rule the controller uses to compute the next one, and the rules of live
//! moves ([`plan_moves`]: which partitions to move where, when a move flips or is abandoned).
//!
//! The [`Placement`] type is `core::partition`'s (re-exported here): a cluster view, the same
//! value on every node, written by the controller as one etcd record ([`encode_record`],
//! [`decode_record`], JSON stored compressed) whose revision is the map [`Placement::epoch`]. Each partition also has
//! its own epoch, which changes only when its owner or its state changes, so a receiver can
//! refuse work stamped with an older partition epoch than its own. Plain values, valid on any
//! thread; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

pub use crate::core::partition::{Owner, OwnerState, Placement};

use crate::cluster::keys::{MoveRecord, MoveState, PinRecord};
use crate::constants::{ASSIGNMENT_RECORD_JSON_BYTES_MAX, MOVE_TIMEOUT_MS_MAX, PARTITIONS_MAX};
use crate::core::ids::{Epoch, NodeId, ShardId};

/// In a record being written, "this partition changes in this record": readers replace it with
/// the record's revision, which etcd assigns only when the write happens.
pub const PART_EPOCH_THIS_RECORD: Epoch = Epoch(0);

/// The record that stores `owners` (epochs still [`PART_EPOCH_THIS_RECORD`] where they change).
pub fn encode_record(owners: &[Owner]) -> Vec<u8> {
    let record = AssignmentRecord {
        format: RECORD_FORMAT,
        owners: owners
            .iter()
            .map(|owner| {
                let (state, to) = match owner.state {
                    OwnerState::Serving => (STATE_SERVING, None),
                    OwnerState::Offline => (STATE_OFFLINE, None),
                    OwnerState::Migrating { to, to_shard } => {
                        (STATE_MIGRATING, Some((to.0, to_shard.0)))
                    }
                };
                RecordOwner(
                    owner.node.0,
                    owner.shard.0,
                    u64::from(owner.part_epoch.get()),
                    state,
                    to,
                )
            })
            .collect(),
    };
    let json = serde_json::to_vec(&record).expect("a record of plain numbers serializes");
    let mut encoder = ZlibEncoder::new(Vec::with_capacity(json.len() / 4), Compression::default());
    encoder
        .write_all(&json)
        .expect("compressing into memory cannot fail");
    encoder
        .finish()
        .expect("compressing into memory cannot fail")
}

/// The JSON of a stored record: format 3 and later are stored compressed (zlib), formats 1
/// and 2 as plain JSON (which begins with `{`). Inflating stops at
/// `ASSIGNMENT_RECORD_JSON_BYTES_MAX`, whatever the stored bytes claim.
fn record_json(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if bytes.first() == Some(&b'{') {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut json = Vec::with_capacity(bytes.len() * 8);
    ZlibDecoder::new(bytes)
        .take(ASSIGNMENT_RECORD_JSON_BYTES_MAX as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|error| {
            format!("the assignment record is neither JSON nor compressed JSON: {error}")
        })?;
    if json.len() > ASSIGNMENT_RECORD_JSON_BYTES_MAX {
        return Err(format!(
            "the assignment record inflates past {ASSIGNMENT_RECORD_JSON_BYTES_MAX} bytes, more \
             than any placement of at most {PARTITIONS_MAX} partitions"
        ));
    }
    Ok(std::borrow::Cow::Owned(json))
}

/// The placement epoch of an etcd revision: epochs travel as 32 bits in frame headers.
pub fn epoch_of_revision(revision: u64) -> Result<Epoch, String> {
    u32::try_from(revision).map(Epoch).map_err(|_| {
        format!(
            "etcd revision {revision} is past the largest placement epoch ({}); compact and \
             re-create the cluster's etcd, or start a new cluster name",
            u32::MAX
        )
    })
}

/// Reads an assignment record stored at `revision`, checking every entry.
pub fn decode_record(bytes: &[u8], revision: u64) -> Result<Placement, String> {
    let record: AssignmentRecord = serde_json::from_slice(&record_json(bytes)?)
        .map_err(|error| format!("the assignment record is not valid JSON: {error}"))?;
    if !(RECORD_FORMAT_OLDEST..=RECORD_FORMAT).contains(&record.format) {
        return Err(format!(
            "the assignment record has format {}, this build reads formats \
             {RECORD_FORMAT_OLDEST} to {RECORD_FORMAT}",
            record.format
        ));
    }
    let epoch = epoch_of_revision(revision)?;
    let mut owners = Vec::with_capacity(record.owners.len());
    for (partition, RecordOwner(node, shard, part_epoch, state, to)) in
        record.owners.into_iter().enumerate()
    {
        let state = match (state, to) {
            (STATE_SERVING, None) => OwnerState::Serving,
            (STATE_OFFLINE, None) => OwnerState::Offline,
            (STATE_MIGRATING, Some((to, to_shard))) => OwnerState::Migrating {
                to: NodeId(to),
                to_shard: ShardId(to_shard),
            },
            (other, _) => {
                return Err(format!(
                    "partition {partition} has state {other} in the assignment record, \
                     which this build does not know (or a move target where none belongs)"
                ));
            }
        };
        if part_epoch > revision {
            return Err(format!(
                "partition {partition} has epoch {part_epoch}, after the record's own \
                 revision {revision}"
            ));
        }
        let part_epoch = if part_epoch == u64::from(PART_EPOCH_THIS_RECORD.get()) {
            epoch
        } else {
            epoch_of_revision(part_epoch)?
        };
        owners.push(Owner {
            node: NodeId(node),
            shard: ShardId(shard),
            part_epoch,
            state,
        });
    }
    Placement::from_owners(epoch, owners)
        .map_err(|error| format!("the assignment record is not a placement: {error}"))
}

/// Format 2 added the move target of a `Migrating` partition; format 1 records (four numbers
/// per partition) are still read. Format 3 has format 2's shape, stored compressed: every flip
/// rewrites the whole record and etcd sends it to every node's watch, so its size is paid per
/// flip and per node (1,024 partitions: about 10 KB of JSON, 1 to 3 KB compressed).
const RECORD_FORMAT: u32 = 3;
const RECORD_FORMAT_OLDEST: u32 = 1;
const STATE_SERVING: u8 = 0;
const STATE_OFFLINE: u8 = 1;
const STATE_MIGRATING: u8 = 2;

/// The assignment as stored in etcd: one `[node, shard, part_epoch, state]` per partition,
/// with `[to_node, to_shard]` after it for a `Migrating` one.
#[derive(Serialize, Deserialize)]
struct AssignmentRecord {
    format: u32,
    owners: Vec<RecordOwner>,
}

/// One partition's entry: `[node, shard, part_epoch, state]` or `[..., [to_node, to_shard]]`.
#[derive(Serialize, Deserialize)]
struct RecordOwner(
    u32,
    u16,
    u64,
    u8,
    #[serde(default, skip_serializing_if = "Option::is_none")] Option<(u32, u16)>,
);

/// A live node as the controller sees it: how many shards it runs, and the revision at which it
/// registered (its partitions are confirmed to it only at a later partition epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveNode {
    pub shards: u16,
    pub registered_revision: u64,
}

/// The rendezvous score of (partition, node, shard): the highest score over the candidates wins.
fn score(partition: u32, node: NodeId, shard: u16) -> u64 {
    let mut key = [0u8; 10];
    key[..4].copy_from_slice(&partition.to_le_bytes());
    key[4..8].copy_from_slice(&node.0.to_le_bytes());
    key[8..].copy_from_slice(&shard.to_le_bytes());
    xxh3_64(&key)
}

/// The (node, shard) among `live` with the highest rendezvous score for `partition`.
fn rendezvous(partition: u32, live: &BTreeMap<NodeId, LiveNode>) -> Option<(NodeId, ShardId)> {
    live.iter()
        .flat_map(|(&node, info)| (0..info.shards).map(move |shard| (node, shard)))
        .max_by_key(|&(node, shard)| (score(partition, node, shard), node, shard))
        .map(|(node, shard)| (node, ShardId(shard)))
}

/// The shard of `node` with the highest rendezvous score for `partition`.
fn rendezvous_shard(partition: u32, node: NodeId, shards: u16) -> ShardId {
    let best = (0..shards)
        .max_by_key(|&shard| (score(partition, node, shard), shard))
        .unwrap_or(0);
    ShardId(best)
}

/// The next owners of `partitions` partitions, given the current ones (`None` before the first
/// placement) and the live nodes. Sticky: a partition with an owner keeps it, because the owner
/// holds its state and there is no migration yet; only a cluster's first placement (or a
/// partition nobody ever owned) is dealt by rendezvous hashing over the live (node, shard)s.
///
/// - the owner's lease ended: the partition goes `Offline`, with the same owner;
/// - the owner is live again, or re-registered since the partition's epoch: `Serving` at a new
///   partition epoch (its partitions are confirmed to it again);
/// - the owner came back with fewer shards: the partition moves to one of that node's shards.
///
/// Returns `None` when there is nothing to place on (no live node and no current placement).
pub fn next_owners(
    current: Option<&[Owner]>,
    partitions: u32,
    live: &BTreeMap<NodeId, LiveNode>,
) -> Option<Vec<Owner>> {
    let Some(current) = current else {
        return (0..partitions)
            .map(|partition| {
                rendezvous(partition, live).map(|(node, shard)| Owner {
                    node,
                    shard,
                    part_epoch: PART_EPOCH_THIS_RECORD,
                    state: OwnerState::Serving,
                })
            })
            .collect();
    };
    let next = current
        .iter()
        .enumerate()
        .map(|(partition, owner)| next_owner(partition as u32, owner, live))
        .collect();
    Some(next)
}

fn next_owner(partition: u32, owner: &Owner, live: &BTreeMap<NodeId, LiveNode>) -> Owner {
    let changed = |shard, state| Owner {
        node: owner.node,
        shard,
        part_epoch: PART_EPOCH_THIS_RECORD,
        state,
    };
    match live.get(&owner.node) {
        // A dead source of a move goes offline too, and the move with it.
        None if owner.state.applies() => changed(owner.shard, OwnerState::Offline),
        None => *owner,
        Some(node) => {
            let shard = if owner.shard.0 < node.shards {
                owner.shard
            } else {
                rendezvous_shard(partition, owner.node, node.shards)
            };
            let reconfirm = owner.state == OwnerState::Offline
                || shard != owner.shard
                || node.registered_revision >= u64::from(owner.part_epoch.get());
            if reconfirm {
                changed(shard, OwnerState::Serving)
            } else {
                *owner
            }
        }
    }
}

/// The (node, shard) the controller wants `partition` on, owned now by `current`: its pin
/// when the pinned node is among `eligible` (live, not drained) and has that shard (a pin
/// without a shard keeps the shard it is on, or takes the node's rendezvous shard); else the
/// rendezvous winner over `eligible`; its own shard when that is on its own node (moves go
/// between nodes). `None` when nothing is eligible.
pub fn desired_owner(
    partition: u32,
    current: &Owner,
    pin: Option<&PinRecord>,
    eligible: &BTreeMap<NodeId, LiveNode>,
) -> Option<(NodeId, ShardId)> {
    let wanted = wanted_owner(partition, current, pin, eligible)?;
    // A move goes to another node: a partition its node keeps stays on its shard.
    let keeps = wanted.0 == current.node
        && eligible
            .get(&current.node)
            .is_some_and(|node| current.shard.0 < node.shards);
    Some(if keeps {
        (current.node, current.shard)
    } else {
        wanted
    })
}

/// [`desired_owner`] before the rule that a partition does not move between the shards of
/// one node.
fn wanted_owner(
    partition: u32,
    current: &Owner,
    pin: Option<&PinRecord>,
    eligible: &BTreeMap<NodeId, LiveNode>,
) -> Option<(NodeId, ShardId)> {
    if let Some(pin) = pin {
        let node = NodeId(pin.node);
        if let Some(info) = eligible.get(&node) {
            match pin.shard {
                Some(shard) if shard < info.shards => return Some((node, ShardId(shard))),
                Some(_) => {}
                None if current.node == node && current.shard.0 < info.shards => {
                    return Some((node, current.shard));
                }
                None => return Some((node, rendezvous_shard(partition, node, info.shards))),
            }
        }
    }
    rendezvous(partition, eligible)
}

/// What the controller knows when it plans moves, besides the placement.
#[derive(Clone, Copy, Debug)]
pub struct MoveInputs<'a> {
    /// Every live node.
    pub live: &'a BTreeMap<NodeId, LiveNode>,
    /// Live nodes drained by the operator: excluded from placement.
    pub drained: &'a BTreeSet<NodeId>,
    pub pins: &'a BTreeMap<u32, PinRecord>,
    /// The latest `moves/<p>` record of each partition.
    pub records: &'a BTreeMap<u32, MoveRecord>,
    /// Moves the controller has waited `MOVE_TIMEOUT_MS_MAX` for, by partition.
    pub timed_out: &'a BTreeSet<u32>,
    /// Partitions not to move yet (a move of theirs failed a short while ago).
    pub backing_off: &'a BTreeSet<u32>,
    /// Moves in flight at once, at most.
    pub moves_max: u32,
    /// Whether new moves may start now (pacing).
    pub may_start: bool,
}

/// The next placement with its moves, and what changed about them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MovePlan {
    pub owners: Vec<Owner>,
    pub started: Vec<u32>,
    pub flipped: Vec<u32>,
    /// Abandoned moves, with the reason.
    pub abandoned: Vec<(u32, String)>,
}

/// How one move in flight stands, for the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Wait,
    Flip,
    Abandon(String),
}

/// Judges the move of `partition`, `Migrating` at `owner.part_epoch`: flip once its source
/// reported it ready and the target still runs the registration it had when the move started
/// (registered before the move's epoch); abandon when the target is gone or re-registered, the
/// source refused, or no ready came in time.
fn judge(partition: u32, owner: &Owner, inputs: &MoveInputs) -> Verdict {
    let Some((to, to_shard)) = owner.state.migrating_to() else {
        return Verdict::Wait;
    };
    let epoch = u64::from(owner.part_epoch.get());
    match inputs.live.get(&to) {
        None => return Verdict::Abandon(format!("the target {to} is no longer live")),
        Some(target) if target.registered_revision >= epoch => {
            return Verdict::Abandon(format!(
                "the target {to} restarted (registered again) during the move"
            ));
        }
        Some(target) if to_shard.0 >= target.shards => {
            return Verdict::Abandon(format!("the target {to} no longer runs {to_shard}"));
        }
        Some(_) => {}
    }
    let record = inputs.records.get(&partition).filter(|record| {
        record.is_move(owner.part_epoch)
            && record.from().0 == owner.node
            && record.to() == (to, to_shard)
    });
    match record.map(|record| &record.state) {
        Some(MoveState::Ready { .. }) => return Verdict::Flip,
        Some(MoveState::Refused { reason }) => {
            return Verdict::Abandon(format!("the source refused it: {reason}"));
        }
        _ => {}
    }
    if inputs.timed_out.contains(&partition) {
        return Verdict::Abandon(format!(
            "the source reported no ready within {MOVE_TIMEOUT_MS_MAX} ms"
        ));
    }
    Verdict::Wait
}

/// The controller's next placement: `base` (the result of [`next_owners`] on `current`) with
/// the moves in flight flipped or abandoned where due, and new moves started for partitions
/// whose owner is not the one [`desired_owner`] wants, at most `moves_max` in flight. Only a
/// `Serving` partition whose owner is live, unchanged by `base`, can start moving (an
/// `Offline` one has no live state to send).
pub fn plan_moves(current: &[Owner], base: Vec<Owner>, inputs: &MoveInputs) -> MovePlan {
    let mut plan = MovePlan {
        owners: base,
        ..MovePlan::default()
    };
    let unchanged = |plan: &MovePlan, p: usize| current.get(p) == Some(&plan.owners[p]);
    let mut in_flight = 0u32;
    for p in 0..plan.owners.len() {
        let owner = plan.owners[p];
        if !unchanged(&plan, p) || owner.state.migrating_to().is_none() {
            continue;
        }
        let Some((to, to_shard)) = owner.state.migrating_to() else {
            continue;
        };
        match judge(p as u32, &owner, inputs) {
            Verdict::Wait => in_flight += 1,
            Verdict::Flip => {
                plan.owners[p] = serving(to, to_shard);
                plan.flipped.push(p as u32);
            }
            Verdict::Abandon(reason) => {
                plan.owners[p] = serving(owner.node, owner.shard);
                plan.abandoned.push((p as u32, reason));
            }
        }
    }
    if !inputs.may_start {
        return plan;
    }
    let eligible: BTreeMap<NodeId, LiveNode> = inputs
        .live
        .iter()
        .filter(|(node, _)| !inputs.drained.contains(node))
        .map(|(&node, &info)| (node, info))
        .collect();
    for p in 0..plan.owners.len() {
        if in_flight >= inputs.moves_max {
            break;
        }
        let owner = plan.owners[p];
        let movable = unchanged(&plan, p)
            && owner.state == OwnerState::Serving
            && inputs.live.contains_key(&owner.node)
            && !inputs.backing_off.contains(&(p as u32));
        if !movable {
            continue;
        }
        let pin = inputs.pins.get(&(p as u32));
        let Some((to, to_shard)) = desired_owner(p as u32, &owner, pin, &eligible) else {
            continue;
        };
        if (to, to_shard) == (owner.node, owner.shard) {
            continue;
        }
        plan.owners[p] = Owner {
            part_epoch: PART_EPOCH_THIS_RECORD,
            state: OwnerState::Migrating { to, to_shard },
            ..owner
        };
        plan.started.push(p as u32);
        in_flight += 1;
    }
    plan
}

fn serving(node: NodeId, shard: ShardId) -> Owner {
    Owner {
        node,
        shard,
        part_epoch: PART_EPOCH_THIS_RECORD,
        state: OwnerState::Serving,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn live(nodes: &[(u32, u16, u64)]) -> BTreeMap<NodeId, LiveNode> {
        nodes
            .iter()
            .map(|&(node, shards, registered_revision)| {
                (
                    NodeId(node),
                    LiveNode {
                        shards,
                        registered_revision,
                    },
                )
            })
            .collect()
    }

    /// What readers see once `owners` is written at `revision`.
    fn written(owners: &[Owner], revision: u64) -> Placement {
        decode_record(&encode_record(owners), revision).unwrap()
    }

    #[test]
    fn a_migrating_partition_keeps_its_target_and_format_1_records_are_still_read() {
        let owners = vec![
            Owner {
                node: NodeId(1),
                shard: ShardId(0),
                part_epoch: Epoch(4),
                state: OwnerState::Migrating {
                    to: NodeId(3),
                    to_shard: ShardId(1),
                },
            },
            Owner {
                node: NodeId(2),
                shard: ShardId(1),
                part_epoch: Epoch(4),
                state: OwnerState::Offline,
            },
        ];
        let placement = written(&owners, 9);
        assert_eq!(placement.owners(), &owners[..]);
        let format_1 = br#"{"format":1,"owners":[[1,0,4,0],[2,1,4,1]]}"#;
        let old = decode_record(format_1, 9).unwrap();
        assert_eq!(old.owners()[0].state, OwnerState::Serving);
        assert_eq!(old.owners()[1].state, OwnerState::Offline);
        let target_without_move = br#"{"format":2,"owners":[[1,0,4,0,[3,1]],[2,1,4,1]]}"#;
        let error = decode_record(target_without_move, 9).unwrap_err();
        assert!(error.contains("partition 0 has state 0"), "{error}");
        let move_without_target = br#"{"format":2,"owners":[[1,0,4,2],[2,1,4,1]]}"#;
        assert!(decode_record(move_without_target, 9).is_err());
    }

    #[test]
    fn a_partition_its_node_keeps_stays_on_its_shard() {
        let nodes = live(&[(1, 4, 3)]);
        for partition in 0..64 {
            for shard in 0..4 {
                let current = Owner {
                    node: NodeId(1),
                    shard: ShardId(shard),
                    part_epoch: Epoch(5),
                    state: OwnerState::Serving,
                };
                let pin = PinRecord {
                    node: 1,
                    shard: Some((shard + 1) % 4),
                };
                for pin in [None, Some(&pin)] {
                    assert_eq!(
                        desired_owner(partition, &current, pin, &nodes),
                        Some((NodeId(1), ShardId(shard))),
                        "partition {partition} on shard {shard}, pin {pin:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_first_placement_covers_every_partition_once_and_spreads_over_every_shard() {
        let nodes = live(&[(1, 2, 3), (2, 2, 4), (3, 2, 5)]);
        let owners = next_owners(None, 1024, &nodes).unwrap();
        let placement = written(&owners, 10);
        assert_eq!(placement.partitions(), 1024);
        let counts = placement.counts();
        assert_eq!(counts.len(), 6, "every (node, shard) owns some: {counts:?}");
        for ((node, shard), (serving, offline)) in counts {
            assert_eq!(offline, 0);
            // 1024 / 6 ≈ 171; rendezvous hashing keeps every share well within half of that.
            assert!(
                (85..=256).contains(&serving),
                "{node} {shard} owns {serving} partitions"
            );
        }
        assert!(
            placement
                .owners()
                .iter()
                .all(|owner| owner.part_epoch == Epoch(10))
        );
    }

    #[test]
    fn nothing_to_place_on_is_none() {
        assert_eq!(next_owners(None, 16, &BTreeMap::new()), None);
    }

    #[test]
    fn a_dead_owner_goes_offline_and_returns_at_a_new_epoch() {
        let nodes = live(&[(1, 1, 3), (2, 1, 4)]);
        let first = written(&next_owners(None, 64, &nodes).unwrap(), 10);
        let of_node_2: Vec<usize> = (0..64)
            .filter(|&p| first.owners()[p].node == NodeId(2))
            .collect();
        assert!(!of_node_2.is_empty());

        let without_2 = live(&[(1, 1, 3)]);
        let second = written(
            &next_owners(Some(first.owners()), 64, &without_2).unwrap(),
            20,
        );
        for p in 0..64 {
            let (before, after) = (first.owners()[p], second.owners()[p]);
            assert_eq!((after.node, after.shard), (before.node, before.shard));
            if of_node_2.contains(&p) {
                assert_eq!(after.state, OwnerState::Offline);
                assert_eq!(after.part_epoch, Epoch(20));
            } else {
                assert_eq!(after, before, "partition {p} of a live node is untouched");
            }
        }
        // Still without node 2: nothing changes, so the controller has nothing to write.
        let again = next_owners(Some(second.owners()), 64, &without_2).unwrap();
        assert_eq!(again, second.owners());

        // Node 2 re-registers at revision 25: its partitions come back to it at a new epoch.
        let back = live(&[(1, 1, 3), (2, 1, 25)]);
        let third = written(&next_owners(Some(second.owners()), 64, &back).unwrap(), 30);
        for p in 0..64 {
            if of_node_2.contains(&p) {
                assert_eq!(third.owners()[p].node, NodeId(2));
                assert_eq!(third.owners()[p].state, OwnerState::Serving);
                assert_eq!(third.owners()[p].part_epoch, Epoch(30));
            } else {
                assert_eq!(third.owners()[p], first.owners()[p]);
            }
        }
    }

    #[test]
    fn a_node_that_re_registered_unseen_is_confirmed_at_a_new_epoch() {
        // The controller never saw node 2's lease end, but node 2 registered again (revision
        // 15) after its partitions' epoch (10): it must not serve them until a later epoch.
        let nodes = live(&[(1, 1, 3), (2, 1, 4)]);
        let first = written(&next_owners(None, 32, &nodes).unwrap(), 10);
        let re_registered = live(&[(1, 1, 3), (2, 1, 15)]);
        let next = written(
            &next_owners(Some(first.owners()), 32, &re_registered).unwrap(),
            16,
        );
        for (before, after) in first.owners().iter().zip(next.owners()) {
            let expected = Epoch(if before.node == NodeId(2) { 16 } else { 10 });
            assert_eq!(after.part_epoch, expected);
            assert_eq!(after.node, before.node);
        }
    }

    #[test]
    fn a_node_back_with_fewer_shards_keeps_its_partitions_on_its_own_shards() {
        let nodes = live(&[(1, 4, 3)]);
        let first = written(&next_owners(None, 64, &nodes).unwrap(), 10);
        let fewer = live(&[(1, 2, 20)]);
        let next = written(&next_owners(Some(first.owners()), 64, &fewer).unwrap(), 21);
        assert!(next.owners().iter().all(|owner| owner.node == NodeId(1)
            && owner.shard.0 < 2
            && owner.state == OwnerState::Serving));
    }

    #[test]
    fn records_are_stored_compressed_and_the_largest_placement_fits_the_inflate_bound() {
        let nodes = live(&[(1, 4, 1), (2, 4, 1), (3, 4, 1)]);
        let owners = next_owners(None, 1024, &nodes).unwrap();
        let bytes = encode_record(&owners);
        let json = record_json(&bytes).unwrap();
        assert!(json.starts_with(b"{\"format\":3,"));
        assert!(
            bytes.len() * 4 < json.len(),
            "{} of {}",
            bytes.len(),
            json.len()
        );
        let read = written(&owners, 9);
        assert!(
            read.owners()
                .iter()
                .zip(&owners)
                .all(|(r, o)| r.node == o.node && r.shard == o.shard)
        );
        // The widest entry, PARTITIONS_MAX times, inflates within the bound.
        let widest = Owner {
            node: NodeId(u32::MAX),
            shard: ShardId(u16::MAX),
            part_epoch: Epoch(u32::MAX),
            state: OwnerState::Migrating {
                to: NodeId(u32::MAX),
                to_shard: ShardId(u16::MAX),
            },
        };
        let largest = vec![widest; PARTITIONS_MAX as usize];
        let json = record_json(&encode_record(&largest)).unwrap().into_owned();
        assert!(
            json.len() <= ASSIGNMENT_RECORD_JSON_BYTES_MAX,
            "{}",
            json.len()
        );
    }

    #[test]
    fn records_refuse_what_they_cannot_mean() {
        let owners = next_owners(None, 4, &live(&[(1, 1, 1)])).unwrap();
        let bytes = encode_record(&owners);
        assert!(decode_record(&bytes, 5).is_ok());
        assert!(
            decode_record(b"{", 5)
                .unwrap_err()
                .contains("not valid JSON")
        );
        let future = br#"{"format":1,"owners":[[1,0,9,0]]}"#;
        assert!(
            decode_record(future, 5)
                .unwrap_err()
                .contains("after the record")
        );
        let unknown = br#"{"format":1,"owners":[[1,0,3,7]]}"#;
        assert!(decode_record(unknown, 5).unwrap_err().contains("state 7"));
        let newer = br#"{"format":4,"owners":[]}"#;
        assert!(decode_record(newer, 5).unwrap_err().contains("format 4"));
        // Compressed bytes that are not a record, and ones that inflate past any placement.
        assert!(
            decode_record(&[0x78, 0x9c, 1, 2, 3], 5)
                .unwrap_err()
                .contains("neither JSON nor compressed JSON")
        );
        let mut bomb = ZlibEncoder::new(Vec::new(), Compression::best());
        bomb.write_all(&vec![b' '; ASSIGNMENT_RECORD_JSON_BYTES_MAX + 1])
            .unwrap();
        let bomb = bomb.finish().unwrap();
        assert!(bomb.len() < 4096);
        assert!(
            decode_record(&bomb, 5)
                .unwrap_err()
                .contains("inflates past")
        );
    }

    proptest! {
        /// Sticky placement: whatever nodes come and go, a partition never changes node once
        /// placed, partitions of live nodes never move, and a partition's epoch changes only
        /// when its owner or state does.
        #[test]
        fn placement_is_sticky(
            steps in proptest::collection::vec(proptest::collection::btree_set(1u32..8, 1..6), 1..8)
        ) {
            let partitions = 128;
            let mut current: Option<Placement> = None;
            let mut revision = 10;
            for (step, nodes) in steps.iter().enumerate() {
                let live_nodes: BTreeMap<NodeId, LiveNode> = nodes
                    .iter()
                    .map(|&node| (NodeId(node), LiveNode { shards: 2, registered_revision: 1 }))
                    .collect();
                let next = next_owners(current.as_ref().map(|p| p.owners()), partitions, &live_nodes)
                    .unwrap();
                revision += 1;
                let next = written(&next, revision);
                prop_assert_eq!(next.partitions(), partitions);
                if let Some(previous) = &current {
                    for (p, (before, after)) in previous.owners().iter().zip(next.owners()).enumerate() {
                        prop_assert_eq!(after.node, before.node, "step {} partition {} moved", step, p);
                        let live_owner = live_nodes.contains_key(&after.node);
                        prop_assert_eq!(after.state == OwnerState::Serving, live_owner);
                        if (after.shard, after.state) == (before.shard, before.state) {
                            prop_assert_eq!(after.part_epoch, before.part_epoch);
                        } else {
                            prop_assert_eq!(after.part_epoch, Epoch(revision as u32));
                        }
                    }
                } else {
                    prop_assert!(next.owners().iter().all(|o| live_nodes.contains_key(&o.node)));
                }
                current = Some(next);
            }
        }

        /// Rendezvous hashing moves few partitions: dealing a first placement over one more
        /// node changes the owner only of the partitions the new node takes.
        #[test]
        fn rendezvous_moves_only_what_the_new_node_takes(nodes in 1u32..12, partitions_log2 in 6u32..11) {
            let partitions = 1 << partitions_log2;
            let before_nodes: BTreeMap<NodeId, LiveNode> = (1..=nodes)
                .map(|n| (NodeId(n), LiveNode { shards: 1, registered_revision: 1 }))
                .collect();
            let mut after_nodes = before_nodes.clone();
            after_nodes.insert(NodeId(nodes + 1), LiveNode { shards: 1, registered_revision: 1 });
            let before = next_owners(None, partitions, &before_nodes).unwrap();
            let after = next_owners(None, partitions, &after_nodes).unwrap();
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(a.node == b.node || a.node == NodeId(nodes + 1));
            }
        }
    }
}
