//! A cluster whose nodes share a secret (`trove node --auth-secret-file`), on loopback with an
//! etcd of the test's own: the links between nodes authenticate with the same challenge-response
//! as clients, so three nodes with one secret serve a client (with the secret) for every
//! partition over their links, and a node given another secret cannot be linked to: events
//! for its partitions are answered `Unavailable` (or `OutcomeUnknown`), never applied there,
//! and the node that tried says why, once; a node without a secret and one with it cannot
//! link either way, and each says why.
//!
//! With TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`, certificates made here with
//! rcgen), links are mutually authenticated TLS: nodes with certificates of one CA serve a
//! TLS client for every partition over them; a node whose certificate another CA signed
//! cannot link either way, its events are answered `Unavailable`, and both the node that
//! refused and the node refused say why; a link seen through a relay on 127.0.0.2 (the node
//! advertises it) is TLS records only, no trove frame in the clear; a cluster node with TLS
//! but no CA to check its links by, or with a certificate that cannot serve as a client
//! certificate, does not start.
//!
//! Each test skips, saying so, when `etcd` is not installed, and stops everything it started
//! (the processes also die with the test process).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;
use trove::client::tls::{TlsClient, TlsClientFiles};
use trove::cluster::local::{EtcdProcess, NodeProcess};
use trove::cluster::placement::Placement;
use trove::constants::FRAME_MAGIC;
use trove::core::auth::AuthSecret;
use trove::core::ids::{HuntId, NodeId, PartitionId, PlayerId};
use trove::core::message::{Event, EventError, EventKind, Outcome, RejectReason};
use trove::core::partition::Partitioner;

