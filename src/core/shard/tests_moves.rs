//! Live partition moves between two nodes' shards, driven by hand over the link harness of
//! `tests_links`: the test carries link and move frames between the cores and installs the
//! placements the controller would write (`Migrating`, then a flip or an abandon).

use super::*;
use crate::constants::{
    MOVE_TAIL_EVENTS_MAX, MOVES_INCOMING_MAX, MOVES_OUTGOING_MAX, MOVES_STAGED_MAX,
};
use crate::core::shard::{MoveError, MoveReport, MoveStep};

/// The partition the moves in these tests move: the one of `hunt_on(A, 0)`, node A's.
fn moving_hunt() -> HuntId {
    hunt_on(A, 0)
}

fn moving_partition() -> PartitionId {
    halves(2).partitioner().partition_of(moving_hunt())
}

/// `halves` with the moving partition owned by `owner` at partition epoch `part_epoch`.
fn with_owner(epoch: u32, part_epoch: u32, owner_node: NodeId, state: OwnerState) -> Placement {
    let mut owners = halves(epoch).owners().to_vec();
    owners[moving_partition().index()] = Owner {
        node: owner_node,
        shard: ShardId(0),
        part_epoch: Epoch(part_epoch),
        state,
    };
    Placement::from_owners(Epoch(epoch), owners).unwrap()
}

/// Epoch 3: the partition moves from A to B (a move named by partition epoch 2).
fn migrating() -> Placement {
    let state = OwnerState::Migrating {
        to: B,
        to_shard: ShardId(0),
    };
    with_owner(3, 2, A, state)
}

/// Epoch 4: the controller flipped the partition to B.
fn flipped() -> Placement {
    with_owner(4, 3, B, OwnerState::Serving)
}

/// Epoch 4: the controller abandoned the move; A serves the partition again.
fn abandoned() -> Placement {
    with_owner(4, 3, A, OwnerState::Serving)
}

/// Carries what `a` has for B (link and move frames) to `b`, and `b`'s answers back, once.
/// Returns how many frames went each way.
fn pump(wire: &mut Wire, a: &mut ShardCore, b: &mut ShardCore) -> usize {
    wire.send(a, b, TO_B);
    let Some(link) = wire.link else {
        return 0;
    };
    let sent = frames_in_bytes(&std::mem::take(&mut wire.in_transit));
    for (header, body) in &sent {
        match header.kind {
            FrameKind::LinkEvents => b.handle_link_events(0, link, body).unwrap(),
            kind => b.handle_move_frame(0, link, kind, body).unwrap(),
        }
    }
    let mut back = Vec::new();
    while b.poll_link_replies(link, &mut back) {}
    let answers = frames_in_bytes(&back);
    for (header, body) in &answers {
        match header.kind {
            FrameKind::LinkReplies => a.handle_link_replies(0, TO_B, body).unwrap(),
            FrameKind::MoveAck => a.handle_move_ack(0, TO_B, body).unwrap(),
            other => panic!("unexpected {other:?} back on the link"),
        }
    }
    sent.len() + answers.len()
}

fn pump_all(wire: &mut Wire, a: &mut ShardCore, b: &mut ShardCore) {
    for _ in 0..100 {
        if pump(wire, a, b) == 0 {
            return;
        }
    }
    panic!("the link never went quiet");
}

fn reports(core: &mut ShardCore) -> Vec<MoveStep> {
    std::iter::from_fn(|| core.poll_move_report())
        .map(|report: MoveReport| {
            assert_eq!(report.partition, moving_partition());
            assert_eq!(report.part_epoch, Epoch(2));
            assert_eq!((report.to, report.to_shard), (B, ShardId(0)));
            report.step
        })
        .collect()
}

