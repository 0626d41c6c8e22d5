//! A node's composition root: shards plus their listening sockets, built from a config, and
//! the report of what they did.
//!
//! [`Node::start`] runs on the thread that starts the node. It binds every socket on the calling thread first (so "address in use" is
//! reported before any shard starts, and port 0 resolves to one port for all shards), then
//! starts the shards and gives each its two listeners: the shared port, on which every shard
//! accepts (SO_REUSEPORT lets the kernel spread connections), and the shard's own port, which
//! shard-aware clients use to reach the owner of a partition directly.
//!
//! Unless `--metrics-listen off`, it also binds the `/metrics` endpoint and starts the
//! housekeeping thread (`crate::metrics`) that serves it from each shard's snapshots.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use socket2::Socket;

use crate::core::auth::AuthSecret;
use crate::core::partition::Placement;
use crate::core::shard::{ShardStats, Stalls};
use crate::metrics::housekeeping::ClusterSource;
use crate::metrics::{Housekeeping, MetricsListen, NodeInfo, SnapshotSender, snapshot_channel};
use crate::net::listener::{listen, local_addr, probe_port_free, serve_listeners};
use crate::runtime::config::{ConfigError, RuntimeConfig};
use crate::runtime::executors::{Shards, StartError, spawn_shards};
use crate::runtime::shard::Shard;

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
    /// Where the housekeeping thread serves `/metrics`, or `Off`.
    pub metrics: MetricsListen,
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
            metrics: MetricsListen::Off,
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

/// "no stalls", or how many and the worst overage past the time slice.
fn describe_stalls(stalls: Stalls) -> String {
    match stalls.count {
        0 => "no stalls".into(),
        count => format!(
            "{count} stall{} (worst {:.1} ms past the time slice)",
            if count == 1 { "" } else { "s" },
            stalls.worst_overage_ns as f64 / 1e6
        ),
    }
}

impl NodeReport {
    /// One paragraph per shard: what it applied and forwarded, how often it ran out of credit,
    /// and how long its stages took.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for shard in &self.shards {
            text.push_str(&format!(
                "shard {} (CPU {}): {} events applied, {} forwarded, {} applied for other shards, {} connections ({} refused when full, {} evicted when full, {} closed idle, {} closed for not reading, {} failed authentication, {} cut at stop), {} frames rejected, {} credit waits, {} Busy, {} Moved, {} ShuttingDown\n",
                shard.shard,
                shard.cpu,
                shard.events_applied,
                shard.events_forwarded,
                shard.events_applied_for_peers,
                shard.connections_accepted,
                shard.connections_refused,
                shard.connections_evicted,
                shard.connections_idle_closed,
                shard.connections_write_stalled,
                shard.connections_unauthenticated,
                shard.connections_force_closed,
                shard.frames_rejected,
                shard.socket_credit_waits + shard.mesh_credit_waits,
                shard.busy_replies,
                shard.events_moved,
                shard.shutting_down_replies,
            ));
            text.push_str(&format!(
                "  frame dispatch {}; mesh round trip {}; {}\n",
                percentiles_us(&shard.stages.frame_dispatch_ns),
                percentiles_us(&shard.stages.mesh_round_trip_ns),
                describe_stalls(shard.stalls),
            ));
        }
        text
    }
}

/// What each shard gets from the thread that starts the node: its two listeners, and the
/// secret its clients must prove they know.
struct ShardSockets {
    shared: Socket,
    own: Socket,
    auth: Option<AuthSecret>,
    /// Where the shard's metrics snapshots go, when the node serves metrics.
    metrics: Option<SnapshotSender>,
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
        let mut runtime = config.runtime.clone();
        runtime.shard_ports = shard_addrs.iter().map(|addr| addr.port()).collect();
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
        let payloads = shared
            .into_iter()
            .zip(own)
            .map(|(shared, own)| ShardSockets {
                shared,
                own,
                auth: config.auth.clone(),
                metrics: metrics_listener.as_ref().map(|_| snapshot_sender.clone()),
            })
            .collect();
        let shards = spawn_shards(&runtime, &map, payloads, serve_shard)?;
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
        })
    }

    /// The shared address every shard accepts on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Each shard's own address, in shard order.
    pub fn shard_addrs(&self) -> &[SocketAddr] {
        &self.shard_addrs
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
    if let Some(sender) = sockets.metrics {
        metrics_bridge::spawn_snapshot_task(shard.clone(), sender);
    }
    serve_listeners(shard, [sockets.shared, sockets.own], sockets.auth);
}
