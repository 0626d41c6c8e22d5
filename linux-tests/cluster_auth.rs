//! A cluster whose nodes share a secret (`trove node --auth-secret-file`), on loopback with an
//! etcd of the test's own: the links between nodes authenticate with the same challenge-response
//! as clients, so three nodes with one secret serve a client (with the secret) for every
//! partition over their links, and a node given another secret cannot be linked to: events
//! for its partitions are answered `Unavailable` (or `OutcomeUnknown`), never applied there,
//! and the node that tried says why, once; a node without a secret and one with it cannot
//! link either way, and each says why. Each test skips, saying so, when `etcd` is not
//! installed, and stops everything it started (the processes also die with the test process).

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use trove::cluster::local::{EtcdProcess, NodeProcess};
use trove::cluster::placement::Placement;
use trove::core::auth::AuthSecret;
use trove::core::ids::{HuntId, NodeId, PartitionId, PlayerId};
use trove::core::message::{Event, EventError, EventKind, Outcome, RejectReason};
use trove::core::partition::Partitioner;

use support::cluster::{ClusterSpec, answers, client_of, etcd_or_skip, poll_for};
use support::run_bounded;

const PARTITIONS: u32 = 16;
const NAME: &str = "auth";
const CLUSTER: ClusterSpec = ClusterSpec {
    name: NAME,
    partitions: PARTITIONS,
    lease_ttl_s: 2,
};
const SECRET: &str = "the cluster's shared secret, for the link tests";
const OTHER_SECRET: &str = "a secret of another cluster entirely";

/// A secret file in a folder of the test's own, removed when dropped.
struct SecretFile {
    dir: PathBuf,
    path: PathBuf,
}

impl SecretFile {
    fn new(test: &str, secret: &str) -> SecretFile {
        let dir = std::env::temp_dir().join(format!("trove-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("secret-{}", secret.len()));
        std::fs::write(&path, secret).unwrap();
        SecretFile { dir, path }
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One-shard nodes, ids 1..; node `i` proves `secrets[i - 1]` (or none). Keeps what each
/// printed.
struct Nodes {
    nodes: Vec<NodeProcess>,
    printed: Vec<Vec<String>>,
}

impl Nodes {
    fn start(etcd: &EtcdProcess, secrets: &[Option<&SecretFile>]) -> Nodes {
        let nodes: Vec<NodeProcess> = secrets
            .iter()
            .zip(1..)
            .map(|(secret, node_id)| {
                let flags = match secret {
                    Some(secret) => vec!["--auth-secret-file", secret.path.to_str().unwrap()],
                    None => Vec::new(),
                };
                CLUSTER.start_node(etcd, node_id, &flags)
            })
            .collect();
        Nodes {
            printed: vec![Vec::new(); nodes.len()],
            nodes,
        }
    }

    fn addr(&self, node: NodeId) -> String {
        self.nodes[node.0 as usize - 1].addr.clone()
    }

    /// The lines node `node` printed so far that contain `text`.
    fn lines_with(&mut self, node: NodeId, text: &str) -> Vec<String> {
        for (process, printed) in self.nodes.iter().zip(&mut self.printed) {
            printed.extend(process.lines.try_iter());
        }
        self.printed[node.0 as usize - 1]
            .iter()
            .filter(|line| line.contains(text))
            .cloned()
            .collect()
    }
}

/// A placement covering every partition once, all serving, on `count` live nodes.
fn settled_placement(etcd: &EtcdProcess, count: usize) -> Option<Placement> {
    CLUSTER
        .settled_placement(etcd, count)
        .map(|(_, placement)| placement)
}

/// The first hunt of each partition, by partition.
fn hunts() -> Vec<HuntId> {
    let partitioner = Partitioner::new(PARTITIONS).unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            (0..)
                .map(HuntId)
                .find(|hunt| partitioner.partition_of(*hunt) == PartitionId(partition))
                .unwrap()
        })
        .collect()
}

/// One event of `kind` by `player` for each partition's first hunt (client sequence =
/// partition).
fn one_per_partition(player: u64, kind: impl Fn() -> EventKind) -> Vec<Event> {
    hunts()
        .into_iter()
        .zip(0..)
        .map(|(hunt, partition)| Event {
            hunt,
            player: PlayerId(player),
            client_session: 0,
            client_seq: partition,
            client_ts: 0,
            kind: kind(),
        })
        .collect()
}

/// Sends `events` to the node at `addr`, proving `secret` if any, on one connection; each event's
/// outcome by client sequence, or `None` when not every one was answered within 10 s.
fn outcomes_from(addr: &str, secret: Option<&str>, events: &[Event]) -> Option<Vec<Outcome>> {
    let mut config = client_of(addr);
    config.auth =
        secret.map(|secret| Arc::new(AuthSecret::from_file_contents(secret.as_bytes()).unwrap()));
    answers(&config, events, Duration::from_secs(10))
        .into_iter()
        .collect()
}

fn owned_by(placement: &Placement, node: NodeId) -> Vec<usize> {
    (0..PARTITIONS)
        .filter(|&p| placement.owner(PartitionId(p)).node == node)
        .map(|p| p as usize)
        .collect()
}

const UNKNOWN_HUNT: Outcome = Outcome::Rejected {
    reason: RejectReason::UnknownHunt,
};

fn unavailable(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Error {
            error: EventError::OwnerUnavailable | EventError::OutcomeUnknown
        }
    )
}

#[test]
fn three_nodes_with_the_same_secret_serve_a_client_for_every_partition_over_links() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let secret = SecretFile::new("same-secret", SECRET);
    let mut nodes = Nodes::start(&etcd, &[Some(&secret), Some(&secret), Some(&secret)]);
    let placement = poll_for(Duration::from_secs(15), "placement", || {
        settled_placement(&etcd, 3)
    });
    for node in [NodeId(2), NodeId(3)] {
        assert!(
            !owned_by(&placement, node).is_empty(),
            "node {} owns partitions, so node 1 must forward",
            node.0
        );
    }
    let asked = nodes.addr(NodeId(1));
    // Node 1 serves every partition once it has installed the placement: its own, and the
    // others' over links that had to authenticate.
    let probes = one_per_partition(1, || EventKind::Join);
    poll_for(Duration::from_secs(10), "every partition served", || {
        let outcomes = outcomes_from(&asked, Some(SECRET), &probes)?;
        outcomes
            .iter()
            .all(|outcome| *outcome == UNKNOWN_HUNT)
            .then_some(())
    });

