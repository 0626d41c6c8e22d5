//! A node's composition root: shards plus their listening sockets, built from a config, and
//! the report of what they did.
//!
//! [`Node::start`] runs on the thread that starts the node. It binds every socket on the calling thread first (so "address in use" is
//! reported before any shard starts, and port 0 resolves to one port for all shards), then
//! starts the shards and gives each its two listeners: the shared port, on which every shard
//! accepts (SO_REUSEPORT lets the kernel spread connections), and the shard's own port, which
//! shard-aware clients use to reach the owner of a partition directly.
//!
//! In a cluster (`cluster_node`), each shard also gets a feed from the node's control thread
//! (`runtime::control_feed`); [`Node::serving_change`] is the control thread's end.
//!
//! Unless `--metrics-listen off`, it also binds the `/metrics` endpoint and starts the
//! housekeeping thread (`crate::metrics`) that serves it from each shard's snapshots.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use socket2::Socket;

use crate::cluster::control::ServingChange;
use crate::constants::NODE_MOVE_REPORTS_QUEUED_MAX;
use crate::core::auth::AuthSecret;
use crate::core::ids::NodeId;
use crate::core::partition::Placement;
use crate::core::shard::{LogTally, MoveReport, ShardStats, Stalls};
use crate::metrics::housekeeping::ClusterSource;
use crate::metrics::{Housekeeping, MetricsListen, NodeInfo, SnapshotSender, snapshot_channel};
use crate::net::listener::{listen, local_addr, probe_port_free, serve_listeners};
use crate::runtime::config::{ConfigError, MoveReports, RuntimeConfig};
use crate::runtime::control_feed::{FeedReceiver, FeedSender, ShardUpdate, feed, spawn_feed_task};
use crate::runtime::executors::{Shards, StartError, spawn_shards};
use crate::runtime::shard::Shard;
use crate::runtime::store::{Recovered, StoreConfig, prepare_data_dir, recover, start_log_tasks};

mod metrics_bridge;

/// Where a node listens, and its runtime configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub runtime: RuntimeConfig,
    /// Address to listen on.
    pub listen: IpAddr,
    /// The port every shard accepts on; 0 picks a free one.
    pub port: u16,
    /// Shard `i` also listens on `shard_port_base + i`. Unset: the ports right after `port`,
    /// or free ones when `port` is 0.
    pub shard_port_base: Option<u16>,
    /// The shared secret clients must prove they know (`core::auth`); `None` lets anyone in.
    pub auth: Option<AuthSecret>,
    /// TLS on every client port (`net::tls`): the node's certificate, and the CA of the
    /// client certificates it requires, if it does. `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS of the links to other nodes of a cluster (`net::tls::link_config`): the CA their
    /// certificates must be signed by, and this node's certificate to present as a client
    /// certificate. A cluster node with `tls` needs it: its peers' listeners speak TLS.
    pub link_tls: Option<Arc<rustls::ClientConfig>>,
    /// Where the housekeeping thread serves `/metrics`, or `Off`.
    pub metrics: MetricsListen,
    /// This node's id in its cluster, `None` on its own. A cluster node's shards start fenced
    /// and serve what its control thread confirms, through [`Node::serving_change`].
    pub cluster_node: Option<NodeId>,
}

impl NodeConfig {
    /// A node on loopback, on free ports, with a shard on each of `cpus`.
    pub fn loopback(cpus: Vec<usize>) -> NodeConfig {
        NodeConfig {
            runtime: RuntimeConfig::on_cpus(cpus),
            listen: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            shard_port_base: None,
            auth: None,
            tls: None,
            link_tls: None,
            metrics: MetricsListen::Off,
            cluster_node: None,
        }
    }

    fn shard_port(&self, shard: usize) -> Result<u16, StartError> {
        let port = match (self.shard_port_base, self.port) {
            (Some(base), _) => u32::from(base) + shard as u32,
            (None, 0) => 0,
            (None, port) => u32::from(port) + 1 + shard as u32,
        };
        u16::try_from(port).map_err(|_| {
            StartError::Config(ConfigError::Ports(format!(
                "shard {shard} would listen on port {port}, past 65535; choose a lower --port or --shard-port-base"
            )))
        })
    }
}

