//! Live partition moves on a real cluster (issue 15): `trove node --cluster` processes on
//! loopback with an etcd of the test's own, under load from `trove bench --target` while a
//! cluster-aware client plays hunts whose every answer is checked against the model
//! (`support::hunts`): each acknowledged event applied exactly once and in its hunt's order,
//! one winner per treasure, every leaderboard the model's at the end.
//!
//! - drain a node, add a fourth, rebalance;
//! - 100 random single-partition moves (seeded; the seed is printed);
//! - the target killed mid-move: the move is abandoned, the source still serves the partition;
//! - the source paused mid-move: its partitions go offline, come back with it, nothing lost.
//!
//! A move is caught "mid-move" by pausing its target (SIGSTOP) first: the stream cannot finish,
//! so the partition stays `Migrating` until the test acts. Each test skips, saying so, when
//! `etcd` is not installed, bounds every wait, and stops what it started.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trove::client::{
    ClientConfig, ClusterClient, EventSender, Incoming, ReplyReceiver, connect, connect_cluster,
};
use trove::cluster::local::{EtcdProcess, NodeProcess};
use trove::cluster::placement::{OwnerState, Placement};
use trove::constants::HUNTS_PER_PARTITION_MAX;
use trove::core::ids::{HuntId, NodeId, PartitionId};
use trove::core::message::{Event, EventError, Outcome, OutcomeClass, Reply};
use trove::core::partition::Partitioner;

use support::cluster::{ClusterSpec, etcd_or_skip, kill_and_reap};
use support::hunts::{Model, Rng, World, seed_from_env};
use support::{COMMAND_WAIT, Spawned, one_at_a_time, run_bounded, stderr, stdout, trove};

const CLUSTER: ClusterSpec = ClusterSpec {
    name: "moves",
    partitions: 64,
    lease_ttl_s: 2,
};
/// Hunts spread over the 64 partitions, so that most moves carry some; numbered far from the
/// bench's (from 1), which runs on the same cluster.
const WORLD: World = World {
    first_hunt: 1 << 40,
    hunts: 96,
    players: 6,
    waypoints: 8,
    treasures: 8,
};
/// Hunts the background bench creates (`--hunts`; its ids are 1..=this). Its default (1000)
/// would fill most of the 64 partitions' hunt tables, and whether the checked client's hunts
/// still fit would depend on which set-up ran first: see `hunt_tables_hold_both_worlds`.
const BENCH_HUNTS: u64 = 256;
/// Events the checked client has in flight at once.
const BATCH: usize = 200;
/// How long a whole drain, join or rebalance may take.
const MOVES_WAIT: Duration = Duration::from_secs(90);
/// How long one reply may take (a held event waits for the flip or the abandon).
const REPLY_WAIT: Duration = Duration::from_secs(30);

/// The cluster's etcd, its nodes by id, and the background load.
struct Cluster {
    etcd: EtcdProcess,
    nodes: HashMap<u32, NodeProcess>,
}

impl Cluster {
    /// Three one-shard nodes, once every partition is placed and served.
    fn start() -> Option<Cluster> {
        let etcd = etcd_or_skip()?;
        let nodes = (1..=3)
            .map(|id| (id, CLUSTER.start_node(&etcd, id, &[])))
            .collect();
        let cluster = Cluster { etcd, nodes };
        cluster.wait_for(
            "a settled placement on 3 nodes",
            Duration::from_secs(30),
            |p| {
                p.owners()
                    .iter()
                    .all(|owner| owner.state == OwnerState::Serving)
            },
        );
        Some(cluster)
    }

    fn placement(&self) -> Option<Placement> {
        let placement = CLUSTER.read_view(&self.etcd)?.assignment?;
        Some((*placement).clone())
    }

