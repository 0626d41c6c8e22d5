//! `trove cluster move|drain|rebalance` against a real etcd and real nodes: their usage errors
//! name what exists and exit 2, a move to where a partition already is pins it and exits 0,
//! `--moves-max` lands in the cluster's settings, and a drain with nowhere to go fails with the
//! reason; `rebalance --by load` moves a hot partition, not its cold neighbours; and a node's
//! control thread puts the move reports its shards send it as `moves/<p>`. The moves themselves under load are `cluster_moves.rs`'s. Each test skips,
//! saying so, when `etcd` is not installed, and stops everything it started.

#[path = "support/mod.rs"]
mod support;

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use trove::cluster::control::{ControlConfig, ControlHandle};
use trove::cluster::coordinator::CoordinatorConfig;
use trove::cluster::keys::{ClusterKeys, MoveState, NodeInfo, PinRecord};
use trove::core::ids::{Epoch, HuntId, NodeId, PartitionId, PlayerId, ShardId};
use trove::core::message::{Event, EventKind, HuntSpec};
use trove::core::partition::Partitioner;
use trove::core::shard::moves::{MoveReport, MoveStep};

use support::cluster::{ClusterSpec, Nodes, answers, client_of, etcd_or_skip, poll_for, wait_for};
use support::{COMMAND_WAIT, run_bounded, trove};

const PARTITIONS: u32 = 64;
const NAME: &str = "commands";
const CLUSTER: ClusterSpec = ClusterSpec {
    name: NAME,
    partitions: PARTITIONS,
    lease_ttl_s: 2,
};

fn cluster_command(etcd: &str, args: &[&str]) -> Output {
    let mut command = trove();
    command
        .arg("cluster")
        .args(args)
        .args(["--cluster", etcd, "--cluster-name", NAME]);
    run_bounded(&mut command, COMMAND_WAIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts `output` is a usage error (exit 2) whose one line on stderr contains `expected`.
fn assert_usage_error(output: &Output, expected: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn bad_arguments_are_usage_errors_naming_what_exists_and_a_move_in_place_pins_it() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let endpoint = etcd.endpoint();
    let mut nodes = Nodes::start(&CLUSTER, &etcd, 2);
    let (_, placement) = wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 2)
    });

    let output = cluster_command(&endpoint, &["move", "999", "1"]);
    assert_usage_error(
        &output,
        "partition 999 does not exist: the cluster has 64 partitions (0 to 63)",
    );
    let output = cluster_command(&endpoint, &["move", "0", "7"]);
    assert_usage_error(
        &output,
        "node 7 is not registered in this cluster; registered nodes: 1 (1 shards), 2 (1 shards)",
    );
    let output = cluster_command(&endpoint, &["move", "0", "1:5"]);
    assert_usage_error(&output, "node 1 runs 1 shards (0 to 0); it has no shard 5");
    let output = cluster_command(&endpoint, &["drain", "x"]);
    assert_usage_error(&output, "is not NODE[:SHARD]");
    let output = cluster_command(&endpoint, &["drain", "1:0"]);
    assert_usage_error(&output, "drain takes a node, not a shard");
    let output = cluster_command(&endpoint, &["rebalance", "--moves-max", "0"]);
    assert_usage_error(&output, "--moves-max 0: give 1 to");
    let output = cluster_command(&endpoint, &["rebalance", "--by", "load", "--sample-s", "0"]);
    assert_usage_error(&output, "--sample-s 0: give 1 to");

    // A move to where the partition is: nothing moves, but it is pinned there, and the
    // settings take --moves-max.
    let owner = *placement.owner(PartitionId(5));
    let target = format!("{}:{}", owner.node.0, owner.shard.0);
    let output = cluster_command(&endpoint, &["move", "5", &target, "--moves-max", "3"]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("partition 5 is on"), "{stdout}");
    let view = CLUSTER.read_view(&etcd).expect("etcd answers");
    assert_eq!(
        view.pins.get(&5),
        Some(&PinRecord {
            node: owner.node.0,
            shard: Some(owner.shard.0)
        })
    );
    assert_eq!(view.moves_max(), 3);
    assert_eq!(
        view.assignment.unwrap().epoch(),
        placement.epoch(),
        "nothing was moved"
    );
}

