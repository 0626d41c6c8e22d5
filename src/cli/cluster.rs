//! The cluster's command line: `trove node`'s cluster flags (`--cluster` and its companions),
//! which start the node's control thread, and the report of what it decides; `trove cluster
//! up` (a local cluster on loopback), `trove cluster status`, and the live-move commands
//! `trove cluster move|drain|rebalance` (`cluster::operator` does their work).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::thread::JoinHandle;

use clap::Args;

use crate::cluster::control::{ControlConfig, ControlHandle, ServingChange};
use crate::cluster::coordinator::{CoordinatorConfig, CoordinatorEvent};
use crate::cluster::etcd::EtcdClient;
use crate::cluster::etcd::parse_endpoints;
use crate::cluster::flags::ClusterFlags;
use crate::cluster::keys::{ClusterKeys, NodeInfo};
use crate::cluster::local::{EtcdProcess, LocalNodeConfig, NodeProcess, path_str};
use crate::cluster::placement::Placement;
use crate::cluster::status::ClusterStatus;
use crate::constants::{
    CLUSTER_LEASE_TTL_S_DEFAULT, CLUSTER_LEASE_TTL_S_MAX, CLUSTER_LEASE_TTL_S_MIN,
    CLUSTER_POLL_MS_DEFAULT, CLUSTER_SETTLE_MS_DEFAULT, CLUSTER_UP_NODES_MAX, NODE_HOST_BYTES_MAX,
};
use crate::core::ids::NodeId;
use crate::core::shard::MoveReport;

/// `trove node`'s cluster flags. Without `--cluster` the node runs alone, as before.
#[derive(Args, Debug, Clone)]
pub struct ClusterNodeArgs {
    // The cluster to join: `--cluster` and `--cluster-name`, as `trove top` reads them.
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// This node's id in the cluster, unique and kept across restarts (its partitions follow it)
    #[arg(long, value_name = "ID", requires = "cluster")]
    pub node_id: Option<u32>,
    /// The host other nodes and clients reach this node at [default: --listen, unless it is 0.0.0.0 or ::]
    #[arg(long, value_name = "HOST", requires = "cluster")]
    pub advertise: Option<String>,
    /// The node's lease TTL in seconds: it is declared dead this long after its last keepalive
    #[arg(long, value_name = "S", default_value_t = CLUSTER_LEASE_TTL_S_DEFAULT, requires = "cluster")]
    pub lease_ttl_s: u64,
}

/// What `--cluster` asks for, checked; `None` when the node runs alone.
pub struct ClusterPlan {
    endpoints: Vec<String>,
    keys: ClusterKeys,
    node: NodeId,
    advertise: String,
    lease_ttl_s: u64,
}

impl ClusterNodeArgs {
    /// Whether the node joins a cluster (`--cluster` was given).
    pub fn joins(&self) -> bool {
        self.cluster.cluster.is_some()
    }

    /// Checks the flags; `Ok(None)` without `--cluster`.
    pub fn plan(&self, listen: IpAddr) -> Result<Option<ClusterPlan>, String> {
        let Some((endpoints, keys)) = self.cluster.parse()? else {
            return Ok(None);
        };
        let node = self.node_id.ok_or(
            "--cluster needs --node-id ID: a number unique in the cluster, kept across restarts",
        )?;
        if !(CLUSTER_LEASE_TTL_S_MIN..=CLUSTER_LEASE_TTL_S_MAX).contains(&self.lease_ttl_s) {
            return Err(format!(
                "--lease-ttl-s {}: give {CLUSTER_LEASE_TTL_S_MIN} to {CLUSTER_LEASE_TTL_S_MAX} seconds",
                self.lease_ttl_s
            ));
        }
        let advertise = match &self.advertise {
            Some(host) if !host.trim().is_empty() => host.trim().to_owned(),
            Some(_) => {
                return Err("--advertise is empty; give the host others reach this node at".into());
            }
            None if listen.is_unspecified() => {
                return Err(format!(
                    "--cluster needs --advertise HOST: this node listens on {listen}, which \
                     other nodes cannot dial"
                ));
            }
            None => listen.to_string(),
        };
        if advertise.len() > NODE_HOST_BYTES_MAX {
            return Err(format!(
                "--advertise is {} bytes long; give a host name or address of at most \
                 {NODE_HOST_BYTES_MAX} bytes",
                advertise.len()
            ));
        }
        Ok(Some(ClusterPlan {
            endpoints,
            keys,
            node: NodeId(node),
            advertise,
            lease_ttl_s: self.lease_ttl_s,
        }))
    }
}

