//! A shard of a cluster node installing placements and its node's lease: partitions gained,
//! lost, `Offline`, and self-fencing, driven by hand like the rest of `tests`.

use super::*;
use crate::core::ids::Epoch;
use crate::core::partition::{MapError, Owner, OwnerState};
use crate::core::shard::{NodeLease, ReplayError};

const HERE: NodeId = NodeId(1);
const ELSEWHERE: NodeId = NodeId(2);
const PARTITIONS: usize = 64;

/// A placement at `epoch` where `owner_of(p)` owns partition `p`.
fn cluster_placement(epoch: u32, owner_of: impl Fn(usize) -> Owner) -> Placement {
    Placement::from_owners(Epoch(epoch), (0..PARTITIONS).map(owner_of).collect()).unwrap()
}

fn owner(node: NodeId, part_epoch: u32, state: OwnerState) -> Owner {
    Owner {
        node,
        shard: ShardId(0),
        part_epoch: Epoch(part_epoch),
        state,
    }
}

/// Even partitions here, odd ones on the other node, all serving since `part_epoch`.
fn halves(epoch: u32, part_epoch: u32) -> Placement {
    cluster_placement(epoch, |p| {
        let node = if p % 2 == 0 { HERE } else { ELSEWHERE };
        owner(node, part_epoch, OwnerState::Serving)
    })
}

/// The one shard of node `HERE`, starting fenced, as a cluster node's shards do.
fn cluster_shard(placement: Placement) -> ShardCore {
    let config = ShardConfig {
        node: HERE,
        lease_at_start: NodeLease::Fenced,
        ..ShardConfig::defaults(1)
    };
    ShardCore::with_config(ShardId(0), placement, config)
}

/// A hunt of partition `partition`, the `n`th one.
fn hunt_in(partition: u32, n: usize) -> HuntId {
    let partitioner = placement(1).partitioner();
    (0..)
        .map(HuntId)
        .filter(|hunt| partitioner.partition_of(*hunt) == PartitionId(partition))
        .nth(n)
        .unwrap()
}

/// Sends `events` on a new connection and returns the outcomes, in order.
fn outcomes(core: &mut ShardCore, events: &[Event]) -> Vec<Outcome> {
    let conn = core.handle_connect(0).unwrap();
    assert_eq!(offer(core, conn, &frame(events, 1)), FrameProgress::Done);
    let replies = write_all(core, conn).replies;
    assert_eq!(replies.len(), events.len(), "every event answered once");
    core.check_credit().unwrap();
    replies.into_iter().map(|reply| reply.outcome).collect()
}

/// The answer to an event of `partition` when nobody serves it now.
fn unavailable(partition: u32) -> Outcome {
    Outcome::Unavailable { partition }
}

#[test]
fn a_fenced_shard_answers_unavailable_to_everything_until_its_lease_is_confirmed() {
    let mut core = cluster_shard(halves(10, 10));
    let (mine, theirs) = (hunt_in(0, 0), hunt_in(1, 0));
    assert_eq!(
        outcomes(&mut core, &[create(0, mine), create(1, theirs)]),
        vec![unavailable(0), unavailable(1)],
        "no lease yet: not even a Moved, the placement may be stale; each names its partition"
    );
    core.handle_lease(
        0,
        NodeLease::Confirmed {
            registered: Epoch(5),
        },
    );
    let answered = outcomes(&mut core, &[create(2, mine), create(3, theirs)]);
    assert_eq!(answered[0], Outcome::Accepted { score: 0 });
    assert_eq!(
        answered[1],
        Outcome::Moved {
            node: ELSEWHERE.0,
            shard: 0,
            epoch: 10
        }
    );
    assert_eq!(core.stats().events_applied, 1);
}

