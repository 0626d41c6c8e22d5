//! The shard protocol driven by hand, with no executor or socket: two `ShardCore`s of one
//! node, frames built as a client builds them, mesh batches carried between the cores by the
//! test, and replies parsed as a client parses them.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use rkyv::util::AlignedVec;

use crate::core::codec::{
    Decoded, FrameBuilder, FrameError, FrameKind, Records, access_record, decode_frame,
};
use crate::core::credit::Credit;
use crate::core::ids::{ConnectionId, HuntId, NodeId, PartitionId, PlayerId, ShardId};
use crate::core::message::{
    ArchivedReply, Event, EventError, EventKind, HuntSpec, Outcome, RejectReason, Reply,
};
use crate::core::partition::Placement;
use crate::core::shard::{
    CloseReason, FrameProgress, MeshOutput, Readable, Route, ShardConfig, ShardCore,
};

#[path = "tests_placement.rs"]
mod placement_tests;

#[path = "tests_links.rs"]
mod link_tests;

const BIG: u32 = 1 << 30;

fn placement(shards: usize) -> Placement {
    Placement::round_robin(64, shards).unwrap()
}

fn config(shards: usize, shard: Credit, connection: Credit, mesh: Credit) -> ShardConfig {
    ShardConfig {
        shard_budget: shard,
        connection_budget: connection,
        mesh_budget_per_source: mesh,
        ..ShardConfig::defaults(shards)
    }
}

fn cores(shards: usize, config: &ShardConfig) -> Vec<ShardCore> {
    (0..shards)
        .map(|s| ShardCore::with_config(ShardId(s as u16), placement(shards), config.clone()))
        .collect()
}

/// A hunt whose partition shard `owner` of `shards` owns, the `n`th such.
fn hunt_owned_by(shards: usize, owner: u16, n: u64) -> HuntId {
    let map = placement(shards);
    (0..)
        .map(HuntId)
        .filter(|hunt| map.route(*hunt).1 == ShardId(owner))
        .nth(n as usize)
        .unwrap()
}

fn event(seq: u64, hunt: HuntId, kind: EventKind) -> Event {
    Event {
        hunt,
        player: PlayerId(seq % 7),
        client_session: 0,
        client_seq: seq,
        client_ts: 0,
        kind,
    }
}

fn frame(events: &[Event], epoch: u32) -> AlignedVec {
    let mut builder = FrameBuilder::new();
    builder.begin(FrameKind::Events);
    for event in events {
        builder.push(event).unwrap();
    }
    builder.finish(epoch);
    let mut bytes = AlignedVec::new();
    bytes.extend_from_slice(builder.bytes());
    bytes
}

/// The credit each event of a frame holds once admitted, by sequence number.
fn credits_of(frame: &[u8]) -> Vec<Credit> {
    let Ok(Decoded::Frame { header, body, .. }) = decode_frame(frame) else {
        panic!("a whole frame")
    };
    Records::parse(header.kind, body)
        .unwrap()
        .iter()
        .map(|record| Credit::new(1, record.len() as u32))
        .collect()
}

fn offer(core: &mut ShardCore, conn: ConnectionId, frame: &[u8]) -> FrameProgress {
    let Ok(Decoded::Frame { header, body, .. }) = decode_frame(frame) else {
        panic!("a whole frame")
    };
    core.handle_frame(0, conn, &header, body).unwrap()
}

/// Carries every batch from `from` to `to` until `from` has none.
fn carry(cores: &mut [ShardCore], from: usize, to: usize) -> usize {
    let mut batches = 0;
    while let Some(output) = cores[from].poll_mesh(ShardId(to as u16)) {
        if let MeshOutput::Batch(batch) = output {
            cores[to].handle_mesh(0, ShardId(from as u16), batch);
            batches += 1;
        }
    }
    batches
}

/// Carries batches both ways until the mesh is quiet.
fn settle(cores: &mut [ShardCore]) {
    loop {
        let mut moved = 0;
        for from in 0..cores.len() {
            for to in (0..cores.len()).filter(|&to| to != from) {
                moved += carry(cores, from, to);
            }
        }
        if moved == 0 {
            return;
        }
    }
}

/// What a client reads in a connection's output.
#[derive(Debug, Default)]
struct Received {
    replies: Vec<Reply>,
    maps: Vec<u32>,
    /// Error frames: the frame that ends a connection after bad input.
    errors: usize,
}

fn parse(bytes: &[u8], into: &mut Received) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let Ok(Decoded::Frame {
            header,
            body,
            frame_len,
        }) = decode_frame(rest)
        else {
            panic!("the output holds whole frames only");
        };
        match header.kind {
            FrameKind::Replies => {
                for (index, record) in Records::parse(header.kind, body)
                    .unwrap()
                    .iter()
                    .enumerate()
                {
                    let reply = access_record::<ArchivedReply>(index as u32, record).unwrap();
                    into.replies
                        .push(rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap());
                }
            }
            FrameKind::MapReply => into.maps.push(header.epoch),
            FrameKind::Error => into.errors += 1,
            kind => panic!("a node does not send {kind:?} frames"),
        }
        rest = &rest[frame_len..];
    }
}

/// Takes what the core queued for `conn`, "writes" it whole, and returns it parsed.
fn write_all(core: &mut ShardCore, conn: ConnectionId) -> Received {
    let mut received = Received::default();
    let mut out = FrameBuilder::new();
    while core.poll_replies(conn, &mut out) {
        parse(out.bytes(), &mut received);
        core.handle_written(0, conn, out.len());
        out.clear(0);
    }
    received
}

fn is_credited(outcome: &Outcome) -> bool {
    !matches!(
        outcome,
        Outcome::Busy | Outcome::Error { .. } | Outcome::Moved { .. } | Outcome::Unavailable { .. }
    )
}

fn create(seq: u64, hunt: HuntId) -> Event {
    event(seq, hunt, EventKind::CreateHunt(HuntSpec::default()))
}