impl ClusterPlan {
    /// Starts the control thread of a node listening on `addr` and `shard_addrs`, serving
    /// `/metrics` on `metrics` if at all.
    pub fn start(
        &self,
        partitions: u32,
        addr: SocketAddr,
        shard_addrs: &[SocketAddr],
        on_change: ServingChange,
        move_reports: flume::Receiver<MoveReport>,
        metrics: Option<SocketAddr>,
    ) -> Result<ControlHandle, String> {
        let info = NodeInfo {
            address: self.advertise.clone(),
            port: addr.port(),
            shard_ports: shard_addrs.iter().map(SocketAddr::port).collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            metrics: metrics.map(|metrics| self.advertised_metrics(metrics)),
        };
        let coordinator = CoordinatorConfig {
            keys: self.keys.clone(),
            node: self.node,
            info,
            partitions,
            lease_ttl_s: self.lease_ttl_s,
            poll_ns: CLUSTER_POLL_MS_DEFAULT * 1_000_000,
            settle_ns: CLUSTER_SETTLE_MS_DEFAULT * 1_000_000,
        };
        ControlHandle::start(
            ControlConfig {
                endpoints: self.endpoints.clone(),
                coordinator,
            },
            on_change,
            move_reports,
        )
    }

    /// Where others reach the node's `/metrics`: the address it is bound to, or the
    /// advertised host when it listens on every address (0.0.0.0, ::).
    fn advertised_metrics(&self, metrics: SocketAddr) -> String {
        if !metrics.ip().is_unspecified() {
            return metrics.to_string();
        }
        if self.advertise.contains(':') && !self.advertise.starts_with('[') {
            format!("[{}]:{}", self.advertise, metrics.port())
        } else {
            format!("{}:{}", self.advertise, metrics.port())
        }
    }

    /// This node's id in the cluster.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The line `trove node` prints once the control thread runs.
    pub fn describe(&self) -> String {
        format!(
            "trove node: {} joining cluster {:?} through etcd {} (lease TTL {} s)",
            self.node,
            self.keys
                .prefix()
                .trim_start_matches("/trove/")
                .trim_end_matches('/'),
            self.endpoints.join(","),
            self.lease_ttl_s
        )
    }
}

/// Prints every coordination event of `control` on stdout, one line each, until the control
/// thread stops.
pub fn spawn_reporter(control: &ControlHandle, node: NodeId) -> std::io::Result<JoinHandle<()>> {
    let events = control.events().clone();
    std::thread::Builder::new()
        .name("trove-cluster-report".into())
        .spawn(move || {
            let mut stdout = std::io::stdout();
            for event in events.iter() {
                // A closed stdout must not stop the node.
                let _ = writeln!(stdout, "trove node: {}", describe_event(&event, node));
            }
        })
}

/// One line about a coordination event, as seen by `node`.
pub fn describe_event(event: &CoordinatorEvent, node: NodeId) -> String {
    match event {
        CoordinatorEvent::Registered { revision } => {
            format!("registered in the cluster at revision {revision}")
        }
        CoordinatorEvent::LeaseLost => {
            "lease lost (paused or cut off past its TTL): serving nothing \
             until registered again and confirmed by the controller"
                .into()
        }
        CoordinatorEvent::Fenced => "lease not confirmed in time: serving nothing until etcd \
             confirms it"
            .into(),
        CoordinatorEvent::Unfenced => "lease confirmed: serving this node's partitions".into(),
        CoordinatorEvent::NodeIdInUse => format!(
            "{node} is registered by another process (or this node's previous run, until its \
             lease ends); waiting for it to end: give every node its own --node-id"
        ),
        CoordinatorEvent::BecameController => "this node is now the controller".into(),
        CoordinatorEvent::NoLongerController => "this node is no longer the controller".into(),
        CoordinatorEvent::PlacementChanged(placement) => describe_placement(placement, node),
        CoordinatorEvent::EtcdUnreachable { reason } => {
            format!("etcd unreachable, keeping the current placement: {reason}")
        }
        CoordinatorEvent::EtcdReachable => "etcd reachable again".into(),
        CoordinatorEvent::RecordRejected { key, reason } => {
            format!("ignoring {key}: {reason}")
        }
    }
}

