//! The event loop of a moves run: nodes (a real `Coordinator` and real `ShardCore`s each, and
//! the glue a node's control thread and shard tasks are), node links, clients, and the faults.
//!
//! The glue mirrors the node's, step for step:
//! - control (`cluster::control`): make the coordinator's requests one at a time (to the
//!   modelled etcd, with a round trip), wake on its next deadline, on a watch, and at once on
//!   a move report; after each step, tell the cores the placement and the lease when either
//!   changed (`cluster::feed::ShardFeed`, the rule the control thread uses);
//! - feed (`runtime::control_feed`): a core installs a newer placement, then the lease as it
//!   stands; when the lease's known-valid end passes with nothing newer, the core is fenced;
//! - shard (`runtime::shard::wake`): after every input, drain the core's outputs: replies to
//!   clients (written whole at once), mesh batches to the node's other core, outgoing links
//!   (connect, write), links the core failed (close, back off, retry), inbound links' replies
//!   and move acknowledgements, and move reports (to the coordinator);
//! - links (`runtime::link`, `net::link`): a connect to a dead node fails at once; a link that
//!   fails is retried after a doubling back-off (`LINK_RETRY_MS_MIN` to `LINK_RETRY_MS_MAX`);
//!   a node's death breaks every link to and from it (`handle_link_failed` at the other end of
//!   its outgoing ones, `handle_link_closed` at the other end of its inbound ones, after what
//!   it sent before dying has arrived).
//!
//! A paused node runs nothing: what arrives for it waits, in order, and runs when it resumes,
//! after its cores re-check the lease (the feed's timer) and its control thread steps.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use rkyv::util::AlignedVec;

use crate::client::redirect::{Admitted, Answered, Inflight};
use crate::cluster::coordinator::{Coordinator, Response};
use crate::cluster::feed::ShardFeed;
use crate::cluster::keys::{ClusterKeys, DrainRecord, PinRecord, encode_json};
use crate::cluster::model::ModelEtcd;
use crate::cluster::placement::{OwnerState, Placement, decode_record};
use crate::constants::{LINK_RETRY_MS_MAX, LINK_RETRY_MS_MIN, SIM_MOVES_ACTIONS_MAX};
use crate::core::codec::{
    Decoded, FrameBuilder, FrameHeader, FrameKind, Records, ValidatedFrame, access_record,
    decode_frame,
};
use crate::core::ids::{ConnectionId, Epoch, NodeId, PartitionId, ShardId};
use crate::core::message::{ArchivedLinkAccepted, ArchivedReply, Outcome, Reply};
use crate::core::rng::Rng;
use crate::core::shard::moves::{MoveReport, MoveStep};
use crate::core::shard::{
    LinkDest, LinkPoll, MeshBatch, MeshOutput, NodeLease, Readable, ShardConfig, ShardCore,
};
use crate::sim::coordination::CoordinationModel;
use crate::sim::moves::workload::{self, Fate, Ledger, Session};
use crate::sim::moves::{GlueFault, MovesModel, MovesRun};
use crate::sim::oracle::{Findings, Oracle};

pub(super) const NS_PER_MS: u64 = 1_000_000;
const NS_PER_US: u64 = 1_000;
/// How often the modelled etcd expires leases.
const TICK_NS: u64 = 10 * NS_PER_MS;
/// How often the no-double-serving property is sampled.
const SAMPLE_NS: u64 = TICK_NS;
/// Between two cores of one node (a mesh channel).
const MESH_DELAY_NS: u64 = 20 * NS_PER_US;
/// A client's network: this plus a seeded part of up to as much again.
const CLIENT_DELAY_NS: u64 = 300 * NS_PER_US;
/// When the clients start, after the nodes.
const CLIENTS_START_NS: u64 = 1_000 * NS_PER_MS;

/// A shard of a node: (node index, shard index). Node index `i` is `NodeId(i + 1)`.
pub(super) type Core = (usize, usize);

fn node_id(index: usize) -> NodeId {
    NodeId(index as u32 + 1)
}

fn dest_of(core: Core) -> LinkDest {
    LinkDest {
        node: node_id(core.0),
        shard: ShardId(core.1 as u16),
    }
}

fn core_of(dest: LinkDest) -> Core {
    (dest.node.0 as usize - 1, usize::from(dest.shard.0))
}

/// What travels on a node link.
enum LinkMessage {
    /// The source's hello (source → target).
    Hello(Vec<u8>),
    /// The target's answer to it (target → source).
    Answer(Vec<u8>),
    /// `LinkEvents` and move frames (source → target).
    Frames(Vec<u8>),
    /// `LinkReplies` and `MoveAck` frames (target → source).
    Back(Vec<u8>),
    /// The source's end closed (source → target, after what it sent).
    Closed,
}

enum Action {
    Start(usize),
    ControlWake(usize, u64),
    /// A move report reached the control thread: it steps at once.
    ControlNow(usize),
    EtcdReply(usize, Result<Response, String>),
    Watch(usize),
    Tick,
    LeaseEnd(usize, u64),
    /// A message of the link from `source` to `target`'s shard, arriving at `at`.
    Link {
        at: Core,
        source: Core,
        target: Core,
        generation: u64,
        message: LinkMessage,
    },
    LinkRetry(Core, LinkDest),
    Mesh {
        node: usize,
        from: usize,
        to: usize,
        batch: MeshBatch,
    },
    ToCore {
        client: usize,
        core: Core,
        generation: u64,
        bytes: Vec<u8>,
    },
    ToClient {
        client: usize,
        core: Core,
        generation: u64,
        bytes: Vec<u8>,
    },
    ClientSend(usize),
    Pin(usize),
    Drain,
    Kill(usize),
    Pause(usize, u64),
    Resume(usize),
}

impl Action {
    /// The node whose process runs this action, if one does.
    fn node(&self) -> Option<usize> {
        match self {
            Action::Start(n)
            | Action::ControlWake(n, _)
            | Action::ControlNow(n)
            | Action::EtcdReply(n, _)
            | Action::Watch(n)
            | Action::LeaseEnd(n, _)
            | Action::Mesh { node: n, .. } => Some(*n),
            Action::Link { at, .. } => Some(at.0),
            Action::LinkRetry(core, _) | Action::ToCore { core, .. } => Some(core.0),
            _ => None,
        }
    }
}

struct Scheduled {
    at_ns: u64,
    sequence: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ns, self.sequence) == (other.at_ns, other.sequence)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest first, in the order scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ns, other.sequence).cmp(&(self.at_ns, self.sequence))
    }
}

/// One direction of a pipe that keeps FIFO order (a TCP connection's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pipe {
    Link(Core, Core),
    ClientToCore(usize, Core),
    CoreToClient(Core, usize),
}

/// A node: its coordinator (the control thread's), its cores, and the glue's state.
pub(super) struct SimNode {
    pub coordinator: Coordinator,
    pub cores: Vec<ShardCore>,
    started: bool,
    pub dead: bool,
    pub paused: bool,
    /// What its cores were last told.
    feed: Option<ShardFeed>,
    sent: Option<(Epoch, Option<Epoch>, u64)>,
    wake_token: u64,
    /// What arrived while it was paused, in order.
    deferred: Vec<Action>,
    /// Moves this node's glue reported ready by itself (`GlueFault::FlipBeforeReady`).
    fabricated: BTreeSet<(u32, Epoch)>,
}

