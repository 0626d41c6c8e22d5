//! The discrete-event simulation of one run: a cluster of nodes, each of several shards, its
//! clients, its network and its failure detector, in virtual time, driving trove's real
//! `ShardCore` on every shard.
//!
//! Everything that happens is an [`Action`] on one agenda ordered by virtual time (ties in the
//! order they were scheduled), taken one at a time by a single loop: no clock is read and
//! nothing runs concurrently, so a seed reproduces a run exactly.
//!
//! What is real and what is modelled:
//! - real: every shard is a [`ShardCore`], fed the way the node's runtime feeds it: a frame from
//!   a connection (`handle_frame`), a mesh batch from a peer shard (`handle_mesh`), replies
//!   written (`handle_written`), and at the end closes and `handle_stop`. Admission, the
//!   credit of the shard, of each connection and of each peer's mesh budget, the batching and
//!   forwarding of events between the shards of a node, the re-routing on arrival, the
//!   application by the treasure-hunt state machine and the routing of replies back to their
//!   connection are trove's own; the simulator only carries what `poll_replies` and
//!   `poll_mesh` hand out. Each event is archived with rkyv by its client
//!   ([`ClientProto`]), and replies are read back with the client protocol's parser.
//! - modelled: CPU time (a cost per piece of work, see [`Costs`]), the network ([`Network`]),
//!   the heartbeats of the failure detector, and the traffic *between* nodes (trove has no
//!   node links yet): a node that receives an event another node owns sends it there (router,
//!   forward) or sends a copy to every node (broadcast), keeping its receive-queue slot
//!   until the reply has been relayed to the client; a node that receives a broadcast copy it
//!   does not own looks at it and drops it.
//!
//! The life of an event. Its client sends it, in a frame, on a connection to its *home*
//! shard (the entry node's shard for broadcast and forward, node 0 for router, the owning
//! shard for shard-aware). If the entry node owns the event's partition, the home shard's
//! core admits it (or answers `Busy`: fail-fast mode), applies it or forwards it over the
//! mesh to the owning shard, and writes the reply on the connection. Otherwise the node's
//! modelled link layer sends the frame on to the owning node, where it arrives on the
//! connection of that node link and the owning node's cores deal with it in the same way;
//! the reply is written back on the link and relayed to the client by the home shard.
//!
//! Timing. A message reaching a shard is handed to its core at once (the shell reads and
//! admits what credit allows); the CPU time of what the core did is then queued on the
//! shard's CPU, first come first served, and what the core handed out (mesh batches, reply
//! bytes) leaves when that time is over. A reply's credit therefore covers the event's wait
//! for the CPU, as it does on a busy trove shard. In front of the core, every message that
//! reaches a shard (except mesh batches, which the sender's mesh credit bounds) holds a slot
//! of the shard's modelled receive queue until its CPU time is over, as the general
//! framework's event queue did: a full one refuses the message (an event is answered `Busy`,
//! a copy or a heartbeat is lost). Both bounds are `--queue-events`.
//!
//! Heartbeats: every node's heartbeat timer pings the next node on the ring. The ping is
//! answered by the target's shard 0 and the answer recorded by the monitor's shard 0, both on
//! the same CPUs as events, behind them, like the framework that hit the wall did. A monitor
//! that has processed no answer to any ping it sent within the timeout declares its target
//! unresponsive; every node is in fact alive, so every such declaration is false.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rkyv::util::AlignedVec;

use crate::client::proto::{ClientProto, Next, Received, next_frame};
use crate::constants::{EVENT_BYTES_MAX, SIM_CLIENT_CONNECTIONS_PER_SHARD_MAX, SIM_DRAIN_MS_MAX};
use crate::core::codec::{Decoded, FrameBuilder, FrameKind, Records, access_record, decode_frame};
use crate::core::credit::Credit;
use crate::core::ids::{ConnectionId, NodeId, PartitionId, ShardId, TreasureId};
use crate::core::message::{ArchivedEvent, ArchivedOutcome, Event, EventKind, Outcome, Reply};
use crate::core::partition::Placement;
use crate::core::rng::Rng;
use crate::core::shard::faults::Faults as CoreFaults;
use crate::core::shard::{CloseReason, MeshBatch, MeshOutput, ShardConfig, ShardCore};
use crate::sim::config::{Costs, RunConfig, Strategy};
use crate::sim::network::{Link, Network};
use crate::sim::oracle::{Answer, EventFate, Findings, Oracle, OrderOracle, WinnerOracle};
use crate::sim::report::{RunReport, RunStats};
use crate::sim::shard::ShardQueue;
use crate::sim::workload::{STREAM_HEARTBEAT, STREAM_NETWORK, Workload};

/// Size of a heartbeat ping or answer on the wire (a frame header and a few fields).
const HEARTBEAT_BYTES: u32 = 64;

/// A shard of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShardAddr {
    node: u32,
    shard: u16,
}

/// A failure detector's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Heartbeat {
    /// "Are you alive?", sent by a monitor's timer at `sent_ns`.
    Ping { sent_ns: u64 },
    /// "Yes", to the ping sent at `ping_sent_ns`.
    Answer { ping_sent_ns: u64 },
}

/// What a shard does once the CPU time of a piece of work is over.
enum Work {
    /// Hand on what the shard's core produced: mesh batches for peer shards, and (broadcast
    /// entry) copies of an event for every other node. `applied` events were applied.
    Core {
        mesh: Vec<(ShardId, MeshBatch)>,
        applied: u32,
        fan_out: Option<u32>,
    },
    /// Modelled link layer of an entry node: send the event on to the node that owns it.
    Forward { event: u32, to: u32 },
    /// Modelled link layer of a broadcast entry node: a copy of the event to every node.
    FanOut { event: u32 },
    /// Modelled link layer of an entry node: relay an event's reply from its owning node to its
    /// client, and give back the credit forwarding it held.
    Relay {
        event: u32,
        answer: Answer,
        reply_bytes: u32,
    },
    /// Answer a ping that `monitor` sent at `sent_ns`.
    AnswerPing { monitor: u32, sent_ns: u64 },
    /// Record the answer to the ping sent at `ping_sent_ns`.
    RecordAnswer { ping_sent_ns: u64 },
}

