//! The discrete-event simulation of one run: a cluster of nodes, each of several shards, its
//! clients, its network and its failure detector, in virtual time, driving the real core.
//!
//! Everything that happens is an [`Action`] on one agenda ordered by virtual time (ties in the
//! order they were scheduled), taken one at a time by a single loop: no clock is read and
//! nothing runs concurrently, so a seed reproduces a run exactly.
//!
//! What is real and what is modelled:
//! - real: each event is archived with rkyv by its client into a frame ([`FrameBuilder`]);
//!   the frame is decoded and the event validated with the core's codec where it enters the
//!   cluster and where it is applied; the owning shard's [`ShardCore`] routes and applies it
//!   with the treasure-hunt state machine; the reply is archived to know its size; every
//!   queue's bound is a [`crate::core::credit::CreditPool`] that work takes credit from;
//! - modelled: CPU time (a cost per piece of work, see [`Costs`]), the network
//!   ([`Network`]), and the heartbeats of the failure detector.
//!
//! The life of an event. Its client sends it to its *home* shard (the entry node's shard for
//! broadcast and forward, node 0 for router, the owning shard for shard-aware), which takes
//! credit for it and holds that credit until the reply has left for the client. From home,
//! the event reaches its owning shard: by a hop between shards of one node, by a forward over
//! the network, or (broadcast) in the copy every node receives, where every other node pays
//! to receive and filter it. The owner applies it and the reply travels back to home, which
//! sends it to the client. Work refused for want of credit is answered `Busy` (fail-fast
//! mode); a broadcast copy refused by a node that does not own it is simply lost, which harms
//! nobody but is counted as an overflow all the same.
//!
//! Heartbeats: every node's heartbeat timer pings the next node on the ring. The ping is
//! answered by the target's shard 0 and the answer recorded by the monitor's shard 0, both in
//! the same queues as events, behind them, like the framework that hit the wall did. A monitor
//! that has processed no answer to any ping it sent within the timeout declares its target
//! unresponsive; every node is in fact alive, so every such declaration is false.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rkyv::util::AlignedVec;

use crate::constants::{EVENT_BYTES_MAX, SIM_DRAIN_MS_MAX};
use crate::core::codec::{Decoded, FrameBuilder, FrameKind, Records, access_record, decode_frame};
use crate::core::credit::Credit;
use crate::core::ids::{PartitionId, ShardId, TreasureId};
use crate::core::message::{
    ArchivedEvent, ArchivedEventKind, ArchivedPartitionMapMessage, Event, Outcome,
    PartitionMapMessage, Reply,
};
use crate::core::partition::PartitionMap;
use crate::core::rng::Rng;
use crate::core::shard::{Route, ShardCore};
use crate::sim::config::{Costs, RunConfig, Strategy};
use crate::sim::network::{Link, Network};
use crate::sim::oracle::{EventFate, Findings, Oracle, OrderOracle, WinnerOracle};
use crate::sim::report::{RunReport, RunStats};
use crate::sim::shard::ShardQueue;
use crate::sim::workload::{STREAM_HEARTBEAT, STREAM_NETWORK, Workload};

/// Size of a heartbeat ping or answer on the wire (a frame header and a few fields).
const HEARTBEAT_BYTES: u32 = 64;
/// Epoch of the partition map every simulated node and client holds (it never changes).
const MAP_EPOCH: u32 = 1;

/// A shard of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShardAddr {
    node: u32,
    shard: u16,
}

/// What an event message is, on its way between shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrying {
    /// An event from its client, to its home shard.
    FromClient,
    /// An event sent by its home to the shard that owns it.
    Forwarded,
    /// A broadcast copy, to one shard of every other node.
    Copy,
    /// An event's reply (or `Busy`), back to its home.
    ReplyHome,
}

/// What a shard does when an item's CPU time is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Nothing: a broadcast copy of an event owned elsewhere.
    Discard,
    /// Apply the event here and send its reply toward home.
    Apply,
    /// Hand the event to the shard of this node that owns it.
    HopToOwner,
    /// Send the event to the node that owns it.
    Forward,
    /// Send the event's reply to its client and give back its home credit.
    ReplyToClient,
    /// Answer a ping that `monitor` sent at `sent_ns`.
    AnswerPing { monitor: u32, sent_ns: u64 },
    /// Record the answer to the ping sent at `ping_sent_ns`.
    RecordAnswer { ping_sent_ns: u64 },
}

