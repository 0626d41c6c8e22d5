//! The oracles of a moves run, checked once it is over (double serving is sampled while it
//! runs, in `world`). They compare what clients were told (the ledger) with what the real
//! cores hold at the end, and what the assignments in etcd did with what the nodes went
//! through:
//!
//! - **lost-or-duplicated**: every event sent got exactly one final answer (or its connection
//!   died with its node); every event a client was told applied is in its partition's memory
//!   of the session at the owner, once, with the class of its answer; no event a client was
//!   told not applied (`Moved`, `Unavailable`, refused) is there;
//! - **order**: each session's events were applied in the order it sent them (the session
//!   table keeps them in applied order, across every move: it travels in the snapshot);
//! - **one-winner**: each treasure was won at most once, everyone told it was won already was
//!   told that winner, and the owner's state holds it;
//! - **final-state**: each partition's owner is up and serving it at the end, holds its
//!   state, and each player's score there equals the score rebuilt from the events applied
//!   (what their answers said, and for events whose answer was lost, what the partition's
//!   memory says);
//! - **liveness**: every session sent all its events; every move whose source and target
//!   stayed up for `liveness_ms` after it started flipped within that;
//! - **credits**: every running core's pools agree with its connections
//!   (`ShardCore::check_credit`).
//!
//! Partitions whose owner died are left out of the state checks: without replicas their state
//! died with it (a node's death, not a move, loses it).

use std::collections::BTreeMap;

use crate::core::ids::{PartitionId, PlayerId, TreasureId};
use crate::core::message::{Outcome, OutcomeClass};
use crate::core::snapshot::SessionSnapshot;
use crate::sim::moves::workload::{self, Fate, Kind, TREASURES};
use crate::sim::moves::world::{NS_PER_MS, World};
use crate::sim::oracle::Oracle;

pub(super) fn check(world: &mut World) {
    check_answers(world);
    check_partitions(world);
    check_liveness(world);
    check_credits(world);
}

fn check_answers(world: &mut World) {
    for (k, fates) in world.ledger.fates.iter().enumerate() {
        let unsent = fates.iter().filter(|f| **f == Fate::Unsent).count();
        if unsent > 0 {
            world.findings.report(Oracle::Liveness, || {
                format!(
                    "session {} sent only {} of its {} events by the end",
                    k + 1,
                    fates.len() - unsent,
                    fates.len()
                )
            });
        }
        for (i, fate) in fates.iter().enumerate() {
            if *fate == Fate::Pending {
                world.findings.report(Oracle::LostOrDuplicated, || {
                    format!("session {} event #{} was never answered", k + 1, i + 1)
                });
            }
        }
    }
    for (k, seq, outcome) in &world.ledger.extra_replies {
        world.findings.report(Oracle::LostOrDuplicated, || {
            format!(
                "session {} event #{seq} was answered again ({outcome:?}) after its final answer",
                k + 1
            )
        });
    }
}

/// A session's events as its partition remembers them: (seq, class), in applied order.
fn applied_order(session: &SessionSnapshot) -> Vec<(u64, OutcomeClass)> {
    let pairs: Vec<(u64, OutcomeClass)> = session
        .seqs
        .iter()
        .copied()
        .zip(session.classes.iter().copied())
        .collect();
    let full = pairs.len() == crate::constants::SESSION_WINDOW_EVENTS_MAX;
    if full {
        let next = session.next as usize % pairs.len();
        pairs[next..]
            .iter()
            .chain(&pairs[..next])
            .copied()
            .collect()
    } else {
        pairs
    }
}

