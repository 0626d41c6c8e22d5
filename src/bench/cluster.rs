//! `trove bench --cluster N`: a local cluster for the run (its own etcd and N `trove node`
//! processes on loopback, through `cluster::local`), waited for until its placement has
//! settled on every node, and the cluster's own account of the run: events applied per node,
//! inter-node messages and bytes per event (the nodes' `trove_link_*` counters), and
//! CPU-seconds per million events over every node process (from `/proc/PID/stat`).
//!
//! Runs on the bench's main thread; the nodes are its children and stop with it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bench::live_moves::{DrainFigures, MoveFigures};
use crate::client::auth::read_secret_file;
use crate::client::tls::{TlsClient, TlsClientFiles};
use crate::client::{connect_authenticated, fetch_map};
use crate::cluster::etcd::EtcdClient;
use crate::cluster::keys::ClusterKeys;
use crate::cluster::local::{EtcdProcess, LocalNodeConfig, NodeProcess, find_on_path, path_str};
use crate::cluster::operator::Operator;
use crate::cluster::status::ClusterStatus;
use crate::constants::{BENCH_CLUSTER_SETTLE_MS_MAX, CLUSTER_LEASE_TTL_S_DEFAULT};
use crate::core::auth::AuthSecret;
use crate::core::ids::NodeId;
use crate::metrics::scrape::NodeScrape;

/// The cluster's name in its own etcd.
const CLUSTER_NAME: &str = "bench";
/// The counters of node links, both directions: an event forwarded to another node counts
/// once where it is sent and once where it is received, which is its two messages (the event
/// out, its reply back); likewise bytes.
const LINK_EVENTS: &str = "link_events_total";
const LINK_BYTES: &str = "link_bytes_total";
/// Events a node's shards applied, each counted once: those from their own sockets and those
/// other shards or nodes forwarded to them (`events_applied_for_peers_total` is the latter
/// part of it, not more).
const EVENTS_APPLIED: &str = "events_applied_total";

/// What `--cluster` asks for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub shards_per_node: usize,
    pub partitions: u32,
}

/// One node of the bench's cluster: its process, and where it serves `/metrics`.
struct BenchNode {
    process: NodeProcess,
    id: NodeId,
    metrics: SocketAddr,
}

/// A local cluster started for one run. Dropping it stops the nodes, then etcd.
pub struct LocalCluster {
    spec: ClusterSpec,
    nodes: Vec<BenchNode>,
    seed: SocketAddr,
    etcd: EtcdProcess,
    /// The nodes' shared secret, for the bench's own requests to them.
    secret: Option<AuthSecret>,
    /// TLS to the nodes, for the bench's own requests to them.
    tls: Option<Arc<TlsClient>>,
}

/// One node's counters at one moment.
#[derive(Clone, Debug, Default)]
struct NodeSample {
    applied: f64,
    link_events: f64,
    link_bytes: f64,
    links_exported: bool,
    cpu_ticks: u64,
}

/// Every node's counters at one moment, in node order.
pub struct ClusterSample {
    nodes: Vec<NodeSample>,
}

impl ClusterSample {
    /// Events applied, over every node.
    fn applied(&self) -> f64 {
        self.nodes.iter().map(|node| node.applied).sum()
    }
}

/// One node's share of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeFigures {
    pub node: u32,
    pub events_applied: u64,
    pub link_messages: u64,
    pub link_bytes: u64,
    pub cpu_seconds: f64,
}

/// The cluster's account of a run (warm-up included: nodes count every event).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterFigures {
    pub spec: ClusterSpec,
    pub nodes: Vec<NodeFigures>,
    /// Whether the nodes export `trove_link_*` at all (a build without node links does not).
    pub link_metrics_exported: bool,
    pub events_applied: u64,
    pub link_messages_per_event: f64,
    pub link_bytes_per_event: f64,
    pub cpu_seconds_per_million_events: f64,
    /// The live moves made during the run (`--moves`); printed, not in `summary.json`.
    #[serde(skip)]
    pub moves: Option<MoveFigures>,
    /// The drain made during the run (`--drain`); printed, not in `summary.json`.
    #[serde(skip)]
    pub drain: Option<DrainFigures>,
}

impl LocalCluster {
    /// An operator on the cluster's etcd (what `trove cluster move` uses), whose requests
    /// each take at most `timeout`.
    pub(super) fn operator(&self, timeout: Duration) -> Operator {
        Operator::new(
            EtcdClient::new(vec![self.etcd.endpoint()], timeout),
            ClusterKeys::new(CLUSTER_NAME).expect("the bench's cluster name is valid"),
        )
    }

