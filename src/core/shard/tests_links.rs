//! Links between shards of two nodes, driven by hand like the rest of `tests`: the test
//! carries the hello, `LinkEvents` and `LinkReplies` frames between the cores.

use super::*;
use crate::core::codec::ValidatedFrame;
use crate::core::ids::Epoch;
use crate::core::message::{
    ArchivedLinkAccepted, ArchivedLinkTokens, LinkAccepted, LinkHello, LinkTokens,
};
use crate::core::partition::{Owner, OwnerState};
use crate::core::shard::{
    Durability, ERROR_CODE_LINK_REFUSED, LinkDest, LinkError, LinkPoll, NodeLease, OutcomeIndex,
};

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);
const PARTITIONS: usize = 64;
const CLUSTER: &str = "links-test";

/// Even partitions on node A, odd ones on node B (one shard each), at `epoch`.
fn halves(epoch: u32) -> Placement {
    let owners = (0..PARTITIONS)
        .map(|p| Owner {
            node: if p % 2 == 0 { A } else { B },
            shard: ShardId(0),
            part_epoch: Epoch(1),
            state: OwnerState::Serving,
        })
        .collect();
    Placement::from_owners(Epoch(epoch), owners).unwrap()
}

fn link_config(node: NodeId, share: Credit) -> ShardConfig {
    ShardConfig {
        node,
        cluster: Some(CLUSTER.to_string()),
        link_budget_per_source: share,
        lease_at_start: NodeLease::Confirmed {
            registered: Epoch(0),
        },
        ..ShardConfig::defaults(1)
    }
}

fn node_shard(node: NodeId, share: Credit) -> ShardCore {
    ShardCore::with_config(ShardId(0), halves(2), link_config(node, share))
}

const TO_B: LinkDest = LinkDest {
    node: B,
    shard: ShardId(0),
};

/// The `n`th hunt whose partition is even (node A's) or odd (node B's).
fn hunt_on(node: NodeId, n: usize) -> HuntId {
    let partitioner = halves(2).partitioner();
    let parity = if node == A { 0 } else { 1 };
    (0..)
        .map(HuntId)
        .filter(|hunt| partitioner.partition_of(*hunt).0 % 2 == parity)
        .nth(n)
        .unwrap()
}

/// Every whole frame in `bytes`: (header, body).
fn frames_in_bytes(bytes: &[u8]) -> Vec<(crate::core::codec::FrameHeader, AlignedVec)> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Ok(Decoded::Frame {
            header,
            body,
            frame_len,
        }) = decode_frame(rest)
        else {
            panic!("whole frames only");
        };
        let mut aligned = AlignedVec::new();
        aligned.extend_from_slice(body);
        frames.push((header, aligned));
        rest = &rest[frame_len..];
    }
    frames
}

/// Sends `from`'s hello to `to` and the answer back; the inbound link's id at `to`.
fn handshake(from: &mut ShardCore, to: &mut ShardCore, dest: LinkDest) -> ConnectionId {
    let hello = from.link_hello_frame();
    let (header, body) = frames_in_bytes(&hello).remove(0);
    let mut answer = FrameBuilder::new();
    let link = to
        .handle_link_hello(0, &header, &body, &mut answer)
        .expect("accepted");
    let (header, body) = frames_in_bytes(answer.bytes()).remove(0);
    assert_eq!(header.kind, FrameKind::LinkAccepted);
    let accepted = ValidatedFrame::<ArchivedLinkAccepted>::validate(header.kind, &body)
        .unwrap()
        .first()
        .unwrap()
        .get();
    from.handle_link_connected(0, dest, accepted).unwrap();
    link
}

/// A link from `a` to `b`, carried by hand: `link` is its id at `b` once connected.
struct Wire {
    link: Option<ConnectionId>,
    /// Frames `a` handed out that have not reached `b` yet (a slow network).
    in_transit: Vec<u8>,
}

impl Wire {
    fn new() -> Wire {
        Wire {
            link: None,
            in_transit: Vec::new(),
        }
    }