/// An outgoing link of a core, as its task and socket stand.
struct OutLink {
    generation: u64,
    up: bool,
    /// Its id at the target, once the hello was accepted.
    inbound: Option<ConnectionId>,
}

/// A client's connection to a core.
struct ClientConn {
    generation: u64,
    id: Option<ConnectionId>,
    /// Frames the core could not take whole yet (out of credit), offered again in order.
    blocked: VecDeque<Vec<u8>>,
}

/// One client session's side: the cluster client's bookkeeping (`client::redirect`).
struct Client {
    inflight: Inflight,
    next: usize,
    map: Option<Arc<Placement>>,
    /// The core each unanswered event went to.
    sent_on: BTreeMap<u64, Core>,
}

/// A move as the assignments in etcd showed it.
#[derive(Clone, Debug)]
pub(super) struct MoveSeen {
    pub partition: u32,
    pub part_epoch: Epoch,
    pub from: NodeId,
    pub to: NodeId,
    pub started_ns: u64,
    /// When it ended, and whether it flipped.
    pub ended: Option<(u64, bool)>,
}

/// When a node was down (dead from, or paused between).
#[derive(Clone, Copy, Debug)]
pub(super) struct Down {
    pub node: usize,
    pub from_ns: u64,
    pub to_ns: u64,
}

/// A delay spike on the links from one node to another.
#[derive(Clone, Copy, Debug)]
struct Spike {
    from: usize,
    to: usize,
    start_ns: u64,
    end_ns: u64,
    extra_ns: u64,
}

/// The fault a run carries on its first pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeFault {
    None,
    KillTarget,
    PauseSource { pause_ns: u64 },
}

/// The state of one run.
pub(super) struct World {
    pub model: MovesModel,
    pub seed: u64,
    pub keys: ClusterKeys,
    pub etcd: ModelEtcd,
    pub nodes: Vec<SimNode>,
    pub sessions: Vec<Session>,
    clients: Vec<Client>,
    pub ledger: Ledger,
    queue: BinaryHeap<Scheduled>,
    sequence: u64,
    pub now_ns: u64,
    rng: Rng,
    out_links: BTreeMap<(Core, LinkDest), OutLink>,
    link_backoff_ms: BTreeMap<(Core, LinkDest), u64>,
    /// (target core, inbound id) → (source core, generation).
    inbound: HashMap<(Core, ConnectionId), (Core, u64)>,
    client_conns: BTreeMap<(usize, Core), ClientConn>,
    conn_owner: HashMap<(Core, ConnectionId), (usize, u64)>,
    pipe_last_ns: BTreeMap<Pipe, u64>,
    generation: u64,
    pub findings: Findings,
    pub moves: Vec<MoveSeen>,
    placement_revision: u64,
    pub placement: Option<Arc<Placement>>,
    pub downs: Vec<Down>,
    spike: Option<Spike>,
    node_fault: NodeFault,
    drain_node: Option<usize>,
    pinned: BTreeSet<u32>,
    pub faults: Vec<String>,
    next_sample_ns: u64,
    actions: u64,
}

impl World {
    pub fn new(model: &MovesModel, nodes: usize, seed: u64) -> World {
        let coordination = CoordinationModel {
            partitions: model.coordination.partitions,
            ..model.coordination.clone()
        };
        let mut rng = Rng::stream(seed, 0x6d6f_7665);
        let sessions = workload::sessions(model.hunts, model.sessions_per_hunt, &mut rng);
        let ledger = Ledger::new(&sessions);
        let shards = usize::from(coordination.shards_per_node);
        let sim_nodes = (0..nodes)
            .map(|i| SimNode {
                coordinator: coordination.coordinator(i),
                cores: (0..shards).map(|s| new_core(&coordination, i, s)).collect(),
                started: false,
                dead: false,
                paused: false,
                feed: None,
                sent: None,
                wake_token: 0,
                deferred: Vec::new(),
                fabricated: BTreeSet::new(),
            })
            .collect();
        let clients = sessions
            .iter()
            .map(|_| Client {
                inflight: Inflight::new(),
                next: 0,
                map: None,
                sent_on: BTreeMap::new(),
            })
            .collect();
        let mut world = World {
            model: MovesModel {
                coordination,
                ..model.clone()
            },
            seed,
            keys: CoordinationModel::keys(),
            etcd: ModelEtcd::new(),
            nodes: sim_nodes,
            sessions,
            clients,
            ledger,
            queue: BinaryHeap::new(),
            sequence: 0,
            now_ns: 0,
            rng,
            out_links: BTreeMap::new(),
            link_backoff_ms: BTreeMap::new(),
            inbound: HashMap::new(),
            client_conns: BTreeMap::new(),
            conn_owner: HashMap::new(),
            pipe_last_ns: BTreeMap::new(),
            generation: 0,
            findings: Findings::default(),
            moves: Vec::new(),
            placement_revision: 0,
            placement: None,
            downs: Vec::new(),
            spike: None,
            node_fault: NodeFault::None,
            drain_node: None,
            pinned: BTreeSet::new(),
            faults: Vec::new(),
            next_sample_ns: SAMPLE_NS,
            actions: 0,
        };
        world.plan();
        world
    }

    /// Schedules the nodes' starts, the clients, the operator's writes and the faults.
    fn plan(&mut self) {
        let spread_ns = self.model.coordination.start_spread_ms.max(1) * NS_PER_MS;
        for i in 0..self.nodes.len() {
            let at_ns = self.rng.below(spread_ns);
            self.push(at_ns, Action::Start(i));
        }
        self.push(TICK_NS, Action::Tick);
        let think_ns_max = self.model.think_ms_max.max(1) * NS_PER_MS;
        for (k, session) in self.sessions.iter().enumerate() {
            let offset_ns = if session.organiser {
                0
            } else {
                200 * NS_PER_MS
            };
            let at_ns = CLIENTS_START_NS + offset_ns + self.rng.below(think_ns_max);
            self.sequence += 1;
            self.queue.push(Scheduled {
                at_ns,
                sequence: self.sequence,
                action: Action::ClientSend(k),
            });
        }
        let operator_start_ns = CLIENTS_START_NS + self.model.operator_start_ms * NS_PER_MS;
        let window_ns = self.model.operator_window_ms.max(1) * NS_PER_MS;
        for pin in 0..self.model.pins {
            let at_ns = operator_start_ns + self.rng.below(window_ns);
            self.push(at_ns, Action::Pin(pin));
        }
        self.node_fault = match self.rng.below(3) {
            0 => NodeFault::None,
            1 => NodeFault::KillTarget,
            _ => NodeFault::PauseSource {
                pause_ns: (500 + self.rng.below(2_500)) * NS_PER_MS,
            },
        };
        if self.rng.percent(30) {
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            self.drain_node = Some(node);
            let at_ns = operator_start_ns + self.rng.below(window_ns);
            self.push(at_ns, Action::Drain);
        }
        if self.rng.percent(40) {
            let from = self.rng.below(self.nodes.len() as u64) as usize;
            let to = (from + 1 + self.rng.below(self.nodes.len() as u64 - 1) as usize)
                % self.nodes.len();
            let start_ns = operator_start_ns + self.rng.below(window_ns);
            let spike = Spike {
                from,
                to,
                start_ns,
                end_ns: start_ns + (300 + self.rng.below(1_200)) * NS_PER_MS,
                extra_ns: (20 + self.rng.below(180)) * NS_PER_MS,
            };
            self.faults.push(format!(
                "links node {}→{} +{} ms for {} ms",
                from + 1,
                to + 1,
                spike.extra_ns / NS_PER_MS,
                (spike.end_ns - spike.start_ns) / NS_PER_MS
            ));
            self.spike = Some(spike);
        }
    }

