//! `trove cluster move|drain|rebalance`: their flags checked, the plan written to etcd and the
//! moves followed, with progress lines and a summary on stdout. The work is
//! `cluster::operator`'s and `cluster::rebalance`'s; this is the command-line shell, on the
//! command's own thread.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use super::cluster::{DrainArgs, MoveArgs, MoveFlags, RebalanceArgs, RebalanceBy};
use crate::cluster::coordinator::ClusterView;
use crate::cluster::etcd::parse_endpoints;
use crate::cluster::keys::{ClusterKeys, DrainRecord, PinRecord, SettingsRecord};
use crate::cluster::operator::{
    Follow, Goal, Operator, OperatorError, check_node, check_partition, follow, parse_target,
    placement_of,
};
use crate::cluster::placement::{LiveNode, Owner, Placement, desired_owner};
use crate::cluster::rebalance::{
    MeasuredLoad, Slot, partition_rates, plan_by_count, plan_by_load, plan_drain, slot_loads,
    slots_of,
};
use crate::constants::{MOVE_FOLLOW_S_MAX, REBALANCE_LISTED_MAX, REBALANCE_SAMPLE_S_MAX};
use crate::core::ids::{NodeId, ShardId};
use crate::metrics::scrape::{NodeScrape, fetch};

/// The shared flags, checked.
pub struct Checked {
    pub endpoints: Vec<String>,
    pub keys: ClusterKeys,
    pub settings: Option<SettingsRecord>,
    pub timeout: Duration,
}

/// Checks the flags every live-move command takes; the message is the usage error.
pub fn check_flags(flags: &MoveFlags) -> Result<Checked, String> {
    let endpoints =
        parse_endpoints(&flags.cluster.etcd).map_err(|error| format!("--cluster {error}"))?;
    let keys = ClusterKeys::new(&flags.cluster.cluster_name)
        .map_err(|error| format!("--cluster-name: {error}"))?;
    let settings = flags.moves_max.map(SettingsRecord::new).transpose()?;
    if !(1..=MOVE_FOLLOW_S_MAX).contains(&flags.timeout) {
        return Err(format!(
            "--timeout {}: give 1 to {MOVE_FOLLOW_S_MAX} seconds",
            flags.timeout
        ));
    }
    Ok(Checked {
        endpoints,
        keys,
        settings,
        timeout: Duration::from_secs(flags.timeout),
    })
}

fn say(line: &str) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{line}");
}

/// Writes the settings if `--moves-max` was given.
fn apply_settings(operator: &mut Operator, checked: &Checked) -> Result<(), OperatorError> {
    if let Some(settings) = checked.settings {
        operator.put_settings(settings)?;
        say(&format!(
            "moves in flight at once: at most {} from now on",
            settings.moves_max
        ));
    }
    Ok(())
}

/// Follows `goals` and prints the summary; 0 when all moved, 1 otherwise.
fn follow_and_sum_up(
    operator: &mut Operator,
    checked: &Checked,
    goals: BTreeMap<u32, Goal>,
) -> Result<i32, OperatorError> {
    let (followed, elapsed) = follow(operator, Follow::new(goals), checked.timeout, &mut |line| {
        say(line)
    })?;
    say(&followed.summary(elapsed));
    Ok(if followed.failures().is_empty() { 0 } else { 1 })
}