#[test]
fn a_drain_with_nowhere_to_go_fails_saying_why_and_etcd_down_is_exit_1() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let endpoint = etcd.endpoint();
    let mut nodes = Nodes::start(&CLUSTER, &etcd, 1);
    wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 1)
    });
    let output = cluster_command(&endpoint, &["drain", "1", "--timeout", "5"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} owns {PARTITIONS} partitions and no other live, non-drained node could take them",
            NodeId(1)
        )),
        "{stderr}"
    );
    let view = CLUSTER.read_view(&etcd).expect("etcd answers");
    assert!(view.drains.is_empty(), "nothing was drained");

    let output = cluster_command("http://127.0.0.1:9", &["move", "0", "1"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is etcd running there?"), "{stderr}");
}

#[test]
fn a_drain_starts_moves_off_the_node_and_status_shows_it_drained() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let endpoint = etcd.endpoint();
    let mut nodes = Nodes::start(&CLUSTER, &etcd, 2);
    wait_for(&mut nodes, Duration::from_secs(15), "placement", |_| {
        CLUSTER.settled_placement(&etcd, 2)
    });
    let output = cluster_command(&endpoint, &["drain", "2", "--timeout", "4"]);
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("node 2 drained (its registration at revision"),
        "{stdout}"
    );
    // A move seen under way, or already done when first looked at.
    assert!(
        stdout.contains(": moving from node 2 shard 0 to node 1 shard 0 (epoch")
            || stdout.contains(": moved to node 1 shard 0"),
        "the controller started moves: {stdout}"
    );
    // Whether the moves finish within the timeout depends on the node's shards; the exit code
    // and the summary must agree either way.
    let summary = stdout
        .lines()
        .find(|line| line.contains(" moved, ") && line.contains(" failed, in "))
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    let failed_none = summary.contains(" 0 failed");
    assert_eq!(
        output.status.code(),
        Some(if failed_none { 0 } else { 1 }),
        "{stdout}"
    );
    if failed_none {
        assert!(
            stdout.contains("node 2 owns nothing now: it can be stopped"),
            "{stdout}"
        );
    } else {
        assert!(
            stdout.contains("partition "),
            "the failures are named: {stdout}"
        );
    }
    let status = cluster_command(&endpoint, &["status"]);
    let status = text(&status.stdout);
    assert!(status.contains("drained: node 2"), "{status}");
}

#[test]
fn the_control_thread_puts_its_shards_move_reports_in_etcd() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let coordinator = CoordinatorConfig {
        keys: ClusterKeys::new(NAME).unwrap(),
        node: NodeId(1),
        info: NodeInfo {
            address: "127.0.0.1".into(),
            port: 1,
            shard_ports: vec![2],
            version: "test".into(),
            metrics: None,
        },
        partitions: PARTITIONS,
        lease_ttl_s: 2,
        poll_ns: 250_000_000,
        settle_ns: 200_000_000,
    };
    let config = ControlConfig {
        endpoints: vec![etcd.endpoint()],
        coordinator,
    };
    let (reports, received) = flume::bounded(4);
    let control = ControlHandle::start(config, Box::new(|_, _, _| {}), received).expect("starts");
    let report = |step| MoveReport {
        partition: PartitionId(3),
        part_epoch: Epoch(40),
        to: NodeId(2),
        to_shard: ShardId(0),
        step,
    };
    let ready = MoveStep::Ready {
        snapshot_bytes: 1_000,
        events_streamed: 12,
    };
    reports.try_send(report(ready)).expect("room for a report");
    let record = poll_for(Duration::from_secs(10), "moves/3 ready", || {
        let view = CLUSTER.read_view(&etcd)?;
        view.moves.get(&3).cloned()
    });
    assert_eq!(record.part_epoch, 40);
    assert_eq!(record.from.0, 1);
    assert_eq!(record.to, (2, 0));
    assert_eq!(
        record.state,
        MoveState::Ready {
            snapshot_bytes: 1_000,
            events_streamed: 12
        }
    );
    let released = MoveStep::Released {
        flipped: true,
        events_held: 4,
        pause_ns: 900_000,
    };
    reports
        .try_send(report(released))
        .expect("room for a report");
    let record = poll_for(Duration::from_secs(10), "moves/3 released", || {
        let view = CLUSTER.read_view(&etcd)?;
        view.moves
            .get(&3)
            .filter(|record| record.state == MoveState::Released)
            .cloned()
    });
    let released = record.released.expect("the numbers of the release");
    assert_eq!(
        (released.flipped, released.events_held, released.pause_ns),
        (true, 4, 900_000)
    );
    control.stop();
}