    fn push(&mut self, at_ns: u64, action: Action) {
        self.sequence += 1;
        self.queue.push(Scheduled {
            at_ns: at_ns.max(self.now_ns),
            sequence: self.sequence,
            action,
        });
    }

    /// Schedules `action` on `pipe` after `delay_ns`, behind what the pipe carries already.
    fn push_fifo(&mut self, pipe: Pipe, delay_ns: u64, action: Action) {
        let mut at_ns = self.now_ns + delay_ns;
        let ordered =
            !(matches!(pipe, Pipe::Link(..)) && self.model.glue_fault == GlueFault::UnorderedLinks);
        if ordered {
            let last = self.pipe_last_ns.entry(pipe).or_insert(0);
            at_ns = at_ns.max(*last);
            *last = at_ns;
        }
        self.push(at_ns, action);
    }

    fn link_delay_ns(&mut self, from: usize, to: usize) -> u64 {
        let mut delay_ns = self.model.link_delay_us * NS_PER_US
            + self.rng.below(self.model.link_jitter_us * NS_PER_US + 1);
        if let Some(spike) = self.spike {
            if spike.from == from
                && spike.to == to
                && (spike.start_ns..spike.end_ns).contains(&self.now_ns)
            {
                delay_ns += spike.extra_ns;
            }
        }
        delay_ns
    }

    fn client_delay_ns(&mut self) -> u64 {
        CLIENT_DELAY_NS + self.rng.below(CLIENT_DELAY_NS)
    }

    /// Runs the whole run and checks it.
    pub fn run(mut self) -> MovesRun {
        let end_ns = self.model.run_ms * NS_PER_MS;
        while let Some(next) = self.queue.pop() {
            if next.at_ns > end_ns {
                break;
            }
            self.actions += 1;
            if self.actions > SIM_MOVES_ACTIONS_MAX {
                self.findings.report(Oracle::Liveness, || {
                    format!(
                        "the run took more than {SIM_MOVES_ACTIONS_MAX} actions by {} ms: a livelock",
                        next.at_ns / NS_PER_MS
                    )
                });
                break;
            }
            self.now_ns = next.at_ns;
            self.dispatch(next.action);
        }
        self.now_ns = end_ns;
        super::check::check(&mut self);
        self.report()
    }

    fn dispatch(&mut self, action: Action) {
        if let Some(n) = action.node() {
            if self.nodes[n].dead {
                return;
            }
            if self.nodes[n].paused {
                self.nodes[n].deferred.push(action);
                return;
            }
        }
        match action {
            Action::Start(n) => {
                self.nodes[n].started = true;
                self.drive_control(n);
            }
            Action::ControlWake(n, token) if token == self.nodes[n].wake_token => {
                self.drive_control(n)
            }
            Action::ControlWake(..) => {}
            Action::ControlNow(n) => self.drive_control(n),
            Action::EtcdReply(n, reply) => {
                let now_ns = self.now_ns;
                match reply {
                    Ok(response) => self.nodes[n].coordinator.handle_response(now_ns, response),
                    Err(reason) => self.nodes[n].coordinator.handle_failure(now_ns, &reason),
                }
                self.drive_control(n);
            }
            Action::Watch(n) => {
                let now_ns = self.now_ns;
                self.nodes[n].coordinator.handle_changed(now_ns);
                self.drive_control(n);
            }
            Action::Tick => self.tick(),
            Action::LeaseEnd(n, until_ns) => self.lease_end(n, until_ns),
            Action::Link {
                at,
                source,
                target,
                generation,
                message,
            } => self.link_message(at, source, target, generation, message),
            Action::LinkRetry(core, dest) => {
                let now_ns = self.now_ns;
                self.core(core).handle_link_retry(now_ns, dest);
                self.pump(core);
            }
            Action::Mesh {
                node,
                from,
                to,
                batch,
            } => {
                let now_ns = self.now_ns;
                self.nodes[node].cores[to].handle_mesh(now_ns, ShardId(from as u16), batch);
                self.pump((node, to));
            }
            Action::ToCore {
                client,
                core,
                generation,
                bytes,
            } => self.frame_at_core(client, core, generation, bytes),
            Action::ToClient {
                client,
                core,
                generation,
                bytes,
            } => self.replies_at_client(client, core, generation, &bytes),
            Action::ClientSend(k) => self.client_send(k),
            Action::Pin(pin) => self.pin(pin),
            Action::Drain => self.drain(),
            Action::Kill(n) => self.kill(n),
            Action::Pause(n, pause_ns) => self.pause(n, pause_ns),
            Action::Resume(n) => self.resume(n),
        }
    }

    fn core(&mut self, core: Core) -> &mut ShardCore {
        &mut self.nodes[core.0].cores[core.1]
    }

    // ---- control (`cluster::control`) and feed (`runtime::control_feed`) -----------------

    fn drive_control(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if !node.started || node.dead || node.paused {
            return;
        }
        let now_ns = self.now_ns;
        if let Some(request) = node.coordinator.poll_request(now_ns) {
            let rtt_ns = self.model.coordination.etcd_rtt_us * NS_PER_US;
            let before = self.etcd.revision();
            let reply = self.etcd.handle(now_ns + rtt_ns / 2, &request);
            if self.etcd.revision() != before {
                self.etcd_changed();
            }
            self.push(now_ns + rtt_ns, Action::EtcdReply(n, reply));
        }
        while self.nodes[n].coordinator.poll_event().is_some() {}
        self.feed(n);
        let node = &mut self.nodes[n];
        let at_ns = node.coordinator.next_wakeup_ns();
        if at_ns != u64::MAX {
            node.wake_token += 1;
            let token = node.wake_token;
            self.push(at_ns, Action::ControlWake(n, token));
        }
    }

    /// `ControlLoop::feed_shards` and the shards' feed task: placement and lease, when
    /// either changed, to every core of node `n`.
    fn feed(&mut self, n: usize) {
        let now_ns = self.now_ns;
        let view = self.nodes[n].coordinator.serving_view();
        let Some(feed) = ShardFeed::of(&view, now_ns) else {
            return;
        };
        if self.nodes[n].sent == Some(feed.sent()) {
            return;
        }
        self.nodes[n].sent = Some(feed.sent());
        self.nodes[n].feed = Some(feed.clone());
        for s in 0..self.nodes[n].cores.len() {
            self.install(n, s, &feed);
        }
        if feed.lease_at(now_ns) != NodeLease::Fenced {
            self.push(
                feed.lease_valid_until_ns,
                Action::LeaseEnd(n, feed.lease_valid_until_ns),
            );
        }
    }