    let created = outcomes_from(
        &asked,
        Some(SECRET),
        &one_per_partition(1, || EventKind::CreateHunt(Default::default())),
    )
    .expect("every hunt creation answered");
    let joined = outcomes_from(
        &asked,
        Some(SECRET),
        &one_per_partition(2, || EventKind::Join),
    )
    .expect("every join answered");
    for p in 0..PARTITIONS as usize {
        assert_eq!(created[p], Outcome::Accepted { score: 0 }, "partition {p}");
        assert_eq!(joined[p], Outcome::Accepted { score: 0 }, "partition {p}");
    }
    for node in 1..=3 {
        let refused = nodes.lines_with(NodeId(node), "secret");
        assert!(refused.is_empty(), "node {node}: {refused:?}");
    }
}

#[test]
fn a_node_with_another_secret_cannot_be_linked_to_and_the_linking_node_says_why() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let (secret, other) = (
        SecretFile::new("cluster-secret", SECRET),
        SecretFile::new("other-secret", OTHER_SECRET),
    );
    let mut nodes = Nodes::start(&etcd, &[Some(&secret), Some(&secret), Some(&other)]);
    let placement = poll_for(Duration::from_secs(15), "placement", || {
        settled_placement(&etcd, 3)
    });
    let outsider = owned_by(&placement, NodeId(3));
    assert!(!outsider.is_empty(), "node 3 owns partitions");
    let asked = nodes.addr(NodeId(1));
    let probes = one_per_partition(1, || EventKind::Join);
    poll_for(Duration::from_secs(10), "nodes 1 and 2 served", || {
        let outcomes = outcomes_from(&asked, Some(SECRET), &probes)?;
        (0..PARTITIONS as usize)
            .filter(|p| !outsider.contains(p))
            .all(|p| outcomes[p] == UNKNOWN_HUNT)
            .then_some(())
    });

    // Twice, past the longest back-off: the link is tried again and fails again.
    let creations = one_per_partition(1, || EventKind::CreateHunt(Default::default()));
    for round in 0..2 {
        let created =
            outcomes_from(&asked, Some(SECRET), &creations).expect("every event answered");
        for (p, outcome) in created.iter().enumerate() {
            if outsider.contains(&p) {
                assert!(
                    unavailable(outcome),
                    "round {round}: partition {p} of node 3 answered {outcome:?}"
                );
            } else if round == 0 {
                assert_eq!(*outcome, Outcome::Accepted { score: 0 }, "partition {p}");
            }
        }
        std::thread::sleep(Duration::from_millis(1_500));
    }
    let said = nodes.lines_with(NodeId(1), "the link to node 3 shard 0 failed");
    assert_eq!(said.len(), 1, "said once while the reason stays: {said:?}");
    assert!(said[0].contains("the secret differs"), "{said:?}");
    assert!(said[0].contains("--auth-secret-file"), "{said:?}");

    // Node 3 never applied them: its own clients (with its secret) find no hunt there,
    // though it serves them.
    let outsider_addr = nodes.addr(NodeId(3));
    let joined = outcomes_from(
        &outsider_addr,
        Some(OTHER_SECRET),
        &one_per_partition(2, || EventKind::Join),
    )
    .expect("node 3 answers its own clients");
    for &p in &outsider {
        assert_eq!(joined[p], UNKNOWN_HUNT, "partition {p} on node 3");
    }
}

