//! A cluster node restarted with its data dir takes its partitions back, with their state: three
//! `trove node --cluster --data-dir` processes and an etcd of the test's own; one node is
//! SIGKILLed after its partitions took events, its partitions go `Offline`, it is started
//! again on the same data dir and node id (new ports), the controller gives the same partitions
//! back at a new epoch, and the hunts and players acknowledged before the kill are there.
//!
//! Skips, saying so, when `etcd` is not installed; every process it starts is stopped at the end
//! (and dies with the test process).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trove::client::{ClientConfig, Incoming, connect};
use trove::cluster::coordinator::{ClusterView, Request, Response};
use trove::cluster::etcd::EtcdClient;
use trove::cluster::keys::ClusterKeys;
use trove::cluster::local::{EtcdProcess, LocalNodeConfig, NodeProcess, find_on_path};
use trove::cluster::placement::{OwnerState, Placement};
use trove::core::ids::{HuntId, NodeId, PartitionId, PlayerId};
use trove::core::message::{Event, EventKind, HuntSpec, Outcome, RejectReason, Reply};

const NAME: &str = "restart";
const NODES: u32 = 3;
const PARTITIONS: u32 = 64;
const LEASE_TTL_S: u64 = 2;
/// Hunts created on the restarted node's partitions, and players joined to each.
const HUNTS: usize = 16;
const PLAYERS: u64 = 5;

fn node_config(etcd: &EtcdProcess, node_id: u32) -> LocalNodeConfig {
    LocalNodeConfig {
        trove: env!("CARGO_BIN_EXE_trove").into(),
        etcd: etcd.endpoint(),
        cluster_name: NAME.into(),
        node_id,
        shards: 1,
        partitions: PARTITIONS,
        lease_ttl_s: LEASE_TTL_S,
    }
}

fn start_node(etcd: &EtcdProcess, node_id: u32, data: &Path) -> NodeProcess {
    let dir = data.join(format!("node-{node_id}"));
    let dir = dir.to_str().expect("a UTF-8 path");
    NodeProcess::start_with(&node_config(etcd, node_id), &["--data-dir", dir])
        .expect("the node starts")
}

/// The placement in etcd now, with every partition serving on `NODES` live nodes.
fn settled(etcd: &EtcdProcess) -> Option<Placement> {
    let keys = ClusterKeys::new(NAME).unwrap();
    let mut client = EtcdClient::new(vec![etcd.endpoint()], Duration::from_secs(2));
    let request = Request::RangePrefix {
        prefix: keys.prefix().to_owned(),
    };
    let Ok(Response::Range { revision, kvs }) = client.execute(&request) else {
        return None;
    };
    let view = ClusterView::from_range(&keys, revision, &kvs);
    let placement = (*view.assignment?).clone();
    let serving = placement
        .owners()
        .iter()
        .all(|owner| owner.state == OwnerState::Serving);
    (view.nodes.len() == NODES as usize && serving).then_some(placement)
}

fn offline(etcd: &EtcdProcess) -> Option<Placement> {
    let keys = ClusterKeys::new(NAME).unwrap();
    let mut client = EtcdClient::new(vec![etcd.endpoint()], Duration::from_secs(2));
    let request = Request::RangePrefix {
        prefix: keys.prefix().to_owned(),
    };
    let Ok(Response::Range { revision, kvs }) = client.execute(&request) else {
        return None;
    };
    let placement = ClusterView::from_range(&keys, revision, &kvs).assignment?;
    (placement.offline().count() > 0).then(|| (*placement).clone())
}

fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// Sends `events` to the node at `addr` and returns each one's outcome, by client sequence;
/// `None` when the node did not answer every one within 5 s.
fn outcomes_from(addr: &str, events: &[Event]) -> Option<Vec<Outcome>> {
    let mut config = ClientConfig::new(addr.parse().unwrap());
    config.shard_aware = false;
    let (mut sender, mut receiver) = connect(&config).ok()?;
    for event in events {
        sender.send(event).ok()?;
    }
    sender.flush().ok()?;
    let mut outcomes = vec![None; events.len()];
    let deadline = Instant::now() + Duration::from_secs(5);
    while outcomes.iter().any(Option::is_none) {
        let left = deadline.checked_duration_since(Instant::now())?;
        let Ok(Incoming::Replies(frame)) = receiver.recv_timeout(left) else {
            return None;
        };
        for reply in frame.replies() {
            let reply: Reply = rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap();
            let slot = &mut outcomes[reply.client_seq as usize];
            assert!(slot.is_none(), "event {} answered twice", reply.client_seq);
            *slot = Some(reply.outcome);
        }
    }
    outcomes.into_iter().collect()
}

