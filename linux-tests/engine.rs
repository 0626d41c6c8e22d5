//! The engine over real loopback sockets: a node in this process, clients on plain threads.
//!
//! What must hold: N events in, N replies out, each exactly once, in order per partition, with
//! one shard or two, with shard-aware clients and with clients that make the mesh carry the
//! traffic; a shard slowed on purpose fills its budget and blocks senders without losing
//! anything or growing; malformed input gets a clear error while other connections carry on.
//!
//! The tests run one at a time: one measures the process's resident memory, and nodes started
//! by other tests in the same process would move it.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use trove::client::{self, ClientConfig, EventSender, Incoming, ReplyReceiver};
use trove::core::codec::access_record;
use trove::core::codec::{Decoded, FrameBuilder, FrameKind, Records, decode_frame};
use trove::core::ids::{HuntId, PlayerId, ShardId, TreasureId};
use trove::core::message::{
    ArchivedErrorMessage, ArchivedOutcome, Event, EventKind, HuntSpec, TreasureSpec,
    claim_code_hash,
};
use trove::node::{Node, NodeReport};
use trove::runtime::config::{ApplyDelay, Budget};

use support::{in_process_node, one_at_a_time};

const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(node: &Node, shard_aware: bool) -> (EventSender, ReplyReceiver) {
    let mut config = ClientConfig::new(node.addr());
    config.shard_aware = shard_aware;
    config.events_per_frame = 32;
    client::connect(&config).expect("the client connects")
}

fn event(seq: u64, hunt: u64, player: u64, kind: EventKind) -> Event {
    Event {
        hunt: HuntId(hunt),
        player: PlayerId(player),
        client_session: 0,
        client_seq: seq,
        client_ts: seq,
        kind,
    }
}

fn spec() -> HuntSpec {
    HuntSpec {
        waypoints: vec![],
        treasures: (0..4)
            .map(|t| TreasureSpec {
                code_hash: claim_code_hash(format!("code-{t}").as_bytes()),
                points: 10,
            })
            .collect(),
    }
}

/// The outcome of each reply, as text, by sequence number; panics on a duplicate.
type Outcomes = BTreeMap<u64, String>;

fn collect(
    receiver: &mut ReplyReceiver,
    expected: usize,
    outcomes: &mut Outcomes,
    order: &mut Vec<u64>,
) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while outcomes.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(Incoming::Replies(frame)) => {
                for reply in frame.replies() {
                    let seq = reply.client_seq.to_native();
                    let previous = outcomes.insert(seq, format!("{:?}", reply.outcome));
                    assert!(previous.is_none(), "event {seq} was answered twice");
                    order.push(seq);
                }
            }
            Ok(Incoming::NodeError { message, .. }) => panic!("the node refused: {message}"),
            Ok(Incoming::Closed { error, .. }) => panic!("a connection closed: {error:?}"),
            Err(error) => panic!("{error:?} after {} of {expected} replies", outcomes.len()),
        }
    }
}

/// Creates `hunts` hunts with `players` players, then sends `rounds` rounds of claims and
/// check-ins over all of them; returns every event sent, by sequence number.
fn drive(
    node: &Node,
    shard_aware: bool,
    hunts: u64,
    players: u64,
    rounds: u64,
) -> (BTreeMap<u64, Event>, Outcomes, Vec<u64>) {
    let (mut sender, mut receiver) = connect(node, shard_aware);
    let mut sent = BTreeMap::new();
    let mut seq = 0;
    let send = |sender: &mut EventSender, event: Event, sent: &mut BTreeMap<u64, Event>| {
        sender.send(&event).unwrap();
        sent.insert(event.client_seq, event);
    };
    for hunt in 0..hunts {
        seq += 1;
        send(
            &mut sender,
            event(seq, hunt, 0, EventKind::CreateHunt(spec())),
            &mut sent,
        );
        for player in 1..=players {
            seq += 1;
            send(
                &mut sender,
                event(seq, hunt, player, EventKind::Join),
                &mut sent,
            );
        }
    }
    for round in 0..rounds {
        for hunt in 0..hunts {
            seq += 1;
            let player = 1 + (round + hunt) % players;
            let treasure = (round % 4) as u32;
            let kind = EventKind::Claim {
                treasure: TreasureId(treasure),
                code: format!("code-{treasure}"),
            };
            send(&mut sender, event(seq, hunt, player, kind), &mut sent);
        }
    }
    sender.flush().unwrap();
    let mut outcomes = Outcomes::new();
    let mut order = Vec::new();
    collect(&mut receiver, sent.len(), &mut outcomes, &mut order);
    sender.finish().unwrap();
    (sent, outcomes, order)
}

