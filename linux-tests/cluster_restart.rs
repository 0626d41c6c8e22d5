//! A cluster node restarted with its data dir takes its partitions back, with their state: three
//! `trove node --cluster --data-dir` processes and an etcd of the test's own; one node is
//! SIGKILLed after its partitions took events, its partitions go `Offline`, it is started
//! again on the same data dir and node id (new ports), the controller gives the same partitions
//! back at a new epoch, and the hunts and players acknowledged before the kill are there.
//!
//! Skips, saying so, when `etcd` is not installed; every process it starts is stopped at the end
//! (and dies with the test process).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use trove::cluster::local::{EtcdProcess, NodeProcess};
use trove::cluster::placement::Placement;
use trove::core::ids::{HuntId, NodeId, PartitionId, PlayerId};
use trove::core::message::{Event, EventKind, HuntSpec, Outcome, RejectReason};

use support::cluster::{
    ClusterSpec, cluster_up_until_placed, etcd_or_skip, kill_and_reap, outcomes_from, poll_for,
    stop_cluster_up,
};
use support::{COMMAND_WAIT, disk_scratch_dir, installed, run_bounded, stderr, trove};

const NODES: u32 = 3;
const PARTITIONS: u32 = 64;
const CLUSTER: ClusterSpec = ClusterSpec {
    name: "restart",
    partitions: PARTITIONS,
    lease_ttl_s: 2,
};
/// Hunts created on the restarted node's partitions, and players joined to each.
const HUNTS: usize = 16;
const PLAYERS: u64 = 5;

fn start_node(etcd: &EtcdProcess, node_id: u32, data: &Path) -> NodeProcess {
    let dir = data.join(format!("node-{node_id}"));
    let dir = dir.to_str().expect("a UTF-8 path");
    CLUSTER.start_node(etcd, node_id, &["--data-dir", dir])
}

/// The placement in etcd now, with every partition serving on `NODES` live nodes.
fn settled(etcd: &EtcdProcess) -> Option<Placement> {
    CLUSTER
        .settled_placement(etcd, NODES as usize)
        .map(|(_, placement)| placement)
}

/// The placement in etcd now, if some partition is offline.
fn offline(etcd: &EtcdProcess) -> Option<Placement> {
    let placement = CLUSTER.read_view(etcd)?.assignment?;
    (placement.offline().count() > 0).then(|| (*placement).clone())
}

/// `HUNTS` hunts whose partitions `node` owns under `placement`.
fn hunts_on(placement: &Placement, node: NodeId) -> Vec<HuntId> {
    let partitioner = placement.partitioner();
    (1..)
        .map(HuntId)
        .filter(|hunt| placement.owner(partitioner.partition_of(*hunt)).node == node)
        .take(HUNTS)
        .collect()
}

/// Each hunt created, then `PLAYERS` players joined to it; client sequences in order.
fn creations(hunts: &[HuntId]) -> Vec<Event> {
    let mut events = Vec::new();
    for hunt in hunts {
        let mut push = |player, kind| {
            events.push(Event {
                hunt: *hunt,
                player: PlayerId(player),
                client_session: 0,
                client_seq: events.len() as u64,
                client_ts: 0,
                kind,
            })
        };
        push(0, EventKind::CreateHunt(HuntSpec::default()));
        for player in 1..=PLAYERS {
            push(player, EventKind::Join);
        }
    }
    events
}