    /// Starts etcd and the nodes (each asking clients and the other nodes for the secret in
    /// `auth_file`, if given; with `tls`, each serving TLS with the client's certificate and
    /// key, and requiring certificates of its CA, on client connections and links), and
    /// waits until every node serves the same settled placement.
    pub fn start(
        spec: ClusterSpec,
        auth_file: Option<&Path>,
        tls: Option<(Arc<TlsClient>, TlsClientFiles)>,
        say: &mut dyn FnMut(&str),
    ) -> Result<LocalCluster, String> {
        if find_on_path("etcd").is_none() {
            return Err(
                "--cluster needs etcd, which is not on PATH: install it (apt-get install etcd-server)"
                    .into(),
            );
        }
        let trove = std::env::current_exe()
            .map_err(|error| format!("cannot find this program's own path: {error}"))?;
        let etcd = EtcdProcess::start()?;
        say(&format!(
            "starting a local cluster: etcd on {}, {} nodes of {} shards",
            etcd.endpoint(),
            spec.nodes,
            spec.shards_per_node
        ));
        let secret = auth_file.map(read_secret_file).transpose()?;
        let mut node_args = match auth_file {
            Some(path) => vec!["--auth-secret-file", path_str(path)?],
            None => Vec::new(),
        };
        let (tls, tls_files) = tls.unzip();
        if let Some(files) = &tls_files {
            let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
                return Err("--cluster with --tls-ca needs --tls-cert and --tls-key".into());
            };
            node_args.extend(["--tls-cert", path_str(cert)?, "--tls-key", path_str(key)?]);
            node_args.extend(["--tls-client-ca", path_str(&files.ca)?]);
        }
        let mut processes = Vec::with_capacity(spec.nodes);
        for node_id in 1..=spec.nodes as u32 {
            processes.push(NodeProcess::start_with(
                &LocalNodeConfig {
                    trove: trove.clone(),
                    etcd: etcd.endpoint(),
                    cluster_name: CLUSTER_NAME.into(),
                    node_id,
                    shards: spec.shards_per_node,
                    partitions: spec.partitions,
                    lease_ttl_s: CLUSTER_LEASE_TTL_S_DEFAULT,
                },
                &node_args,
            )?);
        }
        let seed = processes[0]
            .addr
            .parse()
            .map_err(|error| format!("node 1 printed an address that is not one: {error}"))?;
        let status = wait_settled(&etcd, spec, &mut processes)?;
        let mut nodes = Vec::with_capacity(processes.len());
        for process in processes {
            let id = NodeId(process.node_id);
            let metrics = status
                .view
                .nodes
                .get(&id)
                .and_then(|entry| entry.info.metrics.as_deref())
                .ok_or_else(|| format!("node {id} registered no /metrics address"))?
                .parse()
                .map_err(|error| format!("node {id}'s /metrics address: {error}"))?;
            nodes.push(BenchNode {
                process,
                id,
                metrics,
            });
        }
        let cluster = LocalCluster {
            spec,
            nodes,
            seed,
            etcd,
            secret,
            tls,
        };
        cluster.wait_every_node_has(
            status
                .view
                .assignment
                .as_ref()
                .map_or(0, |p| p.epoch().get()),
        )?;
        Ok(cluster)
    }

    /// The address of node 1: where the load's clients fetch the map.
    pub fn seed(&self) -> SocketAddr {
        self.seed
    }

    pub fn spec(&self) -> ClusterSpec {
        self.spec
    }

    /// Every node's counters and CPU time now.
    pub fn sample(&self) -> Result<ClusterSample, String> {
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let text = crate::metrics::scrape::fetch(node.metrics)
                .map_err(|error| format!("node {}: {error}", node.id))?;
            let scrape = NodeScrape::parse(&text)
                .map_err(|error| format!("node {}'s /metrics: {error}", node.id))?;
            let (link_events, events_exported) = family_total(&scrape, LINK_EVENTS);
            let (link_bytes, bytes_exported) = family_total(&scrape, LINK_BYTES);
            nodes.push(NodeSample {
                applied: family_total(&scrape, EVENTS_APPLIED).0,
                link_events,
                link_bytes,
                links_exported: events_exported && bytes_exported,
                cpu_ticks: cpu_ticks(node.process.child.id())?,
            });
        }
        Ok(ClusterSample { nodes })
    }

    /// A sample once the nodes' counters have stopped moving: the nodes hand their counters to
    /// `/metrics` about once a second, so a sample is taken again `wait` later until two agree
    /// on the events applied (at most `tries` times).
    pub fn quiet_sample(&self, wait: Duration, tries: usize) -> Result<ClusterSample, String> {
        let mut last = self.sample()?;
        for _ in 0..tries {
            std::thread::sleep(wait);
            let next = self.sample()?;
            if next.applied() == last.applied() {
                return Ok(next);
            }
            last = next;
        }
        Ok(last)
    }

    /// What the nodes did between two samples.
    pub fn figures(&self, before: &ClusterSample, after: &ClusterSample) -> ClusterFigures {
        let ticks_per_s = clock_ticks_per_s();
        let nodes: Vec<NodeFigures> = self
            .nodes
            .iter()
            .zip(before.nodes.iter().zip(&after.nodes))
            .map(|(node, (before, after))| NodeFigures {
                node: node.id.0,
                events_applied: (after.applied - before.applied).max(0.0) as u64,
                link_messages: (after.link_events - before.link_events).max(0.0) as u64,
                link_bytes: (after.link_bytes - before.link_bytes).max(0.0) as u64,
                cpu_seconds: after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks_per_s,
            })
            .collect();
        let events: u64 = nodes.iter().map(|node| node.events_applied).sum();
        let per_event = |total: u64| {
            if events == 0 {
                0.0
            } else {
                total as f64 / events as f64
            }
        };
        let cpu_seconds: f64 = nodes.iter().map(|node| node.cpu_seconds).sum();
        ClusterFigures {
            spec: self.spec,
            link_metrics_exported: after.nodes.iter().all(|node| node.links_exported),
            events_applied: events,
            link_messages_per_event: per_event(nodes.iter().map(|n| n.link_messages).sum()),
            link_bytes_per_event: per_event(nodes.iter().map(|n| n.link_bytes).sum()),
            cpu_seconds_per_million_events: if events == 0 {
                0.0
            } else {
                cpu_seconds * 1e6 / events as f64
            },
            nodes,
            moves: None,
            drain: None,
        }
    }

    /// Waits until every node answers a map of at least `epoch`: each has installed it.
    fn wait_every_node_has(&self, epoch: u32) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(BENCH_CLUSTER_SETTLE_MS_MAX);
        for node in &self.nodes {
            let addr: SocketAddr = node
                .process
                .addr
                .parse()
                .map_err(|error| format!("node {}'s address: {error}", node.id))?;
            loop {
                let timeout = Duration::from_secs(2);
                let fetched =
                    connect_authenticated(addr, timeout, self.secret.as_ref(), self.tls.as_ref())
                        .and_then(|mut connection| fetch_map(&mut connection, timeout));
                match fetched {
                    Ok(push) if push.map.epoch().get() >= epoch => break,
                    _ if Instant::now() > deadline => {
                        return Err(format!(
                            "node {} did not serve placement epoch {epoch} within {BENCH_CLUSTER_SETTLE_MS_MAX} ms",
                            node.id
                        ));
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    /// Stops the nodes, then etcd.
    pub fn stop(mut self) {
        for node in &mut self.nodes {
            node.process.stop();
        }
        drop(self.nodes);
        self.etcd.stop();
    }
}

/// Polls etcd until all `spec.nodes` nodes are registered, a controller is elected and the
/// placement covers every partition, all serving, every node owning some (when there are
/// enough partitions). Keeps the nodes' stdout pipes drained meanwhile.
fn wait_settled(
    etcd: &EtcdProcess,
    spec: ClusterSpec,
    nodes: &mut [NodeProcess],
) -> Result<ClusterStatus, String> {
    let deadline = Instant::now() + Duration::from_millis(BENCH_CLUSTER_SETTLE_MS_MAX);
    let mut client = EtcdClient::new(vec![etcd.endpoint()], Duration::from_secs(2));
    loop {
        for node in nodes.iter() {
            node.lines.try_iter().for_each(drop);
        }
        if let Ok(status) = ClusterStatus::read(&mut client, CLUSTER_NAME) {
            if settled(&status, spec) {
                return Ok(status);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the local cluster's placement did not settle on {} nodes within {BENCH_CLUSTER_SETTLE_MS_MAX} ms",
                spec.nodes
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn settled(status: &ClusterStatus, spec: ClusterSpec) -> bool {
    let view = &status.view;
    let Some(placement) = &view.assignment else {
        return false;
    };
    let owners = placement.owners();
    let every_node_owns = spec.partitions as usize >= spec.nodes
        && (1..=spec.nodes as u32).all(|node| owners.iter().any(|o| o.node == NodeId(node)));
    view.nodes.len() == spec.nodes
        && view.controller.is_some()
        && owners.iter().all(|owner| owner.state.applies())
        && (every_node_owns || (spec.partitions as usize) < spec.nodes)
}

/// A family summed over shards and labels (and a node-level series of that name), and whether
/// the node exports it at all.
fn family_total(scrape: &NodeScrape, name: &str) -> (f64, bool) {
    let in_shards = scrape
        .shards
        .iter()
        .any(|shard| shard.values.keys().any(|key| family_of(key) == name));
    let at_node = scrape.node_values.get(name).copied();
    let total = scrape
        .shards
        .iter()
        .map(|shard| shard.sum(name))
        .sum::<f64>()
        + at_node.unwrap_or(0.0);
    (total, in_shards || at_node.is_some())
}

fn family_of(key: &str) -> &str {
    key.split('{').next().unwrap_or(key)
}

/// utime + stime of process `pid`, in clock ticks, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text =
        std::fs::read_to_string(&path).map_err(|error| format!("cannot read {path}: {error}"))?;
    parse_cpu_ticks(&text).ok_or_else(|| format!("{path} is not in the format Linux writes"))
}

/// The 14th and 15th fields of a `/proc/PID/stat` line (counted after the command name, which
/// may hold spaces and parentheses, so from the last `)`).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

impl ClusterFigures {
    /// The cluster's paragraph of the printed report.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cluster of {} nodes, {} shard(s) each, as the nodes counted it over the warm-up and the run:",
            self.spec.nodes, self.spec.shards_per_node
        );
        for node in &self.nodes {
            let _ = writeln!(
                out,
                "  node {}: {} events applied, {} inter-node messages ({} bytes), {:.2} CPU-s",
                node.node,
                node.events_applied,
                node.link_messages,
                node.link_bytes,
                node.cpu_seconds
            );
        }
        if self.link_metrics_exported {
            let _ = writeln!(
                out,
                "  inter-node messages per event: {:.3}, bytes per event: {:.1}",
                self.link_messages_per_event, self.link_bytes_per_event
            );
        } else {
            let _ = writeln!(
                out,
                "  inter-node messages per event: 0 (reported as 0: the nodes export no trove_link_events_total / trove_link_bytes_total; this build has no node links)"
            );
        }
        let _ = writeln!(
            out,
            "  CPU-seconds per million events: {:.2} (utime+stime of every node process, from /proc, over {} events)",
            self.cpu_seconds_per_million_events, self.events_applied
        );
        let live_moves = [
            self.moves.as_ref().map(MoveFigures::describe),
            self.drain.as_ref().map(DrainFigures::describe),
        ];
        for line in live_moves.iter().flatten().flat_map(|text| text.lines()) {
            let _ = writeln!(out, "  {line}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (trove node (x)) S 1 4242 4242 0 -1 4194560 2050 0 0 0 731 96 0 0 20 0 3 0 123 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(731 + 96));
        assert_eq!(parse_cpu_ticks("4242 (trove) S 1"), None);
        // This process's own time grows while it spins (bounded: a loaded machine may give
        // it little CPU, but not none for seconds).
        let own = cpu_ticks(std::process::id()).expect("this process's own stat");
        let spin = Instant::now();
        while cpu_ticks(std::process::id()).unwrap() == own
            && spin.elapsed() < Duration::from_secs(10)
        {
            std::hint::black_box(spin.elapsed());
        }
        assert!(
            cpu_ticks(std::process::id()).unwrap() > own,
            "time spent shows"
        );
    }

    #[test]
    fn a_family_absent_from_the_scrape_counts_zero_and_says_so() {
        let text = "trove_events_applied_total{node=\"n\",shard=\"0\"} 5\n\
                    trove_events_applied_total{node=\"n\",shard=\"1\"} 7\n\
                    trove_link_events_total{node=\"n\",shard=\"1\",peer=\"2\"} 3\n\
                    trove_link_events_total{node=\"n\",shard=\"1\",peer=\"3\"} 4\n";
        let scrape = NodeScrape::parse(text).unwrap();
        assert_eq!(family_total(&scrape, EVENTS_APPLIED), (12.0, true));
        assert_eq!(family_total(&scrape, LINK_EVENTS), (7.0, true));
        assert_eq!(family_total(&scrape, LINK_BYTES), (0.0, false));
    }
}
