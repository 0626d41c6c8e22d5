//! Scaffolding the cluster tests share (`linux-tests/cluster*.rs`): an etcd of the test's own
//! or a skip that says so, `trove node --cluster` processes, the cluster's keys read back from
//! etcd, a settled placement, a node's answer to each of a list of events, `trove cluster up`
//! run until its nodes are placed, and bounded waits for all of it.
//!
//! On the test's threads, like the rest of `support`. Every wait is bounded: past its bound a
//! child is killed (and reaped within a bound) and the test fails naming what it waited for.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use trove::client::{ClientConfig, Incoming, connect};
use trove::cluster::coordinator::{ClusterView, Request, Response};
use trove::cluster::etcd::EtcdClient;
use trove::cluster::keys::ClusterKeys;
use trove::cluster::local::{EtcdProcess, LocalNodeConfig, NodeProcess};
use trove::cluster::placement::{OwnerState, Placement};
use trove::core::ids::NodeId;
use trove::core::message::{Event, Outcome, Reply};

use super::{Spawned, installed, trove, trove_binary, wait_until, whole_lines};

/// How long a child killed on purpose may take to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(10);
/// How long a node may take to answer every event of a list.
const ANSWERS_WAIT: Duration = Duration::from_secs(5);
/// How long `trove cluster up` may take to place its nodes, or to stop after SIGTERM.
pub const CLUSTER_UP_WAIT: Duration = Duration::from_secs(20);

/// What a test's cluster is: its name in etcd, its partitions, its nodes' lease TTL. Its
/// nodes have one shard each.
#[derive(Clone, Copy, Debug)]
pub struct ClusterSpec {
    pub name: &'static str,
    pub partitions: u32,
    pub lease_ttl_s: u64,
}

impl ClusterSpec {
    /// The same cluster with leases of `lease_ttl_s`.
    pub const fn with_lease_ttl_s(self, lease_ttl_s: u64) -> ClusterSpec {
        ClusterSpec {
            lease_ttl_s,
            ..self
        }
    }

    /// Node `node_id` of this cluster, on `etcd`.
    pub fn node_config(&self, etcd: &EtcdProcess, node_id: u32) -> LocalNodeConfig {
        LocalNodeConfig {
            trove: trove_binary().into(),
            etcd: etcd.endpoint(),
            cluster_name: self.name.into(),
            node_id,
            shards: 1,
            partitions: self.partitions,
            lease_ttl_s: self.lease_ttl_s,
        }
    }

    /// Starts node `node_id` with `extra` flags after the cluster's (`--data-dir DIR`, …).
    pub fn start_node(&self, etcd: &EtcdProcess, node_id: u32, extra: &[&str]) -> NodeProcess {
        NodeProcess::start_with(&self.node_config(etcd, node_id), extra)
            .unwrap_or_else(|error| panic!("node {node_id} does not start: {error}"))
    }

    /// The cluster's keys as etcd has them now; `None` when etcd did not answer.
    pub fn read_view(&self, etcd: &EtcdProcess) -> Option<ClusterView> {
        let keys = ClusterKeys::new(self.name).unwrap();
        let mut client = EtcdClient::new(vec![etcd.endpoint()], Duration::from_secs(2));
        let request = Request::RangePrefix {
            prefix: keys.prefix().to_owned(),
        };
        match client.execute(&request) {
            Ok(Response::Range { revision, kvs }) => {
                Some(ClusterView::from_range(&keys, revision, &kvs))
            }
            _ => None,
        }
    }

    /// A placement covering every partition, all serving, on `count` live nodes, with a
    /// controller.
    pub fn settled_placement(
        &self,
        etcd: &EtcdProcess,
        count: usize,
    ) -> Option<(ClusterView, Placement)> {
        let view = self.read_view(etcd)?;
        let placement = (*view.assignment.clone()?).clone();
        let all_serving = placement
            .owners()
            .iter()
            .all(|owner| owner.state == OwnerState::Serving);
        (view.nodes.len() == count && view.controller.is_some() && all_serving)
            .then_some((view, placement))
    }
}

/// An etcd of the test's own, or `None` after saying the test skips and how to install etcd.
pub fn etcd_or_skip() -> Option<EtcdProcess> {
    installed("etcd")?;
    Some(EtcdProcess::start().expect("etcd starts"))
}

/// Tries `check` every 50 ms until it gives a value, for at most `limit`; past it, panics
/// naming `what`.
pub fn poll_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    wait_until(what, limit, || {
        check().ok_or_else(|| "nothing yet".to_owned())
    })
}

/// A cluster of one-shard nodes, ids 1..=count, and what each has printed.
pub struct Nodes {
    pub nodes: Vec<NodeProcess>,
    printed: Vec<Vec<String>>,
}

impl Nodes {
    pub fn start(spec: &ClusterSpec, etcd: &EtcdProcess, count: u32) -> Nodes {
        let nodes: Vec<NodeProcess> = (1..=count)
            .map(|node_id| spec.start_node(etcd, node_id, &[]))
            .collect();
        Nodes {
            printed: vec![Vec::new(); nodes.len()],
            nodes,
        }
    }