fn check_partitions(world: &mut World) {
    let Some(placement) = world.placement.clone() else {
        world.findings.report(Oracle::FinalState, || {
            "no assignment was ever written".to_owned()
        });
        return;
    };
    let partitioner = placement.partitioner();
    let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (k, session) in world.sessions.iter().enumerate() {
        let p = partitioner.partition_of(workload::hunt_id(session.hunt)).0;
        by_partition.entry(p).or_default().push(k);
    }
    for (p, sessions) in by_partition {
        let owner = *placement.owner(PartitionId(p));
        let n = owner.node.0 as usize - 1;
        if world.nodes[n].dead {
            continue;
        }
        if !owner.state.applies() || world.nodes[n].paused {
            world.findings.report(Oracle::FinalState, || {
                format!(
                    "partition {p}'s owner, node {} shard {}, is up but not serving it at the end ({:?})",
                    n + 1,
                    owner.shard.0,
                    owner.state
                )
            });
            continue;
        }
        let Some(state) = world.nodes[n].cores[owner.shard.index()].partition(PartitionId(p))
        else {
            world.findings.report(Oracle::FinalState, || {
                format!(
                    "partition {p}'s owner, node {} shard {}, holds no state for it",
                    n + 1,
                    owner.shard.0
                )
            });
            continue;
        };
        let snapshot = state.export();
        let memory: BTreeMap<u64, Vec<(u64, OutcomeClass)>> = snapshot
            .sessions
            .iter()
            .flat_map(|table| table.sessions.iter())
            .map(|session| (session.id, applied_order(session)))
            .collect();
        let mut model = Model::default();
        for &k in &sessions {
            let remembered = memory
                .get(&world.sessions[k].id)
                .cloned()
                .unwrap_or_default();
            check_session(world, p, k, &remembered, &mut model);
        }
        // The state at the owner against the model, hunt by hunt.
        let state = world.nodes[n].cores[owner.shard.index()]
            .partition(PartitionId(p))
            .expect("checked above");
        let mut differences = Vec::new();
        let mut winners = Vec::new();
        for &k in &sessions {
            let session = &world.sessions[k];
            let hunt = workload::hunt_id(session.hunt);
            let expected = model.scores.get(&k).copied();
            let held = state.score_of(hunt, session.player);
            if held != expected {
                differences.push(format!(
                    "player {} of hunt {}: score {held:?} at the owner, {expected:?} rebuilt from the answers",
                    session.player.0, hunt.0
                ));
            }
            if session.organiser {
                for t in 0..TREASURES {
                    let held = state.winner_of(hunt, TreasureId(t as u32));
                    winners.push((session.hunt, t, held));
                }
            }
        }
        for (h, t, first, second) in std::mem::take(&mut model.won_twice) {
            world.findings.report(Oracle::OneWinner, || {
                format!(
                    "hunt {} treasure {t} was won by player {} and again by player {}",
                    workload::hunt_id(h).0,
                    first.0,
                    second.0
                )
            });
        }
        for message in differences {
            world
                .findings
                .report(Oracle::FinalState, || format!("partition {p}: {message}"));
        }
        for (h, t, held) in winners {
            let won = model.winners.get(&(h, t)).copied();
            if won != held {
                world.findings.report(Oracle::OneWinner, || {
                    format!(
                        "hunt {} treasure {t}: the owner holds winner {held:?}, the answers say {won:?}",
                        workload::hunt_id(h).0
                    )
                });
            }
            for &(hunt, treasure, winner) in &model.told_already_won {
                if (hunt, treasure) == (h, t) && Some(winner) != won {
                    world.findings.report(Oracle::OneWinner, || {
                        format!(
                            "hunt {} treasure {t}: a claimant was told {} had won it, the winner is {won:?}",
                            workload::hunt_id(h).0,
                            winner.0
                        )
                    });
                }
            }
        }
    }
}

/// The state rebuilt from what was applied: scores by session, winners by (hunt, treasure),
/// and the winners claimants were told.
#[derive(Default)]
struct Model {
    scores: BTreeMap<usize, u32>,
    winners: BTreeMap<(usize, usize), PlayerId>,
    told_already_won: Vec<(usize, usize, PlayerId)>,
    /// (hunt, treasure, first winner, second winner).
    won_twice: Vec<(usize, usize, PlayerId, PlayerId)>,
}

