//! The shard protocol, sans-IO: everything one shard decides, as a plain struct.
//!
//! A [`ShardCore`] lives on its shard's core and is driven the way quinn-proto drives a QUIC
//! connection: the shell (the async tasks in `runtime` and `net`, or the simulator, or a test)
//! feeds it inputs through `handle_*` methods and drains its outputs through `poll_*` methods.
//! Time is a `u64` of nanoseconds passed in; nothing here reads a clock, blocks, spawns or
//! touches a socket.
//!
//! ```text
//! connection read:   bytes ─▶ decode ─▶ handle_frame(now, conn, header, body)  (admits what credit allows)
//! connection write:  poll_replies(conn, &mut frames) ─▶ write ─▶ handle_written(now, conn, n)
//! mesh in:           batch ─▶ handle_mesh(now, from, batch)
//! mesh out:          poll_mesh(to) ─▶ channel
//! may read?          readable(conn)   (NotYet: stop reading, TCP pushes back)
//! whom to wake:      poll_writable(), poll_mesh_ready()
//! ```
//!
//! It owns the shard's partitions and placement ([`routing`]), its connections and each one's
//! in-flight state in one place ([`connections`]), every credit pool ([`admission`]), the reply
//! bytes waiting for each socket ([`replies`]), the outgoing batches per peer shard ([`mesh`]),
//! connection timeouts ([`timeouts`]), load shedding in fail-fast mode ([`shedding`]), the
//! stop protocol ([`stop`]) and its counters ([`counters`]); [`faults`] holds the bugs tests
//! inject to show the simulator catches them.

pub mod admission;
pub mod connections;
pub mod counters;
pub mod durability;
pub mod faults;
pub mod links;
pub mod mesh;
pub mod moves;
pub mod replies;
pub mod routing;
pub mod shedding;
pub mod stop;
pub mod timeouts;

#[cfg(test)]
mod tests;

use crate::constants::{
    CONNECTION_EVENTS_INFLIGHT_DEFAULT, CONNECTION_IDLE_MS_DEFAULT,
    CONNECTION_SHARES_PER_SHARD_MIN, CONNECTIONS_PER_SOURCE_DEFAULT, EVENT_BYTES_MAX,
    FRAME_ARRIVAL_MS_DEFAULT, LINK_BYTES_INFLIGHT_PER_SOURCE_MAX,
    LINK_EVENTS_INFLIGHT_PER_SOURCE_MAX, MESH_BYTES_INFLIGHT_MAX, MESH_EVENTS_INFLIGHT_MAX,
    SHARD_BYTES_INFLIGHT_MAX, SHARD_EVENTS_INFLIGHT_MAX, SHED_BURST_MS_MAX, SHED_TARGET_MS_DEFAULT,
    WRITE_STALL_MS_DEFAULT,
};
use crate::core::codec::{FrameBuilder, FrameKind};
use crate::core::credit::{Credit, CreditPool};
use crate::core::hunt::PartitionState;
use crate::core::ids::{NodeId, PartitionId, ShardId};
use crate::core::partition::{MapError, Placement};

pub use admission::{FrameProgress, Readable};
pub use connections::{CloseReason, ConnectRefusal, SourceAddr};
pub use counters::{EventTally, KindIndex, LinkTally, LogTally, MoveTally, OutcomeIndex, Traffic};
pub use counters::{ShardLoad, ShardStats, StageLatencies, Stalls};
pub use durability::{
    Durability, LogAbandoned, LogFaultKind, LogFaultStep, LogOp, LogSync, ReplayError,
};
pub use links::{ERROR_CODE_LINK_PROTOCOL, ERROR_CODE_LINK_REFUSED, LinkDest, LinkError, LinkPoll};
pub use mesh::{ArchiveBatch, BatchEntry, MeshBatch, MeshOutput};
pub use moves::{MoveError, MoveInstall, MoveReport, MoveStep};
pub use routing::{LocalEvent, NodeLease, Route};
pub use stop::ERROR_CODE_SHUTTING_DOWN;
pub use timeouts::ERROR_CODE_CONNECTION_CLOSED;

/// The error code a node answers a map request with when its map does not fit one frame.
/// (Codes before it: see `stop::ERROR_CODE_SHUTTING_DOWN` and `ERROR_CODE_CONNECTION_CLOSED`.)
pub const ERROR_CODE_MAP_TOO_LARGE: u16 = 104;

use connections::Connections;
use mesh::Peer;