    fn install(&mut self, n: usize, s: usize, feed: &ShardFeed) {
        let now_ns = self.now_ns;
        let core = &mut self.nodes[n].cores[s];
        if feed.placement.epoch() > core.placement().epoch() {
            if let Err(error) = core.handle_placement(now_ns, (*feed.placement).clone()) {
                self.findings.report(Oracle::Protocol, || {
                    format!(
                        "node {} shard {s} refused placement {}: {error}",
                        n + 1,
                        feed.placement.epoch()
                    )
                });
            }
        }
        self.nodes[n].cores[s].handle_lease(now_ns, feed.lease_at(now_ns));
        if self.model.glue_fault == GlueFault::FlipBeforeReady {
            self.fabricate_ready(n, s, &feed.placement);
        }
        self.pump((n, s));
    }

    /// The broken glue of `GlueFault::FlipBeforeReady`: says "ready" for every move this core
    /// is the source of, as soon as it sees it.
    fn fabricate_ready(&mut self, n: usize, s: usize, placement: &Placement) {
        for (p, owner) in placement.owners().iter().enumerate() {
            let Some((to, to_shard)) = owner.state.migrating_to() else {
                continue;
            };
            if owner.node != node_id(n) || owner.shard.index() != s {
                continue;
            }
            if !self.nodes[n]
                .fabricated
                .insert((p as u32, owner.part_epoch))
            {
                continue;
            }
            self.nodes[n].coordinator.handle_move_report(MoveReport {
                partition: PartitionId(p as u32),
                part_epoch: owner.part_epoch,
                to,
                to_shard,
                step: MoveStep::Ready {
                    snapshot_bytes: 0,
                    events_streamed: 0,
                },
            });
            self.push(self.now_ns, Action::ControlNow(n));
        }
    }

    /// The feed task's timer: the lease's known-valid end passed; the cores re-apply the
    /// latest update, which fences them unless a newer one came.
    fn lease_end(&mut self, n: usize, until_ns: u64) {
        let Some(feed) = self.nodes[n].feed.clone() else {
            return;
        };
        if feed.lease_valid_until_ns != until_ns {
            return;
        }
        let now_ns = self.now_ns;
        for s in 0..self.nodes[n].cores.len() {
            self.nodes[n].cores[s].handle_lease(now_ns, feed.lease_at(now_ns));
            self.pump((n, s));
        }
    }

    fn tick(&mut self) {
        let before = self.etcd.revision();
        self.etcd.expire(self.now_ns);
        if self.etcd.revision() != before {
            self.etcd_changed();
        }
        if self.now_ns >= self.next_sample_ns {
            self.next_sample_ns += SAMPLE_NS;
            self.sample_serving();
        }
        self.push(self.now_ns + TICK_NS, Action::Tick);
    }

    /// Something changed in etcd: watches fire, and the move log follows the assignment.
    fn etcd_changed(&mut self) {
        let at_ns = self.now_ns + self.model.coordination.watch_delay_ms * NS_PER_MS;
        for n in 0..self.nodes.len() {
            if self.nodes[n].started && !self.nodes[n].dead {
                self.push(at_ns, Action::Watch(n));
            }
        }
        self.follow_assignment();
    }

    fn follow_assignment(&mut self) {
        let key = self.keys.assignment();
        let Some(revision) = self.etcd.mod_revision(&key) else {
            return;
        };
        if revision == self.placement_revision {
            return;
        }
        self.placement_revision = revision;
        let value = self.etcd.get(&key).expect("it has a revision").to_vec();
        let placement = match decode_record(&value, revision) {
            Ok(placement) => Arc::new(placement),
            Err(reason) => {
                self.findings.report(Oracle::Protocol, || {
                    format!("the assignment at revision {revision} does not decode: {reason}")
                });
                return;
            }
        };
        for (p, owner) in placement.owners().iter().enumerate() {
            let p = p as u32;
            let open = self
                .moves
                .iter_mut()
                .find(|m| m.partition == p && m.ended.is_none());
            if let Some(open) = open {
                if owner.part_epoch != open.part_epoch {
                    let flipped = owner.node == open.to && owner.state == OwnerState::Serving;
                    open.ended = Some((self.now_ns, flipped));
                }
            }
            if let Some((to, _)) = owner.state.migrating_to() {
                let known = self
                    .moves
                    .iter()
                    .any(|m| m.partition == p && m.part_epoch == owner.part_epoch);
                if !known {
                    self.moves.push(MoveSeen {
                        partition: p,
                        part_epoch: owner.part_epoch,
                        from: owner.node,
                        to,
                        started_ns: self.now_ns,
                        ended: None,
                    });
                }
            }
        }
        self.placement = Some(placement);
    }

    /// Counts partitions that cores of two running nodes apply at once.
    fn sample_serving(&mut self) {
        for p in 0..self.model.coordination.partitions {
            let serving: Vec<usize> = (0..self.nodes.len())
                .filter(|&n| !self.nodes[n].dead && !self.nodes[n].paused)
                .filter(|&n| {
                    self.nodes[n]
                        .cores
                        .iter()
                        .any(|core| core.serves(PartitionId(p)))
                })
                .collect();
            if serving.len() > 1 {
                let now_ms = self.now_ns / NS_PER_MS;
                self.findings.report(Oracle::DoubleServed, || {
                    let nodes: Vec<String> = serving.iter().map(|n| (n + 1).to_string()).collect();
                    format!(
                        "at {now_ms} ms nodes {} all apply events of partition {p}",
                        nodes.join(" and ")
                    )
                });
            }
        }
    }

    // ---- a shard's outputs (`runtime::shard::wake`) --------------------------------------

    /// Drains what core `c` has for others, until it has nothing more.
    fn pump(&mut self, c: Core) {
        loop {
            let mut busy = false;
            while let Some(id) = self.core(c).poll_writable() {
                busy = true;
                self.write_replies(c, id);
            }
            while let Some((id, reason)) = self.core(c).poll_close() {
                busy = true;
                let now_ns = self.now_ns;
                self.core(c).handle_closed(now_ns, id, reason);
                if let Some((client, _)) = self.conn_owner.remove(&(c, id)) {
                    self.client_conn_lost(client, c);
                }
            }
            while let Some(peer) = self.core(c).poll_mesh_ready() {
                busy = true;
                while let Some(output) = self.core(c).poll_mesh(peer) {
                    if let MeshOutput::Batch(batch) = output {
                        let (node, from, to) = (c.0, c.1, peer.index());
                        let action = Action::Mesh {
                            node,
                            from,
                            to,
                            batch,
                        };
                        self.push(self.now_ns + MESH_DELAY_NS, action);
                    }
                }
            }
            while let Some(dest) = self.core(c).poll_links_ready() {
                busy = true;
                self.service_link(c, dest);
            }
            while let Some(dest) = self.core(c).poll_links_failed() {
                busy = true;
                self.close_out_link(c, dest, false);
            }
            while let Some(id) = self.core(c).poll_link_writable() {
                busy = true;
                let mut out = Vec::new();
                while self.core(c).poll_link_replies(id, &mut out) {}
                if let Some(&(source, generation)) = self.inbound.get(&(c, id)) {
                    if !out.is_empty() {
                        self.send_link(c, source, source, c, generation, LinkMessage::Back(out));
                    }
                }
            }
            while let Some(report) = self.core(c).poll_move_report() {
                busy = true;
                if self.model.glue_fault == GlueFault::DropReports {
                    continue;
                }
                self.nodes[c.0].coordinator.handle_move_report(report);
                self.push(self.now_ns, Action::ControlNow(c.0));
            }
            self.offer_blocked(c);
            if !busy {
                return;
            }
        }
    }