#[test]
fn fenced_partitions_keep_their_state_and_serve_again_only_at_a_newer_partition_epoch() {
    let mut core = cluster_shard(halves(10, 10));
    core.handle_lease(
        0,
        NodeLease::Confirmed {
            registered: Epoch(5),
        },
    );
    let hunt = hunt_in(2, 0);
    assert_eq!(
        outcomes(&mut core, &[create(0, hunt)]),
        vec![Outcome::Accepted { score: 0 }]
    );
    core.handle_lease(0, NodeLease::Fenced);
    assert_eq!(outcomes(&mut core, &[join(1, hunt)]), vec![unavailable(2)]);
    assert!(
        core.partition(PartitionId(2)).is_some(),
        "state kept while fenced"
    );
    // The node registered again at revision 12: partitions confirmed at epoch 10 are not its
    // own until the controller confirms them at a later epoch.
    core.handle_lease(
        0,
        NodeLease::Confirmed {
            registered: Epoch(12),
        },
    );
    assert_eq!(outcomes(&mut core, &[join(2, hunt)]), vec![unavailable(2)]);
    assert!(!core.serves(PartitionId(2)));
    core.handle_placement(0, halves(13, 13)).unwrap();
    assert!(core.serves(PartitionId(2)));
    assert_eq!(
        outcomes(&mut core, &[join(3, hunt)]),
        vec![Outcome::Accepted { score: 0 }],
        "the hunt created before the fence is still there: joining it is accepted"
    );
}

#[test]
fn a_partition_s_count_is_listed_while_this_shard_owns_it_and_restarts_when_it_comes_back() {
    let mut core = cluster_shard(halves(10, 10));
    assert_eq!(
        core.applied_by_partition().count(),
        0,
        "fenced at start: no state, nothing listed"
    );
    core.handle_lease(
        0,
        NodeLease::Confirmed {
            registered: Epoch(5),
        },
    );
    let (hunt, other) = (hunt_in(2, 0), hunt_in(4, 0));
    outcomes(
        &mut core,
        &[create(0, hunt), join(1, hunt), create(2, other)],
    );
    let listed = |core: &ShardCore| -> BTreeMap<u32, u64> {
        core.applied_by_partition()
            .map(|(p, applied)| (p.0, applied))
            .collect()
    };
    let counts = listed(&core);
    assert_eq!(
        counts.len(),
        PARTITIONS / 2,
        "the even partitions: {counts:?}"
    );
    assert_eq!((counts[&2], counts[&4], counts[&0]), (2, 1, 0));
    // Partition 2 goes to the other node: its count goes with its state.
    let without_2 = |epoch| {
        cluster_placement(epoch, move |p| {
            let node = if p % 2 == 0 && p != 2 {
                HERE
            } else {
                ELSEWHERE
            };
            owner(node, if p == 2 { epoch } else { 10 }, OwnerState::Serving)
        })
    };
    core.handle_placement(0, without_2(11)).unwrap();
    let counts = listed(&core);
    assert!(!counts.contains_key(&2), "{counts:?}");
    assert_eq!(counts[&4], 1);
    // Back here, it starts again from a new state, and from 0.
    core.handle_placement(0, halves(12, 12)).unwrap();
    assert_eq!(listed(&core)[&2], 0);
}

#[test]
fn offline_partitions_answer_unavailable_at_once_and_the_others_are_served() {
    let mut core = cluster_shard(halves(10, 10));
    core.handle_lease(
        0,
        NodeLease::Confirmed {
            registered: Epoch(5),
        },
    );
    let (mine, offline_mine, offline_theirs) = (hunt_in(0, 0), hunt_in(4, 0), hunt_in(3, 0));
    assert_eq!(
        outcomes(&mut core, &[create(0, offline_mine)]),
        vec![Outcome::Accepted { score: 0 }]
    );
    let next = cluster_placement(20, |p| {
        let base = halves(10, 10).owners()[p];
        if p == 3 || p == 4 {
            Owner {
                state: OwnerState::Offline,
                part_epoch: Epoch(20),
                ..base
            }
        } else {
            base
        }
    });
    core.handle_placement(0, next).unwrap();
    let answered = outcomes(
        &mut core,
        &[
            create(1, mine),
            join(2, offline_mine),
            create(3, offline_theirs),
        ],
    );
    assert_eq!(
        answered,
        vec![
            Outcome::Accepted { score: 0 },
            unavailable(4),
            unavailable(3)
        ],
        "an Offline partition's events name it, whichever node owns it"
    );
    assert!(
        core.partition(PartitionId(4)).is_some(),
        "an Offline partition this shard owns keeps its state for when it comes back"
    );
}