/// `placement epoch E: P partitions, N here (shard s: n, …), O offline`.
pub fn describe_placement(placement: &Placement, node: NodeId) -> String {
    let counts = placement.counts();
    let here: Vec<String> = counts
        .iter()
        .filter(|((owner, _), (serving, _))| *owner == node && *serving > 0)
        .map(|((_, shard), (serving, _))| format!("{shard}: {serving}"))
        .collect();
    let here_total = placement
        .owners()
        .iter()
        .filter(|owner| owner.node == node && owner.state.applies())
        .count();
    format!(
        "placement epoch {}: {} partitions, {here_total} served here ({}), {} offline",
        placement.epoch().get(),
        placement.partitions(),
        if here.is_empty() {
            "none".to_owned()
        } else {
            here.join(", ")
        },
        placement.offline().count()
    )
}

/// Run a local cluster, or show a running one's nodes, controller and placement.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Run a local cluster on loopback (its own etcd unless --cluster) until Ctrl-C or SIGTERM.
    ///
    /// Exit codes: 0 after a clean stop; 1 when etcd or a node cannot start (the message says
    /// why); 2 for a usage error.
    Up(UpArgs),
    /// Show a cluster's nodes (lease time left, address, shards), controller, epoch, partitions
    /// per node and shard, and offline partitions.
    ///
    /// Exit codes: 0 when shown; 1 when etcd cannot be reached; 2 for a usage error.
    Status(StatusArgs),
    /// Move one partition live to a node (and shard): pins it there (kept until replaced),
    /// then follows the move the controller makes and sums it up.
    ///
    /// Exit codes: 0 when it moved (or was there already); 1 when the move failed or did not
    /// finish within --timeout (the message says why), or etcd cannot be reached; 2 for a
    /// usage error (an unknown partition or node: the message says what exists).
    Move(MoveArgs),
    /// Drain a node: the controller moves every partition off it, live; once it owns nothing
    /// it can be stopped. Starting it again (a new registration) gives it its share back.
    ///
    /// Exit codes: 0 when the node owns nothing; 1 when some moves failed or did not finish
    /// within --timeout, or etcd cannot be reached; 2 for a usage error.
    Drain(DrainArgs),
    /// Even out partitions per shard (--by count) or measured events/s per shard (--by load)
    /// over the live, non-drained nodes, moving as few partitions as possible: the moved
    /// partitions are pinned to their new owners, and the moves followed.
    ///
    /// Exit codes: 0 when every planned move happened (or none was needed); 1 when some
    /// failed or did not finish within --timeout, etcd or a node's /metrics cannot be reached;
    /// 2 for a usage error.
    Rebalance(RebalanceArgs),
}

/// Which cluster a command reads and writes in etcd: its endpoints and its name.
#[derive(Args, Debug)]
pub struct ClusterAddress {
    /// The cluster's etcd (http://HOST:2379[,…]), as `trove node --cluster` was given it
    /// (--etcd is the same)
    #[arg(
        long = "cluster",
        visible_alias = "etcd",
        value_name = "URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd: String,
    /// The cluster's name
    #[arg(long, value_name = "NAME", default_value = "trove")]
    pub cluster_name: String,
}