#[test]
fn a_node_without_the_secret_and_a_node_with_it_cannot_link_and_each_says_why() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let secret = SecretFile::new("with-and-without", SECRET);
    let mut nodes = Nodes::start(&etcd, &[Some(&secret), None]);
    let placement = poll_for(Duration::from_secs(15), "placement", || {
        settled_placement(&etcd, 2)
    });
    let (with, without) = (NodeId(1), NodeId(2));
    let probes = one_per_partition(1, || EventKind::Join);
    for (asked, secret, peer) in [(without, None, with), (with, Some(SECRET), without)] {
        let (own, others) = (owned_by(&placement, asked), owned_by(&placement, peer));
        assert!(!others.is_empty(), "node {} owns partitions", peer.0);
        let addr = nodes.addr(asked);
        let outcomes = poll_for(Duration::from_secs(20), "own partitions served", || {
            let outcomes = outcomes_from(&addr, secret, &probes)?;
            own.iter()
                .all(|&p| outcomes[p] == UNKNOWN_HUNT)
                .then_some(outcomes)
        });
        for &p in &others {
            assert!(
                unavailable(&outcomes[p]),
                "node {} answered {:?} for partition {p} of node {}",
                asked.0,
                outcomes[p],
                peer.0
            );
        }
    }
    let told = format!("the link to node {} shard 0 failed: ", with.0);
    let said = poll_for(Duration::from_secs(5), "a line", || {
        let said = nodes.lines_with(without, &told);
        (!said.is_empty()).then_some(said)
    });
    assert!(said[0].contains("requires authentication"), "{said:?}");
    // The node with the secret waits for a challenge a node without one never sends.
    let told = format!("the link to node {} shard 0 failed: ", without.0);
    let said = poll_for(Duration::from_secs(5), "a line", || {
        let said = nodes.lines_with(with, &told);
        (!said.is_empty()).then_some(said)
    });
    assert!(
        said[0].contains("sent no authentication challenge"),
        "{said:?}"
    );
}

/// `trove bench --cluster 2` with a secret through node 1 only: the bench's nodes get the
/// secret, its clients and own map requests prove it, and node 1 forwards to node 2 over
/// authenticated links (the summary counts inter-node messages).
#[test]
fn bench_cluster_with_a_secret_runs_over_authenticated_links() {
    // The bench starts an etcd of its own.
    if support::installed("etcd").is_none() {
        return;
    }
    let secret = SecretFile::new("bench-cluster-secret", SECRET);
    let out = secret.dir.join("out");
    let output = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_trove"))
            .args([
                "bench",
                "--cluster",
                "2",
                "--partitions",
                "16",
                "--no-shard-aware",
            ])
            .args(["--duration", "1", "--warmup", "0", "--connections", "1"])
            .args([
                "--closed",
                "32",
                "--hunts",
                "16",
                "--players",
                "4",
                "--quiet",
            ])
            .arg("--auth-secret-file")
            .arg(&secret.path)
            .arg("--out")
            .arg(&out),
        Duration::from_secs(120),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let messages = summary["cluster"]["link_messages_per_event"]
        .as_f64()
        .unwrap();
    assert!(
        messages > 0.5,
        "node 1 forwarded node 2's events over links: {messages} messages per event"
    );
}