    /// Waits until the placement in etcd satisfies `check`.
    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&Placement) -> bool,
    ) -> Placement {
        support::wait_until(what, limit, || match self.placement() {
            Some(placement) if check(&placement) => Ok(placement),
            seen => Err(format!("{:?}", seen.map(|p| p.counts()))),
        })
    }

    fn addr(&self, node: u32) -> SocketAddr {
        self.nodes[&node].addr.parse().unwrap()
    }

    /// `trove cluster ARGS` against this cluster, to its end.
    fn command(&self, args: &[&str]) -> (ExitStatus, String) {
        let output = run_bounded(&mut self.cluster_command(args), COMMAND_WAIT * 2);
        let text = format!("{}{}", stdout(&output), stderr(&output));
        println!("$ trove cluster {}\n{text}", args.join(" "));
        (output.status, text)
    }

    fn cluster_command(&self, args: &[&str]) -> Command {
        let mut command = trove();
        command.arg("cluster").args(args).args([
            "--etcd",
            &self.etcd.endpoint(),
            "--cluster-name",
            CLUSTER.name,
        ]);
        command
    }

    fn signal(&self, node: u32, signal: i32) {
        trove::cluster::local::signal(&self.nodes[&node].child, signal);
    }

    /// `trove bench --target` against node 1 in the background, open loop, for `seconds`.
    fn bench(&self, seconds: u32) -> Spawned {
        let target = self.nodes[&1].addr.clone();
        let duration = seconds.to_string();
        Spawned::start(trove().args([
            "bench",
            "--target",
            &target,
            "--rate",
            "20000",
            "--hunts",
            &BENCH_HUNTS.to_string(),
            "--duration",
            &duration,
            "--quiet",
        ]))
    }
}

/// The set-up of the bench and of the checked client race: both sets of hunts must fit in
/// every partition's hunt table whatever the order, or the checked client's hunt creations
/// may be refused (`HuntTableFull`) in one run and not the next.
#[test]
fn hunt_tables_hold_both_worlds() {
    let partitioner = Partitioner::new(CLUSTER.partitions).unwrap();
    let mut hunts = vec![0usize; CLUSTER.partitions as usize];
    for hunt in (1..=BENCH_HUNTS).chain(WORLD.hunt_ids()) {
        hunts[partitioner.partition_of(HuntId(hunt)).index()] += 1;
    }
    let (fullest, most) = hunts.iter().enumerate().max_by_key(|(_, n)| **n).unwrap();
    assert!(
        *most <= HUNTS_PER_PARTITION_MAX,
        "partition {fullest} would hold {most} hunts, more than its table's {HUNTS_PER_PARTITION_MAX}: lower BENCH_HUNTS"
    );
}

fn owner_node(placement: &Placement, partition: u32) -> NodeId {
    placement.owner(PartitionId(partition)).node
}

fn partitions_of(placement: &Placement, node: u32) -> usize {
    placement
        .owners()
        .iter()
        .filter(|owner| owner.node == NodeId(node))
        .count()
}

fn settled(placement: &Placement) -> bool {
    placement
        .owners()
        .iter()
        .all(|owner| owner.state == OwnerState::Serving)
}

/// What the checked client sent, in order, and each event's final answer by `client_seq`.
struct Played {
    events: Vec<Event>,
    outcomes: HashMap<u64, Outcome>,
    resent: u64,
}

/// How the checked client reaches the cluster.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// A cluster-aware client (`client::connect_cluster`), seeded with one node: it sends each
    /// event to its owner and follows `Moved`.
    Owners(SocketAddr),
    /// One connection to one node, which forwards what other nodes own: the client survives
    /// another node's death (its events come back `Unavailable` or `OutcomeUnknown`).
    OneNode(SocketAddr),
}

/// The checked client: plays the world's set-up, then batches of random check-ins and claims
/// until told to stop.
struct Players {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Played>,
}

impl Players {
    fn start(via: Via, seed: u64) -> Players {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || play(via, seed, &stopping));
        Players { stop, thread }
    }

    fn finish(self) -> Played {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the players' thread")
    }
}

