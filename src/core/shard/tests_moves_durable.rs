//! Moves to a target that logs (`--durability sync`): the hand-off is acknowledged only once
//! the staged partition is written to the target's store, the events after it only once they
//! are logged and synced there, a disk fault refuses the move, the
//! target's store recovers the partition as it was served, and a copy left behind (the
//! source's, or an abandoned install's) is never served again. The store's I/O is played by
//! the test: it takes the install and the log records and feeds them back at "recovery".

use super::*;
use crate::core::shard::{LogFaultKind, LogOp, MoveInstall, NodeLease};
use crate::core::snapshot::PartitionSnapshot;

/// A log record as the shell would write it.
type Record = (u64, PartitionId, Vec<u8>);

fn durable_shard(node: NodeId) -> ShardCore {
    ShardCore::with_config(
        ShardId(0),
        halves(2),
        ShardConfig {
            durability: Durability::Sync,
            ..link_config(node, big())
        },
    )
}

/// `node`'s shard started again on its data dir: a cluster node recovers before its control
/// thread gives it the cluster's placement (a placeholder owns nothing here until then).
fn restarted(node: NodeId) -> ShardCore {
    ShardCore::with_config(
        ShardId(0),
        Placement::round_robin(PARTITIONS as u32, 1).unwrap(),
        ShardConfig {
            durability: Durability::Sync,
            lease_at_start: NodeLease::Fenced,
            ..link_config(node, big())
        },
    )
}

fn take_records(core: &mut ShardCore) -> Vec<Record> {
    let mut records = Vec::new();
    core.take_log(|lsn, partition, payload| records.push((lsn, partition, payload.to_vec())));
    records
}

/// Recovery as the store does it: the snapshots (each with the LSN it covers), then every
/// record of the log not covered by its partition's snapshot; then the cluster's placement.
fn recover(
    core: &mut ShardCore,
    snapshots: &[(u64, PartitionSnapshot)],
    log: &[Record],
    placement: Placement,
) {
    for (_, snapshot) in snapshots {
        core.restore_partition(snapshot).unwrap();
    }
    for (lsn, partition, payload) in log {
        let covered = snapshots
            .iter()
            .any(|(at, snapshot)| snapshot.partition == partition.0 && lsn <= at);
        if covered {
            continue;
        }
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(payload);
        core.replay(*partition, &aligned).unwrap();
    }
    assert!(
        core.export_partition(moving_partition()).is_none(),
        "nothing recovered is snapshotted again before the placement says whose it is"
    );
    core.handle_placement(0, placement).unwrap();
    core.handle_lease(
        0,
        NodeLease::Confirmed {
            registered: Epoch(0),
        },
    );
}

/// B's log before the move: one event of its own partition, durable.
fn with_a_record_of_its_own(b: &mut ShardCore) -> Vec<Record> {
    let conn = b.handle_connect(0).unwrap();
    offer(b, conn, &frame(&[create(0, hunt_on(B, 0))], 2));
    let records = take_records(b);
    assert_eq!(records.len(), 1);
    b.handle_durable(0, 1);
    assert_eq!(write_all(b, conn).replies.len(), 1);
    records
}

/// B takes the install the shell would write, checks what it holds, and says it is durable.
fn install(b: &mut ShardCore, at_handoff: &PartitionSnapshot, lsn: u64) -> MoveInstall {
    assert!(b.move_install_queued());
    let install = b
        .poll_move_install()
        .expect("the hand-off queued an install");
    assert!(!b.move_install_queued(), "taken once");
    assert_eq!(
        (install.partition, install.part_epoch, install.lsn),
        (moving_partition(), Epoch(2), lsn)
    );
    assert_eq!(
        &install.snapshot, at_handoff,
        "the snapshot and every tail event"
    );
    install
}