/// A running node.
pub struct Node {
    shards: Shards,
    addr: SocketAddr,
    shard_addrs: Vec<SocketAddr>,
    housekeeping: Option<Housekeeping>,
    /// Each shard's feed from the control thread, in a cluster, until handed to it.
    feeds: Vec<FeedSender>,
    /// Where the shards' move reports arrive, in a cluster, until handed to the control
    /// thread ([`Node::take_move_reports`]).
    move_reports: Option<flume::Receiver<MoveReport>>,
    /// What each shard replayed from its log at start, and how long that took (none without a
    /// data dir).
    recovery: Option<(Vec<Recovered>, std::time::Duration)>,
}

/// What every shard counted, in shard order.
#[derive(Clone, Debug, Default)]
pub struct NodeReport {
    pub shards: Vec<ShardStats>,
}

fn percentiles_us(histogram: &hdrhistogram::Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "none".into();
    }
    let us = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1_000.0;
    format!(
        "p50 {:.1} / p99 {:.1} / max {:.1} µs",
        us(0.5),
        us(0.99),
        histogram.max() as f64 / 1_000.0
    )
}

/// " log sync p50 … (N syncs, R records, R/N a sync, B MiB);" and what the log gave up on, or
/// nothing for a shard that never logged (no data dir).
fn describe_log_sync(shard: &ShardStats) -> String {
    let Some(log_sync_ns) = &shard.stages.log_sync_ns else {
        return String::new();
    };
    let mut text = describe_syncs(shard, log_sync_ns);
    text.push_str(&describe_log_given_up(&shard.log));
    text
}

/// What a failed or hung disk cost: replies answered `OutcomeUnknown` (their records may or
/// may not be on disk) and records never reported durable at stop; nothing when neither.
fn describe_log_given_up(log: &LogTally) -> String {
    if log.replies_unknown == 0 && log.records_abandoned == 0 {
        return String::new();
    }
    format!(
        " log gave up: {} replies answered OutcomeUnknown, {} records never made durable;",
        log.replies_unknown, log.records_abandoned
    )
}

/// The log's syncs and snapshots, or nothing before the first sync.
fn describe_syncs(shard: &ShardStats, log_sync_ns: &hdrhistogram::Histogram<u64>) -> String {
    let log = shard.log;
    if log.syncs == 0 {
        return String::new();
    }
    let mut text = format!(
        " log sync {} ({} syncs, {} records, {:.1} a sync, {:.1} MiB written);",
        percentiles_us(log_sync_ns),
        log.syncs,
        log.records,
        log.records as f64 / log.syncs as f64,
        log.bytes as f64 / (1 << 20) as f64,
    );
    if let (true, Some(snapshot_pause_ns)) = (log.snapshots > 0, &shard.stages.snapshot_pause_ns) {
        text.push_str(&format!(
            " snapshot pause {} ({} snapshots, {} segments deleted);",
            percentiles_us(snapshot_pause_ns),
            log.snapshots,
            log.segments_deleted,
        ));
    }
    text
}

/// "no stalls", or how many and the worst overage past the stall threshold.
fn describe_stalls(stalls: Stalls) -> String {
    match stalls.count {
        0 => "no stalls".into(),
        count => format!(
            "{count} stall{} (worst {:.1} ms past the stall threshold)",
            if count == 1 { "" } else { "s" },
            stalls.worst_overage_ns as f64 / 1e6
        ),
    }
}

impl NodeReport {
    /// Whether every shard's log was durable when it stopped: `false` when a stopping shard
    /// gave up on a failed or hung disk (the node then exits non-zero).
    pub fn log_closed_cleanly(&self) -> bool {
        self.shards
            .iter()
            .all(|shard| shard.log.records_abandoned == 0)
    }