/// A connection the checked client plays through.
enum Client {
    Owners(ClusterClient),
    OneNode(EventSender, ReplyReceiver),
}

impl Client {
    fn connect(via: Via) -> Client {
        match via {
            Via::Owners(seed) => Client::Owners(
                connect_cluster(&[seed], &ClientConfig::new(seed))
                    .expect("the checked client connects"),
            ),
            Via::OneNode(addr) => {
                let mut config = ClientConfig::new(addr);
                config.shard_aware = false;
                let (sender, receiver) = connect(&config).expect("the checked client connects");
                Client::OneNode(sender, receiver)
            }
        }
    }

    fn send(&mut self, event: &Event) {
        let sent = match self {
            Client::Owners(client) => client.send(event.clone()),
            Client::OneNode(sender, _) => sender.send(event),
        };
        sent.expect("the checked client sends");
    }

    /// The answers to the next `count` events, as they come.
    fn answers(&mut self, count: usize, mut take: impl FnMut(Reply)) {
        let mut taken = 0;
        while taken < count {
            match self {
                Client::Owners(client) => {
                    let reply = client.recv_timeout(REPLY_WAIT).unwrap_or_else(|error| {
                        panic!(
                            "no answer within {REPLY_WAIT:?}: {error}; {}",
                            client.describe()
                        )
                    });
                    take(reply);
                    taken += 1;
                }
                Client::OneNode(sender, receiver) => {
                    sender.flush().expect("the checked client flushes");
                    match receiver.recv_timeout(REPLY_WAIT) {
                        Ok(Incoming::Replies(frame)) => {
                            for reply in frame.replies() {
                                take(
                                    rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap(),
                                );
                                taken += 1;
                            }
                        }
                        Ok(Incoming::NodeError { message, .. }) => {
                            panic!("node refused the checked client: {message}")
                        }
                        Ok(Incoming::Closed { error, .. }) => {
                            panic!("the connection closed: {error:?}")
                        }
                        Err(error) => panic!("no answer within {REPLY_WAIT:?}: {error:?}"),
                    }
                }
            }
        }
    }

    fn resent(&self) -> u64 {
        match self {
            Client::Owners(client) => client.resent(),
            Client::OneNode(..) => 0,
        }
    }
}

fn play(via: Via, seed: u64, stop: &AtomicBool) -> Played {
    let mut client = Client::connect(via);
    let (mut rng, mut seq) = (Rng(seed), 0);
    let mut played = Played {
        events: Vec::new(),
        outcomes: HashMap::new(),
        resent: 0,
    };
    let set_up = WORLD.set_up_events(&mut seq);
    send_batch(&mut client, &set_up, &mut played);
    while !stop.load(Ordering::Relaxed) {
        let batch = WORLD.load(&mut rng, &mut seq, BATCH);
        send_batch(&mut client, &batch, &mut played);
    }
    let queries = WORLD.leaderboard_queries(&mut seq);
    send_batch(&mut client, &queries, &mut played);
    played.resent = client.resent();
    played
}

/// Sends `batch` and waits for every answer.
fn send_batch(client: &mut Client, batch: &[Event], played: &mut Played) {
    for event in batch {
        client.send(event);
    }
    client.answers(batch.len(), |reply| {
        let previous = played.outcomes.insert(reply.client_seq, reply.outcome);
        assert!(
            previous.is_none(),
            "event {} answered twice",
            reply.client_seq
        );
    });
    played.events.extend_from_slice(batch);
}

/// Whether `outcome` says its event was not applied (so the model must not apply it either).
fn not_applied(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Moved { .. }
            | Outcome::Busy
            | Outcome::Unavailable { .. }
            | Outcome::Error {
                error: EventError::ShuttingDown
            }
    )
}