use support::cluster::{ClusterSpec, answers, client_of, etcd_or_skip, poll_for};
use support::pki::Ca;
use support::{COMMAND_WAIT, run_bounded, scratch_dir, stderr, trove};

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
        let flags: Vec<Vec<String>> = secrets
            .iter()
            .map(|secret| match secret {
                Some(secret) => vec![
                    "--auth-secret-file".to_owned(),
                    secret.path.to_str().unwrap().to_owned(),
                ],
                None => Vec::new(),
            })
            .collect();
        Nodes::with_flags(etcd, &flags)
    }

    /// Node `i` started with `flags[i - 1]`.
    fn with_flags(etcd: &EtcdProcess, flags: &[Vec<String>]) -> Nodes {
        let nodes: Vec<NodeProcess> = flags
            .iter()
            .zip(1..)
            .map(|(flags, node_id)| {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
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

/// As [`outcomes_from`], over TLS as `tls` says.
fn outcomes_over_tls(addr: &str, tls: &Arc<TlsClient>, events: &[Event]) -> Option<Vec<Outcome>> {
    let mut config = client_of(addr);
    config.tls = Some(tls.clone());
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

/// Whether `outcome`, the answer to an event of `partition`, says nobody could apply it
/// there: `Unavailable` naming that partition, or `OutcomeUnknown` for one sent on a link
/// that failed after.
fn unavailable(outcome: &Outcome, partition: usize) -> bool {
    *outcome
        == Outcome::Unavailable {
            partition: partition as u32,
        }
        || *outcome
            == Outcome::Error {
                error: EventError::OutcomeUnknown,
            }
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
                    unavailable(outcome, p),
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
    // Node 3, which refused node 1's proof, says whom it refused and why.
    poll_for(Duration::from_secs(5), "node 3's line", || {
        let said = nodes.lines_with(NodeId(3), "refused a connection from 127.0.0.1:");
        let why = "the peer's proof does not match this side's secret";
        said.iter().any(|line| line.contains(why)).then_some(())
    });

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
                unavailable(&outcomes[p], p),
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
    // The node with the secret says whom it refused: a link that did not authenticate.
    poll_for(Duration::from_secs(5), "the refusing node's line", || {
        let said = nodes.lines_with(with, "refused a connection from 127.0.0.1:");
        let why = "a node's link that did not authenticate";
        said.iter().any(|line| line.contains(why)).then_some(())
    });
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

/// Runs `trove bench --cluster 2` forwarding everything through node 1 (a short, small run)
/// with `extra` flags, writing its reports to `out`; asserts it succeeded and returns the
/// inter-node messages per event its summary reports.
fn bench_cluster_2_forwarding(extra: &[&str], out: &std::path::Path) -> f64 {
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
            .args(extra)
            .arg("--out")
            .arg(out),
        Duration::from_secs(120),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    summary["cluster"]["link_messages_per_event"]
        .as_f64()
        .unwrap()
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
    let secret_path = secret.path.to_str().unwrap();
    let messages = bench_cluster_2_forwarding(&["--auth-secret-file", secret_path], &out);
    assert!(
        messages > 0.5,
        "node 1 forwarded node 2's events over links: {messages} messages per event"
    );
}

// ---- TLS links ----------------------------------------------------------------------------

/// `NAME.pem` and `NAME.key` in `dir`: a certificate signed by `ca` for 127.0.0.1, 127.0.0.2
/// (where a test's relay listens for a node that advertises it) and localhost, with the
/// extended key usages `usages`.
fn issue(ca: &Ca, dir: &Path, name: &str, usages: &[ExtendedKeyUsagePurpose]) -> [String; 2] {
    let names = ["127.0.0.1", "127.0.0.2", "localhost"];
    let (cert, key) = ca.issue(dir, name, &names, usages);
    [path_text(&cert), path_text(&key)]
}

fn path_text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

const NODE_USAGES: [ExtendedKeyUsagePurpose; 2] = [
    ExtendedKeyUsagePurpose::ServerAuth,
    ExtendedKeyUsagePurpose::ClientAuth,
];

/// The cluster's CA and a node certificate of it; another CA with a node certificate of its
/// own; a file trusting both CAs; a client certificate of the cluster's CA.
struct Pki {
    dir: PathBuf,
    ca: String,
    node: [String; 2],
    other_node: [String; 2],
    both_cas: String,
    client: [String; 2],
}

impl Pki {
    fn new(test: &str) -> Pki {
        let dir = scratch_dir(&format!("link-tls-{test}"));
        let (ca, other) = (Ca::new("trove cluster CA"), Ca::new("another cluster's CA"));
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path_text(&path)
        };
        Pki {
            ca: write("ca.pem", ca.cert.pem()),
            both_cas: write("both-cas.pem", ca.cert.pem() + &other.cert.pem()),
            node: issue(&ca, &dir, "node", &NODE_USAGES),
            other_node: issue(&other, &dir, "other-node", &NODE_USAGES),
            client: issue(&ca, &dir, "client", &[ExtendedKeyUsagePurpose::ClientAuth]),
            dir,
        }
    }

    /// The TLS flags of a node with `cert` (and its key), checking links by `ca`.
    fn node_flags(cert: &[String; 2], ca: &str) -> Vec<String> {
        [
            "--tls-cert",
            &cert[0],
            "--tls-key",
            &cert[1],
            "--tls-client-ca",
            ca,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A client presenting the cluster CA's client certificate, trusting `ca`.
    fn client(&self, ca: &str) -> Arc<TlsClient> {
        Arc::new(
            TlsClient::from_files(TlsClientFiles {
                ca: ca.into(),
                server_name: None,
                cert: Some(self.client[0].clone().into()),
                key: Some(self.client[1].clone().into()),
            })
            .unwrap(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn nodes_with_tls_links_serve_a_tls_client_for_every_partition_and_every_event_is_answered() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let pki = Pki::new("serves");
    let flags = Pki::node_flags(&pki.node, &pki.ca);
    let mut nodes = Nodes::with_flags(&etcd, &[flags.clone(), flags]);
    let placement = poll_for(Duration::from_secs(15), "placement", || {
        settled_placement(&etcd, 2)
    });
    assert!(
        !owned_by(&placement, NodeId(2)).is_empty(),
        "node 2 owns partitions, so node 1 must forward"
    );
    let (asked, client) = (nodes.addr(NodeId(1)), pki.client(&pki.ca));
    let probes = one_per_partition(1, || EventKind::Join);
    poll_for(Duration::from_secs(10), "every partition served", || {
        let outcomes = outcomes_over_tls(&asked, &client, &probes)?;
        outcomes
            .iter()
            .all(|outcome| *outcome == UNKNOWN_HUNT)
            .then_some(())
    });
    let created = outcomes_over_tls(
        &asked,
        &client,
        &one_per_partition(1, || EventKind::CreateHunt(Default::default())),
    )
    .expect("every hunt creation answered");
    // Many events per partition, so that link frames span several TLS records.
    let players: Vec<Event> = (2..40)
        .flat_map(|player| one_per_partition(player, || EventKind::Join))
        .zip(0..)
        .map(|(event, seq)| Event {
            client_seq: seq,
            ..event
        })
        .collect();
    let joined = outcomes_over_tls(&asked, &client, &players).expect("every join answered");
    for (p, outcome) in created.iter().enumerate() {
        assert_eq!(*outcome, Outcome::Accepted { score: 0 }, "partition {p}");
    }
    for (outcome, event) in joined.iter().zip(&players) {
        assert_eq!(*outcome, Outcome::Accepted { score: 0 }, "{event:?}");
    }
    for node in 1..=2 {
        let failed = nodes.lines_with(NodeId(node), "failed");
        let refused = nodes.lines_with(NodeId(node), "refused");
        assert!(
            failed.is_empty() && refused.is_empty(),
            "node {node}: {failed:?} {refused:?}"
        );
    }
}

#[test]
fn a_node_whose_certificate_another_ca_signed_cannot_link_and_both_sides_say_why() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let pki = Pki::new("other-ca");
    // Node 3 trusts both CAs, so it checks node 1's certificate and starts; node 1 trusts
    // only its own, so it refuses node 3's both as a server and as a client.
    let mut nodes = Nodes::with_flags(
        &etcd,
        &[
            Pki::node_flags(&pki.node, &pki.ca),
            Pki::node_flags(&pki.other_node, &pki.both_cas),
        ],
    );
    let placement = poll_for(Duration::from_secs(15), "placement", || {
        settled_placement(&etcd, 2)
    });
    let (insider, outsider) = (NodeId(1), NodeId(2));
    let client = pki.client(&pki.both_cas);
    for (asked, peer) in [(insider, outsider), (outsider, insider)] {
        let (own, others) = (owned_by(&placement, asked), owned_by(&placement, peer));
        assert!(!others.is_empty(), "node {} owns partitions", peer.0);
        let addr = nodes.addr(asked);
        let creations = one_per_partition(1, || EventKind::CreateHunt(Default::default()));
        // Twice, past the longest back-off: the link is tried again and fails again.
        for round in 0..2 {
            let outcomes =
                outcomes_over_tls(&addr, &client, &creations).expect("every event answered");
            for &p in &others {
                assert!(
                    unavailable(&outcomes[p], p),
                    "round {round}: node {} answered {:?} for partition {p} of node {}",
                    asked.0,
                    outcomes[p],
                    peer.0
                );
            }
            if round == 0 {
                for &p in &own {
                    assert_eq!(outcomes[p], Outcome::Accepted { score: 0 }, "partition {p}");
                }
            }
            std::thread::sleep(Duration::from_millis(1_200));
        }
    }
    // Node 1's link to node 2: node 1 refuses node 2's certificate and says so; node 2 is
    // told by the alert and says whom it refused.
    let said = nodes.lines_with(insider, "the link to node 2 shard 0 failed");
    assert_eq!(said.len(), 1, "said once while the reason stays: {said:?}");
    assert!(
        said[0]
            .contains("node 2's certificate is not signed by a CA in this node's --tls-client-ca"),
        "{said:?}"
    );
    poll_for(Duration::from_secs(5), "node 2's line", || {
        let said = nodes.lines_with(outsider, "refused a connection from 127.0.0.1:");
        let why = "it does not trust this node's certificate";
        said.iter().any(|line| line.contains(why)).then_some(())
    });
    // Node 2's link to node 1: node 1 refuses node 2's client certificate and says whom.
    let said = nodes.lines_with(outsider, "the link to node 1 shard 0 failed");
    assert_eq!(said.len(), 1, "said once while the reason stays: {said:?}");
    assert!(
        said[0].contains("node 1 refused this node's certificate"),
        "{said:?}"
    );
    poll_for(Duration::from_secs(5), "node 1's line", || {
        let said = nodes.lines_with(insider, "refused a connection from 127.0.0.1:");
        let why = "its certificate is not signed by a CA in this node's --tls-client-ca";
        said.iter().any(|line| line.contains(why)).then_some(())
    });
}

#[test]
fn a_tls_node_and_a_plain_node_cannot_link_and_each_says_why() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let pki = Pki::new("tls-and-plain");
    let mut nodes = Nodes::with_flags(&etcd, &[Pki::node_flags(&pki.node, &pki.ca), Vec::new()]);
    let placement = poll_for(Duration::from_secs(15), "placement", || {
        settled_placement(&etcd, 2)
    });
    let (tls, plain) = (NodeId(1), NodeId(2));
    let client = pki.client(&pki.ca);
    let probes = one_per_partition(1, || EventKind::Join);
    for asked in [tls, plain] {
        let peer = if asked == tls { plain } else { tls };
        let (own, others) = (owned_by(&placement, asked), owned_by(&placement, peer));
        let addr = nodes.addr(asked);
        let outcomes = poll_for(Duration::from_secs(20), "own partitions served", || {
            let outcomes = if asked == tls {
                outcomes_over_tls(&addr, &client, &probes)?
            } else {
                outcomes_from(&addr, None, &probes)?
            };
            own.iter()
                .all(|&p| outcomes[p] == UNKNOWN_HUNT)
                .then_some(outcomes)
        });
        for &p in &others {
            assert!(
                unavailable(&outcomes[p], p),
                "partition {p}: {:?}",
                outcomes[p]
            );
        }
    }
    let said = poll_for(Duration::from_secs(5), "a line", || {
        let said = nodes.lines_with(tls, "the link to node 2 shard 0 failed: ");
        (!said.is_empty()).then_some(said)
    });
    assert!(said[0].contains("node 2 does not speak TLS"), "{said:?}");
    let said = poll_for(Duration::from_secs(5), "a line", || {
        let said = nodes.lines_with(plain, "the link to node 1 shard 0 failed: ");
        (!said.is_empty()).then_some(said)
    });
    assert!(
        said[0].contains("node 1 speaks TLS and this node does not"),
        "{said:?}"
    );
    // The TLS node says whom it refused (it may still be closing the connection).
    poll_for(Duration::from_secs(5), "the refusing node's line", || {
        let said = nodes.lines_with(tls, "refused a connection from 127.0.0.1:");
        let why = "it does not speak TLS";
        said.iter().any(|line| line.contains(why)).then_some(())
    });
}

/// A relay on `from` to `to` that keeps the first `RELAY_KEPT_BYTES_MAX` bytes its clients
/// send (one direction: what a linking node sends). Its threads end with the test process.
fn relay(from: SocketAddr, to: SocketAddr) -> Arc<Mutex<Vec<u8>>> {
    let listener = TcpListener::bind(from).expect("127.0.0.2 is loopback too");
    let kept = Arc::new(Mutex::new(Vec::new()));
    let kept_by_relay = kept.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
                continue;
            };
            let (client_in, server_out) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let kept = kept_by_relay.clone();
            std::thread::spawn(move || copy(client_in, server_out, Some(kept)));
            std::thread::spawn(move || copy(server, client, None));
        }
    });
    kept
}

const RELAY_KEPT_BYTES_MAX: usize = 1 << 20;

/// Copies `from` to `to` until either ends, keeping what passes in `kept` (bounded).
fn copy(mut from: TcpStream, mut to: TcpStream, kept: Option<Arc<Mutex<Vec<u8>>>>) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(len @ 1..) = from.read(&mut buf) {
        if let Some(kept) = &kept {
            let mut kept = kept.lock().unwrap();
            let room = RELAY_KEPT_BYTES_MAX.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..len.min(room)]);
        }
        if to.write_all(&buf[..len]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A node's link to another, seen on the wire through a relay: TLS records from the first
/// byte, and no trove frame (each starts with the magic `TROV`) in the clear, while every
/// event it carries is answered.
#[test]
fn a_tls_link_carries_only_ciphertext_on_the_wire() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let pki = Pki::new("wire");
    let flags = Pki::node_flags(&pki.node, &pki.ca);
    let mut relayed = flags.clone();
    relayed.extend(["--advertise", "127.0.0.2"].map(str::to_owned));
    let nodes = Nodes::with_flags(&etcd, &[flags, relayed]);
    let placement = poll_for(Duration::from_secs(15), "placement", || {
        settled_placement(&etcd, 2)
    });
    let theirs = owned_by(&placement, NodeId(2));
    assert!(!theirs.is_empty(), "node 2 owns partitions");
    let view = CLUSTER.read_view(&etcd).expect("etcd answers");
    let shard_port = view.nodes[&NodeId(2)].info.shard_ports[0];
    let kept = relay(
        SocketAddr::from(([127, 0, 0, 2], shard_port)),
        SocketAddr::from(([127, 0, 0, 1], shard_port)),
    );
    let (asked, client) = (nodes.addr(NodeId(1)), pki.client(&pki.ca));
    let created = outcomes_over_tls(
        &asked,
        &client,
        &one_per_partition(1, || EventKind::CreateHunt(Default::default())),
    )
    .expect("every event answered");
    for &p in &theirs {
        assert_eq!(created[p], Outcome::Accepted { score: 0 }, "partition {p}");
    }
    let wire = kept.lock().unwrap().clone();
    assert!(!wire.is_empty(), "the link went through the relay");
    assert_eq!(&wire[..2], &[0x16, 0x03], "a TLS handshake record first");
    assert!(
        !wire
            .windows(FRAME_MAGIC.len())
            .any(|window| window == FRAME_MAGIC),
        "a trove frame in the clear"
    );
}

/// Runs `trove node` as a cluster node (on an etcd that is never reached: the node refuses
/// before it talks to it) and expects exit 2 and one sentence holding each of `expected`.
fn cluster_node_refuses(args: &[&str], expected: &[&str]) {
    let output = run_bounded(
        trove()
            .args([
                "node",
                "--metrics-listen",
                "off",
                "--port",
                "0",
                "--shards",
                "1",
            ])
            .args(["--cluster", "http://127.0.0.1:9", "--node-id", "1"])
            .args(args),
        COMMAND_WAIT,
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
    assert_eq!(text.trim().lines().count(), 1, "one sentence: {text}");
    for word in expected {
        assert!(text.contains(word), "{args:?}: no `{word}` in {text}");
    }
}

#[test]
fn a_cluster_node_with_tls_and_nothing_to_check_links_by_or_a_server_only_certificate_does_not_start()
 {
    let pki = Pki::new("refused");
    let [cert, key] = &pki.node;
    cluster_node_refuses(
        &["--tls-cert", cert, "--tls-key", key],
        &["a cluster node with --tls-cert needs --tls-client-ca"],
    );
    // A certificate for servers only cannot be a link's client certificate.
    let ca = Ca::new("a CA for servers only");
    let ca_path = pki.dir.join("server-only-ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    let [cert, key] = issue(
        &ca,
        &pki.dir,
        "server-only",
        &[ExtendedKeyUsagePurpose::ServerAuth],
    );
    let ca_path = path_text(&ca_path);
    cluster_node_refuses(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca_path,
        ],
        &[
            "--tls-cert",
            "cannot prove this node to its peers",
            "clientAuth",
        ],
    );
    // Nor can one another CA signed.
    let [cert, key] = &pki.other_node;
    cluster_node_refuses(
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-client-ca",
            &pki.ca,
        ],
        &["--tls-cert", "it is not signed by the CA"],
    );
}

/// `trove bench --cluster 2` with TLS: the bench's nodes get its certificate and CA, its
/// clients and own map requests speak TLS, and node 1 forwards to node 2 over TLS links.
#[test]
fn bench_cluster_with_tls_runs_over_tls_links() {
    if support::installed("etcd").is_none() {
        return;
    }
    let pki = Pki::new("bench-cluster");
    let out = pki.dir.join("out");
    let tls = [
        "--tls-ca",
        pki.ca.as_str(),
        "--tls-cert",
        pki.node[0].as_str(),
        "--tls-key",
        pki.node[1].as_str(),
    ];
    let messages = bench_cluster_2_forwarding(&tls, &out);
    assert!(
        messages > 0.5,
        "node 1 forwarded node 2's events over links: {messages} messages per event"
    );
}