/// The flags every live-move command takes: the cluster, and how to follow the moves.
#[derive(Args, Debug)]
pub struct MoveFlags {
    #[command(flatten)]
    pub cluster: ClusterAddress,
    /// Moves the controller runs at once, from now on (kept in the cluster's settings)
    #[arg(long, value_name = "K")]
    pub moves_max: Option<u32>,
    /// Stop following after this many seconds (the moves go on; `trove cluster status` shows them)
    #[arg(long, value_name = "S", default_value_t = crate::constants::MOVE_FOLLOW_S_DEFAULT)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct MoveArgs {
    /// The partition to move (0 to the cluster's partition count − 1)
    pub partition: u32,
    /// Where to: a node id, optionally with one of its shards (2 or 2:1); without a shard, the
    /// node's shard the controller picks
    #[arg(value_name = "NODE[:SHARD]")]
    pub target: String,
    #[command(flatten)]
    pub flags: MoveFlags,
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The node to empty (its id)
    pub node: String,
    #[command(flatten)]
    pub flags: MoveFlags,
}

/// What `trove cluster rebalance` evens out.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebalanceBy {
    /// Partitions per (node, shard)
    Count,
    /// Measured events/s per shard, from each node's /metrics
    Load,
}

#[derive(Args, Debug)]
pub struct RebalanceArgs {
    /// count: partitions per (node, shard) end within one of each other. load: each
    /// partition's applied events/s is measured from its owner's /metrics
    /// (trove_partition_events_applied_total) over --sample-s seconds, and partitions move
    /// between nodes, hot ones first where that evens the shards out best, until no move
    /// lowers the busiest shard (a node whose /metrics lacks the per-partition series has its
    /// shards' rates spread evenly over their partitions, and says so)
    #[arg(long, value_enum, default_value_t = RebalanceBy::Count)]
    pub by: RebalanceBy,
    /// With --by load: how long to measure, in seconds
    #[arg(long, value_name = "S", default_value_t = crate::constants::REBALANCE_SAMPLE_S_DEFAULT)]
    pub sample_s: u64,
    #[command(flatten)]
    pub flags: MoveFlags,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// How many nodes to start
    #[arg(long, value_name = "N")]
    pub nodes: usize,
    /// Shards each node runs
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub shards_per_node: usize,
    /// Use this etcd (http://HOST:2379) instead of starting one; the flag `trove node` and
    /// `trove top` take for the cluster's etcd (--etcd is the same)
    #[arg(long = "cluster", visible_alias = "etcd", value_name = "URL")]
    pub etcd: Option<String>,
    /// The cluster's name
    #[arg(long, value_name = "NAME", default_value = "local")]
    pub cluster_name: String,
    /// Partitions (a power of two)
    #[arg(long, value_name = "N", default_value_t = crate::constants::PARTITIONS_DEFAULT)]
    pub partitions: u32,
    /// Each node's lease TTL in seconds
    #[arg(long, value_name = "S", default_value_t = CLUSTER_LEASE_TTL_S_DEFAULT)]
    pub lease_ttl_s: u64,
    /// Keep each node's write-ahead log in DIR/node-N (created if missing), so a node that is
    /// stopped or killed and started again gets its partitions back with their state; without
    /// it the nodes keep everything in memory
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// File holding the cluster's shared secret, given to every node: clients and the nodes'
    /// links to each other must prove they know it (see `trove node --help`)
    #[arg(long, value_name = "PATH")]
    pub auth_secret_file: Option<std::path::PathBuf>,
    /// Certificate chain (PEM) every node serves TLS with, to clients and on the links
    /// between nodes (see `trove node --help`): valid for 127.0.0.1, allowing server and
    /// client authentication, signed by the CA in --tls-client-ca
    #[arg(long, value_name = "PATH", requires_all = ["tls_key", "tls_client_ca"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The CA (PEM) the nodes' links check each other's certificates against, and whose
    /// client certificates every node requires of its clients
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterAddress,
}

/// `trove cluster …`: returns the exit code.
pub fn run(args: &ClusterArgs) -> i32 {
    match &args.command {
        ClusterCommand::Status(status) => run_status(status),
        ClusterCommand::Up(up) => run_up(up),
        ClusterCommand::Move(args) => run_operator("move", &args.flags, |op, f| {
            super::cluster_moves::run_move(op, f, args)
        }),
        ClusterCommand::Drain(args) => run_operator("drain", &args.flags, |op, f| {
            super::cluster_moves::run_drain(op, f, args)
        }),
        ClusterCommand::Rebalance(args) => run_operator("rebalance", &args.flags, |op, f| {
            super::cluster_moves::run_rebalance(op, f, args)
        }),
    }
}