fn assert_every_event_answered_once_in_partition_order(
    sent: &BTreeMap<u64, Event>,
    outcomes: &Outcomes,
    order: &[u64],
) {
    assert_eq!(outcomes.len(), sent.len(), "every event answered");
    assert!(
        sent.keys().eq(outcomes.keys()),
        "the replies answer exactly the events sent"
    );
    // Events of one partition are applied in the order they were sent, so their replies come
    // back in that order; across partitions there is no order to keep.
    let partitioner = trove::core::partition::Partitioner::new(1024).unwrap();
    let mut last_seen: HashMap<u32, u64> = HashMap::new();
    for &seq in order {
        let partition = partitioner.partition_of(sent[&seq].hunt).0;
        if let Some(previous) = last_seen.insert(partition, seq) {
            assert!(
                previous < seq,
                "partition {partition}: reply {seq} came after {previous}"
            );
        }
    }
}

fn assert_one_winner_per_treasure(sent: &BTreeMap<u64, Event>, outcomes: &Outcomes) {
    let mut winners: HashMap<(HuntId, u32), u64> = HashMap::new();
    for (seq, outcome) in outcomes {
        if let EventKind::Claim { treasure, .. } = &sent[seq].kind {
            if outcome.starts_with("Claimed") {
                let previous = winners.insert((sent[seq].hunt, treasure.0), *seq);
                assert!(
                    previous.is_none(),
                    "treasure {treasure:?} of {:?} won twice",
                    sent[seq].hunt
                );
            } else {
                assert!(
                    outcome.starts_with("AlreadyClaimed"),
                    "claim {seq}: {outcome}"
                );
            }
        }
    }
    assert!(!winners.is_empty());
}

fn forwarded(report: &NodeReport) -> (u64, u64) {
    let forwarded = report
        .shards
        .iter()
        .map(|shard| shard.events_forwarded)
        .sum();
    let applied_for_peers = report
        .shards
        .iter()
        .map(|shard| shard.events_applied_for_peers)
        .sum();
    (forwarded, applied_for_peers)
}

#[test]
fn one_shard_answers_every_event_once_in_order() {
    let _serial = one_at_a_time();
    let node = in_process_node(1, |_| {});
    let (sent, outcomes, order) = drive(&node, true, 40, 5, 50);
    assert_every_event_answered_once_in_partition_order(&sent, &outcomes, &order);
    assert_one_winner_per_treasure(&sent, &outcomes);
    let report = node.stop();
    assert_eq!(forwarded(&report), (0, 0));
    assert_eq!(report.shards[0].events_applied as usize, sent.len());
}

#[test]
fn two_shards_with_a_shard_aware_client_cross_no_core() {
    let _serial = one_at_a_time();
    let node = in_process_node(2, |_| {});
    let (sent, outcomes, order) = drive(&node, true, 60, 5, 50);
    assert_every_event_answered_once_in_partition_order(&sent, &outcomes, &order);
    assert_one_winner_per_treasure(&sent, &outcomes);
    let report = node.stop();
    assert_eq!(
        forwarded(&report),
        (0, 0),
        "shard-aware clients reach every owner directly"
    );
    assert!(report.shards.iter().all(|shard| shard.events_applied > 0));
}