enum Action {
    /// An event leaves its client.
    ClientSend { event: u32 },
    /// A client's frame reaches the event's home shard.
    ClientFrame { event: u32 },
    /// An event's frame, sent on by node `from`, reaches shard `to` of another node: a copy
    /// (broadcast) or the event itself (router, forward).
    LinkFrame {
        from: u32,
        to: ShardAddr,
        event: u32,
    },
    /// A write of a node link's connection reaches node `to`, the link's other end: the
    /// replies to the events it sent.
    /// `reply_bytes` is each reply's share of the write.
    LinkReplies {
        to: u32,
        replies: Vec<(u32, Answer)>,
        reply_bytes: u32,
    },
    /// A batch of one shard's core reaches another shard of the same node.
    Mesh {
        node: u32,
        from: ShardId,
        to: ShardId,
        batch: MeshBatch,
    },
    /// The CPU time of a piece of work is over.
    Finish { at: ShardAddr, work: Work },
    /// Reply bytes handed out by a core's `poll_replies` have left its connection.
    WriteDone {
        at: ShardAddr,
        connection: u32,
        frames: FrameBuilder,
    },
    /// An event's reply reaches its client.
    ClientReceive { event: u32, answer: Answer },
    /// A heartbeat message arrives at node `to`'s shard 0.
    Heartbeat {
        from: u32,
        to: u32,
        heartbeat: Heartbeat,
    },
    /// A node's heartbeat timer fires.
    Tick { monitor: u32 },
    /// Test-only fault: node 0's shards lose the state of their partitions.
    LoseState,
}

/// The agenda: actions by virtual time, ties in the order they were scheduled.
#[derive(Default)]
struct Agenda {
    heap: BinaryHeap<Reverse<(u64, u64, ActionSlot)>>,
    scheduled: u64,
}

/// An action in the agenda. Ordered by nothing: the time and sequence number before it
/// always differ.
struct ActionSlot(Action);

impl PartialEq for ActionSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ActionSlot {}
impl PartialOrd for ActionSlot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ActionSlot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Agenda {
    fn at(&mut self, time_ns: u64, action: Action) {
        self.scheduled += 1;
        self.heap
            .push(Reverse((time_ns, self.scheduled, ActionSlot(action))));
    }

    fn next(&mut self) -> Option<(u64, Action)> {
        self.heap
            .pop()
            .map(|Reverse((time_ns, _, slot))| (time_ns, slot.0))
    }
}

/// One event of the run, from its client's send to its reply.
struct EventRecord {
    session: u32,
    /// The event's number in its session (on the wire, `client_seq` is the event's index in
    /// the run, so that a reply names its event whichever connection it comes back on).
    session_seq: u64,
    sent_ns: u64,
    partition: PartitionId,
    owner: ShardAddr,
    home: ShardAddr,
    /// The treasure a claim asks for.
    claim: Option<TreasureId>,
    /// The frame the client sent, holding the archived event.
    frame: AlignedVec,
    /// The home shard's receive-queue slot the event keeps while another node deals with it,
    /// given back when its reply has been relayed.
    link_credit: Credit,
    fate: EventFate,
}

/// One connection of a simulated shard, as the shell sees it.
struct SimConnection {
    id: ConnectionId,
    /// For a node link, the node at its other end, to which replies go back.
    link_from: Option<u32>,
    /// A write handed out by `poll_replies` is on its way and not yet reported written.
    writing: bool,
    /// When the CPU work that queued its newest replies is over: they leave no earlier.
    replies_ready_ns: u64,
}

/// A shard: its real core, its modelled CPU and receive queue, and its connections.
struct SimShard {
    core: ShardCore,
    queue: ShardQueue,
    connections: Vec<SimConnection>,
    /// Index into `connections` by the core's connection slot.
    by_slot: Vec<u32>,
    /// The clients' connections, by group (see [`SIM_CLIENT_CONNECTIONS_PER_SHARD_MAX`]).
    client_connections: Vec<Option<u32>>,
    /// The node links that land on this shard, by the node at their other end.
    link_connections: Vec<Option<u32>>,
}

/// A node: its shards, and its failure detector's memory.
struct Node {
    shards: Vec<SimShard>,
    /// As a monitor: the send time of the newest ping to the next node whose answer this
    /// node has processed.
    newest_answered_ping_ns: u64,
    /// True once some monitor has declared this node unresponsive.
    declared_unresponsive: bool,
}

/// The state of one run.
struct Sim {
    strategy: Strategy,
    nodes: usize,
    shards: usize,
    costs: Costs,
    load_end_ns: u64,
    heartbeat_interval_ns: u64,
    heartbeat_timeout_ns: u64,
    /// Test-only faults of the model (see [`crate::sim::config::Faults`]).
    drop_node_event_every: u64,
    duplicate_client_event_every: u64,

    now: u64,
    agenda: Agenda,
    workload: Workload,
    placement: Placement,
    cluster: Vec<Node>,
    events: Vec<EventRecord>,
    network: Network,
    /// Every simulated client's protocol: one frame per event, stamped with the map's epoch.
    client: ClientProto,
    /// Size of a `Busy` reply frame, for those the modelled link layer sends.
    busy_reply_bytes: u32,
    node_events_sent: u64,

    findings: Findings,
    order: OrderOracle,
    winners: WinnerOracle,
    stats: RunStats,
}

/// Runs one simulation to the end and checks it. The configuration must have been validated
/// (`Model::validate` and `Model::validate_cluster`).
pub fn run(config: &RunConfig) -> RunReport {
    let mut sim = Sim::new(config);
    sim.run_to_rest();
    sim.check_at_rest();
    sim.stats
        .finish(config, sim.findings, sim.winners.claimed())
}

/// The cluster's placement: partition `p` belongs to node `p % nodes`, which deals its
/// partitions out to its shards in turn.
fn cluster_placement(partitions: u32, nodes: usize, shards: usize) -> Placement {
    let mut placement =
        Placement::round_robin(partitions, shards).expect("the model's partitions are valid");
    for p in 0..partitions {
        let partition = PartitionId(p);
        let node = NodeId(p % nodes as u32);
        let shard = ShardId(((p as usize / nodes) % shards) as u16);
        let owner = placement.owner(partition);
        if (owner.node, owner.shard) != (node, shard) {
            placement = placement
                .with_owner(partition, node, shard)
                .expect("an owner within the cluster");
        }
    }
    placement
}