/// Checks the flags every live-move command shares, reaches etcd, runs `command` and turns
/// its outcome into the exit code.
fn run_operator(
    name: &str,
    flags: &MoveFlags,
    command: impl FnOnce(
        &mut crate::cluster::operator::Operator,
        &super::cluster_moves::Checked,
    ) -> Result<i32, crate::cluster::operator::OperatorError>,
) -> i32 {
    let checked = match super::cluster_moves::check_flags(flags) {
        Ok(checked) => checked,
        Err(message) => {
            eprintln!("trove cluster {name}: {message}");
            return 2;
        }
    };
    let client = EtcdClient::new(checked.endpoints.clone(), std::time::Duration::from_secs(3));
    let mut operator = crate::cluster::operator::Operator::new(client, checked.keys.clone());
    match command(&mut operator, &checked) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("trove cluster {name}: {}", error.message());
            error.exit_code()
        }
    }
}

fn run_status(args: &StatusArgs) -> i32 {
    let endpoints = match parse_endpoints(&args.cluster.etcd) {
        Ok(endpoints) => endpoints,
        Err(message) => {
            eprintln!("trove cluster status: --cluster {message}");
            return 2;
        }
    };
    if let Err(message) = ClusterKeys::new(&args.cluster.cluster_name) {
        eprintln!("trove cluster status: --cluster-name: {message}");
        return 2;
    }
    let mut client = EtcdClient::new(endpoints, std::time::Duration::from_secs(3));
    match ClusterStatus::read(&mut client, &args.cluster.cluster_name) {
        Ok(status) => {
            let mut stdout = std::io::stdout();
            let _ = write!(stdout, "{}", status.render());
            0
        }
        Err(message) => {
            eprintln!("trove cluster status: {message}; is etcd running there?");
            1
        }
    }
}

fn check_up(args: &UpArgs) -> Result<(), String> {
    if args.nodes == 0 || args.nodes > CLUSTER_UP_NODES_MAX {
        return Err(format!(
            "--nodes {}: give 1 to {CLUSTER_UP_NODES_MAX}",
            args.nodes
        ));
    }
    if args.shards_per_node == 0 || args.shards_per_node > crate::constants::SHARDS_MAX {
        return Err(format!(
            "--shards-per-node {}: give 1 to {}",
            args.shards_per_node,
            crate::constants::SHARDS_MAX
        ));
    }
    crate::core::partition::Partitioner::new(args.partitions)
        .map_err(|error| format!("--partitions: {error}"))?;
    ClusterKeys::new(&args.cluster_name).map_err(|error| format!("--cluster-name: {error}"))?;
    if let Some(path) = &args.auth_secret_file {
        crate::client::auth::read_secret_file(path)?;
        path_str(path).map_err(|error| format!("--auth-secret-file {error}"))?;
    }
    if let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_client_ca)
    {
        // Checked here as each node will check them, so a bad file is one sentence, not N.
        crate::net::tls::link_config(cert, key, ca)?;
        for (flag, path) in [
            ("--tls-cert", cert),
            ("--tls-key", key),
            ("--tls-client-ca", ca),
        ] {
            path_str(path).map_err(|error| format!("{flag} {error}"))?;
        }
    }
    if !(CLUSTER_LEASE_TTL_S_MIN..=CLUSTER_LEASE_TTL_S_MAX).contains(&args.lease_ttl_s) {
        return Err(format!(
            "--lease-ttl-s {}: give {CLUSTER_LEASE_TTL_S_MIN} to {CLUSTER_LEASE_TTL_S_MAX} seconds",
            args.lease_ttl_s
        ));
    }
    if let Some(etcd) = &args.etcd {
        parse_endpoints(etcd).map_err(|error| format!("--cluster {error}"))?;
    }
    Ok(())
}

