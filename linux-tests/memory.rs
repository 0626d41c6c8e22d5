//! The node's worst-case memory sum (`constants::NodeMemory`) against a real node: a one-shard
//! node in this process is filled to its state limits (every hunt slot of every partition, every
//! player of every hunt, wrong-code counters for each player) and the process's resident memory
//! must grow by less than the sum `trove node` prints for one shard.
//!
//! The client's own threads and buffers live in this process too, so they count against the
//! node's sum: the check is stricter than the node alone needs.

use std::time::{Duration, Instant};

use trove::client::{self, ClientConfig, EventSender, Incoming, ReplyReceiver};
use trove::constants::{
    HUNTS_PER_PARTITION_MAX, NodeMemory, PLAYERS_PER_HUNT_MAX, TREASURES_PER_HUNT_MAX,
    WAYPOINTS_PER_HUNT_MAX,
};
use trove::core::ids::{HuntId, PlayerId, TreasureId};
use trove::core::message::{
    Event, EventKind, HuntSpec, Position, TreasureSpec, WaypointSpec, claim_code_hash,
};
use trove::host::affinity::allowed_cpus;
use trove::node::{Node, NodeConfig};

/// Partitions of the node: few enough that filling every one takes seconds, not minutes.
const PARTITIONS: u32 = 16;
/// Hunt ids offered per hunt slot: enough that every partition's slots fill (the ids spread
/// over partitions by hash), each surplus one rejected `HuntTableFull`.
const HUNT_IDS_PER_SLOT: u64 = 4;
/// How long the whole fill may take before the test gives up.
const FILL_TIME_MAX: Duration = Duration::from_secs(20);

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("/proc/self/status has a VmRSS line");
    kib * 1024
}

fn event(seq: u64, hunt: u64, player: u64, kind: EventKind) -> Event {
    Event {
        hunt: HuntId(hunt),
        player: PlayerId(player),
        client_session: 0,
        client_seq: seq,
        client_ts: 0,
        kind,
    }
}

/// The largest hunt a spec may describe: every waypoint and every treasure.
fn full_spec() -> HuntSpec {
    HuntSpec {
        waypoints: (0..WAYPOINTS_PER_HUNT_MAX as i32)
            .map(|w| WaypointSpec {
                position: Position {
                    lat_e7: 485_000_000 + w * 10_000,
                    lon_e7: 23_000_000,
                },
                radius_m: 50,
                points: 1,
            })
            .collect(),
        treasures: (0..TREASURES_PER_HUNT_MAX)
            .map(|t| TreasureSpec {
                code_hash: claim_code_hash(format!("code-{t}").as_bytes()),
                points: 10,
            })
            .collect(),
    }
}

/// Receives `expected` replies and returns their outcomes, as text, in arrival order.
fn outcomes(receiver: &mut ReplyReceiver, expected: usize, deadline: Instant) -> Vec<String> {
    let mut outcomes = Vec::with_capacity(expected);
    while outcomes.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(Incoming::Replies(frame)) => {
                outcomes.extend(frame.replies().map(|r| format!("{:?}", r.outcome)));
            }
            Ok(Incoming::NodeError { message, .. }) => panic!("the node refused: {message}"),
            Ok(Incoming::Closed { error, .. }) => panic!("the connection closed: {error:?}"),
            Err(error) => panic!(
                "{error:?} after {} of {expected} replies: the fill took over {FILL_TIME_MAX:?}",
                outcomes.len()
            ),
        }
    }
    outcomes
}

/// Creates hunts until every partition is full; returns the ids of those created.
fn fill_hunt_slots(
    sender: &mut EventSender,
    receiver: &mut ReplyReceiver,
    deadline: Instant,
) -> Vec<u64> {
    let offered = PARTITIONS as u64 * HUNTS_PER_PARTITION_MAX as u64 * HUNT_IDS_PER_SLOT;
    let spec = full_spec();
    for hunt in 0..offered {
        let kind = EventKind::CreateHunt(spec.clone());
        sender.send(&event(hunt, hunt, 1, kind)).unwrap();
    }
    sender.flush().unwrap();
    // One connection to one shard: replies come back in the order the events were sent.
    let outcomes = outcomes(receiver, offered as usize, deadline);
    assert!(
        outcomes
            .iter()
            .all(|o| o.starts_with("Accepted") || o.contains("HuntTableFull")),
        "{outcomes:?}"
    );
    (0..offered)
        .filter(|&hunt| outcomes[hunt as usize].starts_with("Accepted"))
        .collect()
}

#[test]
fn a_node_filled_to_its_limits_stays_inside_its_printed_memory_sum() {
    let cpu = allowed_cpus()[0];
    let before = resident_bytes();
    let mut config = NodeConfig::loopback(vec![cpu]);
    config.runtime.partitions = PARTITIONS;
    let node = Node::start(&config).expect("the node starts");
    let mut client_config = ClientConfig::new(node.addr());
    client_config.events_per_frame = 256;
    let (mut sender, mut receiver) = client::connect(&client_config).expect("the client connects");
    let deadline = Instant::now() + FILL_TIME_MAX;

    let hunts = fill_hunt_slots(&mut sender, &mut receiver, deadline);
    assert_eq!(
        hunts.len(),
        PARTITIONS as usize * HUNTS_PER_PARTITION_MAX,
        "every hunt slot of every partition is taken"
    );

    // Every player of every hunt joins, then presents a wrong code, which allocates its
    // wrong-code counters: the hunts' state at its largest.
    let per_hunt = 2 * PLAYERS_PER_HUNT_MAX;
    let expected = hunts.len() * per_hunt;
    let collector = std::thread::spawn(move || outcomes(&mut receiver, expected, deadline));
    // Seqs go on from the hunts' (the client's session names events by them: a seq used
    // again would be taken for a retry).
    let mut seq = PARTITIONS as u64 * HUNTS_PER_PARTITION_MAX as u64 * HUNT_IDS_PER_SLOT;
    for &hunt in &hunts {
        for player in 0..PLAYERS_PER_HUNT_MAX as u64 {
            seq += 1;
            sender
                .send(&event(seq, hunt, 100 + player, EventKind::Join))
                .unwrap();
        }
        for player in 0..PLAYERS_PER_HUNT_MAX as u64 {
            seq += 1;
            let kind = EventKind::Claim {
                treasure: TreasureId(0),
                code: "not-the-code".to_owned(),
            };
            sender.send(&event(seq, hunt, 100 + player, kind)).unwrap();
        }
    }
    sender.flush().unwrap();
    let outcomes = collector.join().unwrap();
    let joined = outcomes
        .iter()
        .filter(|o| o.starts_with("Accepted"))
        .count();
    let wrong = outcomes.iter().filter(|o| o.contains("WrongCode")).count();
    assert_eq!(
        (joined, wrong),
        (expected / 2, expected / 2),
        "every join accepted and every wrong code counted"
    );

    let growth = resident_bytes().saturating_sub(before);
    let sum = NodeMemory::of(PARTITIONS as usize, 1).total_bytes() as u64;
    drop(sender);
    node.stop();
    assert!(
        growth < sum,
        "resident memory grew by {} MiB, past the worst-case sum of {} MiB",
        growth >> 20,
        sum >> 20
    );
    println!(
        "resident memory grew by {} MiB for a worst-case sum of {} MiB",
        growth >> 20,
        sum >> 20
    );
}