/// What one shard may take on, and what it tells clients about the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// The node this shard belongs to.
    pub node: NodeId,
    /// Work this shard accepts from its sockets before the replies are written.
    pub shard_budget: Credit,
    /// One connection's share of `shard_budget`.
    pub connection_budget: Credit,
    /// What this shard may have in flight at each peer shard: its share of the peer's mesh
    /// budget (the peer holds the events; the limit is enforced here, at the sender).
    pub mesh_budget_per_source: Credit,
    /// Answer `Busy` when out of credit instead of waiting.
    pub fail_fast: bool,
    /// The port each shard of the node listens on, for the partition map clients ask for
    /// (zeros when the shard has no sockets, as in the simulator).
    pub shard_ports: Vec<u16>,
    /// A connection with nothing in flight that stays silent this long is closed.
    pub idle_timeout_ns: u64,
    /// Replies that wait this long for a socket that takes none of them close the connection.
    pub write_stall_ns: u64,
    /// Bugs injected by tests (see [`faults`]); off in every node.
    #[doc(hidden)]
    pub faults: faults::Faults,
    /// Whether the node may serve its partitions from the start: a single node may; a cluster
    /// node waits for its control thread to confirm its lease ([`ShardCore::handle_lease`]).
    pub lease_at_start: NodeLease,
    /// A frame whose first byte was read must arrive whole within this, or the connection
    /// is closed.
    pub frame_arrival_ns: u64,
    /// Connections one source address may hold open at this shard.
    pub connections_per_source_max: usize,
    /// In fail-fast mode, events that waited longer than this before dispatch, under a
    /// standing queue, are answered `Busy` (see [`shedding`]).
    pub shed_target_ns: u64,
    /// How long waits must stay past (or under) the target to start (or stop) shedding.
    pub shed_interval_ns: u64,
    /// Whether applied events are logged, and whether their replies wait for the log.
    pub durability: Durability,
    /// The cluster this node belongs to (`trove node --cluster-name`); `None` for a single
    /// node, which accepts no links and answers events owned elsewhere `Moved`.
    pub cluster: Option<String>,
    /// What this shard may have in flight at each shard of another node over a link: its
    /// share of that shard's link budget (enforced here, checked again there). The same on
    /// every node: a receiver grants it to every source.
    pub link_budget_per_source: Credit,
}

impl ShardConfig {
    /// The default budgets of a node of `shards` shards, no ports.
    pub fn defaults(shards: usize) -> ShardConfig {
        let sources = shards.saturating_sub(1).max(1) as u32;
        ShardConfig {
            node: NodeId(0),
            shard_budget: Credit::new(SHARD_EVENTS_INFLIGHT_MAX, SHARD_BYTES_INFLIGHT_MAX),
            connection_budget: Credit::new(
                CONNECTION_EVENTS_INFLIGHT_DEFAULT,
                SHARD_BYTES_INFLIGHT_MAX / CONNECTION_SHARES_PER_SHARD_MIN,
            ),
            mesh_budget_per_source: Credit::new(
                (MESH_EVENTS_INFLIGHT_MAX / sources).max(1),
                (MESH_BYTES_INFLIGHT_MAX / sources).max(EVENT_BYTES_MAX as u32),
            ),
            fail_fast: false,
            shard_ports: vec![0; shards],
            idle_timeout_ns: CONNECTION_IDLE_MS_DEFAULT * 1_000_000,
            write_stall_ns: WRITE_STALL_MS_DEFAULT * 1_000_000,
            faults: faults::Faults::default(),
            lease_at_start: NodeLease::SINGLE_NODE,
            frame_arrival_ns: FRAME_ARRIVAL_MS_DEFAULT * 1_000_000,
            connections_per_source_max: CONNECTIONS_PER_SOURCE_DEFAULT,
            shed_target_ns: SHED_TARGET_MS_DEFAULT * 1_000_000,
            shed_interval_ns: SHED_BURST_MS_MAX * 1_000_000,
            durability: Durability::Memory,
            cluster: None,
            link_budget_per_source: Credit::new(
                LINK_EVENTS_INFLIGHT_PER_SOURCE_MAX,
                LINK_BYTES_INFLIGHT_PER_SOURCE_MAX,
            ),
        }
    }
}

/// Whether `connection`'s own share cannot take its next event now (the one its blocked
/// frame waits for, else one of the largest size), whatever the shard's pool holds: it is
/// read again only once its own replies are written. One that holds nothing never is.
fn at_share(connection: &connections::Connection) -> bool {
    let next = connection
        .frame
        .map_or(Credit::new(1, EVENT_BYTES_MAX as u32), |frame| {
            frame.blocked_on
        });
    !connection.credit.is_idle() && !connection.credit.available().covers(next)
}