/// The configuration of every simulated shard's core: fail-fast, a socket budget of
/// `queue_events` events, shared by any one connection, and the node's mesh budget dealt
/// out to the sources as a node does.
fn shard_config(node: u32, shards: usize, queue_events: u32, faults: CoreFaults) -> ShardConfig {
    let budget = Credit::new(queue_events, queue_events * EVENT_BYTES_MAX as u32);
    let sources = shards.saturating_sub(1).max(1) as u32;
    let per_source = (queue_events / sources).max(1);
    ShardConfig {
        node: NodeId(node),
        shard_budget: budget,
        connection_budget: budget,
        mesh_budget_per_source: Credit::new(per_source, per_source * EVENT_BYTES_MAX as u32),
        fail_fast: true,
        faults,
        // The simulator closes no connection for silence: it never calls `handle_timeout`.
        ..ShardConfig::defaults(shards)
    }
}

/// What an outcome is, for the oracles.
fn answer_of(outcome: &ArchivedOutcome) -> Answer {
    match outcome {
        ArchivedOutcome::Busy => Answer::Busy,
        ArchivedOutcome::Claimed { .. } => Answer::Won,
        ArchivedOutcome::AlreadyClaimed { winner } => Answer::AlreadyWon(winner.get()),
        ArchivedOutcome::Moved { .. } => Answer::Unexpected("moved"),
        ArchivedOutcome::Error { .. } => Answer::Unexpected("an error"),
        // No simulated placement has an `Offline` partition, and no shard here is fenced.
        ArchivedOutcome::Unavailable { .. } => Answer::Unexpected("unavailable"),
        ArchivedOutcome::Accepted { .. }
        | ArchivedOutcome::Rejected { .. }
        | ArchivedOutcome::Leaderboard { .. }
        | ArchivedOutcome::Duplicate { .. }
        | ArchivedOutcome::DuplicateUnknown => Answer::Applied,
    }
}

/// The replies in bytes a core wrote, as (event, answer), in order; map frames are skipped,
/// and a reply naming no event of the run (`events` of them) is reported, not followed.
fn read_replies(bytes: &[u8], events: usize, findings: &mut Findings) -> Vec<(u32, Answer)> {
    let mut replies = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match next_frame(rest) {
            Ok(Next::Frame {
                received,
                frame_len,
            }) => {
                if let Received::Replies(frame) = received {
                    for reply in frame.iter() {
                        let reply = reply.get();
                        let seq = reply.client_seq.to_native();
                        match u32::try_from(seq) {
                            Ok(event) if (event as usize) < events => {
                                replies.push((event, answer_of(&reply.outcome)));
                            }
                            _ => findings.report(Oracle::LostOrDuplicated, || {
                                format!("a core answered event {seq}, which nobody sent")
                            }),
                        }
                    }
                }
                rest = &rest[frame_len..];
            }
            other => {
                findings.report(Oracle::LostOrDuplicated, || {
                    format!("a core wrote bytes its clients cannot read: {other:?}")
                });
                break;
            }
        }
    }
    replies
}

impl Sim {
    fn new(config: &RunConfig) -> Sim {
        let model = &config.model;
        let (nodes, shards) = (config.nodes, model.shards);
        let placement = cluster_placement(model.partitions, nodes, shards);
        let pool = Credit::new(
            model.queue_events,
            model.queue_events * EVENT_BYTES_MAX as u32,
        );
        let core_faults = CoreFaults {
            leak_credit_every_writes: config.faults.leak_credit_every,
        };
        let cluster = (0..nodes)
            .map(|node| Node {
                shards: (0..shards)
                    .map(|shard| SimShard {
                        core: ShardCore::with_config(
                            ShardId(shard as u16),
                            placement.clone(),
                            shard_config(node as u32, shards, model.queue_events, core_faults),
                        ),
                        queue: ShardQueue::new(pool),
                        connections: Vec::new(),
                        by_slot: Vec::new(),
                        client_connections: vec![None; SIM_CLIENT_CONNECTIONS_PER_SHARD_MAX],
                        link_connections: Vec::new(),
                    })
                    .collect(),
                newest_answered_ping_ns: 0,
                declared_unresponsive: false,
            })
            .collect();
        let workload = Workload::new(model, nodes, config.seed);
        let sessions = workload.sessions.len();
        let network = Network::new(
            &model.network,
            nodes,
            sessions,
            Rng::stream(config.seed, STREAM_NETWORK),
            config.faults.reorder_client_links_us * 1_000,
        );
        let mut sim = Sim {
            strategy: config.strategy,
            nodes,
            shards,
            costs: model.costs,
            load_end_ns: model.load_end_ns(),
            heartbeat_interval_ns: model.heartbeat_interval_us * 1_000,
            heartbeat_timeout_ns: model.heartbeat_timeout_us * 1_000,
            drop_node_event_every: config.faults.drop_node_event_every,
            duplicate_client_event_every: config.faults.duplicate_client_event_every,
            now: 0,
            agenda: Agenda::default(),
            order: OrderOracle::new(sessions),
            winners: WinnerOracle::new(
                workload.hunts.len(),
                workload.hunts.first().map_or(0, |h| h.spec.treasures.len()),
            ),
            workload,
            client: ClientProto::new(
                crate::client::proto::MapPush {
                    map: placement.clone(),
                    answering: crate::core::ids::NodeId(0),
                },
                false,
                1,
            )
            .expect("one event per frame is a valid client configuration"),
            placement,
            cluster,
            events: Vec::new(),
            network,
            busy_reply_bytes: 0,
            node_events_sent: 0,
            findings: Findings::default(),
            stats: RunStats::new(model),
        };
        sim.busy_reply_bytes = busy_reply_bytes(sim.placement.epoch().get());
        for session in 0..sessions as u32 {
            sim.prepare_next_event(session);
        }
        sim.start_heartbeats(config.seed);
        if let Some(at_us) = config.faults.lose_node0_state_at_us {
            sim.agenda.at(at_us * 1_000, Action::LoseState);
        }
        sim
    }