#[test]
fn two_shards_with_a_plain_client_carry_events_over_the_mesh() {
    let _serial = one_at_a_time();
    let node = in_process_node(2, |_| {});
    let (sent, outcomes, order) = drive(&node, false, 60, 5, 80);
    assert_every_event_answered_once_in_partition_order(&sent, &outcomes, &order);
    assert_one_winner_per_treasure(&sent, &outcomes);
    let report = node.stop();
    let (forwarded, applied_for_peers) = forwarded(&report);
    assert!(
        forwarded > sent.len() as u64 / 4,
        "only {forwarded} of {} events crossed the mesh",
        sent.len()
    );
    assert_eq!(
        forwarded, applied_for_peers,
        "every forwarded event was applied exactly once"
    );
    let applied: u64 = report
        .shards
        .iter()
        .map(|shard| shard.events_applied + shard.events_applied_for_peers)
        .sum();
    assert_eq!(applied as usize, sent.len());
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_slow_shard_fills_its_budget_blocks_senders_and_loses_nothing() {
    let _serial = one_at_a_time();
    let budget = Budget {
        shard_events: 512,
        connection_events: 512,
        mesh_events: 256,
        ..Budget::default()
    };
    let node = in_process_node(2, |config| {
        config.runtime.budget = budget;
        config.runtime.apply_delay = Some(ApplyDelay {
            shard: ShardId(1),
            per_event: Duration::from_micros(20),
        });
    });
    let (mut sender, mut receiver) = connect(&node, false);
    let hunts = 64u64;
    let mut seq = 0;
    let mut expected = 0usize;
    for hunt in 0..hunts {
        seq += 1;
        sender
            .send(&event(seq, hunt, 0, EventKind::CreateHunt(spec())))
            .unwrap();
        seq += 1;
        sender.send(&event(seq, hunt, 1, EventKind::Join)).unwrap();
        expected += 2;
    }
    // Far more events than the budgets hold, sent as fast as the node lets us.
    let total = 40_000usize;
    let collector = std::thread::spawn(move || {
        let mut outcomes = Outcomes::new();
        let mut order = Vec::new();
        collect(&mut receiver, expected + total, &mut outcomes, &mut order);
        outcomes
    });
    let mut rss_at_quarter = 0;
    for index in 0..total {
        seq += 1;
        let hunt = index as u64 % hunts;
        sender
            .send(&event(seq, hunt, 1, EventKind::Leaderboard { top_k: 3 }))
            .unwrap();
        if index == total / 4 {
            rss_at_quarter = resident_bytes();
        }
    }
    sender.flush().unwrap();
    let rss_at_end = resident_bytes();
    let outcomes = collector.join().unwrap();
    assert_eq!(
        outcomes.len(),
        expected + total,
        "every event answered, none lost"
    );
    assert!(
        outcomes
            .values()
            .all(|outcome| !outcome.contains("Busy") && !outcome.contains("Error"))
    );
    // (That no pool ever held more than its budget is `CreditPool`'s own assertion, and the
    // credit accounting is checked against a model in `core::shard`'s tests.)
    let report = node.stop();
    let waits: u64 = report
        .shards
        .iter()
        .map(|shard| shard.socket_credit_waits + shard.mesh_credit_waits)
        .sum();
    assert!(
        waits > 0,
        "the slow shard never made a sender wait: {report:?}"
    );
    assert!(
        report.shards.iter().any(
            |shard| shard.socket_inflight_peak.events == budget.shard_events
                || shard.mesh_inflight_peak.events == budget.mesh_per_source(2).events
        ),
        "no budget was ever full: {report:?}"
    );
    // Bounded queues: the last three quarters of the flood did not grow the process.
    let growth = rss_at_end.saturating_sub(rss_at_quarter);
    assert!(
        growth < 32 << 20,
        "resident memory grew by {} MiB while the node was saturated",
        growth >> 20
    );
}

#[test]
fn fail_fast_answers_busy_instead_of_waiting() {
    let _serial = one_at_a_time();
    let node = in_process_node(2, |config| {
        config.runtime.fail_fast = true;
        config.runtime.budget = Budget {
            shard_events: 64,
            connection_events: 64,
            mesh_events: 256,
            ..Budget::default()
        };
        config.runtime.apply_delay = Some(ApplyDelay {
            shard: ShardId(1),
            per_event: Duration::from_micros(50),
        });
    });
    let (mut sender, mut receiver) = connect(&node, false);
    let mut seq = 0;
    for hunt in 0..32 {
        seq += 1;
        sender
            .send(&event(seq, hunt, 0, EventKind::CreateHunt(spec())))
            .unwrap();
    }
    sender.flush().unwrap();
    let mut outcomes = Outcomes::new();
    let mut order = Vec::new();
    collect(&mut receiver, seq as usize, &mut outcomes, &mut order);
    for index in 0..20_000u64 {
        seq += 1;
        sender
            .send(&event(
                seq,
                index % 32,
                0,
                EventKind::Leaderboard { top_k: 1 },
            ))
            .unwrap();
    }
    sender.flush().unwrap();
    collect(&mut receiver, seq as usize, &mut outcomes, &mut order);
    let busy = outcomes
        .values()
        .filter(|outcome| outcome.contains("Busy"))
        .count();
    assert!(
        busy > 0,
        "a saturated fail-fast node answered nothing with Busy"
    );
    assert!(busy < outcomes.len(), "every event was refused");
    let report = node.stop();
    let counted: u64 = report.shards.iter().map(|shard| shard.busy_replies).sum();
    assert_eq!(counted as usize, busy);
}

/// Reads a raw connection to its end and returns the error frame it got, if any, and the
/// sequence numbers of the replies that came before it.
fn read_to_end(stream: &mut TcpStream) -> (Option<(u16, String)>, Vec<u64>) {
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .expect("the node closes the connection");
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    let mut rest: &[u8] = &aligned;
    let mut replies = Vec::new();
    let mut error = None;
    while let Ok(Decoded::Frame {
        header,
        body,
        frame_len,
    }) = decode_frame(rest)
    {
        let records = Records::parse(header.kind, body).unwrap();
        match header.kind {
            FrameKind::Replies => {
                for (index, record) in records.iter().enumerate() {
                    let reply =
                        access_record::<trove::core::message::ArchivedReply>(index as u32, record)
                            .unwrap();
                    replies.push(reply.client_seq.to_native());
                }
            }
            FrameKind::Error => {
                let message =
                    access_record::<ArchivedErrorMessage>(0, records.iter().next().unwrap())
                        .unwrap();
                error = Some((message.code.to_native(), message.message.to_string()));
            }
            kind => panic!("unexpected {kind:?} frame"),
        }
        rest = &rest[frame_len..];
    }
    assert!(rest.is_empty(), "the node sent a partial frame");
    (error, replies)
}

fn good_frame(first_seq: u64, events: u64) -> Vec<u8> {
    let mut frames = FrameBuilder::new();
    frames.begin(FrameKind::Events);
    for seq in first_seq..first_seq + events {
        frames
            .push(&event(seq, seq % 7, 1, EventKind::Leaderboard { top_k: 1 }))
            .unwrap();
    }
    frames.finish(1);
    frames.bytes().to_vec()
}

fn with_valid_header_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let hash = xxhash_rust::xxh3::xxh3_64(&frame[..24]);
    frame[24..32].copy_from_slice(&hash.to_le_bytes());
    frame
}