    /// Lets `a` hand out what it has for `dest` (connecting first), without delivering it.
    fn send(&mut self, a: &mut ShardCore, b: &mut ShardCore, dest: LinkDest) -> Option<LinkPoll> {
        while a.poll_links_ready().is_some() {}
        let mut last = None;
        loop {
            match a.poll_link(dest, &mut self.in_transit) {
                Some(LinkPoll::Connect) => {
                    self.link = Some(handshake(a, b, dest));
                    last = Some(LinkPoll::Connect);
                }
                None => return last,
                other => return other,
            }
        }
    }

    /// Delivers what is in transit to `b`, and `b`'s replies back to `a`.
    fn deliver(&mut self, a: &mut ShardCore, b: &mut ShardCore, dest: LinkDest) {
        let link = self.link.expect("connected");
        for (header, body) in frames_in_bytes(&std::mem::take(&mut self.in_transit)) {
            assert_eq!(header.kind, FrameKind::LinkEvents);
            b.handle_link_events(0, link, &body).unwrap();
        }
        let mut replies = Vec::new();
        while b.poll_link_replies(link, &mut replies) {}
        for (header, body) in frames_in_bytes(&replies) {
            assert_eq!(header.kind, FrameKind::LinkReplies);
            a.handle_link_replies(0, dest, &body).unwrap();
        }
    }

    /// Sends and delivers until nothing moves.
    fn settle(&mut self, a: &mut ShardCore, b: &mut ShardCore, dest: LinkDest) {
        while let Some(LinkPoll::Write(_) | LinkPoll::Connect) = self.send(a, b, dest) {
            self.deliver(a, b, dest);
        }
    }
}

fn big() -> Credit {
    Credit::new(BIG, BIG)
}

/// The answer to an event of `hunt` when nobody serves its partition now: it names it.
fn unavailable(hunt: HuntId) -> Outcome {
    Outcome::Unavailable {
        partition: halves(2).partitioner().partition_of(hunt).0,
    }
}

fn outcome_unknown() -> Outcome {
    Outcome::Error {
        error: EventError::OutcomeUnknown,
    }
}

/// A mix of creates, joins and leaderboards over hunts of both nodes.
fn mixed_events(n: usize) -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..n {
        let node = if i % 3 == 0 { A } else { B };
        let hunt = hunt_on(node, i % 5);
        let seq = events.len() as u64;
        events.push(match i % 4 {
            0 | 1 => create(seq, hunt),
            2 => join(seq, hunt),
            _ => event(seq, hunt, EventKind::Leaderboard { top_k: 3 }),
        });
    }
    events
}

#[test]
fn events_owned_by_another_node_go_over_a_link_and_get_a_single_nodes_outcomes() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let events = mixed_events(60);
    let conn = a.handle_connect(0).unwrap();
    assert_eq!(offer(&mut a, conn, &frame(&events, 2)), FrameProgress::Done);
    let mut wire = Wire::new();
    wire.settle(&mut a, &mut b, TO_B);
    let replies = write_all(&mut a, conn).replies;

    // The same events on one node that owns every partition.
    let mut single = ShardCore::new(ShardId(0), placement(1));
    let single_conn = single.handle_connect(0).unwrap();
    offer(&mut single, single_conn, &frame(&events, 1));
    let expected = write_all(&mut single, single_conn).replies;

    let by_seq = |replies: &[Reply]| -> BTreeMap<u64, Outcome> {
        replies
            .iter()
            .map(|reply| (reply.client_seq, reply.outcome.clone()))
            .collect()
    };
    assert_eq!(replies.len(), events.len(), "every event answered once");
    assert_eq!(by_seq(&replies), by_seq(&expected));
    // In order per partition: the replies of node B's events came back in the order sent.
    let from_b: Vec<u64> = replies
        .iter()
        .map(|reply| reply.client_seq)
        .filter(|seq| b_owns(&events[*seq as usize]))
        .collect();
    assert!(
        from_b.windows(2).all(|pair| pair[0] < pair[1]),
        "{from_b:?}"
    );

    let forwarded = events.iter().filter(|event| b_owns(event)).count() as u64;
    let (sent, received) = (a.stats().links, b.stats().links);
    assert_eq!(sent.events_sent, forwarded);
    assert_eq!(received.events_received, forwarded);
    assert_eq!(sent.bytes_sent, received.bytes_received);
    assert!(sent.batches_sent >= 1 && sent.batches_sent == received.batches_received);
    assert_eq!(received.batches_sent, sent.batches_received);
    assert_eq!(b.stats().events_applied_for_peers, forwarded);
    assert_eq!(a.stats().stages.link_round_trip_ns.len(), forwarded);
    assert_eq!(a.link_credit_held(TO_B), Credit::ZERO);
    a.check_credit().unwrap();
    b.check_credit().unwrap();
}