/// One shard's protocol state. See the module documentation. Lives on its shard's core only.
pub struct ShardCore {
    node: NodeId,
    shard: ShardId,
    placement: Placement,
    /// Indexed by partition; `Some` for the partitions this shard owns (served or not).
    partitions: Vec<Option<PartitionState>>,
    /// Indexed by partition: where its events go, by the placement and the lease now.
    /// `Route::Local` exactly for the partitions this shard applies events of now: it owns
    /// them, they are `Serving`, the node's lease is valid and confirmed them. Worked out once
    /// per placement or lease change, so routing an event is one load.
    routes: Vec<Route>,
    lease: NodeLease,
    /// Whether `placement` is one the node was given: always for a single node; for a cluster
    /// node, only once its control thread installed the cluster's. Until then the placement is
    /// a placeholder that owns nothing here, and the state recovered from the log is kept for
    /// the cluster's placement to confirm (or hand away).
    placed: bool,
    config: ShardConfig,
    /// The map reply frame for the current placement, encoded once per placement.
    map_reply: Vec<u8>,
    /// The shard's socket budget: every event admitted from a connection holds some until its
    /// reply is written (or can no longer be).
    credit: CreditPool,
    connections: Connections,
    /// Indexed by shard; `None` for this shard itself.
    peers: Vec<Option<Peer>>,
    /// Peers whose flusher has something to look at, each listed once.
    mesh_ready: Vec<ShardId>,
    /// Connections whose writer has something to look at, each listed once.
    writable: Vec<crate::core::ids::ConnectionId>,
    /// Connections the core decided to close (timeouts, eviction), for the shell to close.
    closing: Vec<(crate::core::ids::ConnectionId, CloseReason)>,
    stopping: bool,
    /// When the events frame that the last `handle_frame` call finished was first offered,
    /// until [`ShardCore::record_frame_dispatched`] records its stage.
    frame_dispatched_arrived_ns: Option<u64>,
    stats: ShardStats,
    faults: faults::FaultState,
    /// Log records owed to the shell and replies waiting for them (see [`durability`]).
    durability: durability::DurabilityState,
    /// Links to and from shards of other nodes (see [`links`]).
    links: links::Links,
    /// Partitions streaming to their next owner, and partitions staged here (see [`moves`]).
    moves: moves::Moves,
}

impl ShardCore {
    /// A shard with the default budgets.
    pub fn new(shard: ShardId, placement: Placement) -> ShardCore {
        let config = ShardConfig::defaults(placement.shards());
        ShardCore::with_config(shard, placement, config)
    }