#[test]
fn malformed_input_gets_a_clear_error_and_other_connections_carry_on() {
    let _serial = one_at_a_time();
    let node = in_process_node(2, |_| {});
    let (mut sender, mut receiver) = connect(&node, false);
    let oversized = {
        let mut frame = good_frame(1, 1);
        frame[8..12].copy_from_slice(&(1u32 << 30).to_le_bytes());
        with_valid_header_checksum(frame)
    };
    let wrong_checksum = {
        let mut frame = good_frame(1, 3);
        let last = frame.len() - 20;
        frame[last] ^= 0xff;
        frame
    };
    let wrong_magic = {
        let mut frame = good_frame(1, 1);
        frame[0] = b'X';
        frame
    };
    let truncated = good_frame(1, 5)[..100].to_vec();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: trove\r\n\r\n".to_vec(),
            "bad magic",
        ),
        ("truncated frame", truncated, "ended inside a frame"),
        ("oversized length", oversized, "exceeds the limit"),
        ("wrong magic", wrong_magic, "bad magic"),
        ("wrong checksum", wrong_checksum, "checksum"),
    ];
    let mut seq = 1_000_000;
    for (name, bad, expected) in cases {
        // Two good events first: their replies must come back before the error.
        let mut raw = TcpStream::connect(node.addr()).unwrap();
        raw.write_all(&good_frame(7, 2)).unwrap();
        raw.write_all(&bad).unwrap();
        raw.shutdown(Shutdown::Write).unwrap();
        let (error, mut replies) = read_to_end(&mut raw);
        let (_, message) = error.unwrap_or_else(|| panic!("{name}: no error frame"));
        // Two hunts, maybe two shards: their replies may come back in either order.
        replies.sort_unstable();
        assert!(
            message.contains(expected),
            "{name}: `{message}` does not say `{expected}`"
        );
        assert_eq!(
            replies,
            vec![7, 8],
            "{name}: events accepted before the bad input were answered"
        );
        // Meanwhile a well-behaved client is still served.
        seq += 1;
        sender
            .send(&event(seq, 3, 1, EventKind::Leaderboard { top_k: 1 }))
            .unwrap();
        sender.flush().unwrap();
        let mut outcomes = Outcomes::new();
        collect(&mut receiver, 1, &mut outcomes, &mut Vec::new());
        assert!(
            outcomes.contains_key(&seq),
            "{name}: the other connection went unanswered"
        );
    }
    let report = node.stop();
    let rejected: u64 = report
        .shards
        .iter()
        .map(|shard| shard.frames_rejected)
        .sum();
    assert_eq!(rejected, 5);
}

