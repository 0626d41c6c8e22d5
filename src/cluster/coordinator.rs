//! `Coordinator`: one node's part in the cluster's coordination, sans-IO.
//!
//! It decides everything about membership and ownership and does none of the I/O: the control
//! thread (`control`) asks it for the next etcd request ([`Coordinator::poll_request`]), makes
//! it, and hands back the reply ([`Coordinator::handle_response`]) or the failure
//! ([`Coordinator::handle_failure`]); time is a `u64` of monotonic nanoseconds passed in. Tests
//! and the simulator drive it the same way against a modelled etcd.
//!
//! What it does, in order of priority each time it is asked:
//! 1. holds a lease (grant, then keepalive every TTL/3) and knows until when it is valid: the
//!    send time of the last acknowledged keepalive + TTL − a margin (self-fencing: past that the
//!    node serves nothing, because the controller may already have declared it dead);
//! 2. registers `nodes/<id>` bound to the lease, and again whenever the lease was lost;
//! 3. keeps a view of the cluster's keys (nodes, controller, assignment, moves): read whole
//!    when the watch opens and after an outage, then brought up to date by the watch's changes
//!    ([`Coordinator::handle_watch_changes`]), and probed every poll interval;
//! 4. campaigns for controller when there is none (`controller` created only if absent, bound
//!    to the lease, so it ends with the lease);
//! 5. puts the `moves/<p>` records of its shards' move reports
//!    ([`Coordinator::handle_move_report`]) and, as controller, of the moves it flipped or
//!    abandoned, every record waiting in one transaction;
//! 6. as controller, writes the next placement when it differs from the current one: one
//!    assignment record, compare-and-swap on its revision, in a transaction that also checks
//!    the controller key's create revision, so a controller paused past its lease cannot write.
//!    Besides the sticky rule (`placement::next_owners`), it moves partitions live
//!    (`placement::plan_moves`): to their pinned owner, off drained nodes, onto nodes that
//!    joined (their rendezvous share), at most `moves_max` in flight, paced; it flips a move
//!    once its source reported it ready (while more moves wait for the next start's turn, in
//!    the write that starts them, at most a start gap later), and abandons it (the source stays owner) when the
//!    target is gone, the source refused, or no ready came within `MOVE_TIMEOUT_MS_MAX` of
//!    when this controller first saw it.
//!
//! An etcd outage changes nothing it decided: the placement stays, the outage is reported
//! ([`CoordinatorEvent::EtcdUnreachable`]), requests are retried with a bounded back-off.
//!
//! Lives on the node's control thread; a cluster view plus this node's lease.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::cluster::keys::{
    ClusterKeys, ControllerRecord, DrainRecord, KeyKind, MoveRecord, MoveState, NodeInfo,
    PinRecord, Released, SettingsRecord, bounded_reason, decode_json, encode_json,
};
use crate::cluster::placement::{
    LiveNode, MoveInputs, MovePlan, OwnerState, PART_EPOCH_THIS_RECORD, Placement, decode_record,
    encode_record, next_owners, plan_moves,
};
use crate::constants::{
    CLUSTER_EVENTS_QUEUED_MAX, CLUSTER_NODES_MAX, CLUSTER_REPLY_BYTES_MAX, CLUSTER_RETRY_MS_MAX,
    CLUSTER_RETRY_MS_MIN, MOVE_RECORDS_PER_WRITE_MAX, MOVE_RECORDS_QUEUED_MAX,
    MOVE_RETRY_BACKOFF_MS_MAX, MOVE_START_GAP_MS_DEFAULT, MOVE_TIMEOUT_MS_MAX, MOVES_INFLIGHT_MAX,
};
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::core::partition::NodeAddress;
use crate::core::shard::moves::{MoveReport, MoveStep};

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

/// What a coordinator needs to know about its node and cluster.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub keys: ClusterKeys,
    pub node: NodeId,
    pub info: NodeInfo,
    /// The cluster's partition count: every node must agree.
    pub partitions: u32,
    pub lease_ttl_s: u64,
    /// How often the cluster's keys are read back.
    pub poll_ns: u64,
    /// How long the live nodes must stay the same before a cluster's first placement.
    pub settle_ns: u64,
}

impl CoordinatorConfig {
    fn ttl_ns(&self) -> u64 {
        self.lease_ttl_s * NS_PER_S
    }

    /// Time taken off the lease's end when judging it valid: covers the reply's delay, the
    /// rate difference between this clock and etcd's, and a node that pauses right after
    /// checking. A fifth of the TTL.
    pub fn lease_margin_ns(&self) -> u64 {
        self.ttl_ns() / 5
    }

    /// The longest one etcd request may take: a third of the TTL, so a slow etcd cannot delay
    /// a keepalive past the lease.
    pub fn request_timeout_ns(&self) -> u64 {
        self.ttl_ns() / 3
    }
}

/// One etcd request, in etcd's own terms. Keys are strings, values bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    LeaseGrant {
        ttl_s: u64,
    },
    LeaseKeepAlive {
        lease: i64,
    },
    /// Put `key` bound to `lease`.
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    /// A transaction with no condition: put every `(key, value)`, bound to no lease, at one
    /// revision (so one request, and one message of each watch, for several records).
    PutAll {
        puts: Vec<(String, Vec<u8>)>,
    },
    /// Every key starting with `prefix`.
    RangePrefix {
        prefix: String,
    },
    /// The keys starting with `prefix` put after `after_revision` (etcd's `min_mod_revision`);
    /// keys deleted since are not in it.
    RangePrefixChanged {
        prefix: String,
        after_revision: u64,
    },
    /// The store's revision only (a count-only range over `prefix`): cheap to ask often, and it
    /// changes whenever any key is put or deleted, a lease's expiry included.
    Revision {
        prefix: String,
    },
    /// A transaction: if `key` does not exist, put it bound to `lease`.
    CreateIfAbsent {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    /// A transaction: if `key`'s mod revision is `expect_mod_revision` (0: absent) and
    /// `guard_key`'s create revision is `guard_create_revision`, put `key`.
    CompareAndSwap {
        key: String,
        value: Vec<u8>,
        expect_mod_revision: u64,
        guard_key: String,
        guard_create_revision: u64,
    },
}

/// One key as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// The lease the key is bound to (0: none).
    pub lease: i64,
}

/// One message of a watch stream, as the watcher needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watch is open: it reports every change after `revision`, and only those.
    Started { revision: u64 },
    /// Changes, in revision order; `revision` is the last one's.
    Changes {
        revision: u64,
        changes: Vec<WatchChange>,
    },
}

/// One change a watch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchChange {
    Put(KeyValue),
    /// The key was deleted at `revision` (by hand, or with the lease it was bound to).
    Delete {
        key: String,
        revision: u64,
    },
}

impl WatchChange {
    pub fn key(&self) -> &str {
        match self {
            WatchChange::Put(kv) => &kv.key,
            WatchChange::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> u64 {
        match self {
            WatchChange::Put(kv) => kv.mod_revision,
            WatchChange::Delete { revision, .. } => *revision,
        }
    }
}

/// etcd's reply to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    LeaseGranted {
        lease: i64,
        ttl_s: i64,
    },
    /// The lease's remaining TTL; 0 or less when etcd no longer has the lease.
    LeaseKept {
        ttl_s: i64,
    },
    Put {
        revision: u64,
    },
    Range {
        revision: u64,
        kvs: Vec<KeyValue>,
    },
    Revision {
        revision: u64,
    },
    Txn {
        succeeded: bool,
        revision: u64,
    },
}

/// What happened, for the node to report or act on.
#[derive(Clone, Debug, PartialEq)]
pub enum CoordinatorEvent {
    /// Registered `nodes/<id>` at this revision.
    Registered {
        revision: u64,
    },
    /// etcd no longer has this node's lease (it was paused or cut off past its TTL): it serves
    /// nothing until it has registered again and the controller confirmed its partitions.
    LeaseLost,
    /// This node's key is held by another lease: another process runs with this node id, or
    /// this node's previous life has not yet expired. It registers once the key is free.
    NodeIdInUse,
    BecameController,
    NoLongerController,
    /// The lease is no longer known valid (no keepalive acknowledged in time): the node serves
    /// nothing from now on, until one is.
    Fenced,
    /// The lease is known valid again (or for the first time).
    Unfenced,
    /// A new placement was read or written.
    PlacementChanged(Arc<Placement>),
    /// etcd did not answer; the placement in hand is kept.
    EtcdUnreachable {
        reason: String,
    },
    EtcdReachable,
    /// A record in etcd this node cannot use (reported once per key and revision).
    RecordRejected {
        key: String,
        reason: String,
    },
}

/// A registered node, as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub info: NodeInfo,
    pub lease: i64,
    /// The revision of its registration: its partitions are confirmed to it only at a later
    /// partition epoch.
    pub registered_revision: u64,
}

/// The controller key, as read from etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerEntry {
    pub node: NodeId,
    pub lease: i64,
    pub create_revision: u64,
}

/// The cluster as one read of its keys showed it. Built by nodes and by `trove cluster status`.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub revision: u64,
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    pub controller: Option<ControllerEntry>,
    pub assignment: Option<Arc<Placement>>,
    /// The operator's pins, by partition.
    pub pins: BTreeMap<u32, PinRecord>,
    /// The operator's drains, by node (in force only while the node keeps that registration:
    /// see [`ClusterView::drained`]).
    pub drains: BTreeMap<NodeId, DrainRecord>,
    /// How each partition's latest move stands.
    pub moves: BTreeMap<u32, MoveRecord>,
    /// The operator's settings (`None`: the defaults).
    pub settings: Option<SettingsRecord>,
    /// Keys that could not be read, with the reason.
    pub rejected: Vec<(String, String)>,
}

impl ClusterView {
    /// The view that a range over the cluster's prefix at `revision` returned.
    pub fn from_range(keys: &ClusterKeys, revision: u64, kvs: &[KeyValue]) -> ClusterView {
        let mut view = ClusterView {
            revision,
            ..ClusterView::default()
        };
        let mut assignment = None;
        for kv in kvs {
            match keys.classify(&kv.key) {
                // Decoded after the nodes, which give it their addresses.
                KeyKind::Assignment => assignment = Some(kv),
                kind => view.take_key(kind, kv),
            }
        }
        if let Some(kv) = assignment {
            view.take_key(KeyKind::Assignment, kv);
        }
        view
    }

    /// This view with `changes` (watched, in revision order, the last at `revision`) applied
    /// key by key, decoding only the keys that changed: during a drain the prefix holds a
    /// record per moved partition, and decoding all of them at every change was most of a
    /// node's control thread. Not for a change of a node's registration: nodes give the
    /// assignment its addresses, and their order decides which are over `CLUSTER_NODES_MAX`,
    /// so such a change is made by reading the keys whole ([`ClusterView::from_range`]).
    pub fn apply_changes(&mut self, keys: &ClusterKeys, revision: u64, changes: &[WatchChange]) {
        for change in changes {
            // The key's old value goes first, also when the new one cannot be read.
            let key = change.key();
            let kind = keys.classify(key);
            self.rejected.retain(|(rejected, _)| rejected != key);
            self.forget_key(kind);
            if let WatchChange::Put(kv) = change {
                self.take_key(kind, kv);
            }
        }
        self.revision = revision;
    }

    /// Takes one key's value, listing it in `rejected` if it cannot be read. The assignment
    /// gets the addresses of the nodes already in this view.
    fn take_key(&mut self, kind: KeyKind, kv: &KeyValue) {
        let outcome = match kind {
            KeyKind::Node(node) => self.add_node(node, kv),
            KeyKind::Controller => serde_json::from_slice::<ControllerRecord>(&kv.value)
                .map(|record| {
                    self.controller = Some(ControllerEntry {
                        node: NodeId(record.node),
                        lease: kv.lease,
                        create_revision: kv.create_revision,
                    })
                })
                .map_err(|error| format!("not a controller record: {error}")),
            KeyKind::Pin(partition) => decode_json("pin", &kv.value).map(|pin| {
                self.pins.insert(partition, pin);
            }),
            KeyKind::Drain(node) => decode_json("drain", &kv.value).map(|drain| {
                self.drains.insert(node, drain);
            }),
            KeyKind::Move(partition) => decode_json("move", &kv.value).map(|record| {
                self.moves.insert(partition, record);
            }),
            KeyKind::Settings => {
                decode_json("settings", &kv.value).map(|settings| self.settings = Some(settings))
            }
            KeyKind::Assignment => decode_record(&kv.value, kv.mod_revision).map(|placement| {
                let placement = self.with_addresses(&kv.key, placement);
                self.assignment = Some(Arc::new(placement));
            }),
            KeyKind::Other => Ok(()),
        };
        if let Err(reason) = outcome {
            self.rejected.push((kv.key.clone(), reason));
        }
    }

