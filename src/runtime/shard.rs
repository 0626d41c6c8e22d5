//! One shard: a core's partitions, its budgets, its connections' reply sinks and its side of
//! the cross-shard mesh.
//!
//! A [`Shard`] lives on its own executor, behind an `Rc`, and is never touched from another
//! core: the network layer calls it from the connection tasks of the same executor, and the
//! only way in from another core is a [`MeshBatch`] arriving on a channel.
//!
//! The data path, as seen from here:
//! - a connection [`admit`](Shard::admit)s each event: it takes socket credit, both from the
//!   shard's budget and from the connection's share, waiting (or answering `Busy` in fail-fast
//!   mode) when there is none;
//! - [`dispatch`](Shard::dispatch) applies an event whose partition this shard owns and hands
//!   the reply to the connection's [`ReplySink`], or forwards the event's bytes to the owner
//!   (`forward_to_owner`) after taking credit in the owner's mesh budget;
//! - the owner applies forwarded events as their batch arrives and sends the replies back in its
//!   own next batch; the origin shard gives them to the connection;
//! - the connection [`release`](Shard::release)s credit once replies are written to its socket.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use hdrhistogram::Histogram;

use crate::constants::{
    CONNECTIONS_PER_SHARD_MAX, EVENT_BYTES_MAX, MESH_BATCH_EVENTS_MAX, STAGE_LATENCY_NS_MAX,
};
use crate::core::codec::access_validated;
use crate::core::credit::{Acquire, Credit, CreditPool};
use crate::core::ids::ShardId;
use crate::core::message::{ArchivedEvent, Reply};
use crate::core::partition::PartitionMap;
use crate::core::shard::{Route, ShardCore};
use crate::runtime::config::RuntimeConfig;
use crate::runtime::mesh::{ArchiveBatch, MeshBatch};
use crate::runtime::wait::WaitQueue;

/// Where a shard delivers replies for one connection. Implemented by the network layer.
pub trait ReplySink {
    /// Archives and queues the reply to an event this shard applied. `credit` is released
    /// (through [`Shard::release`]) once the reply is written.
    fn push_reply(&self, reply: &Reply, credit: Credit);
    /// Queues a reply another shard archived.
    fn push_archived_reply(&self, archive: &[u8], credit: Credit);
}

/// A connection's slot in its shard's sink table. The generation tells apart connections
/// that used the same slot at different times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkId {
    slot: u32,
    generation: u32,
}

impl SinkId {
    pub fn new(slot: u32, generation: u32) -> SinkId {
        SinkId { slot, generation }
    }
}

struct SinkEntry {
    sink: Rc<dyn ReplySink>,
    generation: u32,
    /// The connection's share of the socket budget.
    credit: CreditPool,
    /// The connection is gone; the entry stays until replies to its forwarded events are back.
    closed: bool,
}

/// The shard's connections, by slot. Bounded by `CONNECTIONS_PER_SHARD_MAX`.
#[derive(Default)]
struct SinkTable {
    entries: Vec<Option<SinkEntry>>,
    free_slots: Vec<u32>,
    generation_next: u32,
    open: usize,
}

impl SinkTable {
    fn get_mut(&mut self, id: SinkId) -> &mut SinkEntry {
        let entry = self.entries[id.slot as usize]
            .as_mut()
            .expect("a sink id names a live slot");
        assert_eq!(
            entry.generation, id.generation,
            "a sink id outlived its connection"
        );
        entry
    }

    fn remove(&mut self, id: SinkId) {
        self.entries[id.slot as usize] = None;
        self.free_slots.push(id.slot);
        self.open -= 1;
    }
}

/// What [`Shard::admit`] decided for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Credit taken: the event goes on to [`Shard::dispatch`].
    Granted,
    /// Fail-fast mode and no credit: answer `Busy`.
    Busy,
}

/// What [`Shard::dispatch`] did with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatched {
    /// Applied here; its reply is in the sink already.
    Applied,
    /// Forwarded to its owner; its reply will reach the sink later.
    Forwarded,
    /// Fail-fast mode and the owner's mesh budget is full: its credit is released, answer `Busy`.
    Busy,
}