/// Two hunts of node B whose partitions differ from `hunt`'s and from each other's.
fn distinct_partitions_on_b(hunt: HuntId) -> (HuntId, HuntId) {
    let partition_of = |hunt: HuntId| halves(2).partitioner().partition_of(hunt);
    let mut others = (0..)
        .map(|n| hunt_on(B, n))
        .filter(|other| partition_of(*other) != partition_of(hunt));
    let other = others.next().unwrap();
    let third = others
        .find(|third| partition_of(*third) != partition_of(other))
        .unwrap();
    (other, third)
}

fn b_owns(event: &Event) -> bool {
    halves(2).partitioner().partition_of(event.hunt).0 % 2 == 1
}

#[test]
fn a_full_batch_is_split_into_frames_within_the_limits() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let events: Vec<Event> = (0..700)
        .map(|seq| event(seq, hunt_on(B, seq as usize % 7), EventKind::Join))
        .collect();
    let conn = a.handle_connect(0).unwrap();
    offer(&mut a, conn, &frame(&events[..350], 2));
    offer(&mut a, conn, &frame(&events[350..], 2));
    let mut wire = Wire::new();
    assert_eq!(
        wire.send(&mut a, &mut b, TO_B),
        Some(LinkPoll::Write(wire.in_transit.len()))
    );
    let frames = frames_in_bytes(&wire.in_transit);
    assert_eq!(frames.len(), 3, "700 events in frames of at most 256");
    assert_eq!(a.stats().links.batches_sent, 3);
    wire.deliver(&mut a, &mut b, TO_B);
    assert_eq!(write_all(&mut a, conn).replies.len(), 700);
    a.check_credit().unwrap();
}

#[test]
fn a_receiver_applies_only_what_it_serves_and_answers_the_rest_on_the_link() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    // Node B's view is newer: partition 1 moved on to node C, partition 3 is offline.
    let moved = (0..PARTITIONS)
        .map(|p| {
            let mut owner = *halves(2).owner(PartitionId(p as u32));
            if p == 1 {
                owner.node = C;
                owner.part_epoch = Epoch(5);
            }
            if p == 3 {
                owner.state = OwnerState::Offline;
            }
            owner
        })
        .collect();
    b.handle_placement(0, Placement::from_owners(Epoch(5), moved).unwrap())
        .unwrap();
    let hunt_in = |partition: u32| {
        (0..)
            .map(HuntId)
            .find(|hunt| halves(2).partitioner().partition_of(*hunt).0 == partition)
            .unwrap()
    };
    let events = [
        create(0, hunt_in(1)),
        create(1, hunt_in(3)),
        create(2, hunt_in(5)),
    ];
    let conn = a.handle_connect(0).unwrap();
    offer(&mut a, conn, &frame(&events, 2));
    Wire::new().settle(&mut a, &mut b, TO_B);
    let outcomes: Vec<Outcome> = write_all(&mut a, conn)
        .replies
        .into_iter()
        .map(|reply| reply.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Moved {
                node: C.0,
                shard: 0,
                epoch: 5
            },
            Outcome::Unavailable { partition: 3 },
            Outcome::Accepted { score: 0 },
        ],
        "a second hop is never taken: the owner hint goes back instead"
    );
    assert_eq!(b.stats().links.events_sent, 0, "node B forwarded nothing");
    assert_eq!(b.stats().events_applied_for_peers, 1);
}