/// Checks every answer against the model, in each hunt's order: returns how many events were
/// applied, and how many were answered without being applied, by answer.
fn check_against_model(played: &Played) -> (usize, BTreeMap<String, usize>) {
    let mut model = Model::new(&WORLD);
    let (mut applied, mut refused) = (0, BTreeMap::new());
    // Hunts with an event that may or may not have been applied (its owner died with it in
    // flight): the model cannot follow them past it.
    let mut unknown = std::collections::BTreeSet::new();
    for event in &played.events {
        let outcome = &played.outcomes[&event.client_seq];
        if unknown.contains(&event.hunt.0) {
            continue;
        }
        if let Outcome::Error {
            error: EventError::OutcomeUnknown,
        } = outcome
        {
            unknown.insert(event.hunt.0);
            *refused.entry("OutcomeUnknown".to_owned()).or_default() += 1;
            continue;
        }
        if not_applied(outcome) {
            let name = format!("{outcome:?}");
            let kind = name.split([' ', '{']).next().unwrap_or_default().to_owned();
            *refused.entry(kind).or_default() += 1;
            continue;
        }
        let expected = model.apply(event);
        match outcome {
            Outcome::Duplicate { original } => assert_eq!(
                Some(*original),
                OutcomeClass::of(&expected),
                "event {} of hunt {}: a duplicate of something the model did not do",
                event.client_seq,
                event.hunt.0
            ),
            _ => assert_eq!(
                outcome, &expected,
                "event {} ({:?}) of hunt {}: the cluster's answer is not the model's",
                event.client_seq, event.kind, event.hunt.0
            ),
        }
        applied += 1;
    }
    (applied, refused)
}

/// The players' results checked, with a line saying what they saw; returns the answers
/// given without applying, by kind.
fn check_players(players: Players) -> BTreeMap<String, usize> {
    let played = players.finish();
    let (applied, refused) = check_against_model(&played);
    println!(
        "checked client: {} events, {applied} applied as the model says, answered without \
         being applied: {refused:?}, {} re-sent after Moved",
        played.events.len(),
        played.resent
    );
    assert!(
        applied > 1_000,
        "too little was played to show anything: {applied}"
    );
    refused
}

/// Live moves to and from live nodes answer every event of a cluster-aware client, at once or
/// after the flip: none comes back `Moved` (after the client's re-sends) or `Unavailable`.
fn check_players_all_applied(players: Players) {
    let refused = check_players(players);
    assert!(
        refused.is_empty(),
        "answered without being applied: {refused:?}"
    );
}

fn wait_bench(mut bench: Spawned) {
    let status = bench
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the bench did not end: {}", bench.stdout()));
    assert!(
        status.success(),
        "the bench failed under moves: {}{}",
        bench.stdout(),
        bench.stderr()
    );
}

#[test]
fn drain_add_a_node_and_rebalance_under_load_lose_nothing() {
    let _serial = one_at_a_time();
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let seed = seed_from_env("TROVE_MOVES_SEED");
    let bench = cluster.bench(20);
    let players = Players::start(Via::Owners(cluster.addr(1)), seed);
    std::thread::sleep(Duration::from_secs(1));

    let (status, text) = cluster.command(&["drain", "3", "--timeout", "60"]);
    assert!(status.success(), "drain failed: {text}");
    assert!(
        text.contains("stopped"),
        "drain does not say node 3 can be stopped: {text}"
    );
    let drained = cluster.placement().unwrap();
    assert_eq!(
        partitions_of(&drained, 3),
        0,
        "node 3 still owns partitions"
    );
    assert!(
        settled(&drained),
        "a partition is left without a serving owner"
    );

    cluster
        .nodes
        .insert(4, CLUSTER.start_node(&cluster.etcd, 4, &[]));
    let joined = cluster.wait_for("node 4 given its share by moves", MOVES_WAIT, |p| {
        partitions_of(p, 4) > 0 && settled(p)
    });
    println!(
        "after the join: node 1 {}, node 2 {}, node 4 {}",
        partitions_of(&joined, 1),
        partitions_of(&joined, 2),
        partitions_of(&joined, 4)
    );

    let (status, text) = cluster.command(&["rebalance", "--moves-max", "4", "--timeout", "60"]);
    assert!(status.success(), "rebalance failed: {text}");
    let balanced = cluster.placement().unwrap();
    let counts: Vec<usize> = [1, 2, 4].map(|node| partitions_of(&balanced, node)).into();
    let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(most - least <= 1, "not even after rebalance: {counts:?}");
    assert!(settled(&balanced));

    check_players_all_applied(players);
    wait_bench(bench);
    // Drained, it owns nothing: it stops at once and cleanly.
    let mut node_3 = cluster.nodes.remove(&3).unwrap();
    node_3.stop();
    assert!(
        node_3
            .child
            .try_wait()
            .unwrap()
            .is_some_and(|status| status.success()),
        "the drained node did not stop cleanly"
    );
}