    /// One paragraph per shard: what it applied and forwarded, how often it ran out of credit,
    /// and how long its stages took.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for shard in &self.shards {
            text.push_str(&format!(
                "shard {} (CPU {}): {} events applied, {} forwarded, {} applied for other shards, {} connections ({} refused when full, {} refused per source, {} evicted when full, {} closed idle, {} closed for not reading, {} closed mid-frame, {} failed authentication, {} failed the TLS handshake, {} cut at stop), {} frames rejected, {} credit waits, {} Busy ({} shed), {} Moved, {} ShuttingDown\n",
                shard.shard,
                shard.cpu,
                shard.events_applied,
                shard.events_forwarded,
                shard.events_applied_for_peers,
                shard.connections_accepted,
                shard.connections_refused,
                shard.connections_refused_per_source,
                shard.connections_evicted,
                shard.connections_idle_closed,
                shard.connections_write_stalled,
                shard.connections_frame_too_slow,
                shard.connections_unauthenticated,
                shard.connections_tls_failed,
                shard.connections_force_closed,
                shard.frames_rejected,
                shard.socket_credit_waits + shard.mesh_credit_waits,
                shard.busy_replies,
                shard.events_shed,
                shard.events_moved,
                shard.shutting_down_replies,
            ));
            let links = shard.links;
            if links.events_sent + links.events_received + links.links_refused > 0 {
                text.push_str(&format!(
                    "  links: {} events sent ({} bytes, {} batches), {} received ({} bytes, {} batches), {} links failed, {} refused, {} protocol errors; link round trip {}\n",
                    links.events_sent,
                    links.bytes_sent,
                    links.batches_sent,
                    links.events_received,
                    links.bytes_received,
                    links.batches_received,
                    links.links_failed,
                    links.links_refused,
                    links.protocol_errors,
                    percentiles_us(&shard.stages.link_round_trip_ns),
                ));
            }
            let moves = shard.moves;
            if moves.out_started + moves.in_staged + moves.out_refused + moves.in_refused > 0 {
                let pause = shard
                    .stages
                    .move_pause_ns
                    .as_ref()
                    .map_or_else(|| "none".to_string(), percentiles_us);
                text.push_str(&format!(
                    "  moves: out {} started, {} flipped, {} abandoned, {} refused; in {} staged, {} durable, {} installed, {} dropped, {} refused; {} events held (peak {}); {} replies kept back ({} answered OutcomeUnknown); flip pause {}\n",
                    moves.out_started,
                    moves.out_flipped,
                    moves.out_abandoned,
                    moves.out_refused,
                    moves.in_staged,
                    moves.in_durable,
                    moves.in_installed,
                    moves.in_dropped,
                    moves.in_refused,
                    moves.events_held,
                    moves.held_peak,
                    moves.replies_kept_back,
                    moves.replies_unknown,
                    pause,
                ));
            }
            text.push_str(&format!(
                "  frame dispatch {}; mesh round trip {};{} {}\n",
                percentiles_us(&shard.stages.frame_dispatch_ns),
                percentiles_us(&shard.stages.mesh_round_trip_ns),
                describe_log_sync(shard),
                describe_stalls(shard.stalls),
            ));
        }
        text
    }
}

/// What each shard gets from the thread that starts the node: its two listeners, the secret
/// its clients must prove they know, and its TLS configurations (its listeners', its links').
struct ShardSockets {
    shared: Socket,
    own: Socket,
    auth: Option<AuthSecret>,
    tls: Option<Arc<rustls::ServerConfig>>,
    link_tls: Option<Arc<rustls::ClientConfig>>,
    /// Where the shard's metrics snapshots go, when the node serves metrics.
    metrics: Option<SnapshotSender>,
    /// The shard's end of its feed from the control thread, in a cluster.
    feed: Option<FeedReceiver>,
    /// With a data dir: the store, the partition count, and where to report the recovery.
    store: Option<ShardStore>,
}