fn join(seq: u64, hunt: HuntId) -> Event {
    event(seq, hunt, EventKind::Join)
}

// ---- admission ---------------------------------------------------------------------------

#[test]
fn a_connection_stops_at_its_share_and_resumes_when_replies_are_written() {
    let config = config(
        1,
        Credit::new(100, BIG),
        Credit::new(4, BIG),
        Credit::new(BIG, BIG),
    );
    let mut core = cores(1, &config).remove(0);
    let conn = core.handle_connect(0).unwrap();
    let hunt = HuntId(1);
    let events: Vec<Event> = (0..6).map(|seq| join(seq, hunt)).collect();
    let frame = frame(&events, 1);
    assert_eq!(offer(&mut core, conn, &frame), FrameProgress::Blocked);
    assert_eq!(core.readable(conn), Readable::NotYet);
    assert_eq!(core.credit_held().events, 4);
    let first = write_all(&mut core, conn);
    assert_eq!(first.replies.len(), 4);
    assert_eq!(core.credit_held(), Credit::ZERO);
    assert_eq!(core.readable(conn), Readable::Yes);
    assert_eq!(offer(&mut core, conn, &frame), FrameProgress::Done);
    let rest = write_all(&mut core, conn);
    let seqs: Vec<u64> = first
        .replies
        .iter()
        .chain(&rest.replies)
        .map(|reply| reply.client_seq)
        .collect();
    assert_eq!(
        seqs,
        (0..6).collect::<Vec<_>>(),
        "each event once, in order"
    );
    core.check_credit().unwrap();
}

#[test]
fn the_shard_budget_stops_every_connection_and_frees_them_in_turn() {
    let config = config(
        1,
        Credit::new(4, BIG),
        Credit::new(4, BIG),
        Credit::new(BIG, BIG),
    );
    let mut core = cores(1, &config).remove(0);
    let greedy = core.handle_connect(0).unwrap();
    let other = core.handle_connect(0).unwrap();
    let events: Vec<Event> = (0..4).map(|seq| join(seq, HuntId(1))).collect();
    assert_eq!(
        offer(&mut core, greedy, &frame(&events, 1)),
        FrameProgress::Done
    );
    let second = frame(&[join(9, HuntId(2))], 1);
    assert_eq!(
        core.readable(other),
        Readable::Yes,
        "a connection that holds nothing may read (a map request must get through)"
    );
    assert_eq!(offer(&mut core, other, &second), FrameProgress::Blocked);
    assert_eq!(core.readable(other), Readable::NotYet, "the shard is full");
    assert_eq!(write_all(&mut core, greedy).replies.len(), 4);
    assert_eq!(core.readable(other), Readable::Yes);
    assert_eq!(offer(&mut core, other, &second), FrameProgress::Done);
    assert_eq!(write_all(&mut core, other).replies.len(), 1);
}

#[test]
fn the_byte_budget_counts_bytes() {
    let one = credits_of(&frame(&[join(0, HuntId(1))], 1))[0];
    let config = config(
        1,
        Credit::new(100, one.bytes * 2),
        Credit::new(100, BIG),
        Credit::new(BIG, BIG),
    );
    let mut core = cores(1, &config).remove(0);
    let conn = core.handle_connect(0).unwrap();
    let events: Vec<Event> = (0..3).map(|seq| join(seq, HuntId(1))).collect();
    let frame = frame(&events, 1);
    assert_eq!(offer(&mut core, conn, &frame), FrameProgress::Blocked);
    assert_eq!(core.credit_held(), Credit::new(2, one.bytes * 2));
    write_all(&mut core, conn);
    assert_eq!(offer(&mut core, conn, &frame), FrameProgress::Done);
}

#[test]
fn the_mesh_share_stops_forwarding_until_the_owner_replies() {
    let config = config(
        2,
        Credit::new(100, BIG),
        Credit::new(100, BIG),
        Credit::new(2, BIG),
    );
    let mut cores = cores(2, &config);
    let conn = cores[0].handle_connect(0).unwrap();
    let remote = hunt_owned_by(2, 1, 0);
    let events: Vec<Event> = (0..3).map(|seq| join(seq, remote)).collect();
    let frame = frame(&events, 1);
    assert_eq!(offer(&mut cores[0], conn, &frame), FrameProgress::Blocked);
    assert_eq!(cores[0].mesh_credit_held(ShardId(1)).events, 2);
    assert_eq!(cores[0].readable(conn), Readable::NotYet);
    settle(&mut cores);
    assert_eq!(cores[0].mesh_credit_held(ShardId(1)), Credit::ZERO);
    assert_eq!(cores[0].readable(conn), Readable::Yes);
    assert_eq!(offer(&mut cores[0], conn, &frame), FrameProgress::Done);
    settle(&mut cores);
    let received = write_all(&mut cores[0], conn);
    assert_eq!(received.replies.len(), 3);
    assert_eq!(cores[1].stats().events_applied_for_peers, 3);
}

#[test]
fn each_partition_s_events_are_counted_by_its_owner_whichever_shard_received_them() {
    let config = config(
        2,
        Credit::new(100, BIG),
        Credit::new(100, BIG),
        Credit::new(100, BIG),
    );
    let mut cores = cores(2, &config);
    let conn = cores[0].handle_connect(0).unwrap();
    let (here, there, there_too) = (
        hunt_owned_by(2, 0, 0),
        hunt_owned_by(2, 1, 0),
        hunt_owned_by(2, 1, 1),
    );
    let events = [
        create(0, here),
        join(1, here),
        join(2, here),
        create(3, there),
        join(4, there),
        create(5, there_too),
    ];
    assert_eq!(
        offer(&mut cores[0], conn, &frame(&events, 1)),
        FrameProgress::Done
    );
    settle(&mut cores);
    assert_eq!(write_all(&mut cores[0], conn).replies.len(), events.len());
    let partitioner = placement(2).partitioner();
    let partition = |hunt| partitioner.partition_of(hunt).0;
    let mut expected: [BTreeMap<u32, u64>; 2] = Default::default();
    for p in 0..64u32 {
        expected[p as usize % 2].insert(p, 0);
    }
    *expected[0].get_mut(&partition(here)).unwrap() += 3;
    *expected[1].get_mut(&partition(there)).unwrap() += 2;
    *expected[1].get_mut(&partition(there_too)).unwrap() += 1;
    for (shard, core) in cores.iter().enumerate() {
        let counted: BTreeMap<u32, u64> = core
            .applied_by_partition()
            .map(|(p, applied)| (p.0, applied))
            .collect();
        assert_eq!(counted, expected[shard], "shard {shard}");
        let stats = core.stats();
        assert_eq!(
            counted.values().sum::<u64>(),
            stats.events_applied + stats.events_applied_for_peers,
            "shard {shard}: the partitions' counts add up to the shard's"
        );
    }
}

