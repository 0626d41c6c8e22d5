//! Live moves to nodes with a store (issue 15, "B makes the snapshot and events durable before
//! the flip"): two `trove node --cluster --data-dir` processes (`--durability sync`, the
//! default with a data dir) and an etcd of the test's own. A checked client plays hunts
//! through node 1 while partitions move from node 1 to node 2; node 2 is then SIGKILLed after
//! the flips and started again on its data dir, and node 1 (whose log still holds the moved
//! partitions' old state) after it. Every answer, before and after both restarts, is checked
//! against the model (`support::hunts`) in each hunt's order: nothing acknowledged is lost,
//! and no stale copy is served.
//!
//! The client is idle while a node is down, so no event is in flight at a kill and every
//! event must be answered applied. Skips, saying so, when `etcd` is not installed; every wait
//! is bounded, and every process it starts is stopped at the end.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trove::client::{EventSender, Incoming, ReplyReceiver, connect};
use trove::cluster::local::{EtcdProcess, NodeProcess};
use trove::cluster::placement::{OwnerState, Placement};
use trove::core::ids::{HuntId, NodeId, PartitionId};
use trove::core::message::{Event, Outcome, Reply};

use support::cluster::{ClusterSpec, client_of, etcd_or_skip, kill_and_reap, poll_for};
use support::hunts::{Model, Rng, World, leaderboard, seed_from_env};
use support::{
    COMMAND_WAIT, disk_scratch_dir, metric_sum, one_at_a_time, run_bounded, scrape_metrics, stderr,
    stdout, trove,
};

const CLUSTER: ClusterSpec = ClusterSpec {
    name: "moves-durable",
    partitions: 32,
    lease_ttl_s: 2,
};
const WORLD: World = World {
    first_hunt: 1 << 40,
    hunts: 48,
    players: 6,
    waypoints: 8,
    treasures: 8,
};
/// Partitions moved from node 1 to node 2.
const MOVED: usize = 3;
/// Events the checked client has in flight at once.
const BATCH: usize = 200;
/// Batches played after each restart.
const BATCHES_AFTER: usize = 8;
/// How long one batch's answers may take (a held event waits for its flip).
const REPLY_WAIT: Duration = Duration::from_secs(30);
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// Node `node_id` on its data dir under `data`. Node 1 (the source) snapshots every second,
/// so that its store forgets the partitions that left it; node 2 (the target) at the default
/// minute, so that what it recovers of the moved partitions comes from their installed
/// snapshots, not from snapshots of its own taken after the flips.
fn start_node(etcd: &EtcdProcess, node_id: u32, data: &Path) -> NodeProcess {
    let dir = data.join(format!("node-{node_id}"));
    let every_s = if node_id == 1 { "1" } else { "60" };
    let args = [
        "--data-dir",
        dir.to_str().unwrap(),
        "--snapshot-every-s",
        every_s,
    ];
    CLUSTER.start_node(etcd, node_id, &args)
}

/// The `/metrics` address `node` printed after its banner (read before the test reads its
/// other lines).
fn metrics_addr(node: &NodeProcess) -> SocketAddr {
    const LINE: &str = "trove node: metrics at http://";
    poll_for(SETTLE_WAIT, "the node's metrics address", || {
        node.lines
            .try_iter()
            .find_map(|line| line.strip_prefix(LINE)?.split('/').next()?.parse().ok())
    })
}

/// The sum over a scrape's shards of `trove_partition_moves_total` for `direction` and `step`.
fn moves_at(scrape: &prometheus_parse::Scrape, direction: &str, step: &str) -> f64 {
    let labels = [("direction", direction), ("step", step)];
    metric_sum(scrape, "trove_partition_moves_total", &labels)
}