    fn write_replies(&mut self, c: Core, id: ConnectionId) {
        let mut frames = FrameBuilder::new();
        let now_ns = self.now_ns;
        while self.core(c).poll_replies(id, &mut frames) {
            let bytes = frames.bytes().to_vec();
            let written = frames.len();
            self.core(c).handle_written(now_ns, id, written);
            frames.clear(0);
            if let Some(&(client, generation)) = self.conn_owner.get(&(c, id)) {
                let delay_ns = self.client_delay_ns();
                let action = Action::ToClient {
                    client,
                    core: c,
                    generation,
                    bytes,
                };
                self.push_fifo(Pipe::CoreToClient(c, client), delay_ns, action);
            }
        }
    }

    // ---- node links (`runtime::link`, `net::link`) ---------------------------------------

    fn send_link(
        &mut self,
        from: Core,
        to: Core,
        source: Core,
        target: Core,
        generation: u64,
        message: LinkMessage,
    ) {
        let delay_ns = self.link_delay_ns(from.0, to.0);
        let action = Action::Link {
            at: to,
            source,
            target,
            generation,
            message,
        };
        self.push_fifo(Pipe::Link(from, to), delay_ns, action);
    }

    /// What the task of the link from `c` to `dest` does when woken.
    fn service_link(&mut self, c: Core, dest: LinkDest) {
        loop {
            let mut out = Vec::new();
            match self.core(c).poll_link(dest, &mut out) {
                Some(LinkPoll::Connect) => {
                    if !self.out_links.contains_key(&(c, dest)) {
                        self.connect(c, dest);
                    }
                    return;
                }
                Some(LinkPoll::Write(_)) => {
                    let Some(link) = self.out_links.get(&(c, dest)) else {
                        return;
                    };
                    let generation = link.generation;
                    let target = core_of(dest);
                    self.send_link(c, target, c, target, generation, LinkMessage::Frames(out));
                }
                Some(LinkPoll::Close) | None => return,
            }
        }
    }

    fn connect(&mut self, c: Core, dest: LinkDest) {
        let target = core_of(dest);
        if self.nodes[target.0].dead {
            // Nothing listens there: the connect is refused at once.
            self.link_failed(c, dest, false);
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        self.out_links.insert(
            (c, dest),
            OutLink {
                generation,
                up: false,
                inbound: None,
            },
        );
        let hello = self.core(c).link_hello_frame();
        self.send_link(c, target, c, target, generation, LinkMessage::Hello(hello));
    }

    /// The link from `c` to `dest` failed: the core is told, and its task backs off before
    /// the core may open it again.
    fn link_failed(&mut self, c: Core, dest: LinkDest, was_up: bool) {
        let now_ns = self.now_ns;
        self.core(c).handle_link_failed(now_ns, dest);
        let backoff = self
            .link_backoff_ms
            .entry((c, dest))
            .or_insert(LINK_RETRY_MS_MIN);
        if was_up {
            *backoff = LINK_RETRY_MS_MIN;
        }
        let wait_ms = *backoff;
        *backoff = (*backoff * 2).min(LINK_RETRY_MS_MAX);
        self.push(now_ns + wait_ms * NS_PER_MS, Action::LinkRetry(c, dest));
        self.pump(c);
    }

    /// Closes the socket of the link from `c` to `dest` (the core failed it, or it broke):
    /// the target's end sees it closed after what was sent, and the task backs off.
    fn close_out_link(&mut self, c: Core, dest: LinkDest, peer_died: bool) {
        let Some(link) = self.out_links.remove(&(c, dest)) else {
            return;
        };
        let target = core_of(dest);
        if !peer_died {
            self.send_link(c, target, c, target, link.generation, LinkMessage::Closed);
        }
        self.link_failed(c, dest, link.up);
    }

    fn link_message(
        &mut self,
        at: Core,
        source: Core,
        target: Core,
        generation: u64,
        message: LinkMessage,
    ) {
        let dest = dest_of(target);
        let current = self
            .out_links
            .get(&(source, dest))
            .is_some_and(|link| link.generation == generation);
        let now_ns = self.now_ns;
        match message {
            LinkMessage::Hello(bytes) if current => {
                let Some((header, body)) = self.one_frame(at, &bytes) else {
                    return;
                };
                let mut answer = FrameBuilder::new();
                let accepted = self
                    .core(at)
                    .handle_link_hello(now_ns, &header, &body, &mut answer);
                if let Some(id) = accepted {
                    self.inbound.insert((at, id), (source, generation));
                    if let Some(link) = self.out_links.get_mut(&(source, dest)) {
                        link.inbound = Some(id);
                    }
                }
                let answer = answer.bytes().to_vec();
                self.send_link(
                    at,
                    source,
                    source,
                    target,
                    generation,
                    LinkMessage::Answer(answer),
                );
                self.pump(at);
            }
            LinkMessage::Answer(bytes) if current => self.link_answer(source, dest, &bytes),
            LinkMessage::Frames(bytes) if current => self.link_frames(at, source, dest, &bytes),
            LinkMessage::Back(bytes) if current => self.link_back(source, dest, &bytes),
            LinkMessage::Closed => {
                // The source's end closed; this generation's inbound id, if it had one.
                let id = self
                    .inbound
                    .iter()
                    .find(|(key, value)| key.0 == at && **value == (source, generation))
                    .map(|(key, _)| key.1);
                if let Some(id) = id {
                    self.inbound.remove(&(at, id));
                    self.core(at).handle_link_closed(now_ns, id);
                    self.pump(at);
                }
            }
            _ => {}
        }
    }

    fn link_answer(&mut self, source: Core, dest: LinkDest, bytes: &[u8]) {
        let Some((header, body)) = self.one_frame(source, bytes) else {
            return;
        };
        let now_ns = self.now_ns;
        if header.kind != FrameKind::LinkAccepted {
            // Refused (the frame says why): the task backs off and tries again.
            self.close_out_link(source, dest, true);
            return;
        }
        let connected = match ValidatedFrame::<ArchivedLinkAccepted>::validate(header.kind, &body) {
            Ok(frame) => match frame.first() {
                Some(accepted) => self
                    .core(source)
                    .handle_link_connected(now_ns, dest, accepted.get())
                    .map_err(|error| error.to_string()),
                None => Err("a LinkAccepted frame without its record".to_owned()),
            },
            Err(error) => Err(error.to_string()),
        };
        match connected {
            Ok(()) => {
                if let Some(link) = self.out_links.get_mut(&(source, dest)) {
                    link.up = true;
                }
                self.pump(source);
            }
            Err(error) => {
                self.protocol(source, &format!("link accept from {dest:?}: {error}"));
                self.close_out_link(source, dest, false);
            }
        }
    }

    fn link_frames(&mut self, at: Core, source: Core, dest: LinkDest, bytes: &[u8]) {
        let Some(id) = self.out_links.get(&(source, dest)).and_then(|l| l.inbound) else {
            return;
        };
        let now_ns = self.now_ns;
        for (header, body) in self.frames(at, bytes) {
            let handled = match header.kind {
                FrameKind::LinkEvents => self
                    .core(at)
                    .handle_link_events(now_ns, id, &body)
                    .map_err(|error| error.to_string()),
                kind => self
                    .core(at)
                    .handle_move_frame(now_ns, id, kind, &body)
                    .map_err(|error| error.to_string()),
            };
            if let Err(error) = handled {
                self.protocol(
                    at,
                    &format!(
                        "a {:?} frame from node {} shard {}: {error}",
                        header.kind,
                        source.0 + 1,
                        source.1
                    ),
                );
                // The target closes the link; its source sees it fail.
                self.inbound.remove(&(at, id));
                self.core(at).handle_link_closed(now_ns, id);
                self.pump(at);
                self.close_out_link(source, dest, true);
                return;
            }
        }
        self.pump(at);
    }

    fn link_back(&mut self, source: Core, dest: LinkDest, bytes: &[u8]) {
        let now_ns = self.now_ns;
        for (header, body) in self.frames(source, bytes) {
            let handled = match header.kind {
                FrameKind::LinkReplies => self
                    .core(source)
                    .handle_link_replies(now_ns, dest, &body)
                    .map_err(|error| error.to_string()),
                FrameKind::MoveAck => self
                    .core(source)
                    .handle_move_ack(now_ns, dest, &body)
                    .map_err(|error| error.to_string()),
                kind => Err(format!("a {kind:?} frame back on a link")),
            };
            if let Err(error) = handled {
                self.protocol(
                    source,
                    &format!("from node {} shard {}: {error}", dest.node.0, dest.shard.0),
                );
                self.close_out_link(source, dest, false);
                return;
            }
        }
        self.pump(source);
    }

    fn protocol(&mut self, at: Core, what: &str) {
        let now_ms = self.now_ns / NS_PER_MS;
        self.findings.report(Oracle::Protocol, || {
            format!("at {now_ms} ms node {} shard {}: {what}", at.0 + 1, at.1)
        });
    }

    /// The frames in `bytes`, each body copied to an aligned buffer (as a receive buffer
    /// holds it); a malformed one is a protocol finding.
    fn frames(&mut self, at: Core, bytes: &[u8]) -> Vec<(FrameHeader, AlignedVec)> {
        let mut frames = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            match decode_frame(rest) {
                Ok(Decoded::Frame {
                    header,
                    body,
                    frame_len,
                }) => {
                    let mut aligned = AlignedVec::new();
                    aligned.extend_from_slice(body);
                    frames.push((header, aligned));
                    rest = &rest[frame_len..];
                }
                _ => {
                    self.protocol(at, "bytes that are not whole frames");
                    break;
                }
            }
        }
        frames
    }