/// How long the stages of a shard's data path took, as HdrHistograms of nanoseconds.
#[derive(Clone, Debug)]
pub struct StageLatencies {
    /// From a frame's arrival to the dispatch of its last event: credit waits included.
    pub frame_dispatch_ns: Histogram<u64>,
    /// From forwarding an event to another shard to its reply arriving back: the cross-core hop.
    pub mesh_round_trip_ns: Histogram<u64>,
}

impl Default for StageLatencies {
    fn default() -> StageLatencies {
        let histogram = || {
            Histogram::new_with_bounds(1, STAGE_LATENCY_NS_MAX, 3).expect("valid histogram bounds")
        };
        StageLatencies {
            frame_dispatch_ns: histogram(),
            mesh_round_trip_ns: histogram(),
        }
    }
}

/// Counters of one shard, reported when it stops. Shard-local; never shared while running.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub shard: u16,
    pub cpu: usize,
    pub events_applied: u64,
    pub events_forwarded: u64,
    pub events_applied_for_peers: u64,
    pub mesh_batches_sent: u64,
    pub mesh_batches_received: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Connections cut at shutdown because their replies could not be written in time.
    pub connections_force_closed: u64,
    pub frames_received: u64,
    pub frames_rejected: u64,
    pub busy_replies: u64,
    /// Times a connection found no socket credit and waited (or answered `Busy`).
    pub socket_credit_waits: u64,
    /// Times a forward found no mesh credit at its owner and waited.
    pub mesh_credit_waits: u64,
    /// The most socket credit ever held at once.
    pub socket_inflight_peak: Credit,
    /// The most mesh credit ever held at once at any one peer.
    pub mesh_inflight_peak: Credit,
    pub stages: StageLatencies,
}

/// This shard's view of one other shard.
struct Peer {
    /// Batches waiting for the channel; the back one is being filled.
    outbox: RefCell<VecDeque<MeshBatch>>,
    outbox_filled: WaitQueue,
    /// This shard's share of the peer's mesh budget.
    credit: RefCell<CreditPool>,
    credit_freed: WaitQueue,
    /// The peer said it forwards no more events.
    done_receiving: Cell<bool>,
    /// This shard told the peer it forwards no more events.
    done_sending: Cell<bool>,
}

impl Peer {
    fn new(credit: Credit) -> Peer {
        Peer {
            outbox: RefCell::default(),
            outbox_filled: WaitQueue::new(),
            credit: RefCell::new(CreditPool::new(credit)),
            credit_freed: WaitQueue::new(),
            done_receiving: Cell::new(false),
            done_sending: Cell::new(false),
        }
    }

    /// The batch being filled, starting a new one when `part` of it is full.
    fn filling(&self, part: impl Fn(&MeshBatch) -> &ArchiveBatch) -> RefMut<'_, MeshBatch> {
        let mut outbox = self.outbox.borrow_mut();
        let full = outbox
            .back()
            .is_none_or(|batch| part(batch).len() >= MESH_BATCH_EVENTS_MAX || batch.no_more_events);
        if full {
            outbox.push_back(MeshBatch::new());
        }
        self.outbox_filled.wake_all();
        RefMut::map(outbox, |outbox| outbox.back_mut().expect("just ensured"))
    }

    fn try_take_credit(&self, credit: Credit) -> bool {
        self.credit.borrow_mut().try_acquire(credit) == Acquire::Granted
    }

    fn release_credit(&self, credit: Credit) {
        self.credit.borrow_mut().release(credit);
        self.credit_freed.wake_all();
    }
}

/// What a peer's flusher should do next.
enum Outgoing {
    Batch(MeshBatch),
    Close,
}

/// The channels of one shard to and from every other shard.
pub struct ShardMesh {
    pub senders: Vec<(ShardId, ConnectedSender<MeshBatch>)>,
    pub receivers: Vec<(ShardId, ConnectedReceiver<MeshBatch>)>,
}