/// Events of the moving hunt: its creation first, then joins and leaderboards.
fn moving_events(range: std::ops::Range<u64>) -> Vec<Event> {
    range
        .map(|seq| match seq {
            0 => create(seq, moving_hunt()),
            seq if seq % 3 == 0 => event(seq, moving_hunt(), EventKind::Leaderboard { top_k: 5 }),
            seq => join(seq, moving_hunt()),
        })
        .collect()
}

/// What one node that owns every partition answers to `events`, by client sequence.
fn single_node_answers(events: &[Event]) -> BTreeMap<u64, Outcome> {
    let mut single = ShardCore::new(ShardId(0), placement(1));
    let conn = single.handle_connect(0).unwrap();
    offer(&mut single, conn, &frame(events, 1));
    by_seq(&write_all(&mut single, conn).replies)
}

fn by_seq(replies: &[Reply]) -> BTreeMap<u64, Outcome> {
    let mut answers = BTreeMap::new();
    for reply in replies {
        let earlier = answers.insert(reply.client_seq, reply.outcome.clone());
        assert!(
            earlier.is_none(),
            "event {} answered twice",
            reply.client_seq
        );
    }
    answers
}

/// A's connection, its replies so far, A's state at the hand-off and every event sent.
type Streamed = (
    ConnectionId,
    Vec<Reply>,
    crate::core::snapshot::PartitionSnapshot,
    Vec<Event>,
);

/// A streams the partition to B up to the hand-off (events applied before the move, during
/// the snapshot's streaming and during the tail), then applies `after` more events, whose
/// replies wait for B's acknowledgement (not carried yet).
fn stream_to_handoff(
    a: &mut ShardCore,
    b: &mut ShardCore,
    wire: &mut Wire,
    after: u64,
) -> Streamed {
    let events = moving_events(0..60 + after);
    let conn = a.handle_connect(0).unwrap();
    offer(a, conn, &frame(&events[..20], 2));
    let mut replies = write_all(a, conn).replies;
    b.handle_placement(0, migrating()).unwrap();
    a.handle_placement(10, migrating()).unwrap();
    // Applied while the snapshot is on its way: they join the tail.
    offer(a, conn, &frame(&events[20..40], 3));
    wire.send(a, b, TO_B);
    offer(a, conn, &frame(&events[40..60], 3));
    replies.extend(write_all(a, conn).replies);
    pump_all(wire, a, b);
    let at_handoff = a.partition(moving_partition()).unwrap().export();
    offer(a, conn, &frame(&events[60..], 3));
    assert!(
        write_all(a, conn).replies.is_empty(),
        "answered once B has them"
    );
    assert!(a.serves(moving_partition()), "A keeps serving");
    assert_eq!(a.move_events_held(), 0);
    (conn, replies, at_handoff, events)
}

/// The state one node that owns everything reaches with `events`.
fn single_node_state(events: &[Event]) -> crate::core::snapshot::PartitionSnapshot {
    let mut single = ShardCore::new(ShardId(0), placement(1));
    let conn = single.handle_connect(0).unwrap();
    offer(&mut single, conn, &frame(events, 1));
    write_all(&mut single, conn);
    single.partition(moving_partition()).unwrap().export()
}

/// [`stream_to_handoff`] to a target that keeps nothing on disk: A reports `Ready` once B
/// acknowledged the hand-off, with the snapshot the move started from and the tail after it.
fn move_to_handoff(a: &mut ShardCore, b: &mut ShardCore, wire: &mut Wire, after: u64) -> Streamed {
    let streamed = stream_to_handoff(a, b, wire, after);
    assert_eq!(streamed.1.len(), 60, "A keeps serving while it streams");
    a.check_credit().unwrap();
    let at_start = single_node_state(&streamed.3[..20]);
    let snapshot_bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&at_start)
        .unwrap()
        .len() as u64;
    assert_eq!(
        reports(a),
        vec![MoveStep::Ready {
            snapshot_bytes,
            events_streamed: 40,
        }]
    );
    streamed
}