    fn one_frame(&mut self, at: Core, bytes: &[u8]) -> Option<(FrameHeader, AlignedVec)> {
        self.frames(at, bytes).into_iter().next()
    }

    // ---- clients (`client::cluster`, sans sockets) ---------------------------------------

    fn link_index(&self, core: Core) -> usize {
        core.0 * usize::from(self.model.coordination.shards_per_node) + core.1
    }

    /// The newest placement a running node's core has: what a client asking a seed gets.
    fn fresh_map(&self) -> Option<Arc<Placement>> {
        self.nodes
            .iter()
            .filter(|node| !node.dead && !node.paused)
            .flat_map(|node| node.cores.iter())
            .map(|core| core.placement())
            .filter(|placement| placement.epoch() > Epoch(1))
            .max_by_key(|placement| placement.epoch())
            .map(|placement| Arc::new(placement.clone()))
    }

    fn route(&mut self, k: usize, partition: PartitionId) -> Option<Core> {
        if self.clients[k].map.is_none() {
            self.clients[k].map = self.fresh_map();
        }
        let map = self.clients[k].map.as_ref()?;
        let owner = map.owner(partition);
        Some((owner.node.0 as usize - 1, owner.shard.index()))
    }

    fn client_send(&mut self, k: usize) {
        let total = self.sessions[k].events.len();
        let mut batches: BTreeMap<Core, Vec<crate::core::message::Event>> = BTreeMap::new();
        while self.clients[k].next < total && self.clients[k].inflight.len() < self.model.window {
            let (event, _) = self.sessions[k].events[self.clients[k].next].clone();
            let partition = self.partition_of(&event);
            let Some(core) = self.route(k, partition) else {
                break;
            };
            self.clients[k].next += 1;
            let seq = event.client_seq;
            let link = self.link_index(core);
            match self.clients[k]
                .inflight
                .admit(event.clone(), partition, link)
            {
                Ok(Admitted::Send) => batches.entry(core).or_default().push(event),
                Ok(Admitted::Held) => {}
                Err(error) => {
                    self.findings.report(Oracle::LostOrDuplicated, || {
                        format!("session {} could not send #{seq}: {error:?}", k + 1)
                    });
                    continue;
                }
            }
            self.ledger.set(k, seq, Fate::Pending);
        }
        for (core, events) in batches {
            self.send_events(k, core, events);
        }
        if self.clients[k].next < total {
            let at_ns =
                self.now_ns + 1 + self.rng.below(self.model.think_ms_max.max(1) * NS_PER_MS);
            self.push(at_ns, Action::ClientSend(k));
        }
    }

    fn partition_of(&self, event: &crate::core::message::Event) -> PartitionId {
        self.nodes[0].cores[0]
            .placement()
            .partitioner()
            .partition_of(event.hunt)
    }