    fn start_heartbeats(&mut self, seed: u64) {
        if self.nodes < 2 {
            return;
        }
        let mut rng = Rng::stream(seed, STREAM_HEARTBEAT);
        for monitor in 0..self.nodes as u32 {
            let first = self.heartbeat_interval_ns + rng.below(self.heartbeat_interval_ns);
            self.agenda.at(first, Action::Tick { monitor });
        }
    }

    /// Runs until nothing is left to happen.
    fn run_to_rest(&mut self) {
        let give_up_ns = self.load_end_ns + SIM_DRAIN_MS_MAX * 1_000_000;
        while let Some((time_ns, action)) = self.agenda.next() {
            debug_assert!(time_ns >= self.now, "time never runs backwards");
            if time_ns > give_up_ns {
                let left = self.agenda.heap.len() + 1;
                self.findings.report(Oracle::Drained, || {
                    format!(
                        "{left} actions still pending {SIM_DRAIN_MS_MAX} ms after the clients \
                         stopped"
                    )
                });
                return;
            }
            self.now = time_ns;
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::ClientSend { event } => self.client_send(event),
            Action::ClientFrame { event } => self.client_frame_arrives(event),
            Action::LinkFrame { from, to, event } => self.link_frame_arrives(from, to, event),
            Action::LinkReplies {
                to,
                replies,
                reply_bytes,
            } => self.link_replies_arrive(to, replies, reply_bytes),
            Action::Mesh {
                node,
                from,
                to,
                batch,
            } => self.mesh_arrives(node, from, to, batch),
            Action::Finish { at, work } => self.finish(at, work),
            Action::WriteDone {
                at,
                connection,
                frames,
            } => self.write_done(at, connection, frames),
            Action::ClientReceive { event, answer } => self.client_receive(event, answer),
            Action::Heartbeat {
                from,
                to,
                heartbeat,
            } => self.heartbeat_arrives(from, to, heartbeat),
            Action::Tick { monitor } => self.tick(monitor),
            Action::LoseState => self.lose_node0_state(),
        }
    }

    // --- Clients -------------------------------------------------------------------------

    /// Archives the next event of `session` and schedules its send, if the load still runs.
    fn prepare_next_event(&mut self, session: u32) {
        let mut next = self.workload.next_event(session);
        if next.send_ns >= self.load_end_ns {
            return;
        }
        let hunt = self.workload.sessions[session as usize].hunt;
        let partition = self.workload.hunts[hunt as usize].partition;
        let owner = self.owner_of(partition);
        let home = self.home_of(session, owner);
        let index = self.events.len() as u32;
        let session_seq = next.event.client_seq;
        next.event.client_seq = u64::from(index);
        let claim = match &next.event.kind {
            EventKind::Claim { treasure, .. } => Some(*treasure),
            _ => None,
        };
        let frame = self.client_frame(&next.event);
        self.events.push(EventRecord {
            session,
            session_seq,
            sent_ns: next.send_ns,
            partition,
            owner,
            home,
            claim,
            frame,
            link_credit: Credit::ZERO,
            fate: EventFate::default(),
        });
        self.agenda
            .at(next.send_ns, Action::ClientSend { event: index });
    }

    /// The shard a session's client is connected to.
    fn home_of(&self, session: u32, owner: ShardAddr) -> ShardAddr {
        let shard = (session as usize % self.shards) as u16;
        match self.strategy {
            Strategy::Broadcast | Strategy::Forward => ShardAddr {
                node: self.workload.sessions[session as usize].entry_node,
                shard,
            },
            Strategy::Router => ShardAddr { node: 0, shard },
            Strategy::ShardAware => owner,
        }
    }

    /// The frame a client sends: one event, archived with rkyv by the client protocol.
    fn client_frame(&mut self, event: &Event) -> AlignedVec {
        self.client
            .push_event(0, event)
            .expect("a simulated event fits a frame");
        let output = self.client.flush_output(0);
        let mut frame = AlignedVec::new();
        frame.extend_from_slice(output);
        let written = output.len();
        self.client.consumed_output(0, written);
        frame
    }

    /// The shard that owns `partition`, by the cluster's placement.
    fn owner_of(&self, partition: PartitionId) -> ShardAddr {
        let owner = self.placement.owner(partition);
        ShardAddr {
            node: owner.node.0,
            shard: owner.shard.0,
        }
    }

    fn client_send(&mut self, event: u32) {
        let record = &self.events[event as usize];
        let (session, home) = (record.session, record.home);
        let bytes = record.frame.len() as u64;
        self.stats.on_sent(record.sent_ns);
        let every = self.duplicate_client_event_every;
        let copies = if every > 0 && (u64::from(event) + 1) % every == 0 {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let link = Link::ClientToNode {
                session,
                to: home.node,
            };
            let arrival = self.send_event_message(link, bytes);
            self.agenda.at(arrival, Action::ClientFrame { event });
        }
        self.prepare_next_event(session);
    }

    /// A reply reaches its client: the ledger, the order and the winner oracles look at it.
    fn client_receive(&mut self, event: u32, answer: Answer) {
        let record = &mut self.events[event as usize];
        record.fate.on_answer(answer);
        let (session, seq, sent_ns) = (record.session, record.session_seq, record.sent_ns);
        let (partition, claim) = (record.partition, record.claim);
        if !answer.applied() {
            return;
        }
        self.stats.on_reply(sent_ns, self.now - sent_ns);
        self.order
            .on_apply(&mut self.findings, session, seq, partition.0);
        if let Some(treasure) = claim {
            let state = &self.workload.sessions[session as usize];
            self.winners
                .on_claim(state.hunt as usize, treasure, state.player, answer);
        }
    }

    // --- The network ---------------------------------------------------------------------

    fn send_event_message(&mut self, link: Link, bytes: u64) -> u64 {
        self.network.traffic.event_messages += 1;
        self.network.traffic.event_bytes += bytes;
        self.network.send(self.now, link, bytes)
    }