/// Nodes A and B with the partition handed off after `after` events and those events
/// confirmed by B, their replies written: (A, B, the wire, A's client, its replies, its events).
fn handed_off_and_confirmed(
    after: u64,
) -> (
    ShardCore,
    ShardCore,
    Wire,
    ConnectionId,
    Vec<Reply>,
    Vec<Event>,
) {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let mut wire = Wire::new();
    let (conn, mut replies, _, events) = move_to_handoff(&mut a, &mut b, &mut wire, after);
    pump_all(&mut wire, &mut a, &mut b);
    replies.extend(write_all(&mut a, conn).replies);
    (a, b, wire, conn, replies, events)
}

/// Events of the moving hunt after the first `after` (a frame of A's client after the flip).
fn later_events(events: &[Event], count: u64) -> Vec<Event> {
    let first = events.len() as u64;
    moving_events(first..first + count)
}

#[test]
fn a_source_serves_through_the_flip_and_the_target_serves_once_sealed_answering_each_event_once() {
    // B acknowledges the events applied after the hand-off: their replies leave.
    let (mut a, mut b, mut wire, conn, mut replies, mut events) = handed_off_and_confirmed(15);
    assert_eq!(replies.len(), 75, "nothing held: every event answered");
    let at_flip = a.partition(moving_partition()).unwrap().export();

    // B learns the flip first: it serves nothing of the partition until A's seal.
    b.handle_placement(0, flipped()).unwrap();
    assert!(!b.serves(moving_partition()), "waits for the seal");
    a.handle_placement(60, flipped()).unwrap();
    assert!(
        a.partition(moving_partition()).is_none(),
        "A dropped the state"
    );
    pump_all(&mut wire, &mut a, &mut b);
    assert!(b.serves(moving_partition()));
    assert_eq!(b.partition(moving_partition()).unwrap().export(), at_flip);
    assert_eq!(
        reports(&mut a),
        vec![MoveStep::Released {
            flipped: true,
            events_held: 0,
            pause_ns: 0,
        }]
    );
    // A's client goes on sending to A, which forwards to B.
    let after = later_events(&events, 10);
    offer(&mut a, conn, &frame(&after, 4));
    pump_all(&mut wire, &mut a, &mut b);
    replies.extend(write_all(&mut a, conn).replies);
    events.extend(after);

    // Every event answered once, as one node that owns everything answers them in order.
    assert_eq!(by_seq(&replies), single_node_answers(&events));
    assert_eq!(b.stats().events_applied_for_peers, 10);
    let (out, into) = (a.stats().moves, b.stats().moves);
    assert_eq!(
        (out.out_started, out.out_flipped, out.events_held),
        (1, 1, 0)
    );
    assert_eq!(
        (into.in_staged, into.in_installed, into.in_dropped),
        (1, 1, 0)
    );
    assert_eq!(a.stats().stages.move_pause_ns.unwrap().len(), 1);
    assert_eq!(b.moves_staged(), 0);
    a.check_credit().unwrap();
    b.check_credit().unwrap();
}

#[test]
fn a_target_serves_from_the_sources_seal_without_waiting_for_its_own_flip() {
    let (mut a, mut b, mut wire, conn, mut replies, mut events) = handed_off_and_confirmed(15);
    // A learns the flip first, seals and forwards its client's next events (the link carries
    // them ahead of the seal); B, which has not seen the flip, holds them until the seal and
    // then serves: the flip is committed, since A saw it.
    a.handle_placement(60, flipped()).unwrap();
    let after = later_events(&events, 10);
    offer(&mut a, conn, &frame(&after, 4));
    events.extend(after);
    pump_all(&mut wire, &mut a, &mut b);
    assert!(b.serves(moving_partition()), "served from the seal");
    assert_eq!(b.move_events_held(), 0);
    replies.extend(write_all(&mut a, conn).replies);
    assert_eq!(
        reports(&mut a),
        vec![MoveStep::Released {
            flipped: true,
            events_held: 10,
            pause_ns: 0, // held and let go at the harness's time 0
        }]
    );
    assert_eq!(by_seq(&replies), single_node_answers(&events));
    assert_eq!(b.stats().events_applied_for_peers, 10);

    // A placement of B's that is newer but still has the partition moving (another change
    // came first) does not take it back; the one with the flip changes nothing either.
    let state = b.partition(moving_partition()).unwrap().export();
    let still_moving = OwnerState::Migrating {
        to: B,
        to_shard: ShardId(0),
    };
    b.handle_placement(0, with_owner(4, 2, A, still_moving))
        .unwrap();
    assert!(b.serves(moving_partition()));
    b.handle_placement(0, with_owner(5, 3, B, OwnerState::Serving))
        .unwrap();
    assert!(b.serves(moving_partition()));
    assert_eq!(b.partition(moving_partition()).unwrap().export(), state);
    a.check_credit().unwrap();
    b.check_credit().unwrap();
}