/// What a shard needs to recover its log before it serves.
struct ShardStore {
    config: StoreConfig,
    partitions: u32,
    report: std::sync::mpsc::Sender<Result<Recovered, String>>,
}

impl Node {
    /// Binds the node's sockets and starts its shards.
    pub fn start(config: &NodeConfig) -> Result<Node, StartError> {
        config.runtime.check()?;
        let shards = config.runtime.shards();
        let map = Placement::round_robin(config.runtime.partitions, shards)
            .map_err(|error| StartError::Config(ConfigError::Partitions(error)))?;
        if config.port != 0 {
            probe_port_free(SocketAddr::new(config.listen, config.port))?;
        }
        let first = listen(SocketAddr::new(config.listen, config.port), true)?;
        let addr = local_addr(&first);
        let mut shared = vec![first];
        for _ in 1..shards {
            shared.push(listen(addr, true)?);
        }
        let mut own = Vec::with_capacity(shards);
        for shard in 0..shards {
            own.push(listen(
                SocketAddr::new(config.listen, config.shard_port(shard)?),
                false,
            )?);
        }
        let shard_addrs: Vec<SocketAddr> = own.iter().map(local_addr).collect();
        if config.runtime.cluster_name.is_some()
            && config.tls.is_some()
            && config.link_tls.is_none()
        {
            // Its peers' listeners speak TLS, so its links must; and a link that checked no
            // certificate would send the cluster's events to whoever answers at a peer's address.
            return Err(StartError::Config(ConfigError::Cluster(
                "a cluster node with --tls-cert needs --tls-client-ca PATH, the CA that signs the cluster's node certificates: its links to other nodes check their certificates with it and present this node's own as a client certificate".into(),
            )));
        }
        let mut runtime = config.runtime.clone();
        runtime.shard_ports = shard_addrs.iter().map(|addr| addr.port()).collect();
        runtime.cluster_node = config.cluster_node;
        // Bounded: a shard that finds it full keeps its report for its next pass.
        let move_reports = match config.cluster_node {
            None => None,
            Some(_) => {
                let (sender, receiver) = flume::bounded(NODE_MOVE_REPORTS_QUEUED_MAX);
                runtime.move_reports = MoveReports(Some(sender));
                Some(receiver)
            }
        };
        let (feeds, mut feed_ends) = match config.cluster_node {
            None => (Vec::new(), Vec::new()),
            Some(_) => (0..shards)
                .map(|_| feed())
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|error| StartError::Io {
                    what: "cannot create the control thread's feed to the shards".into(),
                    error,
                })?
                .into_iter()
                .unzip(),
        };
        let mut feed_ends = feed_ends.drain(..);
        let metrics_listener = match config.metrics {
            MetricsListen::Off => None,
            MetricsListen::On(metrics_addr) => Some(Housekeeping::bind(metrics_addr).map_err(
                |error| StartError::Io {
                    what: format!(
                        "cannot serve /metrics on {metrics_addr} (is another node using it? pick another --metrics-listen, or off)"
                    ),
                    error,
                },
            )?),
        };
        let (snapshot_sender, snapshots) = snapshot_channel(shards);
        if let Some(store) = &runtime.store {
            prepare_data_dir(store, shards, runtime.partitions)
                .map_err(|message| StartError::Config(ConfigError::DataDir(message)))?;
        }
        let recovery_started = std::time::Instant::now();
        let mut recovery_reports = Vec::new();
        let payloads = shared
            .into_iter()
            .zip(own)
            .map(|(shared, own)| ShardSockets {
                shared,
                own,
                auth: config.auth.clone(),
                tls: config.tls.clone(),
                link_tls: config.link_tls.clone(),
                metrics: metrics_listener.as_ref().map(|_| snapshot_sender.clone()),
                feed: feed_ends.next(),
                store: runtime.store.as_ref().map(|store| {
                    let (report, reports) = std::sync::mpsc::channel();
                    recovery_reports.push(reports);
                    ShardStore {
                        config: store.clone(),
                        partitions: runtime.partitions,
                        report,
                    }
                }),
            })
            .collect();
        let shards = spawn_shards(&runtime, &map, payloads, serve_shard)?;
        let recovery = match runtime.store {
            None => None,
            Some(_) => Some((
                wait_for_recovery(recovery_reports)?,
                recovery_started.elapsed(),
            )),
        };
        let housekeeping = match metrics_listener {
            None => None,
            Some(listener) => Some(
                Housekeeping::start(listener, node_info(config, addr), snapshots).map_err(
                    |error| StartError::Io {
                        what: "cannot start the housekeeping thread".into(),
                        error,
                    },
                )?,
            ),
        };
        Ok(Node {
            shards,
            addr,
            shard_addrs,
            housekeeping,
            feeds,
            move_reports,
            recovery,
        })
    }

    /// What each shard replayed from its log at start and how long it took; `None` without
    /// a data dir.
    pub fn recovery(&self) -> Option<&(Vec<Recovered>, std::time::Duration)> {
        self.recovery.as_ref()
    }

    /// The shared address every shard accepts on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Each shard's own address, in shard order.
    pub fn shard_addrs(&self) -> &[SocketAddr] {
        &self.shard_addrs
    }

    /// What the control thread calls whenever the placement or the lease changed: it tells
    /// every shard. `None` for a node on its own, or once taken.
    pub fn serving_change(&mut self) -> Option<ServingChange> {
        if self.feeds.is_empty() {
            return None;
        }
        let feeds = std::mem::take(&mut self.feeds);
        Some(Box::new(move |placement, registered, lease_valid_until| {
            let update = ShardUpdate {
                placement: placement.clone(),
                registered,
                lease_valid_until,
            };
            for feed in &feeds {
                // A shard that is gone has stopped the node (fail-stop): nothing to tell it.
                let _ = feed.send(update.clone());
            }
        }))
    }

    /// The receiving end of the shards' move reports, for the control thread: `None` for a
    /// node on its own, or once taken.
    pub fn take_move_reports(&mut self) -> Option<flume::Receiver<MoveReport>> {
        self.move_reports.take()
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.housekeeping.as_ref().map(Housekeeping::addr)
    }

    /// Serves the cluster families of `/metrics` from `source` (the node's control thread)
    /// from now on; nothing when the node serves no metrics or was given a source before.
    pub fn watch_cluster(&self, source: ClusterSource) {
        if let Some(housekeeping) = &self.housekeeping {
            housekeeping.watch_cluster(source);
        }
    }

    /// Stops the node cleanly: no new connections or reads, work in flight drains (within the
    /// grace period), connections close, shards exit; then the housekeeping thread.
    pub fn stop(self) -> NodeReport {
        let report = NodeReport {
            shards: self.shards.stop(),
        };
        if let Some(housekeeping) = self.housekeeping {
            housekeeping.stop();
        }
        report
    }
}