    /// A key was deleted: its value leaves the view.
    fn forget_key(&mut self, kind: KeyKind) {
        match kind {
            KeyKind::Node(node) => {
                self.nodes.remove(&node);
            }
            KeyKind::Controller => self.controller = None,
            KeyKind::Assignment => self.assignment = None,
            KeyKind::Pin(partition) => {
                self.pins.remove(&partition);
            }
            KeyKind::Drain(node) => {
                self.drains.remove(&node);
            }
            KeyKind::Move(partition) => {
                self.moves.remove(&partition);
            }
            KeyKind::Settings => self.settings = None,
            KeyKind::Other => {}
        }
    }

    /// `placement`, with the address of each of its nodes that is registered (a node whose
    /// lease ended has none: its partitions are `Offline`). An address that breaks a limit is
    /// left out and reported under `key`.
    fn with_addresses(&mut self, key: &str, placement: Placement) -> Placement {
        let mut addresses = Vec::with_capacity(self.nodes.len());
        for (node, entry) in &self.nodes {
            let address = NodeAddress {
                node: *node,
                host: entry.info.address.clone(),
                shard_ports: entry.info.shard_ports.clone(),
            };
            match address.check() {
                Ok(()) => addresses.push(address),
                Err(error) => self.rejected.push((key.to_string(), error.to_string())),
            }
        }
        match placement.clone().with_nodes(addresses) {
            Ok(with_addresses) => with_addresses,
            Err(error) => {
                self.rejected.push((key.to_string(), error.to_string()));
                placement
            }
        }
    }

    fn add_node(&mut self, node: NodeId, kv: &KeyValue) -> Result<(), String> {
        if self.nodes.len() >= CLUSTER_NODES_MAX {
            return Err(format!(
                "more than {CLUSTER_NODES_MAX} nodes registered; this one is ignored"
            ));
        }
        let info = NodeInfo::decode(&kv.value)?;
        self.nodes.insert(
            node,
            NodeEntry {
                info,
                lease: kv.lease,
                registered_revision: kv.mod_revision,
            },
        );
        Ok(())
    }

    /// The live nodes drained by the operator: a drain is in force while the node keeps the
    /// registration it had when drained.
    pub fn drained(&self) -> BTreeSet<NodeId> {
        self.drains
            .iter()
            .filter(|(node, drain)| {
                self.nodes
                    .get(node)
                    .is_some_and(|entry| entry.registered_revision == drain.registered_revision)
            })
            .map(|(&node, _)| node)
            .collect()
    }

    /// Moves in flight at once, at most, as the operator set it (1 to `MOVES_INFLIGHT_MAX`).
    pub fn moves_max(&self) -> u32 {
        self.settings
            .unwrap_or_default()
            .moves_max
            .clamp(1, MOVES_INFLIGHT_MAX)
    }

    /// The live nodes, as placement sees them.
    pub fn live_nodes(&self) -> BTreeMap<NodeId, LiveNode> {
        self.nodes
            .iter()
            .map(|(&node, entry)| {
                let live = LiveNode {
                    shards: entry.info.shards(),
                    registered_revision: entry.registered_revision,
                };
                (node, live)
            })
            .collect()
    }
}

/// What one node may serve right now: handed from the control thread to whoever serves.
#[derive(Clone, Debug, Default)]
pub struct ServingView {
    pub node: Option<NodeId>,
    pub placement: Option<Arc<Placement>>,
    /// The revision of this node's current registration (`None`: not registered).
    pub registered_revision: Option<u64>,
    /// Monotonic ns until which this node's lease is known valid (0: no lease).
    pub lease_valid_until_ns: u64,
}

impl ServingView {
    /// Whether this node may apply events of `partition` at `now_ns`: it owns it, it is
    /// `Serving`, its lease is known valid, and the partition was confirmed to it after its
    /// current registration (so two nodes never serve one partition in one epoch).
    pub fn serves(&self, now_ns: u64, partition: PartitionId) -> bool {
        let (Some(node), Some(placement), Some(registered)) =
            (self.node, &self.placement, self.registered_revision)
        else {
            return false;
        };
        now_ns < self.lease_valid_until_ns
            && placement
                .owners()
                .get(partition.index())
                .is_some_and(|owner| {
                    owner.node == node
                        && owner.state.applies()
                        && u64::from(owner.part_epoch.get()) > registered
                })
    }
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    id: i64,
    valid_until_ns: u64,
    keepalive_due_ns: u64,
}

#[derive(Clone, Debug)]
enum InFlight {
    Grant,
    KeepAlive,
    Register,
    Read,
    /// A [`Request::Revision`] asking whether a read is needed.
    Probe,
    Campaign,
    /// The record being written, to install once etcd says at which revision, with the
    /// moves it ends and whether it starts any.
    WriteAssignment(Vec<u8>, MoveEnds),
    /// The `moves/<p>` records being put, as they were queued: those still queued unchanged
    /// when etcd has them leave the queue.
    PutMoves(Vec<(u32, MoveRecord)>),
}

/// The moves a placement write flips or abandons, and whether it starts some.
#[derive(Clone, Debug, Default)]
pub struct MoveEnds {
    /// (partition, the move's epoch, its record as the controller ends it).
    ended: Vec<(u32, MoveRecord)>,
    abandoned: Vec<u32>,
    starts: bool,
}

/// Whether `plan`'s only changes to `current` are flips, made while no move may start: such
/// a write can wait for the next start's turn and go with it. Anything else (an abandon, a
/// partition going `Offline` or confirmed, a start) is written at once.
fn flips_wait_for_starts(current: &[crate::cluster::placement::Owner], plan: &MovePlan) -> bool {
    plan.started.is_empty()
        && plan.abandoned.is_empty()
        && !plan.flipped.is_empty()
        && current
            .iter()
            .zip(&plan.owners)
            .enumerate()
            .all(|(p, (was, now))| was == now || plan.flipped.contains(&(p as u32)))
}