/// Node `node_id`'s data dir under `--data-dir`, created; `None` without the flag.
fn node_data_dir(args: &UpArgs, node_id: u32) -> Result<Option<String>, String> {
    let Some(root) = &args.data_dir else {
        return Ok(None);
    };
    let dir = root.join(format!("node-{node_id}"));
    std::fs::create_dir_all(&dir).map_err(|error| {
        format!(
            "cannot create {}: {error}; give a --data-dir this user can write",
            dir.display()
        )
    })?;
    dir.into_os_string().into_string().map(Some).map_err(|dir| {
        format!(
            "--data-dir {}: give a path that is valid UTF-8",
            dir.to_string_lossy()
        )
    })
}

fn run_up(args: &UpArgs) -> i32 {
    if let Err(message) = check_up(args) {
        eprintln!("trove cluster up: {message}");
        return 2;
    }
    let trove = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => {
            eprintln!("trove cluster up: cannot find this program's own path: {error}");
            return 1;
        }
    };
    // Blocked before any thread or child starts, so that sigwait below receives them; the
    // children unblock them for themselves.
    let signals = super::node::block_stop_signals();
    let etcd = match &args.etcd {
        Some(url) => {
            let endpoints = parse_endpoints(url).expect("checked above");
            (None, endpoints.join(","))
        }
        None => match EtcdProcess::start() {
            Ok(etcd) => {
                let endpoint = etcd.endpoint();
                say(&format!(
                    "trove cluster up: etcd on {endpoint} (data in {})",
                    etcd.dir().display()
                ));
                (Some(etcd), endpoint)
            }
            Err(message) => {
                eprintln!("trove cluster up: {message}");
                return 1;
            }
        },
    };
    let (etcd_process, endpoint) = etcd;
    let mut nodes = Vec::with_capacity(args.nodes);
    for node_id in 1..=args.nodes as u32 {
        let config = LocalNodeConfig {
            trove: trove.clone(),
            etcd: endpoint.clone(),
            cluster_name: args.cluster_name.clone(),
            node_id,
            shards: args.shards_per_node,
            partitions: args.partitions,
            lease_ttl_s: args.lease_ttl_s,
        };
        let started = node_data_dir(args, node_id).and_then(|dir| {
            let mut extra = Vec::new();
            if let Some(dir) = &dir {
                extra.extend(["--data-dir", dir.as_str()]);
            }
            if let Some(path) = &args.auth_secret_file {
                extra.extend(["--auth-secret-file", path_str(path)?]);
            }
            let tls_flags = [
                ("--tls-cert", &args.tls_cert),
                ("--tls-key", &args.tls_key),
                ("--tls-client-ca", &args.tls_client_ca),
            ];
            for (flag, path) in tls_flags {
                if let Some(path) = path {
                    extra.extend([flag, path_str(path)?]);
                }
            }
            NodeProcess::start_with(&config, &extra)
        });
        match started {
            Ok(node) => {
                say(&format!(
                    "trove cluster up: node {node_id} on {}",
                    node.addr
                ));
                nodes.push(node);
            }
            Err(message) => {
                eprintln!("trove cluster up: {message}; stopping the others");
                drop(nodes);
                drop(etcd_process);
                return 1;
            }
        }
    }
    say(&format!(
        "trove cluster up: {} nodes in cluster {:?}; see it with `trove cluster status --cluster {endpoint} --cluster-name {}`; stop with Ctrl-C",
        args.nodes, args.cluster_name, args.cluster_name
    ));
    let echoes: Vec<_> = nodes
        .iter()
        .map(|node| {
            let lines = node.lines.clone();
            let node_id = node.node_id;
            std::thread::spawn(move || {
                for line in lines.iter() {
                    say(&format!("[node {node_id}] {line}"));
                }
            })
        })
        .collect();
    let signal = super::node::wait_for_stop_signal(&signals);
    say(&format!(
        "trove cluster up: signal {signal} received, stopping the nodes and etcd"
    ));
    for node in &mut nodes {
        node.stop();
    }
    drop(nodes);
    for echo in echoes {
        let _ = echo.join();
    }
    if let Some(etcd) = etcd_process {
        etcd.stop();
    }
    say("trove cluster up: stopped");
    0
}

fn say(line: &str) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{line}");
}