#[test]
fn a_full_shard_closes_its_longest_idle_connection_for_a_new_one() {
    let _serial = one_at_a_time();
    // Every slot from one address: lift the per-source limit, which would refuse them first.
    let node = in_process_node(1, |config| {
        config.runtime.connections_per_source_max = trove::constants::CONNECTIONS_PER_SHARD_MAX
    });
    let addr: SocketAddr = node.shard_addrs()[0];
    let limit = trove::constants::CONNECTIONS_PER_SHARD_MAX;
    let mut open: Vec<TcpStream> = Vec::new();
    // A map request on each proves the connection is being served.
    let mut map_request = FrameBuilder::new();
    map_request
        .single::<Event>(FrameKind::MapRequest, 0, None)
        .unwrap();
    let served = |stream: &mut TcpStream| {
        stream.write_all(map_request.bytes()).unwrap();
        let mut header = [0u8; 32];
        stream.read_exact(&mut header).unwrap();
    };
    for _ in 0..limit {
        let mut stream = TcpStream::connect(addr).unwrap();
        served(&mut stream);
        open.push(stream);
    }
    let mut newcomer = TcpStream::connect(addr).unwrap();
    newcomer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    served(&mut newcomer);
    // The first one, idle the longest, was closed to make room (refusal, with an error frame,
    // is for a shard whose every connection has work in flight: see core::shard's tests).
    open[0]
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    open[0]
        .read_to_end(&mut rest)
        .expect("the node closed the longest-idle connection");
    drop(open);
    let report = node.stop();
    assert_eq!(report.shards[0].connections_evicted, 1);
    assert_eq!(report.shards[0].connections_refused, 0);
}