#[test]
fn the_hand_off_is_acknowledged_only_once_the_staged_partition_is_durable_and_recovery_equals_the_source()
 {
    let (mut a, mut b) = (node_shard(A, big()), durable_shard(B));
    let mut log = with_a_record_of_its_own(&mut b);
    let mut wire = Wire::new();
    let (conn, mut replies, at_handoff, events) = stream_to_handoff(&mut a, &mut b, &mut wire, 15);
    assert!(
        reports(&mut a).is_empty(),
        "no Ready before B's copy is durable"
    );
    assert!(take_records(&mut b).is_empty(), "staging logs nothing");
    let install = install(&mut b, &at_handoff, 1);
    assert!(
        !b.partition_gone(moving_partition()),
        "staged here: its store keeps what is written of it"
    );
    pump_all(&mut wire, &mut a, &mut b);
    assert!(reports(&mut a).is_empty(), "still writing: no Ready");
    // The events A applied after the hand-off are logged at B as they come, after the
    // install's LSN, and answered by A only once B synced them.
    let tail = take_records(&mut b);
    assert_eq!(tail.len(), 15);
    assert!(
        tail.iter()
            .all(|(lsn, partition, _)| *partition == moving_partition() && *lsn > install.lsn)
    );
    assert!(write_all(&mut a, conn).replies.is_empty(), "B syncs first");

    b.handle_move_installed(install.partition, install.part_epoch, install.lsn);
    pump_all(&mut wire, &mut a, &mut b);
    assert!(matches!(
        reports(&mut a)[..],
        [MoveStep::Ready {
            events_streamed: 55,
            ..
        }]
    ));
    assert_eq!(b.stats().moves.in_durable, 1);
    assert!(write_all(&mut a, conn).replies.is_empty(), "B syncs first");
    b.handle_durable(0, tail.last().unwrap().0);
    pump_all(&mut wire, &mut a, &mut b);
    replies.extend(write_all(&mut a, conn).replies);
    assert_eq!(replies.len(), 75);

    // The flip: B serves the staged state once A sealed the tail.
    b.handle_placement(0, flipped()).unwrap();
    a.handle_placement(60, flipped()).unwrap();
    pump_all(&mut wire, &mut a, &mut b);
    assert!(b.serves(moving_partition()));
    assert_eq!(by_seq(&replies), single_node_answers(&events));
    log.extend(tail);

    // B crashes and starts again on its store: the partition comes back as it was served.
    let served = b.partition(moving_partition()).unwrap().export();
    assert_eq!(served, single_node_state(&events));
    let mut b_again = restarted(B);
    recover(
        &mut b_again,
        &[(install.lsn, install.snapshot.clone())],
        &log,
        flipped(),
    );
    assert!(b_again.serves(moving_partition()));
    assert_eq!(
        b_again.partition(moving_partition()).unwrap().export(),
        served
    );
    // Without the installed snapshot, the records after it alone are not the partition.
    let mut without = restarted(B);
    recover(&mut without, &[], &log, flipped());
    assert_ne!(
        without
            .partition(moving_partition())
            .map(|state| state.export()),
        Some(served)
    );
}

