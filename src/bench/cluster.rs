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
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::auth::read_secret_file;
use crate::client::tls::{TlsClient, TlsClientFiles};
use crate::client::{connect_authenticated, fetch_map};
use crate::cluster::etcd::EtcdClient;
use crate::cluster::keys::{ClusterKeys, PinRecord, Released};
use crate::cluster::local::{EtcdProcess, LocalNodeConfig, NodeProcess, find_on_path, path_str};
use crate::cluster::operator::{Operator, placement_of};
use crate::cluster::placement::OwnerState;
use crate::cluster::status::ClusterStatus;
use crate::constants::{BENCH_CLUSTER_SETTLE_MS_MAX, CLUSTER_LEASE_TTL_S_DEFAULT};
use crate::core::auth::AuthSecret;
use crate::core::ids::{NodeId, PartitionId};
use crate::core::rng::Rng;
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
}

impl LocalCluster {
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
        if let Some(moves) = &self.moves {
            for line in moves.describe().lines() {
                let _ = writeln!(out, "  {line}");
            }
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

/// `--moves K`: live single-partition moves made while the load runs, one at a time, each to a
/// random other node (and shard) of the bench's cluster, through etcd as `trove cluster move`
/// does (a pin, then the controller's move). What a partition's clients wait at each flip is
/// the source's hold, which the source measures and reports (`moves/<p>`, `released`).
pub struct MoveRun {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<MoveFigures, String>>,
}

/// What `--moves` measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MoveFigures {
    pub moved: u32,
    pub failed: Vec<String>,
    /// Each flipped move's pause as its source reported it, in ms, sorted.
    pub pauses_ms: Vec<f64>,
    pub events_held: u64,
    pub seconds: f64,
}

impl MoveFigures {
    /// The pause at quantile `q` (nearest rank), if any was reported.
    pub fn pause_ms(&self, q: f64) -> Option<f64> {
        let last = self.pauses_ms.len().checked_sub(1)?;
        let rank = ((q * self.pauses_ms.len() as f64).ceil() as usize).clamp(1, last + 1) - 1;
        Some(self.pauses_ms[rank])
    }

    /// The lines the bench prints about the moves.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "live moves during the run: {} moved, {} failed, in {:.1} s; {} events held at the flips",
            self.moved,
            self.failed.len(),
            self.seconds,
            self.events_held
        );
        match (self.pause_ms(0.5), self.pause_ms(0.99), self.pause_ms(1.0)) {
            (Some(p50), Some(p99), Some(max)) => {
                let _ = write!(
                    text,
                    "\nflip pause (the source's hold, {} moves reported): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
                    self.pauses_ms.len()
                );
            }
            _ => text.push_str("\nflip pause: no source reported one"),
        }
        for failure in &self.failed {
            let _ = write!(text, "\nmove failed: {failure}");
        }
        text
    }
}

impl LocalCluster {
    /// Starts `count` moves, one after another, on a thread of their own (seeded by `seed`).
    pub fn start_moves(&self, count: u32, seed: u64) -> MoveRun {
        let stop = Arc::new(AtomicBool::new(false));
        let mover = Mover {
            operator: Operator::new(
                EtcdClient::new(vec![self.etcd.endpoint()], MOVE_REQUEST_TIMEOUT),
                ClusterKeys::new(CLUSTER_NAME).expect("the bench's cluster name is valid"),
            ),
            spec: self.spec,
            rng: Rng::stream(seed, MOVES_STREAM),
            stop: stop.clone(),
        };
        let thread = std::thread::spawn(move || mover.run(count));
        MoveRun { stop, thread }
    }
}

impl MoveRun {
    /// Stops after the move under way and returns what was measured.
    pub fn finish(self) -> Result<MoveFigures, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the thread making the moves panicked".to_string())?
    }
}

/// The mover's stream of the run's seed (the workload uses others).
const MOVES_STREAM: u64 = 0x6d6f_7665;
/// How long one etcd request of the mover may take.
const MOVE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one move may take, from its pin to the source's report of its flip.
const MOVE_WAIT: Duration = Duration::from_secs(30);
/// How long the mover waits, after it saw a flip, for the source's report of its pause.
const MOVE_REPORT_WAIT: Duration = Duration::from_secs(2);
/// How often the mover reads etcd while a move is under way.
const MOVE_POLL: Duration = Duration::from_millis(5);