    /// Collects what the nodes printed so far (and keeps their pipes from filling).
    pub fn read(&mut self) {
        for (node, printed) in self.nodes.iter().zip(&mut self.printed) {
            printed.extend(node.lines.try_iter());
        }
    }

    /// Whether `node` has printed a line containing `text`.
    pub fn printed(&mut self, node: NodeId, text: &str) -> bool {
        self.read();
        self.printed[node.0 as usize - 1]
            .iter()
            .any(|line| line.contains(text))
    }

    pub fn process(&self, node: NodeId) -> &NodeProcess {
        &self.nodes[node.0 as usize - 1]
    }
}

/// Polls `check` until it returns something, for at most `limit`, reading what the nodes
/// print meanwhile.
pub fn wait_for<T>(
    nodes: &mut Nodes,
    limit: Duration,
    what: &str,
    mut check: impl FnMut(&mut Nodes) -> Option<T>,
) -> T {
    poll_for(limit, what, || {
        nodes.read();
        check(nodes)
    })
}

/// Waits until `node` has printed a line containing `text`: what etcd shows can be read before
/// the node's line about it has come through its pipe.
pub fn wait_printed(nodes: &mut Nodes, node: NodeId, text: &str) {
    wait_for(nodes, Duration::from_secs(5), text, |nodes| {
        nodes.printed(node, text).then_some(())
    });
}

/// A client of the node at `addr` that sends everything to it (not shard-aware), so that the
/// node forwards what other shards and nodes own.
pub fn client_of(addr: &str) -> ClientConfig {
    let mut config = ClientConfig::new(addr.parse().unwrap());
    config.shard_aware = false;
    config
}

/// Sends `events` on one connection made with `config` and reads each one's outcome, by client
/// sequence (which must be the event's index), until every one is answered, the connection
/// ends or `limit` passes: `None` for those not answered. Panics on an event answered twice.
pub fn answers(config: &ClientConfig, events: &[Event], limit: Duration) -> Vec<Option<Outcome>> {
    let mut outcomes = vec![None; events.len()];
    let Ok((mut sender, mut receiver)) = connect(config) else {
        return outcomes;
    };
    let sent = events.iter().try_for_each(|event| sender.send(event));
    if sent.and_then(|()| sender.flush()).is_err() {
        return outcomes;
    }
    let deadline = Instant::now() + limit;
    while outcomes.iter().any(Option::is_none) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let Ok(Incoming::Replies(frame)) = receiver.recv_timeout(left) else {
            break;
        };
        for reply in frame.replies() {
            let reply: Reply = rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).unwrap();
            let slot = &mut outcomes[reply.client_seq as usize];
            assert!(slot.is_none(), "event {} answered twice", reply.client_seq);
            *slot = Some(reply.outcome);
        }
    }
    drop(sender);
    outcomes
}

/// Sends `events` to the node at `addr` on one connection and returns each one's outcome, by
/// client sequence; `None` when the node did not answer every one within 5 s.
pub fn outcomes_from(addr: &str, events: &[Event]) -> Option<Vec<Outcome>> {
    answers(&client_of(addr), events, ANSWERS_WAIT)
        .into_iter()
        .collect()
}

/// SIGKILLs `child` (a node killed on purpose) and reaps it within a bound.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let deadline = Instant::now() + REAP_WAIT;
    while matches!(child.try_wait(), Ok(None)) {
        assert!(
            Instant::now() < deadline,
            "pid {} survived SIGKILL for {REAP_WAIT:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `trove cluster up ARGS` (which starts an etcd of its own and `nodes` nodes), once every
/// node has printed its placement epoch; with the whole lines it printed by then.
pub fn cluster_up_until_placed(
    args: &[&str],
    data_dir: Option<&Path>,
    nodes: usize,
) -> (Spawned, Vec<String>) {
    let mut command: Command = trove();
    command.args(["cluster", "up"]).args(args);
    if let Some(dir) = data_dir {
        command.arg("--data-dir").arg(dir);
    }
    let up = Spawned::start(&mut command);
    let seen = wait_until("a placement from every node", CLUSTER_UP_WAIT, || {
        let printed = up.stdout();
        let lines: Vec<String> = whole_lines(&printed).map(str::to_owned).collect();
        let placed = lines
            .iter()
            .filter(|l| l.contains("placement epoch"))
            .count();
        if placed >= nodes {
            Ok(lines)
        } else {
            Err(format!("{lines:#?}{}", up.stderr()))
        }
    });
    (up, seen)
}

/// SIGTERMs a `trove cluster up` and waits (bounded) for it to stop its nodes and etcd and
/// exit; its exit status and every line it printed.
pub fn stop_cluster_up(mut up: Spawned) -> (ExitStatus, Vec<String>) {
    up.signal(libc::SIGTERM);
    let Some(status) = up.wait_exit(CLUSTER_UP_WAIT) else {
        panic!(
            "trove cluster up did not stop within {CLUSTER_UP_WAIT:?} of SIGTERM: {}",
            up.stdout()
        );
    };
    let lines = whole_lines(&up.stdout()).map(str::to_owned).collect();
    (status, lines)
}