    /// Sends `events` of session `k` to `core` in one frame, connecting first.
    fn send_events(&mut self, k: usize, core: Core, events: Vec<crate::core::message::Event>) {
        if self.nodes[core.0].dead {
            // Connection refused: the events are not sent; the client asks a seed for a map.
            for event in &events {
                self.clients[k].inflight.abandon(event.client_seq);
                self.ledger.set(k, event.client_seq, Fate::Refused);
            }
            self.clients[k].map = self.fresh_map();
            self.release_ready(k);
            return;
        }
        let epoch = self.clients[k]
            .map
            .as_ref()
            .map_or(0, |map| map.epoch().get());
        let mut frame = FrameBuilder::new();
        frame.begin(FrameKind::Events);
        for event in &events {
            frame.push(event).expect("a simulated event fits a frame");
            self.clients[k].sent_on.insert(event.client_seq, core);
        }
        frame.finish(epoch);
        let generation = match self.client_conns.get(&(k, core)) {
            Some(conn) => conn.generation,
            None => {
                self.generation += 1;
                let generation = self.generation;
                let conn = ClientConn {
                    generation,
                    id: None,
                    blocked: VecDeque::new(),
                };
                self.client_conns.insert((k, core), conn);
                generation
            }
        };
        let delay_ns = self.client_delay_ns();
        let action = Action::ToCore {
            client: k,
            core,
            generation,
            bytes: frame.bytes().to_vec(),
        };
        self.push_fifo(Pipe::ClientToCore(k, core), delay_ns, action);
    }

    fn frame_at_core(&mut self, k: usize, core: Core, generation: u64, bytes: Vec<u8>) {
        let now_ns = self.now_ns;
        let Some(conn) = self.client_conns.get(&(k, core)) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        if conn.id.is_none() {
            match self.core(core).handle_connect(now_ns) {
                Some(id) => {
                    self.conn_owner.insert((core, id), (k, generation));
                    if let Some(conn) = self.client_conns.get_mut(&(k, core)) {
                        conn.id = Some(id);
                    }
                }
                None => {
                    self.client_conn_lost(k, core);
                    return;
                }
            }
        }
        if let Some(conn) = self.client_conns.get_mut(&(k, core)) {
            conn.blocked.push_back(bytes);
        }
        self.offer_blocked(core);
        self.pump(core);
    }

    /// Offers the frames waiting at `core`'s connections, in order, while it takes them.
    fn offer_blocked(&mut self, core: Core) {
        let waiting: Vec<(usize, ConnectionId)> = self
            .client_conns
            .iter()
            .filter(|((_, at), conn)| *at == core && !conn.blocked.is_empty())
            .filter_map(|((k, _), conn)| Some((*k, conn.id?)))
            .collect();
        let now_ns = self.now_ns;
        for (k, id) in waiting {
            loop {
                if self.core(core).readable(id) != Readable::Yes {
                    break;
                }
                let Some(bytes) = self
                    .client_conns
                    .get_mut(&(k, core))
                    .and_then(|conn| conn.blocked.pop_front())
                else {
                    break;
                };
                let Some((header, body)) = self.one_frame(core, &bytes) else {
                    break;
                };
                match self.core(core).handle_frame(now_ns, id, &header, &body) {
                    Ok(crate::core::shard::FrameProgress::Done) => {}
                    Ok(crate::core::shard::FrameProgress::Blocked) => {
                        if let Some(conn) = self.client_conns.get_mut(&(k, core)) {
                            conn.blocked.push_front(bytes);
                        }
                        break;
                    }
                    Err(error) => {
                        self.protocol(core, &format!("a client frame: {error}"));
                        break;
                    }
                }
            }
        }
    }

    fn replies_at_client(&mut self, k: usize, core: Core, generation: u64, bytes: &[u8]) {
        let current = self
            .client_conns
            .get(&(k, core))
            .is_some_and(|conn| conn.generation == generation);
        if !current {
            return;
        }
        let mut replies = Vec::new();
        for (header, body) in self.frames(core, bytes) {
            if header.kind != FrameKind::Replies {
                continue;
            }
            let Ok(records) = Records::parse(header.kind, &body) else {
                self.protocol(core, "a replies frame that does not parse");
                continue;
            };
            for (index, record) in records.iter().enumerate() {
                let reply = access_record::<ArchivedReply>(index as u32, record)
                    .ok()
                    .and_then(|reply| rkyv::deserialize::<Reply, rkyv::rancor::Error>(reply).ok());
                match reply {
                    Some(reply) => replies.push(reply),
                    None => self.protocol(core, "a reply that does not parse"),
                }
            }
        }
        for reply in replies {
            self.on_reply(k, core, reply);
        }
        self.release_ready(k);
    }

    fn on_reply(&mut self, k: usize, core: Core, reply: Reply) {
        let seq = reply.client_seq;
        let moved = match reply.outcome {
            Outcome::Moved { epoch, .. } => Some(epoch),
            _ => None,
        };
        match self.clients[k].inflight.answered(seq, moved) {
            Answered::Final => {
                self.clients[k].sent_on.remove(&seq);
                self.ledger.set(k, seq, Fate::Answered(reply.outcome));
            }
            Answered::WillResend => {
                self.clients[k].sent_on.remove(&seq);
                // The node that answered `Moved` has the newer map (it pushes it to clients
                // behind): adopt it.
                let placement = self.nodes[core.0].cores[core.1].placement();
                let newer = self.clients[k]
                    .map
                    .as_ref()
                    .is_none_or(|map| map.epoch() < placement.epoch());
                if newer {
                    self.clients[k].map = Some(Arc::new(placement.clone()));
                }
            }
            Answered::Unknown => self.ledger.extra_replies.push((k, seq, reply.outcome)),
        }
    }

    /// Sends again the events of partitions the client may now release.
    fn release_ready(&mut self, k: usize) {
        for partition in self.clients[k].inflight.releasable() {
            let Some(core) = self.route(k, partition) else {
                continue;
            };
            let link = self.link_index(core);
            let events = self.clients[k].inflight.release(partition, link);
            if !events.is_empty() {
                self.send_events(k, core, events);
            }
        }
    }

    /// Session `k`'s connection to `core` is gone: what it had unanswered there never will be.
    fn client_conn_lost(&mut self, k: usize, core: Core) {
        if let Some(conn) = self.client_conns.remove(&(k, core)) {
            if let Some(id) = conn.id {
                self.conn_owner.remove(&(core, id));
            }
        }
        let lost: Vec<u64> = self.clients[k]
            .sent_on
            .iter()
            .filter(|(_, at)| **at == core)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in lost {
            self.clients[k].sent_on.remove(&seq);
            self.clients[k].inflight.abandon(seq);
            self.ledger.set(k, seq, Fate::Lost);
        }
        self.release_ready(k);
    }

    // ---- the operator and the faults -----------------------------------------------------

    /// The partitions that hold a hunt of the workload.
    fn loaded_partitions(&self) -> BTreeSet<u32> {
        let partitioner = self.nodes[0].cores[0].placement().partitioner();
        (0..self.model.hunts)
            .map(|h| partitioner.partition_of(workload::hunt_id(h)).0)
            .collect()
    }

    fn up(&self, n: usize) -> bool {
        !self.nodes[n].dead && !self.nodes[n].paused
    }