    /// Sends an event's frame from node `from` to shard `to` of another node.
    fn send_frame_to_node(&mut self, from: u32, to: ShardAddr, event: u32) {
        let bytes = self.events[event as usize].frame.len() as u64;
        let link = Link::NodeToNode { from, to: to.node };
        let arrival = self.send_event_message(link, bytes);
        self.node_events_sent += 1;
        if self.drop_node_event_every > 0 && self.node_events_sent % self.drop_node_event_every == 0
        {
            return;
        }
        self.agenda
            .at(arrival, Action::LinkFrame { from, to, event });
    }

    fn send_to_client(&mut self, from: u32, event: u32, bytes: u32, answer: Answer) {
        let session = self.events[event as usize].session;
        let link = Link::NodeToClient { from, session };
        let arrival = self.send_event_message(link, u64::from(bytes));
        self.agenda
            .at(arrival, Action::ClientReceive { event, answer });
    }

    // --- Shards: the real core and its outputs ---------------------------------------------

    fn shard(&mut self, at: ShardAddr) -> &mut SimShard {
        &mut self.cluster[at.node as usize].shards[usize::from(at.shard)]
    }

    fn queue(&mut self, at: ShardAddr) -> &mut ShardQueue {
        &mut self.shard(at).queue
    }

    /// The connection of `session`'s client group at its home shard, opened on first use.
    fn client_connection(&mut self, at: ShardAddr, session: u32) -> u32 {
        let group = session as usize % SIM_CLIENT_CONNECTIONS_PER_SHARD_MAX;
        if let Some(index) = self.shard(at).client_connections[group] {
            return index;
        }
        let index = self.connect(at, None);
        self.shard(at).client_connections[group] = Some(index);
        index
    }

    /// The connection of node `from`'s link at shard `at`, opened on first use.
    fn link_connection(&mut self, at: ShardAddr, from: u32) -> u32 {
        let nodes = self.nodes;
        let links = &mut self.shard(at).link_connections;
        if links.is_empty() {
            links.resize(nodes, None);
        }
        if let Some(index) = links[from as usize] {
            return index;
        }
        let index = self.connect(at, Some(from));
        self.shard(at).link_connections[from as usize] = Some(index);
        index
    }

    fn connect(&mut self, at: ShardAddr, link_from: Option<u32>) -> u32 {
        let now = self.now;
        let shard = self.shard(at);
        let id = shard
            .core
            .handle_connect(now)
            .expect("the model never opens more connections than a shard takes");
        let index = shard.connections.len() as u32;
        shard.connections.push(SimConnection {
            id,
            link_from,
            writing: false,
            replies_ready_ns: 0,
        });
        if shard.by_slot.len() <= id.slot() {
            shard.by_slot.resize(id.slot() + 1, u32::MAX);
        }
        shard.by_slot[id.slot()] = index;
        index
    }

    /// Hands the frame of `event` to shard `at`'s core as read from `connection`, queues the
    /// CPU time of what the core did, and schedules its outputs for when that time is over.
    fn feed_frame(
        &mut self,
        at: ShardAddr,
        connection: u32,
        event: u32,
        fan_out: Option<u32>,
        slot: Credit,
    ) {
        let now = self.now;
        let costs = self.costs;
        let record = &self.events[event as usize];
        let local = at == record.owner;
        let shard = &mut self.cluster[at.node as usize].shards[usize::from(at.shard)];
        let Ok(Decoded::Frame { header, body, .. }) = decode_frame(&record.frame) else {
            panic!("the simulated client built a frame a node cannot decode");
        };
        let id = shard.connections[connection as usize].id;
        let held_before = shard.core.credit_held();
        if let Err(error) = shard.core.handle_frame(now, id, &header, body) {
            self.findings.report(Oracle::LostOrDuplicated, || {
                format!("{at:?} refused the frame of event {event}: {error:?}")
            });
            return;
        }
        let admitted = shard.core.credit_held().events > held_before.events;
        let mut cost = costs.recv_ns;
        if fan_out.is_some() {
            cost += (self.nodes as u64 - 1) * costs.send_ns;
        }
        let mut applied = 0;
        if admitted && local {
            cost += costs.apply_ns + costs.send_ns;
            applied = 1;
        } else if admitted {
            cost += costs.hop_ns;
        }
        self.queue_core_work(at, cost, applied, fan_out, slot);
    }

    /// Queues `cost_ns` of CPU on shard `at` for what its core just did, and schedules what
    /// the core handed out for when it is over; the receive-queue `slot` comes back then.
    fn queue_core_work(
        &mut self,
        at: ShardAddr,
        cost_ns: u64,
        applied: u32,
        fan_out: Option<u32>,
        slot: Credit,
    ) {
        let now = self.now;
        let finish_ns = self.queue(at).enqueue(now, cost_ns, slot);
        let mesh = self.take_core_outputs(at, finish_ns);
        if mesh.is_empty() && applied == 0 && fan_out.is_none() {
            return;
        }
        let work = Work::Core {
            mesh,
            applied,
            fan_out,
        };
        self.agenda.at(finish_ns, Action::Finish { at, work });
    }

    /// Takes everything shard `at`'s core has to hand out now: the mesh batches it returns,
    /// and the replies of each connection, whose write starts unless one is on its way and
    /// leaves no earlier than `ready_ns`.
    fn take_core_outputs(&mut self, at: ShardAddr, ready_ns: u64) -> Vec<(ShardId, MeshBatch)> {
        loop {
            let shard = self.shard(at);
            let Some(id) = shard.core.poll_writable() else {
                break;
            };
            let index = shard.by_slot[id.slot()];
            let connection = &mut shard.connections[index as usize];
            connection.replies_ready_ns = connection.replies_ready_ns.max(ready_ns);
            if !connection.writing {
                self.start_write(at, index);
            }
        }
        let core = &mut self.shard(at).core;
        let mut mesh = Vec::new();
        while let Some(peer) = core.poll_mesh_ready() {
            while let Some(output) = core.poll_mesh(peer) {
                if let MeshOutput::Batch(batch) = output {
                    mesh.push((peer, batch));
                }
            }
        }
        mesh
    }