#[test]
fn a_target_that_sees_the_flip_first_has_its_source_seal_at_once() {
    let (mut a, mut b, mut wire, conn, mut replies, mut events) = handed_off_and_confirmed(5);
    // B's placement shows the flip; A's does not yet. B tells A over the link, A seals, and
    // B serves: neither waits for A's watch.
    b.handle_placement(0, flipped()).unwrap();
    assert!(!b.serves(moving_partition()));
    pump_all(&mut wire, &mut a, &mut b);
    assert!(b.serves(moving_partition()));
    assert!(!a.serves(moving_partition()));
    assert!(a.partition(moving_partition()).is_none(), "A let go of it");
    assert_eq!(
        reports(&mut a),
        vec![MoveStep::Released {
            flipped: true,
            events_held: 0,
            pause_ns: 0,
        }]
    );
    // A's client goes on sending to A, which forwards to B; a placement of A's that is newer
    // but does not show the flip yet does not make A serve the partition again.
    let still_moving = OwnerState::Migrating {
        to: B,
        to_shard: ShardId(0),
    };
    a.handle_placement(70, with_owner(4, 2, A, still_moving))
        .unwrap();
    assert!(!a.serves(moving_partition()));
    let after = later_events(&events, 6);
    offer(&mut a, conn, &frame(&after, 4));
    events.extend(after);
    pump_all(&mut wire, &mut a, &mut b);
    replies.extend(write_all(&mut a, conn).replies);
    a.handle_placement(80, with_owner(5, 3, B, OwnerState::Serving))
        .unwrap();
    assert!(!a.serves(moving_partition()));
    assert_eq!(by_seq(&replies), single_node_answers(&events));
    assert_eq!(b.stats().events_applied_for_peers, 6);
    a.check_credit().unwrap();
    b.check_credit().unwrap();
}

#[test]
fn an_abandon_after_the_hand_off_answers_what_the_source_kept_back_and_drops_the_staged_state() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let mut wire = Wire::new();
    // Twelve events applied after the hand-off, unacknowledged: their replies wait.
    let (conn, mut replies, _, events) = move_to_handoff(&mut a, &mut b, &mut wire, 12);
    a.handle_placement(70, abandoned()).unwrap();
    assert_eq!(
        reports(&mut a),
        vec![MoveStep::Released {
            flipped: false,
            events_held: 0,
            pause_ns: 0,
        }]
    );
    assert!(a.serves(moving_partition()));
    replies.extend(write_all(&mut a, conn).replies);
    assert_eq!(by_seq(&replies), single_node_answers(&events));
    b.handle_placement(0, abandoned()).unwrap();
    assert_eq!(b.moves_staged(), 0);
    assert_eq!(b.stats().moves.in_dropped, 1);
    assert_eq!(a.stats().moves.out_abandoned, 1);
    a.check_credit().unwrap();
}