/// Checks session `k`'s events of partition `p` against what the partition remembers of it
/// (`remembered`, in applied order), and adds what was applied to `model`.
fn check_session(
    world: &mut World,
    p: u32,
    k: usize,
    remembered: &[(u64, OutcomeClass)],
    model: &mut Model,
) {
    let session_id = world.sessions[k].id;
    let mut last = 0;
    for &(seq, _) in remembered {
        if seq <= last {
            world.findings.report(Oracle::Order, || {
                format!(
                    "partition {p} applied session {session_id}'s event #{seq} after its #{last}"
                )
            });
        }
        last = last.max(seq);
    }
    let hunt = world.sessions[k].hunt;
    let player = world.sessions[k].player;
    let events: Vec<(u64, Kind)> = world.sessions[k]
        .events
        .iter()
        .map(|(event, kind)| (event.client_seq, *kind))
        .collect();
    for (seq, kind) in events {
        let fate = world.ledger.get(k, seq).clone();
        let in_memory: Vec<OutcomeClass> = remembered
            .iter()
            .filter(|(s, _)| *s == seq)
            .map(|(_, class)| *class)
            .collect();
        if in_memory.len() > 1 {
            world.findings.report(Oracle::LostOrDuplicated, || {
                format!("partition {p} applied session {session_id}'s event #{seq} twice")
            });
        }
        let class = if kind.changes_state() {
            let said = match &fate {
                Fate::Answered(outcome) if workload::applied(outcome) => {
                    Some(OutcomeClass::of(outcome))
                }
                Fate::Answered(Outcome::Duplicate { .. } | Outcome::DuplicateUnknown) => {
                    world.findings.report(Oracle::LostOrDuplicated, || {
                        format!(
                            "session {session_id}'s event #{seq} was answered as a retry of an applied event, \
                             though it was only sent again after a `Moved`"
                        )
                    });
                    None
                }
                Fate::Answered(_) | Fate::Refused => Some(None),
                Fate::Lost | Fate::Pending | Fate::Unsent => None,
            };
            match (said, in_memory.first()) {
                (Some(Some(class)), Some(held)) if *held != class => {
                    world.findings.report(Oracle::LostOrDuplicated, || {
                        format!(
                            "partition {p}: session {session_id}'s event #{seq} was answered {class:?}, \
                             the partition remembers {held:?}"
                        )
                    });
                }
                (Some(Some(class)), None) => {
                    world.findings.report(Oracle::LostOrDuplicated, || {
                        format!(
                            "partition {p}: session {session_id}'s event #{seq} was answered {class:?} \
                             but its owner does not have it (lost)"
                        )
                    });
                }
                (Some(None), Some(held)) => {
                    world.findings.report(Oracle::LostOrDuplicated, || {
                        format!(
                            "partition {p}: session {session_id}'s event #{seq} was answered {fate:?} \
                             (not applied) but its owner applied it ({held:?})"
                        )
                    });
                }
                _ => {}
            }
            in_memory.first().copied()
        } else {
            None
        };
        if let Fate::Answered(Outcome::AlreadyClaimed { winner }) = &fate {
            if let Kind::Claim(t) = kind {
                model.told_already_won.push((hunt, t, *winner));
            }
        }
        apply_to_model(model, k, hunt, player, kind, class);
    }
}

fn apply_to_model(
    model: &mut Model,
    k: usize,
    hunt: usize,
    player: PlayerId,
    kind: Kind,
    class: Option<OutcomeClass>,
) {
    match (kind, class) {
        (Kind::Join, Some(OutcomeClass::Accepted)) => {
            model.scores.entry(k).or_insert(0);
        }
        (Kind::Create, Some(OutcomeClass::Accepted)) => {}
        (Kind::CheckIn(w), Some(OutcomeClass::Accepted)) => {
            *model.scores.entry(k).or_insert(0) += workload::waypoint_points(w);
        }
        (Kind::Claim(t), Some(OutcomeClass::Claimed)) => {
            *model.scores.entry(k).or_insert(0) += workload::treasure_points(t);
            if let Some(earlier) = model.winners.insert((hunt, t), player) {
                model.won_twice.push((hunt, t, earlier, player));
            }
        }
        _ => {}
    }
}

fn check_liveness(world: &mut World) {
    let bound_ns = world.model.liveness_ms * NS_PER_MS;
    let end_ns = world.now_ns;
    let moves = world.moves.clone();
    for m in moves {
        let window = m.started_ns..m.started_ns + bound_ns;
        if window.end > end_ns {
            continue;
        }
        let touched = |node: u32| {
            world.downs.iter().any(|down| {
                down.node == node as usize - 1
                    && down.from_ns < window.end
                    && down.to_ns > window.start
            })
        };
        if touched(m.from.0) || touched(m.to.0) {
            continue;
        }
        let flipped_in_time = matches!(m.ended, Some((at_ns, true)) if at_ns <= window.end);
        if !flipped_in_time {
            world.findings.report(Oracle::Liveness, || {
                format!(
                    "partition {}'s move from node {} to node {} (started at {} ms) did not flip within {} ms though both stayed up: {}",
                    m.partition,
                    m.from.0,
                    m.to.0,
                    m.started_ns / NS_PER_MS,
                    bound_ns / NS_PER_MS,
                    match m.ended {
                        Some((at_ns, true)) => format!("it flipped at {} ms", at_ns / NS_PER_MS),
                        Some((at_ns, false)) => format!("it was abandoned at {} ms", at_ns / NS_PER_MS),
                        None => "it is still under way".to_owned(),
                    }
                )
            });
        }
    }
}

fn check_credits(world: &mut World) {
    for n in 0..world.nodes.len() {
        if world.nodes[n].dead || world.nodes[n].paused {
            continue;
        }
        for s in 0..world.nodes[n].cores.len() {
            if let Err(problem) = world.nodes[n].cores[s].check_credit() {
                world.findings.report(Oracle::Credits, || {
                    format!("node {} shard {s}: {problem}", n + 1)
                });
            }
        }
    }
}