    /// Takes what connection `index` of shard `at` has to write, if anything, and sends it
    /// once the CPU work that produced it is over.
    fn start_write(&mut self, at: ShardAddr, index: u32) {
        let now = self.now;
        let shard = self.shard(at);
        let connection = &mut shard.connections[index as usize];
        let mut frames = FrameBuilder::new();
        if !shard.core.poll_replies(connection.id, &mut frames) {
            return;
        }
        connection.writing = true;
        let leaves_ns = now.max(connection.replies_ready_ns);
        self.agenda.at(
            leaves_ns,
            Action::WriteDone {
                at,
                connection: index,
                frames,
            },
        );
    }

    /// A write left connection `index` of shard `at`: its replies go to their clients (or
    /// back over the node link), and the core hears that they were written.
    fn write_done(&mut self, at: ShardAddr, index: u32, frames: FrameBuilder) {
        let now = self.now;
        let replies = read_replies(frames.bytes(), self.events.len(), &mut self.findings);
        let len = frames.len();
        let link_from = self.shard(at).connections[index as usize].link_from;
        let share = (len / replies.len().max(1)) as u32;
        match link_from {
            Some(to) => {
                let link = Link::NodeToNode { from: at.node, to };
                let arrival = self.send_event_message(link, len as u64);
                let action = Action::LinkReplies {
                    to,
                    replies,
                    reply_bytes: share,
                };
                self.agenda.at(arrival, action);
            }
            None => {
                for (event, answer) in replies {
                    self.send_to_client(at.node, event, share, answer);
                }
            }
        }
        let shard = self.shard(at);
        let connection = &mut shard.connections[index as usize];
        connection.writing = false;
        shard.core.handle_written(now, connection.id, len);
        self.start_write(at, index);
        let mesh = self.take_core_outputs(at, now);
        self.send_mesh(at, mesh);
    }

    fn send_mesh(&mut self, at: ShardAddr, mesh: Vec<(ShardId, MeshBatch)>) {
        for (to, batch) in mesh {
            self.agenda.at(
                self.now,
                Action::Mesh {
                    node: at.node,
                    from: ShardId(at.shard),
                    to,
                    batch,
                },
            );
        }
    }

    /// A mesh batch reaches its shard: the core applies its events and routes its replies;
    /// the CPU time is a hop and an application per event, a hop and a send per reply.
    fn mesh_arrives(&mut self, node: u32, from: ShardId, to: ShardId, batch: MeshBatch) {
        let at = ShardAddr { node, shard: to.0 };
        let costs = self.costs;
        let events = batch.events().len() as u64;
        let replies = batch.replies().len() as u64;
        let now = self.now;
        self.shard(at).core.handle_mesh(now, from, batch);
        let cost =
            events * (2 * costs.hop_ns + costs.apply_ns) + replies * (costs.hop_ns + costs.send_ns);
        // Mesh credit, taken by the sender, bounds what peers put here: no receive slot.
        self.queue_core_work(at, cost, events as u32, None, Credit::ZERO);
    }

    // --- Entry nodes: the core, or the modelled link layer ---------------------------------

    /// A client's frame reaches its home shard and waits for its CPU in the receive queue (a
    /// full one answers `Busy`). An event the node owns goes to the home shard's core; one
    /// another node owns goes on over the modelled link layer.
    fn client_frame_arrives(&mut self, event: u32) {
        self.validate_at_home(event);
        let record = &self.events[event as usize];
        let (home, owner, session) = (record.home, record.owner, record.session);
        let credit = Credit::new(1, record.frame.len() as u32);
        let now = self.now;
        if !self.queue(home).try_admit(now, credit) {
            let bytes = self.busy_reply_bytes;
            self.send_to_client(home.node, event, bytes, Answer::Busy);
            return;
        }
        let broadcast = self.strategy == Strategy::Broadcast && self.nodes > 1;
        if owner.node == home.node {
            let connection = self.client_connection(home, session);
            self.feed_frame(home, connection, event, broadcast.then_some(event), credit);
            return;
        }
        // The slot stays taken until the reply has been relayed: the modelled link layer's
        // credit for the event.
        self.events[event as usize].link_credit = credit;
        let (cost, work) = if broadcast {
            let fan_out = (self.nodes as u64 - 1) * self.costs.send_ns;
            (self.costs.recv_ns + fan_out, Work::FanOut { event })
        } else {
            let to = owner.node;
            (
                self.costs.recv_ns + self.costs.send_ns,
                Work::Forward { event, to },
            )
        };
        self.enqueue_work(home, cost, work);
    }

    /// Decodes the frame the client sent and validates its event with the core's codec, as
    /// the node's entry does before routing it.
    fn validate_at_home(&mut self, event: u32) {
        let frame = &self.events[event as usize].frame;
        let Ok(Decoded::Frame { header, body, .. }) = decode_frame(frame) else {
            panic!("the simulated client built a frame its node cannot decode");
        };
        debug_assert_eq!(header.kind, FrameKind::Events);
        let records = Records::parse(header.kind, body).expect("a frame of one event");
        let bytes = records.iter().next().expect("a frame of one event");
        access_record::<ArchivedEvent>(0, bytes).expect("a valid archived event");
    }

    /// An event's frame from node `from` reaches shard `to` and waits for its CPU in the
    /// receive queue. The node's link connection from `from` carries it into the core when
    /// the node owns it; a broadcast copy of an event another node owns is looked at and
    /// dropped. A full receive queue loses a copy, and answers an owned event `Busy`.
    fn link_frame_arrives(&mut self, from: u32, to: ShardAddr, event: u32) {
        let owned = self.events[event as usize].owner.node == to.node;
        let credit = Credit::new(1, self.events[event as usize].frame.len() as u32);
        let now = self.now;
        if !self.queue(to).try_admit(now, credit) {
            if owned {
                let link = Link::NodeToNode {
                    from: to.node,
                    to: from,
                };
                let bytes = self.busy_reply_bytes;
                let arrival = self.send_event_message(link, u64::from(bytes));
                let action = Action::LinkReplies {
                    to: from,
                    replies: vec![(event, Answer::Busy)],
                    reply_bytes: bytes,
                };
                self.agenda.at(arrival, action);
            }
            return;
        }
        if owned {
            let connection = self.link_connection(to, from);
            self.feed_frame(to, connection, event, None, credit);
            return;
        }
        let cost = self.costs.recv_ns + self.costs.filter_ns;
        self.queue(to).enqueue(now, cost, credit);
    }