#[test]
fn fail_fast_answers_busy_instead_of_blocking() {
    let mut config = config(
        1,
        Credit::new(2, BIG),
        Credit::new(2, BIG),
        Credit::new(BIG, BIG),
    );
    config.fail_fast = true;
    let mut core = cores(1, &config).remove(0);
    let conn = core.handle_connect(0).unwrap();
    let events: Vec<Event> = (0..5).map(|seq| join(seq, HuntId(1))).collect();
    assert_eq!(
        offer(&mut core, conn, &frame(&events, 1)),
        FrameProgress::Done
    );
    let received = write_all(&mut core, conn);
    let busy = received
        .replies
        .iter()
        .filter(|reply| reply.outcome == Outcome::Busy)
        .count();
    assert_eq!((received.replies.len(), busy), (5, 3));
    assert_eq!(core.stats().busy_replies, 3);
}

#[test]
fn a_map_request_is_answered_whatever_the_budget() {
    let config = config(
        1,
        Credit::new(1, BIG),
        Credit::new(1, BIG),
        Credit::new(BIG, BIG),
    );
    let mut core = cores(1, &config).remove(0);
    let conn = core.handle_connect(0).unwrap();
    let events = [join(0, HuntId(1)), join(1, HuntId(1))];
    assert_eq!(
        offer(&mut core, conn, &frame(&events, 1)),
        FrameProgress::Blocked
    );
    let mut request = FrameBuilder::new();
    request
        .single::<Event>(FrameKind::MapRequest, 0, None)
        .unwrap();
    assert_eq!(offer(&mut core, conn, request.bytes()), FrameProgress::Done);
    let received = write_all(&mut core, conn);
    assert_eq!(received.maps, vec![1]);
}

// ---- malformed input ---------------------------------------------------------------------

#[test]
fn a_frame_with_one_bad_event_is_refused_whole_and_answered_after_the_work_in_flight() {
    let mut cores = cores(2, &ShardConfig::defaults(2));
    let conn = cores[0].handle_connect(0).unwrap();
    let remote = hunt_owned_by(2, 1, 0);
    assert_eq!(
        offer(&mut cores[0], conn, &frame(&[join(0, remote)], 1)),
        FrameProgress::Done
    );
    // A frame whose second record is garbage under a valid checksum.
    let mut builder = FrameBuilder::new();
    builder.begin(FrameKind::Events);
    builder.push(&join(1, HuntId(3))).unwrap();
    builder.push_archived(&[0xff; 48]).unwrap();
    builder.finish(1);
    let Ok(Decoded::Frame { header, body, .. }) = decode_frame(builder.bytes()) else {
        panic!("a whole frame")
    };
    let error = cores[0].handle_frame(0, conn, &header, body).unwrap_err();
    assert!(matches!(error, FrameError::InvalidArchive { index: 1, .. }));
    assert_eq!(cores[0].stats().events_applied, 0, "nothing of it applied");
    cores[0].handle_read_closed(0, conn, Err(error));
    let early = write_all(&mut cores[0], conn);
    assert_eq!(early.errors, 0, "not before the forwarded reply");
    assert!(!cores[0].write_finished(conn));
    settle(&mut cores);
    let late = write_all(&mut cores[0], conn);
    assert_eq!(late.replies.len(), 1);
    assert_eq!(late.errors, 1, "then the error frame, last");
    assert!(cores[0].write_finished(conn));
}

// ---- ownership ---------------------------------------------------------------------------

#[test]
fn a_forwarded_event_for_a_partition_that_moved_is_answered_moved() {
    let mut cores = cores(2, &ShardConfig::defaults(2));
    let conn = cores[0].handle_connect(0).unwrap();
    let hunt = hunt_owned_by(2, 1, 0);
    assert_eq!(
        offer(&mut cores[0], conn, &frame(&[join(0, hunt)], 1)),
        FrameProgress::Done
    );
    // While the event is on its way, its partition moves back to shard 0.
    let partition = placement(2).partitioner().partition_of(hunt);
    let moved = placement(2)
        .with_owner(partition, NodeId(0), ShardId(0))
        .unwrap();
    cores[1].handle_placement(0, moved).unwrap();
    settle(&mut cores);
    let received = write_all(&mut cores[0], conn);
    assert_eq!(
        received.replies[0].outcome,
        Outcome::Moved {
            node: 0,
            shard: 0,
            epoch: 2
        }
    );
    assert_eq!(cores[1].stats().events_moved, 1);
    assert_eq!(cores[1].stats().events_applied_for_peers, 0);
    cores[0].check_credit().unwrap();
    assert_eq!(cores[0].credit_held(), Credit::ZERO);
}