#[test]
fn a_link_that_fails_after_the_flip_answers_what_the_target_never_confirmed_outcome_unknown() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let mut wire = Wire::new();
    let (conn, mut replies, _, _) = move_to_handoff(&mut a, &mut b, &mut wire, 8);
    a.handle_placement(60, flipped()).unwrap();
    a.handle_link_failed(61, TO_B);
    replies.extend(write_all(&mut a, conn).replies);
    let unknown = replies
        .iter()
        .filter(|reply| {
            reply.outcome
                == Outcome::Error {
                    error: EventError::OutcomeUnknown,
                }
        })
        .count();
    assert_eq!(unknown, 8, "applied at A, maybe not at B: {replies:?}");
    assert_eq!(a.stats().moves.replies_unknown, 8);
    assert!(matches!(
        reports(&mut a)[..],
        [MoveStep::Released { flipped: true, .. }]
    ));
    a.check_credit().unwrap();
}

#[test]
fn an_abandon_before_the_hold_leaves_the_source_serving_with_nothing_held() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let events = moving_events(0..40);
    let conn = a.handle_connect(0).unwrap();
    offer(&mut a, conn, &frame(&events[..10], 2));
    a.handle_placement(0, migrating()).unwrap();
    let mut wire = Wire::new();
    wire.send(&mut a, &mut b, TO_B);
    offer(&mut a, conn, &frame(&events[10..], 3));
    a.handle_placement(5, abandoned()).unwrap();
    assert_eq!(
        reports(&mut a),
        vec![MoveStep::Released {
            flipped: false,
            events_held: 0,
            pause_ns: 0,
        }]
    );
    let replies = write_all(&mut a, conn).replies;
    assert_eq!(by_seq(&replies), single_node_answers(&events));
}

#[test]
fn a_target_that_falls_behind_makes_the_source_hold_instead_of_growing_the_tail() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let conn = a.handle_connect(0).unwrap();
    offer(&mut a, conn, &frame(&moving_events(0..1), 2));
    write_all(&mut a, conn);
    a.handle_placement(0, migrating()).unwrap();
    let mut wire = Wire::new();
    wire.send(&mut a, &mut b, TO_B); // the snapshot leaves and nothing comes back
    let extra = 10;
    let total = MOVE_TAIL_EVENTS_MAX + extra;
    let mut answered = 0;
    let mut seq = 1;
    while seq <= total {
        let end = (seq + 1000).min(total + 1);
        let events: Vec<Event> = (seq..end)
            .map(|seq| event(seq, moving_hunt(), EventKind::Leaderboard { top_k: 1 }))
            .collect();
        assert_eq!(offer(&mut a, conn, &frame(&events, 3)), FrameProgress::Done);
        answered += write_all(&mut a, conn).replies.len() as u64;
        seq = end;
    }
    assert_eq!(
        answered, MOVE_TAIL_EVENTS_MAX,
        "applied up to the tail's bound"
    );
    assert_eq!(a.move_events_held(), extra, "the rest held, not streamed");
    assert!(!a.serves(moving_partition()));
    // The target catches up: the hand-off goes out, and the held events are applied after
    // it, answered once the target has them.
    pump_all(&mut wire, &mut a, &mut b);
    assert!(matches!(
        reports(&mut a)[..],
        [MoveStep::Ready {
            events_streamed,
            ..
        }] if events_streamed == total
    ));
    assert_eq!(a.move_events_held(), 0);
    assert_eq!(write_all(&mut a, conn).replies.len() as u64, extra);
    a.check_credit().unwrap();
}

#[test]
fn a_failed_link_refuses_the_move() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    a.handle_placement(0, migrating()).unwrap();
    let mut wire = Wire::new();
    wire.send(&mut a, &mut b, TO_B);
    a.handle_link_failed(1, TO_B);
    let steps = reports(&mut a);
    assert!(
        matches!(&steps[..], [MoveStep::Refused { reason }] if reason.contains("failed")),
        "{steps:?}"
    );
    assert!(a.serves(moving_partition()));
    assert_eq!(a.stats().moves.out_refused, 1);
}