#[test]
fn a_hundred_random_moves_under_load_lose_nothing_and_keep_order() {
    let _serial = one_at_a_time();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let seed = seed_from_env("TROVE_MOVES_SEED");
    let mut rng = Rng(seed ^ 0x5eed);
    let bench = cluster.bench(30);
    let players = Players::start(Via::Owners(cluster.addr(1)), seed);
    let started = Instant::now();
    for round in 0..100 {
        let placement = cluster.placement().unwrap();
        let partition = rng.below(u64::from(CLUSTER.partitions)) as u32;
        let owner = owner_node(&placement, partition).0;
        let to = [1, 2, 3][(owner as usize + rng.below(2) as usize) % 3];
        let (status, text) = cluster.command(&[
            "move",
            &partition.to_string(),
            &to.to_string(),
            "--timeout",
            "30",
        ]);
        assert!(
            status.success(),
            "move {round} (partition {partition} to node {to}) failed: {text}"
        );
        let after = cluster.placement().unwrap();
        assert_eq!(owner_node(&after, partition), NodeId(to), "move {round}");
    }
    println!("100 moves in {:.1} s", started.elapsed().as_secs_f64());
    check_players_all_applied(players);
    wait_bench(bench);
}

/// Starts moving a partition of node 1 to node 3 with node 3 paused, so that the move cannot
/// finish; returns the partition and the `cluster move` running in the background, once etcd
/// shows the partition `Migrating`.
fn stalled_move_to_3(cluster: &Cluster) -> (u32, Spawned) {
    let placement = cluster.placement().unwrap();
    let partition = (0..CLUSTER.partitions)
        .find(|&p| owner_node(&placement, p) == NodeId(1))
        .expect("node 1 owns a partition");
    cluster.signal(3, libc::SIGSTOP);
    let mover = Spawned::start(&mut cluster.cluster_command(&[
        "move",
        &partition.to_string(),
        "3",
        "--timeout",
        "60",
    ]));
    cluster.wait_for("the move under way", Duration::from_secs(20), |p| {
        p.owner(PartitionId(partition))
            .state
            .migrating_to()
            .is_some()
    });
    (partition, mover)
}

/// The background `cluster move`'s exit, which must be a failure that says why.
fn failed_move(mut mover: Spawned) -> String {
    let status = mover
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("cluster move did not end: {}", mover.stdout()));
    let text = format!("{}{}", mover.stdout(), mover.stderr());
    println!("{text}");
    assert_eq!(
        status.code(),
        Some(1),
        "the move should have failed: {text}"
    );
    text
}