/// The first hunt of `partition`, counting from `from`.
fn hunt_in(partition: u32, from: u64) -> HuntId {
    let partitioner = Partitioner::new(PARTITIONS).unwrap();
    (from..)
        .map(HuntId)
        .find(|hunt| partitioner.partition_of(*hunt) == PartitionId(partition))
        .unwrap()
}

/// `count` events of `hunt`, its creation first then joins, numbered from `first`.
fn hunt_events(hunt: HuntId, first: u64, count: u64) -> Vec<Event> {
    (first..first + count)
        .map(|seq| Event {
            hunt,
            player: PlayerId(seq % 50),
            client_session: 0,
            client_seq: seq,
            client_ts: 0,
            kind: if seq == first {
                EventKind::CreateHunt(HuntSpec::default())
            } else {
                EventKind::Join
            },
        })
        .collect()
}

#[test]
fn rebalance_by_load_moves_a_hot_partition_and_leaves_the_cold_ones() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let endpoint = etcd.endpoint();
    let mut nodes = Nodes::start(&CLUSTER, &etcd, 2);
    let (_, placement) = wait_for(&mut nodes, Duration::from_secs(30), "a placement", |_| {
        CLUSTER.settled_placement(&etcd, 2)
    });
    // Two partitions of node 1 get every event; the 62 others, none. Node 1 then has twice
    // node 2's load or more, all of it in two partitions: moving one of them evens the two
    // nodes out, and no cold partition's move would change anything.
    let on_node_1: Vec<u32> = (0..PARTITIONS)
        .filter(|&p| placement.owner(PartitionId(p)).node == NodeId(1))
        .collect();
    let hot = [on_node_1[0], on_node_1[on_node_1.len() / 2]];
    let hunts = hot.map(|p| hunt_in(p, 1 << 20));
    let stop = Arc::new(AtomicBool::new(false));
    let load = std::thread::spawn({
        let stop = stop.clone();
        let client = client_of(&nodes.process(NodeId(1)).addr);
        move || {
            let mut rounds = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut events = hunt_events(hunts[0], 0, 100);
                events.extend(hunt_events(hunts[1], 100, 100));
                answers(&client, &events, Duration::from_secs(5));
                rounds += 1;
            }
            rounds
        }
    });
    let output = cluster_command(
        &endpoint,
        &[
            "rebalance",
            "--by",
            "load",
            "--sample-s",
            "2",
            "--timeout",
            "40",
        ],
    );
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().expect("the load thread ends");
    nodes.read();
    let stdout = text(&output.stdout);
    println!("{stdout}{}", text(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(rounds > 0, "no load was sent");
    assert!(
        stdout.contains("rebalance: 1 partitions to move"),
        "one hot partition moves, nothing else: {stdout}"
    );
    let moved: Vec<u32> = hot
        .into_iter()
        .filter(|p| stdout.contains(&format!("  partition {p} (")))
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "the move listed is a hot partition's: {stdout}"
    );
    let after = poll_for(
        Duration::from_secs(10),
        "the placement after the move",
        || {
            let view = CLUSTER.read_view(&etcd)?;
            Some((*view.assignment?).clone())
        },
    );
    for p in 0..PARTITIONS {
        let expected = if p == moved[0] {
            NodeId(2)
        } else {
            placement.owner(PartitionId(p)).node
        };
        assert_eq!(
            after.owner(PartitionId(p)).node,
            expected,
            "partition {p}: only the hot one moved"
        );
    }
}