/// One shard's state. See the module documentation.
pub struct Shard {
    id: ShardId,
    core: RefCell<ShardCore>,
    socket_credit: RefCell<CreditPool>,
    socket_credit_freed: WaitQueue,
    connection_budget: Credit,
    sinks: RefCell<SinkTable>,
    /// Indexed by shard id; `None` for this shard itself.
    peers: Vec<Option<Peer>>,
    fail_fast: bool,
    apply_delay: Option<Duration>,
    stopping: Cell<bool>,
    force_closing: Cell<bool>,
    /// Woken when the shard starts stopping, when a connection goes away and when a peer says
    /// it is done: whatever shutdown waits for.
    lifecycle: WaitQueue,
    stats: RefCell<ShardStats>,
}

impl Shard {
    pub fn new(id: ShardId, cpu: usize, map: PartitionMap, config: &RuntimeConfig) -> Shard {
        let shards = config.shards();
        let peers = (0..shards)
            .map(|peer| {
                (peer != id.index()).then(|| Peer::new(config.budget.mesh_per_source(shards)))
            })
            .collect();
        let apply_delay = config
            .apply_delay
            .filter(|delay| delay.shard == id)
            .map(|delay| delay.per_event);
        Shard {
            id,
            core: RefCell::new(ShardCore::new(id, map)),
            socket_credit: RefCell::new(CreditPool::new(config.budget.shard())),
            socket_credit_freed: WaitQueue::new(),
            connection_budget: config.budget.connection(),
            sinks: RefCell::default(),
            peers,
            fail_fast: config.fail_fast,
            apply_delay,
            stopping: Cell::new(false),
            force_closing: Cell::new(false),
            lifecycle: WaitQueue::new(),
            stats: RefCell::new(ShardStats {
                shard: id.0,
                cpu,
                ..ShardStats::default()
            }),
        }
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The partition map's epoch, for frame headers.
    pub fn epoch(&self) -> u32 {
        self.core.borrow().map().epoch()
    }

    /// The shard's counters, for the network layer to add to.
    pub fn stats(&self) -> RefMut<'_, ShardStats> {
        self.stats.borrow_mut()
    }

    // ---- connections -------------------------------------------------------------------

    /// Gives a new connection a slot, or `None` when the shard has as many as it may.
    pub fn register_sink(&self, sink: Rc<dyn ReplySink>) -> Option<SinkId> {
        let mut sinks = self.sinks.borrow_mut();
        if sinks.open >= CONNECTIONS_PER_SHARD_MAX {
            self.stats().connections_refused += 1;
            return None;
        }
        let generation = sinks.generation_next;
        sinks.generation_next = generation.wrapping_add(1);
        let entry = SinkEntry {
            sink,
            generation,
            credit: CreditPool::new(self.connection_budget),
            closed: false,
        };
        let slot = match sinks.free_slots.pop() {
            Some(slot) => {
                sinks.entries[slot as usize] = Some(entry);
                slot
            }
            None => {
                sinks.entries.push(Some(entry));
                (sinks.entries.len() - 1) as u32
            }
        };
        sinks.open += 1;
        self.stats().connections_accepted += 1;
        Some(SinkId { slot, generation })
    }

    /// The connection is gone. Its slot is freed once no credit of its remains held.
    pub fn close_sink(&self, id: SinkId) {
        let mut sinks = self.sinks.borrow_mut();
        let entry = sinks.get_mut(id);
        entry.closed = true;
        if entry.credit.is_idle() {
            sinks.remove(id);
        }
        self.lifecycle.wake_all();
    }

    /// Takes socket credit for one event of a connection, waiting while there is none (or,
    /// in fail-fast mode, answering `Busy`).
    pub async fn admit(&self, id: SinkId, credit: Credit) -> Admission {
        if let Some(admission) = self.try_admit(id, credit) {
            return admission;
        }
        self.stats().socket_credit_waits += 1;
        self.socket_credit_freed
            .until(|| self.try_admit(id, credit))
            .await
    }

