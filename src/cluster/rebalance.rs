//! The operator's plans for live moves, pure: `trove cluster rebalance` by partition count
//! ([`plan_by_count`]) or by measured load ([`plan_by_load`]), and where a drained node's
//! partitions go ([`plan_drain`]). A plan is a list of (partition, new owner) that the command
//! writes as pins; the controller then moves them. Plain values, usable on any thread.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::placement::{LiveNode, Owner, OwnerState, desired_owner};
use crate::constants::REBALANCE_LOAD_STEPS_PER_PARTITION_MAX;
use crate::core::ids::{NodeId, ShardId};

/// A (node, shard) that can own partitions.
pub type Slot = (NodeId, ShardId);

/// One planned move: the partition and its new owner.
pub type PlannedMove = (u32, Slot);

/// Every (node, shard) of `eligible`, in order.
pub fn slots_of(eligible: &BTreeMap<NodeId, LiveNode>) -> Vec<Slot> {
    eligible
        .iter()
        .flat_map(|(&node, info)| (0..info.shards).map(move |shard| (node, ShardId(shard))))
        .collect()
}

/// The partitions each of `slots` owns (in any state), and which of them can move (`Serving`:
/// a `Migrating` one is moving already, an `Offline` one has no live state to send).
fn holdings(owners: &[Owner], slots: &[Slot]) -> BTreeMap<Slot, (usize, Vec<u32>)> {
    let mut held: BTreeMap<Slot, (usize, Vec<u32>)> =
        slots.iter().map(|&slot| (slot, (0, Vec::new()))).collect();
    for (partition, owner) in owners.iter().enumerate() {
        if let Some((count, movable)) = held.get_mut(&(owner.node, owner.shard)) {
            *count += 1;
            if owner.state == OwnerState::Serving {
                movable.push(partition as u32);
            }
        }
    }
    held
}

/// Evens out the partitions per slot among `slots` (the live, non-drained (node, shard)s):
/// every slot ends with ⌊T/n⌋ or ⌈T/n⌉ of the T partitions they own, and the slots that hold
/// the most keep the ⌈T/n⌉ shares, so only the excess moves: the fewest moves that can even
/// them out. Partitions owned elsewhere (drained or dead nodes) are not counted.
pub fn plan_by_count(owners: &[Owner], slots: &[Slot]) -> Vec<PlannedMove> {
    if slots.is_empty() {
        return Vec::new();
    }
    let held = holdings(owners, slots);
    let total: usize = held.values().map(|(count, _)| count).sum();
    let (base, extra) = (total / slots.len(), total % slots.len());
    let mut by_count: Vec<(Slot, usize)> = held.iter().map(|(&s, (c, _))| (s, *c)).collect();
    by_count.sort_by_key(|&(slot, count)| (std::cmp::Reverse(count), slot));
    let target: BTreeMap<Slot, usize> = by_count
        .iter()
        .enumerate()
        .map(|(rank, &(slot, _))| (slot, base + usize::from(rank < extra)))
        .collect();
    let mut given: Vec<u32> = Vec::new();
    for (slot, (count, movable)) in &held {
        let excess = count.saturating_sub(target[slot]);
        given.extend(movable.iter().take(excess));
    }
    let mut receivers = held.iter().flat_map(|(slot, (count, _))| {
        std::iter::repeat_n(*slot, target[slot].saturating_sub(*count))
    });
    given
        .into_iter()
        .map_while(|partition| receivers.next().map(|slot| (partition, slot)))
        .collect()
}