#[test]
fn a_node_killed_and_restarted_on_its_data_dir_gets_its_partitions_back_with_their_state() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    // Not tmpfs-backed /dev/shm: the log writes with O_DIRECT, which tmpfs silently ignores.
    let scratch = disk_scratch_dir("cluster-restart");
    let mut nodes: Vec<NodeProcess> = (1..=NODES)
        .map(|id| start_node(&etcd, id, &scratch))
        .collect();
    let before = poll_for(Duration::from_secs(20), "settled placement", || {
        settled(&etcd)
    });

    // Node 2's partitions take hunts and players, each acknowledged (durable: sync mode).
    let victim = NodeId(2);
    let hunts = hunts_on(&before, victim);
    let events = creations(&hunts);
    let addr = nodes[1].addr.clone();
    let probe = Event {
        hunt: hunts[0],
        player: PlayerId(1),
        client_session: 0,
        client_seq: 0,
        client_ts: 0,
        kind: EventKind::Join,
    };
    let unknown = Outcome::Rejected {
        reason: RejectReason::UnknownHunt,
    };
    poll_for(Duration::from_secs(10), "node 2 serving", || {
        (outcomes_from(&addr, std::slice::from_ref(&probe))? == [unknown.clone()]).then_some(())
    });
    let first = outcomes_from(&addr, &events).expect("node 2 answers every event");
    assert!(
        first
            .iter()
            .all(|outcome| *outcome == Outcome::Accepted { score: 0 }),
        "{first:?}"
    );

    kill_and_reap(&mut nodes[1].child);
    let down = poll_for(
        Duration::from_secs(CLUSTER.lease_ttl_s + 5),
        "offline",
        || offline(&etcd),
    );
    let theirs: Vec<PartitionId> = (0..PARTITIONS)
        .map(PartitionId)
        .filter(|p| before.owner(*p).node == victim)
        .collect();
    assert_eq!(down.offline().collect::<Vec<_>>(), theirs);

    nodes[1] = start_node(&etcd, victim.0, &scratch);
    let back = poll_for(Duration::from_secs(20), "partitions back", || {
        settled(&etcd)
    });
    for p in &theirs {
        let owner = back.owner(*p);
        assert_eq!(
            owner.node, victim,
            "{p:?} back to the node that has its state"
        );
        assert!(owner.part_epoch > down.epoch(), "{p:?} at a new epoch");
    }

    // Everything acknowledged before the kill is there: the hunts exist, the players joined.
    let addr = nodes[1].addr.clone();
    let again = poll_for(Duration::from_secs(10), "node 2 serving again", || {
        let outcomes = outcomes_from(&addr, &events)?;
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Outcome::Rejected { .. }))
            .then_some(outcomes)
    });
    for (event, outcome) in events.iter().zip(&again) {
        let expected = match event.kind {
            EventKind::CreateHunt(_) => RejectReason::HuntExists,
            _ => RejectReason::AlreadyJoined,
        };
        assert_eq!(
            *outcome,
            Outcome::Rejected { reason: expected },
            "{event:?} after the restart"
        );
    }
    // It says what it recovered: every acknowledged event (and the probe, also logged).
    let printed: Vec<String> = nodes[1].lines.try_iter().collect();
    let recovered: usize = printed
        .iter()
        .find_map(|line| {
            let before = line
                .split(" events replayed")
                .next()
                .filter(|b| b.len() < line.len())?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("the restarted node says what it replayed: {printed:?}"));
    assert_eq!(recovered, events.len() + 1, "{printed:?}");
    drop(nodes);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn cluster_up_with_a_data_dir_gives_each_node_a_log_of_its_own() {
    if installed("etcd").is_none() {
        return;
    }
    let scratch = disk_scratch_dir("cluster-up-data");
    let args = ["--nodes", "2", "--partitions", "16"];
    let (up, seen) = cluster_up_until_placed(&args, Some(&scratch), 2);
    for node in 1..=2 {
        let dir = scratch.join(format!("node-{node}"));
        let said = format!("[node {node}] trove node: data dir {}", dir.display());
        assert!(
            seen.iter().any(|l| l.starts_with(&said)),
            "{said}: {seen:#?}"
        );
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert!(files > 0, "node {node}'s log is in {}", dir.display());
    }
    let (status, seen) = stop_cluster_up(up);
    assert!(status.success(), "{seen:#?}");

    // A data dir that cannot be made: one clear sentence, exit 1, nothing left running.
    let file = scratch.join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let output = run_bounded(
        trove()
            .args(["cluster", "up", "--nodes", "1", "--partitions", "16"])
            .arg("--data-dir")
            .arg(&file),
        COMMAND_WAIT,
    );
    let (status, stderr) = (output.status, stderr(&output));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot create") && stderr.contains("--data-dir"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