#[test]
fn a_source_that_moved_the_partition_away_and_restarts_never_serves_its_old_copy() {
    let (mut a, mut b) = (durable_shard(A), durable_shard(B));
    let mut wire = Wire::new();
    let (_, _, at_handoff, _) = stream_to_handoff(&mut a, &mut b, &mut wire, 0);
    let a_log = take_records(&mut a);
    assert_eq!(
        a_log.len(),
        60,
        "A logged what it applied before the hand-off"
    );
    let (lsn, a_snapshot) = a.export_partition(moving_partition()).unwrap();
    let install = install(&mut b, &at_handoff, 0);
    b.handle_move_installed(install.partition, install.part_epoch, install.lsn);
    pump_all(&mut wire, &mut a, &mut b);
    assert!(!a.partition_gone(moving_partition()), "A still serves it");
    a.handle_placement(0, flipped()).unwrap();
    assert!(a.partition(moving_partition()).is_none());
    assert!(
        a.partition_gone(moving_partition()),
        "its store may forget it"
    );
    assert_eq!(
        a.poll_departed(),
        Some(moving_partition()),
        "and is told to"
    );
    assert_eq!(a.poll_departed(), None);

    let mut a_again = restarted(A);
    a_again.restore_partition(&a_snapshot).unwrap();
    assert!(
        !a_again.partition_gone(moving_partition()),
        "not before the node knows the placement"
    );
    recover(&mut a_again, &[(lsn, a_snapshot)], &a_log, flipped());
    assert!(a_again.partition_gone(moving_partition()));
    assert_eq!(
        a_again.poll_departed(),
        Some(moving_partition()),
        "its store forgets the recovered copy"
    );
    assert!(!a_again.serves(moving_partition()));
    assert!(
        a_again.partition(moving_partition()).is_none(),
        "the placement dropped the recovered copy"
    );
    assert!(a_again.export_partition(moving_partition()).is_none());
    not_applied_here(&mut a_again);
}

/// An event of the moving partition offered to `core` is not applied there (it goes to the
/// owner): no state comes back and nothing is logged.
fn not_applied_here(core: &mut ShardCore) {
    let conn = core.handle_connect(0).unwrap();
    offer(core, conn, &frame(&moving_events(200..201), 5));
    assert!(core.partition(moving_partition()).is_none());
    assert!(take_records(core).is_empty(), "nothing logged");
}

#[test]
fn an_abandoned_install_leaves_nothing_that_recovery_serves() {
    // Written and acknowledged, then abandoned (say the controller timed out); or abandoned
    // while still being written (the write completes after the move is gone).
    for acknowledged in [true, false] {
        let (mut a, mut b) = (node_shard(A, big()), durable_shard(B));
        let log = with_a_record_of_its_own(&mut b);
        let mut wire = Wire::new();
        let (conn, mut replies, at_handoff, events) =
            stream_to_handoff(&mut a, &mut b, &mut wire, 5);
        let install = install(&mut b, &at_handoff, 1);
        if acknowledged {
            b.handle_move_installed(install.partition, install.part_epoch, install.lsn);
            pump_all(&mut wire, &mut a, &mut b);
            assert!(matches!(reports(&mut a)[..], [MoveStep::Ready { .. }]));
        }
        a.handle_placement(70, abandoned()).unwrap();
        b.handle_placement(0, abandoned()).unwrap();
        b.handle_move_installed(install.partition, install.part_epoch, install.lsn);
        pump_all(&mut wire, &mut a, &mut b);
        assert_eq!(b.moves_staged(), 0);
        assert!(b.partition(moving_partition()).is_none());
        assert!(b.partition_gone(moving_partition()));
        assert_eq!(
            b.poll_departed(),
            Some(moving_partition()),
            "its store forgets the installed file"
        );
        let steps = reports(&mut a);
        assert!(
            steps
                .iter()
                .all(|step| !matches!(step, MoveStep::Ready { .. })),
            "a late install acknowledges nothing: {steps:?}"
        );
        replies.extend(write_all(&mut a, conn).replies);
        assert_eq!(by_seq(&replies), single_node_answers(&events));

        // The installed file is still in B's store: B restarts and recovers it, and the
        // placement hands the partition back to its owner before B serves anything.
        let mut b_again = restarted(B);
        recover(
            &mut b_again,
            &[(install.lsn, install.snapshot.clone())],
            &log,
            abandoned(),
        );
        assert!(!b_again.serves(moving_partition()));
        assert!(b_again.partition(moving_partition()).is_none());
        not_applied_here(&mut b_again);
        assert!(
            b_again.serves(halves(2).partitioner().partition_of(hunt_on(B, 0))),
            "its own partitions are served"
        );
    }
}