#[test]
fn partitions_gained_start_empty_and_partitions_lost_answer_moved_to_their_owner() {
    let mut core = cluster_shard(halves(10, 10));
    core.handle_lease(
        0,
        NodeLease::Confirmed {
            registered: Epoch(5),
        },
    );
    let (lost, gained) = (hunt_in(0, 0), hunt_in(1, 0));
    assert_eq!(
        outcomes(&mut core, &[create(0, lost)]),
        vec![Outcome::Accepted { score: 0 }]
    );
    let swapped = cluster_placement(30, |p| {
        let node = if p % 2 == 0 { ELSEWHERE } else { HERE };
        owner(node, 30, OwnerState::Serving)
    });
    core.handle_placement(0, swapped).unwrap();
    assert!(
        core.partition(PartitionId(0)).is_none(),
        "lost: state dropped"
    );
    assert!(core.partition(PartitionId(1)).is_some(), "gained: created");
    let answered = outcomes(&mut core, &[join(1, lost), create(2, gained)]);
    assert_eq!(
        answered,
        vec![
            Outcome::Moved {
                node: ELSEWHERE.0,
                shard: 0,
                epoch: 30
            },
            Outcome::Accepted { score: 0 }
        ]
    );
}

#[test]
fn placements_that_do_not_fit_the_node_are_refused_and_older_ones_ignored() {
    let mut core = cluster_shard(halves(10, 10));
    let two_shards_here = cluster_placement(11, |p| Owner {
        shard: ShardId((p % 2) as u16),
        ..owner(HERE, 11, OwnerState::Serving)
    });
    assert_eq!(
        core.handle_placement(0, two_shards_here),
        Err(MapError::UnknownOwner {
            partition: 1,
            owner: 1
        })
    );
    let fewer = Placement::from_owners(
        Epoch(12),
        (0..PARTITIONS / 2)
            .map(|_| owner(HERE, 12, OwnerState::Serving))
            .collect(),
    )
    .unwrap();
    assert_eq!(
        core.handle_placement(0, fewer),
        Err(MapError::BadPartitionCount(PARTITIONS as u64 / 2))
    );
    core.handle_placement(0, halves(9, 9)).unwrap();
    assert_eq!(core.placement().epoch(), Epoch(10), "nothing installed");
}

/// An event's archive, as the log holds it.
fn logged(event: &Event) -> rkyv::util::AlignedVec {
    rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap()
}

#[test]
fn a_restarted_cluster_shard_replays_its_log_before_its_placement_and_keeps_what_it_is_given() {
    // Before its control thread reads etcd, a cluster shard's placement is a placeholder
    // (node 0's): the log's partitions are replayed all the same.
    let mut core = cluster_shard(placement(1));
    let (mine, theirs) = (hunt_in(0, 0), hunt_in(1, 0));
    for (partition, event) in [(0, create(1, mine)), (1, create(2, theirs))] {
        core.replay(PartitionId(partition), &logged(&event))
            .unwrap();
    }
    let lied = core.replay(PartitionId(3), &logged(&create(3, mine)));
    assert!(
        matches!(
            lied,
            Err(ReplayError::Partition {
                routed: Some(PartitionId(0)),
                ..
            })
        ),
        "a record must name its event's own partition: {lied:?}"
    );
    // The lease comes back before the placement: the placeholder still drops nothing.
    core.handle_lease(
        0,
        NodeLease::Confirmed {
            registered: Epoch(5),
        },
    );
    assert!(core.partition(PartitionId(1)).is_some());
    // The cluster gives partition 0 back to this shard and partition 1 to another node.
    core.handle_placement(0, halves(10, 10)).unwrap();
    assert!(
        core.partition(PartitionId(1)).is_none(),
        "handed away: dropped"
    );
    assert_eq!(
        outcomes(&mut core, &[create(4, mine)]),
        vec![Outcome::Rejected {
            reason: RejectReason::HuntExists
        }],
        "the replayed hunt is served"
    );
    // Placed now: a record of a partition it does not own is refused.
    assert!(matches!(
        core.replay(PartitionId(1), &logged(&create(5, theirs))),
        Err(ReplayError::Partition { routed: None, .. })
    ));
}