/// `trove cluster move PARTITION NODE[:SHARD]`.
pub fn run_move(
    operator: &mut Operator,
    checked: &Checked,
    args: &MoveArgs,
) -> Result<i32, OperatorError> {
    let (node, shard) = parse_target(&args.target).map_err(OperatorError::Usage)?;
    let view = operator.read()?;
    let placement = placement_of(&view)?;
    check_partition(placement, args.partition)?;
    check_node(&view, node, shard)?;
    if view.drained().contains(&node) {
        return Err(OperatorError::Usage(format!(
            "{node} is drained: nothing moves onto it until it is restarted"
        )));
    }
    apply_settings(operator, checked)?;
    let owner = *placement.owner(crate::core::ids::PartitionId(args.partition));
    let goal = Goal::On(node, shard);
    if owner.node == node && shard.is_none_or(|s| s == owner.shard) && owner.state.applies() {
        say(&format!(
            "partition {} is on {} {} already",
            args.partition, owner.node, owner.shard
        ));
        // Pinned all the same, so rendezvous does not move it away later.
        operator.put_pin(
            args.partition,
            PinRecord {
                node: node.0,
                shard: Some(owner.shard.0),
            },
        )?;
        return Ok(0);
    }
    if owner.node == node {
        return Err(OperatorError::Usage(format!(
            "partition {} is on {node} already ({}): a move goes to another node; moves \
             between the shards of one node are not made",
            args.partition, owner.shard
        )));
    }
    let pin = PinRecord {
        node: node.0,
        shard: shard.map(|s| s.0),
    };
    operator.put_pin(args.partition, pin)?;
    say(&format!(
        "partition {} pinned to {node}{}; the controller moves it from {} {}",
        args.partition,
        shard.map_or(String::new(), |s| format!(" {s}")),
        owner.node,
        owner.shard
    ));
    follow_and_sum_up(operator, checked, [(args.partition, goal)].into())
}

/// `trove cluster drain NODE`.
pub fn run_drain(
    operator: &mut Operator,
    checked: &Checked,
    args: &DrainArgs,
) -> Result<i32, OperatorError> {
    let node = match parse_target(&args.node).map_err(OperatorError::Usage)? {
        (node, None) => node,
        (_, Some(_)) => {
            return Err(OperatorError::Usage(format!(
                "drain takes a node, not a shard: {:?}",
                args.node
            )));
        }
    };
    let view = operator.read()?;
    let placement = placement_of(&view)?;
    check_node(&view, node, None)?;
    let live = view.live_nodes();
    let plan = plan_drain(placement.owners(), node, &live, &view.drained(), &view.pins);
    let owned: Vec<u32> = (0..placement.partitions())
        .filter(|&p| placement.owners()[p as usize].node == node)
        .collect();
    if !owned.is_empty() && plan.is_empty() {
        return Err(OperatorError::Failed(format!(
            "{node} owns {} partitions and no other live, non-drained node could take them; \
             start another node first",
            owned.len()
        )));
    }
    apply_settings(operator, checked)?;
    let registration = view.nodes[&node].registered_revision;
    operator.put_drain(
        node,
        DrainRecord {
            registered_revision: registration,
        },
    )?;
    say(&format!(
        "{node} drained (its registration at revision {registration}); {} partitions to move \
         off it: {}",
        owned.len(),
        destinations(&plan)
    ));
    let goals = owned.iter().map(|&p| (p, Goal::OffNode(node))).collect();
    let code = follow_and_sum_up(operator, checked, goals)?;
    let now = operator.read()?;
    let left = placement_of(&now)?
        .owners()
        .iter()
        .filter(|owner| owner.node == node)
        .count();
    if left == 0 {
        say(&format!(
            "{node} owns nothing now: it can be stopped. Starting it again (a new \
             registration) gives it its share back."
        ));
        return Ok(0);
    }
    say(&format!(
        "{node} still owns {left} partitions: do not stop it yet (run the drain again to follow \
         the rest)"
    ));
    Ok(code.max(1))
}