/// One node's coordination state. See the module doc.
pub struct Coordinator {
    config: CoordinatorConfig,
    lease: Option<Lease>,
    registered_revision: Option<u64>,
    view: ClusterView,
    read_due_ns: u64,
    /// Whether the read due is a whole one, or only a probe of the revision first: the periodic
    /// read that backs the watch up is a probe (16 nodes reading the whole prefix 4 times a
    /// second cost more CPU than their keepalives, for nothing when nothing changed); a read
    /// asked for by a watch, a write or an outage is whole.
    read_whole: bool,
    in_flight: Option<(InFlight, u64)>,
    retry_at_ns: u64,
    retry_ns: u64,
    etcd_reachable: bool,
    live_since_ns: u64,
    was_controller: bool,
    was_lease_valid: bool,
    register_after_ns: u64,
    node_id_in_use_reported: bool,
    installed_epoch: Epoch,
    rejected_reported: Vec<(String, u64)>,
    events: VecDeque<CoordinatorEvent>,
    /// As controller: each `Migrating` partition's move epoch and when this controller first
    /// saw it (its timeout runs from then).
    moves_seen: BTreeMap<u32, (Epoch, u64)>,
    /// As controller: partitions whose move failed, and until when they stay put.
    backing_off: BTreeMap<u32, u64>,
    /// When this controller last wrote a placement that started moves.
    last_start_ns: Option<u64>,
    /// When moves were last tracked: deadlines up to then were due at that poll already, so
    /// they are no reason to wake again.
    tracked_ns: u64,
    /// `moves/<p>` records to put, oldest first (at most one per partition).
    move_records: VecDeque<(u32, MoveRecord)>,
    /// The keys under the prefix as of `view.revision`, by key: the last whole read with the
    /// watch's changes since applied, so a change becomes a view without reading back.
    kvs: BTreeMap<String, KeyValue>,
    /// The revision after which the open watch reports every change (`None`: no watch).
    /// Changes are applied only onto a view at or after it: one from before could miss
    /// changes made while no watch was open.
    watch_after: Option<u64>,
    /// When the watch's changes last made the view: a read sent before then may be older.
    watch_applied_ns: u64,
    /// The revision the last probe found past the view's, which the watch is to have brought
    /// by the next probe (`None`: the view was up to date).
    probed_ahead: Option<u64>,
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig) -> Coordinator {
        Coordinator {
            config,
            lease: None,
            registered_revision: None,
            view: ClusterView::default(),
            read_due_ns: 0,
            read_whole: true,
            in_flight: None,
            retry_at_ns: 0,
            retry_ns: CLUSTER_RETRY_MS_MIN * NS_PER_MS,
            etcd_reachable: true,
            live_since_ns: 0,
            was_controller: false,
            was_lease_valid: false,
            register_after_ns: 0,
            node_id_in_use_reported: false,
            installed_epoch: Epoch(0),
            rejected_reported: Vec::new(),
            events: VecDeque::new(),
            moves_seen: BTreeMap::new(),
            backing_off: BTreeMap::new(),
            last_start_ns: None,
            tracked_ns: 0,
            move_records: VecDeque::new(),
            kvs: BTreeMap::new(),
            watch_after: None,
            probed_ahead: None,
            watch_applied_ns: 0,
        }
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The next request to make, if one is due at `now_ns`. One request is in flight at a time:
    /// call [`Coordinator::handle_response`] or [`Coordinator::handle_failure`] before asking
    /// again.
    pub fn poll_request(&mut self, now_ns: u64) -> Option<Request> {
        self.check_fence(now_ns);
        if self.in_flight.is_some() || now_ns < self.retry_at_ns {
            return None;
        }
        self.track_moves(now_ns);
        let (request, in_flight) = self.next_request(now_ns)?;
        self.in_flight = Some((in_flight, now_ns));
        Some(request)
    }

    fn next_request(&self, now_ns: u64) -> Option<(Request, InFlight)> {
        let Some(lease) = self.lease else {
            let ttl_s = self.config.lease_ttl_s;
            return Some((Request::LeaseGrant { ttl_s }, InFlight::Grant));
        };
        if now_ns >= lease.keepalive_due_ns {
            return Some((
                Request::LeaseKeepAlive { lease: lease.id },
                InFlight::KeepAlive,
            ));
        }
        if self.registered_revision.is_none() && now_ns >= self.register_after_ns {
            // Only if absent: two processes given the same --node-id must not take turns.
            let request = Request::CreateIfAbsent {
                key: self.config.keys.node(self.config.node),
                value: self.config.info.encode(),
                lease: lease.id,
            };
            return Some((request, InFlight::Register));
        }
        if !self.move_records.is_empty() {
            // Every record waiting goes in one transaction: a drain's source reports several
            // moves at a time, and each request costs etcd far more than its few bytes.
            let sent: Vec<(u32, MoveRecord)> = self
                .move_records
                .iter()
                .take(MOVE_RECORDS_PER_WRITE_MAX)
                .cloned()
                .collect();
            let puts = sent
                .iter()
                .map(|(partition, record)| {
                    (self.config.keys.moves(*partition), encode_json(record))
                })
                .collect();
            return Some((Request::PutAll { puts }, InFlight::PutMoves(sent)));
        }
        if now_ns >= self.read_due_ns {
            let prefix = self.config.keys.prefix().to_owned();
            if self.read_whole {
                return Some((Request::RangePrefix { prefix }, InFlight::Read));
            }
            return Some((Request::Revision { prefix }, InFlight::Probe));
        }
        self.registered_revision?;
        if self.view.controller.is_none() {
            let request = Request::CreateIfAbsent {
                key: self.config.keys.controller(),
                value: serde_json::to_vec(&ControllerRecord {
                    node: self.config.node.0,
                })
                .expect("a controller record serializes"),
                lease: lease.id,
            };
            return Some((request, InFlight::Campaign));
        }
        self.assignment_to_write(now_ns)
    }

    /// As controller, the next assignment record, when it differs from the current one.
    fn assignment_to_write(&self, now_ns: u64) -> Option<(Request, InFlight)> {
        let controller = self.view.controller.filter(|_| self.is_controller())?;
        if now_ns >= self.lease_valid_until_ns() {
            return None;
        }
        let current = self.view.assignment.as_deref();
        if current.is_some_and(|placement| placement.partitions() != self.config.partitions) {
            return None;
        }
        if current.is_none() && now_ns < self.live_since_ns + self.config.settle_ns {
            return None;
        }
        let live = self.view.live_nodes();
        let current_owners = current.map(|placement| placement.owners());
        let base = next_owners(current_owners, self.config.partitions, &live)?;
        let (next, ends) = match current_owners {
            Some(current) => self.with_moves(now_ns, current, base, &live),
            None => (base, MoveEnds::default()),
        };
        if current_owners == Some(&next[..]) {
            return None;
        }
        let value = encode_record(&next);
        let request = Request::CompareAndSwap {
            key: self.config.keys.assignment(),
            value: value.clone(),
            expect_mod_revision: current.map_or(0, |placement| u64::from(placement.epoch().get())),
            guard_key: self.config.keys.controller(),
            guard_create_revision: controller.create_revision,
        };
        Some((request, InFlight::WriteAssignment(value, ends)))
    }

    /// `base` with the moves due now: see `placement::plan_moves`.
    fn with_moves(
        &self,
        now_ns: u64,
        current: &[crate::cluster::placement::Owner],
        base: Vec<crate::cluster::placement::Owner>,
        live: &BTreeMap<NodeId, LiveNode>,
    ) -> (Vec<crate::cluster::placement::Owner>, MoveEnds) {
        let timeout_ns = MOVE_TIMEOUT_MS_MAX * NS_PER_MS;
        let timed_out: BTreeSet<u32> = self
            .moves_seen
            .iter()
            .filter(|(_, (_, seen_ns))| now_ns >= seen_ns + timeout_ns)
            .map(|(&partition, _)| partition)
            .collect();
        let backing_off: BTreeSet<u32> = self
            .backing_off
            .iter()
            .filter(|(_, until_ns)| now_ns < **until_ns)
            .map(|(&partition, _)| partition)
            .collect();
        let drained = self.view.drained();
        let may_start = self
            .last_start_ns
            .is_none_or(|last| now_ns >= last + MOVE_START_GAP_MS_DEFAULT * NS_PER_MS);
        let inputs = MoveInputs {
            live,
            drained: &drained,
            pins: &self.view.pins,
            records: &self.view.moves,
            timed_out: &timed_out,
            backing_off: &backing_off,
            moves_max: self.view.moves_max(),
            may_start,
        };
        let plan = plan_moves(current, base.clone(), &inputs);
        if !may_start
            && flips_wait_for_starts(current, &plan)
            && !plan_moves(
                current,
                base,
                &MoveInputs {
                    may_start: true,
                    ..inputs
                },
            )
            .started
            .is_empty()
        {
            // Moves are still to start at the next turn: the ready ones flip in the same
            // write as those start, at most a start gap from now. During a drain that is one
            // assignment write per batch instead of one per flip, and every write is sent
            // to every node, decoded there and installed in every shard.
            return (current.to_vec(), MoveEnds::default());
        }
        let mut ends = MoveEnds {
            starts: !plan.started.is_empty(),
            ..MoveEnds::default()
        };
        // Moves the sticky rule ended: the source's lease ended, or it registered again.
        for (partition, (was, now)) in current.iter().zip(&plan.owners).enumerate() {
            if was.state.migrating_to().is_none() || now.part_epoch != PART_EPOCH_THIS_RECORD {
                continue;
            }
            if plan.flipped.contains(&(partition as u32))
                || plan.abandoned.iter().any(|(p, _)| *p == partition as u32)
            {
                continue;
            }
            let reason = if now.state == OwnerState::Offline {
                format!("the source {}'s lease ended", was.node)
            } else {
                format!("the source {} restarted (registered again)", was.node)
            };
            let record = self.ended_record(partition as u32, was, Some(reason));
            ends.ended.push((partition as u32, record));
        }
        // A flip writes no `moves/<p>` record: the assignment shows it, and the source's
        // `released` record follows it, which a record written here from an older read could
        // overwrite.
        for (partition, reason) in plan.abandoned {
            let owner = current[partition as usize];
            let record = self.ended_record(partition, &owner, Some(bounded_reason(&reason)));
            ends.ended.push((partition, record));
            ends.abandoned.push(partition);
        }
        (plan.owners, ends)
    }

    /// The `moves/<p>` record of a move the controller flips (`abandoned: None`) or abandons,
    /// keeping what the source wrote of it.
    fn ended_record(
        &self,
        partition: u32,
        owner: &crate::cluster::placement::Owner,
        abandoned: Option<String>,
    ) -> MoveRecord {
        let (to, to_shard) = owner
            .state
            .migrating_to()
            .unwrap_or((owner.node, owner.shard));
        let known = self
            .view
            .moves
            .get(&partition)
            .filter(|record| record.is_move(owner.part_epoch));
        let released = known.and_then(|record| record.released);
        let state = match (released, &abandoned) {
            (Some(_), _) => MoveState::Released,
            (None, None) => MoveState::Flipped,
            (None, Some(_)) => MoveState::Abandoned,
        };
        MoveRecord {
            part_epoch: owner.part_epoch.get(),
            from: (owner.node.0, owner.shard.0),
            to: (to.0, to_shard.0),
            state,
            abandoned,
            released,
        }
    }

    /// As controller, notes when each move in flight was first seen (its timeout runs from
    /// then) and forgets moves and back-offs that are over; otherwise forgets them all, so a
    /// controller that takes over starts every move's clock afresh.
    fn track_moves(&mut self, now_ns: u64) {
        self.tracked_ns = now_ns;
        let placement = self.view.assignment.clone();
        let (true, Some(placement)) = (self.is_controller(), placement) else {
            self.moves_seen.clear();
            self.backing_off.clear();
            return;
        };
        let mut seen = BTreeMap::new();
        for (partition, owner) in placement.owners().iter().enumerate() {
            if owner.state.migrating_to().is_none() {
                continue;
            }
            let partition = partition as u32;
            let since = match self.moves_seen.get(&partition) {
                Some(&(epoch, seen_ns)) if epoch == owner.part_epoch => seen_ns,
                _ => now_ns,
            };
            seen.insert(partition, (owner.part_epoch, since));
        }
        self.moves_seen = seen;
        self.backing_off.retain(|_, until_ns| now_ns < *until_ns);
    }

    /// A move report of one of this node's shards: put as `moves/<p>` (the controller reads it
    /// there), keeping what the controller already wrote of the same move.
    pub fn handle_move_report(&mut self, report: MoveReport) {
        let partition = report.partition.0;
        let from_shard = self
            .view
            .assignment
            .as_ref()
            .and_then(|placement| placement.owners().get(partition as usize).copied())
            .filter(|owner| owner.node == self.config.node)
            .map_or(0, |owner| owner.shard.0);
        let known = self
            .queued_or_read(partition)
            .filter(|record| record.is_move(report.part_epoch));
        let abandoned = known.and_then(|record| record.abandoned.clone());
        let (state, released) = match report.step {
            MoveStep::Ready {
                snapshot_bytes,
                events_streamed,
            } => (
                MoveState::Ready {
                    snapshot_bytes,
                    events_streamed,
                },
                None,
            ),
            MoveStep::Refused { reason } => (
                MoveState::Refused {
                    reason: bounded_reason(&reason),
                },
                None,
            ),
            MoveStep::Released {
                flipped,
                events_held,
                pause_ns,
            } => {
                let released = Released {
                    flipped,
                    events_held,
                    pause_ns,
                };
                (MoveState::Released, Some(released))
            }
        };
        let record = MoveRecord {
            part_epoch: report.part_epoch.get(),
            from: (self.config.node.0, from_shard),
            to: (report.to.0, report.to_shard.0),
            state,
            abandoned,
            released,
        };
        self.queue_move_record(partition, record);
    }

    /// The latest record of `partition`'s move this node knows: queued to be put, or read.
    fn queued_or_read(&self, partition: u32) -> Option<&MoveRecord> {
        self.move_records
            .iter()
            .rev()
            .find(|(p, _)| *p == partition)
            .map(|(_, record)| record)
            .or_else(|| self.view.moves.get(&partition))
    }

    /// Queues `record` to be put, replacing one queued for the same partition; the oldest
    /// record is dropped when the queue is full (a later read shows what etcd has).
    fn queue_move_record(&mut self, partition: u32, record: MoveRecord) {
        self.move_records.retain(|(p, _)| *p != partition);
        if self.move_records.len() >= MOVE_RECORDS_QUEUED_MAX {
            self.move_records.pop_front();
        }
        self.move_records.push_back((partition, record));
    }

    /// etcd's reply to the request in flight.
    pub fn handle_response(&mut self, now_ns: u64, response: Response) {
        let Some((in_flight, sent_ns)) = self.in_flight.take() else {
            return;
        };
        let handled = match (in_flight, response) {
            (InFlight::Grant, Response::LeaseGranted { lease, ttl_s }) if ttl_s > 0 => {
                self.lease = Some(self.renewed(lease, sent_ns, ttl_s));
                self.registered_revision = None;
                true
            }
            (InFlight::KeepAlive, Response::LeaseKept { ttl_s }) => {
                self.handle_kept(sent_ns, ttl_s);
                true
            }
            (
                InFlight::Register,
                Response::Txn {
                    succeeded,
                    revision,
                },
            ) => {
                self.handle_registered(now_ns, succeeded.then_some(revision));
                true
            }
            (InFlight::Read, Response::Range { revision, kvs }) => {
                // Older than the view the watch's changes made while it was under way.
                let overtaken = revision < self.view.revision && self.watch_applied_ns >= sent_ns;
                if !overtaken {
                    self.handle_range(now_ns, revision, &kvs);
                } else {
                    self.read_due_ns = now_ns + self.config.poll_ns;
                    self.read_whole = false;
                }
                true
            }
            (InFlight::Probe, Response::Revision { revision }) => {
                self.handle_probe(now_ns, revision);
                true
            }
            (InFlight::Campaign, Response::Txn { .. }) => {
                self.read_now(now_ns);
                true
            }
            (
                InFlight::WriteAssignment(value, ends),
                Response::Txn {
                    succeeded,
                    revision,
                },
            ) => {
                if succeeded {
                    self.install_written(&value, revision);
                    self.moves_written(now_ns, ends);
                }
                // A write that lost the compare-and-swap was based on an old view. One that
                // won needs no read back when the watch covers the view: it brings the write
                // like any other change, and the record in hand is already the new one.
                if !succeeded || !self.watch_covers_view() {
                    self.read_now(now_ns);
                }
                true
            }
            (InFlight::PutMoves(sent), Response::Txn { .. }) => {
                // A record replaced while the put was under way stays queued, with its news.
                self.move_records.retain(|queued| !sent.contains(queued));
                true
            }
            _ => false,
        };
        self.check_fence(now_ns);
        if handled {
            self.etcd_answered();
        } else {
            self.fail(
                now_ns,
                "etcd answered with a reply that does not match the request",
            );
        }
    }

    /// A placement that ended or started moves was written: their records are to be put, the
    /// abandoned partitions stay put for a while, and the next start waits its turn.
    fn moves_written(&mut self, now_ns: u64, ends: MoveEnds) {
        for partition in ends.abandoned {
            let until_ns = now_ns + MOVE_RETRY_BACKOFF_MS_MAX * NS_PER_MS;
            self.backing_off.insert(partition, until_ns);
        }
        for (partition, record) in ends.ended {
            self.queue_move_record(partition, record);
        }
        if ends.starts {
            self.last_start_ns = Some(now_ns);
        }
    }

    /// Something under the cluster's prefix changed (a watch said so): read it back now.
    pub fn handle_changed(&mut self, now_ns: u64) {
        self.read_now(now_ns);
    }

    /// A watch opened that reports every change after `revision`: read the keys back now
    /// (what changed while no watch was open), then take its changes as they come.
    pub fn handle_watch_started(&mut self, now_ns: u64, revision: u64) {
        self.watch_after = Some(revision);
        self.read_now(now_ns);
    }

    /// Changes the watch reported, the last at `revision`: applied to the keys of the view
    /// without reading them back, which saves a flip two reads of the whole prefix. Only
    /// onto a view the watch covers (read at or after its start); otherwise, or when the keys
    /// would outgrow a read, they are read back whole instead.
    pub fn handle_watch_changes(&mut self, now_ns: u64, revision: u64, changes: Vec<WatchChange>) {
        if !self.watch_covers_view() {
            self.read_now(now_ns);
            return;
        }
        if revision <= self.view.revision {
            return; // a read already showed them
        }
        let known = self.view.revision;
        let changes: Vec<WatchChange> = changes
            .into_iter()
            .filter(|change| change.revision() > known)
            .collect();
        for change in &changes {
            match change {
                WatchChange::Put(kv) => {
                    self.kvs.insert(kv.key.clone(), kv.clone());
                }
                WatchChange::Delete { key, .. } => {
                    self.kvs.remove(key);
                }
            }
        }
        let bytes: usize = self
            .kvs
            .values()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum();
        if bytes as u64 > CLUSTER_REPLY_BYTES_MAX {
            self.read_now(now_ns);
            return;
        }
        self.watch_applied_ns = now_ns;
        let keys = &self.config.keys;
        let registrations_changed = changes
            .iter()
            .any(|change| matches!(keys.classify(change.key()), KeyKind::Node(_)));
        if registrations_changed {
            let kvs: Vec<KeyValue> = self.kvs.values().cloned().collect();
            let view = ClusterView::from_range(keys, revision, &kvs);
            self.take_view(now_ns, view);
        } else {
            self.view.apply_changes(keys, revision, &changes);
            self.view_changed(now_ns);
        }
    }

    /// Whether the open watch reports every change after the view's revision (the view was
    /// read at or after the watch opened), so that the view needs no reading back.
    fn watch_covers_view(&self) -> bool {
        self.watch_after
            .is_some_and(|after| self.view.revision >= after)
    }

    /// The periodic probe found etcd at `revision`. A view behind it is read back whole,
    /// unless the watch covers the view and is keeping up: the watch brings every change, so
    /// the probe only checks that it does. It is keeping up when the view has reached what
    /// the previous probe saw, one poll interval ago. (During a drain the revision moves
    /// every few milliseconds: reading whole at each probe, every node ten times a second,
    /// made most of etcd's work and took CPU from the shards.)
    fn handle_probe(&mut self, now_ns: u64, revision: u64) {
        let watch_keeping_up = self.watch_covers_view()
            && self
                .probed_ahead
                .is_none_or(|seen| self.view.revision >= seen);
        if revision <= self.view.revision {
            self.probed_ahead = None;
            self.read_due_ns = now_ns + self.config.poll_ns;
        } else if watch_keeping_up {
            self.probed_ahead = Some(revision);
            self.read_due_ns = now_ns + self.config.poll_ns;
        } else {
            self.probed_ahead = None;
            self.read_now(now_ns);
        }
    }

    /// The cluster's keys are to be read back whole, now.
    fn read_now(&mut self, now_ns: u64) {
        self.read_due_ns = self.read_due_ns.min(now_ns);
        self.read_whole = true;
    }

    /// The request in flight failed (no answer, a timeout, an error status).
    pub fn handle_failure(&mut self, now_ns: u64, reason: &str) {
        if self.in_flight.take().is_some() {
            self.fail(now_ns, reason);
        }
    }

    /// Reports the moments the lease stops or starts being known valid.
    fn check_fence(&mut self, now_ns: u64) {
        let valid = now_ns < self.lease_valid_until_ns();
        if valid != self.was_lease_valid {
            self.was_lease_valid = valid;
            self.push(if valid {
                CoordinatorEvent::Unfenced
            } else {
                CoordinatorEvent::Fenced
            });
        }
    }

    fn fail(&mut self, now_ns: u64, reason: &str) {
        if self.etcd_reachable {
            self.etcd_reachable = false;
            self.push(CoordinatorEvent::EtcdUnreachable {
                reason: reason.to_owned(),
            });
        }
        self.retry_at_ns = now_ns + self.retry_ns;
        self.retry_ns = (self.retry_ns * 2).min(CLUSTER_RETRY_MS_MAX * NS_PER_MS);
        // What changed while etcd did not answer is read whole, not inferred from a revision.
        self.read_whole = true;
    }

    fn etcd_answered(&mut self) {
        self.retry_ns = CLUSTER_RETRY_MS_MIN * NS_PER_MS;
        if !self.etcd_reachable {
            self.etcd_reachable = true;
            self.push(CoordinatorEvent::EtcdReachable);
        }
    }

    fn renewed(&self, id: i64, sent_ns: u64, ttl_s: i64) -> Lease {
        let ttl_ns = ttl_s as u64 * NS_PER_S;
        Lease {
            id,
            valid_until_ns: (sent_ns + ttl_ns).saturating_sub(self.config.lease_margin_ns()),
            keepalive_due_ns: sent_ns + self.config.ttl_ns() / 3,
        }
    }

    fn handle_kept(&mut self, sent_ns: u64, ttl_s: i64) {
        let Some(lease) = self.lease else {
            return;
        };
        if ttl_s > 0 {
            self.lease = Some(self.renewed(lease.id, sent_ns, ttl_s));
            return;
        }
        self.lease = None;
        self.registered_revision = None;
        self.push(CoordinatorEvent::LeaseLost);
        self.update_controller_status();
    }

    fn handle_registered(&mut self, now_ns: u64, revision: Option<u64>) {
        self.read_now(now_ns);
        match revision {
            Some(revision) => {
                self.registered_revision = Some(revision);
                self.node_id_in_use_reported = false;
                self.push(CoordinatorEvent::Registered { revision });
            }
            None => {
                // Someone holds this node's key: another process with this id, or this node's
                // previous life whose lease has not ended yet. Try again after a poll.
                self.register_after_ns = now_ns + self.config.poll_ns;
                if !self.node_id_in_use_reported {
                    self.node_id_in_use_reported = true;
                    self.push(CoordinatorEvent::NodeIdInUse);
                }
            }
        }
    }

    /// A registration whose reply was lost is this node's all the same: adopt it.
    fn adopt_registration(&mut self) {
        let (Some(lease), None) = (self.lease, self.registered_revision) else {
            return;
        };
        if let Some(entry) = self.view.nodes.get(&self.config.node) {
            if entry.lease == lease.id {
                let revision = entry.registered_revision;
                self.registered_revision = Some(revision);
                self.push(CoordinatorEvent::Registered { revision });
            }
        }
    }

    fn handle_range(&mut self, now_ns: u64, revision: u64, kvs: &[KeyValue]) {
        let view = ClusterView::from_range(&self.config.keys, revision, kvs);
        self.kvs = kvs.iter().map(|kv| (kv.key.clone(), kv.clone())).collect();
        self.take_view(now_ns, view);
    }

    /// The keys as of `view.revision`, read whole or brought up to date by the watch.
    fn take_view(&mut self, now_ns: u64, view: ClusterView) {
        if view.nodes.keys().ne(self.view.nodes.keys()) {
            self.live_since_ns = now_ns;
        }
        self.view = view;
        self.view_changed(now_ns);
    }

    /// Acts on the view just taken or brought up to date.
    fn view_changed(&mut self, now_ns: u64) {
        self.read_due_ns = now_ns + self.config.poll_ns;
        self.read_whole = false;
        self.report_rejected();
        self.adopt_registration();
        self.check_registration();
        self.update_controller_status();
        if let Some(placement) = self.view.assignment.clone() {
            self.install(placement);
        }
    }

    /// Registers again if this node's key is gone or bound to another lease (deleted by hand,
    /// or a lease this node no longer holds).
    fn check_registration(&mut self) {
        let (Some(lease), Some(registered)) = (self.lease, self.registered_revision) else {
            return;
        };
        if self.view.revision < registered {
            return;
        }
        let mine = self.view.nodes.get(&self.config.node);
        if mine.is_none_or(|entry| entry.lease != lease.id) {
            self.registered_revision = None;
        }
    }

    fn report_rejected(&mut self) {
        let rejected = std::mem::take(&mut self.view.rejected);
        for (key, reason) in &rejected {
            let seen = (key.clone(), self.view.revision);
            if !self.rejected_reported.iter().any(|(k, _)| k == key) {
                self.rejected_reported.push(seen);
                self.push(CoordinatorEvent::RecordRejected {
                    key: key.clone(),
                    reason: reason.clone(),
                });
            }
        }
        self.rejected_reported
            .retain(|(key, _)| rejected.iter().any(|(k, _)| k == key));
        self.view.rejected = rejected;
    }

    fn update_controller_status(&mut self) {
        let is_controller = self.is_controller();
        if is_controller != self.was_controller {
            self.was_controller = is_controller;
            self.push(if is_controller {
                CoordinatorEvent::BecameController
            } else {
                CoordinatorEvent::NoLongerController
            });
        }
    }

    fn install_written(&mut self, value: &[u8], revision: u64) {
        match decode_record(value, revision) {
            Ok(placement) => {
                let key = self.config.keys.assignment();
                self.keep_written(&key, value, revision);
                let placement = Arc::new(self.view.with_addresses(&key, placement));
                self.report_rejected();
                self.view.assignment = Some(placement.clone());
                self.install(placement);
            }
            Err(reason) => self.push(CoordinatorEvent::RecordRejected {
                key: self.config.keys.assignment(),
                reason,
            }),
        }
    }

    /// The keys as of the view take this node's own write of `key`, so that watched changes
    /// from before the write, applied onto them, do not bring the old value back.
    fn keep_written(&mut self, key: &str, value: &[u8], revision: u64) {
        let create_revision = self.kvs.get(key).map_or(revision, |kv| kv.create_revision);
        let written = KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision,
            mod_revision: revision,
            lease: 0,
        };
        self.kvs.insert(key.to_owned(), written);
    }

    fn install(&mut self, placement: Arc<Placement>) {
        if placement.epoch() <= self.installed_epoch {
            return;
        }
        if placement.partitions() != self.config.partitions {
            let reason = format!(
                "the cluster has {} partitions and this node was started with --partitions {}; \
                 start it with the cluster's count",
                placement.partitions(),
                self.config.partitions
            );
            self.installed_epoch = placement.epoch();
            self.push(CoordinatorEvent::RecordRejected {
                key: self.config.keys.assignment(),
                reason,
            });
            return;
        }
        self.installed_epoch = placement.epoch();
        self.push(CoordinatorEvent::PlacementChanged(placement));
    }

    fn push(&mut self, event: CoordinatorEvent) {
        if self.events.len() == CLUSTER_EVENTS_QUEUED_MAX {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The next thing that happened, oldest first.
    pub fn poll_event(&mut self) -> Option<CoordinatorEvent> {
        self.events.pop_front()
    }

    /// When to ask [`Coordinator::poll_request`] again if nothing else happens.
    pub fn next_wakeup_ns(&self) -> u64 {
        if self.in_flight.is_some() {
            return u64::MAX;
        }
        let mut due = self.read_due_ns;
        if let Some(lease) = self.lease {
            due = due.min(lease.keepalive_due_ns);
            if self.registered_revision.is_none() {
                due = due.min(self.register_after_ns);
            }
            if self.was_lease_valid {
                // Wake when the lease stops being known valid, to report it then.
                due = due.min(lease.valid_until_ns);
            }
            if self.is_controller() && self.view.assignment.is_none() {
                due = due.min(self.live_since_ns + self.config.settle_ns);
            }
            if !self.move_records.is_empty() {
                due = 0;
            }
            if self.is_controller() {
                due = due.min(self.next_move_due_ns());
            }
        } else {
            due = 0;
        }
        due.max(self.retry_at_ns)
    }

    /// As controller, the next moment a move may be judged or started without anything else
    /// happening: a move's timeout, a back-off's end, the next start's turn.
    fn next_move_due_ns(&self) -> u64 {
        let timeout_ns = MOVE_TIMEOUT_MS_MAX * NS_PER_MS;
        let timeouts = self.moves_seen.values().map(|(_, seen)| seen + timeout_ns);
        let backoffs = self.backing_off.values().copied();
        let start = self
            .last_start_ns
            .map(|last| last + MOVE_START_GAP_MS_DEFAULT * NS_PER_MS);
        timeouts
            .chain(backoffs)
            .chain(start)
            .filter(|&due| due > self.tracked_ns)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Whether this node holds the controller key with its current lease.
    pub fn is_controller(&self) -> bool {
        match (self.lease, self.view.controller) {
            (Some(lease), Some(controller)) => {
                controller.node == self.config.node && controller.lease == lease.id
            }
            _ => false,
        }
    }

    /// Monotonic ns until which this node's lease is known valid (0: it has none).
    pub fn lease_valid_until_ns(&self) -> u64 {
        self.lease.map_or(0, |lease| lease.valid_until_ns)
    }

    /// The lease this node holds, if any.
    pub fn lease_id(&self) -> Option<i64> {
        self.lease.map(|lease| lease.id)
    }

    pub fn etcd_reachable(&self) -> bool {
        self.etcd_reachable
    }

    /// The cluster as last read.
    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// What this node may serve, for the shards.
    pub fn serving_view(&self) -> ServingView {
        let placement = self
            .view
            .assignment
            .clone()
            .filter(|placement| placement.partitions() == self.config.partitions);
        ServingView {
            node: Some(self.config.node),
            placement,
            registered_revision: self.registered_revision,
            lease_valid_until_ns: self.lease_valid_until_ns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::ModelEtcd;
    use crate::core::ids::ShardId;

    const PARTITIONS: u32 = 64;
    const TTL_S: u64 = 3;
    const STEP_MS: u64 = 10;

    fn config(node: u32, shards: u16) -> CoordinatorConfig {
        CoordinatorConfig {
            keys: ClusterKeys::new("test").unwrap(),
            node: NodeId(node),
            info: NodeInfo {
                address: "127.0.0.1".into(),
                port: 7000 + node as u16 * 10,
                shard_ports: (0..shards).map(|s| 7001 + node as u16 * 10 + s).collect(),
                version: "test".into(),
                metrics: None,
            },
            partitions: PARTITIONS,
            lease_ttl_s: TTL_S,
            poll_ns: 100 * NS_PER_MS,
            settle_ns: 500 * NS_PER_MS,
        }
    }

    /// Nodes driven against a model etcd in virtual time; a paused node is simply not driven.
    struct Cluster {
        etcd: ModelEtcd,
        nodes: Vec<Coordinator>,
        paused: Vec<bool>,
        events: Vec<Vec<CoordinatorEvent>>,
        /// Per node: whole reads of the prefix, and revision probes, asked of etcd.
        reads: Vec<(usize, usize)>,
        /// Per node: whether its "shards" report the moves they are the source of ready at
        /// once (and released once the placement moves on), as a source shard would.
        ready: Vec<bool>,
        /// Per node: the moves (partition, epoch) it reported ready and not yet released.
        reported: Vec<BTreeMap<u32, Epoch>>,
        /// When each assignment write (a compare-and-swap) was asked of etcd, by any node.
        assignment_writes_ns: Vec<u64>,
        /// Per node: requests that put `moves/<p>` records, and the records they put.
        move_record_puts: Vec<(usize, usize)>,
        now_ns: u64,
    }

    impl Cluster {
        fn new(nodes: u32) -> Cluster {
            Cluster {
                etcd: ModelEtcd::new(),
                nodes: (1..=nodes)
                    .map(|n| Coordinator::new(config(n, 2)))
                    .collect(),
                paused: vec![false; nodes as usize],
                events: vec![Vec::new(); nodes as usize],
                reads: vec![(0, 0); nodes as usize],
                ready: vec![false; nodes as usize],
                reported: vec![BTreeMap::new(); nodes as usize],
                assignment_writes_ns: Vec::new(),
                move_record_puts: vec![(0, 0); nodes as usize],
                now_ns: 0,
            }
        }

        /// Every node reads the cluster's keys back every `poll_ms`, instead of the config's.
        fn with_poll_ms(mut self, poll_ms: u64) -> Cluster {
            for node in &mut self.nodes {
                node.config.poll_ns = poll_ms * NS_PER_MS;
            }
            self
        }

        /// Another node, paused or not.
        fn add(&mut self, node: Coordinator, paused: bool) {
            self.nodes.push(node);
            self.paused.push(paused);
            self.events.push(Vec::new());
            self.reads.push((0, 0));
            self.ready.push(false);
            self.reported.push(BTreeMap::new());
            self.move_record_puts.push((0, 0));
        }

        fn run_ms(&mut self, ms: u64) {
            for _ in 0..ms / STEP_MS {
                self.now_ns += STEP_MS * NS_PER_MS;
                self.etcd.expire(self.now_ns);
                for i in 0..self.nodes.len() {
                    if !self.paused[i] {
                        self.drive(i);
                    }
                }
            }
        }

        fn drive(&mut self, i: usize) {
            let node = &mut self.nodes[i];
            while let Some(request) = node.poll_request(self.now_ns) {
                match &request {
                    Request::RangePrefix { .. } => self.reads[i].0 += 1,
                    Request::Revision { .. } => self.reads[i].1 += 1,
                    Request::CompareAndSwap { .. } => self.assignment_writes_ns.push(self.now_ns),
                    Request::PutAll { puts } => {
                        self.move_record_puts[i].0 += 1;
                        self.move_record_puts[i].1 += puts.len();
                    }
                    _ => {}
                }
                match self.etcd.handle(self.now_ns, &request) {
                    Ok(response) => node.handle_response(self.now_ns, response),
                    Err(reason) => node.handle_failure(self.now_ns, &reason),
                }
            }
            while let Some(event) = node.poll_event() {
                self.events[i].push(event);
            }
            if self.ready[i] {
                self.report_moves(i);
            }
        }

        /// What node `i`'s source shards would report about the moves in its view.
        fn report_moves(&mut self, i: usize) {
            let Some(placement) = self.nodes[i].view().assignment.clone() else {
                return;
            };
            let me = NodeId(i as u32 + 1);
            for (p, owner) in placement.owners().iter().enumerate() {
                let p = p as u32;
                if let Some(&epoch) = self.reported[i].get(&p) {
                    if owner.part_epoch != epoch {
                        self.reported[i].remove(&p);
                        let (to, to_shard) = self.reported_target(i, p, epoch);
                        self.nodes[i].handle_move_report(MoveReport {
                            partition: PartitionId(p),
                            part_epoch: epoch,
                            to,
                            to_shard,
                            step: MoveStep::Released {
                                flipped: owner.node != me,
                                events_held: 3,
                                pause_ns: 2_000_000,
                            },
                        });
                    }
                    continue;
                }
                let Some((to, to_shard)) = owner.state.migrating_to() else {
                    continue;
                };
                if owner.node != me {
                    continue;
                }
                self.reported[i].insert(p, owner.part_epoch);
                self.nodes[i].handle_move_report(MoveReport {
                    partition: PartitionId(p),
                    part_epoch: owner.part_epoch,
                    to,
                    to_shard,
                    step: MoveStep::Ready {
                        snapshot_bytes: 100,
                        events_streamed: 5,
                    },
                });
            }
        }

        /// The target of the move node `i` reported ready, from the record it queued or read.
        fn reported_target(&self, i: usize, p: u32, epoch: Epoch) -> (NodeId, ShardId) {
            self.nodes[i]
                .queued_or_read(p)
                .filter(|record| record.is_move(epoch))
                .map_or((NodeId(0), ShardId(0)), MoveRecord::to)
        }

        /// Puts an operator's record straight into the model etcd.
        fn put(&mut self, key: String, value: Vec<u8>) {
            let request = Request::Put {
                key,
                value,
                lease: 0,
            };
            self.etcd.handle(self.now_ns, &request).unwrap();
        }

        /// The placement in etcd now.
        fn stored(&self) -> Placement {
            let keys = ClusterKeys::new("test").unwrap();
            let request = Request::RangePrefix {
                prefix: keys.assignment(),
            };
            let mut etcd = self.etcd.clone();
            let Ok(Response::Range { kvs, .. }) = etcd.handle(self.now_ns, &request) else {
                panic!("the model answers a range");
            };
            decode_record(&kvs[0].value, kvs[0].mod_revision).unwrap()
        }

        /// Runs `ms` more, checking after every step that no partition is without an
        /// owner that applies it (Offline only when its owner's lease ended) and that at
        /// most `moves_max` are moving. Returns the most seen moving at once.
        fn run_checked_ms(&mut self, ms: u64, moves_max: usize) -> usize {
            let mut most = 0;
            for _ in 0..ms / STEP_MS {
                self.run_ms(STEP_MS);
                let placement = self.stored();
                let moving = placement
                    .owners()
                    .iter()
                    .filter(|owner| owner.state.migrating_to().is_some())
                    .count();
                assert!(moving <= moves_max, "{moving} moving at once");
                most = most.max(moving);
            }
            most
        }

        /// The registration revision of node `n` as etcd has it.
        fn registration(&self, n: u32) -> u64 {
            let keys = ClusterKeys::new("test").unwrap();
            let request = Request::RangePrefix {
                prefix: keys.node(NodeId(n)),
            };
            let mut etcd = self.etcd.clone();
            let Ok(Response::Range { kvs, .. }) = etcd.handle(self.now_ns, &request) else {
                panic!("the model answers a range");
            };
            kvs[0].mod_revision
        }

        fn controllers(&self) -> Vec<usize> {
            (0..self.nodes.len())
                .filter(|&i| !self.paused[i] && self.nodes[i].is_controller())
                .collect()
        }

        /// The placement node `i` last installed.
        fn placement(&self, i: usize) -> Arc<Placement> {
            self.nodes[i]
                .view()
                .assignment
                .clone()
                .expect("a placement")
        }

        fn serving(&self, i: usize) -> Vec<PartitionId> {
            let view = self.nodes[i].serving_view();
            (0..PARTITIONS)
                .map(PartitionId)
                .filter(|&p| view.serves(self.now_ns, p))
                .collect()
        }
    }

    #[test]
    fn three_nodes_register_elect_one_controller_and_share_every_partition() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        assert_eq!(cluster.controllers().len(), 1);
        let placement = cluster.placement(0);
        assert_eq!(placement.partitions(), PARTITIONS);
        for i in 1..3 {
            assert_eq!(cluster.placement(i), placement, "every node reads the same");
        }
        let mut served: Vec<PartitionId> = (0..3).flat_map(|i| cluster.serving(i)).collect();
        served.sort();
        let every: Vec<PartitionId> = (0..PARTITIONS).map(PartitionId).collect();
        assert_eq!(served, every, "every partition served by exactly one node");
        for i in 0..3 {
            assert!(!cluster.serving(i).is_empty(), "node {i} owns some");
            assert!(
                cluster.events[i]
                    .iter()
                    .any(|e| matches!(e, CoordinatorEvent::Registered { .. }))
            );
        }
        // Every owner's address comes with the placement, from its registration.
        for n in 1..=3u32 {
            let address = placement
                .node_address(NodeId(n))
                .expect("an owner's address");
            assert_eq!(address.host, "127.0.0.1");
            assert_eq!(address.shard_ports, config(n, 2).info.shard_ports);
        }
        // Nothing changes, so nothing more is written.
        cluster.run_ms(2_000);
        assert_eq!(cluster.placement(0).epoch(), placement.epoch());
    }

    #[test]
    fn a_settled_cluster_probes_the_revision_and_reads_whole_only_what_changed() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        let epoch = cluster.placement(0).epoch();
        cluster.reads = vec![(0, 0); 3];
        cluster.run_ms(2_000);
        for (i, &(whole, probes)) in cluster.reads.iter().enumerate() {
            assert_eq!(whole, 0, "node {i}: nothing changed, nothing read whole");
            // One probe per poll interval (100 ms) over 2 s.
            assert!((18..=21).contains(&probes), "node {i}: {probes} probes");
        }
        // A node's lease ends: etcd deletes its key, the revision moves, the others read it
        // whole and the controller moves its partitions offline.
        cluster.paused[2] = true;
        cluster.run_ms((TTL_S + 1) * 1_000);
        for i in 0..2 {
            assert!(cluster.reads[i].0 >= 1, "node {i} read the change whole");
            let placement = cluster.placement(i);
            assert!(placement.epoch() > epoch, "node {i} saw the new placement");
            assert!(
                placement.offline().next().is_some(),
                "node {i}: offline partitions"
            );
        }
    }

    #[test]
    fn the_first_placement_waits_for_the_nodes_to_settle() {
        let mut cluster = Cluster::new(2);
        cluster.paused[1] = true;
        cluster.run_ms(300);
        assert!(cluster.nodes[0].view().assignment.is_none(), "settling");
        cluster.paused[1] = false;
        cluster.run_ms(1_000);
        let counts = cluster.placement(0).counts();
        let nodes: std::collections::BTreeSet<NodeId> = counts.keys().map(|(n, _)| *n).collect();
        assert_eq!(nodes.len(), 2, "both nodes got partitions: {counts:?}");
    }

    #[test]
    fn the_lease_is_valid_until_the_last_acknowledged_keepalive_plus_ttl_minus_the_margin() {
        let mut cluster = Cluster::new(1);
        cluster.run_ms(2_000);
        let node = &cluster.nodes[0];
        let valid_until = node.lease_valid_until_ns();
        let ttl_ns = TTL_S * NS_PER_S;
        // Keepalives go every TTL/3, so the last one was sent within that.
        assert!(valid_until + node.config().lease_margin_ns() <= cluster.now_ns + ttl_ns);
        assert!(
            valid_until + node.config().lease_margin_ns() + ttl_ns / 3 >= cluster.now_ns + ttl_ns
        );
        assert_eq!(cluster.serving(0).len(), PARTITIONS as usize);

        // etcd goes away: no keepalive is acknowledged, so the node fences itself by the
        // lease's end (minus the margin), before etcd could expire it.
        cluster.etcd.set_down(cluster.now_ns, true);
        cluster.run_ms(ttl_ns / NS_PER_MS - node_margin_ms(&cluster));
        assert!(cluster.serving(0).is_empty(), "fenced");
        assert_eq!(
            cluster.events[0]
                .iter()
                .filter(|e| matches!(e, CoordinatorEvent::Fenced | CoordinatorEvent::Unfenced))
                .collect::<Vec<_>>(),
            [&CoordinatorEvent::Unfenced, &CoordinatorEvent::Fenced],
            "valid once granted, fenced once past the margin"
        );
        assert!(
            cluster.events[0]
                .iter()
                .any(|e| matches!(e, CoordinatorEvent::EtcdUnreachable { .. }))
        );
    }

    fn node_margin_ms(cluster: &Cluster) -> u64 {
        cluster.nodes[0].config().lease_margin_ns() / NS_PER_MS
    }

    #[test]
    fn a_paused_node_goes_offline_then_gets_its_partitions_back_at_a_new_epoch() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        let controller = cluster.controllers()[0];
        let paused = (controller + 1) % 3;
        let before = cluster.placement(controller);
        let its: Vec<PartitionId> = cluster.serving(paused);
        assert!(!its.is_empty());

        cluster.paused[paused] = true;
        cluster.run_ms((TTL_S + 1) * 1_000);
        let offline = cluster.placement(controller);
        assert!(offline.epoch() > before.epoch());
        assert_eq!(offline.offline().collect::<Vec<_>>(), its);
        for p in &its {
            assert_eq!(offline.owner(*p).node, NodeId(paused as u32 + 1));
        }
        // The others keep theirs at their old partition epochs.
        for p in (0..PARTITIONS)
            .map(PartitionId)
            .filter(|p| !its.contains(p))
        {
            assert_eq!(offline.owner(p), before.owner(p));
        }
        // While paused its clock stood still; when it resumes its lease is past the margin.
        cluster.paused[paused] = false;
        cluster.now_ns += STEP_MS * NS_PER_MS;
        assert!(cluster.serving(paused).is_empty(), "fenced on resume");
        cluster.run_ms(2_000);
        assert!(cluster.events[paused].contains(&CoordinatorEvent::LeaseLost));
        let back = cluster.placement(controller);
        assert_eq!(back.offline().count(), 0);
        assert_eq!(cluster.serving(paused), its);
        for p in &its {
            assert!(back.owner(*p).part_epoch > offline.epoch(), "a new epoch");
        }
    }

    #[test]
    fn another_node_takes_over_when_the_controllers_lease_ends() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        let old = cluster.controllers()[0];
        let epoch = cluster.placement(old).epoch();
        cluster.paused[old] = true;
        cluster.run_ms((TTL_S + 1) * 1_000);
        let now = cluster.controllers();
        assert_eq!(now.len(), 1);
        assert_ne!(now[0], old);
        let new = cluster.placement(now[0]);
        assert!(
            new.epoch() > epoch,
            "the new controller wrote the old one's partitions offline"
        );
        assert!(
            new.offline()
                .all(|p| new.owner(p).node == NodeId(old as u32 + 1))
        );
        assert!(cluster.events[now[0]].contains(&CoordinatorEvent::BecameController));
    }

    #[test]
    fn a_controller_paused_past_its_lease_cannot_overwrite_the_new_one() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        let old = cluster.controllers()[0];
        // The old controller, about to write, is paused with its write in hand.
        let stale_write = match cluster.nodes[old].assignment_to_write(cluster.now_ns) {
            None => {
                // Nothing to write: forge the write it would make with its current view.
                let view = cluster.nodes[old].view().clone();
                Request::CompareAndSwap {
                    key: cluster.nodes[old].config().keys.assignment(),
                    value: encode_record(view.assignment.unwrap().owners()),
                    expect_mod_revision: u64::from(cluster.placement(old).epoch().get()),
                    guard_key: cluster.nodes[old].config().keys.controller(),
                    guard_create_revision: view.controller.unwrap().create_revision,
                }
            }
            Some((request, _)) => request,
        };
        cluster.paused[old] = true;
        cluster.run_ms((TTL_S + 1) * 1_000);
        let epoch = cluster.etcd.revision();
        let response = cluster.etcd.handle(cluster.now_ns, &stale_write).unwrap();
        assert!(matches!(
            response,
            Response::Txn {
                succeeded: false,
                ..
            }
        ));
        assert_eq!(cluster.etcd.revision(), epoch, "nothing written");
    }

    #[test]
    fn an_etcd_outage_moves_nothing_and_the_cluster_carries_on_after_it() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        let before = cluster.placement(0);
        cluster.etcd.set_down(cluster.now_ns, true);
        cluster.run_ms(2 * TTL_S * 1_000);
        for i in 0..3 {
            assert_eq!(cluster.placement(i), before, "node {i} keeps its placement");
            assert!(
                cluster.events[i]
                    .iter()
                    .any(|e| matches!(e, CoordinatorEvent::EtcdUnreachable { .. }))
            );
        }
        cluster.etcd.set_down(cluster.now_ns, false);
        cluster.run_ms(2_000);
        for i in 0..3 {
            assert!(cluster.events[i].contains(&CoordinatorEvent::EtcdReachable));
            assert!(!cluster.events[i].contains(&CoordinatorEvent::LeaseLost));
            assert_eq!(cluster.placement(i), before, "nothing moved");
        }
        let served: usize = (0..3).map(|i| cluster.serving(i).len()).sum();
        assert_eq!(served, PARTITIONS as usize, "serving again");
    }

    #[test]
    fn a_node_with_another_partition_count_installs_nothing() {
        let mut cluster = Cluster::new(2);
        let mut odd = config(3, 1);
        odd.partitions = PARTITIONS * 2;
        cluster.add(Coordinator::new(odd), true);
        cluster.run_ms(2_000);
        cluster.paused[2] = false;
        cluster.run_ms(500);
        assert!(cluster.serving(2).is_empty());
        assert!(cluster.events[2].iter().any(|e| matches!(
            e,
            CoordinatorEvent::RecordRejected { reason, .. } if reason.contains("--partitions")
        )));
        assert!(!cluster.nodes[2].is_controller());
    }

    #[test]
    fn a_second_process_with_the_same_node_id_waits_for_the_first_to_end() {
        let mut cluster = Cluster::new(2);
        cluster.run_ms(2_000);
        let placement = cluster.placement(0);
        // A second node 2.
        cluster.add(Coordinator::new(config(2, 2)), false);
        cluster.run_ms(2_000);
        assert!(cluster.events[2].contains(&CoordinatorEvent::NodeIdInUse));
        assert!(
            !cluster.events[2]
                .iter()
                .any(|e| matches!(e, CoordinatorEvent::Registered { .. }))
        );
        assert!(cluster.serving(2).is_empty());
        assert_eq!(
            cluster.placement(0),
            placement,
            "the first node 2 keeps its partitions"
        );
        assert!(!cluster.events[1].contains(&CoordinatorEvent::LeaseLost));
        assert_eq!(
            cluster.serving(1).len(),
            placement
                .counts()
                .iter()
                .filter(|((node, _), _)| *node == NodeId(2))
                .map(|(_, (serving, _))| *serving as usize)
                .sum::<usize>()
        );

        // The first one dies: the second takes its place once its lease has ended.
        cluster.paused[1] = true;
        cluster.run_ms((TTL_S + 2) * 1_000);
        assert!(
            cluster.events[2]
                .iter()
                .any(|e| matches!(e, CoordinatorEvent::Registered { .. }))
        );
        let of_2: Vec<PartitionId> = (0..PARTITIONS)
            .map(PartitionId)
            .filter(|&p| placement.owner(p).node == NodeId(2))
            .collect();
        assert_eq!(cluster.serving(2), of_2);
    }

    /// The owners rendezvous hashing deals over nodes `1..=n` of 2 shards each.
    fn rendezvous_shares(nodes: &[u32]) -> Vec<(NodeId, ShardId)> {
        let live: BTreeMap<NodeId, LiveNode> = nodes
            .iter()
            .map(|&n| {
                let info = LiveNode {
                    shards: 2,
                    registered_revision: 1,
                };
                (NodeId(n), info)
            })
            .collect();
        next_owners(None, PARTITIONS, &live)
            .unwrap()
            .iter()
            .map(|owner| (owner.node, owner.shard))
            .collect()
    }

    fn owners_of(placement: &Placement) -> Vec<(NodeId, ShardId)> {
        placement
            .owners()
            .iter()
            .map(|owner| (owner.node, owner.shard))
            .collect()
    }

    fn settings(cluster: &mut Cluster, moves_max: u32) {
        let keys = ClusterKeys::new("test").unwrap();
        let record = SettingsRecord::new(moves_max).unwrap();
        cluster.put(keys.settings(), encode_json(&record));
    }

    fn move_record(cluster: &Cluster, p: u32) -> Option<MoveRecord> {
        let keys = ClusterKeys::new("test").unwrap();
        let bytes = cluster.etcd.get(&keys.moves(p))?;
        Some(decode_json("move", bytes).unwrap())
    }

    #[test]
    fn a_node_that_joins_gets_its_rendezvous_share_by_moves_at_most_moves_max_at_a_time() {
        let mut cluster = Cluster::new(2);
        cluster.ready = vec![true; 2];
        cluster.run_ms(2_000);
        let before = cluster.stored();
        assert_eq!(owners_of(&before), rendezvous_shares(&[1, 2]));
        settings(&mut cluster, 2);
        cluster.add(Coordinator::new(config(3, 2)), false);
        cluster.ready.push(true);
        let most = cluster.run_checked_ms(20_000, 2);
        assert_eq!(most, 2, "moves ran two at a time");
        let after = cluster.stored();
        let shares = rendezvous_shares(&[1, 2, 3]);
        assert_eq!(owners_of(&after), shares, "ends at the rendezvous shares");
        let mut moved = 0;
        for p in 0..PARTITIONS {
            let owner = after.owner(PartitionId(p));
            assert_eq!(owner.state, OwnerState::Serving);
            if owner.node == NodeId(3) {
                moved += 1;
                let record = move_record(&cluster, p).expect("a record of the move");
                assert_eq!(record.to(), (owner.node, owner.shard));
                let released = record.released.expect("the source released what it held");
                assert!(released.flipped);
                assert_eq!(record.abandoned, None);
            } else {
                assert_eq!(
                    (owner.node, owner.shard),
                    (
                        before.owner(PartitionId(p)).node,
                        before.owner(PartitionId(p)).shard
                    ),
                    "partition {p} only moves to the new node"
                );
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn a_drained_node_is_emptied_and_gets_its_share_back_once_restarted() {
        let mut cluster = Cluster::new(3);
        cluster.ready = vec![true; 3];
        cluster.run_ms(2_000);
        let keys = ClusterKeys::new("test").unwrap();
        let drain = DrainRecord {
            registered_revision: cluster.registration(2),
        };
        cluster.put(keys.drain(NodeId(2)), encode_json(&drain));
        cluster.run_checked_ms(20_000, MOVES_INFLIGHT_DEFAULT_TEST);
        let drained = cluster.stored();
        assert!(
            drained
                .owners()
                .iter()
                .all(|owner| owner.node != NodeId(2) && owner.state == OwnerState::Serving),
            "node 2 owns nothing, every partition is served: {:?}",
            drained.counts()
        );
        assert_eq!(owners_of(&drained), rendezvous_shares(&[1, 3]));

        // Node 2 is stopped and started again: a new registration, so the drain is over.
        cluster.paused[1] = true;
        cluster.run_ms((TTL_S + 1) * 1_000);
        cluster.nodes[1] = Coordinator::new(config(2, 2));
        cluster.reported[1].clear();
        cluster.paused[1] = false;
        cluster.run_checked_ms(20_000, MOVES_INFLIGHT_DEFAULT_TEST);
        assert_eq!(owners_of(&cluster.stored()), rendezvous_shares(&[1, 2, 3]));
    }

    const MOVES_INFLIGHT_DEFAULT_TEST: usize = crate::constants::MOVES_INFLIGHT_DEFAULT as usize;

    #[test]
    fn a_drain_flips_ready_moves_in_the_write_that_starts_the_next_ones() {
        // Nodes that read back every 10 ms see a ready report well within a start gap.
        let mut cluster = Cluster::new(3).with_poll_ms(STEP_MS);
        cluster.ready = vec![true; 3];
        cluster.run_ms(2_000);
        let before = cluster.stored();
        let draining: usize = before
            .owners()
            .iter()
            .filter(|owner| owner.node == NodeId(2))
            .count();
        assert!(
            draining > 3 * MOVES_INFLIGHT_DEFAULT_TEST,
            "{draining} partitions"
        );
        let keys = ClusterKeys::new("test").unwrap();
        let drain = DrainRecord {
            registered_revision: cluster.registration(2),
        };
        cluster.put(keys.drain(NodeId(2)), encode_json(&drain));
        cluster.assignment_writes_ns.clear();
        cluster.run_checked_ms(20_000, MOVES_INFLIGHT_DEFAULT_TEST);
        let drained = cluster.stored();
        assert!(drained.owners().iter().all(|owner| owner.node != NodeId(2)));
        // A write per batch of moves_max (its flips and the next batch's starts), and one for
        // the last batch's flips: not one more per flip.
        let batches = draining.div_ceil(MOVES_INFLIGHT_DEFAULT_TEST);
        let writes = cluster.assignment_writes_ns.len();
        assert!(
            writes <= batches + 2,
            "{writes} assignment writes for {draining} moves in batches of {MOVES_INFLIGHT_DEFAULT_TEST}"
        );
        // The writes keep the start gap: the flips waited for it, nothing went faster.
        let gap_ns = MOVE_START_GAP_MS_DEFAULT * NS_PER_MS;
        for pair in cluster.assignment_writes_ns[..writes - 1].windows(2) {
            assert!(pair[1] - pair[0] >= gap_ns, "writes at {pair:?}");
        }
        // The source put several of its records per request.
        let (requests, records) = cluster.move_record_puts[1];
        assert!(
            records >= 2 * draining,
            "a ready and a released record per move"
        );
        assert!(
            requests < records,
            "{requests} requests for {records} records"
        );
    }

    #[test]
    fn a_lone_move_flips_as_soon_as_it_is_ready() {
        let mut cluster = Cluster::new(3).with_poll_ms(STEP_MS);
        cluster.ready = vec![true; 3];
        cluster.run_ms(2_000);
        let before = cluster.stored();
        let owner = *before.owner(PartitionId(5));
        let to = NodeId(owner.node.0 % 3 + 1);
        let keys = ClusterKeys::new("test").unwrap();
        let pin = PinRecord {
            node: to.0,
            shard: Some(1),
        };
        cluster.put(keys.pin(5), encode_json(&pin));
        cluster.assignment_writes_ns.clear();
        cluster.run_checked_ms(1_000, 1);
        assert_eq!(
            (
                cluster.stored().owner(PartitionId(5)).node,
                cluster.stored().owner(PartitionId(5)).state
            ),
            (to, OwnerState::Serving)
        );
        let [start, flip] = cluster.assignment_writes_ns[..] else {
            panic!("a start and a flip: {:?}", cluster.assignment_writes_ns);
        };
        // Nothing else was to start: the flip did not wait for the next start's turn.
        assert!(
            flip - start < MOVE_START_GAP_MS_DEFAULT * NS_PER_MS,
            "flipped {} ms after the start",
            (flip - start) / NS_PER_MS
        );
    }

    #[test]
    fn a_move_record_replaced_while_being_put_is_put_again() {
        let mut node = Coordinator::new(config(1, 2));
        let keys = ClusterKeys::new("test").unwrap();
        let mut etcd = ModelEtcd::new();
        let mut now_ns = 0;
        // Registered, and nothing else due until the next read.
        while let Some(request) = node.poll_request(now_ns) {
            let response = etcd.handle(now_ns, &request).unwrap();
            node.handle_response(now_ns, response);
        }
        let report = |p: u32, step: MoveStep| MoveReport {
            partition: PartitionId(p),
            part_epoch: Epoch(9),
            to: NodeId(2),
            to_shard: ShardId(0),
            step,
        };
        let ready = MoveStep::Ready {
            snapshot_bytes: 1,
            events_streamed: 2,
        };
        node.handle_move_report(report(3, ready.clone()));
        node.handle_move_report(report(4, ready));
        now_ns += NS_PER_MS;
        let Some(Request::PutAll { puts }) = node.poll_request(now_ns) else {
            panic!("both records in one put");
        };
        assert_eq!(puts.len(), 2);
        // Partition 3's move is released while its ready record is on its way.
        let released = MoveStep::Released {
            flipped: true,
            events_held: 7,
            pause_ns: 1,
        };
        node.handle_move_report(report(3, released));
        let response = etcd.handle(now_ns, &Request::PutAll { puts }).unwrap();
        node.handle_response(now_ns, response);
        let Some(Request::PutAll { puts }) = node.poll_request(now_ns) else {
            panic!("the newer record is still to put");
        };
        assert_eq!(puts.len(), 1);
        assert_eq!(puts[0].0, keys.moves(3));
        let record: MoveRecord = decode_json("move", &puts[0].1).unwrap();
        assert_eq!(record.released.map(|r| r.events_held), Some(7));
    }

    #[test]
    fn pins_win_over_rendezvous() {
        let mut cluster = Cluster::new(3);
        cluster.ready = vec![true; 3];
        cluster.run_ms(2_000);
        let keys = ClusterKeys::new("test").unwrap();
        let shares = rendezvous_shares(&[1, 2, 3]);
        // Partition 0 pinned to another node's shard 1; partition 1 to another node, any shard;
        // partition 2 to a node that does not exist (ignored).
        let elsewhere = |p: usize| NodeId(shares[p].0.0 % 3 + 1);
        let pins = [
            (
                0u32,
                PinRecord {
                    node: elsewhere(0).0,
                    shard: Some(1),
                },
            ),
            (
                1,
                PinRecord {
                    node: elsewhere(1).0,
                    shard: None,
                },
            ),
            (
                2,
                PinRecord {
                    node: 9,
                    shard: None,
                },
            ),
        ];
        for (p, pin) in pins {
            cluster.put(keys.pin(p), encode_json(&pin));
        }
        cluster.run_checked_ms(5_000, MOVES_INFLIGHT_DEFAULT_TEST);
        let placement = cluster.stored();
        assert_eq!(
            (
                placement.owner(PartitionId(0)).node,
                placement.owner(PartitionId(0)).shard
            ),
            (elsewhere(0), ShardId(1))
        );
        assert_eq!(placement.owner(PartitionId(1)).node, elsewhere(1));
        assert_eq!(
            owners_of(&placement)[2..],
            shares[2..],
            "nothing else moved"
        );
    }

    #[test]
    fn a_target_that_dies_mid_move_leaves_the_partition_with_its_source() {
        let mut cluster = Cluster::new(2);
        cluster.run_ms(2_000);
        let before = cluster.stored();
        // Node 3 joins; the sources never report ready, so the moves stay in flight.
        cluster.add(Coordinator::new(config(3, 2)), false);
        cluster.run_ms(1_500);
        let moving: Vec<u32> = (0..PARTITIONS)
            .filter(|&p| {
                cluster
                    .stored()
                    .owner(PartitionId(p))
                    .state
                    .migrating_to()
                    .map(|(to, _)| to)
                    == Some(NodeId(3))
            })
            .collect();
        assert_eq!(moving.len(), MOVES_INFLIGHT_DEFAULT_TEST);
        cluster.paused[2] = true;
        cluster.run_checked_ms((TTL_S + 1) * 1_000, MOVES_INFLIGHT_DEFAULT_TEST);
        let after = cluster.stored();
        for p in moving {
            let (was, now) = (before.owner(PartitionId(p)), after.owner(PartitionId(p)));
            assert_eq!(
                (now.node, now.shard, now.state),
                (was.node, was.shard, OwnerState::Serving)
            );
            assert!(now.part_epoch > was.part_epoch, "a new epoch");
            let record = move_record(&cluster, p).expect("the abandon is recorded");
            assert_eq!(record.state, MoveState::Abandoned);
            let reason = record.abandoned.unwrap();
            assert!(reason.contains("no longer live"), "{reason}");
        }
        assert!(after.owners().iter().all(|owner| owner.node != NodeId(3)));
    }

    #[test]
    fn a_source_whose_lease_ends_mid_move_goes_offline_and_the_move_says_why() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        let controller = cluster.controllers()[0];
        cluster.add(Coordinator::new(config(4, 2)), false);
        cluster.run_ms(1_500);
        let placement = cluster.stored();
        let (p, source) = (0..PARTITIONS)
            .map(|p| (p, *placement.owner(PartitionId(p))))
            .find(|(_, owner)| {
                owner.state.migrating_to().is_some() && owner.node.0 as usize != controller + 1
            })
            .expect("a move whose source is not the controller");
        cluster.paused[source.node.0 as usize - 1] = true;
        cluster.run_ms((TTL_S + 1) * 1_000);
        let owner = *cluster.stored().owner(PartitionId(p));
        assert_eq!(
            (owner.node, owner.state),
            (source.node, OwnerState::Offline)
        );
        let record = move_record(&cluster, p).expect("the end of the move is recorded");
        assert_eq!(record.part_epoch, source.part_epoch.get());
        let reason = record.abandoned.unwrap();
        assert!(reason.contains("lease ended"), "{reason}");
    }

    #[test]
    fn a_move_never_reported_ready_times_out_and_backs_off() {
        let mut cluster = Cluster::new(2);
        cluster.run_ms(2_000);
        cluster.add(Coordinator::new(config(3, 2)), false);
        cluster.run_ms(1_500);
        let first: Vec<u32> = (0..PARTITIONS)
            .filter(|&p| {
                cluster
                    .stored()
                    .owner(PartitionId(p))
                    .state
                    .migrating_to()
                    .is_some()
            })
            .collect();
        assert_eq!(first.len(), MOVES_INFLIGHT_DEFAULT_TEST);
        cluster.run_checked_ms(MOVE_TIMEOUT_MS_MAX, MOVES_INFLIGHT_DEFAULT_TEST);
        let placement = cluster.stored();
        for &p in &first {
            let owner = placement.owner(PartitionId(p));
            assert_eq!(owner.state, OwnerState::Serving, "partition {p} abandoned");
            let reason = move_record(&cluster, p).unwrap().abandoned.unwrap();
            assert!(reason.contains("no ready within"), "{reason}");
        }
        // Others moved in their place while those back off.
        let second: Vec<u32> = (0..PARTITIONS)
            .filter(|&p| {
                placement
                    .owner(PartitionId(p))
                    .state
                    .migrating_to()
                    .is_some()
            })
            .collect();
        assert_eq!(second.len(), MOVES_INFLIGHT_DEFAULT_TEST);
        assert!(
            second.iter().all(|p| !first.contains(p)),
            "{first:?} then {second:?}"
        );
    }

    #[test]
    fn a_controller_change_mid_move_neither_flips_twice_nor_loses_the_move() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        let old = cluster.controllers()[0];
        cluster.add(Coordinator::new(config(4, 2)), false);
        cluster.run_ms(1_500);
        let moving: Vec<u32> = (0..PARTITIONS)
            .filter(|&p| {
                let owner = *cluster.stored().owner(PartitionId(p));
                owner.state.migrating_to().is_some() && owner.node != NodeId(old as u32 + 1)
            })
            .collect();
        assert!(!moving.is_empty());
        // The controller stops; meanwhile the sources report ready.
        cluster.paused[old] = true;
        for i in 0..4 {
            cluster.ready[i] = i != old;
        }
        let mut flips: BTreeMap<u32, usize> = BTreeMap::new();
        let mut last = cluster.stored();
        for _ in 0..20_000 / STEP_MS {
            cluster.run_ms(STEP_MS);
            let now = cluster.stored();
            for &p in &moving {
                let (was, is) = (last.owner(PartitionId(p)), now.owner(PartitionId(p)));
                if was.state.migrating_to() == Some((is.node, is.shard)) {
                    *flips.entry(p).or_default() += 1;
                }
            }
            last = now;
        }
        assert_ne!(cluster.controllers(), vec![old]);
        for p in moving {
            assert_eq!(flips.get(&p), Some(&1), "partition {p} flipped once");
            assert_eq!(last.owner(PartitionId(p)).node, NodeId(4));
        }
    }

    /// The kv etcd holds at `key` now.
    fn kv_of(cluster: &mut Cluster, key: &str) -> KeyValue {
        let prefix = ClusterKeys::new("test").unwrap().prefix().to_owned();
        let Ok(Response::Range { kvs, .. }) = cluster
            .etcd
            .handle(cluster.now_ns, &Request::RangePrefix { prefix })
        else {
            panic!("the model answers a range");
        };
        kvs.into_iter().find(|kv| kv.key == key).unwrap()
    }

    /// A change of one of the keys a view decodes one by one, made from `(op, n, valid)`:
    /// a put of a pin, a move record, a drain, the settings, the controller or the
    /// assignment (`valid`: a record that decodes; otherwise bytes that do not), or a delete.
    fn arbitrary_change(
        keys: &ClusterKeys,
        assignment: &[u8],
        (op, n, valid): (u8, u32, bool),
        revision: u64,
    ) -> WatchChange {
        let key = match op % 6 {
            0 => keys.pin(n),
            1 => keys.moves(n),
            2 => keys.drain(NodeId(n)),
            3 => keys.settings(),
            4 => keys.controller(),
            _ => keys.assignment(),
        };
        if op >= 12 {
            return WatchChange::Delete { key, revision };
        }
        let value = match (op % 6, valid) {
            (_, false) => b"{not a record".to_vec(),
            (0, true) => encode_json(&PinRecord {
                node: n,
                shard: None,
            }),
            (1, true) => encode_json(&MoveRecord {
                part_epoch: n,
                from: (1, 0),
                to: (2, 1),
                state: MoveState::Flipped,
                abandoned: None,
                released: None,
            }),
            (2, true) => encode_json(&DrainRecord {
                registered_revision: u64::from(n),
            }),
            (3, true) => encode_json(&SettingsRecord { moves_max: n + 1 }),
            (4, true) => encode_json(&ControllerRecord { node: n }),
            (_, true) => assignment.to_vec(),
        };
        WatchChange::Put(KeyValue {
            key,
            value,
            create_revision: revision,
            mod_revision: revision,
            lease: 0,
        })
    }

    /// A view, printed with its rejected keys in order, to compare two views.
    fn printed(view: &ClusterView) -> String {
        let mut view = view.clone();
        view.rejected.sort();
        format!("{view:?}")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Changes applied key by key make the view that reading the keys whole makes.
        #[test]
        fn changes_applied_key_by_key_make_the_view_a_whole_read_makes(
            ops in proptest::collection::vec((0u8..18, 0u32..4, proptest::bool::ANY), 1..40)
        ) {
            let keys = ClusterKeys::new("test").unwrap();
            let mut cluster = Cluster::new(2);
            cluster.run_ms(1_000);
            let assignment = kv_of(&mut cluster, &keys.assignment()).value;
            let Ok(Response::Range { revision, kvs }) = cluster.etcd.handle(
                cluster.now_ns,
                &Request::RangePrefix { prefix: keys.prefix().to_owned() },
            ) else {
                panic!("the model answers a range");
            };
            let mut view = ClusterView::from_range(&keys, revision, &kvs);
            let mut kvs: BTreeMap<String, KeyValue> =
                kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
            let mut revision = revision;
            for op in ops {
                revision += 1;
                let change = arbitrary_change(&keys, &assignment, op, revision);
                match &change {
                    WatchChange::Put(kv) => kvs.insert(kv.key.clone(), kv.clone()),
                    WatchChange::Delete { key, .. } => kvs.remove(key),
                };
                view.apply_changes(&keys, revision, &[change]);
            }
            let kvs: Vec<KeyValue> = kvs.into_values().collect();
            let whole = ClusterView::from_range(&keys, revision, &kvs);
            proptest::prop_assert_eq!(printed(&view), printed(&whole));
        }
    }

    /// A settled cluster of three whose node 0 has a watch open from etcd's revision now, and
    /// read the keys back after it opened.
    fn watched() -> Cluster {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        cluster.open_watch(0);
        cluster
    }

    impl Cluster {
        /// Node `i` opens a watch from etcd's revision now and reads the keys back after it.
        fn open_watch(&mut self, i: usize) {
            let (now_ns, revision) = (self.now_ns, self.etcd.revision());
            self.nodes[i].handle_watch_started(now_ns, revision);
            self.drive(i);
            self.reads = vec![(0, 0); self.nodes.len()];
        }

        /// Runs until node `i` has sent its next revision probe.
        fn run_until_probed(&mut self, i: usize) {
            let probes = self.reads[i].1;
            while self.reads[i].1 == probes {
                self.run_ms(STEP_MS);
            }
        }

        /// The watch of node `i` reports the current value of `key`.
        fn watch_brings(&mut self, i: usize, key: &str) {
            let change = WatchChange::Put(kv_of(self, key));
            let now_ns = self.now_ns;
            self.nodes[i].handle_watch_changes(now_ns, change.revision(), vec![change]);
        }
    }

    #[test]
    fn a_watch_that_keeps_up_spares_whole_reads_and_one_that_falls_behind_is_read_around() {
        let mut cluster = watched();
        let prefix = ClusterKeys::new("test").unwrap().prefix().to_owned();
        for round in 0..5 {
            // A change the probe sees before the watch brings it, within a poll interval.
            let key = format!("{prefix}note-{round}");
            cluster.put(key.clone(), b"x".to_vec());
            cluster.run_until_probed(0);
            cluster.watch_brings(0, &key);
            cluster.run_until_probed(0);
        }
        assert_eq!(
            cluster.reads[0].0, 0,
            "the watch kept up: nothing read whole"
        );
        // A change the watch never brings is read whole at the probe after the one that saw it.
        cluster.put(format!("{prefix}lost"), b"x".to_vec());
        cluster.run_until_probed(0);
        assert_eq!(
            cluster.reads[0].0, 0,
            "one poll interval for the watch to bring it"
        );
        cluster.run_until_probed(0);
        cluster.run_ms(STEP_MS);
        assert_eq!(
            cluster.reads[0].0, 1,
            "read whole once the watch fell behind"
        );
        assert_eq!(cluster.nodes[0].view().revision, cluster.etcd.revision());
    }

    #[test]
    fn a_controller_whose_watch_covers_its_view_does_not_read_back_its_own_write() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        let c = cluster.controllers()[0];
        cluster.open_watch(c);
        let placement = cluster.placement(c);
        let owner = placement.owner(PartitionId(5)).node.0;
        let target = if owner == 1 { 2 } else { 1 };
        let pin = pin_on(&mut cluster, 5, target);
        let now_ns = cluster.now_ns;
        cluster.nodes[c].handle_watch_changes(now_ns, pin.revision(), vec![pin]);
        cluster.drive(c);
        let assignment = ClusterKeys::new("test").unwrap().assignment();
        let written = cluster.etcd.mod_revision(&assignment).unwrap();
        assert!(
            written > u64::from(placement.epoch().get()),
            "the move was written"
        );
        let installed = cluster.nodes[c].view().assignment.clone().unwrap();
        assert_eq!(u64::from(installed.epoch().get()), written);
        assert!(
            installed
                .owner(PartitionId(5))
                .state
                .migrating_to()
                .is_some()
        );
        assert_eq!(cluster.reads[c].0, 0, "its own write is not read back");
        // The watch brings the write; the probes find the view up to date.
        cluster.watch_brings(c, &assignment);
        cluster.run_until_probed(c);
        cluster.run_until_probed(c);
        assert_eq!(cluster.reads[c].0, 0);
        assert_eq!(cluster.nodes[c].view().revision, written);
    }

    fn pin_on(cluster: &mut Cluster, partition: u32, node: u32) -> WatchChange {
        let key = ClusterKeys::new("test").unwrap().pin(partition);
        let pin = PinRecord { node, shard: None };
        cluster.put(key.clone(), encode_json(&pin));
        WatchChange::Put(kv_of(cluster, &key))
    }

    #[test]
    fn watched_changes_make_the_view_without_reading_the_prefix_back() {
        let mut cluster = watched();
        let put = pin_on(&mut cluster, 5, 2);
        let revision = put.revision();
        let now_ns = cluster.now_ns;
        cluster.nodes[0].handle_watch_changes(now_ns, revision, vec![put]);
        assert_eq!(cluster.nodes[0].view().revision, revision);
        assert_eq!(cluster.nodes[0].view().pins[&5].node, 2);
        cluster.drive(0);
        assert_eq!(cluster.reads[0].0, 0, "nothing read back whole");

        let key = ClusterKeys::new("test").unwrap().pin(5);
        let deleted = WatchChange::Delete {
            key,
            revision: revision + 1,
        };
        cluster.nodes[0].handle_watch_changes(now_ns, revision + 1, vec![deleted]);
        assert!(cluster.nodes[0].view().pins.is_empty());
        // Changes the view already has (a read showed them) change nothing.
        let stale = pin_on(&mut cluster, 6, 2);
        let read_at = cluster.nodes[0].view().revision;
        cluster.nodes[0].handle_watch_changes(now_ns, read_at, vec![stale]);
        assert!(cluster.nodes[0].view().pins.is_empty());
    }

    #[test]
    fn changes_onto_a_view_from_before_the_watch_opened_are_read_back_whole_instead() {
        let mut cluster = Cluster::new(3);
        cluster.run_ms(2_000);
        let before = cluster.nodes[0].view().revision;
        pin_on(&mut cluster, 5, 2);
        let opened = cluster.etcd.revision();
        let later = pin_on(&mut cluster, 6, 3);
        let now_ns = cluster.now_ns;
        cluster.reads = vec![(0, 0); 3];
        // The watch opened after the pin of 5: a change after it must not be applied onto a
        // view that lacks that pin.
        cluster.nodes[0].handle_watch_started(now_ns, opened);
        cluster.nodes[0].handle_watch_changes(now_ns, later.revision(), vec![later]);
        assert_eq!(cluster.nodes[0].view().revision, before);
        assert!(cluster.nodes[0].view().pins.is_empty());
        cluster.drive(0);
        assert!(cluster.reads[0].0 >= 1, "read back whole instead");
        let pins = &cluster.nodes[0].view().pins;
        assert_eq!((pins[&5].node, pins[&6].node), (2, 3));
    }

    #[test]
    fn a_read_sent_before_newer_watched_changes_does_not_take_the_view_back() {
        let mut cluster = watched();
        let now_ns = cluster.now_ns + 1;
        // A whole read is due (say, asked for by a write); its answer is delayed.
        cluster.nodes[0].read_now(now_ns);
        let request = cluster.nodes[0].poll_request(now_ns).unwrap();
        assert!(
            matches!(request, Request::RangePrefix { .. }),
            "{request:?}"
        );
        let old_answer = cluster.etcd.handle(now_ns, &request).unwrap();
        let put = pin_on(&mut cluster, 5, 2);
        let revision = put.revision();
        cluster.nodes[0].handle_watch_changes(now_ns + 1, revision, vec![put]);
        cluster.nodes[0].handle_response(now_ns + 2, old_answer);
        assert_eq!(cluster.nodes[0].view().revision, revision);
        assert_eq!(cluster.nodes[0].view().pins[&5].node, 2);
    }

    #[test]
    fn replies_that_do_not_match_the_request_count_as_failures() {
        let mut node = Coordinator::new(config(1, 1));
        assert!(matches!(
            node.poll_request(0),
            Some(Request::LeaseGrant { .. })
        ));
        node.handle_response(0, Response::Put { revision: 3 });
        assert_eq!(node.lease_id(), None);
        assert!(!node.etcd_reachable());
        assert_eq!(node.poll_request(0), None, "backing off");
        assert!(
            node.poll_request(CLUSTER_RETRY_MS_MIN * NS_PER_MS)
                .is_some()
        );
    }
}