#[test]
fn a_failed_link_answers_unsent_events_unavailable_and_sent_ones_outcome_unknown() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let conn = a.handle_connect(0).unwrap();
    let hunt = hunt_on(B, 0);
    // Node B's hunts in two more partitions, so that each answer is seen to name its own.
    let (other, third) = distinct_partitions_on_b(hunt);
    offer(&mut a, conn, &frame(&[create(0, hunt), join(1, hunt)], 2));
    let mut wire = Wire::new();
    assert!(matches!(
        wire.send(&mut a, &mut b, TO_B),
        Some(LinkPoll::Write(_))
    ));
    // Two more queue behind the two handed out; then the link breaks.
    offer(&mut a, conn, &frame(&[join(2, other), join(3, hunt)], 2));
    a.handle_link_failed(0, TO_B);
    a.check_credit().unwrap();
    assert_eq!(a.link_credit_held(TO_B), Credit::ZERO);
    // While the link is down, events for it are answered at once.
    offer(&mut a, conn, &frame(&[join(4, third)], 2));
    let outcomes: Vec<(u64, Outcome)> = write_all(&mut a, conn)
        .replies
        .into_iter()
        .map(|reply| (reply.client_seq, reply.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (0, outcome_unknown()),
            (1, outcome_unknown()),
            (2, unavailable(other)),
            (3, unavailable(hunt)),
            (4, unavailable(third)),
        ]
    );
    assert_eq!(a.credit_held(), Credit::ZERO);
    assert_eq!(a.stats().links.links_failed, 1);
    // Only the two handed to the socket count as sent.
    assert_eq!(a.stats().links.events_sent, 2);
    let tally = &a.stats().events;
    assert_eq!(tally.outcome_total(OutcomeIndex::OutcomeUnknown), 2);
    assert_eq!(tally.outcome_total(OutcomeIndex::Unavailable), 3);

    // After the back-off the next event opens the link again, and is served.
    a.handle_link_retry(0, TO_B);
    offer(&mut a, conn, &frame(&[join(5, hunt)], 2));
    let mut wire = Wire::new();
    assert_eq!(
        wire.send(&mut a, &mut b, TO_B),
        Some(LinkPoll::Write(wire.in_transit.len()))
    );
    wire.deliver(&mut a, &mut b, TO_B);
    let replies = write_all(&mut a, conn).replies;
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].client_seq, 5);
    a.check_credit().unwrap();
}

#[test]
fn a_connect_that_fails_answers_everything_queued_unavailable() {
    let mut a = node_shard(A, big());
    let conn = a.handle_connect(0).unwrap();
    let hunt = hunt_on(B, 0);
    let (other, _) = distinct_partitions_on_b(hunt);
    offer(&mut a, conn, &frame(&[create(0, hunt), join(1, other)], 2));
    assert_eq!(a.poll_links_ready(), Some(TO_B));
    assert_eq!(a.poll_link(TO_B, &mut Vec::new()), Some(LinkPoll::Connect));
    a.handle_link_failed(0, TO_B);
    let outcomes: Vec<Outcome> = write_all(&mut a, conn)
        .replies
        .into_iter()
        .map(|reply| reply.outcome)
        .collect();
    assert_eq!(outcomes, vec![unavailable(hunt), unavailable(other)]);
    assert_eq!(a.stats().links.events_sent, 0, "nothing left this node");
    assert_eq!(a.stats().links.bytes_sent, 0);
    a.check_credit().unwrap();
}