#[test]
fn malformed_move_frames_are_protocol_errors_not_panics() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    a.handle_placement(0, migrating()).unwrap();
    let mut wire = Wire::new();
    wire.send(&mut a, &mut b, TO_B);
    let link = wire.link.unwrap();
    // A hand-off before the snapshot is whole, for a staged move.
    let frames = frames_in_bytes(&std::mem::take(&mut wire.in_transit));
    let (header, body) = &frames[0];
    assert_eq!(header.kind, FrameKind::MoveSnapshot);
    // Garbage where the snapshot piece should be.
    let mut builder = FrameBuilder::new();
    builder.begin(FrameKind::MoveSnapshot);
    builder.push_archived(&[7u8; 48]).unwrap();
    builder.finish(3);
    let (bad_header, bad_body) = frames_in_bytes(builder.bytes()).remove(0);
    assert!(matches!(
        b.handle_move_frame(0, link, bad_header.kind, &bad_body),
        Err(MoveError::Frame(_))
    ));
    // The same piece twice: out of order.
    b.handle_move_frame(0, link, header.kind, body).unwrap();
    assert!(matches!(
        b.handle_move_frame(0, link, header.kind, body),
        Err(MoveError::Protocol { .. })
    ));
    // An acknowledgement of more than was sent.
    let ack = crate::core::message::MoveAck {
        partition: moving_partition().0,
        part_epoch: 2,
        snapshot_done: true,
        events: 5,
        bytes: 500,
        ..Default::default()
    };
    let mut builder = FrameBuilder::new();
    builder.single(FrameKind::MoveAck, 3, Some(&ack)).unwrap();
    let (_, ack_body) = frames_in_bytes(builder.bytes()).remove(0);
    assert!(matches!(
        a.handle_move_ack(0, TO_B, &ack_body),
        Err(MoveError::Protocol { .. })
    ));
    // A link frame kind that is not a move's.
    assert!(
        b.handle_move_frame(0, link, FrameKind::Replies, body)
            .is_err()
    );
}

const TO_A: LinkDest = LinkDest {
    node: A,
    shard: ShardId(0),
};

/// Carries what `b` forwards to A over its own link, and A's replies back, until quiet.
fn pump_back(wire: &mut Wire, b: &mut ShardCore, a: &mut ShardCore) {
    for _ in 0..100 {
        wire.send(b, a, TO_A);
        let Some(link) = wire.link else { return };
        let sent = frames_in_bytes(&std::mem::take(&mut wire.in_transit));
        for (header, body) in &sent {
            assert_eq!(header.kind, FrameKind::LinkEvents);
            a.handle_link_events(0, link, body).unwrap();
        }
        let mut back = Vec::new();
        while a.poll_link_replies(link, &mut back) {}
        let answers = frames_in_bytes(&back);
        for (_, body) in &answers {
            b.handle_link_replies(0, TO_A, body).unwrap();
        }
        if sent.is_empty() && answers.is_empty() {
            return;
        }
    }
    panic!("the link never went quiet");
}