/// What node 1 (the source) and node 2 (the target) serve on `/metrics` about the moves, once
/// node 2 has installed all `MOVED` of them: each was made durable at node 2 before it was
/// installed, and each flipped at node 1 with no reply left unknown.
fn check_moves_on_metrics(metrics: &HashMap<u32, SocketAddr>) {
    let moved = MOVED as f64;
    let target = support::wait_until("node 2's installs on /metrics", SETTLE_WAIT, || {
        let scrape = scrape_metrics(metrics[&2]);
        match moves_at(&scrape, "in", "installed") {
            installed if installed == moved => Ok(scrape),
            installed => Err(format!("{installed} installed")),
        }
    });
    let staged = moves_at(&target, "in", "staged");
    let durable = moves_at(&target, "in", "durable");
    assert!(
        staged >= durable && durable >= moved,
        "node 2: {staged} staged, {durable} durable, {moved} installed"
    );
    let source = support::wait_until("node 1's flips on /metrics", SETTLE_WAIT, || {
        let scrape = scrape_metrics(metrics[&1]);
        match moves_at(&scrape, "out", "flipped") {
            flipped if flipped == moved => Ok(scrape),
            flipped => Err(format!("{flipped} flipped")),
        }
    });
    let kept_back = metric_sum(&source, "trove_move_replies_kept_back_total", &[]);
    let unknown = metric_sum(&source, "trove_move_replies_unknown_total", &[]);
    println!("node 1 kept back {kept_back} replies for node 2's acknowledgements");
    assert_eq!(
        unknown, 0.0,
        "node 2 acknowledged every kept-back reply's event"
    );
}

/// The partitions node `node_id` has snapshot files of.
fn snapshotted(data: &Path, node_id: u32) -> BTreeSet<u32> {
    let dir = data.join(format!("node-{node_id}/shard-0/snapshots"));
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{dir:?}: {error}"));
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".snap")?.strip_prefix('p')?;
            stem.split_once('-')?.0.parse().ok()
        })
        .collect()
}

fn placement(etcd: &EtcdProcess) -> Option<Placement> {
    Some((*CLUSTER.read_view(etcd)?.assignment?).clone())
}

fn all_serving(placement: &Placement) -> bool {
    placement
        .owners()
        .iter()
        .all(|owner| owner.state == OwnerState::Serving)
}

fn partition_of(placement: &Placement, hunt: u64) -> PartitionId {
    placement.partitioner().partition_of(HuntId(hunt))
}

/// What the checked client sent, in order, and each event's answer by `client_seq`.
#[derive(Default)]
struct Played {
    events: Vec<Event>,
    outcomes: HashMap<u64, Outcome>,
}

/// The checked client's connection to one node, which forwards what other nodes own.
struct Conn {
    sender: EventSender,
    receiver: ReplyReceiver,
}

impl Conn {
    fn to(addr: &str) -> Conn {
        let (sender, receiver) = connect(&client_of(addr)).expect("the client connects");
        Conn { sender, receiver }
    }

    /// Sends `batch` and returns every answer by client sequence; panics on an answer
    /// missing past `REPLY_WAIT` or given twice.
    fn round_trip(&mut self, batch: &[Event]) -> HashMap<u64, Outcome> {
        for event in batch {
            self.sender.send(event).expect("the client sends");
        }
        self.sender.flush().expect("the client flushes");
        let deadline = Instant::now() + REPLY_WAIT;
        let mut outcomes = HashMap::new();
        while outcomes.len() < batch.len() {
            let left = batch.len() - outcomes.len();
            let wait = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{left} events unanswered within {REPLY_WAIT:?}"));
            match self.receiver.recv_timeout(wait) {
                Ok(Incoming::Replies(frame)) => {
                    for reply in frame.replies() {
                        let reply = rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap();
                        let earlier = outcomes.insert(reply.client_seq, reply.outcome);
                        assert!(
                            earlier.is_none(),
                            "event {} answered twice",
                            reply.client_seq
                        );
                    }
                }
                Ok(Incoming::NodeError { message, .. }) => panic!("the node refused: {message}"),
                Ok(Incoming::Closed { error, .. }) => panic!("the connection closed: {error:?}"),
                Err(error) => panic!("{left} events unanswered: {error:?}"),
            }
        }
        outcomes
    }
}

/// Sends `batch` on `conn` and records it and its answers.
fn send_batch(conn: &mut Conn, batch: &[Event], played: &mut Played) {
    played.outcomes.extend(conn.round_trip(batch));
    played.events.extend_from_slice(batch);
}

/// The checked client playing batches of check-ins and claims through one node until told
/// to stop; hands back what it played and where its generator stands.
struct Player {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Played, Rng, u64)>,
}

impl Player {
    fn start(addr: String, mut played: Played, mut rng: Rng, mut seq: u64) -> Player {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conn = Conn::to(&addr);
            while !stopping.load(Ordering::Relaxed) {
                let batch = WORLD.load(&mut rng, &mut seq, BATCH);
                send_batch(&mut conn, &batch, &mut played);
            }
            (played, rng, seq)
        });
        Player { stop, thread }
    }

    fn finish(self) -> (Played, Rng, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the player's thread")
    }
}