#[test]
fn a_stale_local_token_is_answered_moved_not_applied() {
    let mut core = ShardCore::new(ShardId(0), placement(1));
    let hunt = HuntId(5);
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&create(1, hunt)).unwrap();
    let archived = access_record::<crate::core::message::ArchivedEvent>(0, &bytes).unwrap();
    let Route::Local(local) = core.route(archived) else {
        panic!("a node's only shard owns every partition")
    };
    let partition = local.partition();
    let elsewhere = Placement::round_robin(64, 1)
        .unwrap()
        .with_owner(partition, NodeId(7), ShardId(0))
        .unwrap();
    core.handle_placement(0, elsewhere).unwrap();
    assert!(core.partition(partition).is_none());
    let reply = core.apply(local, archived);
    assert_eq!(
        reply.outcome,
        Outcome::Moved {
            node: 7,
            shard: 0,
            epoch: 2
        }
    );
    assert_eq!(core.route(archived), Route::Node(NodeId(7), ShardId(0)));
}

#[test]
fn a_client_behind_the_epoch_gets_the_new_map_once() {
    let mut core = ShardCore::new(ShardId(0), placement(1));
    let conn = core.handle_connect(0).unwrap();
    let newer = placement(1)
        .with_owner(PartitionId(3), NodeId(0), ShardId(0))
        .unwrap();
    core.handle_placement(0, newer).unwrap();
    offer(&mut core, conn, &frame(&[join(0, HuntId(1))], 1));
    offer(&mut core, conn, &frame(&[join(1, HuntId(1))], 1));
    let received = write_all(&mut core, conn);
    assert_eq!(received.maps, vec![2], "pushed once, with epoch 2");
    assert_eq!(received.replies.len(), 2);
    offer(&mut core, conn, &frame(&[join(2, HuntId(1))], 2));
    assert!(write_all(&mut core, conn).maps.is_empty());
}

// ---- stop ----------------------------------------------------------------------------------

#[test]
fn stop_answers_everything_admitted_and_refuses_the_rest_explicitly() {
    let config = config(
        2,
        Credit::new(6, BIG),
        Credit::new(6, BIG),
        Credit::new(BIG, BIG),
    );
    let mut cores = cores(2, &config);
    let conn = cores[0].handle_connect(0).unwrap();
    let (local, remote) = (hunt_owned_by(2, 0, 0), hunt_owned_by(2, 1, 0));
    let events: Vec<Event> = (0..10)
        .map(|seq| join(seq, if seq % 2 == 0 { local } else { remote }))
        .collect();
    let frame = frame(&events, 1);
    assert_eq!(offer(&mut cores[0], conn, &frame), FrameProgress::Blocked);
    cores[0].handle_stop(0);
    assert_eq!(cores[0].readable(conn), Readable::Never);
    assert!(cores[0].handle_connect(0).is_none(), "no new connections");
    assert_eq!(offer(&mut cores[0], conn, &frame), FrameProgress::Done);
    cores[0].handle_read_closed(0, conn, Ok(()));
    let mut received = write_all(&mut cores[0], conn);
    assert!(!cores[0].connections_drained(), "forwarded events are away");
    settle(&mut cores);
    let late = write_all(&mut cores[0], conn);
    received.replies.extend(late.replies);
    let by_seq: BTreeMap<u64, &Outcome> = received
        .replies
        .iter()
        .map(|reply| (reply.client_seq, &reply.outcome))
        .collect();
    assert_eq!(by_seq.len(), 10, "every event answered once");
    let shutting_down = Outcome::Error {
        error: EventError::ShuttingDown,
    };
    let refused = by_seq.values().filter(|o| ***o == shutting_down).count();
    assert_eq!(
        refused, 4,
        "the six admitted were applied, the rest refused"
    );
    assert!(cores[0].write_finished(conn));
    cores[0].handle_closed(0, conn, CloseReason::Finished);
    assert!(cores[0].connections_drained());
    cores[1].handle_stop(0);
    settle(&mut cores);
    assert!(cores.iter().all(ShardCore::drained), "both sides closed");
}

// ---- credit against a model ----------------------------------------------------------------

/// One step of a random schedule of two shards with two connections each.
#[derive(Clone, Debug)]
enum Step {
    /// A frame of events (by hunt index and kind) from connection `conn` of shard `shard`, or
    /// the connection's blocked frame offered again.
    Frame {
        shard: usize,
        conn: usize,
        hunts: Vec<u8>,
    },
    /// One batch from `from` to the other shard.
    Carry { from: usize },
    /// The connection's writer writes what is queued.
    Write { shard: usize, conn: usize },
    /// The socket goes away.
    Close { shard: usize, conn: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..2usize, 0..2usize, prop::collection::vec(0u8..16, 1..12))
            .prop_map(|(shard, conn, hunts)| Step::Frame { shard, conn, hunts }),
        3 => (0..2usize).prop_map(|from| Step::Carry { from }),
        3 => (0..2usize, 0..2usize).prop_map(|(shard, conn)| Step::Write { shard, conn }),
        1 => (0..2usize, 0..2usize).prop_map(|(shard, conn)| Step::Close { shard, conn }),
    ]
}

/// A frame the model offered, its events (sequence, credit, forwarded?) and how many of them
/// the model counted as admitted.
struct OnOffer {
    bytes: AlignedVec,
    events: Vec<(u64, Credit, bool)>,
    counted: usize,
}

/// The reference model of one connection's credit.
#[derive(Default)]
struct ModelConnection {
    /// Credit of every event admitted and not yet written (or given up).
    held: Credit,
    /// The part of it that is away at the other shard.
    away: Credit,
    /// Credit of events by sequence number, from their admission.
    admitted: HashMap<u64, Credit>,
    /// The frame on offer until it is done.
    blocked: Option<OnOffer>,
    closed: bool,
}

struct Model {
    conns: Vec<Vec<ModelConnection>>,
    ids: Vec<Vec<ConnectionId>>,
    seq: u64,
}

impl Model {
    /// The events of the frame on offer up to `done` are admitted.
    fn admit_progress(&mut self, shard: usize, conn: usize, done: usize) {
        let model = &mut self.conns[shard][conn];
        let offer = model.blocked.as_mut().expect("a frame on offer");
        for &(seq, credit, remote) in &offer.events[offer.counted..done] {
            model.held = model.held.plus(credit);
            if remote {
                model.away = model.away.plus(credit);
            }
            model.admitted.insert(seq, credit);
        }
        offer.counted = done;
    }
}

