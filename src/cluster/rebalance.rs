//! The operator's plans for live moves, pure: `trove cluster rebalance` by partition count
//! ([`plan_by_count`]) or by each partition's measured events/s ([`plan_by_load`], with
//! [`partition_rates`] turning what was measured into a rate per partition), and where a
//! drained node's partitions go ([`plan_drain`]). A plan is a list of (partition, new owner) that the command
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

/// What `rebalance --by load` measured over its sample, in events/s: each partition's rate
/// as the shard that owns it counted it, and, for a node that counts no partitions (a build
/// from before the per-partition counts), each of its shards' rates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeasuredLoad {
    pub partitions: BTreeMap<u32, f64>,
    pub shards: BTreeMap<Slot, f64>,
}

/// Each partition's events/s, indexed by partition: its own measured rate where its owner
/// counted it; else its shard's measured rate spread evenly over the partitions `owners` (the
/// placement while measuring) gives that shard; else 0. Negative or non-finite rates are 0.
pub fn partition_rates(owners: &[Owner], measured: &MeasuredLoad) -> Vec<f64> {
    let mut owned: BTreeMap<Slot, usize> = BTreeMap::new();
    for owner in owners {
        let slot = (owner.node, owner.shard);
        if measured.shards.contains_key(&slot) {
            *owned.entry(slot).or_default() += 1;
        }
    }
    let rates = owners.iter().enumerate().map(|(partition, owner)| {
        if let Some(&rate) = measured.partitions.get(&(partition as u32)) {
            return rate;
        }
        let slot = (owner.node, owner.shard);
        match (measured.shards.get(&slot), owned.get(&slot)) {
            (Some(&rate), Some(&count)) => rate / count as f64,
            _ => 0.0,
        }
    });
    rates.map(usable_rate).collect()
}

/// A rate the planner can add up: negative, NaN and infinite ones count as 0.
fn usable_rate(rate: f64) -> f64 {
    if rate.is_finite() { rate.max(0.0) } else { 0.0 }
}

/// The events/s of each of `slots`: the rates (indexed by partition) of the partitions
/// `owners` gives it, in any state.
pub fn slot_loads(owners: &[Owner], slots: &[Slot], rates: &[f64]) -> BTreeMap<Slot, f64> {
    let mut load: BTreeMap<Slot, f64> = slots.iter().map(|&slot| (slot, 0.0)).collect();
    for (partition, owner) in owners.iter().enumerate() {
        if let Some(sum) = load.get_mut(&(owner.node, owner.shard)) {
            *sum += usable_rate(rates.get(partition).copied().unwrap_or(0.0));
        }
    }
    load
}