/// Waits until the node at `addr` answers a read-only query of each of `hunts` (so every
/// partition they are on is served, here or through a link): a leaderboard (or `UnknownHunt`
/// before the hunt exists), which changes nothing the model follows.
fn wait_served(addr: &str, hunts: &[u64]) {
    let queries: Vec<Event> = hunts
        .iter()
        .enumerate()
        .map(|(seq, hunt)| leaderboard(*hunt, seq as u64))
        .collect();
    let mut conn = Conn::to(addr);
    support::wait_until("the hunts served", SETTLE_WAIT, || {
        let outcomes = conn.round_trip(&queries);
        let unserved: Vec<&Outcome> = outcomes
            .values()
            .filter(|outcome| {
                matches!(
                    outcome,
                    Outcome::Error { .. }
                        | Outcome::Unavailable { .. }
                        | Outcome::Moved { .. }
                        | Outcome::Busy
                )
            })
            .collect();
        if unserved.is_empty() {
            return Ok(());
        }
        let seen = format!("{} not served, as {:?}", unserved.len(), unserved[0]);
        std::thread::sleep(Duration::from_millis(100));
        Err(seen)
    });
}

/// Kills node `id` with SIGKILL, waits for its partitions to go offline, and starts it again
/// on its data dir; returns it once every partition is served again, and what it printed
/// about its recovery.
fn kill_and_restart(
    etcd: &EtcdProcess,
    nodes: &mut HashMap<u32, NodeProcess>,
    id: u32,
    data: &Path,
) -> String {
    kill_and_reap(&mut nodes.get_mut(&id).unwrap().child);
    poll_for(
        Duration::from_secs(CLUSTER.lease_ttl_s + 10),
        "its partitions offline",
        || {
            let placement = placement(etcd)?;
            (placement.offline().count() > 0).then_some(())
        },
    );
    let node = start_node(etcd, id, data);
    let recovered = poll_for(SETTLE_WAIT, "the recovery line", || {
        node.lines
            .try_iter()
            .find(|line| line.contains("recovered"))
    });
    println!("node {id} again: {recovered}");
    nodes.insert(id, node);
    poll_for(SETTLE_WAIT, "every partition served again", || {
        placement(etcd).filter(all_serving)
    });
    recovered
}

/// The number before `word` in `line`.
fn number_before(line: &str, word: &str) -> u64 {
    let before = line.split(word).next().unwrap_or_default();
    before
        .rsplit(' ')
        .find(|token| !token.is_empty())
        .and_then(|token| token.parse().ok())
        .unwrap_or_else(|| panic!("no number before {word:?} in {line:?}"))
}

/// Checks every answer against the model, in each hunt's order: each must be the model's
/// (so applied, exactly once, on the state every earlier acknowledged event left). Returns
/// how many events of `hunts` were checked after the first `from` events.
fn check_against_model(played: &Played, hunts: &BTreeSet<u64>, from: usize) -> usize {
    let mut model = Model::new(&WORLD);
    let mut checked_after = 0;
    for (index, event) in played.events.iter().enumerate() {
        let outcome = &played.outcomes[&event.client_seq];
        let expected = model.apply(event);
        assert_eq!(
            outcome, &expected,
            "event {} ({:?}) of hunt {}: the cluster's answer is not the model's",
            event.client_seq, event.kind, event.hunt.0
        );
        if index >= from && hunts.contains(&event.hunt.0) {
            checked_after += 1;
        }
    }
    checked_after
}