/// Evens out measured events/s among `slots`, moving as few partitions as it can: a
/// slot's rate (`rates`, events/s) is taken as spread evenly over the partitions it owns (per
/// partition rates are not measured), and partitions move one at a time from the busiest slot
/// to the idlest, each time the one that brings the two closest, while a move still lowers
/// the busier of the two (a partition may move on again; the plan holds where it ends, and
/// nothing for one that ends where it was). It stops when the busiest slot has no partition
/// lighter than its lead over the idlest: the slots end even within one partition's rate.
pub fn plan_by_load(
    owners: &[Owner],
    slots: &[Slot],
    rates: &BTreeMap<Slot, f64>,
) -> Vec<PlannedMove> {
    let held = holdings(owners, slots);
    let mut load: BTreeMap<Slot, f64> = BTreeMap::new();
    let mut movable: BTreeMap<Slot, Vec<(u32, f64)>> = BTreeMap::new();
    for (slot, (count, partitions)) in &held {
        let rate = rates.get(slot).copied().unwrap_or(0.0).max(0.0);
        // A slot that owns no partition has no load it could give away or be judged by.
        let (each, attributed) = if *count == 0 {
            (0.0, 0.0)
        } else {
            (rate / *count as f64, rate)
        };
        load.insert(*slot, attributed);
        movable.insert(*slot, partitions.iter().map(|&p| (p, each)).collect());
    }
    let mut plan: BTreeMap<u32, Slot> = BTreeMap::new();
    // Every step lowers the sum of the squared loads; the bound only guards against steps
    // that lower it by next to nothing.
    for _ in 0..owners
        .len()
        .saturating_mul(REBALANCE_LOAD_STEPS_PER_PARTITION_MAX)
    {
        let busiest = load
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)));
        let idlest = load
            .iter()
            .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)));
        let (Some((&from, &high)), Some((&to, &low))) = (busiest, idlest) else {
            break;
        };
        let gap = high - low;
        let best = movable[&from]
            .iter()
            .enumerate()
            .filter(|(_, (_, weight))| *weight > 0.0 && *weight < gap)
            .min_by(|a, b| {
                (a.1.1 - gap / 2.0)
                    .abs()
                    .total_cmp(&(b.1.1 - gap / 2.0).abs())
            })
            .map(|(index, _)| index);
        let Some(index) = best else {
            break;
        };
        let (partition, weight) = movable.get_mut(&from).expect("a slot").swap_remove(index);
        *load.get_mut(&from).expect("a slot") -= weight;
        *load.get_mut(&to).expect("a slot") += weight;
        movable
            .get_mut(&to)
            .expect("a slot")
            .push((partition, weight));
        plan.insert(partition, to);
    }
    plan.into_iter()
        .filter(|&(partition, (node, shard))| {
            let owner = &owners[partition as usize];
            (owner.node, owner.shard) != (node, shard)
        })
        .collect()
}