/// Waits for every shard's recovery; the first refusal stops the node (dropping the started
/// shards stops them).
fn wait_for_recovery(
    reports: Vec<std::sync::mpsc::Receiver<Result<Recovered, String>>>,
) -> Result<Vec<Recovered>, StartError> {
    let mut recovered = Vec::with_capacity(reports.len());
    for (shard, report) in reports.into_iter().enumerate() {
        let result = report
            .recv()
            .unwrap_or_else(|_| Err(format!("shard {shard} stopped before it recovered its log")));
        recovered
            .push(result.map_err(|message| StartError::Config(ConfigError::DataDir(message)))?);
    }
    Ok(recovered)
}

/// What the metrics endpoint says about this node.
fn node_info(config: &NodeConfig, addr: SocketAddr) -> NodeInfo {
    let runtime = &config.runtime;
    NodeInfo {
        node: addr.to_string(),
        partitions: runtime.partitions,
        shard_events_max: runtime.budget.shard_events,
        shard_bytes_max: runtime.budget.shard_bytes,
        connection_events_max: runtime.budget.connection_events,
        fail_fast: runtime.fail_fast,
        shard_cpus: runtime.cpus.clone(),
    }
}

/// Runs on each shard's executor: starts accepting on both of its listeners, and the
/// shard's metrics snapshots when the node serves metrics.
fn serve_shard(shard: Rc<Shard>, sockets: ShardSockets) {
    if let Some(store) = sockets.store {
        // Replayed before anything else runs on the shard: no connection, no mesh batch.
        match recover(&shard, &store.config, store.partitions) {
            Ok((recovered, start)) => {
                start_log_tasks(shard.clone(), start);
                let _ = store.report.send(Ok(recovered));
            }
            Err(message) => {
                let _ = store.report.send(Err(message));
                return;
            }
        }
    }
    if let Some(sender) = sockets.metrics {
        metrics_bridge::spawn_snapshot_task(shard.clone(), sender);
    }
    if let Some(feed) = sockets.feed {
        spawn_feed_task(shard.clone(), feed);
    }

    serve_listeners(
        shard,
        [sockets.shared, sockets.own],
        sockets.auth,
        sockets.tls,
        sockets.link_tls,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::shard::{LogTally, MoveTally, StageLatencies};

    #[test]
    fn the_stop_report_s_moves_line_counts_durable_installs_and_kept_back_replies() {
        let moved = ShardStats {
            moves: MoveTally {
                out_started: 2,
                out_flipped: 2,
                in_staged: 3,
                in_durable: 3,
                in_installed: 1,
                replies_kept_back: 40,
                replies_unknown: 5,
                ..MoveTally::default()
            },
            ..ShardStats::default()
        };
        let text = NodeReport {
            shards: vec![moved, ShardStats::default()],
        }
        .describe();
        let moves: Vec<&str> = text.lines().filter(|l| l.starts_with("  moves:")).collect();
        assert_eq!(moves.len(), 1, "only the shard that moved: {text}");
        assert!(
            moves[0].contains("; in 3 staged, 3 durable, 1 installed, 0 dropped, 0 refused;"),
            "{text}"
        );
        assert!(
            moves[0].contains("; 40 replies kept back (5 answered OutcomeUnknown);"),
            "{text}"
        );
    }

    #[test]
    fn the_stop_report_shows_log_syncs_beside_frame_dispatch_only_when_the_shard_logged() {
        let mut logged = ShardStats {
            log: LogTally {
                syncs: 4,
                records: 10,
                bytes: 3 << 20,
                ..LogTally::default()
            },
            stages: StageLatencies::new(true),
            ..ShardStats::default()
        };
        let log_sync_ns = logged.stages.log_sync_ns.as_mut().unwrap();
        for value_ns in [200_000, 400_000, 400_000, 2_000_000] {
            log_sync_ns.record(value_ns).unwrap();
        }
        let text = NodeReport {
            shards: vec![logged, ShardStats::default()],
        }
        .describe();
        let stage_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
        assert_eq!(stage_lines.len(), 2, "{text}");
        assert!(
            stage_lines[0].contains("mesh round trip none; log sync p50 4"),
            "{text}"
        );
        assert!(
            stage_lines[0]
                .ends_with(" µs (4 syncs, 10 records, 2.5 a sync, 3.0 MiB written); no stalls"),
            "{text}"
        );
        assert!(!stage_lines[1].contains("log sync"), "{text}");
        assert!(!text.contains("log gave up"), "{text}");
    }

    #[test]
    fn the_stop_report_says_what_a_failed_log_gave_up_even_before_its_first_sync() {
        let failed = ShardStats {
            log: LogTally {
                replies_unknown: 3,
                records_abandoned: 7,
                ..LogTally::default()
            },
            stages: StageLatencies::new(true),
            ..ShardStats::default()
        };
        let text = NodeReport {
            shards: vec![failed],
        }
        .describe();
        assert!(!text.contains("log sync p50"), "{text}");
        assert!(
            text.contains(
                " log gave up: 3 replies answered OutcomeUnknown, 7 records never made durable;"
            ),
            "{text}"
        );
    }
}