/// A failure detector's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Heartbeat {
    /// "Are you alive?", sent by a monitor's timer at `sent_ns`.
    Ping { sent_ns: u64 },
    /// "Yes", to the ping sent at `ping_sent_ns`.
    Answer { ping_sent_ns: u64 },
}

/// The subject of a job that concerns no event.
const NO_EVENT: u32 = u32::MAX;

/// An item whose CPU time is over.
#[derive(Clone, Copy, Debug)]
struct Job {
    /// The event the item is about ([`NO_EVENT`] for heartbeats).
    subject: u32,
    /// Broadcast entry: send a copy to every other node first.
    fan_out: bool,
    step: Step,
    /// Credit the item took when it was admitted, given back now.
    release: Credit,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    /// An event leaves its client.
    ClientSend { event: u32 },
    /// An event message arrives at a shard.
    Deliver {
        to: ShardAddr,
        event: u32,
        carrying: Carrying,
    },
    /// A heartbeat message arrives at node `to`'s shard 0.
    Heartbeat {
        from: u32,
        to: u32,
        heartbeat: Heartbeat,
    },
    /// An item's CPU time is over.
    Finish { at: ShardAddr, job: Job },
    /// An event's reply reaches its client.
    ClientReceive { event: u32 },
    /// A node's heartbeat timer fires.
    Tick { monitor: u32 },
    /// Test-only fault: node 0 fails over to replicas that forgot their claims.
    ForgetClaims,
}

/// The agenda: actions by virtual time, ties in the order they were scheduled.
#[derive(Default)]
struct Agenda {
    heap: BinaryHeap<Reverse<(u64, u64, ActionSlot)>>,
    scheduled: u64,
}

/// An action in the agenda. Ordered by nothing: the time and sequence number before it
/// always differ.
#[derive(Clone, Copy, Debug)]
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
    client_seq: u64,
    sent_ns: u64,
    partition: PartitionId,
    owner: ShardAddr,
    home: ShardAddr,
    /// The frame the client sent, holding the archived event.
    frame: AlignedVec,
    /// Where the event's archive lies in `frame`, once its home has validated it.
    record: (usize, usize),
    /// Credit the event holds at its home until its reply leaves for the client.
    home_credit: Credit,
    /// Size of the reply frame (or of the `Busy` one) once there is a reply.
    reply_bytes: u32,
    fate: EventFate,
}

/// A node: its shards' state machines and queues, and its failure detector's memory.
struct Node {
    cores: Vec<ShardCore>,
    queues: Vec<ShardQueue>,
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
    /// Test-only faults (see [`crate::sim::config::Faults`]).
    drop_node_event_every: u64,
    duplicate_client_event_every: u64,
    remember_applied: bool,

