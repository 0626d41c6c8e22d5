//! The cluster-aware client against a real cluster on loopback (an etcd of the test's own, fast
//! and unsafe, and `trove node --cluster` processes, one shard each): every event sent through
//! `client::connect_cluster` answered exactly once, applied in order per hunt, none `Moved` at
//! the end, at 3 and 16 nodes; a client that starts from a stale map (epoch 0, every partition
//! on node 1) converges on the cluster's placement; and `trove bench --cluster 3` reports per-node counts that add up to the
//! events it sent. Each test skips, saying so, when `etcd` is not installed, bounds every wait,
//! and stops everything it started (the processes also die with the test process).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trove::client::proto::MapPush;
use trove::client::{
    ClientConfig, ClusterClient, ClusterRecvError, connect_cluster, connect_cluster_with_map,
    fetch_map,
};
use trove::cluster::local::{EtcdProcess, NodeProcess};
use trove::cluster::placement::{Owner, OwnerState, Placement};
use trove::core::ids::{Epoch, HuntId, NodeId, PlayerId, ShardId};
use trove::core::message::{Event, EventKind, HuntSpec, Outcome, RejectReason};

use support::cluster::{ClusterSpec, etcd_or_skip};
use support::{installed, one_at_a_time, run_bounded, scratch_dir, trove};

/// Partitions of the 3-node clusters; 16 nodes get `PARTITIONS * 4`, so that every node owns
/// some.
const PARTITIONS: u32 = 64;
const NAME: &str = "client";
const LEASE_TTL_S: u64 = 2;
/// Players who join each hunt after it is created.
const JOINS: u64 = 4;

/// This file's clusters (16 nodes get more partitions: see [`start_node`]).
const CLUSTER: ClusterSpec = ClusterSpec {
    name: NAME,
    partitions: PARTITIONS,
    lease_ttl_s: LEASE_TTL_S,
};

/// Node `node_id` of a cluster of `partitions` partitions.
fn start_node(etcd: &EtcdProcess, node_id: u32, partitions: u32) -> NodeProcess {
    let spec = ClusterSpec {
        partitions,
        ..CLUSTER
    };
    spec.start_node(etcd, node_id, &[])
}