#[test]
fn a_placement_that_takes_the_destination_offline_fails_its_link() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let conn = a.handle_connect(0).unwrap();
    let hunt = hunt_on(B, 0);
    let (other, _) = distinct_partitions_on_b(hunt);
    offer(&mut a, conn, &frame(&[create(0, hunt)], 2));
    let mut wire = Wire::new();
    wire.send(&mut a, &mut b, TO_B);
    // One more queues behind the one handed out, not sent yet.
    offer(&mut a, conn, &frame(&[join(1, other)], 2));
    // Node B paused: the controller marks its partitions offline; the reply never comes.
    let offline = halves(2)
        .owners()
        .iter()
        .map(|owner| Owner {
            state: if owner.node == B {
                OwnerState::Offline
            } else {
                owner.state
            },
            ..*owner
        })
        .collect();
    a.handle_placement(0, Placement::from_owners(Epoch(3), offline).unwrap())
        .unwrap();
    // From now on, events of node B's partitions are answered at once, without a link.
    offer(&mut a, conn, &frame(&[join(2, hunt)], 2));
    let outcomes: Vec<(u64, Outcome)> = write_all(&mut a, conn)
        .replies
        .into_iter()
        .map(|reply| (reply.client_seq, reply.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (0, outcome_unknown()),
            (1, unavailable(other)),
            (2, unavailable(hunt)),
        ]
    );
    assert_eq!(a.stats().links.events_sent, 1);
    a.check_credit().unwrap();
}

#[test]
fn the_sender_waits_for_its_link_share_and_resumes_when_replies_come_back() {
    let share = Credit::new(2, BIG);
    let (mut a, mut b) = (node_shard(A, share), node_shard(B, share));
    let conn = a.handle_connect(0).unwrap();
    let events: Vec<Event> = (0..5)
        .map(|seq| event(seq, hunt_on(B, 0), EventKind::Leaderboard { top_k: 1 }))
        .collect();
    let bytes = frame(&events, 2);
    assert_eq!(offer(&mut a, conn, &bytes), FrameProgress::Blocked);
    assert_eq!(a.link_credit_held(TO_B).events, 2);
    assert_eq!(a.readable(conn), Readable::NotYet);
    assert_eq!(a.stats().link_credit_waits, 1);
    let mut wire = Wire::new();
    let mut answered = 0;
    for _ in 0..10 {
        wire.settle(&mut a, &mut b, TO_B);
        answered += write_all(&mut a, conn).replies.len();
        if a.readable(conn) == Readable::Yes && offer(&mut a, conn, &bytes) == FrameProgress::Done {
            wire.settle(&mut a, &mut b, TO_B);
            answered += write_all(&mut a, conn).replies.len();
            break;
        }
    }
    assert_eq!(answered, 5);
    assert!(a.stats().link_inflight_peak.events <= 2);
    a.check_credit().unwrap();
}

#[test]
fn fail_fast_answers_busy_when_the_link_share_is_used_up() {
    let share = Credit::new(1, BIG);
    let config = ShardConfig {
        fail_fast: true,
        ..link_config(A, share)
    };
    let mut a = ShardCore::with_config(ShardId(0), halves(2), config);
    let conn = a.handle_connect(0).unwrap();
    let hunt = hunt_on(B, 0);
    offer(&mut a, conn, &frame(&[create(0, hunt), join(1, hunt)], 2));
    let replies = write_all(&mut a, conn).replies;
    assert_eq!(replies.len(), 1);
    assert_eq!(
        (replies[0].client_seq, &replies[0].outcome),
        (1, &Outcome::Busy)
    );
    a.check_credit().unwrap();
}

/// A `LinkEvents` frame of `events` with the given tokens, as a peer might send it.
fn link_events_frame(events: &[Event], tokens: Vec<u64>) -> AlignedVec {
    let mut builder = FrameBuilder::new();
    builder.begin(FrameKind::LinkEvents);
    for event in events {
        builder.push(event).unwrap();
    }
    builder.push(&LinkTokens { tokens }).unwrap();
    builder.finish(2);
    frames_in_bytes(builder.bytes()).remove(0).1
}