/// `n to node a shard i, m to node b shard j`.
fn destinations(plan: &[(u32, Slot)]) -> String {
    let mut per_slot: BTreeMap<Slot, usize> = BTreeMap::new();
    for &(_, slot) in plan {
        *per_slot.entry(slot).or_default() += 1;
    }
    if per_slot.is_empty() {
        return "none".into();
    }
    per_slot
        .iter()
        .map(|((node, shard), n)| format!("{n} to {node} {shard}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `trove cluster rebalance`.
pub fn run_rebalance(
    operator: &mut Operator,
    checked: &Checked,
    args: &RebalanceArgs,
) -> Result<i32, OperatorError> {
    if args.by == RebalanceBy::Load && !(1..=REBALANCE_SAMPLE_S_MAX).contains(&args.sample_s) {
        return Err(OperatorError::Usage(format!(
            "--sample-s {}: give 1 to {REBALANCE_SAMPLE_S_MAX} seconds",
            args.sample_s
        )));
    }
    let view = operator.read()?;
    let placement = placement_of(&view)?;
    let drained = view.drained();
    let eligible: BTreeMap<NodeId, LiveNode> = view
        .live_nodes()
        .into_iter()
        .filter(|(node, _)| !drained.contains(node))
        .collect();
    let slots = slots_of(&eligible);
    if slots.is_empty() {
        return Err(OperatorError::Usage(
            "no live, non-drained node to rebalance over".into(),
        ));
    }
    // Plan from where the controller is heading (moves to a joined node, off a drained one,
    // to pins), not from where the partitions are now: those moves would undo the plan's.
    let heading = heading_owners(&view, placement, &eligible);
    let (plan, rates) = match args.by {
        RebalanceBy::Count => (plan_by_count(&heading, &slots), None),
        RebalanceBy::Load => {
            say(&format!(
                "measuring each partition's events/s for {} s…",
                args.sample_s
            ));
            let measured = measure_load(&view, &eligible, Duration::from_secs(args.sample_s))?;
            for node in measured
                .shards
                .keys()
                .map(|(node, _)| node)
                .collect::<BTreeSet<_>>()
            {
                say(&format!(
                    "{node} serves no trove_partition_events_applied_total (a build from before \
                     per-partition counts?): its shards' events/s are taken as spread evenly \
                     over their partitions"
                ));
            }
            let rates = partition_rates(placement.owners(), &measured);
            let plan = plan_by_load(&heading, &slots, &rates);
            say_loads(&heading, &slots, &rates, &plan);
            (plan, Some(rates))
        }
    };
    // A move goes to another node: shards of one node are not evened out against each other.
    let mut plan = plan;
    plan.retain(|&(partition, (node, _))| heading[partition as usize].node != node);
    let mut goals: BTreeMap<u32, Goal> = heading
        .iter()
        .zip(placement.owners())
        .enumerate()
        .filter(|(_, (heading, now))| (heading.node, heading.shard) != (now.node, now.shard))
        .map(|(partition, (heading, _))| {
            let goal = Goal::On(heading.node, Some(heading.shard));
            (partition as u32, goal)
        })
        .collect();
    goals.extend(plan.iter().map(Goal::of));
    if goals.is_empty() {
        say("already even: nothing to move");
        return Ok(0);
    }
    apply_settings(operator, checked)?;
    for &(partition, (node, shard)) in &plan {
        let pin = PinRecord {
            node: node.0,
            shard: Some(shard.0),
        };
        operator.put_pin(partition, pin)?;
    }
    say(&format!(
        "rebalance: {} partitions to move (pinned to their new owners): {}{}",
        plan.len(),
        destinations(&plan),
        match goals.len() - plan.len().min(goals.len()) {
            0 => String::new(),
            already => format!("; following {already} moves the controller is making already"),
        }
    ));
    if let Some(rates) = &rates {
        for line in moves_by_rate(&plan, rates) {
            say(&line);
        }
    }
    follow_and_sum_up(operator, checked, goals)
}

/// `events/s per shard, measured → planned: node 1 shard 0 1200 → 600, …`, the busiest
/// `REBALANCE_LISTED_MAX` shards first and the rest counted.
fn say_loads(heading: &[Owner], slots: &[Slot], rates: &[f64], plan: &[(u32, Slot)]) {
    let before = slot_loads(heading, slots, rates);
    let mut planned = heading.to_vec();
    for &(partition, (node, shard)) in plan {
        let owner = &mut planned[partition as usize];
        (owner.node, owner.shard) = (node, shard);
    }
    let after = slot_loads(&planned, slots, rates);
    let mut busiest: Vec<(&Slot, &f64)> = before.iter().collect();
    busiest.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let mut loads: Vec<String> = busiest
        .iter()
        .take(REBALANCE_LISTED_MAX)
        .map(|&(&(node, shard), rate)| {
            format!("{node} {shard} {rate:.0} → {:.0}", after[&(node, shard)])
        })
        .collect();
    if busiest.len() > REBALANCE_LISTED_MAX {
        loads.push(format!(
            "and {} more shards",
            busiest.len() - REBALANCE_LISTED_MAX
        ));
    }
    say(&format!(
        "events/s per shard, measured → planned: {}",
        loads.join(", ")
    ));
}

/// One line per planned move, hottest first, at most `REBALANCE_LISTED_MAX`, and a line
/// for the rest: `partition 17 (812 events/s) to node 2 shard 0`.
fn moves_by_rate(plan: &[(u32, Slot)], rates: &[f64]) -> Vec<String> {
    let rate = |partition: u32| rates.get(partition as usize).copied().unwrap_or(0.0);
    let mut hottest: Vec<(u32, Slot)> = plan.to_vec();
    hottest.sort_by(|a, b| rate(b.0).total_cmp(&rate(a.0)).then(a.0.cmp(&b.0)));
    let mut lines: Vec<String> = hottest
        .iter()
        .take(REBALANCE_LISTED_MAX)
        .map(|&(partition, (node, shard))| {
            format!(
                "  partition {partition} ({:.0} events/s) to {node} {shard}",
                rate(partition)
            )
        })
        .collect();
    if hottest.len() > REBALANCE_LISTED_MAX {
        lines.push(format!(
            "  and {} more",
            hottest.len() - REBALANCE_LISTED_MAX
        ));
    }
    lines
}

/// Each partition's owner once the controller has made the moves it is set on (to its pin,
/// off a drained node, onto a joined node's rendezvous share); a partition that cannot move
/// (offline) stays where it is.
fn heading_owners(
    view: &ClusterView,
    placement: &Placement,
    eligible: &BTreeMap<NodeId, LiveNode>,
) -> Vec<Owner> {
    placement
        .owners()
        .iter()
        .enumerate()
        .map(|(partition, owner)| {
            if !owner.state.applies() {
                return *owner;
            }
            let pin = view.pins.get(&(partition as u32));
            match desired_owner(partition as u32, owner, pin, eligible) {
                Some((node, shard)) => Owner {
                    node,
                    shard,
                    ..*owner
                },
                None => *owner,
            }
        })
        .collect()
}

/// Each partition's applied events/s over `sample`, from the `/metrics` of the nodes in
/// `eligible` (each shard's, for a node that counts no partitions).
fn measure_load(
    view: &ClusterView,
    eligible: &BTreeMap<NodeId, LiveNode>,
    sample: Duration,
) -> Result<MeasuredLoad, OperatorError> {
    let mut addresses = Vec::new();
    for node in eligible.keys() {
        let entry = &view.nodes[node];
        let Some(metrics) = &entry.info.metrics else {
            return Err(OperatorError::Failed(format!(
                "{node} registers no /metrics address (it runs with --metrics-listen off); \
                 start it with one, or rebalance --by count"
            )));
        };
        let address = metrics
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| {
                OperatorError::Failed(format!(
                    "{node} registers /metrics at {metrics:?}, which does not resolve"
                ))
            })?;
        addresses.push((*node, address));
    }
    let scrape = |addresses: &[(NodeId, std::net::SocketAddr)]| {
        addresses
            .iter()
            .map(|&(node, address)| {
                let scrape = fetch(address).and_then(|text| NodeScrape::parse(&text));
                scrape
                    .map(|scrape| (node, scrape))
                    .map_err(|error| OperatorError::Failed(format!("{node}: {error}")))
            })
            .collect::<Result<BTreeMap<NodeId, NodeScrape>, OperatorError>>()
    };
    let started = Instant::now();
    let before = scrape(&addresses)?;
    std::thread::sleep(sample);
    let after = scrape(&addresses)?;
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    Ok(load_between(&before, &after, seconds))
}

/// What two scrapes `seconds` apart say each partition applied per second (or each shard,
/// for a node that counts no partitions). A counter lower than before started again (its
/// partition left the shard and came back): all of it counts. A partition's series on
/// several shards (it moved during the sample) add up.
fn load_between(
    before: &BTreeMap<NodeId, NodeScrape>,
    after: &BTreeMap<NodeId, NodeScrape>,
    seconds: f64,
) -> MeasuredLoad {
    let increase = |now: f64, earlier: f64| if now >= earlier { now - earlier } else { now };
    let mut load = MeasuredLoad::default();
    for (node, scrape) in after {
        for shard in &scrape.shards {
            let earlier = before
                .get(node)
                .and_then(|b| b.shards.iter().find(|s| s.shard == shard.shard));
            if scrape.counts_partitions {
                for (&partition, &now) in &shard.partitions {
                    let then = earlier.and_then(|s| s.partitions.get(&partition).copied());
                    *load.partitions.entry(partition).or_default() +=
                        increase(now, then.unwrap_or(0.0)) / seconds;
                }
            } else {
                let name = "events_applied_total";
                let then = earlier.map_or(0.0, |s| s.value(name));
                load.shards.insert(
                    (*node, ShardId(shard.shard)),
                    increase(shard.value(name), then) / seconds,
                );
            }
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> MoveFlags {
        MoveFlags {
            cluster: crate::cli::cluster::ClusterAddress {
                etcd: "http://127.0.0.1:2379".into(),
                cluster_name: "trove".into(),
            },
            moves_max: None,
            timeout: 60,
        }
    }

    #[test]
    fn bad_flags_are_one_line_usage_errors() {
        assert!(check_flags(&flags()).is_ok());
        type Breaker = fn(&mut MoveFlags);
        let cases: [(Breaker, &str); 4] = [
            (|f| f.moves_max = Some(0), "--moves-max 0: give 1 to"),
            (|f| f.timeout = 0, "--timeout 0: give 1 to"),
            (|f| f.cluster.cluster_name = "a/b".into(), "--cluster-name"),
            (|f| f.cluster.etcd = String::new(), "--cluster"),
        ];
        for (break_it, expected) in cases {
            let mut bad = flags();
            break_it(&mut bad);
            let Err(error) = check_flags(&bad) else {
                panic!("accepted: {bad:?}");
            };
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn the_load_between_two_scrapes_is_per_partition_where_the_node_counts_partitions() {
        use crate::metrics::scrape::ScrapedShard;
        let shard = |shard: u16, applied: f64, partitions: &[(u32, f64)]| ScrapedShard {
            shard,
            values: [("events_applied_total".to_owned(), applied)].into(),
            partitions: partitions.iter().copied().collect(),
            ..ScrapedShard::default()
        };
        let node = |counts_partitions, shards| NodeScrape {
            shards,
            counts_partitions,
            ..NodeScrape::default()
        };
        let (new, old) = (NodeId(1), NodeId(2));
        let before: BTreeMap<NodeId, NodeScrape> = [
            (
                new,
                node(true, vec![shard(0, 0.0, &[(3, 100.0), (5, 50.0)])]),
            ),
            (old, node(false, vec![shard(1, 1000.0, &[])])),
        ]
        .into();
        let after: BTreeMap<NodeId, NodeScrape> = [
            (
                new,
                node(
                    true,
                    // 3 went on; 5 started again (it left and came back); 9 is new here.
                    vec![shard(0, 0.0, &[(3, 300.0), (5, 20.0), (9, 40.0)])],
                ),
            ),
            (old, node(false, vec![shard(1, 1600.0, &[])])),
        ]
        .into();
        let load = load_between(&before, &after, 2.0);
        assert_eq!(
            load.partitions,
            BTreeMap::from([(3, 100.0), (5, 10.0), (9, 20.0)])
        );
        assert_eq!(load.shards, BTreeMap::from([((old, ShardId(1)), 300.0)]));
    }

    #[test]
    fn planned_moves_are_listed_hottest_first_and_the_rest_counted() {
        let to = (NodeId(2), ShardId(0));
        let rates = vec![5.0, 800.0, 40.0];
        assert_eq!(
            moves_by_rate(&[(0, to), (1, to), (2, to)], &rates),
            vec![
                "  partition 1 (800 events/s) to node 2 shard 0",
                "  partition 2 (40 events/s) to node 2 shard 0",
                "  partition 0 (5 events/s) to node 2 shard 0",
            ]
        );
        let many: Vec<(u32, Slot)> = (0..REBALANCE_LISTED_MAX as u32 + 3)
            .map(|p| (p, to))
            .collect();
        let lines = moves_by_rate(&many, &[]);
        assert_eq!(lines.len(), REBALANCE_LISTED_MAX + 1);
        assert_eq!(lines.last().unwrap(), "  and 3 more");
    }

    #[test]
    fn destinations_are_counted_per_shard() {
        let a = (NodeId(1), ShardId(0));
        let b = (NodeId(2), ShardId(1));
        assert_eq!(
            destinations(&[(0, a), (1, b), (2, a)]),
            "2 to node 1 shard 0, 1 to node 2 shard 1"
        );
        assert_eq!(destinations(&[]), "none");
    }
}