    /// Writes `pins/<p>`: a loaded partition, serving on a running node, to another running
    /// node (not the drained one); the first pin carries the run's node fault.
    fn pin(&mut self, pin: usize) {
        let Some(placement) = self.placement.clone() else {
            return;
        };
        let candidates: Vec<u32> = self
            .loaded_partitions()
            .into_iter()
            .filter(|p| !self.pinned.contains(p))
            .filter(|&p| {
                let owner = placement.owner(PartitionId(p));
                owner.state == OwnerState::Serving && self.up(owner.node.0 as usize - 1)
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let p = candidates[self.rng.below(candidates.len() as u64) as usize];
        let source = placement.owner(PartitionId(p)).node.0 as usize - 1;
        let targets: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| n != source && self.up(n) && Some(n) != self.drain_node)
            .collect();
        if targets.is_empty() {
            return;
        }
        let target = targets[self.rng.below(targets.len() as u64) as usize];
        let shards = u64::from(self.model.coordination.shards_per_node);
        let shard = self.rng.percent(50).then(|| self.rng.below(shards) as u16);
        self.pinned.insert(p);
        let record = PinRecord {
            node: node_id(target).0,
            shard,
        };
        self.put(self.keys.pin(p), encode_json(&record));
        self.faults.push(format!("pin {p} → node {}", target + 1));
        if pin != 0 {
            return;
        }
        // Within a move's few tens of milliseconds, or just after its flip.
        let delay_ns = self.rng.below(self.model.fault_delay_ms_max + 1) * NS_PER_MS;
        match self.node_fault {
            NodeFault::None => {}
            NodeFault::KillTarget => {
                self.faults.push(format!(
                    "kill node {} after {} ms",
                    target + 1,
                    delay_ns / NS_PER_MS
                ));
                self.push(self.now_ns + delay_ns, Action::Kill(target));
            }
            NodeFault::PauseSource { pause_ns } => {
                self.faults.push(format!(
                    "pause node {} after {} ms for {} ms",
                    source + 1,
                    delay_ns / NS_PER_MS,
                    pause_ns / NS_PER_MS
                ));
                self.push(self.now_ns + delay_ns, Action::Pause(source, pause_ns));
            }
        }
    }

    fn drain(&mut self) {
        let Some(n) = self.drain_node else {
            return;
        };
        if !self.up(n) {
            return;
        }
        let Some(registered_revision) = self.etcd.mod_revision(&self.keys.node(node_id(n))) else {
            return;
        };
        let record = DrainRecord {
            registered_revision,
        };
        self.put(self.keys.drain(node_id(n)), encode_json(&record));
        self.faults.push(format!("drain node {}", n + 1));
    }

    /// Puts an operator's record straight into etcd, as `trove cluster` does.
    fn put(&mut self, key: String, value: Vec<u8>) {
        let request = crate::cluster::coordinator::Request::Put {
            key,
            value,
            lease: 0,
        };
        if self.etcd.handle(self.now_ns, &request).is_ok() {
            self.etcd_changed();
        }
    }

    /// Node `n` dies (as SIGKILL: its lease is not revoked): its links break, its clients'
    /// connections break.
    fn kill(&mut self, n: usize) {
        if self.nodes[n].dead {
            return;
        }
        self.nodes[n].dead = true;
        self.nodes[n].deferred.clear();
        self.downs.push(Down {
            node: n,
            from_ns: self.now_ns,
            to_ns: u64::MAX,
        });
        let links: Vec<(Core, LinkDest)> = self.out_links.keys().copied().collect();
        for (c, dest) in links {
            if core_of(dest).0 == n && c.0 != n {
                // Its peer is gone: the connection resets.
                self.close_out_link(c, dest, true);
            } else if c.0 == n {
                // Its own outgoing links: the targets see them closed after what was sent.
                if let Some(link) = self.out_links.remove(&(c, dest)) {
                    let target = core_of(dest);
                    if !self.nodes[target.0].dead {
                        self.send_link(c, target, c, target, link.generation, LinkMessage::Closed);
                    }
                }
            }
        }
        let conns: Vec<(usize, Core)> = self
            .client_conns
            .keys()
            .copied()
            .filter(|(_, core)| core.0 == n)
            .collect();
        for (k, core) in conns {
            self.client_conn_lost(k, core);
        }
    }

    fn pause(&mut self, n: usize, pause_ns: u64) {
        if self.nodes[n].dead || self.nodes[n].paused {
            return;
        }
        self.nodes[n].paused = true;
        self.downs.push(Down {
            node: n,
            from_ns: self.now_ns,
            to_ns: self.now_ns + pause_ns,
        });
        self.push(self.now_ns + pause_ns, Action::Resume(n));
    }

    /// Node `n` runs again: its cores' feed timer fires first (the lease may have passed), its
    /// control thread steps, then what arrived meanwhile runs, in order.
    fn resume(&mut self, n: usize) {
        if self.nodes[n].dead || !self.nodes[n].paused {
            return;
        }
        self.nodes[n].paused = false;
        if let Some(feed) = self.nodes[n].feed.clone() {
            self.lease_end(n, feed.lease_valid_until_ns);
        }
        self.drive_control(n);
        let deferred = std::mem::take(&mut self.nodes[n].deferred);
        for action in deferred {
            self.push(self.now_ns, action);
        }
    }

    fn report(self) -> MovesRun {
        let started = self.moves.len() as u64;
        let flipped = self
            .moves
            .iter()
            .filter(|m| matches!(m.ended, Some((_, true))))
            .count() as u64;
        let abandoned = self
            .moves
            .iter()
            .filter(|m| matches!(m.ended, Some((_, false))))
            .count() as u64;
        let mut sent = 0;
        let mut applied = 0;
        let mut not_applied = 0;
        let mut lost = 0;
        for fate in self.ledger.fates.iter().flatten() {
            match fate {
                Fate::Unsent => continue,
                Fate::Answered(outcome) if workload::applied(outcome) => applied += 1,
                Fate::Lost => lost += 1,
                Fate::Pending => {}
                Fate::Answered(_) | Fate::Refused => not_applied += 1,
            }
            sent += 1;
        }
        let tallies: Vec<_> = self
            .nodes
            .iter()
            .flat_map(|node| node.cores.iter())
            .map(|core| core.stats().moves)
            .collect();
        MovesRun {
            staged_installed: tallies.iter().map(|t| t.in_installed).sum(),
            events_held: tallies.iter().map(|t| t.events_held).sum(),
            replies_kept_back: tallies.iter().map(|t| t.replies_kept_back).sum(),
            seed: self.seed,
            nodes: self.nodes.len(),
            faults: if self.faults.is_empty() {
                "none".to_owned()
            } else {
                self.faults.join(", ")
            },
            moves_started: started,
            moves_flipped: flipped,
            moves_abandoned: abandoned,
            events_sent: sent,
            events_applied: applied,
            events_not_applied: not_applied,
            events_lost_answer: lost,
            findings: self.findings,
        }
    }
}

/// A core of node `n` as a cluster node's shard starts: the round-robin placeholder placement,
/// fenced until its control thread confirms its lease.
fn new_core(model: &CoordinationModel, n: usize, s: usize) -> ShardCore {
    let shards = usize::from(model.shards_per_node);
    let placement = Placement::round_robin(model.partitions, shards)
        .expect("the model's partition count is a power of two");
    let config = ShardConfig {
        node: node_id(n),
        cluster: Some("sim".to_owned()),
        lease_at_start: NodeLease::Fenced,
        ..ShardConfig::defaults(shards)
    };
    ShardCore::with_config(ShardId(s as u16), placement, config)
}