    /// The write of a node link reaches the node at its other end: the home shard of each
    /// event relays its reply to the client.
    fn link_replies_arrive(&mut self, node: u32, replies: Vec<(u32, Answer)>, reply_bytes: u32) {
        let cost = self.costs.recv_ns + self.costs.send_ns;
        for (event, answer) in replies {
            let home = self.events[event as usize].home;
            debug_assert_eq!(
                home.node, node,
                "a link's replies go back to its entry node"
            );
            let work = Work::Relay {
                event,
                answer,
                reply_bytes,
            };
            self.enqueue_work(home, cost, work);
        }
    }

    fn enqueue_work(&mut self, at: ShardAddr, cost_ns: u64, work: Work) {
        let now = self.now;
        let finish_ns = self.queue(at).enqueue(now, cost_ns, Credit::ZERO);
        self.agenda.at(finish_ns, Action::Finish { at, work });
    }

    fn finish(&mut self, at: ShardAddr, work: Work) {
        match work {
            Work::Core {
                mesh,
                applied,
                fan_out,
            } => {
                for _ in 0..applied {
                    self.stats.on_applied(self.now);
                }
                self.send_mesh(at, mesh);
                if let Some(event) = fan_out {
                    self.broadcast(at, event);
                }
            }
            Work::Forward { event, to } => {
                let shard = (at.node as usize % self.shards) as u16;
                self.send_frame_to_node(at.node, ShardAddr { node: to, shard }, event);
            }
            Work::FanOut { event } => self.broadcast(at, event),
            Work::Relay {
                event,
                answer,
                reply_bytes,
            } => {
                self.send_to_client(at.node, event, reply_bytes, answer);
                let credit = std::mem::take(&mut self.events[event as usize].link_credit);
                self.queue(at).release(credit);
            }
            Work::AnswerPing { monitor, sent_ns } => {
                let answer = Heartbeat::Answer {
                    ping_sent_ns: sent_ns,
                };
                self.send_heartbeat(at.node, monitor, answer);
            }
            Work::RecordAnswer { ping_sent_ns } => self.record_answer(at.node, ping_sent_ns),
        }
    }

    /// Sends a copy of `event` to every other node; node `n`'s copies land on its shard
    /// `n % shards`, the one that serves the link from node `n`.
    fn broadcast(&mut self, at: ShardAddr, event: u32) {
        let shard = (at.node as usize % self.shards) as u16;
        for node in (0..self.nodes as u32).filter(|&node| node != at.node) {
            self.send_frame_to_node(at.node, ShardAddr { node, shard }, event);
        }
    }

    // --- Heartbeats ----------------------------------------------------------------------

    /// A monitor's heartbeat timer: declare the next node unresponsive if none of the pings
    /// sent to it within the timeout has been answered, then ping it again.
    ///
    /// The timer runs apart from the shards, as a framework's heartbeat thread does; the
    /// answers, though, are processed by the shards' CPUs, behind the events.
    fn tick(&mut self, monitor: u32) {
        if self.now >= self.load_end_ns {
            return;
        }
        let target = (monitor + 1) % self.nodes as u32;
        let newest_answered = self.cluster[monitor as usize].newest_answered_ping_ns;
        if self.now - newest_answered > self.heartbeat_timeout_ns {
            self.cluster[target as usize].declared_unresponsive = true;
            self.stats.declarations += 1;
            // One declaration per timeout of silence: the next suspicion starts now.
            self.cluster[monitor as usize].newest_answered_ping_ns = self.now;
        }
        self.send_heartbeat(monitor, target, Heartbeat::Ping { sent_ns: self.now });
        let next = self.now + self.heartbeat_interval_ns;
        self.agenda.at(next, Action::Tick { monitor });
    }

    fn send_heartbeat(&mut self, from: u32, to: u32, heartbeat: Heartbeat) {
        self.network.traffic.heartbeat_messages += 1;
        let link = Link::NodeToNode { from, to };
        let arrival = self
            .network
            .send(self.now, link, u64::from(HEARTBEAT_BYTES));
        let action = Action::Heartbeat {
            from,
            to,
            heartbeat,
        };
        self.agenda.at(arrival, action);
    }

    /// A heartbeat message waits for shard 0's CPU like any event, in its receive queue; a
    /// full queue loses it.
    fn heartbeat_arrives(&mut self, from: u32, to: u32, heartbeat: Heartbeat) {
        let at = ShardAddr { node: to, shard: 0 };
        let credit = Credit::new(1, HEARTBEAT_BYTES);
        let now = self.now;
        if !self.queue(at).try_admit(now, credit) {
            return;
        }
        let (cost, work) = match heartbeat {
            Heartbeat::Ping { sent_ns } => (
                self.costs.recv_ns + self.costs.send_ns,
                Work::AnswerPing {
                    monitor: from,
                    sent_ns,
                },
            ),
            Heartbeat::Answer { ping_sent_ns } => {
                (self.costs.recv_ns, Work::RecordAnswer { ping_sent_ns })
            }
        };
        // The credit comes back when the CPU is done with it, by itself.
        let finish_ns = self.queue(at).enqueue(now, cost, credit);
        self.agenda.at(finish_ns, Action::Finish { at, work });
    }

    fn record_answer(&mut self, monitor: u32, ping_sent_ns: u64) {
        let newest = &mut self.cluster[monitor as usize].newest_answered_ping_ns;
        *newest = (*newest).max(ping_sent_ns);
    }

    // --- Faults and the end of the run -----------------------------------------------------