#[test]
fn a_sender_past_its_share_is_refused_by_the_receiver() {
    let mut a = node_shard(A, big());
    let mut b = node_shard(B, Credit::new(2, BIG));
    let link = {
        let hello = a.link_hello_frame();
        let (header, body) = frames_in_bytes(&hello).remove(0);
        b.handle_link_hello(0, &header, &body, &mut FrameBuilder::new())
            .unwrap()
    };
    let hunt = hunt_on(B, 0);
    let body = link_events_frame(
        &[create(0, hunt), join(1, hunt), join(2, hunt)],
        vec![1, 2, 3],
    );
    assert!(matches!(
        b.handle_link_events(0, link, &body),
        Err(LinkError::OverShare { .. })
    ));
    assert_eq!(b.stats().links.protocol_errors, 1);
    assert_eq!(
        b.stats().events_applied_for_peers,
        0,
        "nothing of it applied"
    );
    // And the sender itself refuses a receiver that grants less than it assumes.
    let accepted = LinkAccepted {
        node: B.0,
        shard: 0,
        events_inflight_max: 2,
        bytes_inflight_max: BIG,
    };
    let mut answer = FrameBuilder::new();
    answer
        .single(FrameKind::LinkAccepted, 0, Some(&accepted))
        .unwrap();
    let (header, body) = frames_in_bytes(answer.bytes()).remove(0);
    let accepted = ValidatedFrame::<ArchivedLinkAccepted>::validate(header.kind, &body)
        .unwrap()
        .first()
        .unwrap()
        .get();
    let conn = a.handle_connect(0).unwrap();
    offer(&mut a, conn, &frame(&[create(0, hunt)], 2));
    assert!(matches!(
        a.handle_link_connected(0, TO_B, accepted),
        Err(LinkError::BadAccept { .. })
    ));
}

#[test]
fn a_reply_with_an_unknown_token_is_a_protocol_error() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let conn = a.handle_connect(0).unwrap();
    offer(&mut a, conn, &frame(&[create(0, hunt_on(B, 0))], 2));
    let mut wire = Wire::new();
    wire.send(&mut a, &mut b, TO_B);
    let mut builder = FrameBuilder::new();
    builder.begin(FrameKind::LinkReplies);
    builder
        .push(&Reply {
            client_seq: 0,
            client_ts: 0,
            outcome: Outcome::Accepted { score: 0 },
        })
        .unwrap();
    builder.push(&LinkTokens { tokens: vec![999] }).unwrap();
    builder.finish(2);
    let body = frames_in_bytes(builder.bytes()).remove(0).1;
    assert_eq!(
        a.handle_link_replies(0, TO_B, &body),
        Err(LinkError::UnknownToken { token: 999 })
    );
    // The shell closes the link; the event is answered, once.
    a.handle_link_failed(0, TO_B);
    let replies = write_all(&mut a, conn).replies;
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].outcome, outcome_unknown());
    a.check_credit().unwrap();
}