#[test]
fn a_disk_fault_during_the_install_refuses_the_move_with_its_reason_and_it_never_flips() {
    for failure in ["log fault", "write failed"] {
        let (mut a, mut b) = (node_shard(A, big()), durable_shard(B));
        with_a_record_of_its_own(&mut b);
        let mut wire = Wire::new();
        let (conn, mut replies, at_handoff, events) =
            stream_to_handoff(&mut a, &mut b, &mut wire, 7);
        let install = install(&mut b, &at_handoff, 1);
        if failure == "log fault" {
            b.handle_log_fault(0, LogOp::Sync, LogFaultKind::Io);
        } else {
            b.handle_move_install_failed(
                install.partition,
                install.part_epoch,
                install.lsn,
                "writing its snapshot failed: Input/output error".into(),
            );
        }
        // The shell's write ends after all: nothing follows from it.
        b.handle_move_installed(install.partition, install.part_epoch, install.lsn);
        pump_all(&mut wire, &mut a, &mut b);
        let steps = reports(&mut a);
        let [MoveStep::Refused { reason }] = &steps[..] else {
            panic!("{failure}: {steps:?}");
        };
        assert!(
            reason.contains("cannot make partition") && reason.contains("durable"),
            "{reason}"
        );
        let expected = if failure == "log fault" {
            "disk failed"
        } else {
            "Input/output error"
        };
        assert!(reason.contains(expected), "{reason}");
        assert_eq!(b.moves_staged(), 0);
        assert_eq!(b.stats().moves.in_refused, 1);
        assert_eq!(b.stats().moves.in_durable, 0);
        assert!(
            write_all(&mut a, conn).replies.is_empty(),
            "A keeps the replies back until the controller decides"
        );
        a.handle_placement(90, abandoned()).unwrap();
        b.handle_placement(0, abandoned()).unwrap();
        replies.extend(write_all(&mut a, conn).replies);
        assert_eq!(by_seq(&replies), single_node_answers(&events));
        assert!(b.partition(moving_partition()).is_none());
        a.check_credit().unwrap();
        b.check_credit().unwrap();
    }
}

#[test]
fn a_target_whose_log_fails_refuses_the_move_before_staging_it() {
    let mut a = node_shard(A, big());
    let mut b = durable_shard(B);
    b.handle_log_fault(0, LogOp::Write, LogFaultKind::NoSpace);
    let conn = a.handle_connect(0).unwrap();
    a.handle_placement(0, migrating()).unwrap();
    let mut wire = Wire::new();
    pump_all(&mut wire, &mut a, &mut b);
    let steps = reports(&mut a);
    let [MoveStep::Refused { reason }] = &steps[..] else {
        panic!("{steps:?}");
    };
    assert!(reason.contains("cannot log now (DiskFull)"), "{reason}");
    assert!(a.serves(moving_partition()));
    assert_eq!(b.moves_staged(), 0);
    offer(&mut a, conn, &frame(&moving_events(0..3), 3));
    assert_eq!(write_all(&mut a, conn).replies.len(), 3);
}

#[test]
fn a_source_that_logs_answers_what_it_kept_back_once_the_target_has_it_and_its_log_is_durable() {
    let (mut a, mut b) = (durable_shard(A), node_shard(B, big()));
    let mut wire = Wire::new();
    // Five events applied after the hand-off: logged at A, their replies kept back for B.
    let (conn, _, _, events) = stream_to_handoff(&mut a, &mut b, &mut wire, 5);
    let logged = take_records(&mut a);
    assert_eq!(logged.len(), events.len(), "A logs every event it applies");
    a.handle_durable(0, logged.last().unwrap().0);
    let mut replies = write_all(&mut a, conn).replies;
    assert_eq!(replies.len(), 60, "the five wait for B, not for A's log");
    // B acknowledges them after A's log is durable: they leave at once (no sync is coming).
    pump_all(&mut wire, &mut a, &mut b);
    replies.extend(write_all(&mut a, conn).replies);
    assert_eq!(by_seq(&replies), single_node_answers(&events));
    a.check_credit().unwrap();
}