#[test]
fn a_map_too_large_for_one_frame_is_answered_with_an_error_not_a_panic() {
    use crate::constants::{CLUSTER_NODES_MAX, NODE_HOST_BYTES_MAX, PARTITIONS_MAX};
    use crate::core::partition::NodeAddress;
    // Every partition there may be, over every node there may be, each with the longest host:
    // far more than one frame holds.
    let nodes = CLUSTER_NODES_MAX as u32;
    let owners = (0..PARTITIONS_MAX)
        .map(|p| owner(NodeId(1 + p % nodes), 1, OwnerState::Serving))
        .collect();
    let placement = Placement::from_owners(Epoch(2), owners)
        .unwrap()
        .with_nodes((1..=nodes).map(|node| NodeAddress {
            node: NodeId(node),
            host: "h".repeat(NODE_HOST_BYTES_MAX),
            shard_ports: vec![7000],
        }))
        .unwrap();
    let mut core = cluster_shard(placement);
    let conn = core.handle_connect(0).unwrap();
    let mut request = FrameBuilder::new();
    request
        .single::<Event>(FrameKind::MapRequest, 0, None)
        .unwrap();
    assert_eq!(offer(&mut core, conn, request.bytes()), FrameProgress::Done);
    let received = write_all(&mut core, conn);
    assert!(received.maps.is_empty(), "no map cut short");
    assert_eq!(received.errors, 1, "an error frame says why");
}

#[test]
fn a_client_whose_events_belong_to_another_node_is_sent_the_map_once_as_the_owner_hint() {
    let mut core = cluster_shard(halves(10, 10));
    core.handle_lease(
        0,
        NodeLease::Confirmed {
            registered: Epoch(5),
        },
    );
    let (mine, theirs) = (hunt_in(0, 0), hunt_in(1, 0));
    // A client with no map (epoch 0) whose events are all this shard's learns nothing new.
    let local = core.handle_connect(0).unwrap();
    assert_eq!(
        offer(&mut core, local, &frame(&[create(1, mine)], 0)),
        FrameProgress::Done
    );
    assert_eq!(write_all(&mut core, local).maps, Vec::<u32>::new());
    // One whose event belongs to the other node gets the map with its answer, once.
    let stale = core.handle_connect(0).unwrap();
    for seq in 2..4 {
        let sent = frame(&[create(seq, theirs)], 0);
        assert_eq!(offer(&mut core, stale, &sent), FrameProgress::Done);
        let received = write_all(&mut core, stale);
        assert_eq!(received.replies.len(), 1);
        let hinted = if seq == 2 { vec![10] } else { vec![] };
        assert_eq!(received.maps, hinted, "frame {seq}");
    }
    // A client already on the current map is not sent it again.
    let current = core.handle_connect(0).unwrap();
    let sent = frame(&[create(4, theirs)], 10);
    assert_eq!(offer(&mut core, current, &sent), FrameProgress::Done);
    assert_eq!(write_all(&mut core, current).maps, Vec::<u32>::new());
    core.check_credit().unwrap();
}