/// Waits until `nodes` are registered, every partition is served, each node owns some, and
/// every node answers a map of that placement's epoch; returns the epoch.
fn wait_settled(etcd: &EtcdProcess, nodes: &[NodeProcess], limit: Duration) -> u32 {
    let deadline = Instant::now() + limit;
    let epoch = loop {
        for node in nodes {
            node.lines.try_iter().for_each(drop);
        }
        let settled = CLUSTER.read_view(etcd).and_then(|view| {
            let placement = view.assignment?;
            let owners = placement.owners();
            let all_own = nodes
                .iter()
                .all(|node| owners.iter().any(|o| o.node == NodeId(node.node_id)));
            let serving = owners.iter().all(|o| o.state == OwnerState::Serving);
            (view.nodes.len() == nodes.len() && all_own && serving).then(|| placement.epoch().get())
        });
        if let Some(epoch) = settled {
            break epoch;
        }
        assert!(
            Instant::now() < deadline,
            "no settled placement within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for node in nodes {
        let addr: SocketAddr = node.addr.parse().unwrap();
        loop {
            let fetched = trove::client::connect_stream(addr, Duration::from_secs(2))
                .and_then(|mut stream| fetch_map(&mut stream, Duration::from_secs(2)));
            if let Ok(push) = fetched {
                if push.map.epoch().get() >= epoch {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not serve epoch {epoch} within {limit:?}",
                node.node_id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    epoch
}

/// What an event is for, carried in its `client_ts` (echoed, never read by the node).
const CREATE: u64 = 0;
const JOIN: u64 = 1;
const JOIN_AGAIN: u64 = 2;
const LEADERBOARD: u64 = 3;

/// For each of `hunts` hunts (ids from `first`): create it, `JOINS` players join, player 1
/// joins again, and the leaderboard is asked for. Applied in order, each answer is known; out
/// of order, a join before its hunt exists (`UnknownHunt`) or the first join of player 1 being
/// the refused one shows it.
fn hunt_events(first: u64, hunts: u64, seq: &mut u64) -> Vec<Event> {
    let mut events = Vec::new();
    let mut push = |hunt: u64, player: u64, role: u64, kind: EventKind| {
        *seq += 1;
        events.push(Event {
            hunt: HuntId(hunt),
            player: PlayerId(player),
            client_session: 0,
            client_seq: *seq,
            client_ts: role,
            kind,
        });
    };
    for hunt in first..first + hunts {
        push(
            hunt,
            1000,
            CREATE,
            EventKind::CreateHunt(HuntSpec::default()),
        );
        for player in 1..=JOINS {
            push(hunt, player, JOIN, EventKind::Join);
        }
        push(hunt, 1, JOIN_AGAIN, EventKind::Join);
        push(hunt, 1, LEADERBOARD, EventKind::Leaderboard { top_k: 10 });
    }
    events
}

/// Whether `outcome` is what in-order, exactly-once application answers `event`.
fn as_in_order(event: &Event, outcome: &Outcome) -> bool {
    match event.client_ts {
        CREATE | JOIN => matches!(outcome, Outcome::Accepted { .. }),
        JOIN_AGAIN => matches!(
            outcome,
            Outcome::Rejected {
                reason: RejectReason::AlreadyJoined
            }
        ),
        LEADERBOARD => matches!(outcome, Outcome::Leaderboard { .. }),
        _ => false,
    }
}

/// Sends `events` in windows and checks every reply: each event answered exactly once, with
/// the outcome of in-order application, none `Moved`.
fn send_and_check(client: &mut ClusterClient, events: &[Event]) {
    let by_seq: BTreeMap<u64, &Event> = events.iter().map(|e| (e.client_seq, e)).collect();
    let mut answered: BTreeMap<u64, Outcome> = BTreeMap::new();
    let take = |client: &mut ClusterClient, answered: &mut BTreeMap<u64, Outcome>| match client
        .recv_timeout(Duration::from_secs(10))
    {
        Ok(reply) => {
            assert!(
                by_seq.contains_key(&reply.client_seq),
                "a reply to no event: {reply:?}"
            );
            let earlier = answered.insert(reply.client_seq, reply.outcome);
            assert!(
                earlier.is_none(),
                "event {} answered twice",
                reply.client_seq
            );
        }
        Err(ClusterRecvError::Timeout) => {
            panic!(
                "{} of {} events unanswered after 10 s ({})",
                events.len() - answered.len(),
                events.len(),
                client.describe()
            )
        }
        Err(ClusterRecvError::Client(error)) => panic!("the client failed: {error}"),
    };
    for event in events {
        client.send(event.clone()).expect("sent");
        while client.unanswered() >= 512 {
            take(client, &mut answered);
        }
    }
    client.flush().unwrap();
    while answered.len() < events.len() {
        take(client, &mut answered);
    }
    for (seq, outcome) in &answered {
        let event = by_seq[seq];
        assert!(
            !matches!(outcome, Outcome::Moved { .. }),
            "event {seq} ended Moved"
        );
        assert!(
            as_in_order(event, outcome),
            "event {seq} ({:?} of hunt {}) got {outcome:?}",
            event.kind,
            event.hunt.0
        );
    }
}

fn client_of(seed: &NodeProcess) -> ClusterClient {
    let seed: SocketAddr = seed.addr.parse().unwrap();
    let config = ClientConfig::new(seed);
    connect_cluster(&[seed], &config).expect("the client connects")
}

fn every_event_answered_once_in_order(count: u32, partitions: u32, settle: Duration) {
    let _serial = one_at_a_time();
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let nodes: Vec<NodeProcess> = (1..=count)
        .map(|id| start_node(&etcd, id, partitions))
        .collect();
    let epoch = wait_settled(&etcd, &nodes, settle);
    let mut client = client_of(&nodes[count as usize - 1]);
    assert_eq!(client.map().epoch().get(), epoch);
    assert_eq!(client.links(), count as usize, "one link per node's shard");
    let mut seq = 0;
    let events = hunt_events(1, 200, &mut seq);
    send_and_check(&mut client, &events);
    assert_eq!(client.resent(), 0, "nothing moved: nothing sent twice");
    client.close();
}

#[test]
fn three_nodes_every_event_answered_once_in_order_by_its_owner() {
    every_event_answered_once_in_order(3, PARTITIONS, Duration::from_secs(20));
}

#[test]
fn sixteen_nodes_every_event_answered_once_in_order_by_its_owner() {
    every_event_answered_once_in_order(16, PARTITIONS * 4, Duration::from_secs(60));
}

#[test]
fn a_client_with_a_stale_map_converges_on_the_cluster_placement() {
    let _serial = one_at_a_time();
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let nodes: Vec<NodeProcess> = (1..=3)
        .map(|id| start_node(&etcd, id, PARTITIONS))
        .collect();
    let epoch = wait_settled(&etcd, &nodes, Duration::from_secs(20));
    let seed: SocketAddr = nodes[0].addr.parse().unwrap();
    let current = fetch_map(
        &mut trove::client::connect_stream(seed, Duration::from_secs(2)).unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    // A map of epoch 0 (older than any placement) that gives node 1 every partition.
    let owners = (0..PARTITIONS)
        .map(|_| Owner {
            node: NodeId(1),
            shard: ShardId(0),
            part_epoch: Epoch(0),
            state: OwnerState::Serving,
        })
        .collect();
    let stale = Placement::from_owners(Epoch(0), owners)
        .unwrap()
        .with_nodes(current.map.node_address(NodeId(1)).cloned())
        .unwrap();
    let push = MapPush {
        map: stale,
        answering: NodeId(1),
    };
    let mut client = connect_cluster_with_map(seed, &ClientConfig::new(seed), push).unwrap();
    assert_eq!(client.links(), 1, "the stale map names node 1 only");
    // Two thirds of the partitions are not node 1's: their events are moved (or forwarded).
    let mut seq = 0;
    let events = hunt_events(1, 200, &mut seq);
    send_and_check(&mut client, &events);
    assert_eq!(
        client.map().epoch().get(),
        epoch,
        "the client took the cluster's map"
    );
    assert!(
        client.map().node_address(NodeId(3)).is_some(),
        "and knows where node 3 is"
    );
    eprintln!(
        "stale map: {} events sent again after Moved",
        client.resent()
    );
    // From now on events go straight to their owners: nothing is moved any more.
    let resent = client.resent();
    let more = hunt_events(1_000, 100, &mut seq);
    send_and_check(&mut client, &more);
    assert_eq!(
        client.resent(),
        resent,
        "converged: nothing moved after the new map"
    );
    assert_eq!(client.links(), 3, "a link to each node's shard");
    client.close();
}

#[test]
fn bench_cluster_reports_per_node_counts_that_add_up_to_the_events_sent() {
    let _serial = one_at_a_time();
    if installed("etcd").is_none() {
        return;
    }
    let out = scratch_dir("bench-cluster");
    let output = run_bounded(
        trove()
            .args([
                "bench",
                "--cluster",
                "3",
                "--partitions",
                "64",
                "--duration",
                "1",
                "--warmup",
                "0",
                "--connections",
                "1",
                "--closed",
                "32",
                "--hunts",
                "30",
                "--players",
                "4",
                "--quiet",
            ])
            .arg("--out")
            .arg(&out),
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sent: u64 = text
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("events: ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no events line in:\n{text}"));
    let per_node: Vec<u64> = text
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("node ")?;
            let (_, counts) = rest.split_once(": ")?;
            counts.split(" events applied").next()?.parse().ok()
        })
        .collect();
    assert_eq!(per_node.len(), 3, "{text}");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "every node applied some: {text}"
    );
    assert!(sent > 0, "{text}");
    assert_eq!(per_node.iter().sum::<u64>(), sent, "{text}");
    assert!(text.contains("inter-node messages per event"), "{text}");
    assert!(text.contains("CPU-seconds per million events"), "{text}");
    // summary.json holds the same account.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let nodes = summary["cluster"]["nodes"]
        .as_array()
        .expect("cluster.nodes");
    let applied: Vec<u64> = nodes
        .iter()
        .map(|node| node["events_applied"].as_u64().unwrap())
        .collect();
    assert_eq!(applied, per_node, "summary.json's cluster.nodes");
    assert!(
        summary["cluster"]["cpu_seconds_per_million_events"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}