    now: u64,
    agenda: Agenda,
    workload: Workload,
    cluster: Vec<Node>,
    events: Vec<EventRecord>,
    /// Events each shard applied, in order; kept only when a fault needs to replay them.
    applied_log: Vec<Vec<u32>>,
    network: Network,
    frames: FrameBuilder,
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

/// The partition map of one node's shards, built the way a node would receive it: as an
/// archived message, checked by `PartitionMap::from_message`.
///
/// Partition `p` belongs to node `p % nodes`; the node deals its partitions out to its shards
/// in turn. Partitions of other nodes get an owner too, since the map covers all partitions,
/// but their shards never see their events.
fn node_map(partitions: u32, nodes: usize, shards: usize) -> PartitionMap {
    let message = PartitionMapMessage {
        epoch: MAP_EPOCH,
        owners: (0..partitions as usize)
            .map(|p| ((p / nodes) % shards) as u16)
            .collect(),
        shard_ports: (0..shards as u16).collect(),
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&message).expect("a map archives");
    let archived = rkyv::access::<ArchivedPartitionMapMessage, rkyv::rancor::Error>(&bytes)
        .expect("a map just archived is valid");
    PartitionMap::from_message(archived).expect("the simulated map is well formed")
}

impl Sim {
    fn new(config: &RunConfig) -> Sim {
        let model = &config.model;
        let (nodes, shards) = (config.nodes, model.shards);
        let map = node_map(model.partitions, nodes, shards);
        // The queue is bounded in events; its bytes follow, since no event exceeds the limit.
        let capacity = Credit::new(
            model.queue_events,
            model.queue_events * EVENT_BYTES_MAX as u32,
        );
        let cluster = (0..nodes)
            .map(|_| Node {
                cores: (0..shards)
                    .map(|s| ShardCore::new(ShardId(s as u16), map.clone()))
                    .collect(),
                queues: (0..shards)
                    .map(|_| ShardQueue::new(capacity, config.faults.leak_credit_every))
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
        let remember_applied = config.faults.forget_claims_at_us.is_some();
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
            remember_applied,
            now: 0,
            agenda: Agenda::default(),
            order: OrderOracle::new(sessions),
            winners: WinnerOracle::new(
                workload.hunts.len(),
                workload.hunts.first().map_or(0, |h| h.spec.treasures.len()),
            ),
            workload,
            cluster,
            events: Vec::new(),
            applied_log: if remember_applied {
                vec![Vec::new(); nodes * shards]
            } else {
                Vec::new()
            },
            network,
            frames: FrameBuilder::new(),
            busy_reply_bytes: 0,
            node_events_sent: 0,
            findings: Findings::default(),
            stats: RunStats::new(model),
        };
        sim.busy_reply_bytes = sim.reply_frame_bytes(&Reply {
            client_seq: 0,
            client_ts: 0,
            outcome: Outcome::Busy,
        });
        for session in 0..sessions as u32 {
            sim.prepare_next_event(session);
        }
        sim.start_heartbeats(config.seed);
        if let Some(at_us) = config.faults.forget_claims_at_us {
            sim.agenda.at(at_us * 1_000, Action::ForgetClaims);
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
            Action::Deliver {
                to,
                event,
                carrying,
            } => self.deliver(to, event, carrying),
            Action::Heartbeat {
                from,
                to,
                heartbeat,
            } => self.heartbeat_arrives(from, to, heartbeat),
            Action::Finish { at, job } => self.finish(at, job),
            Action::ClientReceive { event } => self.client_receive(event),
            Action::Tick { monitor } => self.tick(monitor),
            Action::ForgetClaims => self.forget_claims(),
        }
    }

    // --- Clients -------------------------------------------------------------------------

    /// Archives the next event of `session` and schedules its send, if the load still runs.
    fn prepare_next_event(&mut self, session: u32) {
        let next = self.workload.next_event(session);
        if next.send_ns >= self.load_end_ns {
            return;
        }
        let hunt = self.workload.sessions[session as usize].hunt;
        let partition = self.workload.hunts[hunt as usize].partition;
        let owner = self.owner_of(partition);
        let home = self.home_of(session, owner);
        let frame = self.client_frame(&next.event);
        let index = self.events.len() as u32;
        self.events.push(EventRecord {
            session,
            client_seq: next.event.client_seq,
            sent_ns: next.send_ns,
            partition,
            owner,
            home,
            frame,
            record: (0, 0),
            home_credit: Credit::ZERO,
            reply_bytes: 0,
            fate: EventFate::default(),
        });
        self.agenda
            .at(next.send_ns, Action::ClientSend { event: index });
    }

    /// The shard a session's client is connected to, which holds its events' credit.
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

    /// The frame a client sends: one event, archived with rkyv.
    fn client_frame(&mut self, event: &Event) -> AlignedVec {
        self.frames.begin(FrameKind::Events);
        self.frames
            .push(event)
            .expect("a simulated event fits a frame");
        self.frames.finish(MAP_EPOCH);
        let mut frame = AlignedVec::new();
        frame.extend_from_slice(self.frames.bytes());
        self.frames.clear(0);
        frame
    }

    /// The shard that owns `partition`: node `p % nodes`, and that node's map for the shard.
    fn owner_of(&self, partition: PartitionId) -> ShardAddr {
        let node = partition.0 % self.nodes as u32;
        let shard = self.cluster[node as usize].cores[0]
            .map()
            .owner_of_partition(partition);
        ShardAddr {
            node,
            shard: shard.0,
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
            self.agenda.at(
                arrival,
                Action::Deliver {
                    to: home,
                    event,
                    carrying: Carrying::FromClient,
                },
            );
        }
        self.prepare_next_event(session);
    }

    fn client_receive(&mut self, event: u32) {
        let record = &mut self.events[event as usize];
        record.fate.replies_received = record.fate.replies_received.saturating_add(1);
        if record.fate.applied > 0 {
            self.stats
                .on_reply(record.sent_ns, self.now - record.sent_ns);
        }
    }

    // --- The network ---------------------------------------------------------------------

    fn send_event_message(&mut self, link: Link, bytes: u64) -> u64 {
        self.network.traffic.event_messages += 1;
        self.network.traffic.event_bytes += bytes;
        self.network.send(self.now, link, bytes)
    }

    /// Sends an event message from one node to a shard of another.
    fn send_to_node(&mut self, from: u32, to: ShardAddr, event: u32, carrying: Carrying) {
        let bytes = match carrying {
            Carrying::ReplyHome => self.events[event as usize].reply_bytes,
            _ => self.events[event as usize].frame.len() as u32,
        };
        let link = Link::NodeToNode { from, to: to.node };
        let arrival = self.send_event_message(link, u64::from(bytes));
        self.node_events_sent += 1;
        if carrying != Carrying::ReplyHome
            && self.drop_node_event_every > 0
            && self.node_events_sent % self.drop_node_event_every == 0
        {
            return;
        }
        self.agenda.at(
            arrival,
            Action::Deliver {
                to,
                event,
                carrying,
            },
        );
    }

    fn send_to_client(&mut self, from: u32, event: u32) {
        let record = &self.events[event as usize];
        let link = Link::NodeToClient {
            from,
            session: record.session,
        };
        let bytes = u64::from(record.reply_bytes);
        let arrival = self.send_event_message(link, bytes);
        self.agenda.at(arrival, Action::ClientReceive { event });
    }

    // --- Shards: admission, CPU and what happens when an item is done ---------------------

    fn queue(&mut self, at: ShardAddr) -> &mut ShardQueue {
        &mut self.cluster[at.node as usize].queues[usize::from(at.shard)]
    }

    /// Queues work at `at` and schedules its effect, unless it has none but giving back
    /// `job.release`, in which case the queue does that by itself.
    fn enqueue(&mut self, at: ShardAddr, cost_ns: u64, job: Job) {
        let now = self.now;
        if job.step == Step::Discard && !job.fan_out {
            self.queue(at).enqueue(now, cost_ns, job.release);
            return;
        }
        let finish_ns = self.queue(at).enqueue(now, cost_ns, Credit::ZERO);
        self.agenda.at(finish_ns, Action::Finish { at, job });
    }

    /// The credit an event's archive takes in a queue.
    fn event_credit(&self, event: u32) -> Credit {
        Credit::new(1, self.events[event as usize].frame.len() as u32)
    }

    fn deliver(&mut self, at: ShardAddr, event: u32, carrying: Carrying) {
        if carrying == Carrying::ReplyHome {
            let cost = self.costs.recv_ns + self.costs.send_ns;
            let job = Job {
                subject: event,
                fan_out: false,
                step: Step::ReplyToClient,
                release: Credit::ZERO,
            };
            // The event's home credit covers its reply: replies are never refused.
            self.enqueue(at, cost, job);
            return;
        }
        if carrying == Carrying::FromClient {
            self.validate_at_home(event);
        }
        let credit = self.event_credit(event);
        let now = self.now;
        if !self.queue(at).try_admit(now, credit) {
            self.refused(at, event, carrying);
            return;
        }
        let from_client = carrying == Carrying::FromClient;
        let (cost, step) = self.plan(at, event, self.costs.recv_ns, from_client);
        let fan_out = from_client && self.strategy == Strategy::Broadcast && self.nodes > 1;
        let release = if from_client {
            self.events[event as usize].home_credit = credit;
            Credit::ZERO
        } else {
            credit
        };
        let job = Job {
            subject: event,
            fan_out,
            step,
            release,
        };
        self.enqueue(at, cost, job);
    }

    /// Decodes the frame the client sent and validates its event with the core's codec: the
    /// one place bytes from outside enter the cluster.
    fn validate_at_home(&mut self, event: u32) {
        let record = &mut self.events[event as usize];
        let frame = &record.frame;
        let Ok(Decoded::Frame { header, body, .. }) = decode_frame(frame) else {
            panic!("the simulated client built a frame its node cannot decode");
        };
        let records = Records::parse(header.kind, body).expect("a frame of one event");
        let bytes = records.iter().next().expect("a frame of one event");
        access_record::<ArchivedEvent>(0, bytes).expect("a valid archived event");
        let start = bytes.as_ptr() as usize - frame.as_ptr() as usize;
        record.record = (start, bytes.len());
    }

    /// An item was refused for want of credit at `at`.
    fn refused(&mut self, at: ShardAddr, event: u32, carrying: Carrying) {
        let record = &self.events[event as usize];
        let owned_here = at.node == record.owner.node;
        match carrying {
            Carrying::FromClient => {
                self.mark_refused(event);
                self.send_to_client(at.node, event);
            }
            Carrying::Copy if !owned_here => {}
            _ => {
                self.mark_refused(event);
                self.reply_toward_home(at, event);
            }
        }
    }

    fn mark_refused(&mut self, event: u32) {
        let busy_reply_bytes = self.busy_reply_bytes;
        let record = &mut self.events[event as usize];
        record.fate.refused = record.fate.refused.saturating_add(1);
        record.reply_bytes = busy_reply_bytes;
    }

    /// What shard `at` does with `event`, received at `receive_ns`, and the CPU time it takes.
    fn plan(&self, at: ShardAddr, event: u32, receive_ns: u64, from_client: bool) -> (u64, Step) {
        let costs = &self.costs;
        let record = &self.events[event as usize];
        let mut cost = receive_ns;
        if from_client && self.strategy == Strategy::Broadcast {
            cost += (self.nodes as u64 - 1) * costs.send_ns;
        }
        let step = if at == record.owner {
            cost += costs.apply_ns + self.reply_cost(at, record.home);
            Step::Apply
        } else if at.node == record.owner.node {
            cost += costs.hop_ns;
            Step::HopToOwner
        } else if self.strategy == Strategy::Broadcast {
            cost += costs.filter_ns;
            Step::Discard
        } else {
            cost += costs.send_ns;
            Step::Forward
        };
        (cost, step)
    }

    /// CPU time to send a reply from `from` toward `home`.
    fn reply_cost(&self, from: ShardAddr, home: ShardAddr) -> u64 {
        if from != home && from.node == home.node {
            self.costs.hop_ns
        } else {
            self.costs.send_ns
        }
    }

    fn finish(&mut self, at: ShardAddr, job: Job) {
        if job.fan_out {
            self.broadcast(at, job.subject);
        }
        match job.step {
            Step::Discard => {}
            Step::Apply => self.apply(at, job.subject),
            Step::HopToOwner => self.hop_to_owner(at, job.subject),
            Step::Forward => {
                let owner = self.events[job.subject as usize].owner;
                self.send_to_node(at.node, owner, job.subject, Carrying::Forwarded);
            }
            Step::ReplyToClient => {
                self.send_to_client(at.node, job.subject);
                let credit = self.events[job.subject as usize].home_credit;
                self.queue(at).release(credit);
            }
            Step::AnswerPing { monitor, sent_ns } => {
                let answer = Heartbeat::Answer {
                    ping_sent_ns: sent_ns,
                };
                self.send_heartbeat(at.node, monitor, answer);
            }
            Step::RecordAnswer { ping_sent_ns } => self.record_answer(at.node, ping_sent_ns),
        }
        if job.release != Credit::ZERO {
            self.queue(at).release(job.release);
        }
    }

    /// Sends a copy of `event` to every other node; node `n`'s copies land on its shard
    /// `n % shards`, the one that serves the connection from node `n`.
    fn broadcast(&mut self, at: ShardAddr, event: u32) {
        let shard = (at.node as usize % self.shards) as u16;
        for node in (0..self.nodes as u32).filter(|&node| node != at.node) {
            self.send_to_node(at.node, ShardAddr { node, shard }, event, Carrying::Copy);
        }
    }

    fn hop_to_owner(&mut self, at: ShardAddr, event: u32) {
        let owner = self.events[event as usize].owner;
        let credit = self.event_credit(event);
        let now = self.now;
        if !self.queue(owner).try_admit(now, credit) {
            self.mark_refused(event);
            self.reply_toward_home(owner, event);
            return;
        }
        let (cost, step) = self.plan(owner, event, self.costs.hop_ns, false);
        let job = Job {
            subject: event,
            fan_out: false,
            step,
            release: credit,
        };
        debug_assert_eq!(step, Step::Apply, "a hop from {at:?} lands on the owner");
        self.enqueue(owner, cost, job);
    }

    /// Applies `event` with the real state machine of shard `at` and sends the reply home.
    fn apply(&mut self, at: ShardAddr, event: u32) {
        let record = &self.events[event as usize];
        let (start, len) = record.record;
        let archived = access_record::<ArchivedEvent>(0, &record.frame[start..start + len])
            .expect("validated at home");
        let core = &mut self.cluster[at.node as usize].cores[usize::from(at.shard)];
        let route = core.route(archived);
        let local = match route {
            Route::Local(local) if local.partition() == record.partition => local,
            _ => {
                let partition = record.partition;
                self.findings.report(Oracle::Order, || {
                    format!(
                        "{at:?} asked to apply an event of {partition}, which it routes {route:?}"
                    )
                });
                return;
            }
        };
        let reply = core.apply(local, archived);
        let session = record.session;
        let hunt = self.workload.sessions[session as usize].hunt as usize;
        if let ArchivedEventKind::Claim { treasure, .. } = &archived.kind {
            let treasure = treasure.get();
            let player = archived.player.get();
            self.winners
                .on_claim(&mut self.findings, hunt, treasure, player, &reply.outcome);
        }
        self.order.on_apply(
            &mut self.findings,
            session,
            record.client_seq,
            record.partition.0,
        );
        if self.remember_applied {
            let shard = at.node as usize * self.shards + usize::from(at.shard);
            self.applied_log[shard].push(event);
        }
        self.stats.on_applied(self.now);
        let reply_bytes = self.reply_frame_bytes(&reply);
        let record = &mut self.events[event as usize];
        record.fate.applied = record.fate.applied.saturating_add(1);
        record.reply_bytes = reply_bytes;
        self.reply_toward_home(at, event);
    }

    /// The size of a reply's frame, archived for real.
    fn reply_frame_bytes(&mut self, reply: &Reply) -> u32 {
        self.frames
            .single(FrameKind::Replies, MAP_EPOCH, Some(reply))
            .expect("a reply fits its frame");
        let bytes = self.frames.len() as u32;
        self.frames.clear(0);
        bytes
    }

    /// Sends an event's reply (or `Busy`) from `from` back to the event's home.
    fn reply_toward_home(&mut self, from: ShardAddr, event: u32) {
        let home = self.events[event as usize].home;
        if from == home {
            self.send_to_client(from.node, event);
            let credit = self.events[event as usize].home_credit;
            self.queue(home).release(credit);
        } else if from.node == home.node {
            let cost = self.costs.hop_ns + self.costs.send_ns;
            let job = Job {
                subject: event,
                fan_out: false,
                step: Step::ReplyToClient,
                release: Credit::ZERO,
            };
            self.enqueue(home, cost, job);
        } else {
            self.send_to_node(from.node, home, event, Carrying::ReplyHome);
        }
    }

    // --- Heartbeats ----------------------------------------------------------------------

    /// A monitor's heartbeat timer: declare the next node unresponsive if none of the pings
    /// sent to it within the timeout has been answered, then ping it again.
    ///
    /// The timer runs apart from the shards, as a framework's heartbeat thread does; the
    /// answers, though, are processed by the shards' queues, behind the events.
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

    /// A heartbeat message waits in shard 0's queue like any event; a full queue loses it.
    fn heartbeat_arrives(&mut self, from: u32, to: u32, heartbeat: Heartbeat) {
        let at = ShardAddr { node: to, shard: 0 };
        let credit = Credit::new(1, HEARTBEAT_BYTES);
        let now = self.now;
        if !self.queue(at).try_admit(now, credit) {
            return;
        }
        let (cost, step) = match heartbeat {
            Heartbeat::Ping { sent_ns } => (
                self.costs.recv_ns + self.costs.send_ns,
                Step::AnswerPing {
                    monitor: from,
                    sent_ns,
                },
            ),
            Heartbeat::Answer { ping_sent_ns } => {
                (self.costs.recv_ns, Step::RecordAnswer { ping_sent_ns })
            }
        };
        let job = Job {
            subject: NO_EVENT,
            fan_out: false,
            step,
            release: credit,
        };
        self.enqueue(at, cost, job);
    }

    fn record_answer(&mut self, monitor: u32, ping_sent_ns: u64) {
        let newest = &mut self.cluster[monitor as usize].newest_answered_ping_ns;
        *newest = (*newest).max(ping_sent_ns);
    }

    // --- Faults and the end of the run -----------------------------------------------------

    /// Test-only fault: every shard of node 0 is replaced by a replica rebuilt from the events
    /// it applied, minus its claims, as if replication had lost them before a failover.
    fn forget_claims(&mut self) {
        let map = self.cluster[0].cores[0].map().clone();
        for shard in 0..self.shards {
            let mut replica = ShardCore::new(ShardId(shard as u16), map.clone());
            for &event in &self.applied_log[shard] {
                let record = &self.events[event as usize];
                let (start, len) = record.record;
                let archived = access_record::<ArchivedEvent>(0, &record.frame[start..start + len])
                    .expect("validated at home");
                if let (false, Route::Local(local)) = (
                    matches!(archived.kind, ArchivedEventKind::Claim { .. }),
                    replica.route(archived),
                ) {
                    replica.apply(local, archived);
                }
            }
            self.cluster[0].cores[shard] = replica;
        }
    }

    /// Runs the oracles that look at the whole run once it has come to rest.
    fn check_at_rest(&mut self) {
        for (index, record) in self.events.iter().enumerate() {
            record
                .fate
                .check(&mut self.findings, index, record.session, record.client_seq);
        }
        for (node_index, node) in self.cluster.iter_mut().enumerate() {
            for (shard, queue) in node.queues.iter_mut().enumerate() {
                queue.retire_all();
                let ledger = queue.ledger();
                let held = queue.held();
                if held != Credit::ZERO
                    || ledger.over_releases > 0
                    || ledger.acquired_events != ledger.released_events
                {
                    self.findings.report(Oracle::Credits, || {
                        format!(
                            "node {node_index} shard {shard} holds {held:?} at rest after taking \
                             {} events of credit and giving back {} ({} releases of credit it \
                             did not hold)",
                            ledger.acquired_events, ledger.released_events, ledger.over_releases
                        )
                    });
                }
                self.stats.on_queue(queue);
            }
            self.stats.false_unresponsive_nodes += u64::from(node.declared_unresponsive);
        }
        let hunts = &self.workload.hunts;
        let nodes = self.nodes as u32;
        let cluster = &self.cluster;
        self.winners
            .check_final(&mut self.findings, |hunt, treasure: TreasureId| {
                let hunt = &hunts[hunt];
                let node = &cluster[(hunt.partition.0 % nodes) as usize];
                let shard = node.cores[0].map().owner_of_partition(hunt.partition);
                node.cores[shard.index()]
                    .partition(hunt.partition)?
                    .winner_of(hunt.id, treasure)
            });
        self.stats.traffic = self.network.traffic;
        self.stats.events_sent = self.events.len() as u64;
        self.stats.events_refused = self.events.iter().map(|e| u64::from(e.fate.refused)).sum();
    }
}