#[test]
fn partitions_moved_to_a_durable_node_survive_its_kill_and_the_sources_restart() {
    let _serial = one_at_a_time();
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    // Not tmpfs-backed /dev/shm: the log writes with O_DIRECT, which tmpfs silently ignores.
    let scratch = disk_scratch_dir("moves-durable");
    let mut nodes: HashMap<u32, NodeProcess> = (1..=2)
        .map(|id| (id, start_node(&etcd, id, &scratch)))
        .collect();
    let before = poll_for(SETTLE_WAIT, "a settled placement on 2 nodes", || {
        CLUSTER
            .settled_placement(&etcd, 2)
            .map(|(_, placement)| placement)
    });
    let metrics: HashMap<u32, SocketAddr> = nodes
        .iter()
        .map(|(id, node)| (*id, metrics_addr(node)))
        .collect();
    let hunts: Vec<u64> = WORLD.hunt_ids().collect();
    wait_served(&nodes[&1].addr, &hunts);

    // The partitions to move: node 1's that hold some of the world's hunts.
    let mut moved: Vec<PartitionId> = hunts
        .iter()
        .map(|hunt| partition_of(&before, *hunt))
        .filter(|p| before.owner(*p).node == NodeId(1))
        .collect();
    moved.sort();
    moved.dedup();
    moved.truncate(MOVED);
    assert_eq!(moved.len(), MOVED, "node 1 owns partitions with hunts");
    let moved_hunts: BTreeSet<u64> = hunts
        .iter()
        .copied()
        .filter(|hunt| moved.contains(&partition_of(&before, *hunt)))
        .collect();

    let seed = seed_from_env("TROVE_MOVES_SEED");
    let mut seq = 0;
    let mut played = Played::default();
    let set_up = WORLD.set_up_events(&mut seq);
    send_batch(&mut Conn::to(&nodes[&1].addr), &set_up, &mut played);
    // Under the checked client's load, node 1's partitions move to node 2, one at a time.
    let player = Player::start(nodes[&1].addr.clone(), played, Rng(seed), seq);
    poll_for(
        SETTLE_WAIT,
        "node 1's snapshots of the partitions to move",
        || {
            let at_source = snapshotted(&scratch, 1);
            moved
                .iter()
                .all(|partition| at_source.contains(&partition.0))
                .then_some(())
        },
    );
    for partition in &moved {
        let mut command = trove();
        command.args([
            "cluster",
            "move",
            &partition.0.to_string(),
            "2",
            "--timeout",
            "30",
            "--etcd",
            &etcd.endpoint(),
            "--cluster-name",
            CLUSTER.name,
        ]);
        let output = run_bounded(&mut command, COMMAND_WAIT);
        let text = format!("{}{}", stdout(&output), stderr(&output));
        println!("$ trove cluster move {} 2\n{text}", partition.0);
        assert!(output.status.success(), "{text}");
        let after = placement(&etcd).unwrap();
        assert_eq!(after.owner(*partition).node, NodeId(2), "{text}");
    }
    check_moves_on_metrics(&metrics);
    // Their events are applied and logged at node 2 after the flips, past a snapshot round.
    std::thread::sleep(Duration::from_millis(1_500));
    let (mut played, mut rng, mut seq) = player.finish();
    let before_kill = played.events.len();
    let at_source = snapshotted(&scratch, 1);
    println!("node 1 has snapshots of partitions {at_source:?}");
    assert!(!at_source.is_empty(), "node 1 snapshots its own partitions");
    for partition in &moved {
        assert!(
            !at_source.contains(&partition.0),
            "node 1 forgot partition {}, which left it",
            partition.0
        );
    }

    // Node 2 dies with the moved partitions' state only in its store, and comes back.
    let recovered = kill_and_restart(&etcd, &mut nodes, 2, &scratch);
    assert!(
        number_before(&recovered, " snapshots") >= MOVED as u64,
        "each moved partition recovered from its installed snapshot: {recovered}"
    );
    let after = placement(&etcd).unwrap();
    for partition in &moved {
        assert_eq!(after.owner(*partition).node, NodeId(2), "{partition:?}");
    }
    wait_served(&nodes[&2].addr, &hunts);
    let mut conn = Conn::to(&nodes[&2].addr);
    for _ in 0..BATCHES_AFTER {
        let batch = WORLD.load(&mut rng, &mut seq, BATCH);
        send_batch(&mut conn, &batch, &mut played);
    }
    drop(conn);

    // Node 1's log still holds the moved partitions as they were before they left: it comes
    // back serving only its own, the moved ones through node 2.
    kill_and_restart(&etcd, &mut nodes, 1, &scratch);
    wait_served(&nodes[&1].addr, &hunts);
    let mut conn = Conn::to(&nodes[&1].addr);
    for _ in 0..BATCHES_AFTER {
        let batch = WORLD.load(&mut rng, &mut seq, BATCH);
        send_batch(&mut conn, &batch, &mut played);
    }
    let queries = WORLD.leaderboard_queries(&mut seq);
    send_batch(&mut conn, &queries, &mut played);
    drop(conn);

    let checked = check_against_model(&played, &moved_hunts, before_kill);
    println!(
        "checked client: {} events, every one applied as the model says; {checked} of the moved hunts' after node 2's restart (seed {seed})",
        played.events.len()
    );
    assert!(
        checked > 100,
        "too few events of the moved hunts after the restart to show anything: {checked}"
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&scratch);
}