#[test]
fn a_targets_own_clients_events_wait_for_its_flip_and_go_to_the_source_on_an_abandon() {
    for flip in [false, true] {
        let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
        let mut wire = Wire::new();
        let (_, _, _, _) = move_to_handoff(&mut a, &mut b, &mut wire, 0);
        // A client of B sends events of the partition handed off to B: B holds them for its
        // flip rather than forwarding them to A.
        let events = moving_events(100..106);
        let conn = b.handle_connect(0).unwrap();
        offer(&mut b, conn, &frame(&events, 3));
        let mut back = Wire::new();
        pump_back(&mut back, &mut b, &mut a);
        assert_eq!((a.move_events_held(), b.move_events_held()), (0, 6));
        assert!(
            write_all(&mut b, conn).replies.is_empty(),
            "held, not answered"
        );
        b.check_credit().unwrap();

        let placement = if flip { flipped() } else { abandoned() };
        a.handle_placement(80, placement.clone()).unwrap();
        b.handle_placement(80, placement).unwrap();
        pump_all(&mut wire, &mut a, &mut b); // A's seal, if flipped
        pump_back(&mut back, &mut b, &mut a);
        let replies = write_all(&mut b, conn).replies;
        assert_eq!(replies.len(), 6, "each held event answered once");
        for reply in &replies {
            // Applied at B after its flip, or forwarded to A, which serves it again.
            assert!(
                !matches!(
                    reply.outcome,
                    Outcome::Moved { .. } | Outcome::Error { .. } | Outcome::Unavailable { .. }
                ),
                "applied: {reply:?}"
            );
        }
        let applied_at_a = a.stats().events_applied_for_peers;
        assert_eq!(applied_at_a, if flip { 0 } else { 6 });
        assert_eq!(b.move_events_held(), 0);
        a.check_credit().unwrap();
        b.check_credit().unwrap();
    }
}

/// `halves(epoch)` with A's first `count` partitions (the even ones) moving to B, named by
/// partition epoch 2.
fn moving_many(epoch: u32, count: usize) -> Placement {
    let mut owners = halves(epoch).owners().to_vec();
    for owner in owners.iter_mut().step_by(2).take(count) {
        owner.part_epoch = Epoch(2);
        owner.state = OwnerState::Migrating {
            to: B,
            to_shard: ShardId(0),
        };
    }
    Placement::from_owners(Epoch(epoch), owners).unwrap()
}

/// The steps `core` reported, by partition.
fn steps_by_partition(core: &mut ShardCore) -> BTreeMap<PartitionId, MoveStep> {
    std::iter::from_fn(|| core.poll_move_report())
        .map(|report| (report.partition, report.step))
        .collect()
}

#[test]
fn moves_handed_off_and_waiting_for_their_flip_leave_room_for_the_next_ones() {
    // The controller flips moves and starts the next ones before a busy target has seen the
    // flips: the handed-off moves it still stages must not make it refuse the new ones.
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let mut wire = Wire::new();
    let first = moving_many(3, MOVES_INCOMING_MAX);
    b.handle_placement(0, first.clone()).unwrap();
    a.handle_placement(0, first).unwrap();
    pump_all(&mut wire, &mut a, &mut b);
    let steps = steps_by_partition(&mut a);
    assert_eq!(steps.len(), MOVES_INCOMING_MAX);
    assert!(
        steps
            .values()
            .all(|step| matches!(step, MoveStep::Ready { .. })),
        "{steps:?}"
    );
    assert_eq!(b.moves_staged(), MOVES_INCOMING_MAX);

    let more = moving_many(4, MOVES_INCOMING_MAX + 2);
    b.handle_placement(0, more.clone()).unwrap();
    a.handle_placement(0, more).unwrap();
    pump_all(&mut wire, &mut a, &mut b);
    let steps = steps_by_partition(&mut a);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        steps
            .values()
            .all(|step| matches!(step, MoveStep::Ready { .. })),
        "{steps:?}"
    );
    assert_eq!(b.moves_staged(), MOVES_INCOMING_MAX + 2);
}

#[test]
fn a_target_refuses_moves_past_what_it_may_receive_at_once_with_the_reason() {
    // (MOVES_STAGED_MAX, the bound on moves staged with those handed off, takes three
    // sources to reach: see the test below.)
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let mut wire = Wire::new();
    let too_many = moving_many(3, MOVES_INCOMING_MAX + 1);
    b.handle_placement(0, too_many.clone()).unwrap();
    a.handle_placement(0, too_many).unwrap();
    pump_all(&mut wire, &mut a, &mut b);
    let steps = steps_by_partition(&mut a);
    let refused: Vec<&String> = steps
        .values()
        .filter_map(|step| match step {
            MoveStep::Refused { reason } => Some(reason),
            _ => None,
        })
        .collect();
    let [reason] = &refused[..] else {
        panic!("{steps:?}");
    };
    assert!(
        reason.contains(&format!("already receives {MOVES_INCOMING_MAX} moves")),
        "{reason}"
    );
    assert_eq!(b.moves_staged(), MOVES_INCOMING_MAX);
}