/// Where `node`'s partitions go when it is drained: each to the owner the controller will
/// want for it once `node` is excluded (its pin when that is eligible, else the rendezvous
/// winner over the other live nodes). Empty when no other node is live.
pub fn plan_drain(
    owners: &[Owner],
    node: NodeId,
    live: &BTreeMap<NodeId, LiveNode>,
    drained: &BTreeSet<NodeId>,
    pins: &BTreeMap<u32, crate::cluster::keys::PinRecord>,
) -> Vec<PlannedMove> {
    let eligible: BTreeMap<NodeId, LiveNode> = live
        .iter()
        .filter(|(n, _)| **n != node && !drained.contains(n))
        .map(|(&n, &info)| (n, info))
        .collect();
    owners
        .iter()
        .enumerate()
        .filter(|(_, owner)| owner.node == node)
        .filter_map(|(p, owner)| {
            let p = p as u32;
            desired_owner(p, owner, pins.get(&p), &eligible).map(|slot| (p, slot))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Epoch;
    use proptest::prelude::*;

    fn owners_from(slots_of_partitions: &[Slot]) -> Vec<Owner> {
        slots_of_partitions
            .iter()
            .map(|&(node, shard)| Owner {
                node,
                shard,
                part_epoch: Epoch(3),
                state: OwnerState::Serving,
            })
            .collect()
    }

    fn slot(node: u32, shard: u16) -> Slot {
        (NodeId(node), ShardId(shard))
    }

    fn apply(owners: &mut [Owner], plan: &[PlannedMove]) {
        for &(p, (node, shard)) in plan {
            owners[p as usize].node = node;
            owners[p as usize].shard = shard;
        }
    }

    fn counts(owners: &[Owner], slots: &[Slot]) -> Vec<usize> {
        slots
            .iter()
            .map(|&(node, shard)| {
                owners
                    .iter()
                    .filter(|o| (o.node, o.shard) == (node, shard))
                    .count()
            })
            .collect()
    }

    #[test]
    fn count_moves_only_the_excess_and_leaves_balanced_slots_alone() {
        // 10 partitions: 6 on a, 3 on b, 1 on c; the even shares are 4, 3, 3.
        let (a, b, c) = (slot(1, 0), slot(2, 0), slot(3, 0));
        let layout = [a, a, a, a, a, a, b, b, b, c];
        let mut owners = owners_from(&layout);
        let plan = plan_by_count(&owners, &[a, b, c]);
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(
            plan.iter()
                .all(|&(p, to)| layout[p as usize] == a && to == c)
        );
        apply(&mut owners, &plan);
        assert_eq!(counts(&owners, &[a, b, c]), vec![4, 3, 3]);
        assert_eq!(plan_by_count(&owners, &[a, b, c]), vec![], "even: nothing");
    }

    #[test]
    fn count_never_moves_a_partition_that_is_moving_or_offline() {
        let (a, b) = (slot(1, 0), slot(2, 0));
        let mut owners = owners_from(&[a, a, a, a]);
        owners[0].state = OwnerState::Offline;
        owners[1].state = OwnerState::Migrating {
            to: NodeId(2),
            to_shard: ShardId(0),
        };
        let plan = plan_by_count(&owners, &[a, b]);
        assert_eq!(plan, vec![(2, b), (3, b)]);
    }

    proptest! {
        /// Whatever the layout, count rebalancing ends even within one partition and moves
        /// exactly the partitions above each slot's share: no plan could move fewer.
        #[test]
        fn count_ends_even_with_the_fewest_moves(layout in proptest::collection::vec(0usize..5, 1..200)) {
            let slots: Vec<Slot> = (1..=5).map(|n| slot(n, 0)).collect();
            let mut owners = owners_from(&layout.iter().map(|&i| slots[i]).collect::<Vec<_>>());
            let before = counts(&owners, &slots);
            let plan = plan_by_count(&owners, &slots);
            apply(&mut owners, &plan);
            let after = counts(&owners, &slots);
            let (max, min) = (*after.iter().max().unwrap(), *after.iter().min().unwrap());
            prop_assert!(max - min <= 1, "{:?} → {:?}", before, after);
            // A lower bound on any plan: what lies above ⌈T/n⌉, or above ⌊T/n⌋ beyond the
            // slots allowed to keep ⌈T/n⌉.
            let n = slots.len();
            let (base, extra) = (layout.len() / n, layout.len() % n);
            let mut sorted = before.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            let least: usize = sorted
                .iter()
                .enumerate()
                .map(|(rank, &c)| c.saturating_sub(base + usize::from(rank < extra)))
                .sum();
            prop_assert_eq!(plan.len(), least);
        }

        /// Load rebalancing ends with the slots within one partition's rate of each other,
        /// when every partition can move.
        #[test]
        fn load_ends_even_within_one_partition(
            layout in proptest::collection::vec(0usize..4, 8..120),
            rates in proptest::collection::vec(0u32..100_000, 4),
        ) {
            let slots: Vec<Slot> = (1..=4).map(|n| slot(n, 0)).collect();
            let mut owners = owners_from(&layout.iter().map(|&i| slots[i]).collect::<Vec<_>>());
            let rate_of: BTreeMap<Slot, f64> = slots.iter().zip(&rates).map(|(&s, &r)| (s, f64::from(r))).collect();
            let counts_before = counts(&owners, &slots);
            // Each partition's weight is its slot's rate over its slot's count, before moving.
            let weight: Vec<f64> = owners
                .iter()
                .map(|o| {
                    let i = slots.iter().position(|&s| s == (o.node, o.shard)).unwrap();
                    rate_of[&slots[i]] / counts_before[i] as f64
                })
                .collect();
            let plan = plan_by_load(&owners, &slots, &rate_of);
            let moved: BTreeSet<u32> = plan.iter().map(|(p, _)| *p).collect();
            prop_assert_eq!(moved.len(), plan.len(), "a partition moves at most once");
            apply(&mut owners, &plan);
            let load: Vec<f64> = slots
                .iter()
                .map(|&s| {
                    owners
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| (o.node, o.shard) == s)
                        .map(|(p, _)| weight[p])
                        .sum()
                })
                .collect();
            let high = load.iter().copied().fold(f64::MIN, f64::max);
            let low = load.iter().copied().fold(f64::MAX, f64::min);
            let busiest = load.iter().position(|&l| l == high).unwrap();
            let lightest_there = owners
                .iter()
                .enumerate()
                .filter(|(_, o)| (o.node, o.shard) == slots[busiest])
                .map(|(p, _)| weight[p])
                .filter(|&w| w > 0.0)
                .fold(f64::MAX, f64::min);
            prop_assert!(
                high - low <= lightest_there + 1e-6 * high.max(1.0),
                "loads {:?}: gap {} above the busiest slot's lightest partition {}",
                load, high - low, lightest_there
            );
        }
    }

    #[test]
    fn load_moves_nothing_when_even_and_little_when_one_slot_is_hot() {
        let (a, b) = (slot(1, 0), slot(2, 0));
        let owners = owners_from(&[a, a, a, a, b, b, b, b]);
        let even: BTreeMap<Slot, f64> = [(a, 1000.0), (b, 1000.0)].into_iter().collect();
        assert_eq!(plan_by_load(&owners, &[a, b], &even), vec![]);
        // a: 4 partitions of 1500/s each; b: 4 of 500/s. One move evens them at 4500/4500.
        let hot: BTreeMap<Slot, f64> = [(a, 6000.0), (b, 2000.0)].into_iter().collect();
        let plan = plan_by_load(&owners, &[a, b], &hot);
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!(plan[0].1, b);
    }

    #[test]
    fn a_drain_sends_every_partition_of_the_node_elsewhere_and_nothing_else() {
        let live: BTreeMap<NodeId, LiveNode> = (1..=3)
            .map(|n| {
                let info = LiveNode {
                    shards: 2,
                    registered_revision: 1,
                };
                (NodeId(n), info)
            })
            .collect();
        let owners = crate::cluster::placement::next_owners(None, 64, &live).unwrap();
        let pins = [(
            owners.iter().position(|o| o.node == NodeId(2)).unwrap() as u32,
            crate::cluster::keys::PinRecord {
                node: 1,
                shard: Some(1),
            },
        )]
        .into_iter()
        .collect();
        let plan = plan_drain(&owners, NodeId(2), &live, &BTreeSet::new(), &pins);
        let of_2 = owners.iter().filter(|o| o.node == NodeId(2)).count();
        assert_eq!(plan.len(), of_2);
        assert!(
            plan.iter()
                .all(|&(p, (node, _))| owners[p as usize].node == NodeId(2) && node != NodeId(2))
        );
        let (&pinned, _) = pins.iter().next().unwrap();
        assert!(
            plan.contains(&(pinned, slot(1, 1))),
            "the pin wins: {plan:?}"
        );
        // Only node 2 live: nowhere to go.
        let alone: BTreeMap<NodeId, LiveNode> =
            live.into_iter().filter(|(n, _)| *n == NodeId(2)).collect();
        assert_eq!(
            plan_drain(&owners, NodeId(2), &alone, &BTreeSet::new(), &pins),
            vec![]
        );
    }
}