#[test]
fn a_link_frame_whose_tokens_do_not_match_its_events_is_refused() {
    let (a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let hello = a.link_hello_frame();
    let (header, body) = frames_in_bytes(&hello).remove(0);
    let link = b
        .handle_link_hello(0, &header, &body, &mut FrameBuilder::new())
        .unwrap();
    let body = link_events_frame(&[create(0, hunt_on(B, 0))], vec![1, 2]);
    assert_eq!(
        b.handle_link_events(0, link, &body),
        Err(LinkError::Tokens {
            records: 1,
            tokens: 2
        })
    );
    assert_eq!(b.stats().events_applied_for_peers, 0);
}

/// The answer `core` gives a hello with this cluster name, node and shard: `Ok` with the
/// link, or the text of the error frame.
fn hello_answer(core: &mut ShardCore, cluster: &str, node: NodeId) -> Result<ConnectionId, String> {
    let hello = LinkHello {
        cluster: cluster.to_string(),
        node: node.0,
        shard: 0,
        epoch: 2,
    };
    let mut frames = FrameBuilder::new();
    frames
        .single(FrameKind::LinkHello, 2, Some(&hello))
        .unwrap();
    let (header, body) = frames_in_bytes(frames.bytes()).remove(0);
    let mut answer = FrameBuilder::new();
    let link = core.handle_link_hello(0, &header, &body, &mut answer);
    let (header, body) = frames_in_bytes(answer.bytes()).remove(0);
    match link {
        Some(link) => {
            assert_eq!(header.kind, FrameKind::LinkAccepted);
            Ok(link)
        }
        None => {
            assert_eq!(header.kind, FrameKind::Error);
            let message = ValidatedFrame::<crate::core::message::ArchivedErrorMessage>::validate(
                header.kind,
                &body,
            )
            .unwrap()
            .first()
            .unwrap()
            .get();
            assert_eq!(message.code.to_native(), ERROR_CODE_LINK_REFUSED);
            Err(message.message.to_string())
        }
    }
}

#[test]
fn a_hello_from_another_cluster_or_an_unknown_node_is_refused_with_the_reason() {
    let mut b = node_shard(B, big());
    let refusal = hello_answer(&mut b, "other", A).unwrap_err();
    assert!(
        refusal.contains("\"links-test\"") && refusal.contains("\"other\""),
        "{refusal}"
    );
    let refusal = hello_answer(&mut b, CLUSTER, C).unwrap_err();
    assert!(
        refusal.contains("node 3") && refusal.contains("placement"),
        "{refusal}"
    );
    let link = hello_answer(&mut b, CLUSTER, A).unwrap();
    assert_eq!(
        b.link_source(link),
        Some(LinkDest {
            node: A,
            shard: ShardId(0)
        })
    );
    assert_eq!(b.stats().links.links_refused, 2);
    assert_eq!(b.links_open(), 1);

    // A single node accepts no links at all.
    let mut single = ShardCore::new(ShardId(0), halves(2));
    let refusal = hello_answer(&mut single, CLUSTER, A).unwrap_err();
    assert!(refusal.contains("single node"), "{refusal}");
}

#[test]
fn a_single_node_answers_moved_for_a_partition_elsewhere_instead_of_linking() {
    let config = ShardConfig {
        node: A,
        ..ShardConfig::defaults(1)
    };
    let mut a = ShardCore::with_config(ShardId(0), halves(2), config);
    let conn = a.handle_connect(0).unwrap();
    offer(&mut a, conn, &frame(&[create(0, hunt_on(B, 0))], 2));
    assert_eq!(a.poll_links_ready(), None);
    let replies = write_all(&mut a, conn).replies;
    assert!(matches!(replies[0].outcome, Outcome::Moved { node: 2, .. }));
}

#[test]
fn sync_durability_holds_link_replies_until_their_records_are_durable() {
    let mut a = node_shard(A, big());
    let config = ShardConfig {
        durability: Durability::Sync,
        ..link_config(B, big())
    };
    let mut b = ShardCore::with_config(ShardId(0), halves(2), config);
    let conn = a.handle_connect(0).unwrap();
    let hunt = hunt_on(B, 0);
    offer(&mut a, conn, &frame(&[create(0, hunt), join(1, hunt)], 2));
    let mut wire = Wire::new();
    wire.send(&mut a, &mut b, TO_B);
    wire.deliver(&mut a, &mut b, TO_B);
    assert!(
        write_all(&mut a, conn).replies.is_empty(),
        "no reply before its record is durable"
    );
    assert!(!b.drained(), "held replies keep the source's credit");
    let mut logged = Vec::new();
    b.take_log(|lsn, _, payload| logged.push((lsn, payload.len())));
    assert_eq!(logged.len(), 2, "each applied link event is logged");
    b.handle_durable(0, logged[1].0);
    let link = wire.link.unwrap();
    let mut replies = Vec::new();
    assert!(b.poll_link_replies(link, &mut replies));
    for (_, body) in frames_in_bytes(&replies) {
        a.handle_link_replies(0, TO_B, &body).unwrap();
    }
    let outcomes: Vec<Outcome> = write_all(&mut a, conn)
        .replies
        .into_iter()
        .map(|reply| reply.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Accepted { score: 0 },
            Outcome::Accepted { score: 0 }
        ]
    );
    a.check_credit().unwrap();
}