    pub fn with_config(shard: ShardId, placement: Placement, config: ShardConfig) -> ShardCore {
        let peers = (0..placement.shards())
            .map(|peer| (peer != shard.index()).then(|| Peer::new(config.mesh_budget_per_source)))
            .collect();
        let mut core = ShardCore {
            node: config.node,
            shard,
            partitions: Vec::new(),
            routes: Vec::new(),
            lease: config.lease_at_start,
            placed: config.lease_at_start != NodeLease::Fenced,
            map_reply: Vec::new(),
            credit: CreditPool::new(config.shard_budget),
            connections: Connections::default(),
            peers,
            mesh_ready: Vec::new(),
            writable: Vec::new(),
            closing: Vec::new(),
            stopping: false,
            frame_dispatched_arrived_ns: None,
            durability: durability::DurabilityState::new(config.durability),
            links: links::Links::default(),
            moves: moves::Moves::default(),
            stats: ShardStats {
                shard: shard.0,
                // The log-sync stage only for a shard that logs (its histogram is 220 KiB).
                stages: StageLatencies::new(config.durability != Durability::Memory),
                ..ShardStats::default()
            },
            placement,
            faults: faults::FaultState::new(config.faults),
            config,
        };
        core.adopt_placement();
        core
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// What this shard was configured with.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The placement, by the name clients know it.
    pub fn map(&self) -> &Placement {
        &self.placement
    }

    /// The state of a partition this shard owns (served now or not).
    pub fn partition(&self, partition: PartitionId) -> Option<&PartitionState> {
        self.partitions.get(partition.index())?.as_ref()
    }

    /// Whether this shard applies events of `partition` now.
    pub fn serves(&self, partition: PartitionId) -> bool {
        matches!(self.routes.get(partition.index()), Some(Route::Local(_)))
    }

    /// Installs a newer placement. Partitions that left this shard for another owner drop
    /// their state (moving state with them is the store's job); partitions that arrived start
    /// empty; partitions this shard still owns but may not serve (`Offline`, or not confirmed
    /// since the node's lease came back) keep their state and answer `Unavailable`. Clients
    /// behind the new epoch get the new map with their next replies. An older or equal epoch
    /// is ignored; a placement that does not fit this node is refused.
    pub fn handle_placement(&mut self, now_ns: u64, placement: Placement) -> Result<(), MapError> {
        if placement.epoch() <= self.placement.epoch() {
            return Ok(());
        }
        if placement.partitions() != self.placement.partitions() {
            return Err(MapError::BadPartitionCount(u64::from(
                placement.partitions(),
            )));
        }
        let shards = self.peers.len();
        if let Some((partition, owner)) = placement
            .owners()
            .iter()
            .enumerate()
            .find(|(_, owner)| owner.node == self.node && owner.shard.index() >= shards)
        {
            return Err(MapError::UnknownOwner {
                partition: partition as u32,
                owner: owner.shard.0,
            });
        }
        self.placement = placement;
        self.placed = true;
        self.adopt_placement();
        self.settle_moves(now_ns);
        self.fail_links_to_absent_owners(now_ns);
        Ok(())
    }

    /// Whether this shard's placement is one its node was given (see `placed`).
    pub fn placed(&self) -> bool {
        self.placed
    }

    /// What the node's control thread knows of its lease now. Fenced, the shard answers
    /// `Unavailable` to everything (its partitions may be someone else's by now); confirmed,
    /// it serves the partitions confirmed to it after its registration.
    pub fn handle_lease(&mut self, now_ns: u64, lease: NodeLease) {
        if lease != self.lease {
            self.lease = lease;
            self.adopt_placement();
            self.settle_moves(now_ns);
        }
    }

    /// The node's lease as this shard last heard it.
    pub fn lease(&self) -> NodeLease {
        self.lease
    }

    fn adopt_placement(&mut self) {
        let partitions = self.placement.partitions() as usize;
        self.partitions.resize_with(partitions, || None);
        self.routes.clear();
        for index in 0..partitions {
            let partition = PartitionId(index as u32);
            let owner = self.owner_here(partition);
            let owner = &owner;
            let owned = owner.node == self.node && owner.shard == self.shard;
            // A partition moved here is served once its source sealed the tail.
            let serve = owned
                && self.lease.serves(owner)
                && !(self.partitions[index].is_none()
                    && self.awaits_seal(partition, owner.part_epoch));
            let staged = if serve && self.partitions[index].is_none() {
                self.take_staged(partition, owner.part_epoch)
            } else {
                None
            };
            let slot = &mut self.partitions[index];
            if serve && slot.is_none() {
                // A partition moved here is served from the state it was handed off with.
                *slot = Some(staged.unwrap_or_else(|| PartitionState::new(partition)));
            } else if !owned && self.placed && slot.take().is_some() {
                self.note_departed(partition);
            }
            self.routes
                .push(routing::route_of(self.node, partition, owner, serve));
        }
        self.patch_move_routes();
        let ports = if self.config.shard_ports.len() == self.peers.len() {
            self.config.shard_ports.clone()
        } else {
            vec![0; self.peers.len()]
        };
        let epoch = self.placement.epoch().get();
        let message = self.placement.to_message(self.node, &ports);
        let mut frames = FrameBuilder::new();
        if let Err(error) = frames.single(FrameKind::MapReply, epoch, Some(&message)) {
            // Many partitions and many nodes with long hosts can outgrow a frame: say so to
            // whoever asks, rather than send a map cut short.
            frames.error_message(
                epoch,
                ERROR_CODE_MAP_TOO_LARGE,
                format!(
                    "this node's partition map does not fit one frame ({error}); \
                     use fewer partitions or shorter --advertise hosts"
                ),
            );
        }
        self.map_reply = frames.bytes().to_vec();
    }

    /// The shard's counters so far, with the high-water marks of its credit pools.
    pub fn stats(&self) -> ShardStats {
        let mut stats = self.stats.clone();
        stats.socket_inflight_peak = self.credit.held_peak();
        for peer in self.peers.iter().flatten() {
            let peak = peer.credit.held_peak();
            stats.mesh_inflight_peak.events = stats.mesh_inflight_peak.events.max(peak.events);
            stats.mesh_inflight_peak.bytes = stats.mesh_inflight_peak.bytes.max(peak.bytes);
        }
        stats.link_inflight_peak = self.link_inflight_peak();
        stats
    }

    /// The counters as they stand, borrowed: for a snapshot that copies only what it needs
    /// (not the stage histograms, which [`Self::stats`] clones whole).
    pub fn counters(&self) -> &ShardStats {
        &self.stats
    }

    /// Events applied to each partition this shard owns and holds the state of, in partition
    /// order: (partition, events applied since the state was made here). A partition that
    /// moved away is not listed (its state left with it), so the list is bounded by the
    /// placement's partition count.
    pub fn applied_by_partition(&self) -> impl Iterator<Item = (PartitionId, u64)> + '_ {
        self.partitions
            .iter()
            .zip(self.placement.owners())
            .filter_map(move |(state, owner)| {
                let state = state.as_ref()?;
                let owned = owner.node == self.node && owner.shard == self.shard;
                owned.then(|| (state.partition(), state.applied()))
            })
    }