    /// Test-only fault: node 0's partitions move away and straight back, through two newer
    /// placements handed to its cores, so its shards start them empty: a failover to replicas
    /// that missed everything, claims included.
    fn lose_node0_state(&mut self) {
        let now = self.now;
        let elsewhere = NodeId(self.nodes as u32);
        let mut away = self.placement.clone();
        let mut back_moves = Vec::new();
        for p in 0..self.placement.partitions() {
            let owner = *self.placement.owner(PartitionId(p));
            if owner.node == NodeId(0) {
                away = away
                    .with_owner(PartitionId(p), elsewhere, owner.shard)
                    .expect("a partition of the placement");
                back_moves.push((PartitionId(p), owner.shard));
            }
        }
        let mut back = away.clone();
        for (partition, shard) in back_moves {
            back = back
                .with_owner(partition, NodeId(0), shard)
                .expect("a partition of the placement");
        }
        for shard in &mut self.cluster[0].shards {
            for placement in [&away, &back] {
                shard
                    .core
                    .handle_placement(now, placement.clone())
                    .expect("the sim's placements name only this node's shards");
            }
        }
    }

    /// Runs the oracles that look at the whole run once it has come to rest, then stops
    /// every core and checks that it drains.
    fn check_at_rest(&mut self) {
        let mut answered_applied = 0;
        for (index, record) in self.events.iter().enumerate() {
            answered_applied += u64::from(record.fate.applied);
            record.fate.check(
                &mut self.findings,
                index,
                record.session,
                record.session_seq,
            );
        }
        self.check_cores(answered_applied);
        self.stop_cores();
        let hunts = &self.workload.hunts;
        let cluster = &self.cluster;
        let placement = &self.placement;
        self.winners
            .check_final(&mut self.findings, |hunt, treasure: TreasureId| {
                let hunt = &hunts[hunt];
                let owner = placement.owner(hunt.partition);
                cluster[owner.node.0 as usize].shards[owner.shard.index()]
                    .core
                    .partition(hunt.partition)?
                    .winner_of(hunt.id, treasure)
            });
        self.stats.traffic = self.network.traffic;
        self.stats.events_sent = self.events.len() as u64;
        self.stats.events_refused = self.events.iter().map(|e| u64::from(e.fate.refused)).sum();
    }

    /// What every core says once the run is at rest: it holds no credit, its pools agree
    /// with its connections, and it applied exactly the events whose clients heard so.
    fn check_cores(&mut self, answered_applied: u64) {
        let mut applied_by_cores = 0;
        for (n, node) in self.cluster.iter_mut().enumerate() {
            for (s, shard) in node.shards.iter_mut().enumerate() {
                let core = &shard.core;
                let stats = core.stats();
                applied_by_cores += stats.events_applied + stats.events_applied_for_peers;
                self.stats.on_busy(stats.busy_replies);
                if let Err(problem) = core.check_credit() {
                    self.findings
                        .report(Oracle::Credits, || format!("node {n} shard {s}: {problem}"));
                }
                let load = core.load();
                if load.socket_held != Credit::ZERO || load.mesh_held != (0, 0) {
                    self.findings.report(Oracle::Credits, || {
                        format!(
                            "node {n} shard {s} holds {:?} of socket credit and {:?} (events, \
                             bytes) of mesh credit at rest",
                            load.socket_held, load.mesh_held
                        )
                    });
                }
                check_pool(&mut self.findings, n, s, &mut shard.queue);
                self.stats.on_queue(&shard.queue);
            }
            self.stats.false_unresponsive_nodes += u64::from(node.declared_unresponsive);
        }
        if applied_by_cores != answered_applied {
            self.findings.report(Oracle::LostOrDuplicated, || {
                format!(
                    "the cores applied {applied_by_cores} events but their clients heard of \
                     {answered_applied} applied"
                )
            });
        }
    }

    /// Closes every connection, stops every core and carries their last mesh batches until
    /// each says it has drained.
    fn stop_cores(&mut self) {
        let now = self.now;
        for node in &mut self.cluster {
            for shard in &mut node.shards {
                for connection in &shard.connections {
                    shard.core.handle_read_closed(now, connection.id, Ok(()));
                    shard
                        .core
                        .handle_closed(now, connection.id, CloseReason::Finished);
                }
                shard.core.handle_stop(now);
            }
            // Each round lets every shard answer what the previous one delivered.
            for _ in 0..=2 * self.shards {
                let mut delivered = false;
                for from in 0..self.shards {
                    let mut batches = Vec::new();
                    let core = &mut node.shards[from].core;
                    while let Some(peer) = core.poll_mesh_ready() {
                        while let Some(output) = core.poll_mesh(peer) {
                            if let MeshOutput::Batch(batch) = output {
                                batches.push((peer, batch));
                            }
                        }
                    }
                    for (to, batch) in batches {
                        delivered = true;
                        let from = ShardId(from as u16);
                        node.shards[to.index()].core.handle_mesh(now, from, batch);
                    }
                }
                if !delivered {
                    break;
                }
            }
        }
        for (n, node) in self.cluster.iter().enumerate() {
            for (s, shard) in node.shards.iter().enumerate() {
                if !shard.core.drained() {
                    let load = shard.core.load();
                    self.findings.report(Oracle::Drained, || {
                        format!("node {n} shard {s} did not drain after stopping: {load:?}")
                    });
                }
            }
        }
    }
}

/// The credit oracle on a shard's modelled receive queue: empty at rest, and it gave back
/// exactly what it took.
fn check_pool(findings: &mut Findings, node: usize, shard: usize, queue: &mut ShardQueue) {
    queue.retire_all();
    let ledger = queue.ledger();
    let held = queue.held();
    if held != Credit::ZERO
        || ledger.over_releases > 0
        || ledger.acquired_events != ledger.released_events
    {
        findings.report(Oracle::Credits, || {
            format!(
                "node {node} shard {shard}'s receive queue holds {held:?} at rest after taking {} \
                 events of credit and giving back {} ({} releases of credit it did not hold)",
                ledger.acquired_events, ledger.released_events, ledger.over_releases
            )
        });
    }
}

/// The size of a `Busy` reply frame, archived for real.
fn busy_reply_bytes(epoch: u32) -> u32 {
    let mut frames = FrameBuilder::new();
    let reply = Reply {
        client_seq: 0,
        client_ts: 0,
        outcome: Outcome::Busy,
    };
    frames
        .single(FrameKind::Replies, epoch, Some(&reply))
        .expect("a reply fits its frame");
    frames.len() as u32
}