#[test]
fn a_target_killed_mid_move_is_abandoned_and_the_source_keeps_the_partition() {
    let _serial = one_at_a_time();
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let seed = seed_from_env("TROVE_MOVES_SEED");
    let players = Players::start(Via::OneNode(cluster.addr(1)), seed);
    std::thread::sleep(Duration::from_millis(500));
    let (partition, mover) = stalled_move_to_3(&cluster);
    let mut node_3 = cluster.nodes.remove(&3).unwrap();
    kill_and_reap(&mut node_3.child);
    let text = failed_move(mover);
    assert!(text.contains("abandoned"), "{text}");
    let after = cluster.wait_for("the partition back with node 1", MOVES_WAIT, |p| {
        p.owner(PartitionId(partition)).state == OwnerState::Serving
    });
    assert_eq!(owner_node(&after, partition), NodeId(1));
    check_players(players);
}

#[test]
fn a_source_paused_mid_move_loses_nothing_and_serves_again() {
    let _serial = one_at_a_time();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let seed = seed_from_env("TROVE_MOVES_SEED");
    let players = Players::start(Via::Owners(cluster.addr(2)), seed);
    std::thread::sleep(Duration::from_millis(500));
    let (partition, mut mover) = stalled_move_to_3(&cluster);
    // The source pauses past its lease; the target carries on.
    cluster.signal(1, libc::SIGSTOP);
    cluster.signal(3, libc::SIGCONT);
    cluster.wait_for("the paused source's partition offline", MOVES_WAIT, |p| {
        p.owner(PartitionId(partition)).state == OwnerState::Offline
    });
    cluster.signal(1, libc::SIGCONT);
    // The move was dropped with the source's lease; the pin may move the partition later.
    let status = mover
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("cluster move did not end: {}", mover.stdout()));
    println!(
        "cluster move ended {status}: {}{}",
        mover.stdout(),
        mover.stderr()
    );
    let after = cluster.wait_for("every partition served again", MOVES_WAIT, settled);
    println!(
        "partition {partition} is with node {} after the pause",
        owner_node(&after, partition).0
    );
    check_players(players);
}

/// `trove bench --cluster 2 --warmup 1` with `args`, which must succeed: its output.
fn bench_two_nodes(args: &[&str]) -> String {
    let mut command = trove();
    command
        .args(["bench", "--cluster", "2", "--warmup", "1"])
        .args(args);
    let output = run_bounded(&mut command, COMMAND_WAIT * 2);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    text
}

#[test]
fn bench_cluster_with_moves_reports_each_flip_pause() {
    let _serial = one_at_a_time();
    if support::installed("etcd").is_none() {
        return;
    }
    let text = bench_two_nodes(&["--moves", "5", "--duration", "4"]);
    assert!(
        text.contains("live moves during the run: 5 moved, 0 failed"),
        "{text}"
    );
    assert!(
        text.contains(
            "flip pause (events held for the partition at its target, 5 moves reported): p50"
        ),
        "{text}"
    );
}

#[test]
fn bench_cluster_with_a_drain_reports_the_throughput_around_it() {
    let _serial = one_at_a_time();
    let usage = run_bounded(
        trove().args(["bench", "--cluster", "1", "--drain"]),
        COMMAND_WAIT,
    );
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    assert!(
        stderr(&usage).contains("give --cluster 2 or more"),
        "{}",
        stderr(&usage)
    );
    if support::installed("etcd").is_none() {
        return;
    }
    // 64 partitions: node 2's half moves off it within the run's last two thirds.
    let text = bench_two_nodes(&["--partitions", "64", "--drain", "--duration", "9"]);
    let summary = text
        .lines()
        .find(|line| line.contains("drain of node 2:"))
        .unwrap_or_else(|| panic!("no drain summary: {text}"));
    assert!(summary.contains(", 0 failed, in "), "{summary}");
    assert!(summary.contains("it owns nothing now"), "{summary}");
    let rates = text
        .lines()
        .find(|line| line.contains("events/s (median of whole seconds): before the drain "))
        .unwrap_or_else(|| panic!("no throughput around the drain: {text}"));
    assert!(rates.contains("/s, during it "), "{rates}");
}