struct Mover {
    operator: Operator,
    spec: ClusterSpec,
    rng: Rng,
    stop: Arc<AtomicBool>,
}

impl Mover {
    fn run(mut self, count: u32) -> Result<MoveFigures, String> {
        let started = Instant::now();
        let mut figures = MoveFigures::default();
        for _ in 0..count {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            match self.one_move()? {
                Ok(released) => {
                    figures.moved += 1;
                    if let Some(released) = released {
                        figures.events_held += released.events_held;
                        figures.pauses_ms.push(released.pause_ns as f64 / 1e6);
                    }
                }
                Err(failure) => figures.failed.push(failure),
            }
        }
        figures.seconds = started.elapsed().as_secs_f64();
        figures.pauses_ms.sort_by(f64::total_cmp);
        Ok(figures)
    }

    /// Pins a random partition to a random other (node, shard) and waits for the flip and its
    /// source's report of it (`None` when the report did not come within `MOVE_REPORT_WAIT`
    /// of the flip): `Ok(Err(why))` when the move failed, `Err` when etcd did.
    fn one_move(&mut self) -> Result<Result<Option<Released>, String>, String> {
        let view = self
            .operator
            .read()
            .map_err(|error| error.message().to_owned())?;
        let placement = placement_of(&view).map_err(|error| error.message().to_owned())?;
        let partition = self.rng.below(u64::from(placement.partitions())) as u32;
        let owner = *placement.owner(PartitionId(partition));
        let others = self.spec.nodes as u64 - 1;
        if others == 0 {
            return Ok(Err("a cluster of one node has nowhere to move to".into()));
        }
        // Nodes are 1..=N: skip the owner's.
        let mut node = 1 + self.rng.below(others) as u32;
        if node >= owner.node.0 {
            node += 1;
        }
        let shard = self.rng.below(self.spec.shards_per_node as u64) as u16;
        let pin = PinRecord {
            node,
            shard: Some(shard),
        };
        self.operator
            .put_pin(partition, pin)
            .map_err(|error| error.message().to_owned())?;
        let deadline = Instant::now() + MOVE_WAIT;
        let mut flipped_at = None;
        while Instant::now() < deadline {
            std::thread::sleep(MOVE_POLL);
            let view = self
                .operator
                .read()
                .map_err(|error| error.message().to_owned())?;
            let now_owner = view
                .assignment
                .as_ref()
                .map(|placement| *placement.owner(PartitionId(partition)));
            if now_owner.is_some_and(|owner| {
                (owner.node.0, owner.shard.0) == (node, shard) && owner.state == OwnerState::Serving
            }) {
                let at = *flipped_at.get_or_insert_with(Instant::now);
                if at.elapsed() > MOVE_REPORT_WAIT {
                    return Ok(Ok(None));
                }
            }
            let Some(record) = view.moves.get(&partition) else {
                continue;
            };
            if record.from.0 != owner.node.0 || record.to != (node, shard) {
                continue; // an older move's record
            }
            if let Some(reason) = &record.abandoned {
                return Ok(Err(format!(
                    "partition {partition} to node {node}: {reason}"
                )));
            }
            if let Some(released) = record.released.filter(|released| released.flipped) {
                return Ok(Ok(Some(released)));
            }
        }
        Ok(Err(format!(
            "partition {partition} to node {node} shard {shard}: no flip reported within {MOVE_WAIT:?}"
        )))
    }
}

#[cfg(test)]
mod move_figure_tests {
    use super::*;

    #[test]
    fn pauses_are_read_at_their_nearest_rank_and_failures_are_listed() {
        let figures = MoveFigures {
            moved: 100,
            failed: vec!["partition 3 to node 2: the target's lease ended".into()],
            pauses_ms: (1..=100).map(f64::from).collect(),
            events_held: 7,
            seconds: 12.0,
        };
        assert_eq!(figures.pause_ms(0.5), Some(50.0));
        assert_eq!(figures.pause_ms(0.99), Some(99.0));
        assert_eq!(figures.pause_ms(1.0), Some(100.0));
        let text = figures.describe();
        assert!(text.contains("100 moved, 1 failed"), "{text}");
        assert!(
            text.contains("p50 50.00 ms, p99 99.00 ms, max 100.00 ms"),
            "{text}"
        );
        assert!(text.contains("move failed: partition 3"), "{text}");
        let none = MoveFigures::default();
        assert_eq!(none.pause_ms(0.99), None);
        assert!(none.describe().contains("no source reported one"));
    }
}