/// Evens out measured events/s among `slots`, moving as few partitions as it can, each by
/// its own rate (`rates`, events/s indexed by partition; see [`partition_rates`]). Partitions
/// move one at a time from the busiest slot to the idlest slot of another node (shards of
/// one node are not evened out against each other: a move goes to another node), each time
/// the one that brings the two closest, while a move still lowers the busier of the two: so
/// a hot partition moves when that evens the two out best, and stays where moving it would
/// only make the receiver the new busiest. A partition may move on again; the plan holds
/// where it ends (never another shard of the node it started on), and nothing for one that
/// ends where it was. It stops when the busiest slot has no partition lighter than its lead
/// over the idlest slot of another node: with one shard per node, the slots end even within
/// the rate of the busiest one's lightest partition.
pub fn plan_by_load(owners: &[Owner], slots: &[Slot], rates: &[f64]) -> Vec<PlannedMove> {
    let mut load = slot_loads(owners, slots, rates);
    let mut movable: BTreeMap<Slot, Vec<(u32, f64)>> = holdings(owners, slots)
        .into_iter()
        .map(|(slot, (_, partitions))| {
            let weighed = partitions.into_iter().map(|p| {
                (
                    p,
                    usable_rate(rates.get(p as usize).copied().unwrap_or(0.0)),
                )
            });
            (slot, weighed.collect())
        })
        .collect();
    let start = |partition: u32| {
        let owner = &owners[partition as usize];
        (owner.node, owner.shard)
    };
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
        let Some((&from, &high)) = busiest else {
            break;
        };
        let idlest = load
            .iter()
            .filter(|(slot, _)| slot.0 != from.0)
            .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)));
        let Some((&to, &low)) = idlest else {
            break;
        };
        let gap = high - low;
        let best = movable[&from]
            .iter()
            .enumerate()
            .filter(|(_, (partition, weight))| {
                let began = start(*partition);
                *weight > 0.0 && *weight < gap && (began == to || began.0 != to.0)
            })
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
        .filter(|&(partition, slot)| start(partition) != slot)
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

        /// Load rebalancing, with one shard per node, ends with the slots within the rate of
        /// the busiest one's lightest partition, when every partition can move.
        #[test]
        fn load_ends_even_within_one_partition(
            placed in proptest::collection::vec((0usize..4, 0u32..10_000), 8..120),
        ) {
            let slots: Vec<Slot> = (1..=4).map(|n| slot(n, 0)).collect();
            let mut owners = owners_from(&placed.iter().map(|&(i, _)| slots[i]).collect::<Vec<_>>());
            let rates: Vec<f64> = placed.iter().map(|&(_, rate)| f64::from(rate)).collect();
            let plan = plan_by_load(&owners, &slots, &rates);
            let moved: BTreeSet<u32> = plan.iter().map(|(p, _)| *p).collect();
            prop_assert_eq!(moved.len(), plan.len(), "a partition moves at most once");
            apply(&mut owners, &plan);
            let load = slot_loads(&owners, &slots, &rates);
            let high = load.values().copied().fold(0.0, f64::max);
            let low = load.values().copied().fold(f64::MAX, f64::min);
            // Of the busiest slots (several may tie), the one whose lightest partition is
            // heaviest: no move from it lowers it, so no move lowers the busiest load.
            let lightest_there = load
                .iter()
                .filter(|(_, l)| **l == high)
                .map(|(&busiest, _)| {
                    owners
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| (o.node, o.shard) == busiest)
                        .map(|(p, _)| rates[p])
                        .filter(|&w| w > 0.0)
                        .fold(f64::MAX, f64::min)
                })
                .fold(0.0, f64::max);
            prop_assert!(
                high - low <= lightest_there + 1e-6 * high.max(1.0),
                "loads {:?}: gap {} above the busiest slots' lightest partition {}",
                load, high - low, lightest_there
            );
        }

        /// With several shards a node, every planned move goes to another node, no partition
        /// moves twice, and the busiest slot's load never rises.
        #[test]
        fn load_moves_go_between_nodes_and_never_raise_the_busiest(
            placed in proptest::collection::vec((0usize..6, 0u32..10_000), 8..120),
        ) {
            let slots: Vec<Slot> = (1..=3).flat_map(|n| [slot(n, 0), slot(n, 1)]).collect();
            let mut owners = owners_from(&placed.iter().map(|&(i, _)| slots[i]).collect::<Vec<_>>());
            let rates: Vec<f64> = placed.iter().map(|&(_, rate)| f64::from(rate)).collect();
            let busiest = |owners: &[Owner]| {
                slot_loads(owners, &slots, &rates).values().copied().fold(0.0, f64::max)
            };
            let before = busiest(&owners);
            let plan = plan_by_load(&owners, &slots, &rates);
            let moved: BTreeSet<u32> = plan.iter().map(|(p, _)| *p).collect();
            prop_assert_eq!(moved.len(), plan.len());
            for &(partition, (node, _)) in &plan {
                prop_assert_ne!(owners[partition as usize].node, node, "{:?}", plan);
            }
            apply(&mut owners, &plan);
            prop_assert!(busiest(&owners) <= before + 1e-9, "{} → {}", before, busiest(&owners));
        }
    }

    #[test]
    fn load_moves_nothing_when_even_and_little_when_one_slot_is_hot() {
        let (a, b) = (slot(1, 0), slot(2, 0));
        let owners = owners_from(&[a, a, a, a, b, b, b, b]);
        assert_eq!(plan_by_load(&owners, &[a, b], &[250.0; 8]), vec![]);
        // a: 4 partitions of 1500/s each; b: 4 of 500/s. One move leaves them at 4500/3500,
        // within one partition's rate: a second would only swap which is busier.
        let hot = [1500.0, 1500.0, 1500.0, 1500.0, 500.0, 500.0, 500.0, 500.0];
        let plan = plan_by_load(&owners, &[a, b], &hot);
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!(plan[0].1, b);
    }

    #[test]
    fn a_hot_partition_is_what_moves_not_its_cold_neighbours() {
        // a: two hot partitions of 400/s and 20 cold ones of 10/s (1000/s); b: 20 cold ones
        // (200/s). Moving one hot partition evens them at 600/600, in one move; spread
        // evenly over a's 22 partitions, a's rate would have moved cold ones.
        let (a, b) = (slot(1, 0), slot(2, 0));
        let mut layout = vec![a; 22];
        layout.extend([b; 20]);
        let mut rates = vec![10.0; 42];
        let (hot_1, hot_2) = (7, 15);
        rates[hot_1] = 400.0;
        rates[hot_2] = 400.0;
        let mut owners = owners_from(&layout);
        let plan = plan_by_load(&owners, &[a, b], &rates);
        assert_eq!(plan.len(), 1, "{plan:?}");
        let (moved, to) = plan[0];
        assert!([hot_1, hot_2].contains(&(moved as usize)), "{plan:?}");
        assert_eq!(to, b);
        apply(&mut owners, &plan);
        let load = slot_loads(&owners, &[a, b], &rates);
        assert_eq!((load[&a], load[&b]), (600.0, 600.0));
    }

    #[test]
    fn a_hot_partition_that_would_overshoot_stays_and_cold_ones_even_out() {
        // a: one hot partition of 1000/s and 5 cold ones of 20/s (1100/s); b: 9 of 100/s
        // (900/s). Moving the hot one would leave b at 1900/s: it stays, and the 5 cold
        // ones go, to 1000/1000.
        let (a, b) = (slot(1, 0), slot(2, 0));
        let mut layout = vec![a; 6];
        layout.extend([b; 9]);
        let mut rates = vec![20.0; 6];
        rates[0] = 1000.0;
        rates.extend([100.0; 9]);
        let mut owners = owners_from(&layout);
        let plan = plan_by_load(&owners, &[a, b], &rates);
        assert!(plan.iter().all(|&(p, to)| p != 0 && to == b), "{plan:?}");
        assert_eq!(plan.len(), 5, "{plan:?}");
        apply(&mut owners, &plan);
        let load = slot_loads(&owners, &[a, b], &rates);
        assert_eq!((load[&a], load[&b]), (1000.0, 1000.0));
        // Alone with its hot partition and nothing to even out against: nothing moves.
        let alone = owners_from(&[a, b]);
        assert_eq!(plan_by_load(&alone, &[a, b], &[1000.0, 10.0]), vec![]);
    }

    #[test]
    fn load_is_evened_between_nodes_not_between_shards_of_one_node() {
        // Node 1's shard 0 holds 400 + 400; its shard 1 is idle; node 2 holds 100 + 100. The
        // idle shard of node 1 is no destination for shard 0's partitions: one hot partition
        // goes to node 2, and node 2's cold ones may go to node 1's idle shard.
        let (a0, a1, b0) = (slot(1, 0), slot(1, 1), slot(2, 0));
        let owners = owners_from(&[a0, a0, b0, b0]);
        let rates = [400.0, 400.0, 100.0, 100.0];
        let plan = plan_by_load(&owners, &[a0, a1, b0], &rates);
        for &(partition, (node, _)) in &plan {
            assert_ne!(owners[partition as usize].node, node, "{plan:?}");
        }
        let mut after = owners.clone();
        apply(&mut after, &plan);
        let load = slot_loads(&after, &[a0, a1, b0], &rates);
        let busiest = load.values().copied().fold(0.0, f64::max);
        assert_eq!(busiest, 400.0, "{plan:?} → {load:?}");
    }

    #[test]
    fn partition_rates_are_measured_ones_else_their_shard_s_spread_evenly() {
        let (a, b, c) = (slot(1, 0), slot(2, 0), slot(3, 0));
        let owners = owners_from(&[a, a, b, b, b, b, c]);
        let measured = MeasuredLoad {
            partitions: [(0, 700.0), (1, 10.0), (6, f64::NAN)].into_iter().collect(),
            // Node 2 counts no partitions: its 400/s over its 4 partitions.
            shards: [(b, 400.0)].into_iter().collect(),
        };
        assert_eq!(
            partition_rates(&owners, &measured),
            vec![700.0, 10.0, 100.0, 100.0, 100.0, 100.0, 0.0]
        );
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