#[test]
fn stopping_answers_what_was_forwarded_then_closes_the_link() {
    let (mut a, mut b) = (node_shard(A, big()), node_shard(B, big()));
    let conn = a.handle_connect(0).unwrap();
    offer(&mut a, conn, &frame(&[create(0, hunt_on(B, 0))], 2));
    let mut wire = Wire::new();
    wire.send(&mut a, &mut b, TO_B);
    a.handle_stop(0);
    a.handle_read_closed(0, conn, Ok(()));
    assert_eq!(
        wire.send(&mut a, &mut b, TO_B),
        None,
        "in flight: stay open"
    );
    wire.deliver(&mut a, &mut b, TO_B);
    assert_eq!(write_all(&mut a, conn).replies.len(), 1);
    a.handle_closed(0, conn, CloseReason::Finished);
    assert_eq!(a.poll_link(TO_B, &mut Vec::new()), Some(LinkPoll::Close));
    assert!(a.drained());

    // A stopping receiver answers link events `ShuttingDown` instead of applying them.
    b.handle_stop(0);
    let body = link_events_frame(&[join(1, hunt_on(B, 0))], vec![7]);
    b.handle_link_events(0, wire.link.unwrap(), &body).unwrap();
    let mut replies = Vec::new();
    assert!(b.poll_link_replies(wire.link.unwrap(), &mut replies));
    let (_, body) = frames_in_bytes(&replies).remove(0);
    let records = Records::parse(FrameKind::LinkReplies, &body).unwrap();
    let (head, tokens) = records.split_last().unwrap();
    let tokens = access_record::<ArchivedLinkTokens>(1, tokens).unwrap();
    assert_eq!(tokens.tokens[0].to_native(), 7);
    let reply = access_record::<ArchivedReply>(0, head.iter().next().unwrap()).unwrap();
    let reply = rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap();
    assert_eq!(
        reply.outcome,
        Outcome::Error {
            error: EventError::ShuttingDown
        }
    );
}

#[test]
fn a_full_token_record_fits_its_limit() {
    let tokens = LinkTokens {
        tokens: vec![u64::MAX; crate::constants::LINK_BATCH_EVENTS_MAX],
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&tokens).unwrap();
    assert!(bytes.len() <= crate::constants::LINK_TOKENS_RECORD_BYTES_MAX);
}

#[path = "tests_moves.rs"]
mod move_tests;

/// The default share lets a sender keep four full batches in flight before any reply comes
/// back, so that the receiver applies one while the next cross (a share of fewer held the
/// link to one and a half batches a round trip in `benches/link_hop.rs`); the event past the
/// share waits for credit, and every event is answered once the replies return.
#[test]
fn a_default_share_keeps_four_full_batches_in_flight_before_any_reply() {
    use crate::constants::LINK_BATCH_EVENTS_MAX;
    let share = ShardConfig::defaults(1).link_budget_per_source;
    let (mut a, mut b) = (node_shard(A, share), node_shard(B, share));
    let in_flight = 4 * LINK_BATCH_EVENTS_MAX;
    let events: Vec<Event> = (0..=in_flight as u64)
        .map(|seq| event(seq, hunt_on(B, seq as usize % 7), EventKind::Join))
        .collect();
    let conn = a.handle_connect(0).unwrap();
    let chunks: Vec<AlignedVec> = events.chunks(256).map(|chunk| frame(chunk, 2)).collect();
    let (last, whole) = chunks.split_last().unwrap();
    for chunk in whole {
        assert_eq!(offer(&mut a, conn, chunk), FrameProgress::Done);
    }
    assert_eq!(offer(&mut a, conn, last), FrameProgress::Blocked);
    assert_eq!(a.stats().link_credit_waits, 1);
    assert_eq!(a.link_credit_held(TO_B).events as usize, in_flight);

    let mut wire = Wire::new();
    wire.send(&mut a, &mut b, TO_B);
    let frames = frames_in_bytes(&wire.in_transit);
    assert_eq!(frames.len(), 4, "four batches handed out before any reply");
    for (_, body) in &frames {
        let records = crate::core::codec::Records::parse(FrameKind::LinkEvents, body).unwrap();
        assert_eq!(
            records.count() as usize,
            LINK_BATCH_EVENTS_MAX + 1,
            "full, and its tokens"
        );
    }
    wire.deliver(&mut a, &mut b, TO_B);
    let mut answered = write_all(&mut a, conn).replies.len();
    assert_eq!(offer(&mut a, conn, last), FrameProgress::Done);
    wire.settle(&mut a, &mut b, TO_B);
    answered += write_all(&mut a, conn).replies.len();
    assert_eq!(answered, events.len());
    a.check_credit().unwrap();
}