/// A scratch folder for the nodes' data dirs, removed at the end.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_node_killed_and_restarted_on_its_data_dir_gets_its_partitions_back_with_their_state() {
    if find_on_path("etcd").is_none() {
        eprintln!("cluster_restart: skipped, etcd is not installed (apt-get install etcd-server)");
        return;
    }
    // Not tmpfs-backed /dev/shm: the log writes with O_DIRECT, which tmpfs silently ignores.
    let scratch = Scratch(
        std::env::current_dir()
            .unwrap()
            .join("target")
            .join(format!("cluster-restart-{}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0).unwrap();
    let etcd = EtcdProcess::start().expect("etcd starts");
    let mut nodes: Vec<NodeProcess> = (1..=NODES)
        .map(|id| start_node(&etcd, id, &scratch.0))
        .collect();
    let before = wait_for(Duration::from_secs(20), "settled placement", || {
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
        client_seq: 0,
        client_ts: 0,
        kind: EventKind::Join,
    };
    let unknown = Outcome::Rejected {
        reason: RejectReason::UnknownHunt,
    };
    wait_for(Duration::from_secs(10), "node 2 serving", || {
        (outcomes_from(&addr, std::slice::from_ref(&probe))? == [unknown.clone()]).then_some(())
    });
    let first = outcomes_from(&addr, &events).expect("node 2 answers every event");
    assert!(
        first
            .iter()
            .all(|outcome| *outcome == Outcome::Accepted { score: 0 }),
        "{first:?}"
    );

    nodes[1].child.kill().expect("SIGKILL");
    let _ = nodes[1].child.wait();
    let down = wait_for(Duration::from_secs(LEASE_TTL_S + 5), "offline", || {
        offline(&etcd)
    });
    let theirs: Vec<PartitionId> = (0..PARTITIONS)
        .map(PartitionId)
        .filter(|p| before.owner(*p).node == victim)
        .collect();
    assert_eq!(down.offline().collect::<Vec<_>>(), theirs);

    nodes[1] = start_node(&etcd, victim.0, &scratch.0);
    let back = wait_for(Duration::from_secs(20), "partitions back", || {
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
    let again = wait_for(Duration::from_secs(10), "node 2 serving again", || {
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
}

/// Waits for `child` to exit, killing it past `limit`.
fn exit_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running {limit:?} after it was told to stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cluster_up_with_a_data_dir_gives_each_node_a_log_of_its_own() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    if find_on_path("etcd").is_none() {
        eprintln!(
            "cluster_up_data_dir: skipped, etcd is not installed (apt-get install etcd-server)"
        );
        return;
    }
    let scratch = Scratch(
        std::env::current_dir()
            .unwrap()
            .join("target")
            .join(format!("cluster-up-data-{}", std::process::id())),
    );
    let mut up = Command::new(env!("CARGO_BIN_EXE_trove"))
        .args(["cluster", "up", "--nodes", "2", "--partitions", "16"])
        .arg("--data-dir")
        .arg(&scratch.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (lines_tx, lines) = flume::unbounded();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = lines_tx.send(line);
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen
        .iter()
        .filter(|l| l.contains("placement epoch"))
        .count()
        < 2
    {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no placement from both nodes: {seen:#?}"));
        seen.push(line);
    }
    for node in 1..=2 {
        let dir = scratch.0.join(format!("node-{node}"));
        let said = format!("[node {node}] trove node: data dir {}", dir.display());
        assert!(
            seen.iter().any(|l| l.starts_with(&said)),
            "{said}: {seen:#?}"
        );
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert!(files > 0, "node {node}'s log is in {}", dir.display());
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
    let status = exit_within(&mut up, Duration::from_secs(20));
    reader.join().unwrap();
    assert!(status.success(), "{seen:#?}");

    // A data dir that cannot be made: one clear sentence, exit 1, nothing left running.
    let file = scratch.0.join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let mut bad = Command::new(env!("CARGO_BIN_EXE_trove"))
        .args(["cluster", "up", "--nodes", "1", "--partitions", "16"])
        .arg("--data-dir")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(&mut bad, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bad.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot create") && stderr.contains("--data-dir"),
        "{stderr}"
    );
}