fn records_done(core: &ShardCore, id: ConnectionId) -> Option<usize> {
    core.connections
        .get(id)
        .and_then(|connection| connection.frame)
        .map(|frame| frame.records_done as usize)
}

fn check_model(cores: &[ShardCore], model: &Model) -> Result<(), TestCaseError> {
    for (shard, core) in cores.iter().enumerate() {
        if let Err(error) = core.check_credit() {
            return Err(TestCaseError::fail(error));
        }
        let mut total = Credit::ZERO;
        let mut away = Credit::ZERO;
        for (index, expected) in model.conns[shard].iter().enumerate() {
            let id = model.ids[shard][index];
            let held = core
                .connections
                .get(id)
                .map_or(Credit::ZERO, |connection| connection.credit.held());
            prop_assert_eq!(held, expected.held, "shard {} connection {}", shard, index);
            total = total.plus(expected.held);
            away = away.plus(expected.away);
        }
        prop_assert_eq!(core.credit_held(), total);
        prop_assert_eq!(core.mesh_credit_held(ShardId(1 - shard as u16)), away);
    }
    Ok(())
}

fn run_schedule(steps: Vec<Step>, budget: Credit, mesh: Credit) -> Result<(), TestCaseError> {
    let config = config(2, budget, budget, mesh);
    let mut cores = cores(2, &config);
    let map = placement(2);
    let hunts: Vec<HuntId> = (0..16).map(|i| HuntId(i * 7919)).collect();
    let mut model = Model {
        conns: (0..2)
            .map(|_| (0..2).map(|_| ModelConnection::default()).collect())
            .collect(),
        ids: (0..2)
            .map(|shard| {
                (0..2)
                    .map(|_| cores[shard].handle_connect(0).unwrap())
                    .collect()
            })
            .collect(),
        seq: 0,
    };
    for step in steps {
        match step {
            Step::Frame {
                shard,
                conn,
                hunts: picks,
            } => {
                let id = model.ids[shard][conn];
                if model.conns[shard][conn].closed {
                    continue;
                }
                if model.conns[shard][conn].blocked.is_none() {
                    let events: Vec<Event> = picks
                        .iter()
                        .map(|&pick| {
                            model.seq += 1;
                            join(model.seq, hunts[pick as usize])
                        })
                        .collect();
                    let bytes = frame(&events, 1);
                    let credits = credits_of(&bytes);
                    let described = events
                        .iter()
                        .zip(credits)
                        .map(|(event, credit)| {
                            let remote = map.route(event.hunt).1 != ShardId(shard as u16);
                            (event.client_seq, credit, remote)
                        })
                        .collect();
                    model.conns[shard][conn].blocked = Some(OnOffer {
                        bytes,
                        events: described,
                        counted: 0,
                    });
                } else if cores[shard].readable(id) != Readable::Yes {
                    continue;
                }
                let bytes = model.conns[shard][conn]
                    .blocked
                    .as_ref()
                    .unwrap()
                    .bytes
                    .clone();
                let progress = offer(&mut cores[shard], id, &bytes);
                let total = model.conns[shard][conn]
                    .blocked
                    .as_ref()
                    .unwrap()
                    .events
                    .len();
                match progress {
                    FrameProgress::Done => {
                        model.admit_progress(shard, conn, total);
                        model.conns[shard][conn].blocked = None;
                    }
                    FrameProgress::Blocked => {
                        let done = records_done(&cores[shard], id).expect("a blocked frame");
                        model.admit_progress(shard, conn, done);
                    }
                }
            }
            Step::Carry { from } => {
                let to = 1 - from;
                if let Some(MeshOutput::Batch(batch)) = cores[from].poll_mesh(ShardId(to as u16)) {
                    for (_, entry) in batch.replies().iter() {
                        let index = model.ids[to]
                            .iter()
                            .position(|id| *id == entry.connection)
                            .expect("a reply for a connection of the receiver");
                        let connection = &mut model.conns[to][index];
                        connection.away = connection.away.minus(entry.credit);
                        if connection.closed {
                            connection.held = connection.held.minus(entry.credit);
                        }
                    }
                    cores[to].handle_mesh(0, ShardId(from as u16), batch);
                }
            }
            Step::Write { shard, conn } => {
                let id = model.ids[shard][conn];
                let received = write_all(&mut cores[shard], id);
                let connection = &mut model.conns[shard][conn];
                for reply in received.replies {
                    prop_assert!(is_credited(&reply.outcome), "{:?}", reply.outcome);
                    let credit = connection
                        .admitted
                        .remove(&reply.client_seq)
                        .expect("a reply to an admitted event, once");
                    connection.held = connection.held.minus(credit);
                }
            }
            Step::Close { shard, conn } => {
                let id = model.ids[shard][conn];
                cores[shard].handle_closed(0, id, CloseReason::Broken);
                let connection = &mut model.conns[shard][conn];
                connection.closed = true;
                connection.blocked = None;
                connection.held = connection.away;
            }
        }
        check_model(&cores, &model)?;
    }
    // Everything comes back once the mesh settles and every connection closes.
    settle(&mut cores);
    for (core, ids) in cores.iter_mut().zip(&model.ids) {
        for id in ids {
            core.handle_closed(0, *id, CloseReason::Finished);
        }
    }
    settle(&mut cores);
    for core in &cores {
        prop_assert_eq!(core.credit_held(), Credit::ZERO);
        prop_assert!(core.connections_drained());
        if let Err(error) = core.check_credit() {
            return Err(TestCaseError::fail(error));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Credit against a reference model under random interleavings of frames, mesh batches,
    /// writes and closes, with budgets small enough that frames block part-way.
    #[test]
    fn credit_is_conserved_under_random_interleavings(
        steps in prop::collection::vec(step(), 1..120),
        events in 3u32..24,
        mesh in 1u32..12,
    ) {
        run_schedule(steps, Credit::new(events, BIG), Credit::new(mesh, BIG))?;
    }

    /// Each partition's events are applied in the order they were sent, whichever shard
    /// received them and whatever the interleaving: per hunt, the creation comes first and a
    /// player's second join is the one refused.
    #[test]
    fn per_partition_order_holds(
        hunts in prop::collection::vec(0u8..8, 4..40),
        carries in prop::collection::vec(any::<bool>(), 64),
    ) {
        let config = config(2, Credit::new(8, BIG), Credit::new(8, BIG), Credit::new(3, BIG));
        let mut cores = cores(2, &config);
        let conn = cores[0].handle_connect(0).unwrap();
        let mut seq = 0;
        let mut sent: Vec<Event> = Vec::new();
        for hunt in 0..8u64 {
            seq += 1;
            sent.push(create(seq, HuntId(hunt * 104_729)));
        }
        for pick in &hunts {
            for _ in 0..2 {
                seq += 1;
                let mut again = join(seq, HuntId(u64::from(*pick) * 104_729));
                again.player = PlayerId(1);
                sent.push(again);
            }
        }
        let mut received = Received::default();
        let mut carry_flags = carries.iter().cycle();
        for chunk in sent.chunks(5) {
            let bytes = frame(chunk, 1);
            while offer(&mut cores[0], conn, &bytes) == FrameProgress::Blocked {
                if *carry_flags.next().unwrap() {
                    carry(&mut cores, 0, 1);
                    carry(&mut cores, 1, 0);
                }
                let got = write_all(&mut cores[0], conn);
                received.replies.extend(got.replies);
                if cores[0].readable(conn) != Readable::Yes {
                    settle(&mut cores);
                }
            }
        }
        settle(&mut cores);
        received.replies.extend(write_all(&mut cores[0], conn).replies);
        prop_assert_eq!(received.replies.len(), sent.len());
        let outcome: HashMap<u64, &Outcome> =
            received.replies.iter().map(|r| (r.client_seq, &r.outcome)).collect();
        let mut joined: HashMap<u64, bool> = HashMap::new();
        for event in &sent {
            let expected = match event.kind {
                EventKind::CreateHunt(_) => Outcome::Accepted { score: 0 },
                _ if joined.insert(event.hunt.0, true).is_some() => {
                    Outcome::Rejected { reason: RejectReason::AlreadyJoined }
                }
                _ => Outcome::Accepted { score: 0 },
            };
            prop_assert_eq!(outcome[&event.client_seq], &expected, "event {}", event.client_seq);
        }
        // And the replies of one partition reach the client in the order it sent them.
        let map = placement(2);
        let mut last: HashMap<PartitionId, u64> = HashMap::new();
        let hunt_of: HashMap<u64, HuntId> = sent.iter().map(|e| (e.client_seq, e.hunt)).collect();
        for reply in &received.replies {
            let partition = map.route(hunt_of[&reply.client_seq]).0;
            let previous = last.insert(partition, reply.client_seq).unwrap_or(0);
            prop_assert!(previous < reply.client_seq, "{:?} out of order", partition);
        }
    }
}

// ---- timeouts ------------------------------------------------------------------------------

const MS: u64 = 1_000_000;

fn timed_config() -> ShardConfig {
    ShardConfig {
        idle_timeout_ns: 100 * MS,
        write_stall_ns: 50 * MS,
        ..ShardConfig::defaults(1)
    }
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout_and_only_then() {
    let mut core = ShardCore::with_config(ShardId(0), placement(1), timed_config());
    let quiet = core.handle_connect(0).unwrap();
    let busy = core.handle_connect(0).unwrap();
    core.handle_timeout(99 * MS);
    assert_eq!(core.poll_close(), None);
    offer(&mut core, busy, &frame(&[join(0, HuntId(1))], 1));
    core.handle_timeout(100 * MS);
    assert_eq!(core.poll_close(), Some((quiet, CloseReason::IdleTimeout)));
    assert_eq!(core.poll_close(), None, "the other has a reply queued");
    assert_eq!(core.readable(quiet), Readable::Never);
    core.handle_closed(100 * MS, quiet, CloseReason::IdleTimeout);
    assert_eq!(core.stats().connections_idle_closed, 1);
}

#[test]
fn replies_the_socket_does_not_take_close_the_connection_and_return_their_credit() {
    let mut core = ShardCore::with_config(ShardId(0), placement(1), timed_config());
    let conn = core.handle_connect(0).unwrap();
    offer(
        &mut core,
        conn,
        &frame(&[join(0, HuntId(1)), join(1, HuntId(1))], 1),
    );
    let mut out = FrameBuilder::new();
    assert!(core.poll_replies(conn, &mut out));
    core.handle_written(10 * MS, conn, 1); // a little progress, then none
    core.handle_timeout(20 * MS);
    core.handle_timeout(69 * MS);
    assert_eq!(core.poll_close(), None, "not yet stalled for 50 ms");
    core.handle_timeout(70 * MS);
    assert_eq!(core.poll_close(), Some((conn, CloseReason::WriteStalled)));
    assert_eq!(core.credit_held().events, 2);
    core.handle_closed(70 * MS, conn, CloseReason::WriteStalled);
    assert_eq!(core.credit_held(), Credit::ZERO);
    assert_eq!(core.stats().connections_write_stalled, 1);
    core.check_credit().unwrap();
}

#[test]
fn when_the_slots_are_full_the_longest_idle_connection_gives_way() {
    let mut core = ShardCore::with_config(ShardId(0), placement(1), timed_config());
    let max = crate::constants::CONNECTIONS_PER_SHARD_MAX;
    let ids: Vec<ConnectionId> = (0..max)
        .map(|i| core.handle_connect(i as u64).unwrap())
        .collect();
    // The oldest one is busy (a reply queued): the next-oldest idle one gives way.
    offer(&mut core, ids[0], &frame(&[join(0, HuntId(1))], 1));
    let newcomer = core
        .handle_connect(1_000)
        .expect("an idle connection gives way");
    assert_eq!(core.poll_close(), Some((ids[1], CloseReason::Evicted)));
    core.handle_closed(1_000, ids[1], CloseReason::Evicted);
    assert_ne!(newcomer, ids[1]);
    assert_eq!(core.connections_open(), max);
    // With every connection busy, a newcomer is refused.
    for id in ids.iter().skip(2).chain([&newcomer]) {
        offer(&mut core, *id, &frame(&[join(0, HuntId(1))], 1));
    }
    assert_eq!(core.handle_connect(2_000), None);
    assert_eq!(core.stats().connections_evicted, 1);
}

// ---- metrics counters ----------------------------------------------------------------------

/// Frames in `bytes`, as a client would read them.
fn frames_in(bytes: &[u8]) -> u64 {
    let mut rest = bytes;
    let mut frames = 0;
    while let Ok(Decoded::Frame { frame_len, .. }) = decode_frame(rest) {
        frames += 1;
        rest = &rest[frame_len..];
    }
    assert!(rest.is_empty(), "whole frames only");
    frames
}

#[test]
fn every_event_is_counted_once_by_kind_and_outcome_and_every_byte_by_direction() {
    use crate::core::shard::{KindIndex, OutcomeIndex};
    let config = config(
        2,
        Credit::new(BIG, BIG),
        Credit::new(BIG, BIG),
        Credit::new(BIG, BIG),
    );
    let mut cores = cores(2, &config);
    let conn = cores[0].handle_connect(0).unwrap();
    let (mine, theirs) = (hunt_owned_by(2, 0, 0), hunt_owned_by(2, 1, 0));
    let events = [
        create(1, mine),                                     // accepted on 0
        create(2, mine),                                     // rejected on 0: exists
        create(3, theirs),                                   // forwarded, accepted on 1
        join(4, hunt_owned_by(2, 1, 1)),                     // forwarded, rejected on 1
        event(5, mine, EventKind::Leaderboard { top_k: 3 }), // accepted on 0
    ];
    let sent = frame(&events, 1);
    assert_eq!(offer(&mut cores[0], conn, &sent), FrameProgress::Done);
    assert_eq!(
        cores[0].load().mesh_batches_queued,
        1,
        "two events forwarded in one batch"
    );
    settle(&mut cores);
    assert_eq!(cores[0].load().mesh_batches_queued, 0);
    let mut written = Vec::new();
    let mut out = FrameBuilder::new();
    while cores[0].poll_replies(conn, &mut out) {
        written.extend_from_slice(out.bytes());
        cores[0].handle_written(0, conn, out.len());
        out.clear(0);
    }
    let mut received = Received::default();
    parse(&written, &mut received);
    assert_eq!(received.replies.len(), events.len());

    let (zero, one) = (cores[0].counters(), cores[1].counters());
    let count = |tally: &crate::core::shard::EventTally, kind: KindIndex, outcome: OutcomeIndex| {
        tally.by_outcome[kind as usize][outcome as usize]
    };
    assert_eq!(
        count(&zero.events, KindIndex::CreateHunt, OutcomeIndex::Accepted),
        1
    );
    assert_eq!(
        count(&zero.events, KindIndex::CreateHunt, OutcomeIndex::Rejected),
        1
    );
    assert_eq!(
        count(&zero.events, KindIndex::Leaderboard, OutcomeIndex::Accepted),
        1
    );
    assert_eq!(
        count(&one.events, KindIndex::CreateHunt, OutcomeIndex::Accepted),
        1
    );
    assert_eq!(
        count(&one.events, KindIndex::Join, OutcomeIndex::Rejected),
        1
    );
    // Forwarded events are counted by their owner only: once across the shards.
    assert_eq!(
        zero.events.total() + one.events.total(),
        events.len() as u64
    );
    let reason = |tally: &crate::core::shard::EventTally, kind: KindIndex, reason: RejectReason| {
        tally.rejected[kind as usize][reason as usize - 1]
    };
    assert_eq!(
        reason(
            &zero.events,
            KindIndex::CreateHunt,
            RejectReason::HuntExists
        ),
        1
    );
    assert_eq!(
        reason(&one.events, KindIndex::Join, RejectReason::UnknownHunt),
        1
    );
    // The tallies agree with what the client read.
    for outcome in OutcomeIndex::ALL {
        let read = received
            .replies
            .iter()
            .filter(|reply| OutcomeIndex::of(&reply.outcome) == outcome)
            .count() as u64;
        let counted = zero.events.outcome_total(outcome) + one.events.outcome_total(outcome);
        assert_eq!(counted, read, "{outcome:?}");
    }
    // Bytes and frames, each way, as the client saw them.
    assert_eq!(zero.traffic.bytes_received, sent.len() as u64);
    assert_eq!(zero.traffic.bytes_sent, written.len() as u64);
    assert_eq!(zero.traffic.frames_sent, frames_in(&written));
    assert_eq!(one.traffic, crate::core::shard::Traffic::default());
}

#[test]
fn answers_without_applying_are_counted_where_they_are_decided() {
    use crate::core::shard::{KindIndex, OutcomeIndex};
    let mut config = config(
        1,
        Credit::new(2, BIG),
        Credit::new(2, BIG),
        Credit::new(BIG, BIG),
    );
    config.fail_fast = true;
    let mut core = cores(1, &config).remove(0);
    let conn = core.handle_connect(0).unwrap();
    let events: Vec<Event> = (0..5).map(|seq| join(seq, HuntId(1))).collect();
    assert_eq!(
        offer(&mut core, conn, &frame(&events, 1)),
        FrameProgress::Done
    );
    // Queued but not yet written: the load shows them.
    let load = core.load();
    assert!(
        load.reply_bytes_queued > 0 && load.connections_writing == 1,
        "{load:?}"
    );
    write_all(&mut core, conn);
    let tally = core.counters().events;
    assert_eq!(
        tally.by_outcome[KindIndex::Join as usize][OutcomeIndex::Busy as usize],
        3
    );
    assert_eq!(
        tally.by_outcome[KindIndex::Join as usize][OutcomeIndex::Rejected as usize],
        2
    );
    let load = core.load();
    assert_eq!((load.reply_bytes_queued, load.connections_writing), (0, 0));
    core.handle_stop(0);
    let late = frame(&[join(9, HuntId(1))], 1);
    offer(&mut core, conn, &late);
    assert_eq!(
        core.counters()
            .events
            .outcome_total(OutcomeIndex::ShuttingDown),
        1
    );
}

#[test]
fn the_time_a_frame_waits_for_credit_is_counted_until_it_goes_on() {
    let config = config(
        1,
        Credit::new(100, BIG),
        Credit::new(2, BIG),
        Credit::new(BIG, BIG),
    );
    let mut core = cores(1, &config).remove(0);
    let conn = core.handle_connect(0).unwrap();
    let events: Vec<Event> = (0..6).map(|seq| join(seq, HuntId(1))).collect();
    let sent = frame(&events, 1);
    let Ok(Decoded::Frame { header, body, .. }) = decode_frame(&sent) else {
        panic!("a whole frame")
    };
    let offer_at = |core: &mut ShardCore, now_ns: u64| {
        let progress = core.handle_frame(now_ns, conn, &header, body).unwrap();
        write_all(core, conn);
        progress
    };
    // Stopped at 1 µs, on again at 6 µs, stopped again, done at 10 µs: 5 + 4 µs waiting.
    assert_eq!(offer_at(&mut core, 1_000), FrameProgress::Blocked);
    assert_eq!(core.counters().credit_wait_ns, 0);
    assert_eq!(offer_at(&mut core, 6_000), FrameProgress::Blocked);
    assert_eq!(offer_at(&mut core, 10_000), FrameProgress::Done);
    assert_eq!(core.counters().credit_wait_ns, 9_000);
}

// ---- connection shares in the load -------------------------------------------------------

#[test]
fn a_connection_that_does_not_read_reaches_its_share_in_the_load() {
    let config = config(
        1,
        Credit::new(100, BIG),
        Credit::new(4, BIG),
        Credit::new(BIG, BIG),
    );
    let mut core = cores(1, &config).remove(0);
    let hog = core.handle_connect(0).unwrap();
    let reader = core.handle_connect(0).unwrap();
    let idle = core.load();
    assert_eq!(idle.connection_share, Credit::new(4, BIG));
    assert_eq!(
        (idle.connection_held_max, idle.connections_at_share),
        (Credit::ZERO, 0)
    );
    // The hog sends 10 events and never reads: 4 are admitted, and their replies wait.
    let hunt = HuntId(1);
    let hogged = frame(&(0..10).map(|seq| join(seq, hunt)).collect::<Vec<_>>(), 1);
    assert_eq!(offer(&mut core, hog, &hogged), FrameProgress::Blocked);
    // The reader's events are answered and written: it holds nothing once it has read.
    let read = frame(&[join(20, hunt), join(21, hunt)], 1);
    assert_eq!(offer(&mut core, reader, &read), FrameProgress::Done);
    let in_reader = core.load();
    assert_eq!(in_reader.connections_at_share, 1, "{in_reader:?}");
    write_all(&mut core, reader);
    let load = core.load();
    let hog_bytes: u32 = credits_of(&hogged)[..4].iter().map(|c| c.bytes).sum();
    assert_eq!(load.connection_held_max, Credit::new(4, hog_bytes));
    assert_eq!(load.connections_at_share, 1, "the hog, not the reader");
    assert_eq!(
        load.socket_held, load.connection_held_max,
        "the hog holds it all"
    );
    // Its socket goes: the credit comes back, and no connection is at its share.
    core.handle_closed(0, hog, CloseReason::Broken);
    let load = core.load();
    assert_eq!(
        (load.connection_held_max, load.connections_at_share),
        (Credit::ZERO, 0)
    );
}

#[test]
fn a_connection_waiting_for_the_shard_s_budget_is_not_at_its_share() {
    let config = config(
        1,
        Credit::new(4, BIG),
        Credit::new(100, BIG),
        Credit::new(BIG, BIG),
    );
    let mut core = cores(1, &config).remove(0);
    let conn = core.handle_connect(0).unwrap();
    let events: Vec<Event> = (0..10).map(|seq| join(seq, HuntId(1))).collect();
    assert_eq!(
        offer(&mut core, conn, &frame(&events, 1)),
        FrameProgress::Blocked
    );
    let load = core.load();
    assert_eq!(load.connection_held_max.events, 4);
    assert_eq!(load.socket_held.events, load.socket_capacity.events);
    assert_eq!(
        load.connections_at_share, 0,
        "its own share has room: the shard's budget stopped it"
    );
}

#[test]
fn a_share_full_in_bytes_is_at_its_share() {
    // Room for many events but, once one is held, not for another of the largest size.
    let share = Credit::new(100, crate::constants::EVENT_BYTES_MAX as u32 + 1);
    let config = config(1, Credit::new(100, BIG), share, Credit::new(BIG, BIG));
    let mut core = cores(1, &config).remove(0);
    let conn = core.handle_connect(0).unwrap();
    // One event admitted and answered, its reply not read: the next frame's event waits.
    assert_eq!(
        offer(&mut core, conn, &frame(&[join(0, HuntId(1))], 1)),
        FrameProgress::Done
    );
    let load = core.load();
    assert_eq!(load.connection_held_max.events, 1);
    assert_eq!(load.connections_at_share, 1, "{load:?}");
    assert_eq!(core.readable(conn), Readable::NotYet, "the reader agrees");
    write_all(&mut core, conn);
    assert_eq!(core.load().connections_at_share, 0);
    assert_eq!(core.readable(conn), Readable::Yes);
}