    /// Resolves once the shard and the connection have credit for one more event of the
    /// largest size: a connection waits here before it reads, so a shard out of credit stops
    /// reading and TCP pushes back. Fail-fast shards read on and answer `Busy`.
    pub async fn wait_for_credit(&self, id: SinkId) {
        if self.fail_fast {
            return;
        }
        let one = Credit::new(1, EVENT_BYTES_MAX as u32);
        let has_credit = || {
            let mut sinks = self.sinks.borrow_mut();
            let connection = sinks.get_mut(id).credit.available();
            let shard = self.socket_credit.borrow().available();
            (connection.covers(one) && shard.covers(one)).then_some(())
        };
        if has_credit().is_none() {
            self.stats().socket_credit_waits += 1;
            self.socket_credit_freed.until(has_credit).await;
        }
    }

    fn try_admit(&self, id: SinkId, credit: Credit) -> Option<Admission> {
        let mut sinks = self.sinks.borrow_mut();
        let entry = sinks.get_mut(id);
        let mut shard_pool = self.socket_credit.borrow_mut();
        if entry.credit.available().covers(credit) && shard_pool.available().covers(credit) {
            assert_eq!(entry.credit.try_acquire(credit), Acquire::Granted);
            assert_eq!(shard_pool.try_acquire(credit), Acquire::Granted);
            return Some(Admission::Granted);
        }
        if self.fail_fast {
            self.stats().busy_replies += 1;
            return Some(Admission::Busy);
        }
        None
    }

    /// Gives back socket credit once replies are written (or can no longer be).
    pub fn release(&self, id: SinkId, credit: Credit) {
        let mut sinks = self.sinks.borrow_mut();
        let entry = sinks.get_mut(id);
        entry.credit.release(credit);
        let remove = entry.closed && entry.credit.is_idle();
        if remove {
            sinks.remove(id);
            self.lifecycle.wake_all();
        }
        self.socket_credit.borrow_mut().release(credit);
        self.socket_credit_freed.wake_all();
    }

    /// Applies an admitted event here or forwards it to the shard that owns its partition.
    /// `archive` is the event's validated bytes; `credit` is what [`Self::admit`] took.
    pub async fn dispatch(
        &self,
        id: SinkId,
        archive: &[u8],
        event: &ArchivedEvent,
        credit: Credit,
    ) -> Dispatched {
        let route = self.core.borrow().route(event);
        match route {
            Route::Local(_) => {
                let reply = self.apply(event);
                self.stats().events_applied += 1;
                let sink = self.sink(id);
                sink.push_reply(&reply, credit);
                Dispatched::Applied
            }
            Route::Remote(owner) => self.forward_to_owner(owner, id, archive, credit).await,
        }
    }

    fn sink(&self, id: SinkId) -> Rc<dyn ReplySink> {
        self.sinks.borrow_mut().get_mut(id).sink.clone()
    }