#[test]
fn stopping_answers_every_event_the_node_accepted() {
    let _serial = one_at_a_time();
    let node = in_process_node(2, |_| {});
    let (mut sender, mut receiver) = connect(&node, false);
    for hunt in 0..16 {
        sender
            .send(&event(hunt + 1, hunt, 0, EventKind::CreateHunt(spec())))
            .unwrap();
    }
    let mut seq = 16;
    let feeder = std::thread::spawn(move || {
        // Keep sending until the node stops reading and closes.
        loop {
            seq += 1;
            if sender
                .send(&event(
                    seq,
                    seq % 16,
                    0,
                    EventKind::Leaderboard { top_k: 1 },
                ))
                .is_err()
            {
                return;
            }
            if seq % 512 == 0 && sender.flush().is_err() {
                return;
            }
        }
    });
    // The client reads its replies all along, as a client must for the node to drain.
    let collector = std::thread::spawn(move || {
        let mut answered = 0u64;
        while let Some(incoming) = receiver.recv() {
            match incoming {
                Incoming::Replies(frame) => {
                    answered += frame
                        .replies()
                        .filter(|reply| !matches!(reply.outcome, ArchivedOutcome::Error { .. }))
                        .count() as u64
                }
                // What the feeder sent after the node stopped reading is counted, not lost.
                Incoming::NodeError { code, .. }
                    if code == trove::core::shard::ERROR_CODE_SHUTTING_DOWN => {}
                Incoming::NodeError { message, .. } => panic!("{message}"),
                Incoming::Closed { .. } => {}
            }
        }
        answered
    });
    std::thread::sleep(Duration::from_millis(300));
    let report = node.stop();
    let force_closed: u64 = report
        .shards
        .iter()
        .map(|shard| shard.connections_force_closed)
        .sum();
    assert_eq!(
        force_closed, 0,
        "a client that reads its replies is drained, not cut off"
    );
    let answered = collector.join().unwrap();
    feeder.join().unwrap();
    let applied: u64 = report
        .shards
        .iter()
        .map(|shard| shard.events_applied + shard.events_applied_for_peers)
        .sum();
    assert!(applied > 16, "the node applied only {applied} events");
    assert_eq!(
        answered, applied,
        "every applied event's reply reached the client before the close"
    );
}

#[test]
fn a_client_that_never_reads_its_replies_cannot_hold_the_node_at_shutdown() {
    let _serial = one_at_a_time();
    let node = in_process_node(1, |config| {
        config.runtime.budget = Budget {
            shard_events: 4096,
            connection_events: 4096,
            ..Budget::default()
        };
    });
    let mut raw = TcpStream::connect(node.addr()).unwrap();
    // Leaderboard replies are larger than the events asking for them: the socket buffers fill
    // with replies nobody reads, and the node's writer can no longer make progress.
    let mut frames = FrameBuilder::new();
    frames.begin(FrameKind::Events);
    frames
        .push(&event(1, 1, 0, EventKind::CreateHunt(spec())))
        .unwrap();
    frames.finish(1);
    raw.write_all(frames.bytes()).unwrap();
    raw.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut seq = 1;
    'flood: for _ in 0..2_000 {
        let mut frames = FrameBuilder::new();
        frames.begin(FrameKind::Events);
        for _ in 0..256 {
            seq += 1;
            frames
                .push(&event(seq, 1, 0, EventKind::Leaderboard { top_k: 16 }))
                .unwrap();
        }
        frames.finish(1);
        if raw.write_all(frames.bytes()).is_err() {
            break 'flood; // the node stopped reading: its budget is held by unread replies
        }
    }
    let report = node.stop();
    let shard = &report.shards[0];
    // Either the node cut the connection off after its grace period, or the kernel's buffers
    // held every reply and the node wrote them all: then every one of them must be readable.
    if shard.connections_force_closed == 0 {
        let replies = count_replies_until_closed(&mut raw);
        assert_eq!(
            replies, shard.events_applied,
            "replies were lost without the connection being cut off"
        );
    } else {
        assert_eq!(shard.connections_force_closed, 1);
    }
}