/// Node D: a third source for the staging bound.
const D: NodeId = NodeId(4);

/// Odd partitions on B; even ones shared by A, C and D (`p % 8`: 0 and 4 on A, 2 on C, 6 on
/// D), each source's first `moving[i]` of them moving to B, named by partition epoch 2.
fn three_sources_moving(epoch: u32, moving: [usize; 3]) -> Placement {
    let sources = [A, C, D];
    let mut left = moving;
    let owners = (0..PARTITIONS)
        .map(|p| {
            let node = match p % 8 {
                2 => C,
                6 => D,
                n if n % 2 == 0 => A,
                _ => B,
            };
            let mut owner = Owner {
                node,
                shard: ShardId(0),
                part_epoch: Epoch(1),
                state: OwnerState::Serving,
            };
            if let Some(i) = sources.iter().position(|&source| source == node) {
                if left[i] > 0 {
                    left[i] -= 1;
                    owner.part_epoch = Epoch(2);
                    owner.state = OwnerState::Migrating {
                        to: B,
                        to_shard: ShardId(0),
                    };
                }
            }
            owner
        })
        .collect();
    Placement::from_owners(Epoch(epoch), owners).unwrap()
}

#[test]
fn a_target_stages_at_most_moves_staged_max_from_all_its_sources_and_says_so() {
    // A source streams at most MOVES_OUTGOING_MAX at once, so reaching the bound on moves
    // staged at B (handed off, waiting for their flip) takes three sources, and the
    // controller starting the next moves as each batch is handed off (B receives at most
    // MOVES_INCOMING_MAX at once).
    const _: () = assert!(2 * MOVES_OUTGOING_MAX == MOVES_STAGED_MAX);
    let mut sources = [A, C, D].map(|node| (node_shard(node, big()), Wire::new()));
    let mut b = node_shard(B, big());
    let mut moving = [0; 3];
    let mut epoch = 3;
    let mut reports = Vec::new();
    while moving != [MOVES_OUTGOING_MAX, MOVES_OUTGOING_MAX, 1] {
        // The next MOVES_INCOMING_MAX moves, from the sources in turn.
        for _ in 0..MOVES_INCOMING_MAX {
            if let Some(i) = (0..2).find(|&i| moving[i] < MOVES_OUTGOING_MAX) {
                moving[i] += 1;
            } else if moving[2] == 0 {
                moving[2] = 1;
            }
        }
        let placement = three_sources_moving(epoch, moving);
        epoch += 1;
        b.handle_placement(0, placement.clone()).unwrap();
        for (source, wire) in &mut sources {
            source.handle_placement(0, placement.clone()).unwrap();
            pump_all(wire, source, &mut b);
            reports.extend(steps_by_partition(source));
        }
    }
    let refused: Vec<&String> = reports
        .iter()
        .filter_map(|(_, step)| match step {
            MoveStep::Refused { reason } => Some(reason),
            _ => None,
        })
        .collect();
    let ready = reports
        .iter()
        .filter(|(_, step)| matches!(step, MoveStep::Ready { .. }))
        .count();
    assert_eq!(ready, MOVES_STAGED_MAX, "{reports:?}");
    let [reason] = &refused[..] else {
        panic!("{reports:?}");
    };
    assert!(
        reason.contains(&format!("already stages {MOVES_STAGED_MAX} moves")),
        "{reason}"
    );
    assert_eq!(b.moves_staged(), MOVES_STAGED_MAX);
}

#[path = "tests_moves_durable.rs"]
mod durable_tests;