    fn apply(&self, event: &ArchivedEvent) -> Reply {
        if let Some(delay) = self.apply_delay {
            // A deliberate, test-only stall: spin rather than sleep, so the shard is busy the
            // way an overloaded core is.
            let until = Instant::now() + delay;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        self.core.borrow_mut().apply(event)
    }

    /// The cross-core hop: copies the event's bytes into the owner's next batch, once the
    /// owner's mesh budget has room for them.
    async fn forward_to_owner(
        &self,
        owner: ShardId,
        id: SinkId,
        archive: &[u8],
        credit: Credit,
    ) -> Dispatched {
        let peer = self.peer(owner);
        if !peer.try_take_credit(credit) {
            if self.fail_fast {
                self.release(id, credit);
                self.stats().busy_replies += 1;
                return Dispatched::Busy;
            }
            self.stats().mesh_credit_waits += 1;
            peer.credit_freed
                .until(|| peer.try_take_credit(credit).then_some(()))
                .await;
        }
        {
            let peak = peer.credit.borrow().held_peak();
            let mut stats = self.stats();
            stats.mesh_inflight_peak.events = stats.mesh_inflight_peak.events.max(peak.events);
            stats.mesh_inflight_peak.bytes = stats.mesh_inflight_peak.bytes.max(peak.bytes);
            stats.events_forwarded += 1;
        }
        let mut batch = peer.filling(|batch| &batch.events);
        let forwarded_at = batch.opened_at;
        batch.events.push_archive(archive, id, credit, forwarded_at);
        Dispatched::Forwarded
    }

    fn peer(&self, shard: ShardId) -> &Peer {
        self.peers[shard.index()]
            .as_ref()
            .expect("a shard is not its own peer")
    }

    // ---- lifecycle ---------------------------------------------------------------------

    /// Resolves when the shard starts stopping: connections stop reading, acceptors stop.
    pub async fn stopping(&self) {
        self.lifecycle
            .until(|| self.stopping.get().then_some(()))
            .await
    }

    /// Resolves when the shutdown grace period is over: connections close now.
    pub async fn force_closing(&self) {
        self.lifecycle
            .until(|| self.force_closing.get().then_some(()))
            .await
    }

    fn connections_drained(&self) -> bool {
        self.sinks.borrow().open == 0 && self.socket_credit.borrow().is_idle()
    }

    /// Runs the shard's mesh until `stop` resolves and the node has drained, then reports.
    pub async fn run(
        self: Rc<Self>,
        mesh: ShardMesh,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) -> ShardStats {
        let mut tasks = Vec::new();
        for (peer, receiver) in mesh.receivers {
            tasks.push(glommio::spawn_local(
                self.clone().receive_from(peer, receiver),
            ));
        }
        for (peer, sender) in mesh.senders {
            tasks.push(glommio::spawn_local(self.clone().flush_to(peer, sender)));
        }
        stop.await;
        self.stopping.set(true);
        self.lifecycle.wake_all();
        let drained = futures_lite::future::or(
            async {
                self.lifecycle
                    .until(|| self.connections_drained().then_some(()))
                    .await;
                true
            },
            async {
                glommio::timer::sleep(grace).await;
                false
            },
        )
        .await;
        if !drained {
            self.force_closing.set(true);
            self.lifecycle.wake_all();
            self.lifecycle
                .until(|| self.connections_drained().then_some(()))
                .await;
        }
        for peer in self.peers.iter().flatten() {
            peer.done_sending.set(true);
            peer.outbox.borrow_mut().push_back(MeshBatch {
                no_more_events: true,
                ..MeshBatch::new()
            });
            peer.outbox_filled.wake_all();
        }
        for task in tasks {
            task.await;
        }
        let mut stats = self.stats().clone();
        stats.socket_inflight_peak = self.socket_credit.borrow().held_peak();
        stats
    }

    /// Applies the events a peer forwards and delivers the replies it sends back.
    async fn receive_from(
        self: Rc<Self>,
        peer_id: ShardId,
        receiver: ConnectedReceiver<MeshBatch>,
    ) {
        let peer = self.peer(peer_id);
        while let Some(batch) = receiver.recv().await {
            self.stats().mesh_batches_received += 1;
            self.apply_forwarded(peer, &batch.events);
            let arrived = Instant::now();
            for (archive, entry) in batch.replies.iter() {
                peer.release_credit(entry.credit);
                self.record_round_trip(arrived.saturating_duration_since(entry.forwarded_at));
                self.deliver_reply(entry.sink, archive, entry.credit);
            }
            if batch.no_more_events {
                peer.done_receiving.set(true);
                peer.outbox_filled.wake_all();
                self.lifecycle.wake_all();
            }
            glommio::yield_if_needed().await;
        }
    }

    fn apply_forwarded(&self, peer: &Peer, events: &ArchiveBatch) {
        for (archive, entry) in events.iter() {
            // SAFETY: the origin shard validated these bytes with `access_record` when they
            // entered the process, and `ArchiveBatch` keeps them 16-byte aligned.
            let event = unsafe { access_validated::<ArchivedEvent>(archive) };
            let reply = self.apply(event);
            peer.filling(|batch| &batch.replies)
                .replies
                .push_value(&reply, entry.sink, entry.credit, entry.forwarded_at)
                .expect("a reply always fits its archive limits");
        }
        self.stats().events_applied_for_peers += events.len() as u64;
    }

    fn record_round_trip(&self, elapsed: Duration) {
        let nanos = elapsed.as_nanos() as u64;
        self.stats()
            .stages
            .mesh_round_trip_ns
            .saturating_record(nanos.max(1));
    }

    /// Records how long a frame took from arrival to the dispatch of its last event.
    pub fn record_frame_dispatch(&self, elapsed: Duration) {
        let nanos = elapsed.as_nanos() as u64;
        self.stats()
            .stages
            .frame_dispatch_ns
            .saturating_record(nanos.max(1));
    }

    fn deliver_reply(&self, id: SinkId, archive: &[u8], credit: Credit) {
        let sink = {
            let mut sinks = self.sinks.borrow_mut();
            let entry = sinks.get_mut(id);
            (!entry.closed).then(|| entry.sink.clone())
        };
        match sink {
            Some(sink) => sink.push_archived_reply(archive, credit),
            // The connection went away first: nothing to write the reply to.
            None => self.release(id, credit),
        }
    }

    /// Sends the peer its batches, at the end of each loop pass (the flusher runs after the
    /// tasks that filled the batch) or as soon as a batch is full.
    async fn flush_to(self: Rc<Self>, peer_id: ShardId, sender: ConnectedSender<MeshBatch>) {
        let peer = self.peer(peer_id);
        loop {
            let next = peer.outbox_filled.until(|| next_outgoing(peer)).await;
            match next {
                Outgoing::Batch(batch) => {
                    self.stats().mesh_batches_sent += 1;
                    if sender.send(batch).await.is_err() {
                        break;
                    }
                }
                Outgoing::Close => {
                    sender.close();
                    break;
                }
            }
        }
    }
}

// ---- metrics hook -------------------------------------------------------------------------
// A read-only view of what a shard holds right now, for the node's once-a-second metrics
// snapshot (`src/metrics`). Kept apart from the protocol above so that it can change around it.

/// Credit held and capacity of a shard's pools, and its open connections, at one instant.
/// Built on the shard's own core; plain numbers, so it may leave it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardLoad {
    pub connections_open: u64,
    /// The shard's budget for events read from its sockets.
    pub socket_held: Credit,
    pub socket_capacity: Credit,
    /// This shard's shares of its peers' mesh budgets, summed over the peers (events, bytes).
    pub mesh_held: (u64, u64),
    pub mesh_capacity: (u64, u64),
}

impl Shard {
    /// What the shard holds now; see [`ShardLoad`].
    pub fn load(&self) -> ShardLoad {
        let socket = self.socket_credit.borrow();
        let mut load = ShardLoad {
            connections_open: self.sinks.borrow().open as u64,
            socket_held: socket.held(),
            socket_capacity: socket.capacity(),
            ..ShardLoad::default()
        };
        for peer in self.peers.iter().flatten() {
            let credit = peer.credit.borrow();
            let (held, capacity) = (credit.held(), credit.capacity());
            load.mesh_held.0 += u64::from(held.events);
            load.mesh_held.1 += u64::from(held.bytes);
            load.mesh_capacity.0 += u64::from(capacity.events);
            load.mesh_capacity.1 += u64::from(capacity.bytes);
        }
        load
    }
}

fn next_outgoing(peer: &Peer) -> Option<Outgoing> {
    if let Some(batch) = peer.outbox.borrow_mut().pop_front() {
        return Some(Outgoing::Batch(batch));
    }
    // Close once neither side forwards events any more: no replies are owed either way.
    (peer.done_sending.get() && peer.done_receiving.get()).then_some(Outgoing::Close)
}