/// Reads a connection until it ends (cleanly or not) and counts the replies in whole frames.
/// Opens a connection that sends leaderboard queries of a hunt of 16 players (replies several
/// times larger than the queries) as fast as the node takes them and never reads a reply,
/// with a small receive buffer so that its replies back up into the node quickly; returns once
/// the node has stopped reading it.
fn never_reading_client(node: &Node, hunt: u64) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(&node.addr().into()).unwrap();
    let mut raw: TcpStream = socket.into();
    let mut frames = FrameBuilder::new();
    frames.begin(FrameKind::Events);
    frames
        .push(&event(1, hunt, 0, EventKind::CreateHunt(spec())))
        .unwrap();
    for player in 1..=16 {
        frames
            .push(&event(1 + player, hunt, player, EventKind::Join))
            .unwrap();
    }
    frames.finish(1);
    raw.write_all(frames.bytes()).unwrap();
    raw.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut seq = 100;
    for _ in 0..2_000 {
        let mut frames = FrameBuilder::new();
        frames.begin(FrameKind::Events);
        for _ in 0..256 {
            seq += 1;
            frames
                .push(&event(seq, hunt, 0, EventKind::Leaderboard { top_k: 16 }))
                .unwrap();
        }
        frames.finish(1);
        if raw.write_all(frames.bytes()).is_err() {
            break; // the node stopped reading: this connection holds its share
        }
    }
    raw
}

#[test]
fn clients_that_never_read_cannot_starve_the_others() {
    let _serial = one_at_a_time();
    let node = in_process_node(1, |_| {});
    let hogs: Vec<TcpStream> = (0..3)
        .map(|index| never_reading_client(&node, 1_000 + index))
        .collect();
    // A client that reads its replies still gets the map and every answer.
    let (sent, outcomes, order) = drive(&node, false, 16, 4, 20);
    assert_every_event_answered_once_in_partition_order(&sent, &outcomes, &order);
    drop(hogs);
    node.stop();
}

#[test]
fn a_map_request_is_answered_while_another_client_holds_the_whole_budget() {
    let _serial = one_at_a_time();
    let node = in_process_node(1, |config| {
        config.runtime.budget = Budget {
            shard_events: 256,
            connection_events: 256,
            ..Budget::default()
        };
    });
    let hog = never_reading_client(&node, 7);
    let mut stream = TcpStream::connect(node.addr()).unwrap();
    let fetched = client::fetch_map(&mut stream, Duration::from_secs(5));
    assert!(
        fetched.is_ok(),
        "no map while the budget is held: {fetched:?}"
    );
    drop((stream, hog));
    let report = node.stop();
    assert_eq!(
        report.shards[0].socket_inflight_peak.events, 256,
        "the other client held the whole budget"
    );
}

#[test]
fn idle_sockets_filling_every_slot_do_not_lock_clients_out() {
    let _serial = one_at_a_time();
    let node = in_process_node(1, |config| {
        config.runtime.idle_timeout = Duration::from_millis(500);
        // Every slot from one address: lift the per-source limit, which would refuse them first.
        config.runtime.connections_per_source_max = trove::constants::CONNECTIONS_PER_SHARD_MAX;
    });
    // Every connection slot of the shard, held by sockets that send nothing.
    let idle: Vec<TcpStream> = (0..trove::constants::CONNECTIONS_PER_SHARD_MAX)
        .map(|_| TcpStream::connect(node.addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // A new client is served at once: the longest-idle socket gives way.
    let (sent, outcomes, order) = drive(&node, false, 4, 2, 4);
    assert_every_event_answered_once_in_partition_order(&sent, &outcomes, &order);
    // And the idle ones are closed once the idle timeout has passed.
    std::thread::sleep(Duration::from_millis(1_500));
    let report = node.stop();
    let shard = &report.shards[0];
    assert!(shard.connections_evicted >= 1, "{shard:?}");
    assert!(
        shard.connections_evicted + shard.connections_idle_closed
            >= trove::constants::CONNECTIONS_PER_SHARD_MAX as u64,
        "{shard:?}"
    );
    assert_eq!(shard.connections_refused, 0);
    drop(idle);
}

fn count_replies_until_closed(stream: &mut TcpStream) -> u64 {
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while let Ok(read) = stream.read(&mut chunk) {
        if read == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..read]);
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    let mut rest: &[u8] = &aligned;
    let mut replies = 0;
    while let Ok(Decoded::Frame {
        header,
        body,
        frame_len,
    }) = decode_frame(rest)
    {
        if header.kind == FrameKind::Replies {
            replies += u64::from(Records::parse(header.kind, body).unwrap().count());
        }
        rest = &rest[frame_len..];
    }
    replies
}