    /// Socket credit held now, by every connection together.
    pub fn credit_held(&self) -> Credit {
        self.credit.held()
    }

    /// Credit this shard holds now at `peer` (its share of the peer's mesh budget).
    pub fn mesh_credit_held(&self, peer: ShardId) -> Credit {
        self.peers
            .get(peer.index())
            .and_then(Option::as_ref)
            .map_or(Credit::ZERO, |peer| peer.credit.held())
    }

    /// Connections whose sockets are still open.
    pub fn connections_open(&self) -> usize {
        self.connections.open()
    }

    /// Credit held and capacity of each pool, and the open connections, now: a read-only view
    /// for metrics. It walks every connection (reply backlogs, the fullest share), so it is
    /// for the shell's once-a-second snapshot, never for the data path.
    pub fn load(&self) -> ShardLoad {
        let mut load = ShardLoad {
            connections_open: self.connections_open() as u64,
            socket_held: self.credit.held(),
            socket_capacity: self.credit.capacity(),
            ..ShardLoad::default()
        };
        for peer in self.peers.iter().flatten() {
            let (held, capacity) = (peer.credit.held(), peer.credit.capacity());
            load.mesh_held.0 += u64::from(held.events);
            load.mesh_held.1 += u64::from(held.bytes);
            load.mesh_capacity.0 += u64::from(capacity.events);
            load.mesh_capacity.1 += u64::from(capacity.bytes);
            load.mesh_batches_queued += peer.batches_queued() as u64;
        }
        (load.link_held, load.link_capacity) = self.link_load();
        load.links_open = self.links_open() as u64;
        load.connection_share = self.config.connection_budget;
        for connection in self.connections.iter() {
            let bytes = connection.out.len() + connection.writing_bytes;
            load.reply_bytes_queued += bytes as u64;
            load.connections_writing += u64::from(bytes > 0);
            if !connection.socket_closed {
                let held = connection.credit.held();
                let max = &mut load.connection_held_max;
                max.events = max.events.max(held.events);
                max.bytes = max.bytes.max(held.bytes);
                load.connections_at_share += u64::from(at_share(connection));
            }
        }
        load
    }

    /// Checks that every credit is accounted for, in one place each: a connection holds
    /// exactly what its queued, written-out and forwarded events hold; the shard's pool holds
    /// the sum over its connections; the mesh credit held at peers is the credit of the
    /// events away there. The simulator and the tests call it after every step; it says what
    /// is off instead of panicking.
    pub fn check_credit(&self) -> Result<(), String> {
        let mut connections_held = Credit::ZERO;
        let mut away = Credit::ZERO;
        for connection in self.connections.iter() {
            let accounted = connection.local_credit().plus(connection.remote_credit);
            if connection.credit.held() != accounted {
                return Err(format!(
                    "{} holds {:?} but its replies and forwarded events hold {:?}",
                    connection.id,
                    connection.credit.held(),
                    accounted
                ));
            }
            if connection.socket_closed && connection.local_credit() != Credit::ZERO {
                return Err(format!(
                    "{} is closed but still holds {:?} for replies",
                    connection.id,
                    connection.local_credit()
                ));
            }
            connections_held = connections_held.plus(connection.credit.held());
            away = away.plus(connection.remote_credit);
        }
        if connections_held != self.credit.held() {
            return Err(format!(
                "{} holds {:?} of socket credit but its connections hold {:?}",
                self.shard,
                self.credit.held(),
                connections_held
            ));
        }
        let at_peers = self
            .peers
            .iter()
            .flatten()
            .fold(self.durability.held_credit(), |sum, peer| {
                sum.plus(peer.credit.held())
            })
            .plus(self.links.held())
            .plus(self.moves.held_credit());
        if at_peers != away {
            return Err(format!(
                "{} holds {:?} of mesh and link credit at its peers (and for replies waiting for the log) but its forwarded events hold {:?}",
                self.shard, at_peers, away
            ));
        }
        Ok(())
    }
}
